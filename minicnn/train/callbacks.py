"""Keras callbacks with Keras 3's semantics (``keras/src/callbacks``), on a :class:`Trainer`.

A callback sees the trainer as ``self.trainer``: ``trainer.stop_training``, ``trainer.learning_rate``
(read/write), ``trainer.variables`` (a host copy) and ``trainer.set_variables``, ``trainer.save``.
Epochs are 0-based in the hooks and 1-based in messages and file names, as in Keras.

One deliberate difference: a ``monitor`` that is not in the logs at the end of an epoch raises
``ValueError`` (naming the monitor and the logged names). Keras 3 only warns, every epoch, so a
misspelt monitor (``"val_acc"`` when the metric is ``"accuracy"``) silently never stops, saves or
reduces anything.
"""

from __future__ import annotations

import csv
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

from minicnn.train import tracking
from minicnn.train.metrics import direction

__all__ = ["Callback", "CallbackList", "EarlyStopping", "ModelCheckpoint", "LearningRateScheduler",
           "ReduceLROnPlateau", "CSVLogger", "TensorBoard", "TerminateOnNaN", "ProgbarLogger"]


class Callback:
    """Base class: override any of the hooks. ``logs`` maps names to Python floats at epoch end and
    to running means (scalars, possibly still on the device) at batch end."""

    def __init__(self):
        self.trainer = None

    def set_trainer(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, logs=None): ...
    def on_train_end(self, logs=None): ...
    def on_epoch_begin(self, epoch, logs=None): ...
    def on_epoch_end(self, epoch, logs=None): ...
    def on_batch_begin(self, batch, logs=None): ...
    def on_batch_end(self, batch, logs=None): ...


def _writes(callback: Callback) -> bool:
    """Whether ``callback`` writes files or prints progress (only process 0 of a multi-process run does)."""
    return isinstance(callback, (ModelCheckpoint, CSVLogger, TensorBoard, ProgbarLogger))


class CallbackList(Callback):
    """Calls each hook on every callback, in order.

    In a multi-process run (``jax.distributed``) the callbacks that write files or print progress
    (``ModelCheckpoint``, ``CSVLogger``, ``TensorBoard``, ``ProgbarLogger``) run on process 0 only; every
    other callback runs on every process, so all processes take the same decisions (stop, learning rate).
    """

    def __init__(self, callbacks: Sequence[Callback] = ()):
        super().__init__()
        self.callbacks = [c for c in callbacks if jax.process_index() == 0 or not _writes(c)]

    def set_trainer(self, trainer):
        for c in self.callbacks:
            c.set_trainer(trainer)

    def _call(self, hook, *args):
        for c in self.callbacks:
            getattr(c, hook)(*args)

    def on_train_begin(self, logs=None): self._call("on_train_begin", logs)
    def on_train_end(self, logs=None): self._call("on_train_end", logs)
    def on_epoch_begin(self, epoch, logs=None): self._call("on_epoch_begin", epoch, logs)
    def on_epoch_end(self, epoch, logs=None): self._call("on_epoch_end", epoch, logs)
    def on_batch_begin(self, batch, logs=None): self._call("on_batch_begin", batch, logs)
    def on_batch_end(self, batch, logs=None): self._call("on_batch_end", batch, logs)


