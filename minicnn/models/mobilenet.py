"""MobileNet (Howard et al., 2017) and MobileNetV2 (Sandler et al., 2018) as Keras builds them.

Layer by layer as ``keras/src/applications/mobilenet.py`` and ``mobilenet_v2.py``: the same layer names
(``conv1``, ``conv_dw_1``, ``conv_pw_1_relu``, ``conv_pad_2``, ...; ``Conv1``, ``bn_Conv1``,
``expanded_conv_depthwise``, ``block_1_expand``, ..., ``Conv_1_bn``, ``out_relu``), ``ReLU(6.)``,
each family's batch-norm settings (Keras' defaults for MobileNet, epsilon 1e-3 and momentum 0.999 for
V2), the width multiplier ``alpha`` with Keras' channel rounding, and the argument rules Keras enforces.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import flax.linen as nn

from minicnn.layers import (
    Activation,
    Add,
    BatchNormalization,
    Conv2D,
    Dense,
    DepthwiseConv2D,
    Dropout,
    GlobalAveragePooling2D,
    ReLU,
    Reshape,
    ZeroPadding2D,
)
from minicnn.models.common import MIN_SIZE, KerasApplication, check_images, warn_if_random

# MobileNet's depthwise-separable blocks after the stem: (pointwise filters at alpha 1, strides).
MOBILENET_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
# MobileNetV2's inverted residual blocks: (output filters at alpha 1, strides, expansion).
MOBILENET_V2_BLOCKS = ((16, 1, 1), (24, 2, 6), (24, 1, 6), (32, 2, 6), (32, 1, 6), (32, 1, 6),
                       (64, 2, 6), (64, 1, 6), (64, 1, 6), (64, 1, 6), (96, 1, 6), (96, 1, 6),
                       (96, 1, 6), (160, 2, 6), (160, 1, 6), (160, 1, 6), (320, 1, 6))
KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
REGISTERED_ALPHA, REGISTERED_ROWS = 1.0, 224  # the ImageNet sets weights/registry.json holds


def make_divisible(v: float, divisor: int = 8) -> int:
    """Keras' ``_make_divisible``: ``v`` rounded to a multiple of ``divisor``, never more than 10% below ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def keras_weights_file(arch: str, alpha: float, rows: int, include_top: bool) -> str:
    """The file name Keras downloads for ``weights="imagenet"`` (``mobilenet_1_0_224_tf_no_top.h5``)."""
    if arch == "mobilenet":
        alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0"}.get(alpha, "2_5")
        return f"mobilenet_{alpha_text}_{rows}_tf{'' if include_top else '_no_top'}.h5"
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}{'' if include_top else '_no_top'}.h5"


class _MobileNetFamily(KerasApplication):
    """Keras' application arguments and checks shared by :class:`MobileNet` and :class:`MobileNetV2`."""
    arch: ClassVar[str]
    alphas: ClassVar[tuple[float, ...]]  # the widths Keras has ImageNet weights for
    sizes: ClassVar[tuple[int, ...]]     # the square input sides Keras has ImageNet weights for

    alpha: float = 1.0

    @property
    def keras_model_name(self) -> str:
        """Keras' model name, e.g. ``mobilenet_1.00_224`` (hence its path inside a Sequential)."""
        rows = self.input_shape[0] if self.input_shape else 224
        return f"{self.keras_prefix}_{self.alpha:0.2f}_{rows}"

    def check_model_arguments(self):
        shape = self.input_shape
        if shape is not None and min(shape[:2]) < MIN_SIZE:
            raise ValueError(f"{self.arch}: input size must be at least {MIN_SIZE}x{MIN_SIZE}, got input_shape={shape}")
        if self.weights == "imagenet":
            self._check_imagenet(shape)

    def _check_imagenet(self, shape):
        """Keras' rules for ``weights="imagenet"``, and the sets minicnn has registered."""
        if self.alpha not in self.alphas:
            raise ValueError(f'{self.arch}: with weights="imagenet", alpha must be one of '
                             f"{', '.join(map(str, self.alphas))}, got alpha={self.alpha}")
        square = shape is not None and shape[0] == shape[1] and shape[0] in self.sizes
        rows = shape[0] if square else REGISTERED_ROWS
        if self.include_top and shape is not None and shape != (rows, rows, 3):
            raise ValueError(f'{self.arch}: with weights="imagenet" and include_top=True, input_shape must be '
                             f"{(rows, rows, 3)} (square, side one of {self.sizes}), got {shape}")
        wanted = keras_weights_file(self.arch, self.alpha, rows, self.include_top)
        if self.alpha != REGISTERED_ALPHA:
            raise ValueError(f'{self.arch}(alpha={self.alpha}, weights="imagenet") needs Keras\' {wanted} '
                             f"({KERAS_WEIGHTS_URL}{self.arch}/{wanted}); minicnn registers and ports only the "
                             f"alpha={REGISTERED_ALPHA} sets")
        if rows != REGISTERED_ROWS:  # a deliberate difference from Keras: loud
            registered = keras_weights_file(self.arch, self.alpha, REGISTERED_ROWS, self.include_top)
            warnings.warn(f"{self.arch}: Keras would load {wanted} (trained at {rows}x{rows}) for input_shape="
                          f"{shape}; minicnn has only {registered} and uses it", UserWarning, stacklevel=3)



