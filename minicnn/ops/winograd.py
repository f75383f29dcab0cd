"""Winograd F(2x2, 3x3) convolution from XLA ops (Lavin & Gray, 2015).

Each 2x2 output tile comes from a 4x4 input tile: ``Y = A^T [(G g G^T) * (B^T d B)] A``. The
elementwise product over all tiles and channels is 16 matmuls ``(tiles, C) @ (C, F)``, so a 3x3
convolution costs 16/36 = 1/2.25 of the direct method's multiplies, at the price of two cheap
linear transforms that XLA fuses into elementwise loops. Transforms use only 0, +-1 and +-1/2:
float32 results stay within ~1e-6 relative of the direct convolution (F(4x4, 3x3) would save 4x but
its +-1/24 ... 8 coefficients lose about one more digit). Gradients flow through ``jax.grad``
unchanged, since everything is pad, strided slice, add and dot.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

# Input, filter and output transforms of F(2, 3) at the points 0, 1, -1, infinity.
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
M, ALPHA = A_T.shape  # output tile 2, input tile 4


def _combine(coefs, xs):
    """``sum(c * x)`` skipping zero coefficients and multiplying only by non-unit ones."""
    out = None
    for c, x in zip(coefs, xs):
        if c == 0:
            continue
        term = x if c == 1 else -x if c == -1 else x * c
        out = term if out is None else out + term
    return out


def transform_kernel(kernel):
    """kernel: (3, 3, C, F) -> U: (16, C, F), ``G g G^T`` for every (C, F) pair."""
    g = jnp.asarray(G, kernel.dtype)
    return jnp.einsum("ik,klcf,jl->ijcf", g, kernel, g).reshape(ALPHA * ALPHA, *kernel.shape[2:])


def transform_input(xp, th: int, tw: int):
    """xp: (N, 2*th + 2, 2*tw + 2, C) padded input -> V: (16, N*th*tw, C), ``B^T d B`` per tile.

    Tile (i, j) starts at pixel (2i, 2j); row a of every tile is the strided slice ``xp[:, a::2]``.
    """
    n, c = xp.shape[0], xp.shape[-1]
    rows = [xp[:, a:a + M * th:M] for a in range(ALPHA)]
    rows = [_combine(B_T[i], rows) for i in range(ALPHA)]
    tiles = []
    for r in rows:
        cols = [r[:, :, b:b + M * tw:M] for b in range(ALPHA)]
        tiles += [_combine(B_T[j], cols) for j in range(ALPHA)]
    return jnp.stack(tiles).reshape(ALPHA * ALPHA, n * th * tw, c)


def transform_output(m, n: int, th: int, tw: int):
    """m: (16, N*th*tw, F) tile products -> (N, 2*th, 2*tw, F), ``A^T m A`` per tile."""
    f = m.shape[-1]
    m = m.reshape(ALPHA, ALPHA, n, th, tw, f)
    rows = [_combine(A_T[p], list(m)) for p in range(M)]
    y = jnp.stack([jnp.stack([_combine(A_T[q], [r[j] for j in range(ALPHA)]) for q in range(M)])
                   for r in rows])  # (2, 2, N, th, tw, F)
    return y.transpose(2, 3, 0, 4, 1, 5).reshape(n, M * th, M * tw, f)


def conv2d_3x3(x, kernel, padding: tuple[tuple[int, int], tuple[int, int]]):
    """Stride-1, dilation-1 3x3 cross-correlation, as ``lax.conv_general_dilated`` in NHWC/HWIO.

    x: (N, H, W, C); kernel: (3, 3, C, F); padding: explicit ((top, bottom), (left, right)).
    Returns (N, H + top + bottom - 2, W + left + right - 2, F).
    """
    n, h, w, _ = x.shape
    (t, b), (l, r) = padding
    ho, wo = h + t + b - 2, w + l + r - 2
    th, tw = -(-ho // M), -(-wo // M)
    # Pad to whole tiles; the extra bottom/right rows only feed outputs that are cropped off.
    xp = jnp.pad(x, ((0, 0), (t, M * th + 2 - h - t), (l, M * tw + 2 - w - l), (0, 0)))
    v = transform_input(xp, th, tw)
    u = transform_kernel(kernel.astype(x.dtype))
    m = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))  # (16, tiles, F)
    return transform_output(m, n, th, tw)[:, :ho, :wo]
