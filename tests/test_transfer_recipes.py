"""The four chapter-5 recipes on VGG16 (random weights, 32x32 inputs): what trains, what stays frozen.

Also the no-wasted-work claim, read from the lowered train step: with block5 + head trainable the
step holds the 13 forward convolutions plus backward ones for block5 only. (Frozen BatchNormalization
in inference mode is shown on EfficientNet-Lite0 by benchmarks/transfer_experiment.py: its CPU
compile is too slow for this suite.)
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minicnn import ops
from minicnn.augment import ImageAugmenter
from minicnn.data import from_arrays
from minicnn.models import VGG16
from minicnn.train import Trainer
from minicnn.transfer import trainable_mask
from minicnn.transfer.recipes import (feature_extraction, feature_extraction_with_augmentation,
                                      fine_tune, pretrained_model, train_from_scratch)

AUG = ImageAugmenter(rotation_range=20, horizontal_flip=True)


@functools.cache
def arrays(n=8, size=32):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, size=(n, size, size, 3)).astype(np.float32), np.arange(n) % 2


def data(**kwargs):
    x, y = arrays()
    return from_arrays(x, y, batch_size=4, seed=0, **kwargs)


@functools.cache
def base_variables():
    """Glorot-uniform VGG16 weights drawn with NumPy (jax's threefry takes ~15 s of CPU for 14.7M)."""
    shapes = jax.eval_shape(VGG16(include_top=False).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(1)

    def draw(leaf):
        if len(leaf.shape) == 1:
            return np.zeros(leaf.shape, np.float32)
        limit = np.sqrt(6 / (np.prod(leaf.shape[:-1]) + np.prod(leaf.shape[:-2]) * leaf.shape[-1]))
        return rng.uniform(-limit, limit, leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map(draw, shapes)


@functools.cache
def lecture_model():
    """Sequential([VGG16, Flatten, Dense(256), Dropout, Dense(1)]) and its variables (base_variables)."""
    return pretrained_model(VGG16(include_top=False), jnp.zeros((1, 32, 32, 3)), base_variables())


def same(a, b):
    return all(np.array_equal(u, v) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_feature_extraction_trains_a_head_on_features():
    history = feature_extraction(VGG16(include_top=False), data(), data(shuffle=False), variables=base_variables(),
                                 epochs=2, learning_rate=1e-3)
    assert history.epoch == [0, 1] and {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.history)
    assert history.trainer.variables["params"]["dense"]["kernel"].shape == (512, 256)


def test_feature_extraction_with_augmentation_keeps_the_base():
    history = feature_extraction_with_augmentation(VGG16(include_top=False), data(), variables=base_variables(),
                                                   augment=AUG, epochs=1, learning_rate=1e-3)
    params = history.trainer.variables["params"]
    assert same(params["vgg16"], base_variables()["params"])
    assert not same(params["dense_1"], lecture_model()[1]["params"]["dense_1"])  # same head init (seed 0)


def test_fine_tune_moves_block5_and_head_only():
    history = fine_tune(VGG16(include_top=False), data(), unfreeze_from="block5_conv1", augment=AUG,
                        variables=base_variables(), epochs=(1, 1), learning_rates=(1e-3, 1e-3))
    assert history.epoch == [0, 1]
    params, base = history.trainer.variables["params"]["vgg16"], base_variables()["params"]
    for name in base:
        assert same(params[name], base[name]) == (not name.startswith("block5")), name
    assert history.trainer.trainable["vgg16"]["block5_conv1"]["kernel"]
    assert not history.trainer.trainable["vgg16"]["block4_conv3"]["kernel"]


def test_train_from_scratch_moves_everything():
    model, start = lecture_model()
    history = train_from_scratch(model, data(), variables=start, epochs=1, learning_rate=1e-3)
    after = history.trainer.variables["params"]
    assert all(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(after),
                                                         jax.tree_util.tree_leaves(start["params"])))


def count_convolutions(mask_from):
    """Convolutions in the train step of Sequential([VGG16, head]) with ``mask_from`` on open (all: None),
    counted in its jaxpr, inner jitted ops included, each call once."""
    x, y = arrays()
    model, variables = lecture_model()
    mask = (trainable_mask(variables) if mask_from is None else
            trainable_mask(variables, from_layer=mask_from, model=model, input_shape=(32, 32, 3)))
    trainer = Trainer(model, "binary_crossentropy", "rmsprop", variables=variables, trainable=mask)
    trainer.build(x[:4])
    with ops.conv_algorithm("xla"):  # one conv_general_dilated per convolution (not Winograd's matmuls)
        traced = trainer._train_step.trace(trainer.state, (jnp.asarray(x[:4]), jnp.asarray(y[:4])))
    return count("conv_general_dilated", traced.jaxpr.jaxpr)


def count(primitive, jaxpr):
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == primitive
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    n += count(primitive, inner)
    return n


def test_frozen_layers_cost_no_backward_convolutions():
    # block5 open: 13 forward, 3 kernel gradients, 2 input gradients (block5_conv2/3; none below)
    assert count_convolutions("block5_conv1") == 13 + 3 + 2
    assert count_convolutions(None) == 13 + 13 + 12  # all trainable: no input gradient for block1_conv1


def test_fine_tune_keeps_batchnorm_frozen_unless_asked():
    from minicnn.layers import BatchNormalization, Conv2D, Sequential
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 8, 8, 3)).astype(np.float32), np.arange(8) % 2
    base = Sequential([Conv2D(4, 3), BatchNormalization(), Conv2D(4, 3)])
    start = jax.jit(base.init)(jax.random.key(0), x[:1])
    for train_batchnorm in (False, True):
        history = fine_tune(base, from_arrays(x, y, batch_size=4, seed=0), unfreeze_from="conv2d",
                            variables=start, epochs=(1, 1), learning_rates=(1e-2, 1e-2),
                            train_batchnorm=train_batchnorm)
        after = history.trainer.variables
        assert not same(after["params"]["sequential"]["conv2d"], start["params"]["conv2d"])
        bn = [after[c]["sequential"]["batch_normalization"] for c in ("params", "batch_stats")]
        assert same(bn, [start[c]["batch_normalization"] for c in ("params", "batch_stats")]) != train_batchnorm


def test_a_recipe_trainer_can_change_its_learning_rate_by_name():
    """Recipes keep the optimizer as a name, so the lecture's recompile at a lower rate is one call."""
    from minicnn.layers import Conv2D, MaxPooling2D, Sequential
    from minicnn.transfer import feature_extraction_with_augmentation

    x = np.random.default_rng(0).uniform(0, 255, (6, 16, 16, 3)).astype(np.float32)
    base = Sequential([Conv2D(2, 3), MaxPooling2D(2)])
    history = feature_extraction_with_augmentation(base, from_arrays(x, np.arange(6) % 2, batch_size=3, seed=0),
                                                   epochs=1, head=None)
    history.trainer.set_trainable(None, learning_rate=1e-5)
    assert history.trainer.learning_rate == pytest.approx(1e-5)
