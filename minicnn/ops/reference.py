"""Plain-NumPy loop implementations: the convolution-by-hand of the lecture.

Slow on purpose: each output pixel is the sum of the element-wise product of the kernel and
the input patch under it. These are the ground truth that the jitted ops in
:mod:`minicnn.ops` are tested against. Same signatures and layouts (NHWC, HWIO).
"""

from __future__ import annotations

import numpy as np

# Padding arithmetic is written out here, not imported from minicnn.ops: a reference that shared the
# code under test could not catch its mistakes (e.g. the odd "same" pixel on the wrong side).
Padding = str | int | tuple[tuple[int, int], tuple[int, int]]


def pair(v) -> tuple[int, int]:
    """``3 -> (3, 3)``; ``(2, 1) -> (2, 1)``."""
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def same_pads(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """TensorFlow's "same" for one axis: output ``ceil(size / s)``, the odd pixel padded after.

    TensorFlow (``tf.nn.conv2d`` docs): ``pad_total = max(k_eff - s, 0)`` when ``size % s == 0``,
    else ``max(k_eff - size % s, 0)``; ``pad_before = pad_total // 2``.
    """
    k_eff = (k - 1) * d + 1
    total = max(k_eff - s, 0) if size % s == 0 else max(k_eff - size % s, 0)
    before = total // 2
    return before, total - before


def explicit_pads(padding, hw, k, s, d) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((top, bottom), (left, right))`` for "valid", "same", an int or explicit pairs."""
    if padding == "valid":
        return ((0, 0), (0, 0))
    if padding == "same":
        return tuple(same_pads(hw[i], k[i], s[i], d[i]) for i in range(2))
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple(tuple(int(p) for p in side) for side in padding)


def _padded(x, pad, value=0.0):
    (t, b), (l, r) = pad
    return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=value)


def conv2d(x, kernel, bias=None, strides=1, padding: Padding = "valid", dilation=1):
    """x: (N, H, W, C); kernel: (kh, kw, C, F) -> (N, H', W', F), in float64 loops."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    kh, kw, _, f = kernel.shape
    (sh, sw), (dh, dw) = pair(strides), pair(dilation)
    pad = explicit_pads(padding, x.shape[1:3], (kh, kw), (sh, sw), (dh, dw))
    xp = _padded(x, pad)
    oh = (xp.shape[1] - (kh - 1) * dh - 1) // sh + 1
    ow = (xp.shape[2] - (kw - 1) * dw - 1) // sw + 1
    out = np.zeros((x.shape[0], oh, ow, f))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * sh:i * sh + (kh - 1) * dh + 1:dh, j * sw:j * sw + (kw - 1) * dw + 1:dw, :]
            for o in range(f):
                out[:, i, j, o] = np.sum(patch * kernel[..., o], axis=(1, 2, 3))
    return out if bias is None else out + np.asarray(bias, np.float64)


def depthwise_conv2d(x, kernel, bias=None, strides=1, padding: Padding = "valid", dilation=1):
    """x: (N, H, W, C); kernel: (kh, kw, C, M) -> (N, H', W', C*M): each channel on its own."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    c, m = kernel.shape[2:]
    outs = [conv2d(x[..., ci:ci + 1], kernel[:, :, ci:ci + 1, mi:mi + 1], None, strides, padding, dilation)
            for ci in range(c) for mi in range(m)]
    out = np.concatenate(outs, axis=-1)
    return out if bias is None else out + np.asarray(bias, np.float64)


def _pool(x, reduce, pool_size, strides, padding, fill):
    x = np.asarray(x, np.float64)
    kh, kw = pair(pool_size)
    sh, sw = (kh, kw) if strides is None else pair(strides)
    pad = explicit_pads(padding, x.shape[1:3], (kh, kw), (sh, sw), (1, 1))
    xp = _padded(x, pad, fill)
    oh, ow = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    for i in range(oh):
        for j in range(ow):
            out[:, i, j, :] = reduce(xp[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :])
    return out


def max_pool2d(x, pool_size=2, strides=None, padding: Padding = "valid"):
    return _pool(x, lambda p: p.max(axis=(1, 2)), pool_size, strides, padding, -np.inf)


def avg_pool2d(x, pool_size=2, strides=None, padding: Padding = "valid"):
    """Padded pixels are excluded from each window's count (TensorFlow/Keras "same")."""
    return _pool(x, lambda p: np.nanmean(p, axis=(1, 2)), pool_size, strides, padding, np.nan)


def batch_norm_inference(x, mean, var, gamma=None, beta=None, eps=1e-3):
    x = np.asarray(x, np.float64)
    y = (x - mean) / np.sqrt(np.asarray(var, np.float64) + eps)
    y = y if gamma is None else y * gamma
    return y if beta is None else y + beta


def batch_norm_train(x, moving_mean, moving_var, gamma=None, beta=None, momentum=0.99, eps=1e-3):
    x = np.asarray(x, np.float64)
    axes = tuple(range(x.ndim - 1))
    mean, var = x.mean(axes), x.var(axes)
    y = batch_norm_inference(x, mean, var, gamma, beta, eps)
    return (y, moving_mean * momentum + mean * (1 - momentum),
            moving_var * momentum + var * (1 - momentum))
