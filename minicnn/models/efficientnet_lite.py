"""EfficientNet-Lite0 (Tan & Le, 2019; the Lite variants of tensorflow/tpu), on minicnn layers.

The Lite family drops squeeze-and-excitation and replaces swish with ReLU6, and does not scale
the stem and head. Layer names follow Keras' EfficientNet (``stem_conv``, ``block2a_expand_conv``,
``block2a_dwconv``, ``block2a_project_bn``, ..., ``top_conv``, ``predictions``). Padding is
TensorFlow's "same" (the extra pixel after the image), as the ImageNet weights were trained with.
"""

from __future__ import annotations

from string import ascii_lowercase

import flax.linen as nn
import jax.numpy as jnp

from minicnn import ops
from minicnn.layers import (
    BatchNormalization,
    Conv2D,
    Dense,
    DepthwiseConv2D,
    Dropout,
    GlobalAveragePooling2D,
)
from minicnn.models.common import KerasApplication, check_images, warn_if_random

# Stages of efficientnet_lite_builder.py: (expand_ratio, kernel_size, strides, filters_in,
# filters_out, repeats). The first block of a stage strides and changes width, the rest repeat.
LITE0_STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
                (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
                (6, 3, 1, 192, 320, 1))
STEM_FILTERS, TOP_FILTERS = 32, 1280
BN_EPSILON = 1e-3  # the TF value, carried by the PyTorch port (BatchNorm2d(eps=1e-3))


def _conv_kwargs(name):
    return dict(use_bias=False, name=name)


def _bn(name: str) -> BatchNormalization:
    return BatchNormalization(epsilon=BN_EPSILON, name=name)


def _mbconv(module, x, prefix, expand_ratio, kernel_size, strides, filters_out,
            drop_rate, train):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project, identity skip when shapes allow.

    x: (N, H, W, C_in) -> (N, H / strides, W / strides, filters_out). ``drop_rate`` drops the
    whole residual branch per example in training (stochastic depth, "drop connect").
    """
    inputs = x
    if expand_ratio != 1:
        x = Conv2D(x.shape[-1] * expand_ratio, 1, padding="same",
                   **_conv_kwargs(f"{prefix}_expand_conv"))(x)
        x = ops.relu6(_bn(f"{prefix}_expand_bn")(x, train=train))
    x = DepthwiseConv2D(kernel_size, strides, padding="same",
                        **_conv_kwargs(f"{prefix}_dwconv"))(x)
    x = ops.relu6(_bn(f"{prefix}_bn")(x, train=train))
    x = Conv2D(filters_out, 1, padding="same", **_conv_kwargs(f"{prefix}_project_conv"))(x)
    x = _bn(f"{prefix}_project_bn")(x, train=train)
    if strides != 1 or inputs.shape[-1] != filters_out:
        return x
    if train and drop_rate > 0:
        keep = ops.dropout(module.make_rng("dropout"), jnp.ones((x.shape[0], 1, 1, 1), x.dtype), drop_rate)
        x = x * keep
    return x + inputs


class EfficientNetLite0(KerasApplication):
    """EfficientNet-Lite0 with Keras' application arguments (4,652,008 trainable parameters with the top).

    x: (N, H, W, 3) float32 with H, W >= 32, preprocessed as the weights expect
    (``minicnn.weights.preprocess_input(x, "tf")`` for ``weights="imagenet"``, as the registry says). Returns
    (N, classes) with ``include_top``, else (N, H/32, W/32, 1280), or (N, 1280) with ``pooling``.
    ``weights``: None (random), ``"imagenet"`` or a path to a ``.pth``/checkpoint of this layout: the
    variables :func:`minicnn.init` (or :func:`minicnn.pretrained`) loads for it; ``model.init`` is
    architecture only.
    """
    dropout_rate: float = 0.2
    drop_connect_rate: float = 0.2

    arch = "efficientnet_lite0"
    pooling_names = ("avg_pool", "max_pool")
    keras_model_name = "efficient_net_lite0"  # no Keras model of this name: minicnn's own (its class name)

    def _check(self, x):
        check_images(self, x)

    @nn.compact
    def __call__(self, x, train: bool = False):
        self._check(x)
        warn_if_random(self)
        x = Conv2D(STEM_FILTERS, 3, 2, padding="same", **_conv_kwargs("stem_conv"))(x)
        x = ops.relu6(_bn("stem_bn")(x, train=train))
        n_blocks, i = sum(stage[-1] for stage in LITE0_STAGES), 0
        for s, (expand, k, strides, _, filters_out, repeats) in enumerate(LITE0_STAGES, start=1):
            for r in range(repeats):
                x = _mbconv(self, x, f"block{s}{ascii_lowercase[r]}", expand, k,
                            strides if r == 0 else 1, filters_out,
                            self.drop_connect_rate * i / n_blocks, train)
                i += 1
        x = Conv2D(TOP_FILTERS, 1, padding="same", **_conv_kwargs("top_conv"))(x)
        x = ops.relu6(_bn("top_bn")(x, train=train))
        if self.include_top:
            x = GlobalAveragePooling2D(name="avg_pool")(x)
            x = Dropout(self.dropout_rate, name="top_dropout")(x, train=train)
            x = Dense(self.classes, activation=self.classifier_activation, name="predictions")(x)
            return x
        return self.pool(x)
