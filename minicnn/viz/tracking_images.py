"""Pictures for a training run's tracker: :class:`ImageLogger` writes, every few epochs, images made
from the trainer's current variables by the functions of :mod:`minicnn.viz` (augmentation samples,
Grad-CAM overlays, filter grids) through a :class:`minicnn.train.tracking.Tracker` (TensorBoard by
default). It lives here, not in ``minicnn.train``, because those pictures are viz's (docs/DESIGN.md layers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from minicnn.train.callbacks import Callback
from minicnn.train.tracking import TensorBoardTracker, Tracker
from minicnn.viz.gradcam import grad_cam
from minicnn.viz.plots import overlay

__all__ = ["ImageLogger", "grad_cam_overlay"]


def grad_cam_overlay(model: nn.Module, variables: Mapping, image, class_index=None, layer: str | None = None,
                     preprocess: Callable | None = None, alpha: float = 0.4, target: str = "logit") -> np.ndarray:
    """:func:`~minicnn.viz.grad_cam` of one image drawn over it with :func:`~minicnn.viz.overlay`.

    image: (H, W, 3) pixels in [0, 255]; ``preprocess`` maps the (1, H, W, 3) float32 pixels to the model's
    input (default: as they are); ``class_index``, ``layer``, ``target`` as in ``grad_cam``.
    Returns (H, W, 3) uint8.
    """
    pixels = jnp.asarray(image, jnp.float32)[None]
    x = pixels if preprocess is None else preprocess(pixels)
    heatmap = grad_cam(model, variables, x, class_index, layer, target)[0]
    return np.asarray(overlay(image, np.asarray(heatmap), alpha))


class ImageLogger(Callback):
    """Write ``images`` to a tracker at the end of every epoch with ``epoch % every == 0`` (Keras'
    ``histogram_freq`` rule), as ``images/<name>`` with the epoch as the step.

    tracker: a :class:`~minicnn.train.tracking.Tracker` (e.g. the one a ``TensorBoard(tracker=)`` callback
    writes to; flushed each epoch, never closed here) or a log directory (a ``TensorBoardTracker`` opened
    there and closed at the end of training). images: ``{name: fn(variables) -> image}``; ``variables`` is
    the trainer's current ``{"params", "batch_stats"}`` (host copy), an image anything ``Tracker.image`` takes::

        ImageLogger("logs", {
            "augmentation": lambda v: viz.show_augmentations(cat, augmenter, n=8),
            "grad_cam": lambda v: viz.grad_cam_overlay(model, v, cat, preprocess=lambda x: x / 255),
            "filters": lambda v: viz.plot_filter_grid(viz.filter_patterns(model, v, "conv2d_1", range(8), size=64)),
        }, every=5)
    """

    def __init__(self, tracker: Tracker | str | Path, images: Mapping[str, Callable[[dict], object]], every: int = 1):
        super().__init__()
        if type(every) is not int or every < 1:
            raise ValueError(f"ImageLogger: every must be a positive int (epochs), got {every!r}")
        not_callable = [name for name, fn in images.items() if not callable(fn)]
        if not_callable:
            raise TypeError(f"ImageLogger: images maps names to functions of the variables; {not_callable} are not callable")
        self._owns_tracker = isinstance(tracker, (str, Path))
        self.tracker = TensorBoardTracker(tracker) if self._owns_tracker else tracker
        if not isinstance(self.tracker, Tracker):
            raise TypeError(f"ImageLogger: tracker must be a Tracker or a log directory, got {type(tracker).__name__}")
        self.images, self.every = dict(images), every

    def on_epoch_end(self, epoch, logs=None):
        if epoch % self.every:
            return
        variables = self.trainer.variables
        for name, make in self.images.items():
            self.tracker.image(f"images/{name}", make(variables), epoch)
        self.tracker.flush()

    def on_train_end(self, logs=None):
        if self._owns_tracker:
            self.tracker.close()
