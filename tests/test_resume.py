"""Exact resume and the consumer-owned epoch: a run checkpointed after epoch k and resumed by a NEW trainer on a
NEW dataset object ends with bit-identical parameters; peeking at a dataset changes nothing fit sees; one batch of
``from_arrays(...).map(augmenter).map(preprocess)`` never leaves the device."""

import contextlib
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import numpy as np
import pytest
from PIL import Image

from minicnn.augment import ImageAugmenter
from minicnn.data import from_arrays, image_dataset_from_directory
from minicnn.layers import Conv2D, Dense, Flatten, Sequential
from minicnn.train import Callback, Trainer

EPOCHS, SAVED_AFTER = 3, 1  # train 3 epochs; the checkpoint is written after epoch index 1 (two epochs done)
AUG = ImageAugmenter(rotation_range=30, width_shift_range=0.2, zoom_range=0.2, horizontal_flip=True)


def _images(n=12, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), (np.arange(n) % 2).astype(np.float32)


def _trainer():
    model = Sequential([Conv2D(4, 3), Flatten(), Dense(1, activation="sigmoid")])
    return Trainer(model, "binary_crossentropy", "adam", optimizer_kwargs={"learning_rate": 1e-2})


class _SaveAfter(Callback):
    def __init__(self, epoch, path):
        self.epoch, self.path = epoch, path

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.trainer.save(self.path)


def _params(trainer):
    return jax.tree_util.tree_leaves(trainer.variables["params"])


