"""Callbacks on scripted monitor sequences, decision for decision against Keras 3's own callbacks."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest

from minicnn.layers import Dense
from minicnn.train import EarlyStopping, LearningRateScheduler, ReduceLROnPlateau, Trainer

keras = pytest.importorskip("keras", reason="Keras 3's callbacks are the reference")

LR = 0.01


@pytest.fixture(scope="module")
def trainer():
    t = Trainer(Dense(1), optimizer="sgd", optimizer_kwargs={"learning_rate": LR})
    t.build(np.zeros((1, 2), np.float32))
    return t


def keras_model():
    m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    m.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    return m


def mark(epoch):
    """Weights that say which epoch they are from."""
    return np.full((2, 1), epoch, np.float32), np.full((1,), epoch, np.float32)


def drive_ours(cb, t, seq, monitor):
    t.learning_rate, t.stop_training = LR, False
    cb.set_trainer(t)
    cb.on_train_begin()
    lrs = []
    for epoch, value in enumerate(seq):
        kernel, bias = mark(epoch)
        t.set_variables({"params": {"kernel": kernel, "bias": bias}})
        cb.on_epoch_begin(epoch)
        lrs.append(t.learning_rate)
        cb.on_epoch_end(epoch, {monitor: value})
        if t.stop_training:
            break
    cb.on_train_end()
    return {"epochs": epoch + 1, "lr": lrs, "weights": float(t.variables["params"]["kernel"][0, 0])}


def drive_keras(cb, seq, monitor):
    m = keras_model()
    cb.set_model(m)
    cb.on_train_begin()
    lrs = []
    for epoch, value in enumerate(seq):
        m.set_weights(list(mark(epoch)))
        cb.on_epoch_begin(epoch)
        lrs.append(float(np.asarray(m.optimizer.learning_rate)))
        cb.on_epoch_end(epoch, {monitor: value})
        if m.stop_training:
            break
    cb.on_train_end()
    return {"epochs": epoch + 1, "lr": lrs, "weights": float(m.get_weights()[0][0, 0])}


def same(ours, theirs):
    assert ours["epochs"] == theirs["epochs"]
    assert ours["weights"] == theirs["weights"]
    np.testing.assert_allclose(ours["lr"], theirs["lr"], rtol=1e-6)


EARLY_STOPPING = [  # (monitor, kwargs, sequence, epochs run)
    ("val_loss", dict(patience=2), [1.0, 0.9, 0.95, 0.94, 0.93, 0.8], 4),      # 2 epochs without a new best
    ("val_loss", dict(patience=0), [1.0, 0.9, 0.9], 3),                        # equal is not better
    ("val_loss", dict(patience=2, min_delta=0.05), [1.0, 0.96, 0.93, 0.9, 0.89, 0.5], 5),  # 0.96 is no gain
    ("val_accuracy", dict(patience=2, mode="max"), [0.5, 0.6, 0.6, 0.55, 0.7, 0.6, 0.6], 4),
    ("val_loss", dict(patience=2, restore_best_weights=True), [1.0, 0.8, 0.9, 0.85, 0.95], 4),
    ("val_loss", dict(patience=1, restore_best_weights=True), [1.0, 1.2, 1.3], 2),  # first epoch stays best
    ("val_loss", dict(patience=2, baseline=0.5), [0.9, 0.8, 0.7, 0.6], 4),  # improving: never stops
    ("val_loss", dict(patience=2, baseline=0.5), [0.9, 0.8, 0.8, 0.7], 3),  # waits count from the first epoch
    ("val_loss", dict(patience=1, start_from_epoch=2), [1.0, 2.0, 3.0, 4.0, 5.0], 4),
    ("loss", dict(patience=3, mode="min", min_delta=0.01), [1.0, 0.995, 0.99, 0.995, 0.99, 0.9], 4),
]


@pytest.mark.parametrize("monitor, kwargs, seq, epochs", EARLY_STOPPING)
def test_early_stopping_matches_keras(trainer, monitor, kwargs, seq, epochs):
    ours = drive_ours(EarlyStopping(monitor, **kwargs), trainer, seq, monitor)
    assert ours["epochs"] == epochs
    same(ours, drive_keras(keras.callbacks.EarlyStopping(monitor, **kwargs), seq, monitor))


def test_restore_best_weights_puts_back_the_best_epoch(trainer):
    ours = drive_ours(EarlyStopping(patience=2, restore_best_weights=True), trainer, [1.0, 0.8, 0.9, 0.85], "val_loss")
    assert ours["weights"] == 1.0  # epoch 1 had the lowest val_loss


def test_auto_mode_reads_the_metric_name():
    assert EarlyStopping("val_accuracy").mode == "max" and EarlyStopping("loss").mode == "min"
    # Keras' metrics carry a direction: AUC, precision and recall go up, losses used as metrics go down
    assert EarlyStopping("val_auc").mode == "max" and EarlyStopping("Precision").mode == "max"
    assert EarlyStopping("val_mse").mode == "min"
    with pytest.raises(ValueError, match="pass mode='min' or mode='max'"):
        EarlyStopping("val_f1ish")


PLATEAU = [  # (kwargs, sequence)
    (dict(factor=0.5, patience=1), [1.0] * 6),
    (dict(factor=0.5, patience=2), [1.0, 0.9, 0.9, 0.9, 0.8, 0.85, 0.85, 0.85]),
    (dict(factor=0.5, patience=1, cooldown=2), [1.0] * 9),
    (dict(factor=0.1, patience=1, min_lr=1.5e-4), [1.0] * 7),                   # floor, then no more changes
    (dict(factor=0.5, patience=1, min_delta=0.1), [1.0, 0.95, 0.91, 0.85, 0.8, 0.78, 0.5, 0.45]),
    (dict(factor=0.5, patience=1, mode="max"), [0.5, 0.6, 0.6, 0.7, 0.65, 0.64]),
    (dict(factor=0.2, patience=2, cooldown=1, min_lr=1e-3), [3.0, 2.0, 2.5, 2.5, 2.5, 2.5, 1.0, 1.5, 1.5, 1.5]),
]


@pytest.mark.parametrize("kwargs, seq", PLATEAU)
def test_reduce_lr_on_plateau_matches_keras(trainer, kwargs, seq):
    ours = drive_ours(ReduceLROnPlateau(**kwargs), trainer, seq + [seq[-1]], "val_loss")
    same(ours, drive_keras(keras.callbacks.ReduceLROnPlateau(**kwargs), seq + [seq[-1]], "val_loss"))


def test_reduce_lr_cooldown_and_floor_by_hand(trainer):
    lrs = drive_ours(ReduceLROnPlateau(factor=0.5, patience=1, cooldown=2), trainer, [1.0] * 8, "val_loss")["lr"]
    # reduce after epoch 1; Keras counts the cooldown down before it checks it, so cooldown=2 leaves
    # one epoch uncounted (epoch 2) and the next plateau epoch (3) reduces again
    np.testing.assert_allclose(lrs, [LR, LR, LR / 2, LR / 2, LR / 4, LR / 4, LR / 8, LR / 8], rtol=1e-6)
    lrs = drive_ours(ReduceLROnPlateau(factor=0.1, patience=1, min_lr=5e-4), trainer, [1.0] * 5, "val_loss")["lr"]
    np.testing.assert_allclose(lrs, [LR, LR, 1e-3, 5e-4, 5e-4], rtol=1e-6)


def test_learning_rate_scheduler_matches_keras(trainer):
    def schedule(epoch, lr):
        return lr if epoch < 2 else lr * 0.5
    seq = [1.0] * 5
    ours = drive_ours(LearningRateScheduler(schedule), trainer, seq, "val_loss")
    same(ours, drive_keras(keras.callbacks.LearningRateScheduler(schedule), seq, "val_loss"))
    np.testing.assert_allclose(ours["lr"], [LR, LR, LR / 2, LR / 4, LR / 8], rtol=1e-6)
