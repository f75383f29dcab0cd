"""Argument and input checks shared by the Keras-application-style models (VGG, EfficientNet)."""

from __future__ import annotations

import warnings

from minicnn import ops

MIN_SIZE = 32  # five stride-2 stages: smaller inputs vanish before the last block


def check_arguments(model) -> None:
    """Keras' constructor checks; call from ``__post_init__`` (normalises ``input_shape`` to ints)."""
    if model.input_shape is not None:
        object.__setattr__(model, "input_shape", tuple(int(d) for d in model.input_shape))
    if model.pooling not in (None, "avg", "max"):
        raise ValueError(f'pooling must be None, "avg" or "max", got {model.pooling!r}')
    if model.weights == "imagenet" and model.include_top and model.classes != 1000:
        raise ValueError(f'weights="imagenet" with include_top=True needs classes=1000, got {model.classes}')


def check_images(model, x, channels: int = 3) -> None:
    """x: (N, H, W, channels) float, matching ``model.input_shape`` if set, H and W >= MIN_SIZE."""
    ops.check_input(x, 4, channels, what=f"{model.arch} input")
    if model.input_shape is not None and tuple(x.shape[1:]) != model.input_shape:
        raise ValueError(f"{model.arch} input: expected shape (N, {', '.join(map(str, model.input_shape))}), "
                         f"got {tuple(x.shape)}")
    if min(x.shape[1:3]) < MIN_SIZE:
        raise ValueError(f"{model.arch} input: height and width must be at least {MIN_SIZE}, "
                         f"got shape {tuple(x.shape)}")


def warn_if_random(model) -> None:
    """Warn (once per call site) when ``model.init`` runs on a module whose ``weights`` are set.

    Keras' ``VGG16(weights="imagenet")`` comes with its weights; a Flax module is architecture only
    and its ``init`` never reads a file (so ``jit``/``eval_shape`` of it stay pure). The pretrained
    variables are data, loaded by ``minicnn.init(model, key, x)`` or ``minicnn.pretrained(name)``.
    """
    if model.weights is not None and model.is_initializing():
        warnings.warn(f"{model.arch}(weights={model.weights!r}).init gives RANDOM weights: a minicnn model is "
                      f"architecture only (Keras' model would come with its weights). Load them with "
                      f"minicnn.init(model, key, x) or minicnn.pretrained({model.arch!r})", UserWarning,
                      stacklevel=2)
