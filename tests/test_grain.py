"""grain interoperability: minicnn datasets as grain sources (records equal to the dataset's own batches), grain
pipelines through ``Trainer.fit``/``evaluate``/``extract_features``, and mid-epoch resume from a checkpoint
written during ``fit``: a NEW trainer on a NEW pipeline ends with bit-identical parameters."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import grain
import jax
import numpy as np
import pytest
from PIL import Image

from minicnn.data import BadImageError, flow_from_directory, from_arrays, grain_source, image_dataset_from_directory
from minicnn.layers import Conv2D, Dense, Flatten, Sequential
from minicnn.train import Callback, Trainer
from minicnn.transfer import extract_features
from minicnn.weights import store

SIZE = (8, 8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of 8 small dark images each (JPEG and PNG, sizes other than SIZE): dark, so that the
    small model does not saturate on unscaled pixels and keeps learning."""
    root = tmp_path_factory.mktemp("grain_images")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("cats", "dogs")):
        (root / name).mkdir()
        for i in range(8):
            image = rng.integers(0, 4, (10 + i, 12, 3), dtype=np.uint8) + c
            Image.fromarray(image).save(root / name / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


def _trainer():
    model = Sequential([Conv2D(2, 3), Flatten(), Dense(1, activation="sigmoid")])
    return Trainer(model, "binary_crossentropy", "adam", optimizer_kwargs={"learning_rate": 1e-2})


def _params(trainer):
    return jax.tree_util.tree_leaves(trainer.variables["params"])


def _batches(dataset):
    return [tuple(np.asarray(a) for a in b) for b in dataset]


def test_records_are_the_datasets_samples(folder):
    """Batched records equal the dataset's own batches: Keras' tensor resize (float32 records), Pillow's
    (uint8 records), one-hot labels, and in-memory arrays."""
    cases = [
        image_dataset_from_directory(folder, SIZE, batch_size=4, shuffle=False, verbose=False),
        flow_from_directory(folder, SIZE, batch_size=4, shuffle=False, class_mode="categorical"),
        from_arrays(np.arange(5 * 8 * 8 * 3, dtype=np.uint8).reshape(5, 8, 8, 3), np.arange(5), 4, shuffle=False),
    ]
    for ds, stored in zip(cases, (np.float32, np.uint8, np.uint8)):
        source = grain_source(ds)
        assert len(source) == ds.samples and source[0][0].dtype == stored
        got = _batches(grain.MapDataset.source(source).batch(4))
        want = _batches(ds.epoch(0))
        assert len(got) == len(want)
        for (gx, gy), (wx, wy) in zip(got, want):
            np.testing.assert_array_equal(gx.astype(np.float32), wx)
            np.testing.assert_array_equal(gy, wy)
            assert gy.dtype == wy.dtype
    assert "DirectorySource(16 files" in repr(grain_source(cases[0]))  # no memory address: DataLoader compares it


def test_refusals_and_bad_files(folder, tmp_path):
    ds = image_dataset_from_directory(folder, SIZE, batch_size=4, verbose=False)
    with pytest.raises(TypeError, match=r"before \.map"):
        grain_source(ds.map(lambda x: x / 255))
    with pytest.raises(TypeError, match="expected a minicnn dataset.*list"):
        grain_source([1, 2])
    # a JPEG cut after its header passes the dataset's header check; the worker decoding it names the file
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for name in ("a", "b"):
        noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(tmp_path / name / "ok.jpg")
    good = (tmp_path / "a" / "ok.jpg").read_bytes()
    (tmp_path / "a" / "cut.jpg").write_bytes(good[: len(good) // 2])  # the header is the first ~600 bytes
    source = grain_source(image_dataset_from_directory(tmp_path, SIZE, shuffle=False, verbose=False))
    with pytest.raises(BadImageError, match="cut.jpg"):
        list(grain.MapDataset.source(source).batch(3))


def test_fit_evaluate_extract_features_take_a_grain_pipeline():
    """uint8 batches from grain train exactly as the same float32 batches of a minicnn dataset do."""
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8), (np.arange(12) % 2).astype(np.float32)
    ds = from_arrays(x, y, batch_size=4, shuffle=False)
    pipeline = grain.MapDataset.source(grain_source(ds)).batch(4)
    ours, theirs = _trainer(), _trainer()
    ours.fit(ds, epochs=2, verbose=0)
    theirs.fit(pipeline, epochs=2, verbose=0)
    for a, b in zip(_params(ours), _params(theirs), strict=True):
        np.testing.assert_array_equal(a, b)
    assert ours.history.history == theirs.history.history
    assert ours.evaluate(ds) == ours.evaluate(pipeline.to_iter_dataset())
    variables = ours.variables
    for a, b in zip(extract_features(ours.model, variables, ds, verbose=False),
                    extract_features(ours.model, variables, pipeline, verbose=False)):
        np.testing.assert_array_equal(a, b)


class _SaveAt(Callback):
    """``trainer.save`` after batch ``batch`` of epoch ``epoch`` (a checkpoint written mid-epoch)."""

    def __init__(self, epoch, batch, path):
        self.at, self.path, self.epoch = (epoch, batch), path, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            self.trainer.save(self.path)


def _shuffled_pipeline(folder):
    """Decoding in grain's read threads, shuffled, prefetching: the iterator is ahead of what fit consumed."""
    source = grain_source(image_dataset_from_directory(folder, SIZE, verbose=False, seed=3))
    return (grain.MapDataset.source(source).shuffle(seed=7).batch(4)
            .to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)))


