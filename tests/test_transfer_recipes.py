"""The four chapter-5 recipes on VGG16, MobileNet, MobileNetV2 and Xception (random weights, each at
its smallest Keras size or VGG16's 32x32): what trains, what stays frozen. ResNet50 runs them on the
weights Keras writes in test_models_resnet_xception.py, InceptionV3 its lecture in test_models_inception.py.

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
from minicnn.masks import keras_layers
from minicnn.models import architecture
from minicnn.train import Trainer
from minicnn.transfer import trainable_mask
from minicnn.transfer.recipes import (default_unfreeze_from, feature_extraction, feature_extraction_with_augmentation,
                                      fine_tune, named_base, pretrained_model, train_from_scratch)
from minicnn.weights import preprocess_input

AUG = ImageAugmenter(rotation_range=20, horizontal_flip=True)
# backbone: input side (Keras' smallest for MobileNet(V2) and Xception; VGG16's 32 as in the lecture's CIFAR runs)
SIZES = {"vgg16": 32, "mobilenet": 32, "mobilenet_v2": 32, "xception": 71}
# pixel scale: with base_variables Xception's features come out ~3e5 times its input (He kernels, identity batch
# norm, residual sums) and saturate the head's sigmoid; a ReLU network without biases is positively homogeneous,
# so smaller pixels give features of order 1
PIXELS = {"xception": 1e-5}
BACKBONES = list(SIZES)


def base(backbone):
    return architecture(backbone).build(include_top=False)


@functools.cache
def arrays(n=8, size=32, high=1.0):
    rng = np.random.default_rng(0)
    return rng.uniform(0, high, size=(n, size, size, 3)).astype(np.float32), np.arange(n) % 2


def data(backbone="vgg16", **kwargs):
    x, y = arrays(size=SIZES[backbone], high=PIXELS.get(backbone, 1.0))
    return from_arrays(x, y, batch_size=4, seed=0, **kwargs)


@functools.cache
def base_variables(backbone="vgg16"):
    """He-uniform kernels drawn with NumPy (jax's threefry takes ~15 s of CPU for VGG16's 14.7M), zero
    biases, BatchNormalization at identity (gamma and moving variance 1). He, with a depthwise kernel's
    fan-in its window alone: Glorot's smaller kernels made MobileNet's gradients vanish below float32 rounding."""
    side = SIZES[backbone]
    shapes = jax.eval_shape(base(backbone).init, jax.random.key(0), jnp.zeros((1, side, side, 3)))
    rng = np.random.default_rng(1)

    def draw(path, leaf):
        if path[-1].key in ("gamma", "moving_variance"):
            return np.ones(leaf.shape, np.float32)
        if len(leaf.shape) == 1:
            return np.zeros(leaf.shape, np.float32)
        depthwise = path[-1].key == "depthwise_kernel" or (len(leaf.shape) == 4 and leaf.shape[-1] == 1)
        limit = np.sqrt(6 / np.prod(leaf.shape[:-2] if depthwise else leaf.shape[:-1]))
        return rng.uniform(-limit, limit, leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.cache
def lecture_model(backbone="vgg16"):
    """Sequential([base, Flatten, Dense(256), Dropout, Dense(1)]) and its variables (base_variables)."""
    side = SIZES[backbone]
    return pretrained_model(base(backbone), jnp.zeros((1, side, side, 3)), base_variables(backbone))


def same(a, b):
    return all(np.array_equal(u, v) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_feature_extraction_trains_a_head_on_features(backbone):
    side = SIZES[backbone]
    history = feature_extraction(base(backbone), data(backbone), data(backbone, shuffle=False),
                                 variables=base_variables(backbone), epochs=2, learning_rate=1e-3)
    assert history.epoch == [0, 1] and {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.history)
    features = jax.eval_shape(base(backbone).apply, base_variables(backbone), jnp.zeros((1, side, side, 3)))
    assert history.trainer.variables["params"]["dense"]["kernel"].shape == (np.prod(features.shape[1:]), 256)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_augmented_extraction_keeps_the_base_then_fine_tuning_moves_the_top_and_head_only(backbone):
    """The lecture's order: the frozen-base run (base unchanged, batch statistics included; the head
    trains), then fine-tuning that model from the registry's unfreeze point: the layers from there on
    move (BatchNormalization stays frozen), the layers before it do not."""
    start = base_variables(backbone)
    phase1 = feature_extraction_with_augmentation(base(backbone), data(backbone), variables=start, augment=AUG,
                                                  epochs=1, learning_rate=1e-3)
    name = phase1.trainer.model.layer_names()[0]
    after1 = jax.device_get(phase1.trainer.variables)
    assert same({c: after1[c][name] for c in start}, start)
    assert not same(after1["params"]["dense_1"], lecture_model(backbone)[1]["params"]["dense_1"])  # same init

    unfreeze_from = architecture(backbone).unfreeze_from
    history = fine_tune(base(backbone), data(backbone), augment=AUG, phase1=phase1,  # the registry's unfreeze point
                        epochs=(1, 1), learning_rates=(1e-3, 1e-3))
    assert history.epoch == [0, 1]
    order = keras_layers(base(backbone), start, (SIZES[backbone],) * 2 + (3,))
    opened = set(order[order.index(unfreeze_from):]) - set(start.get("batch_stats", {}))
    params, trainable = history.trainer.variables["params"][name], history.trainer.trainable[name]
    for layer in start["params"]:
        assert all(jax.tree_util.tree_leaves(trainable[layer])) == (layer in opened), layer
        assert same(params[layer], start["params"][layer]) == (layer not in opened), layer


def test_train_from_scratch_moves_everything(backbone="vgg16"):
    """Every parameter trains (on VGG16 alone: on the other backbones this is their all-trainable step, whose
    backward through every layer type the fine-tuning test already exercises from the unfreeze point on)."""
    model, start = lecture_model(backbone)
    history = train_from_scratch(model, data(backbone), variables=start, epochs=1, learning_rate=1e-3)
    after = history.trainer.variables["params"]
    assert all(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(after),
                                                         jax.tree_util.tree_leaves(start["params"])))


@pytest.mark.parametrize("name, mode", [("resnet50", "caffe"), ("xception", "tf"), ("mobilenet_v2", "tf")])
def test_a_base_named_by_the_registry_is_its_imagenet_no_top_model_and_preprocessing(name, mode):
    """fine_tune("resnet50", ...) is Keras' ResNet50(include_top=False, weights="imagenet") with caffe inputs."""
    module, preprocess = named_base(name)
    assert module == architecture(name).build(include_top=False, weights="imagenet")
    x = np.random.default_rng(0).uniform(0, 255, (1, 4, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(preprocess(x), preprocess_input(x, mode))
    assert named_base(name, preprocess=np.sqrt)[1] is np.sqrt  # the caller's preprocessing wins
    assert default_unfreeze_from(module) == architecture(name).unfreeze_from
    with pytest.raises(ValueError, match="pass unfreeze_from="):
        default_unfreeze_from(lecture_model()[0])


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
