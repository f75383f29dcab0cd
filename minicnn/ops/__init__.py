"""Jitted convnet kernels on ``jax.lax``.

Layout is NHWC for activations and HWIO for kernels throughout. Every function is pure and
jittable; the matching plain-NumPy loops live in :mod:`minicnn.ops.reference` and are the
tests' ground truth. Padding and pooling follow Keras/TensorFlow exactly: ``"same"`` pads
``total = max((ceil(in / s) - 1) * s + k_eff - in, 0)`` with the extra pixel at the end,
``"valid"`` floors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import jax
import jax.numpy as jnp
from jax import lax

from minicnn.ops import winograd
from minicnn.ops.policy import (CONV_ALGORITHMS, check_compute_dtype, check_conv_algorithm,
                                compilation_cache_dir, compiler_options, compute_dtype, conv_algorithm,
                                get_compute_dtype, get_conv_algorithm, jit, use_compilation_cache)

Padding = Union[str, int, tuple[tuple[int, int], tuple[int, int]]]

__all__ = [
    "conv2d", "depthwise_conv2d", "max_pool2d", "avg_pool2d", "global_avg_pool2d",
    "global_max_pool2d", "batch_norm_inference", "batch_norm_train", "dense", "dropout",
    "relu", "relu6", "sigmoid", "softmax", "output_size", "same_padding", "pair",
    "check_input", "get_activation", "CONV_ALGORITHMS", "get_conv_algorithm", "conv_algorithm",
    "get_compute_dtype", "compute_dtype", "compiler_options", "jit", "compilation_cache_dir",
    "use_compilation_cache",
]


def pair(v: int | Sequence[int], name: str = "value") -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(2, 1) -> (2, 1)``."""
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(i) for i in v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v}")
    return v


def output_size(w: int, f: int, p: int, s: int) -> int:
    """The lecture's ``(W - F + 2P) / S + 1``; raises when the stride does not divide.

    Use it to check a hand-designed architecture: a non-integer result means the filter
    does not tile the padded input and some pixels would be silently dropped.
    """
    span = w - f + 2 * p
    if span < 0:
        raise ValueError(f"filter {f} is larger than the padded input {w} + 2*{p}")
    if span % s:
        raise ValueError(
            f"stride {s} does not divide (W - F + 2P) = ({w} - {f} + 2*{p}) = {span}: "
            f"output would be {span / s + 1:.2f}, not an integer")
    return span // s + 1