def _data_loader(folder):
    """grain's DataLoader over two epochs (fresh order each): one iterator across fit's epochs."""
    source = grain_source(image_dataset_from_directory(folder, SIZE, verbose=False, seed=3))
    sampler = grain.samplers.IndexSampler(len(source), shuffle=True, seed=5, num_epochs=2)
    return grain.DataLoader(data_source=source, sampler=sampler, operations=[grain.transforms.Batch(4)],
                            worker_count=0)


def _minicnn_dataset(folder):
    return image_dataset_from_directory(folder, SIZE, batch_size=4, verbose=False, seed=3)


@pytest.mark.parametrize("make, fit_kwargs, iterator_state", [
    (_shuffled_pipeline, {}, dict),
    (_data_loader, {"steps_per_epoch": 4}, str),
    (_minicnn_dataset, {}, type(None)),  # no iterator state: the epoch is replayed from (seed, epoch), 2 batches skipped
], ids=["grain-IterDataset", "grain-DataLoader", "minicnn-dataset"])
def test_resume_mid_epoch_is_exact(folder, tmp_path, make, fit_kwargs, iterator_state):
    path = tmp_path / "ckpt"
    full = _trainer()
    full.fit(make(folder), epochs=2, verbose=0, callbacks=[_SaveAt(1, 1, path)], **fit_kwargs)
    saved = store.read_marker(path)["metadata"]["data_state"]
    assert (saved["epoch"], saved["step"], saved["count"]) == (1, 2, 8)
    assert isinstance((saved["iterator"] or {"state": None})["state"], iterator_state)

    resumed = _trainer().load(path)
    assert resumed.epoch == 1
    resumed.fit(make(folder), epochs=2, initial_epoch=resumed.epoch, verbose=0, **fit_kwargs)
    assert len(set(full.history.history["loss"])) == 2  # it learns: a different batch would change the params
    for a, b in zip(_params(full), _params(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed.history.history == full.history.history  # the resumed epoch's logs include its first batches


def test_resume_in_another_epoch_warns_and_starts_it_afresh(folder, tmp_path):
    path = tmp_path / "ckpt"
    _trainer().fit(_minicnn_dataset(folder), epochs=1, verbose=0, callbacks=[_SaveAt(0, 0, path)])
    trainer = _trainer().load(path)
    with pytest.warns(UserWarning, match="after batch 1 of epoch 0; epoch 1 starts from its first batch"):
        trainer.fit(_minicnn_dataset(folder), epochs=2, initial_epoch=1, verbose=0)
