"""Trainer: fit/evaluate/predict semantics, data protocol, freezing, callbacks that need a real run."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import csv

import jax
import numpy as np
import pytest

from minicnn.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D, Sequential
from minicnn.train import (CSVLogger, History, ModelCheckpoint, ReduceLROnPlateau, TensorBoard, TerminateOnNaN, Trainer,
                           smooth_curve)

SHAPE = (8, 8, 1)


def tiny(bn=False, dropout=None):
    """conv -> (bn) -> pool -> flatten -> (dropout) -> sigmoid unit: compiles in about a second."""
    return Sequential([Conv2D(4, 3, activation="relu"), *([BatchNormalization()] if bn else []),
                       MaxPooling2D(2), Flatten(), *([Dropout(dropout)] if dropout else []),
                       Dense(1, activation="sigmoid")])


def data(n=40, seed=0):
    """A learnable task: is the image brighter than average?"""
    r = np.random.default_rng(seed)
    x = r.random((n, *SHAPE), np.float32) + r.normal(0, 0.3, (n, 1, 1, 1)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > np.median(x.mean(axis=(1, 2, 3)))).astype(np.float32)
    return x, y


def leaves_with_paths(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def shared():
    """One compiled trainer for the tests that only need some training run (compiling dominates)."""
    return Trainer(tiny(), optimizer_kwargs={"learning_rate": 1e-2})


def test_fit_evaluate_predict_arrays():
    x, y = data()
    t = Trainer(tiny(), "binary_crossentropy", "adam", optimizer_kwargs={"learning_rate": 1e-2})
    h = t.fit(x, y, batch_size=8, epochs=8, validation_data=(x, y), verbose=0)
    assert set(h.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}  # no lr key: Keras 3 adds none
    assert h.epoch == list(range(8)) and all(len(v) == 8 for v in h.history.values())
    assert h.history["loss"][-1] < h.history["loss"][0]
    # evaluate == the Keras loss and accuracy of predict's outputs, whatever the batch split (padded last batch)
    keras = pytest.importorskip("keras", reason="Keras 3 is the reference for the evaluation formulas")
    p = t.predict(x, batch_size=7)
    assert p.shape == (40, 1)
    ref_loss = float(np.mean(keras.losses.binary_crossentropy(y[:, None], p)))
    ref_acc = float(np.mean(keras.metrics.binary_accuracy(y[:, None], p)))
    for bs in (40, 7):
        ev = t.evaluate(x, y, batch_size=bs, return_dict=True)
        assert ev["loss"] == pytest.approx(ref_loss, rel=1e-5) and ev["accuracy"] == pytest.approx(ref_acc)
    assert h.history["val_loss"][-1] == pytest.approx(ref_loss, rel=1e-5)


def test_batches_and_arrays_train_identically_and_steps_per_epoch_loops():
    x, y = data()
    batches = [(x[i:i + 10], y[i:i + 10]) for i in range(0, 40, 10)]
    a = Trainer(tiny())
    a.fit(x, y, batch_size=10, epochs=2, shuffle=False, verbose=0)
    b = Trainer(tiny())
    b.fit(batches, epochs=2, verbose=0)
    for k, v in leaves_with_paths(a.variables).items():
        np.testing.assert_array_equal(v, leaves_with_paths(b.variables)[k], err_msg=k)
    # steps_per_epoch: 3 epochs x 3 steps over 4 batches continue one iterator and restart it when it runs out
    seen = []

    class Counting:
        def __iter__(self):
            for xb, yb in batches:
                seen.append(len(seen))
                yield xb, yb
    a.fit(Counting(), epochs=3, steps_per_epoch=3, verbose=0)  # a built trainer trains on: no recompilation
    assert len(seen) == 9

    def infinite():  # the lecture's generators never end
        while True:
            yield from batches
    h = a.fit(infinite(), epochs=2, steps_per_epoch=5, verbose=0)
    assert len(h.history["loss"]) == 2


def test_bad_inputs_have_clear_errors():
    x, y = data()
    with pytest.raises(ValueError, match="different numbers of samples: 40 and 39"):
        Trainer(tiny()).fit(x, y[:-1], verbose=0)
    with pytest.raises(ValueError, match="batch_size applies to array inputs only"):
        Trainer(tiny()).fit([(x, y)], batch_size=4, verbose=0)
    with pytest.raises(TypeError, match="did you mean epochs=5"):
        Trainer(tiny()).fit([(x, y)], 5)
    with pytest.raises(ValueError, match="yielded no batches"):
        Trainer(tiny()).fit([], verbose=0)
    with pytest.raises(RuntimeError, match="no variables yet"):
        Trainer(tiny()).save("unused")
    t = Trainer(tiny())
    t.build(x[:2])
    v = t.variables
    v["params"]["dense"]["kernel"] = v["params"]["dense"]["kernel"][:-1]
    with pytest.raises(ValueError, match=r"params/dense/kernel has shape \(35, 1\), expected \(36, 1\)"):
        t.set_variables(v)


def test_user_variables_survive_donation_and_dropout_is_train_only():
    x, y = data()
    model = tiny(dropout=0.5)
    start = jax.jit(lambda k: model.init(k, x[:1]))(jax.random.PRNGKey(3))
    before = leaves_with_paths(start)
    t = Trainer(model, variables=start)
    t.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for k, v in leaves_with_paths(start).items():  # still readable and unchanged: the trainer copied them
        np.testing.assert_array_equal(v, before[k])
    assert not np.array_equal(t.variables["params"]["dense"]["kernel"], before["['params']['dense']['kernel']"])
    np.testing.assert_array_equal(t.predict(x), t.predict(x))  # no dropout at inference
    rng0 = np.asarray(t.state["rng"])
    t.train_on_batch(x[:8], y[:8])
    assert not np.array_equal(rng0, np.asarray(t.state["rng"]))  # a fresh dropout key every step


def test_frozen_parameters_get_no_update_and_no_optimizer_state():
    x, y = data()
    t = Trainer(tiny(bn=True), optimizer="adam", trainable={"conv2d": False, "batch_normalization": False,
                                                             "dense": True})
    t.build(x[:8])
    before = t.variables
    t.fit(x, y, batch_size=8, epochs=2, verbose=0)
    after = t.variables
    for layer in ("conv2d", "batch_normalization"):
        for leaf, v in before["params"][layer].items():
            np.testing.assert_array_equal(after["params"][layer][leaf], v)
    assert not np.array_equal(after["params"]["dense"]["kernel"], before["params"]["dense"]["kernel"])
    opt_paths = " ".join(leaves_with_paths(t.state["opt_state"]))
    assert "dense" in opt_paths and "conv2d" not in opt_paths and "batch_normalization" not in opt_paths
    # frozen BatchNormalization runs in inference mode: its moving statistics do not move
    for leaf, v in before["batch_stats"]["batch_normalization"].items():
        np.testing.assert_array_equal(after["batch_stats"]["batch_normalization"][leaf], v)
    # unfreeze between phases: params kept, optimizer state rebuilt for the new partition
    t.set_trainable(None, optimizer="rmsprop", learning_rate=1e-5)
    assert t.learning_rate == pytest.approx(1e-5)
    for k, v in leaves_with_paths(t.variables).items():
        np.testing.assert_array_equal(v, leaves_with_paths(after)[k])
    assert "conv2d" in " ".join(leaves_with_paths(t.state["opt_state"]))
    t.fit(x, y, batch_size=8, epochs=1, verbose=0)
    moved = t.variables
    assert not np.array_equal(moved["params"]["conv2d"]["kernel"], after["params"]["conv2d"]["kernel"])
    assert not np.array_equal(moved["batch_stats"]["batch_normalization"]["moving_mean"],
                              after["batch_stats"]["batch_normalization"]["moving_mean"])


def test_frozen_conv_base_inside_sequential():
    """The lecture's Sequential([conv_base, Flatten(), Dense(...)]) with conv_base.trainable = False."""
    x, y = data()
    base = Sequential([Conv2D(4, 3, activation="relu"), BatchNormalization(), MaxPooling2D(2)])
    model = Sequential([base, Flatten(), Dense(1, activation="sigmoid")])
    t = Trainer(model, trainable={"sequential": False, "dense": True})
    t.build(x[:8])
    assert set(t.variables["params"]) == {"sequential", "dense"}
    before = t.variables
    t.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for frozen in (lambda v: v["params"]["sequential"], lambda v: v["batch_stats"]):
        want = leaves_with_paths(frozen(before))
        for k, v in leaves_with_paths(frozen(t.variables)).items():
            np.testing.assert_array_equal(v, want[k], err_msg=k)
    assert not np.array_equal(t.variables["params"]["dense"]["kernel"], before["params"]["dense"]["kernel"])


