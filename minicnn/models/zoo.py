"""Pretrained ImageNet classifiers by name: the model, its variables and its input convention."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from minicnn.models.efficientnet_lite import EfficientNetLite0
from minicnn.models.vgg import VGG16, VGG19

# name -> (constructor, registry entry with the top, input size)
PRETRAINED = {
    "efficientnet_lite0": (EfficientNetLite0, "efficientnet_lite0_imagenet", 224),
    "vgg16": (VGG16, "vgg16_imagenet", 224),
    "vgg19": (VGG19, "vgg19_imagenet", 224),
}


class Pretrained(NamedTuple):
    model: nn.Module
    variables: dict
    preprocess: Callable  # RGB in [0, 255], (N, H, W, 3) -> model input
    input_size: int
    weights: str


def pretrained(name: str = "efficientnet_lite0", weights: str = "imagenet", include_top: bool = True) -> Pretrained:
    """A ready ImageNet classifier: ``p.model.apply(p.variables, p.preprocess(x))``.

    ``weights`` is ``"imagenet"`` (resolved through :mod:`minicnn.weights`: cache, package,
    download) or a weight file path; the preprocessing is the one that weight set was trained with.
    """
    from minicnn.weights import preprocess_input, registry
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; choose from {', '.join(PRETRAINED)}")
    cls, entry, size = PRETRAINED[name]
    mode = registry()[entry]["preprocessing"]
    model = cls(include_top=include_top, weights=weights)
    # Jitted: an eager init compiles each op on its own (23 s instead of 2 s for EfficientNet-Lite0).
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)))
    return Pretrained(model, variables, lambda x: preprocess_input(x, mode), size, weights)
