"""Keras-named Flax Linen layers on :mod:`minicnn.ops`.

Each layer is called as ``layer(x, train=False)``. Parameter leaves are ``kernel``/``bias``
(``gamma``/``beta`` for batch norm) under the layer's name; batch-norm moving statistics live in
the ``batch_stats`` collection as ``moving_mean``/``moving_variance``. Defaults are Keras':
Glorot-uniform kernels, zero biases, batch norm momentum 0.99 and epsilon 1e-3.

Numerics are module fields, as in Flax: ``dtype`` (the compute dtype of Conv2D, DepthwiseConv2D and
Dense; parameters stay float32) and ``algorithm`` (Conv2D's convolution algorithm). ``None`` follows
the scoped defaults ``with ops.compute_dtype(...)`` / ``with ops.conv_algorithm(...)`` read when the
model is traced (the input's dtype and ``"auto"`` outside any block).

Every layer, and ``Sequential``, has Keras' ``trainable`` field (default True): ``Dense(32,
trainable=False)`` freezes that layer's weights, a frozen model freezes every layer inside it.
The field is read by :func:`minicnn.masks.from_trainable_fields`, which the ``Trainer`` and
:func:`minicnn.summary` use when no mask is given; it does not change the forward pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from minicnn import ops
from minicnn.ops import kernels

Initializer = Callable[..., jax.Array]
ActivationSpec = str | Callable | None  # a Keras activation name, a callable, or None

glorot_uniform = nn.initializers.glorot_uniform()
zeros = nn.initializers.zeros
ones = nn.initializers.ones

__all__ = [
    "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense", "BatchNormalization", "Dropout", "Flatten",
    "Activation", "ReLU", "ZeroPadding2D", "Reshape", "Add", "Concatenate",
    "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D",
    "Sequential", "keras_name", "from_array",
]


def keras_name(cls_name: str) -> str:
    """Keras' default layer name for a class: ``MaxPooling2D -> max_pooling2d``, ``VGG16 -> vgg16``."""
    name = re.sub(r"\W+", "", cls_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def from_array(value, where: str) -> Initializer:
    """An initialiser that returns ``value`` (a pretrained array), checking the requested shape.

    ``where`` names the layer and leaf for the error message, e.g. ``"block1_conv1/kernel"``.
    """
    value = jnp.asarray(value)

    def init(key, shape, dtype=jnp.float32):
        if tuple(shape) != tuple(value.shape):
            raise ValueError(f"pretrained weight {where}: expected shape {tuple(shape)}, "
                             f"got {tuple(value.shape)}")
        return value.astype(dtype)

    return init


def _activate(activation: ActivationSpec, y):
    fn = ops.get_activation(activation)
    return y if fn is None else fn(y)


class Conv2D(nn.Module):
    """Keras ``Conv2D``. x: (N, H, W, C) -> (N, H', W', filters); kernel (kh, kw, C, filters).

    ``dtype``: compute dtype (None: the input's, or the scoped default); ``algorithm``: ``"auto"``,
    ``"xla"`` or ``"winograd"`` (None: the scoped default, ``"auto"``), see :func:`minicnn.ops.conv2d`.
    """
    filters: int
    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    padding: ops.Padding = "valid"
    dilation_rate: int | Sequence[int] = 1
    activation: ActivationSpec = None
    use_bias: bool = True
    kernel_initializer: Initializer = glorot_uniform
    bias_initializer: Initializer = zeros
    dtype: Any = None
    algorithm: str | None = None
    trainable: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        ops.check_input(x, 4, what=f"{self.name} input")
        kh, kw = ops.pair(self.kernel_size, "kernel_size")
        kernel = self.param("kernel", self.kernel_initializer, (kh, kw, x.shape[-1], self.filters))
        bias = self.param("bias", self.bias_initializer, (self.filters,)) if self.use_bias else None
        y = ops.conv2d(x, kernel, bias, self.strides, self.padding, self.dilation_rate,
                       algorithm=self.algorithm, dtype=self.dtype)
        return _activate(self.activation, y)


class DepthwiseConv2D(nn.Module):
    """Keras ``DepthwiseConv2D``. kernel (kh, kw, C, depth_multiplier) -> (N, H', W', C * M).

    ``dtype``: compute dtype (None: the input's, or the scoped default).
    """
    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    padding: ops.Padding = "valid"
    depth_multiplier: int = 1
    dilation_rate: int | Sequence[int] = 1
    activation: ActivationSpec = None
    use_bias: bool = True
    depthwise_initializer: Initializer = glorot_uniform
    bias_initializer: Initializer = zeros
    dtype: Any = None
    trainable: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        ops.check_input(x, 4, what=f"{self.name} input")
        kh, kw = ops.pair(self.kernel_size, "kernel_size")
        c = x.shape[-1]
        kernel = self.param("kernel", self.depthwise_initializer, (kh, kw, c, self.depth_multiplier))
        bias = (self.param("bias", self.bias_initializer, (c * self.depth_multiplier,))
                if self.use_bias else None)
        y = ops.depthwise_conv2d(x, kernel, bias, self.strides, self.padding, self.dilation_rate,
                                 dtype=self.dtype)
        return _activate(self.activation, y)


class Dense(nn.Module):
    """Keras ``Dense``. x: (..., in) -> (..., units); kernel (in, units).

    ``dtype``: compute dtype (None: the input's, or the scoped default).
    """
    units: int
    activation: ActivationSpec = None
    use_bias: bool = True
    kernel_initializer: Initializer = glorot_uniform
    bias_initializer: Initializer = zeros
    dtype: Any = None
    trainable: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        kernel = self.param("kernel", self.kernel_initializer, (x.shape[-1], self.units))
        bias = self.param("bias", self.bias_initializer, (self.units,)) if self.use_bias else None
        return _activate(self.activation, ops.dense(x, kernel, bias, dtype=self.dtype))


class BatchNormalization(nn.Module):
    """Keras ``BatchNormalization`` over the last axis (momentum 0.99, epsilon 1e-3).

    ``train=True`` normalises with the batch statistics and updates ``batch_stats`` (pass
    ``mutable=["batch_stats"]``); ``train=False`` uses the moving statistics. Statistics are not
    updated while the module is being initialised.
    """
    momentum: float = 0.99
    epsilon: float = 1e-3
    center: bool = True
    scale: bool = True
    beta_initializer: Initializer = zeros
    gamma_initializer: Initializer = ones
    moving_mean_initializer: Initializer = zeros
    moving_variance_initializer: Initializer = ones
    trainable: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        c = (x.shape[-1],)
        gamma = self.param("gamma", self.gamma_initializer, c) if self.scale else None
        beta = self.param("beta", self.beta_initializer, c) if self.center else None
        mean = self.variable("batch_stats", "moving_mean",
                             lambda: self.moving_mean_initializer(None, c, jnp.float32))
        var = self.variable("batch_stats", "moving_variance",
                            lambda: self.moving_variance_initializer(None, c, jnp.float32))
        if not train:
            return ops.batch_norm_inference(x, mean.value, var.value, gamma, beta, self.epsilon)
        y, new_mean, new_var = ops.batch_norm_train(x, mean.value, var.value, gamma, beta,
                                                    self.momentum, self.epsilon)
        if not self.is_initializing():
            mean.value, var.value = new_mean, new_var
        return y


class Dropout(nn.Module):
    """Keras ``Dropout``: active only with ``train=True``; draws from the ``"dropout"`` RNG stream."""
    rate: float
    trainable: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        if not train or self.rate == 0.0:
            return x
        return ops.dropout(self.make_rng("dropout"), x, self.rate)


class Flatten(nn.Module):
    """(N, ...) -> (N, prod(...)), row-major over H, W, C (Keras' channels_last order)."""
    trainable: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        return x.reshape(x.shape[0], -1)


class Activation(nn.Module):
    """Keras ``Activation``: apply a named activation (``"relu"``, ``"softmax"``, ...)."""
    activation: ActivationSpec
    trainable: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        return _activate(self.activation, x)


class ReLU(nn.Module):
    """Keras ``ReLU``: ``max(x, 0)`` capped at ``max_value``, ``negative_slope * (x - threshold)`` below
    ``threshold`` (MobileNet's ``ReLU(6.)``)."""
    max_value: float | None = None
    negative_slope: float = 0.0
    threshold: float = 0.0
    trainable: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = jnp.where(x >= self.threshold, x, self.negative_slope * (x - self.threshold))
        return y if self.max_value is None else jnp.minimum(y, self.max_value)


class SeparableConv2D(nn.Module):
    """Keras ``SeparableConv2D``: a depthwise conv (``depthwise_kernel`` (kh, kw, C, M)) then a 1x1 conv
    (``pointwise_kernel`` (1, 1, C * M, filters)), then the bias and activation.
    x: (N, H, W, C) -> (N, H', W', filters)."""
    filters: int
    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    padding: ops.Padding = "valid"
    depth_multiplier: int = 1
    dilation_rate: int | Sequence[int] = 1
    activation: ActivationSpec = None
    use_bias: bool = True
    depthwise_initializer: Initializer = glorot_uniform
    pointwise_initializer: Initializer = glorot_uniform
    bias_initializer: Initializer = zeros
    dtype: Any = None
    trainable: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        ops.check_input(x, 4, what=f"{self.name} input")
        kh, kw = ops.pair(self.kernel_size, "kernel_size")
        c = x.shape[-1]
        depthwise = self.param("depthwise_kernel", self.depthwise_initializer, (kh, kw, c, self.depth_multiplier))
        pointwise = self.param("pointwise_kernel", self.pointwise_initializer,
                               (1, 1, c * self.depth_multiplier, self.filters))
        bias = self.param("bias", self.bias_initializer, (self.filters,)) if self.use_bias else None
        y = ops.depthwise_conv2d(x, depthwise, None, self.strides, self.padding, self.dilation_rate, dtype=self.dtype)
        return _activate(self.activation, ops.conv2d(y, pointwise, bias, dtype=self.dtype))


class ZeroPadding2D(nn.Module):
    """Keras ``ZeroPadding2D``: ``padding`` an int, ``(rows, cols)`` or ``((top, bottom), (left, right))``."""
    padding: int | Sequence = 1
    trainable: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        p = self.padding
        if isinstance(p, int):
            p = ((p, p), (p, p))
        elif all(isinstance(v, int) for v in p):
            p = ((p[0], p[0]), (p[1], p[1]))
        return jnp.pad(x, ((0, 0), *(tuple(v) for v in p), (0, 0)))


class Reshape(nn.Module):
    """Keras ``Reshape``: (N, ...) -> (N, *target_shape); one entry may be -1."""
    target_shape: tuple[int, ...]
    trainable: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        return x.reshape(x.shape[0], *self.target_shape)


class Add(nn.Module):
    """Keras ``Add``: the elementwise sum of a list of same-shaped inputs (a residual connection)."""
    trainable: bool = True

    @nn.compact
    def __call__(self, inputs: Sequence, train: bool = False):
        out = inputs[0]
        for x in inputs[1:]:
            out = out + x
        return out


class Concatenate(nn.Module):
    """Keras ``Concatenate``: a list of inputs joined along ``axis`` (the channels by default)."""
    axis: int = -1
    trainable: bool = True

    @nn.compact
    def __call__(self, inputs: Sequence, train: bool = False):
        return jnp.concatenate(list(inputs), axis=self.axis)


class _Pooling2D(nn.Module):
    """Windowed pooling (``pool_size``, ``strides`` defaulting to ``pool_size``, ``padding``)."""
    pool_size: int | Sequence[int] = 2
    strides: int | Sequence[int] | None = None
    padding: ops.Padding = "valid"
    trainable: bool = True
    pool: ClassVar[Callable]

    @nn.compact
    def __call__(self, x, train: bool = False):
        return type(self).pool(x, self.pool_size, self.strides, self.padding)


class MaxPooling2D(_Pooling2D):
    """Keras ``MaxPooling2D``: (N, H, W, C) -> (N, floor((H - k) / s) + 1, ..., C) with "valid"."""
    pool = staticmethod(kernels.max_pool2d)  # ops.max_pool2d's values and gradient, the gradient faster


class AveragePooling2D(_Pooling2D):
    """Keras ``AveragePooling2D``; with "same" the padded pixels are not counted."""
    pool = staticmethod(ops.avg_pool2d)


class _GlobalPooling2D(nn.Module):
    """(N, H, W, C) -> (N, C), or (N, 1, 1, C) with ``keepdims``."""
    keepdims: bool = False
    trainable: bool = True
    pool: ClassVar[Callable]

    @nn.compact
    def __call__(self, x, train: bool = False):
        return type(self).pool(x, self.keepdims)


class GlobalAveragePooling2D(_GlobalPooling2D):
    pool = staticmethod(ops.global_avg_pool2d)


class GlobalMaxPooling2D(_GlobalPooling2D):
    pool = staticmethod(ops.global_max_pool2d)


class _Opaque:
    """Holds ``Sequential``'s layers out of Flax's sight: Flax adopts modules found in a
    module's fields and names them ``layers_0``...; hiding them lets ``Sequential`` name its
    children the Keras way."""

    def __init__(self, layers: tuple):
        self.layers = layers

    def __iter__(self):
        return iter(self.layers)

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __hash__(self):
        return hash(self.layers)

    def __eq__(self, other):
        return isinstance(other, _Opaque) and self.layers == other.layers

    def __repr__(self):
        return repr(list(self.layers))


class Sequential(nn.Module):
    """Keras ``Sequential``: a stack of layers (or whole models) called in order.

    Children are named as Keras names them (``vgg16``, ``flatten``, ``dense``, ``dense_1``, ...)
    unless a layer was given ``name=``, so parameter paths read like the Keras summary.
    ``input_shape`` (without the batch axis) is optional and used by :func:`minicnn.summary`.
    """
    layers: Any
    input_shape: tuple[int, ...] | None = None
    trainable: bool = True

    def add(self, layer):
        """Keras' ``model.add`` mutates the model; a Flax module is an immutable description, so this
        says how to build it instead of failing with Flax's attribute error."""
        raise TypeError(f"Sequential.add({type(layer).__name__}(...)): a minicnn Sequential is immutable (a Flax "
                        f"module), unlike Keras' which model.add changes; build it with every layer at once: "
                        f"Sequential([*model.layers, layer]) or Sequential([...])")

    def summary(self, *args, **kwargs):
        """Keras' ``model.summary()`` reads the model's own weights; a Flax module holds none."""
        raise TypeError("model.summary(): a minicnn model holds no variables (Keras' does), so the table is a "
                        "function of the model and its input shape: minicnn.summary(model, input_shape=(H, W, C)) "
                        "or minicnn.summary(model, variables=variables)")

    def __post_init__(self):
        if not isinstance(self.layers, _Opaque):
            object.__setattr__(self, "layers", _Opaque(tuple(self.layers)))
        super().__post_init__()

    def layer_names(self) -> list[str]:
        """The child names, in call order."""
        counts: dict[str, int] = {}
        names = []
        for layer in self.layers:
            if layer.name is not None:
                names.append(layer.name)
                continue
            # a Keras application names itself (ResNet50 -> "resnet50", not "res_net50")
            base = getattr(layer, "keras_model_name", None) or keras_name(type(layer).__name__)
            k = counts.get(base, 0)
            counts[base] = k + 1
            names.append(base if k == 0 else f"{base}_{k}")
        return names

    @nn.compact
    def __call__(self, x, train: bool = False):
        for layer, name in zip(self.layers, self.layer_names()):
            x = layer.clone(parent=self, name=name)(x, train=train)
        return x
