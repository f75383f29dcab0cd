"""VGG16 and VGG19 (Simonyan & Zisserman, 2014) with Keras' arguments, layer names and shapes."""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn

from minicnn.layers import (
    Conv2D,
    Dense,
    Flatten,
    MaxPooling2D,
)
from minicnn.models.common import KerasApplication, check_images, warn_if_random

# Convolutions per block; every block's convs have the same width, then a 2x2 max pool.
VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG19_BLOCKS = (2, 2, 4, 4, 4)
WIDTHS = (64, 128, 256, 512, 512)


class VGG(KerasApplication):
    """The VGG family as Keras builds it (abstract: use :class:`VGG16` or :class:`VGG19`).

    x: (N, H, W, 3) float32, already preprocessed (``minicnn.weights.preprocess_input(x, "caffe")``
    for the ImageNet weights). Returns (N, classes) with ``include_top``, else (N, H/32, W/32, 512)
    or (N, 512) with ``pooling``.
    """
    blocks: ClassVar[tuple[int, ...]]

    def check_model_arguments(self):
        self.check_imagenet_input_shape(224)

    def _check(self, x):
        check_images(self, x, self.input_channels())
        self.check_imagenet_input(x, 224)

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
            return x
        return self.pool(x)


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
