"""Every jitted op against its NumPy loop reference, over random shapes, strides, paddings, dilations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minicnn import ops
from minicnn.ops import reference as ref

SETTINGS = settings(max_examples=40, deadline=None)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)


paddings = st.one_of(st.sampled_from(["valid", "same"]), st.integers(0, 2),
                     st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)),
                               st.tuples(st.integers(0, 2), st.integers(0, 2))))


@st.composite
def conv_case(draw, depthwise=False):
    k = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    d = draw(st.integers(1, 2))
    s = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pad = draw(paddings)
    if d > 1:
        s = (1, 1)  # TF/Keras reject strides > 1 with dilation > 1
    h = draw(st.integers((k[0] - 1) * d + 1, 11))
    w = draw(st.integers((k[1] - 1) * d + 1, 11))
    c = draw(st.integers(1, 4))
    f = draw(st.integers(1, 3)) if depthwise else draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2 ** 16))
    return k, d, s, pad, (draw(st.integers(1, 2)), h, w, c), f, seed


@SETTINGS
@given(conv_case())
def test_conv2d_matches_reference(case):
    k, d, s, pad, shape, f, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    kernel = rng.standard_normal((*k, shape[-1], f)).astype(np.float32)
    bias = rng.standard_normal(f).astype(np.float32)
    got = jax.jit(ops.conv2d, static_argnames=("strides", "padding", "dilation"))(
        x, kernel, bias, strides=s, padding=pad, dilation=d)
    want = ref.conv2d(x, kernel, bias, s, pad, d)
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-5


@SETTINGS
@given(conv_case(depthwise=True))
def test_depthwise_conv2d_matches_reference(case):
    k, d, s, pad, shape, m, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    kernel = rng.standard_normal((*k, shape[-1], m)).astype(np.float32)
    got = ops.depthwise_conv2d(x, kernel, None, s, pad, d)
    want = ref.depthwise_conv2d(x, kernel, None, s, pad, d)
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-5


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 3), st.one_of(st.none(), st.integers(1, 3)),
       st.sampled_from(["valid", "same"]), st.integers(3, 12), st.integers(3, 12), st.integers(0, 2 ** 16))
def test_pooling_matches_reference(ph, pw, s, pad, h, w, seed):
    x = np.random.default_rng(seed).standard_normal((2, h, w, 3)).astype(np.float32)
    for op, rop in ((ops.max_pool2d, ref.max_pool2d), (ops.avg_pool2d, ref.avg_pool2d)):
        got, want = op(x, (ph, pw), s, pad), rop(x, (ph, pw), s, pad)
        assert got.shape == want.shape
        assert rel_err(got, want) < 1e-5


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 2 ** 16))
def test_batch_norm_matches_reference(n, c, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, 3, 4, c)) * 3 + 1).astype(np.float32)
    mean, var = rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)
    gamma, beta = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    assert rel_err(ops.batch_norm_inference(x, mean, var, gamma, beta),
                   ref.batch_norm_inference(x, mean, var, gamma, beta)) < 1e-5
    got = ops.batch_norm_train(x, mean, var, gamma, beta)
    want = ref.batch_norm_train(x, mean, var, gamma, beta)
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-5


def test_vgg_pool_sizes_floor_like_keras():
    sizes = [150]
    x = jnp.zeros((1, 150, 150, 1))
    for _ in range(5):
        x = ops.max_pool2d(x)
        sizes.append(x.shape[1])
    assert sizes == [150, 75, 37, 18, 9, 4]


@pytest.mark.parametrize("size,k,s", [(7, 3, 2), (8, 3, 2), (5, 1, 1), (224, 3, 1), (9, 4, 3)])
def test_same_padding_output_size_is_ceil(size, k, s):
    y = ops.conv2d(jnp.zeros((1, size, size, 1)), jnp.zeros((k, k, 1, 1)), strides=s, padding="same")
    assert y.shape[1] == -(-size // s)


def test_output_size():
    assert ops.output_size(224, 3, 1, 1) == 224
    assert ops.output_size(227, 11, 0, 4) == 55
    with pytest.raises(ValueError, match="stride 2 does not divide"):
        ops.output_size(224, 3, 0, 2)


def test_dense_dropout_activations():
    rng = np.random.default_rng(0)
    x, k, b = rng.standard_normal((4, 5)), rng.standard_normal((5, 3)), rng.standard_normal(3)
    np.testing.assert_allclose(ops.dense(x.astype(np.float32), k.astype(np.float32), b.astype(np.float32)),
                               x @ k + b, rtol=1e-5, atol=1e-5)
    y = np.asarray(ops.dropout(jax.random.key(0), jnp.ones((1000,)), 0.25))
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert 0.2 < np.mean(y == 0) < 0.3
    z = jnp.array([-2.0, 0.5, 7.0])
    np.testing.assert_allclose(ops.relu6(z), [0, 0.5, 6])
    np.testing.assert_allclose(ops.relu(z), [0, 0.5, 7])
    np.testing.assert_allclose(ops.softmax(z).sum(), 1.0, rtol=1e-6)


def test_bad_input_names_expected_and_actual():
    k = jnp.zeros((3, 3, 3, 8))
    with pytest.raises(ValueError, match=r"expected shape \(N, H, W, C\), got \(32, 32, 3\)"):
        ops.conv2d(jnp.zeros((32, 32, 3)), k)
    with pytest.raises(ValueError, match=r"input has 1 channels .*expects 3"):
        ops.conv2d(jnp.zeros((1, 8, 8, 1)), k)
    with pytest.raises(ValueError, match=r"\(1, 1, 1, 3\) is too small for a 3x3 window"):
        ops.conv2d(jnp.zeros((1, 1, 1, 3)), k)
    with pytest.raises(ValueError, match=r"\(1, 1, 5, 3\) is too small for a 2x2 window"):
        ops.max_pool2d(jnp.zeros((1, 1, 5, 3)))
    with pytest.raises(TypeError, match="floating-point"):
        ops.conv2d(jnp.zeros((1, 8, 8, 3), jnp.uint8), k)


@pytest.mark.parametrize("size,k,s", [(7, 2, 1), (7, 4, 2), (9, 3, 2), (10, 4, 3), (11, 2, 3), (8, 5, 3)])
def test_same_padding_matches_keras_on_odd_splits(size, k, s):
    """Keras' own "same" (not minicnn's arithmetic) is the oracle: the odd padded pixel goes after."""
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(size * 100 + k * 10 + s)
    x = rng.standard_normal((1, size, size + 1, 2)).astype(np.float32)
    kernel = rng.standard_normal((k, k, 2, 3)).astype(np.float32)
    conv = keras.layers.Conv2D(3, k, strides=s, padding="same", use_bias=False)
    conv.build(x.shape)
    conv.set_weights([kernel])
    layers = [(np.asarray(conv(x)), lambda f: f.conv2d(x, kernel, strides=s, padding="same"))]
    for keras_pool, name in ((keras.layers.MaxPooling2D, "max_pool2d"), (keras.layers.AveragePooling2D, "avg_pool2d")):
        want = np.asarray(keras_pool(k, strides=s, padding="same")(x))
        layers.append((want, lambda f, name=name: getattr(f, name)(x, k, s, "same")))
    for want, run in layers:
        for impl in (ops, ref):
            got = np.asarray(run(impl))
            assert got.shape == want.shape
            assert rel_err(got, want) < 1e-5, impl.__name__
