"""Winograd F(2x2, 3x3) against the float64 loop reference and XLA's convolution, values and
gradients; the algorithm and compute-dtype policies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minicnn import ops
from minicnn.ops import reference as ref

paddings = st.one_of(st.sampled_from(["valid", "same"]), st.integers(0, 2),
                     st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)),
                               st.tuples(st.integers(0, 2), st.integers(0, 2))))


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 2), h=st.integers(3, 10), w=st.integers(3, 10), c=st.integers(1, 5),
       f=st.integers(1, 4), pad=paddings, seed=st.integers(0, 2 ** 16))
def test_winograd_equals_reference(n, h, w, c, f, pad, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, h, w, c)).astype(np.float32)
    k = rng.normal(size=(3, 3, c, f)).astype(np.float32)
    b = rng.normal(size=f).astype(np.float32)
    got = ops.conv2d(jnp.asarray(x), jnp.asarray(k), jnp.asarray(b), padding=pad, algorithm="winograd")
    want = ref.conv2d(x, k, b, padding=pad)
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-5


def test_winograd_gradients_equal_xla_on_a_vgg_sized_layer():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 19, 18, 32)), jnp.float32)  # odd size: a partial tile
    k = jnp.asarray(rng.normal(size=(3, 3, 32, 16)) / np.sqrt(9 * 32), jnp.float32)

    def loss(x, k, algorithm):
        return jnp.sum(jax.nn.relu(ops.conv2d(x, k, padding="same", algorithm=algorithm)) ** 2)

    values = {a: ops.conv2d(x, k, padding="same", algorithm=a) for a in ops.CONV_ALGORITHMS}
    grads = {a: jax.grad(loss, (0, 1))(x, k, a) for a in ops.CONV_ALGORITHMS}
    assert rel_err(values["winograd"], values["xla"]) < 1e-5
    for g_w, g_x in zip(grads["winograd"], grads["xla"]):
        assert rel_err(g_w, g_x) < 1e-5


def test_ineligible_convs_fall_back_to_xla():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(1, 9, 9, 4)), jnp.float32)
    for k, kw in [((5, 5, 4, 2), {}), ((3, 3, 4, 2), {"strides": 2}), ((3, 3, 4, 2), {"dilation": 2}),
                  ((3, 3, 2, 2), {"feature_group_count": 2})]:
        kernel = jnp.asarray(rng.normal(size=k), jnp.float32)
        got = ops.conv2d(x, kernel, padding="same", algorithm="winograd", **kw)
        want = ops.conv2d(x, kernel, padding="same", algorithm="xla", **kw)
        np.testing.assert_array_equal(got, want)


def test_algorithm_setting_is_scoped_and_checked():
    assert ops.get_conv_algorithm() == "auto"
    with ops.conv_algorithm("winograd"):
        assert ops.get_conv_algorithm() == "winograd"
    assert ops.get_conv_algorithm() == "auto"
    with pytest.raises(ValueError, match="winograd"):
        ops.set_conv_algorithm("fft")
    with pytest.raises(ValueError, match="fft"):
        ops.conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), algorithm="fft")


def test_compute_dtype_policy_casts_convs_and_dense_and_is_scoped():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 3)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    full = ops.conv2d(x, k, padding="same")
    with ops.compute_dtype("bfloat16"):
        half = ops.conv2d(x, k, padding="same")
        dense = ops.dense(x[:, 0, 0], w)
    assert half.dtype == jnp.bfloat16 and dense.dtype == jnp.bfloat16
    assert rel_err(half.astype(jnp.float32), full) < 2e-2  # bfloat16 keeps 8 bits of mantissa
    assert ops.get_compute_dtype() is None and ops.conv2d(x, k).dtype == jnp.float32
    with pytest.raises(ValueError, match="floating"):
        ops.set_compute_dtype("int8")


def test_minicnn_jit_equals_jax_jit_and_keeps_convs_and_dots_off_ynnpack():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 12, 12, 32)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 32, 32)), jnp.float32)
    f = lambda x, k: jax.nn.relu(ops.conv2d(x, k, padding="same", algorithm="xla"))  # noqa: E731
    np.testing.assert_allclose(ops.jit(f)(x, k), jax.jit(f)(x, k), rtol=1e-5, atol=1e-4)
    if not ops.compiler_options():
        pytest.skip("this jaxlib does not know minicnn's CPU compiler options")
    g = lambda x, k, w: ops.dense(f(x, k).reshape(2, -1), w)  # noqa: E731
    w = jnp.asarray(rng.normal(size=(12 * 12 * 32, 64)), jnp.float32)
    assert "ynn_fusion" in jax.jit(g).lower(x, k, w).compile().as_text()  # jaxlib's default
    hlo = ops.jit(g).lower(x, k, w).compile().as_text()
    assert "convolution(" in hlo and "ynn_fusion" not in hlo
    explicit = ops.jit(f, compiler_options={"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"})
    np.testing.assert_allclose(explicit(x, k), jax.jit(f)(x, k), rtol=1e-5, atol=1e-4)


def test_auto_uses_winograd_only_under_minicnn_jit_and_for_wide_inputs():
    rng = np.random.default_rng(4)
    wide = jnp.asarray(rng.normal(size=(2, 10, 10, 16)), jnp.float32)
    rgb = jnp.asarray(rng.normal(size=(2, 10, 10, 3)), jnp.float32)
    conv = lambda x: ops.conv2d(x, jnp.ones((3, 3, x.shape[-1], 8)), padding="same")  # noqa: E731
    plain = jax.jit(conv).lower(wide).compile().as_text()
    assert "convolution(" in plain  # plain jax.jit: XLA's convolution
    assert "convolution(" in ops.jit(conv).lower(rgb).compile().as_text()  # C = 3: XLA's convolution
    assert not ops.tuned_compile()  # only set while ops.jit traces
    if not ops.compiler_options():
        pytest.skip("no minicnn compiler options on this backend: auto is XLA everywhere")
    assert "convolution(" not in ops.jit(conv).lower(wide).compile().as_text()  # Winograd: dots
    np.testing.assert_allclose(ops.jit(conv)(wide), jax.jit(conv)(wide), rtol=1e-5, atol=1e-4)
