"""Parameter counts, output shapes and input errors of the models: the lecture's numbers."""

import re

import jax
import jax.numpy as jnp
import pytest

import minicnn
from minicnn.masks import path_str
from minicnn.layers import Dense, Dropout, Flatten, Sequential
from minicnn.models import VGG16, VGG19, mnist_convnet, small_convnet


def abstract_variables(model, shape):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))


def conv_base_with_head():
    return Sequential([VGG16(include_top=False, input_shape=(150, 150, 3)), Flatten(),
                       Dense(256, activation="relu"), Dense(1, activation="sigmoid")])


def test_vgg16_conv_base_summary_matches_lecture():
    text = minicnn.summary(VGG16(include_top=False), (150, 150, 3), print_fn=None)
    shapes = re.findall(r"\(None, [\d, ]+\)", text)
    assert shapes[1] == "(None, 150, 150, 64)" and shapes[-1] == "(None, 4, 4, 512)"
    assert "block5_pool (MaxPooling2D)" in text
    assert "Total params: 14,714,688" in text


@pytest.mark.parametrize("model,shape,total", [
    (VGG16(), (1, 224, 224, 3), 138_357_544),
    (VGG16(include_top=False), (1, 150, 150, 3), 14_714_688),
    (VGG19(), (1, 224, 224, 3), 143_667_240),
    (VGG19(include_top=False), (1, 64, 64, 3), 20_024_384),
    (small_convnet(), (1, 150, 150, 3), 3_453_121),
    (small_convnet(dropout=0.5), (1, 150, 150, 3), 3_453_121),
    (mnist_convnet(), (1, 28, 28, 1), 93_322),
    (mnist_convnet(include_top=False), (1, 28, 28, 1), 55_744),
])
def test_parameter_counts(model, shape, total):
    assert minicnn.count_params(abstract_variables(model, shape)) == (total, total, 0)


def test_frozen_and_block5_counts_match_lecture():
    model = conv_base_with_head()
    variables = abstract_variables(model, (1, 150, 150, 3))
    assert set(variables["params"]) == {"vgg16", "dense", "dense_1"}
    frozen = minicnn.count_params(variables, lambda path, _: not path.startswith("vgg16/"))
    assert frozen == (16_812_353, 2_097_665, 14_714_688)
    block5 = minicnn.count_params(
        variables, lambda path, _: not path.startswith("vgg16/") or path.startswith("vgg16/block5"))
    assert block5 == (16_812_353, 9_177_089, 7_635_264)
    mask = jax.tree_util.tree_map_with_path(
        lambda p, _: path_str(p).startswith("vgg16/block5")
        or not path_str(p).startswith("vgg16"), variables["params"])
    assert minicnn.count_params(variables, mask) == block5
    text = minicnn.summary(model, trainable=mask, print_fn=None)
    assert "vgg16 (VGG16)" in text and "dense_1 (Dense)" in text
    assert "Trainable params: 9,177,089" in text and "Non-trainable params: 7,635,264" in text


def test_sequential_names_children_like_keras():
    model = Sequential([Dense(4), Dropout(0.5), Dense(3, name="head"), Dense(2), Flatten()])
    assert model.layer_names() == ["dense", "dropout", "head", "dense_1", "flatten"]
    params = abstract_variables(model, (1, 5))["params"]
    assert set(params) == {"dense", "head", "dense_1"}
    assert params["dense"]["kernel"].shape == (5, 4)


@pytest.mark.parametrize("size,out", [(32, 1), (150, 4), (224, 7), (97, 3)])
def test_vgg_any_size_at_least_32(size, out):
    y = jax.eval_shape(lambda: VGG16(include_top=False).init_with_output(
        jax.random.key(0), jnp.zeros((1, size, size, 3)))[0])
    assert y.shape == (1, out, out, 512)


def test_vgg_pooling_shapes():
    for pooling in ("avg", "max"):
        y = jax.eval_shape(lambda: VGG16(include_top=False, pooling=pooling).init_with_output(
            jax.random.key(0), jnp.zeros((2, 64, 64, 3)))[0])
        assert y.shape == (2, 512)


def test_bad_inputs_name_expected_and_actual():
    model = VGG16(include_top=False)
    with pytest.raises(ValueError, match=r"at least 32, got shape \(1, 31, 40, 3\)"):
        abstract_variables(model, (1, 31, 40, 3))
    with pytest.raises(ValueError, match=r"expected shape \(N, H, W, 3\), got \(1, 64, 64, 1\)"):
        abstract_variables(VGG16(include_top=False, weights=None, input_shape=(64, 64, 3)), (1, 64, 64, 1))
    with pytest.raises(ValueError, match=r"expected shape \(N, H, W, 3\), got \(64, 64, 3\)"):
        abstract_variables(model, (64, 64, 3))
    with pytest.raises(TypeError, match="dtype int32"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.int32)))
    with pytest.raises(ValueError, match=r"expected shape \(N, 150, 150, 3\), got \(1, 64, 64, 3\)"):
        abstract_variables(VGG16(include_top=False, input_shape=(150, 150, 3)), (1, 64, 64, 3))
    with pytest.raises(ValueError, match="needs input_shape \\(224, 224, 3\\)"):
        VGG16(weights="imagenet", input_shape=(150, 150, 3))
    with pytest.raises(ValueError, match="classes=1000"):
        VGG16(weights="imagenet", classes=2)
    with pytest.raises(ValueError, match="pooling"):
        VGG16(include_top=False, pooling="mean")
