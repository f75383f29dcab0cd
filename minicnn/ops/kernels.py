"""Classic hand-made convolution kernels, as (kh, kw) float32 arrays, and :func:`max_pool2d`, max
pooling whose gradient avoids XLA's select-and-scatter.

Use a hand-made kernel with :func:`minicnn.ops.conv2d` by adding the channel axes:
``conv2d(gray[..., None], k[:, :, None, None])``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from minicnn import ops
from minicnn.ops import _explicit_padding

SOBEL_HORIZONTAL = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], np.float32)  # responds to horizontal edges
SOBEL_VERTICAL = SOBEL_HORIZONTAL.T.copy()                                     # responds to vertical edges
DIAGONAL = np.array([[0, 1, 2], [-1, 0, 1], [-2, -1, 0]], np.float32)
EDGE_DETECT = np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], np.float32)


def sobel_horizontal() -> np.ndarray:
    return SOBEL_HORIZONTAL.copy()


def sobel_vertical() -> np.ndarray:
    return SOBEL_VERTICAL.copy()


def diagonal() -> np.ndarray:
    return DIAGONAL.copy()


def edge_detect() -> np.ndarray:
    """8 in the centre, -1 around: sums to zero, so flat regions map to 0."""
    return EDGE_DETECT.copy()


def gabor_kernel(frequency: float, theta: float = 0.0, sigma_x: float | None = None,
                 sigma_y: float | None = None, n_stds: float = 3, offset: float = 0.0) -> np.ndarray:
    """Complex Gabor kernel, equal to ``skimage.filters.gabor_kernel`` (complex128, (2r+1, 2c+1)).

    A Gaussian envelope (``sigma_x``, ``sigma_y``; default ``0.56 / frequency``, a bandwidth of 1)
    times a complex harmonic of ``frequency`` cycles per pixel along direction ``theta``. Take
    ``.real`` for the even (edge/bar) filter used as a convolution kernel.
    """
    # Bandwidth 1 gives sigma = (1/pi) * sqrt(ln 2 / 2) * (2^b + 1)/(2^b - 1) / frequency.
    default = 1 / np.pi * np.sqrt(np.log(2) / 2) * 3 / frequency
    sx = default if sigma_x is None else sigma_x
    sy = default if sigma_y is None else sigma_y
    ct, st = np.cos(theta), np.sin(theta)
    x0 = np.ceil(max(np.abs(n_stds * sx * ct), np.abs(n_stds * sy * st), 1))
    y0 = np.ceil(max(np.abs(n_stds * sy * ct), np.abs(n_stds * sx * st), 1))
    y, x = np.meshgrid(np.arange(-y0, y0 + 1), np.arange(-x0, x0 + 1), indexing="ij", sparse=True)
    rotx = x * ct + y * st
    roty = -x * st + y * ct
    g = np.exp(-0.5 * (rotx ** 2 / sx ** 2 + roty ** 2 / sy ** 2)) / (2 * np.pi * sx * sy)
    return g * np.exp(1j * (2 * np.pi * frequency * rotx + offset))


def max_pool2d(x, pool_size=2, strides=None, padding: ops.Padding = "valid"):
    """:func:`minicnn.ops.max_pool2d` (same arguments, checks and values) with a faster, equal gradient.

    x: (N, H, W, C) -> (N, H', W', C). JAX differentiates max pooling with XLA's select-and-scatter,
    which XLA's CPU backend expands into a loop over (value, index) pairs: measured 5-20x slower than
    the forward (benchmarks/NOTES.md). For disjoint windows (``strides == pool_size``, every pooling in
    the chapter's models) the gradient here is elementwise over the ``kh * kw`` window offsets, one
    fused loop. It routes each window's gradient to the element select-and-scatter picks (the first
    maximum in row-major window order; TensorFlow's rule too), so gradients are bit-for-bit jax's,
    except for a window whose real pixels are all -inf beside "same" padding: jax sends its gradient into
    the padding (lost), this kernel and TensorFlow to the window's first real pixel.
    Overlapping windows keep jax's gradient.
    """
    k = ops.pair(pool_size, "pool_size")
    s = k if strides is None else ops.pair(strides, "strides")
    if s != k:
        return ops.max_pool2d(x, pool_size, strides, padding)
    ops.check_input(x, 4, what="pooling input")
    pad = _explicit_padding(padding, x.shape[1:3], k, s, (1, 1))
    return _disjoint_max_pool(x, k, pad)


def _reduce_max(x, window, pad):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *window, 1), ((0, 0), *pad, (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _disjoint_max_pool(x, window, pad):
    """x: (N, H, W, C); window (kh, kw) = strides; pad ((t, b), (l, r)) -> (N, H', W', C)."""
    return _reduce_max(x, window, pad)


def _disjoint_max_pool_fwd(x, window, pad):
    y = _reduce_max(x, window, pad)
    return y, (x, y)


def _window_pads(x, y, window, pad):
    """lax.pad config taking x to exactly H' * kh by W' * kw (negative ends crop what "valid" drops)."""
    (t, _), (l, _) = pad
    hi = y.shape[1] * window[0] - x.shape[1] - t
    wi = y.shape[2] * window[1] - x.shape[2] - l
    return ((0, 0, 0), (t, hi, 0), (l, wi, 0), (0, 0, 0))


def _disjoint_max_pool_bwd(window, pad, residuals, g):
    """Select-and-scatter's rule, unrolled over the window offsets (a, b) in row-major order: the
    selected element stays selected while ``selected >= candidate``; padding is never selected."""
    x, y = residuals
    config = _window_pads(x, y, window, pad)
    xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype), config)
    inside = None
    if any(p != 0 for dim in config for p in dim):  # mark real pixels: padding is never selected
        inside = lax.pad(jnp.ones((1, *x.shape[1:3], 1), bool), False, config)
    kh, kw = window
    offsets = [(a, b) for a in range(kh) for b in range(kw)]
    selected_value, selected_index, have = None, None, None
    for i, (a, b) in enumerate(offsets):
        candidate = xp[:, a::kh, b::kw]
        if selected_value is None:  # the first offset starts the selection
            selected_value, selected_index = candidate, jnp.zeros(candidate.shape, jnp.int32)
            have = None if inside is None else inside[:, a::kh, b::kw]
            continue
        take = ~(selected_value >= candidate)
        if inside is not None:
            real = inside[:, a::kh, b::kw]
            take = real & (take | ~have)
            have = have | real
        selected_value = jnp.where(take, candidate, selected_value)
        selected_index = jnp.where(take, i, selected_index)
    # dx in window layout (N, H', kh, W', kw, C), then back to (N, H, W, C) by undoing the padding
    parts = [jnp.where(selected_index == i, g, jnp.zeros_like(g)) for i in range(len(offsets))]
    n, ho, wo, c = g.shape
    dxp = jnp.stack(parts, axis=0).reshape(kh, kw, n, ho, wo, c).transpose(2, 3, 0, 4, 1, 5)
    dxp = dxp.reshape(n, ho * kh, wo * kw, c)
    undo = tuple((-lo, -hi, 0) for lo, hi, _ in config)
    return (lax.pad(dxp, jnp.array(0, g.dtype), undo),)


_disjoint_max_pool.defvjp(_disjoint_max_pool_fwd, _disjoint_max_pool_bwd)
