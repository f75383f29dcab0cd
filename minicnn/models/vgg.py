"""VGG16 and VGG19 (Simonyan & Zisserman, 2014) with Keras' arguments, layer names and shapes."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import flax.linen as nn

from minicnn.layers import (
    Conv2D,
    Dense,
    Flatten,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    MaxPooling2D,
)
from minicnn.models.common import check_arguments, check_images, warn_if_random

# Convolutions per block; every block's convs have the same width, then a 2x2 max pool.
VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG19_BLOCKS = (2, 2, 4, 4, 4)
WIDTHS = (64, 128, 256, 512, 512)


class VGG(nn.Module):
    """The VGG family as Keras builds it (abstract: use :class:`VGG16` or :class:`VGG19`).

    x: (N, H, W, 3) float32, already preprocessed (``minicnn.weights.preprocess_input(x, "caffe")``
    for the ImageNet weights). Returns (N, classes) with ``include_top``, else (N, H/32, W/32, 512)
    or (N, 512) with ``pooling``.
    """
    blocks: ClassVar[tuple[int, ...]]
    arch: ClassVar[str]

    include_top: bool = True
    weights: str | None = None
    input_shape: tuple[int, int, int] | None = None
    pooling: str | None = None
    classes: int = 1000
    classifier_activation: str | Callable | None = "softmax"
    trainable: bool = True  # Keras' model.trainable: False freezes every layer inside

    def __post_init__(self):
        check_arguments(self)
        if self.weights == "imagenet" and self.include_top and self.input_shape not in (None, (224, 224, 3)):
            raise ValueError(f'weights="imagenet" with include_top=True needs input_shape (224, 224, 3), '
                             f"got {self.input_shape}")
        super().__post_init__()

    def _check(self, x):
        check_images(self, x, 3 if self.weights is not None or self.input_shape is None else self.input_shape[-1])
        if self.include_top and self.weights == "imagenet" and tuple(x.shape[1:3]) != (224, 224):
            raise ValueError(f'{self.arch} with include_top=True and weights="imagenet" needs 224x224 input, '
                             f"got shape {tuple(x.shape)}; use include_top=False for other sizes")

    @nn.compact
    def __call__(self, x, train: bool = False):
        self._check(x)
        warn_if_random(self)
        for b, (n_convs, width) in enumerate(zip(self.blocks, WIDTHS), start=1):
            for i in range(1, n_convs + 1):
                name = f"block{b}_conv{i}"
                x = Conv2D(width, 3, padding="same", activation="relu", name=name)(x)
            x = MaxPooling2D(2, name=f"block{b}_pool")(x)
        if self.include_top:
            x = Flatten(name="flatten")(x)
            for name, units, act in (("fc1", 4096, "relu"), ("fc2", 4096, "relu"),
                                     ("predictions", self.classes, self.classifier_activation)):
                x = Dense(units, activation=act, name=name)(x)
        elif self.pooling == "avg":
            x = GlobalAveragePooling2D(name="global_average_pooling2d")(x)
        elif self.pooling == "max":
            x = GlobalMaxPooling2D(name="global_max_pooling2d")(x)
        return x


class VGG16(VGG):
    """Keras' ``keras.applications.VGG16``: 14,714,688 parameters without the top, 138,357,544 with it.

    ``weights``: None (random), ``"imagenet"`` or a path to a weight file that
    :mod:`minicnn.weights` can port: the variables :func:`minicnn.init` (or
    :func:`minicnn.pretrained`) loads for it; ``model.init`` is architecture only.
    """
    blocks = VGG16_BLOCKS
    arch = "vgg16"


class VGG19(VGG):
    """Keras' ``keras.applications.VGG19``: 20,024,384 parameters without the top, 143,667,240 with it."""
    blocks = VGG19_BLOCKS
    arch = "vgg19"