class _Monitor(Callback):
    """Keras' ``MonitorCallback``: improvement means ``current - min_delta`` beats ``best`` in the
    direction of ``mode`` (``"auto"``: :func:`minicnn.train.metrics.direction`, down for losses, up for
    accuracies, AUC, precision and recall)."""

    def __init__(self, monitor: str, mode: str, min_delta: float, baseline: float | None = None):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"{type(self).__name__}: mode must be 'auto', 'min' or 'max', got {mode!r}")
        if mode == "auto":
            way = direction(monitor)
            if way is None:
                raise ValueError(f"{type(self).__name__}: cannot tell whether {monitor!r} should go up "
                                 f"or down; pass mode='min' or mode='max'")
            mode = "max" if way == "up" else "min"
        self.monitor, self.mode = monitor, mode
        self.min_delta = abs(min_delta) * (-1 if mode == "min" else 1)
        self.baseline = baseline

    def _is_improvement(self, current, reference) -> bool:
        if reference is None:
            return True
        shifted = current - self.min_delta
        return shifted < reference if self.mode == "min" else shifted > reference

    def _current(self, logs):
        """The monitored value; a monitor missing from the logs raises (Keras 3 warns and goes on)."""
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ValueError(f"{type(self).__name__} monitors {self.monitor!r}, which is not in the logs "
                             f"(logged: {', '.join(logs or {}) or 'nothing'}); metrics are logged under the "
                             f"names given to the Trainer (metrics=['acc'] logs 'acc' and 'val_acc'). Keras 3 "
                             f"only warns here and the callback never acts; minicnn stops the run instead")
        return value


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    ``restore_best_weights=True`` puts back the variables of the best epoch when training ends (the
    first monitored epoch's if none improved). ``baseline``: keep waiting unless it is beaten.
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__(monitor, mode, min_delta, baseline)
        self.patience, self.verbose = patience, verbose
        self.restore_best_weights, self.start_from_epoch = restore_best_weights, start_from_epoch

    def on_train_begin(self, logs=None):
        self.wait, self.stopped_epoch, self.best, self.best_epoch = 0, 0, None, 0
        self.best_weights = None

    def on_epoch_end(self, epoch, logs=None):
        current = self._current(logs)
        if epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = self.trainer.variables, epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.trainer.variables
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.trainer.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.trainer.set_variables(self.best_weights)


class ModelCheckpoint(_Monitor):
    """Save the whole train state (``trainer.save``) after each epoch to ``filepath``, formatted
    with ``epoch`` (1-based) and the logs: ``"ckpt/{epoch:02d}-{val_loss:.3f}"``.

    ``save_freq``: ``"epoch"``, or an int N to save after every N batches (counted across epochs,
    as Keras does), the path formatted with ``batch`` (1-based within the epoch) too and the batch
    logs (running means): ``"ckpt/{epoch}-{batch}"``. A checkpoint saved mid-epoch records fit's data
    position: ``Trainer(...).load(path)`` then ``fit(..., initial_epoch=trainer.epoch)`` continues exactly.

    ``save_best_only`` saves only when ``monitor`` improves. A non-finite ``loss`` is never saved,
    so the last good checkpoint survives a divergence.

    Not in Keras: ``max_to_keep`` (keep the latest N) and/or ``keep_best`` (keep the k best by
    ``monitor``/``mode``) make ``filepath`` a directory of numbered steps (step = epoch, 1-based) kept
    by orbax's CheckpointManager (:class:`minicnn.weights.store.Manager`; orbax's names); it then
    takes no ``{...}`` fields. ``async_save`` (default) writes in the background while training goes
    on, from a copy taken at the save; the next save and the end of training wait for it. Load a step
    with ``minicnn.load_model(filepath)`` (latest), ``step=`` or ``best=True``.
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False, mode="auto",
                 initial_value_threshold=None, save_freq="epoch", max_to_keep=None, keep_best=None,
                 async_save=True):
        super().__init__(monitor, mode, 0.0)
        if save_freq != "epoch" and not (isinstance(save_freq, int) and not isinstance(save_freq, bool)
                                         and save_freq > 0):
            raise ValueError(f"Unrecognized save_freq: {save_freq!r}. Expected 'epoch' or a positive integer "
                             f"(save every N batches)")
        if save_freq != "epoch" and (max_to_keep is not None or keep_best is not None):
            raise ValueError(f"ModelCheckpoint(save_freq={save_freq}) with max_to_keep=/keep_best=: the kept steps "
                             f"are epochs; use save_freq='epoch', or a filepath with {{epoch}} and {{batch}}")
        self.filepath, self.verbose, self.save_best_only = str(filepath), verbose, save_best_only
        self.save_freq, self._epoch, self._batches_since_save = save_freq, 0, 0
        self.best = initial_value_threshold
        self.max_to_keep, self.keep_best, self.async_save, self.manager = max_to_keep, keep_best, async_save, None
        if (max_to_keep is not None or keep_best is not None) and "{" in self.filepath:
            raise ValueError(f"ModelCheckpoint({self.filepath!r}, max_to_keep=, keep_best=): the path is the "
                             f"directory of numbered steps (one per epoch) and takes no {{...}} fields")

    def on_train_begin(self, logs=None):
        if self.max_to_keep is not None or self.keep_best is not None:
            from minicnn.weights.store import Manager
            self.manager = Manager(self.filepath, max_to_keep=self.max_to_keep, keep_best=self.keep_best,
                                   monitor=self.monitor, mode=self.mode, async_save=self.async_save)

    def on_train_end(self, logs=None):
        if self.manager is not None:
            self.manager.close()
            self.manager = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._batches_since_save += 1
        if self._batches_since_save >= self.save_freq:
            self._batches_since_save = 0
            self._save(self._epoch, batch, {k: float(v) for k, v in (logs or {}).items()})

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, None, logs or {})

    def _save(self, epoch, batch, logs):
        fields = {"epoch": epoch + 1} if batch is None else {"epoch": epoch + 1, "batch": batch + 1}
        try:
            path = self.filepath.format(**fields, **logs)
        except KeyError as e:
            raise KeyError(f"ModelCheckpoint filepath {self.filepath!r} names {e}, which is not in the logs "
                           f"(available: {', '.join([*fields, *logs])})") from None
        if not math.isfinite(logs.get("loss", 0.0)):
            warnings.warn(f"Epoch {epoch + 1}: loss is {logs['loss']}; not saving {path}", stacklevel=2)
            return
        if self.keep_best is not None:
            self._current(logs)  # the metric steps are ranked by: missing is an error
        if self.save_best_only:
            current = self._current(logs)
            if not self._is_improvement(current, self.best):
                if self.verbose:
                    print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")
                return
            if self.verbose:
                print(f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best} to {current:.5f}, "
                      f"saving model to {path}")
            self.best = current
        elif self.verbose:
            print(f"\nEpoch {epoch + 1}: saving model to {path}")
        self.trainer.save(self.manager or path)


class LearningRateScheduler(Callback):
    """At each epoch's start set the learning rate to ``schedule(epoch, lr)`` (``epoch`` 0-based); at its
    end log it as ``learning_rate`` (as Keras 3 does, so History has it)."""

    def __init__(self, schedule: Callable[[int, float], float], verbose=0):
        super().__init__()
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch, logs=None):
        lr = float(self.schedule(epoch, self.trainer.learning_rate))
        self.trainer.learning_rate = lr
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.trainer.learning_rate)


class ReduceLROnPlateau(_Monitor):
    """Multiply the learning rate by ``factor`` after ``patience`` epochs without an improvement
    larger than ``min_delta`` (absolute, per epoch, like Keras), then wait ``cooldown`` epochs;
    never below ``min_lr``. Logs the epoch's learning rate (before any reduction) as ``learning_rate``,
    as Keras 3 does."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0):
        super().__init__(monitor, mode, min_delta)
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be < 1, got {factor}")
        self.factor, self.patience, self.verbose = factor, patience, verbose
        self.cooldown, self.min_lr = cooldown, min_lr

    def on_train_begin(self, logs=None):
        self.best, self.wait, self.cooldown_counter = None, 0, 0

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.trainer.learning_rate)
        current = self._current(logs)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current, self.best):
            self.best, self.wait = current, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = self.trainer.learning_rate
                # As Keras: compare with min_lr in float32, so rounding cannot keep reducing at the floor.
                if old > np.float32(self.min_lr):
                    new = max(old * self.factor, self.min_lr)
                    self.trainer.learning_rate = new
                    if self.verbose:
                        print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}.")
                    self.cooldown_counter, self.wait = self.cooldown, 0


