"""The Keras layers the application models are built from, against Keras 3 itself (same weights, same inputs)."""

import re

import keras
import numpy as np
import pytest

from minicnn import layers as L

X = np.random.default_rng(0).normal(size=(2, 9, 9, 4)).astype(np.float32)


@pytest.mark.parametrize("strides,padding,multiplier", [(1, "valid", 1), (2, "same", 2)])
def test_separable_conv2d(strides, padding, multiplier):
    ref = keras.layers.SeparableConv2D(5, 3, strides=strides, padding=padding, depth_multiplier=multiplier,
                                       activation="relu")
    want = np.asarray(ref(X))
    params = {w.path.split("/")[-1]: np.asarray(w) for w in ref.weights}
    assert sorted(params) == ["bias", "depthwise_kernel", "pointwise_kernel"]
    ours = L.SeparableConv2D(5, 3, strides=strides, padding=padding, depth_multiplier=multiplier, activation="relu")
    np.testing.assert_allclose(ours.apply({"params": params}, X), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ref,ours,x", [
    (keras.layers.ReLU(6.0), L.ReLU(6.0), X),
    (keras.layers.ReLU(negative_slope=0.1, threshold=0.5), L.ReLU(negative_slope=0.1, threshold=0.5), X),
    (keras.layers.ZeroPadding2D(((1, 2), (0, 3))), L.ZeroPadding2D(((1, 2), (0, 3))), X),
    (keras.layers.ZeroPadding2D((1, 2)), L.ZeroPadding2D((1, 2)), X),
    (keras.layers.Reshape((1, 1, -1)), L.Reshape((1, 1, -1)), X[:, 0, 0, :]),
])
def test_weightless_layers(ref, ours, x):
    np.testing.assert_array_equal(ours.apply({}, x), np.asarray(ref(x)))


def test_merges_and_names():
    np.testing.assert_array_equal(L.Add().apply({}, [X, 2 * X, X]), np.asarray(keras.layers.Add()([X, 2 * X, X])))
    np.testing.assert_array_equal(L.Concatenate().apply({}, [X, 2 * X]),
                                  np.asarray(keras.layers.Concatenate()([X, 2 * X])))
    for ours, ref in ((L.ReLU, keras.layers.ReLU()), (L.SeparableConv2D, keras.layers.SeparableConv2D(1, 1)),
                      (L.ZeroPadding2D, keras.layers.ZeroPadding2D()), (L.Concatenate, keras.layers.Concatenate())):
        assert L.keras_name(ours.__name__) == re.sub(r"_\d+$", "", ref.name)  # Keras numbers repeats