def _assert_resume_is_exact(make_data, tmp_path):
    """Uninterrupted run (checkpointing on the way) vs a fresh trainer + fresh dataset resumed from the checkpoint."""
    path = tmp_path / "ckpt"
    full = _trainer()
    full.fit(make_data(), epochs=EPOCHS, seed=0, verbose=0, callbacks=[_SaveAfter(SAVED_AFTER, path)])
    resumed = _trainer()
    resumed.load(path)
    assert resumed.epoch == SAVED_AFTER + 1
    resumed.fit(make_data(), epochs=EPOCHS, initial_epoch=resumed.epoch, seed=0, verbose=0)
    losses = full.history.history["loss"]
    assert len(set(losses)) == EPOCHS  # it learns: an order change would change the parameters
    for a, b in zip(_params(full), _params(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed.history.history["loss"] == losses


def test_resume_is_bit_identical_for_shuffled_arrays(tmp_path):
    x, y = _images()
    _assert_resume_is_exact(lambda: from_arrays(x / np.float32(255), y, batch_size=5, seed=3), tmp_path)


def test_resume_is_bit_identical_for_augmented_arrays(tmp_path):
    x, y = _images()
    _assert_resume_is_exact(lambda: from_arrays(x, y, batch_size=5, seed=3, augment=AUG).map(lambda b: b / 255.0),
                            tmp_path)


def test_resume_is_bit_identical_for_an_augmented_image_folder(tmp_path):
    x, _ = _images(n=12, size=20)
    for i, image in enumerate(x):
        folder = tmp_path / "data" / ("cats", "dogs")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    make = lambda: image_dataset_from_directory(tmp_path / "data", (16, 16), batch_size=5, seed=7,
                                                augment=AUG).map(lambda b: b / 255.0)
    _assert_resume_is_exact(make, tmp_path)


def test_a_drawn_seed_is_kept_and_rebuilds_the_same_epochs(tmp_path):
    x, y = _images()
    ds = from_arrays(x, y, batch_size=5)  # seed=None: drawn once, kept in ds.seed (what a resume needs)
    again = from_arrays(x, y, batch_size=5, seed=ds.seed)
    for (xa, ya), (xb, yb) in zip(ds.epoch(4), again.epoch(4), strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_epochs_are_pure_functions_of_seed_and_number():
    x, y = _images()
    ds = from_arrays(x, y, batch_size=5, seed=1).map(AUG)  # map(augmenter) is keyed from ds.seed
    third = [np.asarray(b[0]) for b in ds.epoch(2)]
    for _ in ds.epoch(0):  # other epochs and iter() in between change nothing
        pass
    next(iter(ds))
    for a, b in zip(third, [np.asarray(b[0]) for b in ds.epoch(2)], strict=True):
        np.testing.assert_array_equal(a, b)
    first = [np.asarray(b[0]) for b in ds]
    np.testing.assert_array_equal(first[0], np.asarray(next(iter(ds))[0]))  # iter() is epoch 0, every time
    assert not np.array_equal(first[0], third[0])
    with pytest.raises(ValueError, match="epoch must be an int >= 0"):
        ds.epoch(-1)


def test_peeking_does_not_change_what_fit_sees():
    x, y = _images()

    def trained(peek):
        data = from_arrays(x, y, batch_size=5, seed=3, augment=AUG).map(lambda b: b / 255.0)
        if peek:
            next(iter(data))  # as recipes do to learn the input shape
            list(data)
        trainer = _trainer()
        trainer.fit(data, epochs=2, seed=0, verbose=0)
        return _params(trainer)

    for a, b in zip(trained(False), trained(True), strict=True):
        np.testing.assert_array_equal(a, b)


@contextlib.contextmanager
def no_host_copies():
    """NumPy's array constructors refuse JAX arrays. On CPU a JAX array converts through the buffer protocol, so
    patching ``jax.Array.__array__`` would see nothing; what minicnn code calls is ``np.asarray``/``np.array``."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("asarray", "array", "asanyarray", "ascontiguousarray"):
            original = getattr(np, name)

            def guarded(a, *args, _original=original, _name=name, **kwargs):
                if isinstance(a, jax.Array):
                    raise AssertionError(f"np.{_name} copied a device array to the host")  # noqa: TRY004
                return _original(a, *args, **kwargs)

            patch.setattr(np, name, guarded)
        yield


def test_the_guard_catches_a_host_copy():
    with no_host_copies(), pytest.raises(AssertionError, match="copied a device array"):
        np.asarray(jax.numpy.ones(3))


def test_augment_then_preprocess_stays_on_device():
    x, y = _images()
    data = from_arrays(x, y, batch_size=5, seed=0).map(AUG, seed=0).map(lambda b: b / 127.5 - 1)
    with no_host_copies():
        xb, _ = next(iter(data))
    assert isinstance(xb, jax.Array) and xb.dtype == np.float32 and xb.shape == (5, 16, 16, 3)
    assert float(xb.min()) >= -1 and float(xb.max()) <= 1


def test_evaluate_pads_device_batches_on_device():
    x, y = _images()
    data = from_arrays(x, y, batch_size=5, shuffle=False).map(lambda b: b / 255.0)  # 5, 5, 2: the last is padded
    trainer = _trainer()
    trainer.build(x[:1] / 255.0)
    trainer.evaluate(data)  # compile outside the guard
    with no_host_copies():
        logs = trainer.evaluate(data, return_dict=True)
    assert set(logs) == {"loss", "accuracy"} and np.isfinite(logs["loss"])


def test_the_checkpoint_records_the_data_seed_and_a_resume_with_another_warns(tmp_path):
    x, y = _images()
    path = tmp_path / "ckpt"
    full = _trainer()
    full.fit(from_arrays(x / np.float32(255), y, batch_size=5, seed=3), epochs=2, seed=0, verbose=0,
             callbacks=[_SaveAfter(0, path)])
    resumed = _trainer().load(path)
    with pytest.warns(UserWarning, match="data's seed is 4, the checkpoint's run used 3"):
        resumed.fit(from_arrays(x / np.float32(255), y, batch_size=5, seed=4), epochs=2, initial_epoch=1, verbose=0)


def test_save_freq_saves_every_n_batches_as_keras_names_them_and_resumes_mid_epoch(tmp_path):
    """``ModelCheckpoint(save_freq=2)``: the files real Keras 3 writes for the same run (12 images, batch 5: 3
    batches per epoch, counted across epochs), and a fresh trainer resumed from a mid-epoch one ends bit-identical."""
    keras = pytest.importorskip("keras", reason="Keras 3 is the reference ([test] extra)")
    from minicnn.train import ModelCheckpoint
    x, y = _images()
    kmodel = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    kmodel.compile("sgd", "mse")
    kdir = tmp_path / "keras"
    kdir.mkdir()
    kmodel.fit(x / 255.0, y, batch_size=5, epochs=2, verbose=0, shuffle=False, callbacks=[
        keras.callbacks.ModelCheckpoint(str(kdir / "{epoch}-{batch}.weights.h5"), save_weights_only=True, save_freq=2)])
    expected = sorted(p.name.removesuffix(".weights.h5") for p in kdir.iterdir())
    assert expected == ["1-2", "2-1", "2-3"]

    def data():
        return from_arrays(x / np.float32(255), y, batch_size=5, seed=3)

    full = _trainer()
    full.fit(data(), epochs=2, seed=0, verbose=0,
             callbacks=[ModelCheckpoint(tmp_path / "ckpt" / "{epoch}-{batch}", save_freq=2)])
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == expected
    resumed = _trainer().load(tmp_path / "ckpt" / "2-1")  # saved after the first batch of the second epoch
    assert resumed.epoch == 1
    resumed.fit(data(), epochs=2, initial_epoch=resumed.epoch, seed=0, verbose=0)
    for a, b in zip(_params(full), _params(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_save_freq_refusals():
    from minicnn.train import ModelCheckpoint
    for bad in ("batch", 0, -2, True, 1.5):
        with pytest.raises(ValueError, match="Unrecognized save_freq"):
            ModelCheckpoint("ckpt", save_freq=bad)
    with pytest.raises(ValueError, match="the kept steps are epochs"):
        ModelCheckpoint("ckpt", save_freq=2, max_to_keep=3)