def _relu6(name: str) -> ReLU:
    return ReLU(6.0, name=name)


class MobileNet(_MobileNetFamily):
    """Keras' ``keras.applications.MobileNet``: 4,253,864 parameters at alpha 1 with the top, 3,228,864 without.

    x: (N, H, W, 3) float32 with H, W >= 32, preprocessed as the weights expect
    (``minicnn.weights.preprocess_input(x, "tf")`` for ``weights="imagenet"``). Returns (N, classes) with
    ``include_top``, else (N, H/32, W/32, 1024 * alpha), or (N, 1024 * alpha) with ``pooling``.
    ``alpha`` scales every layer's width, ``depth_multiplier`` the depthwise convolutions' outputs per
    channel, ``dropout`` is the top's rate. ``weights``: None (random), ``"imagenet"`` (alpha 1 only) or a
    file :mod:`minicnn.weights` can port: the variables :func:`minicnn.init` (or :func:`minicnn.pretrained`)
    loads for it; ``model.init`` is architecture only.
    """
    arch = "mobilenet"
    keras_prefix = "mobilenet"
    alphas = (0.25, 0.5, 0.75, 1.0)
    sizes = (128, 160, 192, 224)

    depth_multiplier: int = 1
    dropout: float = 1e-3

    def _check_imagenet(self, shape):
        if self.depth_multiplier != 1:
            raise ValueError(f'{self.arch}: with weights="imagenet", depth_multiplier must be 1, '
                             f"got depth_multiplier={self.depth_multiplier}")
        super()._check_imagenet(shape)

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_images(self, x)
        warn_if_random(self)
        x = Conv2D(int(32 * self.alpha), 3, 2, padding="same", use_bias=False, name="conv1")(x)
        x = _relu6("conv1_relu")(BatchNormalization(name="conv1_bn")(x, train=train))
        for block_id, (filters, strides) in enumerate(MOBILENET_BLOCKS, start=1):
            if strides == 2:  # Keras pads after the image, then a valid stride-2 depthwise conv
                x = ZeroPadding2D(((0, 1), (0, 1)), name=f"conv_pad_{block_id}")(x)
            x = DepthwiseConv2D(3, strides, padding="same" if strides == 1 else "valid",
                                depth_multiplier=self.depth_multiplier, use_bias=False, name=f"conv_dw_{block_id}")(x)
            x = BatchNormalization(name=f"conv_dw_{block_id}_bn")(x, train=train)
            x = _relu6(f"conv_dw_{block_id}_relu")(x)
            x = Conv2D(int(filters * self.alpha), 1, padding="same", use_bias=False, name=f"conv_pw_{block_id}")(x)
            x = BatchNormalization(name=f"conv_pw_{block_id}_bn")(x, train=train)
            x = _relu6(f"conv_pw_{block_id}_relu")(x)
        if not self.include_top:
            return self.pool(x)
        x = GlobalAveragePooling2D(keepdims=True, name="global_average_pooling2d")(x)
        x = Dropout(self.dropout, name="dropout")(x, train=train)
        x = Conv2D(self.classes, 1, padding="same", name="conv_preds")(x)
        x = Reshape((self.classes,), name="reshape_2")(x)
        return Activation(self.classifier_activation, name="predictions")(x)