def test_frozen_weights_cost_no_gradient_flops():
    x, y = data()
    full, frozen = Trainer(tiny()), Trainer(tiny(), trainable={"conv2d": False, "dense": True})

    def step_flops(t):
        t.build(x[:8])
        return t._train_step.lower(t.state, (x[:8], y[:8])).compile().cost_analysis()["flops"]
    # the conv kernel's gradient (a correlation of the input with the output gradient) is not computed
    assert step_flops(frozen) < 0.8 * step_flops(full)


def test_trainable_mask_errors_name_the_parameter():
    x, _ = data()
    with pytest.raises(ValueError, match=r"entries that are no parameter: \['dense/kernal'\]"):
        Trainer(tiny(), variables=None, trainable={"conv2d": True, "dense": {"kernal": True}}).build(x[:2])


def test_terminate_on_nan_keeps_last_good_checkpoint(tmp_path, capsys):
    x, y = data()
    bad = x.copy()
    bad[3] = np.nan

    class Epochs:  # the second epoch meets a NaN image
        epoch = 0

        def __iter__(self):
            self.epoch += 1
            src = x if self.epoch == 1 else bad
            return iter([(src[i:i + 8], y[i:i + 8]) for i in range(0, 40, 8)])
    t = Trainer(tiny())
    path = tmp_path / "ckpt"
    h = t.fit(Epochs(), epochs=5, callbacks=[TerminateOnNaN(), ModelCheckpoint(str(path), monitor="loss")],
              verbose=0)
    out = capsys.readouterr().out
    assert "Batch 0: invalid loss nan, terminating training" in out
    assert len(h.history["loss"]) == 2 and np.isnan(h.history["loss"][1])
    good = Trainer.restore(path, tiny())
    assert good.epoch == 1 and np.isfinite(good.evaluate(x, y)[0])


