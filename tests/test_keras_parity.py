"""minicnn against real Keras 3 (JAX backend): same weights in, same outputs out."""

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="Keras 3 is the numerical reference ([test] extra)")

import jax  # noqa: E402

from minicnn.layers import BatchNormalization  # noqa: E402
from minicnn.models import VGG16, VGG19, small_convnet  # noqa: E402
from tests.keras_utils import keras_variables, rel_err  # noqa: E402


def images(shape, seed=0):
    return np.random.default_rng(seed).uniform(-120, 140, shape).astype(np.float32)


@pytest.mark.parametrize("include_top,size,pooling,classes", [
    (True, 224, None, 1000),
    (True, 64, None, 7),
    (False, 224, None, 1000),
    (False, 64, "avg", 1000),
    (False, 97, "max", 1000),
    (False, 150, None, 1000),
])
def test_vgg16_matches_keras(include_top, size, pooling, classes):
    assert_vgg_matches_keras(keras.applications.VGG16, VGG16, include_top, size, pooling, classes, batch=2)


@pytest.mark.parametrize("include_top,size,pooling,classes", [(True, 64, None, 7), (False, 32, "max", 1000)])
def test_vgg19_matches_keras(include_top, size, pooling, classes):
    assert_vgg_matches_keras(keras.applications.VGG19, VGG19, include_top, size, pooling, classes, batch=1)


def assert_vgg_matches_keras(keras_cls, ours_cls, include_top, size, pooling, classes, batch):
    """Keras' application with random weights, the same weights copied in: outputs within 1e-5 relative."""
    kmodel = keras_cls(weights=None, include_top=include_top, pooling=pooling, classes=classes,
                       input_shape=(size, size, 3))
    x = images((batch, size, size, 3))
    want = np.asarray(kmodel(x, training=False))
    model = ours_cls(include_top=include_top, pooling=pooling, classes=classes)
    got = jax.jit(model.apply)(keras_variables(kmodel), x)
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("train", [False, True])
def test_batch_normalization_matches_keras(train):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((8, 5, 5, 6)) * 4 + 2).astype(np.float32)
    klayer = keras.layers.BatchNormalization()
    klayer.build(x.shape)
    klayer.set_weights([rng.uniform(0.5, 2, 6), rng.standard_normal(6), rng.standard_normal(6),
                        rng.uniform(0.5, 2, 6)])
    variables = {"params": {"gamma": klayer.get_weights()[0], "beta": klayer.get_weights()[1]},
                 "batch_stats": {"moving_mean": klayer.get_weights()[2],
                                 "moving_variance": klayer.get_weights()[3]}}
    got, updates = BatchNormalization().apply(variables, x, train=train, mutable=["batch_stats"])
    want = np.asarray(klayer(x, training=train))
    assert rel_err(got, want) < 1e-5
    k_mean, k_var = klayer.get_weights()[2:]
    assert rel_err(updates["batch_stats"]["moving_mean"], k_mean) < 1e-5
    assert rel_err(updates["batch_stats"]["moving_variance"], k_var) < 1e-5


def test_small_convnet_matches_keras():
    L = keras.layers
    kmodel = keras.Sequential([
        keras.Input((150, 150, 3)),
        L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(2), L.Conv2D(64, 3, activation="relu"),
        L.MaxPooling2D(2), L.Conv2D(128, 3, activation="relu"), L.MaxPooling2D(2),
        L.Conv2D(128, 3, activation="relu"), L.MaxPooling2D(2), L.Flatten(),
        L.Dense(512, activation="relu"), L.Dense(1, activation="sigmoid")])
    names = ["conv2d", "conv2d_1", "conv2d_2", "conv2d_3", "dense", "dense_1"]
    x = np.random.default_rng(2).uniform(0, 1, (3, 150, 150, 3)).astype(np.float32)
    got = small_convnet().apply(keras_variables(kmodel, names), x)
    want = np.asarray(kmodel(x, training=False))
    assert got.shape == want.shape == (3, 1)
    assert rel_err(got, want) < 1e-5