def _bn_v2(name: str) -> BatchNormalization:
    return BatchNormalization(momentum=0.999, epsilon=1e-3, name=name)


def _inverted_res_block(x, filters: int, strides: int, expansion: int, block_id: int, train: bool):
    """Expand 1x1 (not in block 0), depthwise 3x3, project 1x1; a residual ``add`` when shapes allow.

    x: (N, H, W, C) -> (N, H / strides, W / strides, filters).
    """
    inputs, in_channels = x, x.shape[-1]
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    if block_id:
        x = Conv2D(expansion * in_channels, 1, padding="same", use_bias=False, name=f"{prefix}expand")(x)
        x = _relu6(f"{prefix}expand_relu")(_bn_v2(f"{prefix}expand_BN")(x, train=train))
    if strides == 2:  # Keras' correct_pad: one pixel before the image only when its side is odd
        x = ZeroPadding2D(((x.shape[1] % 2, 1), (x.shape[2] % 2, 1)), name=f"{prefix}pad")(x)
    x = DepthwiseConv2D(3, strides, padding="same" if strides == 1 else "valid", use_bias=False,
                        name=f"{prefix}depthwise")(x)
    x = _relu6(f"{prefix}depthwise_relu")(_bn_v2(f"{prefix}depthwise_BN")(x, train=train))
    x = Conv2D(filters, 1, padding="same", use_bias=False, name=f"{prefix}project")(x)
    x = _bn_v2(f"{prefix}project_BN")(x, train=train)
    if in_channels == filters and strides == 1:
        return Add(name=f"{prefix}add")([inputs, x])
    return x


class MobileNetV2(_MobileNetFamily):
    """Keras' ``keras.applications.MobileNetV2``: 3,538,984 parameters at alpha 1 with the top, 2,257,984 without.

    x: (N, H, W, 3) float32 with H, W >= 32, preprocessed as the weights expect
    (``minicnn.weights.preprocess_input(x, "tf")`` for ``weights="imagenet"``). Returns (N, classes) with
    ``include_top``, else (N, H/32, W/32, 1280) (wider for alpha > 1), or (N, 1280) with ``pooling``.
    ``alpha`` scales the blocks' widths (rounded to multiples of 8). ``weights`` as for :class:`MobileNet`.
    """
    arch = "mobilenet_v2"
    keras_prefix = "mobilenetv2"
    alphas = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
    sizes = (96, 128, 160, 192, 224)

    @nn.compact
    def __call__(self, x, train: bool = False):
        check_images(self, x)
        warn_if_random(self)
        x = Conv2D(make_divisible(32 * self.alpha), 3, 2, padding="same", use_bias=False, name="Conv1")(x)
        x = _relu6("Conv1_relu")(_bn_v2("bn_Conv1")(x, train=train))
        for block_id, (filters, strides, expansion) in enumerate(MOBILENET_V2_BLOCKS):
            x = _inverted_res_block(x, make_divisible(int(filters * self.alpha)), strides, expansion, block_id, train)
        last = make_divisible(1280 * self.alpha) if self.alpha > 1.0 else 1280  # Keras widens the head, never narrows it
        x = Conv2D(last, 1, use_bias=False, name="Conv_1")(x)
        x = _relu6("out_relu")(_bn_v2("Conv_1_bn")(x, train=train))
        if not self.include_top:
            return self.pool(x)
        x = GlobalAveragePooling2D(name="global_average_pooling2d")(x)
        return Dense(self.classes, activation=self.classifier_activation, name="predictions")(x)