def test_model_checkpoint_formats_names_and_saves_best_only(tmp_path, shared):
    x, y = data()
    t = shared
    cb = ModelCheckpoint(str(tmp_path / "m-{epoch:02d}-{val_loss:.3f}"), save_best_only=True)
    h = t.fit(x, y, batch_size=8, epochs=4, validation_data=(x, y), callbacks=[cb], verbose=0)
    vl = h.history["val_loss"]
    expected = [f"m-{e + 1:02d}-{v:.3f}" for e, v in enumerate(vl) if v < min(vl[:e], default=np.inf)]
    assert sorted(p.name for p in tmp_path.iterdir()) == expected
    with pytest.raises(KeyError, match="names 'val_accuracy'"):
        t.fit(x, y, epochs=1, verbose=0, callbacks=[ModelCheckpoint(str(tmp_path / "{val_accuracy}"))])


def test_csv_logger_and_tensorboard_read_back(tmp_path, shared):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    x, y = data()
    t = shared
    log = tmp_path / "log.csv"
    h = t.fit(x, y, batch_size=8, epochs=2, validation_data=(x, y), verbose=0,
              callbacks=[CSVLogger(log), TensorBoard(tmp_path / "tb")])
    t.fit(x, y, batch_size=8, epochs=3, initial_epoch=2, verbose=0, validation_data=(x, y),
          callbacks=[CSVLogger(log, append=True)])
    rows = list(csv.DictReader(log.open()))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert float(rows[1]["val_loss"]) == pytest.approx(h.history["val_loss"][1])
    for split, key in (("train", "loss"), ("validation", "val_loss")):
        acc = EventAccumulator(str(tmp_path / "tb" / split))
        acc.Reload()
        events = acc.Scalars("epoch_loss")
        assert [e.step for e in events] == [0, 1]
        np.testing.assert_allclose([e.value for e in events], h.history[key][:2], rtol=1e-6)
    acc = EventAccumulator(str(tmp_path / "tb" / "train"))
    acc.Reload()
    assert {"epoch_accuracy", "epoch_learning_rate"} <= set(acc.Tags()["scalars"])