class CSVLogger(Callback):
    """Append one row per epoch (``epoch`` then the sorted log keys) to ``filename``."""

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename, self.sep, self.append = Path(filename), separator, append

    def on_train_begin(self, logs=None):
        self.keys = None
        exists = self.append and self.filename.exists() and self.filename.stat().st_size > 0
        if exists:
            with self.filename.open(newline="") as f:
                self.keys = next(csv.reader(f, delimiter=self.sep))[1:]
        self.filename.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.filename.open("a" if self.append else "w", newline="")
        self.writer = csv.writer(self.file, delimiter=self.sep)
        self.header_written = exists

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
        if not self.header_written:
            self.writer.writerow(["epoch", *self.keys])
            self.header_written = True
        self.writer.writerow([epoch, *(logs.get(k, "NA") for k in self.keys)])
        self.file.flush()

    def on_train_end(self, logs=None):
        self.file.close()


class TensorBoard(Callback):
    """Keras' ``TensorBoard`` callback without TensorFlow: records go through a
    :class:`~minicnn.train.tracking.Tracker`, by default a :class:`~minicnn.train.tracking.TensorBoardTracker`
    writing tensorboardX event files under ``log_dir`` (runs ``train``, ``validation``), with Keras' tags:

    - each epoch: ``train/epoch_<name>`` for the training logs, ``epoch_learning_rate`` (the trainer's rate at
      the epoch's end) and, with ``write_steps_per_second``, ``epoch_steps_per_second``; ``validation/epoch_<name>``
      for the ``val_`` logs (the same tags, so TensorBoard overlays them) and
      ``validation/evaluation_<name>_vs_iterations`` at the optimizer step;
    - ``update_freq="batch"`` or n: each n-th batch of the fit (counted from 1 over all its epochs, step = that
      count) writes ``train/batch_<name>`` (the epoch's running means, as Keras logs them),
      ``batch_learning_rate`` and, with ``write_steps_per_second``, ``batch_steps_per_second``;
    - ``histogram_freq`` n > 0: each epoch with ``epoch % n == 0`` writes ``train/<layer>/<variable>/histogram``
      for every parameter and batch statistic, and with ``write_images`` the weights Keras shows as images
      (``.../image``, :func:`~minicnn.train.tracking.weight_image`);
    - ``hparams`` (a dict; None writes none, as Keras): at the end of training, those values over the Trainer's
      compile arguments (:func:`~minicnn.train.tracking.compile_hparams`), with the last epoch's logs as the
      metrics, for TensorBoard's HParams dashboard.

    ``tracker``: write there instead of ``log_dir`` (another tracker, or one shared with
    :class:`minicnn.viz.ImageLogger`); the callback flushes it each epoch and closes only a tracker it made.
    ``batch_steps_per_second`` is the batches since the previous write over the time since then (reading
    a batch's logs waits for its step, so this is the device's rate; Keras times one call of the host,
    which under JAX's asynchronous dispatch is not the step's time). Keras' ``write_graph``, ``profile_batch``
    and ``embeddings_*`` are not arguments: minicnn has no graph or embedding summary to write.
    """

    def __init__(self, log_dir="logs", histogram_freq=0, write_images=False, write_steps_per_second=False,
                 update_freq="epoch", *, tracker: tracking.Tracker | None = None, hparams: dict | None = None):
        super().__init__()
        update_freq = 1 if update_freq == "batch" else update_freq
        if update_freq != "epoch" and (type(update_freq) is not int or update_freq < 1):
            raise ValueError(f"TensorBoard: update_freq must be 'epoch', 'batch' or a positive int, got {update_freq!r}")
        if type(histogram_freq) is not int or histogram_freq < 0:
            raise ValueError(f"TensorBoard: histogram_freq must be an int >= 0 (0: no histograms), got {histogram_freq!r}")
        if tracker is not None and str(log_dir) != "logs":
            raise ValueError(f"TensorBoard: pass log_dir={str(log_dir)!r} or tracker=, not both (a tracker "
                             f"decides where its records go)")
        if tracker is not None and not isinstance(tracker, tracking.Tracker):
            raise TypeError(f"TensorBoard(tracker=): {type(tracker).__name__} lacks the Tracker methods "
                            f"(scalar, image, histogram, hparams, flush, close)")
        self.log_dir, self.histogram_freq, self.write_images = str(log_dir), histogram_freq, write_images
        self.write_steps_per_second, self.update_freq = write_steps_per_second, update_freq
        self.hparams = None if hparams is None else tracking.check_hparams(hparams)
        self._owns_tracker = tracker is None
        self.tracker = tracking.TensorBoardTracker(log_dir) if tracker is None else tracker

    def on_train_begin(self, logs=None):
        self._global_train_batch, self._last_logs = 0, {}
        self._last_write = (0, time.perf_counter())  # (batch count, time) of the previous batch write

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = (self._global_train_batch, time.perf_counter())

    def on_batch_begin(self, batch, logs=None):
        self._global_train_batch += 1

    def on_batch_end(self, batch, logs=None):
        step = self._global_train_batch
        if self.update_freq == "epoch" or step % self.update_freq:
            return
        records = {f"batch_{k}": float(v) for k, v in (logs or {}).items()}  # float waits for the step
        records.update(self._learning_rate("batch_learning_rate"))
        if self.write_steps_per_second:
            records["batch_steps_per_second"] = self._steps_per_second(self._last_write)
            self._last_write = (step, time.perf_counter())
        for name, value in records.items():
            self.tracker.scalar(f"train/{name}", value, step)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        train = {k: v for k, v in logs.items() if not k.startswith("val_")}
        train.update(self._learning_rate("learning_rate"))  # Keras reads the optimizer's rate here, over the logs'
        if self.write_steps_per_second:
            train["steps_per_second"] = self._steps_per_second(self._epoch_start)
        for name, value in train.items():
            self.tracker.scalar(f"train/epoch_{name}", value, epoch)
        validation = {k.removeprefix("val_"): v for k, v in logs.items() if k.startswith("val_")}
        for name, value in validation.items():
            self.tracker.scalar(f"validation/epoch_{name}", value, epoch)
            self.tracker.scalar(f"validation/evaluation_{name}_vs_iterations", value, int(self.trainer.state["step"]))
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            self._log_weights(epoch)
        self._last_logs = logs
        self.tracker.flush()

    def on_train_end(self, logs=None):
        if self.hparams is not None:
            self.tracker.hparams({**tracking.compile_hparams(self.trainer), **self.hparams}, self._last_logs)
        if self._owns_tracker:
            self.tracker.close()
        else:
            self.tracker.flush()

    def _learning_rate(self, name: str) -> dict:
        try:
            return {name: float(self.trainer.learning_rate)}
        except ValueError:  # an optax transform without inject_hyperparams has no readable rate
            return {}

    def _steps_per_second(self, since: tuple[int, float]) -> float:
        batches, start = since
        return (self._global_train_batch - batches) / max(time.perf_counter() - start, 1e-9)

    def _log_weights(self, epoch: int) -> None:
        for collection in self.trainer.variables.values():  # params, batch_stats
            for path, weight in traverse_util.flatten_dict(collection, sep="/").items():
                self.tracker.histogram(f"train/{path}/histogram", weight, epoch)
                image = tracking.weight_image(weight) if self.write_images else None
                if image is not None:
                    self.tracker.image(f"train/{path}/image", image, epoch)


