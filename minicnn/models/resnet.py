"""ResNet50 (He et al., 2015) as Keras builds it: v1 bottleneck blocks, stride on each stage's first 1x1.

Layer names, call order and batch-norm settings are Keras' (``keras/src/applications/resnet.py``):
``conv1_pad``, ``conv1_conv``, ``conv1_bn``, ..., ``conv5_block3_out``, ``avg_pool``, ``predictions``.
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
    ZeroPadding2D,
)
from minicnn.models.common import KerasApplication, check_images, warn_if_random

# (stage name, bottleneck filters, blocks, stride of the first block): ResNet50's stack_fn.
RESNET50_STAGES = (("conv2", 64, 3, 1), ("conv3", 128, 4, 2), ("conv4", 256, 6, 2), ("conv5", 512, 3, 2))
BN_EPSILON = 1.001e-5  # Keras' ResNet value (the default 1e-3 changes the ImageNet outputs)
DEFAULT_SIZE = 224


def _bn(name: str) -> BatchNormalization:
    return BatchNormalization(epsilon=BN_EPSILON, name=name)


def _residual_block(x, filters: int, stride: int, conv_shortcut: bool, name: str, train: bool):
    """Keras' ``residual_block_v1``. x: (N, H, W, C) -> (N, H / stride, W / stride, 4 * filters).

    Layers are called in the order of Keras' ``model.layers`` (the main path's first two convs,
    then the shortcut conv, the last conv, their batch norms), so layer indices and names line up.
    """
    shortcut = x
    y = Conv2D(filters, 1, stride, name=f"{name}_1_conv")(x)
    y = Activation("relu", name=f"{name}_1_relu")(_bn(f"{name}_1_bn")(y, train=train))
    y = Conv2D(filters, 3, padding="same", name=f"{name}_2_conv")(y)
    y = Activation("relu", name=f"{name}_2_relu")(_bn(f"{name}_2_bn")(y, train=train))
    if conv_shortcut:
        shortcut = Conv2D(4 * filters, 1, stride, name=f"{name}_0_conv")(x)
    y = Conv2D(4 * filters, 1, name=f"{name}_3_conv")(y)
    if conv_shortcut:
        shortcut = _bn(f"{name}_0_bn")(shortcut, train=train)
    y = _bn(f"{name}_3_bn")(y, train=train)
    return Activation("relu", name=f"{name}_out")(Add(name=f"{name}_add")([shortcut, y]))


class ResNet50(KerasApplication):
    """Keras' ``keras.applications.ResNet50``: 25,636,712 parameters with the top, 23,587,712 without.

    x: (N, H, W, 3) float32 with H, W >= 32, preprocessed as the weights expect
    (``minicnn.weights.preprocess_input(x, "caffe")`` for ``weights="imagenet"``). Returns
    (N, classes) with ``include_top``, else (N, ceil(H/32), ceil(W/32), 2048) or (N, 2048) with ``pooling``.
    ``weights``: None (random), ``"imagenet"`` or a path to a Keras ``.h5``/``.weights.h5`` of this
    layout: the variables :func:`minicnn.init` (or :func:`minicnn.pretrained`) loads; ``model.init``
    is architecture only.
    """
    arch = "resnet50"
    pooling_names = ("avg_pool", "max_pool")

    def check_model_arguments(self):
        self.check_imagenet_input_shape(DEFAULT_SIZE)

    def _check(self, x):
        check_images(self, x, self.input_channels())
        self.check_imagenet_input(x, DEFAULT_SIZE)

    @nn.compact
    def __call__(self, x, train: bool = False):
        self._check(x)
        warn_if_random(self)
        x = ZeroPadding2D(((3, 3), (3, 3)), name="conv1_pad")(x)
        x = Conv2D(64, 7, 2, name="conv1_conv")(x)
        x = Activation("relu", name="conv1_relu")(_bn("conv1_bn")(x, train=train))
        x = ZeroPadding2D(((1, 1), (1, 1)), name="pool1_pad")(x)
        x = MaxPooling2D(3, 2, name="pool1_pool")(x)
        for stage, filters, blocks, stride in RESNET50_STAGES:
            for b in range(1, blocks + 1):
                x = _residual_block(x, filters, stride if b == 1 else 1, b == 1, f"{stage}_block{b}", train)
        if self.include_top:
            x = GlobalAveragePooling2D(name="avg_pool")(x)
            x = Dense(self.classes, activation=self.classifier_activation, name="predictions")(x)
            return x
        return self.pool(x)
