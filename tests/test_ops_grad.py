"""Gradients of minicnn's custom-VJP kernels against jax's own gradient and against the TensorFlow/Keras
tie rule (the first maximum of a window, row-major), computed by a NumPy loop and by PyTorch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from minicnn import ops
from minicnn.layers import MaxPooling2D, Sequential
from minicnn.ops import kernels

POOLS = [  # (x shape, pool_size, padding); strides = pool_size (other strides keep jax's gradient)
    ((2, 6, 7, 3), 2, "valid"),        # odd width: "valid" drops the last column
    ((1, 7, 8, 2), (2, 3), "same"),    # rectangular windows; "same" pads one row and one column at the end
    ((1, 7, 7, 2), 3, "same"),         # 3x3 windows, one padded row and column on each side
]


def tied(shape, seed=0):
    """Small integers: most windows hold ties; a few -inf (a window of only -inf included)."""
    x = np.random.default_rng(seed).integers(0, 3, shape).astype(np.float32)
    x[0, :2, :2, 0] = -np.inf
    return x


def vjp(f, x, g):
    """(f(x), the vjp of g), one jitted program (eager dispatch would compile every primitive)."""
    def both(x, g):
        y, back = jax.vjp(f, x)
        return y, back(g)[0]
    y, dx = jax.jit(both)(jnp.asarray(x), jnp.asarray(g))
    return np.asarray(y), np.asarray(dx)


def first_max_gradient(x, g, k, padding):
    """The TensorFlow/Keras rule by loops: each window's gradient goes to its first maximum in row-major
    order over the real (unpadded) pixels; x (N, H, W, C), g (N, H', W', C), strides = pool size."""
    (kh, kw), (sh, sw) = k, k
    (t, _), (l, _) = ops._explicit_padding(padding, x.shape[1:3], k, k, (1, 1))
    dx = np.zeros_like(x)
    for n, i, j, c in np.ndindex(g.shape):
        r0, c0 = i * sh - t, j * sw - l
        rows, cols = slice(max(r0, 0), r0 + kh), slice(max(c0, 0), c0 + kw)
        window = x[n, rows, cols, c]
        a, b = np.unravel_index(np.argmax(window), window.shape)  # argmax: the first maximum
        dx[n, rows.start + a, cols.start + b, c] += g[n, i, j, c]
    return dx


@pytest.mark.parametrize("shape,k,padding", POOLS)
def test_max_pool_gradient_is_jax_gradient_with_ties(shape, k, padding):
    x = tied(shape)
    g = np.random.default_rng(1).standard_normal(ops.max_pool2d(x, k, None, padding).shape).astype(np.float32)
    want_y, want_dx = vjp(lambda v: ops.max_pool2d(v, k, None, padding), x, g)
    got_y, got_dx = vjp(lambda v: kernels.max_pool2d(v, k, None, padding), x, g)
    np.testing.assert_array_equal(got_y, want_y)
    loop = first_max_gradient(x, g, ops.pair(k), padding)
    np.testing.assert_array_equal(got_dx, loop)  # TensorFlow's rule, bit for bit, ties and -inf included
    # jax's select-and-scatter also weighs the -inf padding: a window whose real pixels are all -inf sends
    # its gradient into the padding (lost), TensorFlow and minicnn to the first real pixel; elsewhere equal
    differs = want_dx != loop
    assert np.all(np.isneginf(x[differs]))
    np.testing.assert_array_equal(got_dx[~differs], want_dx[~differs])


def test_max_pool_tie_rule_is_torch_first_max():
    x = tied((2, 8, 6, 3), seed=2)
    x[x == -np.inf] = 0.0  # torch and jax agree on ties of finite values
    g = np.random.default_rng(3).standard_normal((2, 4, 3, 3)).astype(np.float32)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
    yt = torch.nn.functional.max_pool2d(xt, 2)
    want = torch.autograd.grad(yt, xt, torch.from_numpy(g).permute(0, 3, 1, 2))[0].permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(vjp(kernels.max_pool2d, x, g)[1], want)


def test_max_pool_gradient_with_nan_and_inf_is_jax_gradient():
    x = np.array([[1, np.nan, 2, 2], [0, 1, np.inf, 3], [-np.inf, -np.inf, np.nan, np.nan],
                  [-np.inf, -np.inf, 5, np.nan]], np.float32)[None, :, :, None]
    g = np.arange(1, 5, dtype=np.float32).reshape(1, 2, 2, 1)
    want_y, want_dx = vjp(ops.max_pool2d, x, g)
    got_y, got_dx = vjp(kernels.max_pool2d, x, g)
    np.testing.assert_array_equal(got_y, want_y)
    np.testing.assert_array_equal(got_dx, want_dx)


def test_max_pooling_layer_uses_the_kernel_under_jit():
    """MaxPooling2D's gradient through a jitted model equals jax's reduce-window gradient, and its program
    has no select-and-scatter (the slow expansion on XLA's CPU backend)."""
    model = Sequential([MaxPooling2D(2), MaxPooling2D(2, padding="same")])
    x = jnp.asarray(tied((2, 9, 10, 4), seed=4))
    weights = jnp.arange(6.0).reshape(1, 2, 3, 1)

    got = jax.jit(jax.grad(lambda v: jnp.sum(model.apply({}, v) * weights))).lower(x).compile()
    want = jax.jit(jax.grad(lambda v: jnp.sum(ops.max_pool2d(ops.max_pool2d(v, 2), 2, None, "same") * weights)))
    np.testing.assert_array_equal(got(x), want(x))
    assert "select-and-scatter" not in got.as_text()
