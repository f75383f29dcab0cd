"""ImageNet input conventions and class names, as ``keras.applications.imagenet_utils``."""

from __future__ import annotations

import functools
import json
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["preprocess_input", "decode_predictions", "class_index"]

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MODES = ("caffe", "torch", "tf")


def preprocess_input(x, mode: str = "caffe"):
    """Scale RGB pixels in [0, 255] the way a set of ImageNet weights was trained.

    x: (..., 3) RGB, channels last (NumPy or JAX; integers are converted to float32).
    ``"caffe"`` (Keras VGG16/VGG19): RGB -> BGR, subtract the BGR ImageNet mean, no scaling.
    ``"torch"`` (torchvision): x / 255, subtract mean and divide by std per RGB channel.
    ``"tf"`` (Inception style): x / 127.5 - 1, into [-1, 1].
    Returns a new float array of the same shape and array kind.
    """
    if mode not in MODES:
        raise ValueError(f"preprocess_input: mode must be one of {MODES}, got {mode!r}")
    xp = jnp if isinstance(x, jax.Array) else np
    x = xp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != 3:
        raise ValueError(f"preprocess_input: expected RGB images (..., 3) channels last, got shape {x.shape}")
    if not xp.issubdtype(x.dtype, xp.floating):
        x = x.astype(xp.float32)
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "torch":
        return (x / 255.0 - xp.asarray(_TORCH_MEAN, x.dtype)) / xp.asarray(_TORCH_STD, x.dtype)
    return x[..., ::-1] - xp.asarray(_CAFFE_MEAN_BGR, x.dtype)


@functools.lru_cache(maxsize=1)
def class_index() -> dict[str, list[str]]:
    """``{"0": ["n01440764", "tench"], ...}``: the 1000 ILSVRC-2012 classes in Keras' layout."""
    text = resources.files("minicnn.weights").joinpath("imagenet_class_index.json").read_text()
    return json.loads(text)


def decode_predictions(preds, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """The ``top`` classes of each row of ImageNet scores, best first, as Keras returns them.

    preds: (N, 1000) probabilities or logits. Returns ``[[(wnid, name, score), ...], ...]``.
    """
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError(f"decode_predictions expects a batch of ImageNet predictions (N, 1000), "
                         f"got shape {preds.shape}")
    index = class_index()
    results = []
    for pred in preds:
        best = pred.argsort()[-top:][::-1]
        row = [(*index[str(i)], pred[i]) for i in best]
        row.sort(key=lambda r: r[2], reverse=True)
        results.append(row)
    return results
