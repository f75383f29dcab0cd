"""Trainer.fit/evaluate against real Keras 3 (JAX backend): the same one-layer Dense model, the same initial
weights, the same arrays; history keys, per-epoch values, early stopping, evaluate's return and the
losses and metrics by name must be Keras'. Tiny shapes: each test runs in a few seconds."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest

from minicnn.layers import Dense, Sequential
from minicnn.train import Trainer
from minicnn.train.callbacks import EarlyStopping

keras = pytest.importorskip("keras", reason="Keras 3 is the reference for fit/evaluate semantics")

N, FEATURES, LR = 24, 4, 0.5


def twins(loss, metrics=None, units=1, activation="sigmoid", seed=0):
    """(keras_model, trainer): the same Dense layer, compiled alike, starting from Keras' initial weights."""
    keras.utils.set_random_seed(seed)
    km = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(units, activation=activation, name="dense")])
    km.compile(optimizer=keras.optimizers.SGD(LR), loss=loss, metrics=metrics)
    kernel, bias = km.layers[0].get_weights()
    trainer = Trainer(Sequential([Dense(units, activation=activation)]), loss, "sgd", metrics,
                      optimizer_kwargs={"learning_rate": LR}, variables={"params": {"dense": {"kernel": kernel, "bias": bias}}})
    return km, trainer