def test_changing_the_learning_rate_does_not_recompile(shared):
    x, y = data()
    shared.train_on_batch(x[:8], y[:8])
    compiled = shared._train_step._cache_size()
    before = shared.variables["params"]["dense"]["kernel"]
    shared.learning_rate = 0.0
    shared.train_on_batch(x[:8], y[:8])
    np.testing.assert_array_equal(shared.variables["params"]["dense"]["kernel"], before)  # lr 0: no move
    shared.learning_rate = 1e-2
    shared.train_on_batch(x[:8], y[:8])
    assert shared._train_step._cache_size() == compiled
    assert not np.array_equal(shared.variables["params"]["dense"]["kernel"], before)


def test_progress_output(capsys, shared):
    x, y = data(16)
    t = shared
    t.fit(x, y, batch_size=8, epochs=2, validation_data=(x, y), verbose=2,
          callbacks=ReduceLROnPlateau(patience=5))  # one callback, not a list, as Keras takes; it logs the rate
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Epoch 1/2" and lines[2] == "Epoch 2/2" and len(lines) == 4
    assert lines[1].startswith("2/2 - ") and "ms/step - accuracy: " in lines[1]
    assert lines[1].index(" loss: ") < lines[1].index("val_accuracy: ") < lines[1].index("learning_rate: ")
    t.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert capsys.readouterr().out == ""
    t.fit(x, y, batch_size=8, epochs=1, verbose=1)
    captured = capsys.readouterr()
    assert captured.out.startswith("Epoch 1/1\n2/2 - ") and "step" in captured.err  # tqdm bar on stderr


def test_history_json_plot_and_smoothing(tmp_path):
    h = History({"loss": [1.0, 0.5, float("nan")], "accuracy": [0.5, 0.7, 0.8],
                 "val_loss": [1.1, 0.7, 0.6], "val_accuracy": [0.4, 0.6, 0.7]}, [0, 1, 2])
    h.save(tmp_path / "h.json")
    back = History.load(tmp_path / "h.json")
    assert back.epoch == h.epoch and back.history["val_loss"] == h.history["val_loss"]
    assert np.isnan(back.history["loss"][2])
    paths = h.plot(tmp_path / "curves.png", smooth=0.8)
    assert [p.name for p in paths] == ["curves_accuracy.png", "curves_loss.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    figs = h.plot()
    train_line, val_line = figs[0].axes[0].get_lines()
    assert train_line.get_marker() == "o" and train_line.get_linestyle() == "None"
    from matplotlib.colors import to_rgba
    assert val_line.get_linestyle() == "-"
    assert to_rgba(train_line.get_color()) == to_rgba(val_line.get_color()) == to_rgba("b")
    # the lecture's smooth_curve: previous * factor + point * (1 - factor), first point kept
    pts = [0.0, 1.0, 1.0, 0.0]
    want, prev = [], None
    for p in pts:
        prev = p if prev is None else prev * 0.8 + p * 0.2
        want.append(prev)
    np.testing.assert_allclose(smooth_curve(pts), want)
