"""Trackers: where a training run writes its scalars, images, histograms and hyperparameters.

:class:`Tracker` is the small interface the :class:`~minicnn.train.TensorBoard` callback and
:class:`minicnn.viz.ImageLogger` write through; :class:`TensorBoardTracker` implements it with
tensorboardX (no TensorFlow). Any object with these six methods plugs in instead (an experiment
tracker, a CSV file, a list in a test)::

    class PrintTracker:                      # a complete Tracker
        def scalar(self, name, value, step): print(step, name, value)
        def image(self, name, image, step): print(step, name, as_image(image).shape)
        def histogram(self, name, values, step): print(step, name, np.mean(values))
        def hparams(self, hparams, metrics): print(hparams, metrics)
        def flush(self): ...
        def close(self): ...

    trainer.fit(ds, epochs=5, callbacks=[TensorBoard(tracker=PrintTracker(), update_freq=10)])

Names are ``run/tag``: the part before the first ``/`` names the run (for TensorBoard a subdirectory of
``log_dir``, drawn in its own colour: ``train/epoch_loss`` and ``validation/epoch_loss`` overlay, as
with Keras' callback), the rest the tag; a name without ``/`` belongs to ``log_dir`` itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Tracker", "TensorBoardTracker", "as_image", "split_run", "check_hparams", "compile_hparams", "weight_image"]

HParamValue = str | bool | int | float


@runtime_checkable
class Tracker(Protocol):
    """Where a run's records go. ``step`` is an int; names are ``run/tag`` (see the module docstring)."""

    def scalar(self, name: str, value: float, step: int) -> None: ...

    def image(self, name: str, image, step: int) -> None:
        """image: anything :func:`as_image` takes (a PIL image, (H, W), (H, W, C) or (N, H, W, C))."""

    def histogram(self, name: str, values, step: int) -> None:
        """values: an array of any shape (its distribution is recorded)."""

    def hparams(self, hparams: Mapping[str, HParamValue], metrics: Mapping[str, float]) -> None:
        """A run's hyperparameters (str, bool, int or float values) and the metrics it ended with."""

    def flush(self) -> None: ...

    def close(self) -> None: ...


