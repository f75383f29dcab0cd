"""Winograd F(2x2, 3x3) against the float64 loop reference and XLA's convolution, values and
gradients; the algorithm and compute-dtype policies (arguments, layer fields, scoped defaults), and
ops.jit differing from jax.jit only in how it compiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minicnn import ops
from minicnn.layers import Conv2D, Dense, DepthwiseConv2D, Flatten, Sequential
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
    winograd = jax.jit(lambda x, k, b: ops.conv2d(x, k, b, padding=pad, algorithm="winograd"))  # one compile
    got = winograd(jnp.asarray(x), jnp.asarray(k), jnp.asarray(b))
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


def test_algorithm_scoped_default_and_checks():
    assert ops.get_conv_algorithm() == "auto"
    with ops.conv_algorithm("winograd"):
        assert ops.get_conv_algorithm() == "winograd"
    assert ops.get_conv_algorithm() == "auto"
    with pytest.raises(ValueError, match="winograd"):
        ops.conv_algorithm("fft")
    with pytest.raises(ValueError, match="fft"):
        ops.conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), algorithm="fft")


def _uses_winograd(fn, *args) -> bool:
    """Whether the traced program computes its 3x3 convs as Winograd's matmuls (no convolution)."""
    return "conv_general_dilated" not in str(jax.make_jaxpr(fn)(*args))


def test_conv2d_layer_algorithm_field_wins_over_the_scoped_default():
    x = jnp.ones((1, 6, 6, 16))
    layer = lambda algorithm: Conv2D(4, 3, padding="same", algorithm=algorithm)  # noqa: E731
    variables = layer(None).init(jax.random.key(0), x)
    run = lambda algorithm: lambda v, x: layer(algorithm).apply(v, x)  # noqa: E731
    assert not _uses_winograd(run(None), variables, x)  # "auto": XLA's convolution
    assert _uses_winograd(run("winograd"), variables, x)
    with ops.conv_algorithm("winograd"):
        assert _uses_winograd(run(None), variables, x)  # a field left at None follows the scope
        assert not _uses_winograd(run("xla"), variables, x)  # an explicit field wins
    np.testing.assert_allclose(run("winograd")(variables, x), run("xla")(variables, x), rtol=1e-5, atol=1e-5)


def test_compute_dtype_by_argument_field_and_scope():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 3)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    full = ops.conv2d(x, k, padding="same")
    half = ops.conv2d(x, k, padding="same", dtype="bfloat16")
    assert half.dtype == jnp.bfloat16 and ops.dense(x[:, 0, 0], w, dtype=jnp.bfloat16).dtype == jnp.bfloat16
    assert rel_err(half.astype(jnp.float32), full) < 2e-2  # bfloat16 keeps 8 bits of mantissa
    with ops.compute_dtype("bfloat16"):
        assert ops.conv2d(x, k).dtype == jnp.bfloat16 and ops.dense(x[:, 0, 0], w).dtype == jnp.bfloat16
        assert ops.conv2d(x, k, dtype="float32").dtype == jnp.float32  # an explicit dtype wins
    assert ops.get_compute_dtype() is None and ops.conv2d(x, k).dtype == jnp.float32
    for layer in (Conv2D(4, 3, dtype="bfloat16"), DepthwiseConv2D(3, dtype="bfloat16"),
                  Dense(4, dtype="bfloat16")):
        variables = layer.init(jax.random.key(0), x)
        assert layer.apply(variables, x).dtype == jnp.bfloat16
        assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))  # parameters stay float32
    with pytest.raises(ValueError, match="floating"):
        ops.compute_dtype("int8")
    with pytest.raises(ValueError, match="int8"):
        ops.conv2d(x, k, dtype="int8")


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


def test_jax_jit_and_ops_jit_trace_the_same_program():
    """The same model under jax.jit and ops.jit: the same jaxpr ("auto" reads no trace-time state),
    so equal outputs within float32 rounding; only the compilation differs."""
    model = Sequential([Conv2D(16, 3, padding="same", activation="relu"),
                        Conv2D(16, 3, padding="same", activation="relu"), Flatten(), Dense(3)])
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
    variables = jax.jit(model.init)(jax.random.key(1), x)
    forward = lambda v, x: model.apply(v, x)  # noqa: E731
    fast, plain = ops.jit(forward), jax.jit(forward)
    assert str(fast.trace(variables, x).jaxpr) == str(plain.trace(variables, x).jaxpr)
    for jitted in (fast, plain):  # "auto" on 16-channel 3x3 convs: XLA's convolution under both
        assert jitted.lower(variables, x).compile().as_text().count("convolution(") == 2
    np.testing.assert_allclose(fast(variables, x), plain(variables, x), rtol=1e-5, atol=1e-5)
    assert fast.__name__ == "<lambda>" and fast.eval_shape(variables, x).shape == (2, 3)