class TerminateOnNaN(Callback):
    """Stop training after the first batch whose loss is NaN or infinite."""

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            print(f"Batch {batch}: invalid loss {float(loss)}, terminating training")
            self.trainer.stop_training = True


def _format(value: float) -> str:
    """Keras' progress-bar number: 4 decimals, or scientific notation below 1e-3 (learning rates)."""
    return f"{value:.4e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"


class ProgbarLogger(Callback):
    """Keras-style progress: ``verbose=1`` a per-batch tqdm bar with the running loss and metrics,
    then ``"N/N - 3s 30ms/step - accuracy: 0.5 - loss: 0.69 - val_accuracy: ... - val_loss: ..."``;
    ``verbose=2`` only that line.

    The bar shows the previous batch's running values, at most every ``interval`` seconds: reading
    the current batch's would wait for its step to finish on the device, so the host could not
    prepare the next batch meanwhile (Keras' progress bar also refreshes at an interval).
    """

    def __init__(self, verbose=1, steps: int | None = None, epochs: int | None = None, interval: float = 0.5):
        super().__init__()
        self.verbose, self.steps, self.epochs, self.interval = verbose, steps, epochs, interval
        self.bar = None

    def on_epoch_begin(self, epoch, logs=None):
        print(f"Epoch {epoch + 1}/{self.epochs}")
        self.seen, self.start, self.shown, self.previous = 0, time.perf_counter(), 0.0, None
        if self.verbose == 1:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.steps, unit="step", leave=False, dynamic_ncols=True)

    def on_batch_end(self, batch, logs=None):
        self.seen = batch + 1
        if self.bar is None:
            return
        now = time.perf_counter()
        if self.previous is not None and now - self.shown >= self.interval:
            self.bar.set_postfix({k: f"{float(v):.4f}" for k, v in self.previous.items()}, refresh=False)
            self.shown = now
        self.previous = logs or {}
        self.bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elapsed = time.perf_counter() - self.start
        per_step = 1000 * elapsed / max(self.seen, 1)
        metrics = " - ".join(f"{k}: {_format(v)}" for k, v in sorted((logs or {}).items(), key=_keras_order))
        print(f"{self.seen}/{self.steps or self.seen} - {elapsed:.0f}s {per_step:.0f}ms/step - {metrics}")


def _keras_order(item):
    """Training metrics, then validation metrics, then the learning rate, each group alphabetical."""
    key = item[0]
    return (key == "learning_rate", key.startswith("val_"), key)