def as_image(image) -> np.ndarray:
    """An image as uint8 with a channel axis, as TensorBoard shows it.

    image: a PIL image or an array (H, W), (H, W, C) or (N, H, W, C) with C in 1, 3, 4; uint8 is kept,
    floats are taken to be in [0, 1], clipped there and scaled by 255 (``tf.summary.image``'s rule).
    Returns (H, W, C) or (N, H, W, C) uint8.
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim not in (3, 4) or a.shape[-1] not in (1, 3, 4) or 0 in a.shape:
        raise ValueError(f"image: expected (H, W), (H, W, C) or (N, H, W, C) with C in 1, 3, 4, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"image: expected uint8 or float pixels in [0, 1], got dtype {a.dtype}")
    return np.rint(np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0) * 255).astype(np.uint8)


def split_run(name: str) -> tuple[str, str]:
    """``"train/epoch_loss"`` -> ``("train", "epoch_loss")``; ``"loss"`` -> ``("", "loss")``."""
    run, slash, tag = name.partition("/")
    if not slash:
        run, tag = "", name
    if not tag:
        raise ValueError(f"tracker name {name!r}: expected 'run/tag' or 'tag', with a non-empty tag")
    return run, tag


def _hparam(key: str, value) -> HParamValue:
    value = value.item() if isinstance(value, np.generic) else value  # np.int64(32) is an int hyperparameter
    if isinstance(value, (str, bool, int, float)):
        return value
    raise TypeError(f"hparams[{key!r}] = {value!r}: TensorBoard's hparams take str, bool, int or float values")


class TensorBoardTracker:
    """A :class:`Tracker` writing TensorBoard event files under ``log_dir`` with tensorboardX.

    Each run's writer is opened on its first record (so no empty event files), and reopened after
    :meth:`close`. Scalars are stored as float32, as TensorBoard stores them; histograms use
    TensorFlow's bucketing; an (N, H, W, C) image is written as one grid (tensorboardX's
    ``add_images``); :meth:`hparams` writes the HParams dashboard's records and each metric as a
    scalar to ``log_dir`` itself (tensorboardX's ``add_hparams`` would make a new timestamped run).
    Usable as a context manager, which closes it.
    """

    def __init__(self, log_dir: str | Path = "logs"):
        self.log_dir = Path(log_dir)
        self._writers = {}

    def _writer(self, run: str):
        if run not in self._writers:
            from tensorboardX import SummaryWriter  # imported on first use: nothing happens at import
            self._writers[run] = SummaryWriter(str(self.log_dir / run))
        return self._writers[run]

    def scalar(self, name: str, value: float, step: int) -> None:
        run, tag = split_run(name)
        self._writer(run).add_scalar(tag, float(value), int(step))

    def image(self, name: str, image, step: int) -> None:
        run, tag = split_run(name)
        pixels = as_image(image)
        if pixels.ndim == 4:
            self._writer(run).add_images(tag, pixels, int(step), dataformats="NHWC")
        else:
            self._writer(run).add_image(tag, pixels, int(step), dataformats="HWC")

    def histogram(self, name: str, values, step: int) -> None:
        run, tag = split_run(name)
        self._writer(run).add_histogram(tag, np.asarray(values, np.float64).ravel(), int(step), bins="tensorflow")

    def hparams(self, hparams: Mapping[str, HParamValue], metrics: Mapping[str, float]) -> None:
        from tensorboardX.summary import hparams as hparams_summaries
        writer = self._writer("")
        for summary in hparams_summaries(check_hparams(hparams), dict(metrics)):  # experiment, session start, session end
            writer.file_writer.add_summary(summary)
        for k, v in metrics.items():  # the dashboard reads each metric's value from the run's scalar of that tag
            writer.add_scalar(k, float(v), 0)

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

    def __enter__(self) -> "TensorBoardTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_hparams(hparams: Mapping) -> dict:
    """``hparams`` as a dict, each value a str, bool, int or float (else a TypeError naming the key)."""
    return {k: _hparam(k, v) for k, v in hparams.items()}


def _named(x) -> str:
    return x if isinstance(x, str) else getattr(x, "__name__", type(x).__name__)


def compile_hparams(trainer) -> dict:
    """A :class:`~minicnn.train.Trainer`'s compile arguments as hyperparameters: ``loss``, ``from_logits``,
    ``optimizer``, each of its keyword arguments (``learning_rate``) and ``metrics`` (comma-separated);
    an object (a loss function, an optax transform, a schedule) by its ``__name__`` or type name."""
    loss, metrics, from_logits = trainer._compile
    optimizer, optimizer_kwargs = trainer._optimizer
    kwargs = {k: v if isinstance(v, (str, bool, int, float)) else _named(v) for k, v in optimizer_kwargs.items()}
    return {"loss": _named(loss), "from_logits": bool(from_logits), "optimizer": _named(optimizer), **kwargs,
            "metrics": ",".join(map(_named, metrics))}


def weight_image(weight) -> np.ndarray | None:
    """Keras' ``write_images`` view of a weight (``TensorBoard._log_weight_as_image``), or None where Keras
    writes none: the squeezed weight, a bias as (1, n, 1, 1), a matrix as (1, short, long, 1), a 3-D kernel
    as one (h, w) image per last-axis slice; 4-D only when its last axis is 1, 3 or 4 (channels).

    weight: any shape -> (N, H, W, C) float or None.
    """
    w = np.squeeze(np.asarray(weight, np.float32))
    if w.ndim == 1:
        w = w.reshape(1, w.shape[0], 1, 1)
    elif w.ndim == 2:
        w = (w.T if w.shape[0] > w.shape[1] else w)[None, ..., None]
    elif w.ndim == 3:
        w = np.transpose(w, (2, 0, 1))[..., None]
    return w if w.ndim == 4 and w.shape[-1] in (1, 3, 4) else None
