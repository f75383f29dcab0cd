"""extract_features: the frozen base's output for every sample, one compiled program, a disk cache."""

import os

import jax
import numpy as np
import pytest

from minicnn.data import from_arrays
from minicnn.layers import Conv2D, Dense, Flatten, MaxPooling2D, Sequential
from minicnn.transfer import extract_features

MODEL = Sequential([Conv2D(4, 3, activation="relu"), MaxPooling2D(2), Conv2D(6, 3, activation="relu"),
                    Flatten(), Dense(3)])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 12, 12, 3)).astype(np.float32)
    y = rng.integers(0, 2, size=10)
    variables = jax.jit(MODEL.init)(jax.random.key(0), x[:1])
    return x, y, variables


def test_features_and_labels_of_every_sample(data):
    x, y, variables = data
    ds = from_arrays(x, y, batch_size=4, shuffle=False)  # 4 + 4 + 2: the last batch is padded
    features, labels = extract_features(MODEL, variables, ds, verbose=False)
    np.testing.assert_allclose(features, MODEL.apply(variables, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, y)


def test_layer_output_equals_truncated_model(data):
    x, y, variables = data
    features, _ = extract_features(MODEL, variables, from_arrays(x, y, batch_size=4, shuffle=False),
                                   layer="max_pooling2d", verbose=False)
    base = Sequential([Conv2D(4, 3, activation="relu"), MaxPooling2D(2)])
    expected = base.apply({"params": {"conv2d": variables["params"]["conv2d"]}}, x)
    assert features.shape == (10, 5, 5, 4)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown layer 'block5_pool'"):
        extract_features(MODEL, variables, from_arrays(x, y, batch_size=4), layer="block5_pool", verbose=False)


def test_second_run_reads_the_cache(data, tmp_path):
    x, y, variables = data
    first = extract_features(MODEL, variables, from_arrays(x, y, batch_size=4, seed=1), cache_dir=tmp_path,
                             verbose=False)
    [name] = os.listdir(tmp_path)
    # Tamper with the stored features: a second run (reshuffled data) must return the file's content.
    path = tmp_path / name
    np.savez(path, features=first[0] * 2, labels=first[1])
    again = extract_features(MODEL, variables, from_arrays(x, y, batch_size=5, seed=2), cache_dir=tmp_path,
                             verbose=False)
    np.testing.assert_array_equal(again[0], first[0] * 2)
    # Other weights, another layer or other data are other entries.
    moved = jax.tree_util.tree_map(lambda a: a, variables)
    moved["params"]["dense"]["bias"] = moved["params"]["dense"]["bias"] + 1
    extract_features(MODEL, moved, from_arrays(x, y, batch_size=4), cache_dir=tmp_path, verbose=False)
    extract_features(MODEL, variables, from_arrays(x, y, batch_size=4), layer="flatten", cache_dir=tmp_path,
                     verbose=False)
    extract_features(MODEL, variables, from_arrays(x[:9], y[:9], batch_size=4), cache_dir=tmp_path,
                     verbose=False)
    assert len(os.listdir(tmp_path)) == 4


def test_bad_batches_are_named(data):
    x, y, variables = data
    with pytest.raises(ValueError, match=r"expected \(x, y\) batches"):
        extract_features(MODEL, variables, from_arrays(x, batch_size=4), verbose=False)
    with pytest.raises(ValueError, match="only the last batch may be smaller"):
        extract_features(MODEL, variables, [(x[:2], y[:2]), (x[:4], y[:4])], verbose=False)