def data(seed=0, kind="binary", classes=1):
    """x (N, FEATURES) float32 and labels: 0/1 (N,), one-hot (N, classes), distributions, or regression targets."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, FEATURES)).astype(np.float32)
    if kind == "binary":
        y = (x[:, 0] + 0.5 * rng.normal(size=N) > 0).astype(np.float32)
    elif kind == "onehot":
        y = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, N)]
    elif kind == "distribution":
        y = rng.random((N, classes)).astype(np.float32)
        y /= y.sum(axis=1, keepdims=True)
    else:
        y = rng.normal(size=(N, classes)).astype(np.float32)
    return x, y


def fit_both(km, trainer, x, y, **kwargs):
    """Both histories (dicts of per-epoch lists), batch 8, no shuffling (the batches must be the same)."""
    kwargs = {"epochs": 3, "batch_size": 8, "shuffle": False, "verbose": 0, **kwargs}
    theirs = km.fit(x, y, **kwargs).history
    ours = trainer.fit(x, y, **kwargs).history
    return ours, theirs


def max_diff(ours: dict, theirs: dict) -> float:
    assert sorted(ours) == sorted(theirs)
    return max(float(np.max(np.abs(np.asarray(ours[k]) - np.asarray(theirs[k])))) for k in theirs)


def test_acc_history_keys_and_values_are_keras():
    km, trainer = twins("binary_crossentropy", ["acc"])
    ours, theirs = fit_both(km, trainer, *data(), validation_data=data(seed=1))
    assert sorted(ours) == sorted(theirs) == ["acc", "loss", "val_acc", "val_loss"]
    assert max_diff(ours, theirs) < 1e-5  # measured 0.0


@pytest.mark.parametrize("monitor", ["val_acc", "val_loss"])
def test_early_stopping_stops_at_keras_epoch(monitor):
    km, trainer = twins("binary_crossentropy", ["acc"])
    x, y = data()
    val = data(seed=1)
    val = (val[0], 1.0 - val[1])  # validation labels flipped: val_loss rises, val_acc falls, so both stop early
    theirs = km.fit(x, y, epochs=12, batch_size=8, shuffle=False, verbose=0, validation_data=val,
                    callbacks=[keras.callbacks.EarlyStopping(monitor=monitor, patience=2)]).history
    ours = trainer.fit(x, y, epochs=12, batch_size=8, shuffle=False, verbose=0, validation_data=val,
                       callbacks=[EarlyStopping(monitor=monitor, patience=2)]).history
    assert len(theirs["loss"]) < 12, "the data must make Keras stop early, else the test proves nothing"
    assert len(ours["loss"]) == len(theirs["loss"])
    assert max_diff(ours, theirs) < 1e-5


def test_unknown_monitor_raises_value_error_as_keras():
    km, trainer = twins("binary_crossentropy", ["acc"])
    x, y = data()
    with pytest.raises(ValueError, match="val_bogus"):
        km.fit(x, y, epochs=1, verbose=0, validation_split=0.25,
               callbacks=[keras.callbacks.EarlyStopping(monitor="val_bogus")])
    with pytest.raises(ValueError, match="val_bogus"):
        trainer.fit(x, y, epochs=1, verbose=0, validation_split=0.25, callbacks=[EarlyStopping(monitor="val_bogus")])


def test_known_metric_missing_from_logs_raises_where_keras_warns():
    """Deliberate difference (callbacks module docstring): Keras warns every epoch and never stops."""
    km, trainer = twins("binary_crossentropy", ["acc"])
    x, y = data()
    with pytest.warns(UserWarning, match="val_acc"):
        km.fit(x, y, epochs=1, verbose=0, callbacks=[keras.callbacks.EarlyStopping(monitor="val_acc")])
    with pytest.raises(ValueError, match="val_acc"):
        trainer.fit(x, y, epochs=1, verbose=0, callbacks=[EarlyStopping(monitor="val_acc")])


def test_single_callback_is_accepted_as_keras():
    km, trainer = twins("binary_crossentropy", ["acc"])
    x, y = data()
    val = data(seed=1)
    val = (val[0], 1.0 - val[1])
    theirs = km.fit(x, y, epochs=12, batch_size=8, shuffle=False, verbose=0, validation_data=val,
                    callbacks=keras.callbacks.EarlyStopping(monitor="val_loss", patience=1)).history
    ours = trainer.fit(x, y, epochs=12, batch_size=8, shuffle=False, verbose=0, validation_data=val,
                       callbacks=EarlyStopping(monitor="val_loss", patience=1)).history
    assert len(ours["loss"]) == len(theirs["loss"]) < 12


@pytest.mark.parametrize("metrics", [None, ["acc"], ["acc", "AUC"]])
def test_evaluate_returns_what_keras_returns(metrics):
    km, trainer = twins("binary_crossentropy", metrics)
    x, y = data()
    theirs, ours = km.evaluate(x, y, batch_size=8, verbose=0), trainer.evaluate(x, y, batch_size=8)
    if metrics is None:
        assert isinstance(ours, float) and isinstance(theirs, float)
    else:
        assert isinstance(ours, list) and len(ours) == len(theirs) == 1 + len(metrics)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)  # measured 0.0
    their_dict = km.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    our_dict = trainer.evaluate(x, y, batch_size=8, return_dict=True)
    assert list(our_dict) == list(their_dict)
    np.testing.assert_allclose(list(our_dict.values()), list(their_dict.values()), atol=1e-5)


def test_evaluate_unpacks_into_loss_and_acc():
    km, trainer = twins("binary_crossentropy", ["acc"])
    x, y = data()
    test_loss, test_acc = trainer.evaluate(x, y)
    k_loss, k_acc = km.evaluate(x, y, verbose=0)
    assert abs(test_loss - k_loss) < 1e-5 and abs(test_acc - k_acc) < 1e-5


@pytest.mark.parametrize("how", ["class_weight", "sample_weight", "validation_split"])
def test_weighted_and_split_fits_match_keras(how):
    km, trainer = twins("binary_crossentropy", ["acc"])
    x, y = data()
    kwargs = {"class_weight": {"class_weight": {0: 1.0, 1: 3.0}},
              "sample_weight": {"sample_weight": np.linspace(0.2, 2.0, N).astype(np.float32)},
              "validation_split": {"validation_split": 0.25}}[how]
    ours, theirs = fit_both(km, trainer, x, y, **kwargs)
    assert sorted(ours) == sorted(theirs)
    assert max_diff(ours, theirs) < 1e-5


@pytest.mark.parametrize("loss, units, activation, kind", [
    ("mse", 2, None, "regression"),
    ("mae", 2, None, "regression"),
    ("hinge", 1, "tanh", "binary"),
    ("categorical_hinge", 3, None, "onehot"),
    ("kl_divergence", 3, "softmax", "distribution"),
])
def test_losses_by_name_match_keras(loss, units, activation, kind):
    km, trainer = twins(loss, None, units, activation)
    x, y = data(kind=kind, classes=units)
    ours, theirs = fit_both(km, trainer, x, y, validation_data=data(seed=1, kind=kind, classes=units))
    assert max_diff(ours, theirs) < 1e-5  # measured <= 2.4e-7 (categorical_hinge)


@pytest.mark.parametrize("metrics, loss, units, activation, kind", [
    (["top_k_categorical_accuracy"], "categorical_crossentropy", 8, "softmax", "onehot"),
    (["AUC", "Precision", "Recall"], "binary_crossentropy", 1, "sigmoid", "binary"),
])
def test_metrics_by_name_match_keras(metrics, loss, units, activation, kind):
    km, trainer = twins(loss, metrics, units, activation)
    x, y = data(kind=kind, classes=units)
    # batches of 5: the last one is short, so a mean of batch values (not Keras' streaming totals) would differ
    ours, theirs = fit_both(km, trainer, x, y, batch_size=5, validation_data=data(seed=1, kind=kind, classes=units))
    assert sorted(ours) == sorted(theirs)
    assert max_diff(ours, theirs) < 1e-5  # measured <= 1.2e-7 (val_AUC; same 200 thresholds, interpolation)


@pytest.mark.parametrize("metric", ["acc", "accuracy"])
def test_history_plot_uses_the_logged_accuracy(metric, tmp_path):
    trainer = twins("binary_crossentropy", [metric])[1]
    x, y = data()
    history = trainer.fit(x, y, epochs=2, verbose=0, validation_split=0.25)
    paths = history.plot(tmp_path / "h.png")
    assert [p.name for p in paths] == [f"h_{metric}.png", "h_loss.png"]
    assert all(p.stat().st_size > 0 for p in paths)