def same_padding(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TensorFlow/Keras ``"same"`` padding for one axis: extra pixel goes at the end."""
    k_eff = (k - 1) * d + 1
    total = max((math.ceil(size / s) - 1) * s + k_eff - size, 0)
    return (total // 2, total - total // 2)


def _explicit_padding(padding: Padding, hw: tuple[int, int], k: tuple[int, int],
                      s: tuple[int, int], d: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return ((0, 0), (0, 0))
        if mode == "same":
            return tuple(same_padding(hw[i], k[i], s[i], d[i]) for i in range(2))
        raise ValueError(f'padding must be "valid", "same", an int or ((t, b), (l, r)); got {padding!r}')
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    (t, b), (l, r) = padding
    return ((int(t), int(b)), (int(l), int(r)))


def _check_fits(x, what: str, k, s, d, pad) -> None:
    """Raise when a window does not fit the padded input (an output size of 0 or less)."""
    for axis in range(2):
        k_eff = (k[axis] - 1) * d[axis] + 1
        if x.shape[1 + axis] + sum(pad[axis]) < k_eff:
            raise ValueError(f"{what}: input of shape {tuple(x.shape)} is too small for a {k[0]}x{k[1]} "
                             f"window (dilation {d}) with padding {pad}: the output would be empty")


def check_input(x, rank: int = 4, channels: int | None = None, what: str = "input") -> None:
    """Raise a ValueError naming expected and actual shape for wrong rank, dtype or channels."""
    shape = tuple(getattr(x, "shape", ()))
    expected = "(N, H, W, C)" if rank == 4 else f"rank {rank}"
    if channels is not None and rank == 4:
        expected = f"(N, H, W, {channels})"
    if len(shape) != rank:
        raise ValueError(f"{what}: expected shape {expected}, got {shape} (rank {len(shape)})")
    dtype = getattr(x, "dtype", None)
    if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{what}: expected a floating-point array {expected}, got dtype {dtype} "
                        f"with shape {shape}; convert with x.astype('float32')")
    if channels is not None and shape[-1] != channels:
        raise ValueError(f"{what}: expected shape {expected}, got {shape}")


_DIMS = ("NHWC", "HWIO", "NHWC")


def _to_compute_dtype(x, dtype):
    """x in ``dtype``, or in the scoped default :func:`compute_dtype` when ``dtype`` is None."""
    dtype = get_compute_dtype() if dtype is None else check_compute_dtype(dtype)
    return x if dtype is None else x.astype(dtype)


def _pick_conv_algorithm(algorithm, kernel, s, d, groups) -> str:
    algorithm = check_conv_algorithm(get_conv_algorithm() if algorithm is None else algorithm)
    eligible = kernel.shape[:2] == (3, 3) and s == (1, 1) and d == (1, 1) and groups == 1
    # "auto" is XLA's convolution on every backend. On a near-idle 2-core CPU it beat F(2x2, 3x3)
    # on VGG16's conv base at every shape measured, under jax.jit and ops.jit alike (ops.jit forward
    # 64x64 b2 47 vs 212 ms, 150 b8 374 vs 498 ms, 150 b20 999 vs 1256 ms; gradient 150 b4 1.48 vs
    # 1.87 s); the earlier Winograd wins were measured under 5-10x load. GPUs' cuDNN picks Winograd
    # itself. "auto" reads no trace-time state, so jax.jit and ops.jit trace the same program.
    return "winograd" if algorithm == "winograd" and eligible else "xla"


def conv2d(x, kernel, bias=None, strides=1, padding: Padding = "valid", dilation=1,
           feature_group_count: int = 1, algorithm: str | None = None, dtype=None):
    """2-D cross-correlation, as Keras' ``Conv2D``.

    x: (N, H, W, C) float; kernel: (kh, kw, C // groups, F); bias: (F,) or None.
    Returns (N, H', W', F) with H' = floor((H + pad - k_eff) / s) + 1, in the compute dtype.

    algorithm: ``"auto"`` (XLA's convolution, minicnn's measured choice), ``"xla"``
    (``lax.conv_general_dilated``) or ``"winograd"`` (F(2x2, 3x3), used only for 3x3 stride-1
    dilation-1 ungrouped convs; others use ``"xla"``); None follows the scoped default
    :func:`conv_algorithm` (``"auto"`` outside any block). dtype: the compute dtype (x, kernel and
    bias are cast to it, e.g. ``"bfloat16"``); None follows :func:`compute_dtype` (x's dtype
    outside any block).
    """
    check_input(x, 4, what="conv2d input")
    if kernel.ndim != 4:
        raise ValueError(f"conv2d kernel: expected shape (kh, kw, in, out), got {tuple(kernel.shape)}")
    if x.shape[-1] != kernel.shape[2] * feature_group_count:
        raise ValueError(f"conv2d: input has {x.shape[-1]} channels (shape {tuple(x.shape)}) but the "
                         f"kernel {tuple(kernel.shape)} expects {kernel.shape[2] * feature_group_count}")
    s, d = pair(strides, "strides"), pair(dilation, "dilation")
    pad = _explicit_padding(padding, x.shape[1:3], kernel.shape[:2], s, d)
    _check_fits(x, "conv2d", kernel.shape[:2], s, d, pad)
    x = _to_compute_dtype(x, dtype)
    if _pick_conv_algorithm(algorithm, kernel, s, d, feature_group_count) == "winograd":
        y = winograd.conv2d_3x3(x, kernel, pad)
    else:
        y = lax.conv_general_dilated(x, kernel.astype(x.dtype), window_strides=s, padding=pad,
                                     rhs_dilation=d, dimension_numbers=_DIMS,
                                     feature_group_count=feature_group_count)
    return y if bias is None else y + bias.astype(y.dtype)


def depthwise_conv2d(x, kernel, bias=None, strides=1, padding: Padding = "valid", dilation=1,
                     dtype=None):
    """Per-channel convolution, as Keras' ``DepthwiseConv2D``.

    x: (N, H, W, C); kernel: (kh, kw, C, M) with M the depth multiplier; bias: (C*M,) or None.
    Returns (N, H', W', C*M), channel c*M + m filtered by kernel[..., c, m]. dtype: as :func:`conv2d`.
    """
    check_input(x, 4, what="depthwise_conv2d input")
    kh, kw, c, m = kernel.shape
    if x.shape[-1] != c:
        raise ValueError(f"depthwise_conv2d: input has {x.shape[-1]} channels (shape {tuple(x.shape)}) "
                         f"but the kernel {tuple(kernel.shape)} expects {c}")
    return conv2d(x, kernel.reshape(kh, kw, 1, c * m), bias, strides, padding, dilation,
                  feature_group_count=c, dtype=dtype)


def _pool(x, init, op, pool_size, strides, padding):
    check_input(x, 4, what="pooling input")
    k = pair(pool_size, "pool_size")
    s = k if strides is None else pair(strides, "strides")
    pad = _explicit_padding(padding, x.shape[1:3], k, s, (1, 1))
    _check_fits(x, "pooling", k, s, (1, 1), pad)
    return lax.reduce_window(x, init, op, (1, *k, 1), (1, *s, 1), ((0, 0), *pad, (0, 0))), (k, s, pad)


def max_pool2d(x, pool_size=2, strides=None, padding: Padding = "valid"):
    """Max pooling; ``strides`` defaults to ``pool_size``; "valid" floors (150 -> 75 -> 37)."""
    return _pool(x, -jnp.inf, lax.max, pool_size, strides, padding)[0]


def avg_pool2d(x, pool_size=2, strides=None, padding: Padding = "valid"):
    """Average pooling; with "same" the padded pixels are not counted (as TensorFlow/Keras)."""
    total, (k, s, pad) = _pool(x, 0.0, lax.add, pool_size, strides, padding)
    if all(p == (0, 0) for p in pad):
        return total / (k[0] * k[1])
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = lax.reduce_window(ones, 0.0, lax.add, (1, *k, 1), (1, *s, 1), ((0, 0), *pad, (0, 0)))
    return total / count


def global_avg_pool2d(x, keepdims: bool = False):
    """x: (N, H, W, C) -> (N, C) (or (N, 1, 1, C) with keepdims)."""
    check_input(x, 4, what="global_avg_pool2d input")
    return jnp.mean(x, axis=(1, 2), keepdims=keepdims)


def global_max_pool2d(x, keepdims: bool = False):
    """x: (N, H, W, C) -> (N, C) (or (N, 1, 1, C) with keepdims)."""
    check_input(x, 4, what="global_max_pool2d input")
    return jnp.max(x, axis=(1, 2), keepdims=keepdims)


def batch_norm_inference(x, mean, var, gamma=None, beta=None, eps: float = 1e-3):
    """``gamma * (x - mean) / sqrt(var + eps) + beta`` over the last axis (Keras' epsilon 1e-3)."""
    inv = lax.rsqrt(var.astype(jnp.float32) + eps)
    if gamma is not None:
        inv = inv * gamma
    y = (x - mean.astype(x.dtype)) * inv.astype(x.dtype)
    return y if beta is None else y + beta.astype(x.dtype)


def batch_norm_train(x, moving_mean, moving_var, gamma=None, beta=None, momentum: float = 0.99,
                     eps: float = 1e-3):
    """Normalise with the batch statistics and update the moving ones, as Keras' BatchNormalization.

    x: (..., C). Statistics reduce over every axis but the last; the batch variance is the
    biased one (divide by n), for normalising and for the moving average alike, as Keras does.
    Returns ``(y, new_moving_mean, new_moving_var)`` with
    ``moving = moving * momentum + batch * (1 - momentum)``.
    """
    axes = tuple(range(x.ndim - 1))
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axes)
    var = jnp.mean(jnp.square(xf - mean), axes)
    y = batch_norm_inference(x, mean, var, gamma, beta, eps)
    new_mean = moving_mean * momentum + mean * (1.0 - momentum)
    new_var = moving_var * momentum + var * (1.0 - momentum)
    return y, new_mean, new_var


def dense(x, kernel, bias=None, dtype=None):
    """x: (..., in); kernel: (in, out); bias: (out,) or None -> (..., out) in the compute dtype.

    dtype: the compute dtype; None follows the scoped default :func:`compute_dtype` (x's dtype).
    """
    if x.shape[-1] != kernel.shape[0]:
        raise ValueError(f"dense: input has {x.shape[-1]} features (shape {tuple(x.shape)}) but the "
                         f"kernel {tuple(kernel.shape)} expects {kernel.shape[0]}")
    x = _to_compute_dtype(x, dtype)
    y = _matmul(x, kernel.astype(x.dtype))
    return y if bias is None else y + bias.astype(y.dtype)


# jaxlib 0.10's CPU backend gives a row-major dot to YNNPACK, which streams a large kernel far below
# memory bandwidth when there are few rows (VGG16's fc1 at batch 8: 490 ms, XLA's Eigen dot 210 ms;
# benchmarks/NOTES.md). YNNPACK declines a dot whose left operand is column-major, so with few rows
# the input is transposed first, behind an optimization barrier (else XLA folds the transpose back
# into the dot): Eigen then runs it under plain jax.jit too, forward and backward. The transpose
# copies only the small input. Above ~16 rows YNNPACK is as fast or faster (measured to 512 rows).
MATVEC_ROWS = 16


def _matmul(x, kernel):
    """x: (..., in) @ kernel (in, out) -> (..., out), as a column-major-input dot on CPU for few rows."""
    rows = math.prod(x.shape[:-1])
    if not 0 < rows <= MATVEC_ROWS or jax.default_backend() != "cpu":
        return jnp.dot(x, kernel)
    xt = lax.optimization_barrier(x.reshape(rows, x.shape[-1]).T)  # (in, rows), column-major input
    y = lax.dot_general(xt, kernel, (((0,), (0,)), ((), ())))
    return y.reshape(*x.shape[:-1], kernel.shape[1])


def dropout(key, x, rate: float):
    """Inverted dropout: zero each unit with probability ``rate``, scale the rest by 1/(1-rate)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
    if rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def relu(x):
    return jnp.maximum(x, 0)


def relu6(x):
    return jnp.clip(x, 0, 6)


def sigmoid(x):
    return jax.nn.sigmoid(x)


def softmax(x, axis: int = -1):
    return jax.nn.softmax(x, axis=axis)


_ACTIVATIONS = {None: None, "linear": None, "relu": relu, "relu6": relu6, "sigmoid": sigmoid,
                "softmax": softmax, "tanh": jnp.tanh, "swish": jax.nn.swish, "silu": jax.nn.silu,
                "gelu": jax.nn.gelu, "elu": jax.nn.elu}


def get_activation(activation):
    """Keras activation name (or a callable, or None) -> callable or None."""
    if callable(activation):
        return activation
    try:
        return _ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(f"unknown activation {activation!r}; known: "
                         f"{sorted(k for k in _ACTIVATIONS if k)}") from None
