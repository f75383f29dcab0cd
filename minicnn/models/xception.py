"""Xception (Chollet, 2017) as Keras builds it: entry, middle and exit flows of separable convolutions.

Layer names, call order and batch-norm settings are Keras' (``keras/src/applications/xception.py``):
``block1_conv1`` ... ``block14_sepconv2_act``. The four strided shortcut convolutions, their batch
norms and the residual additions are unnamed in Keras, which numbers them per session; they get the
names a fresh Keras session gives (``conv2d``, ``conv2d_1``, ``batch_normalization``, ``add_11``).
"""

from __future__ import annotations


import flax.linen as nn

from minicnn.layers import (
    Activation,
    Add,
    BatchNormalization,
    Conv2D,
    Dense,
    GlobalAveragePooling2D,
    MaxPooling2D,
    SeparableConv2D,
)
from minicnn.models.common import KerasApplication, check_images, warn_if_random

MIN_SIZE = 71  # Keras' minimum: smaller inputs vanish before block14
DEFAULT_SIZE = 299
# Blocks with a strided 1x1-conv shortcut: (block, separable conv widths); blocks 5-12 are the middle flow.
ENTRY_BLOCKS = ((2, (128, 128)), (3, (256, 256)), (4, (728, 728)))
EXIT_BLOCK = (13, (728, 1024))
MIDDLE_BLOCKS, MIDDLE_WIDTH = range(5, 13), 728


def _auto(base: str, k: int) -> str:
    """Keras' name for the k-th unnamed layer of a class in a fresh session: ``conv2d``, ``conv2d_1``."""
    return base if k == 0 else f"{base}_{k}"


def _sepconv_bn(x, filters: int, name: str, train: bool):
    """3x3 "same" separable conv without bias, then its batch norm. (N, H, W, C) -> (N, H, W, filters)."""
    x = SeparableConv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
    return BatchNormalization(name=f"{name}_bn")(x, train=train)


def _strided_block(x, block: int, widths: tuple[int, int], k: int, add_k: int, train: bool):
    """Two separable convs and a stride-2 max pool, added (the ``add_k``-th addition) to a stride-2
    1x1 conv of the input (the k-th shortcut).

    x: (N, H, W, C) -> (N, ceil(H/2), ceil(W/2), widths[-1]). Block 2 follows block1's activation, so
    it has no ``sepconv1_act``. Calls follow Keras' ``model.layers`` order (the shortcut conv after
    the separable convs, its batch norm after the pool).
    """
    inputs = x
    for i, filters in enumerate(widths, start=1):
        if i > 1 or block != 2:
            x = Activation("relu", name=f"block{block}_sepconv{i}_act")(x)
        x = _sepconv_bn(x, filters, f"block{block}_sepconv{i}", train)
    residual = Conv2D(widths[-1], 1, 2, padding="same", use_bias=False, name=_auto("conv2d", k))(inputs)
    x = MaxPooling2D(3, 2, padding="same", name=f"block{block}_pool")(x)
    residual = BatchNormalization(name=_auto("batch_normalization", k))(residual, train=train)
    return Add(name=_auto("add", add_k))([x, residual])


def _middle_block(x, block: int, k: int, train: bool):
    """Three relu-separable conv-batch norm steps added to the input (the k-th addition). Shape kept."""
    inputs = x
    for i in range(1, 4):
        x = Activation("relu", name=f"block{block}_sepconv{i}_act")(x)
        x = _sepconv_bn(x, MIDDLE_WIDTH, f"block{block}_sepconv{i}", train)
    return Add(name=_auto("add", k))([x, inputs])


class Xception(KerasApplication):
    """Keras' ``keras.applications.Xception``: 22,910,480 parameters with the top, 20,861,480 without.

    x: (N, H, W, 3) float32 with H, W >= 71, preprocessed as the weights expect
    (``minicnn.weights.preprocess_input(x, "tf")`` for ``weights="imagenet"``). Returns (N, classes)
    with ``include_top``, else (N, h, w, 2048) (h = 10 at 299) or (N, 2048) with ``pooling``.
    ``weights``: None (random), ``"imagenet"`` or a path to a Keras ``.h5``/``.weights.h5`` of this
    layout: the variables :func:`minicnn.init` (or :func:`minicnn.pretrained`) loads; ``model.init``
    is architecture only.
    """
    arch = "xception"

    def check_model_arguments(self):
        if self.input_shape is not None and min(self.input_shape[:2]) < MIN_SIZE:
            raise ValueError(f"Xception input_shape: height and width must be at least {MIN_SIZE}, "
                             f"got {self.input_shape}")
        self.check_imagenet_input_shape(DEFAULT_SIZE)

    def _check(self, x):
        check_images(self, x, self.input_channels())
        if min(x.shape[1:3]) < MIN_SIZE:
            raise ValueError(f"{self.arch} input: height and width must be at least {MIN_SIZE}, "
                             f"got shape {tuple(x.shape)}")
        self.check_imagenet_input(x, DEFAULT_SIZE)

    @nn.compact
    def __call__(self, x, train: bool = False):
        self._check(x)
        warn_if_random(self)
        for i, filters in enumerate((32, 64), start=1):
            x = Conv2D(filters, 3, 2 if i == 1 else 1, use_bias=False, name=f"block1_conv{i}")(x)
            x = BatchNormalization(name=f"block1_conv{i}_bn")(x, train=train)
            x = Activation("relu", name=f"block1_conv{i}_act")(x)
        for k, (block, widths) in enumerate(ENTRY_BLOCKS):
            x = _strided_block(x, block, widths, k, k, train)
        for k, block in enumerate(MIDDLE_BLOCKS, start=len(ENTRY_BLOCKS)):
            x = _middle_block(x, block, k, train)
        x = _strided_block(x, *EXIT_BLOCK, len(ENTRY_BLOCKS), len(ENTRY_BLOCKS) + len(MIDDLE_BLOCKS), train)
        for i, filters in enumerate((1536, 2048), start=1):
            x = _sepconv_bn(x, filters, f"block14_sepconv{i}", train)
            x = Activation("relu", name=f"block14_sepconv{i}_act")(x)
        if self.include_top:
            x = GlobalAveragePooling2D(name="avg_pool")(x)
            x = Dense(self.classes, activation=self.classifier_activation, name="predictions")(x)
            return x
        return self.pool(x)
