"""Trainable masks from layer names, checked against the counts Keras prints in the lecture.

(Building Keras' VGG16 here costs ~20 s on the shared CPU; the lecture's summaries are Keras'.)
"""

import jax
import jax.numpy as jnp
import pytest

from minicnn.layers import Conv2D, Dense, Flatten, MaxPooling2D, Sequential
from minicnn.models import VGG16
from minicnn.summary import summary
from minicnn.transfer import count_params, layer_order, trainable_mask


def lecture_model(size=150):
    return Sequential([VGG16(include_top=False, input_shape=(size, size, 3)), Flatten(),
                       Dense(256, activation="relu"), Dense(1, activation="sigmoid")])


def shapes(model, size):
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)


@pytest.fixture(scope="module")
def lecture():
    model = lecture_model()
    return model, shapes(model, 150)


def test_lecture_numbers_base_frozen(lecture):
    _, v = lecture
    mask = trainable_mask(v, "all", layers=["vgg16"])
    assert count_params(v, mask) == (16_812_353, 2_097_665, 14_714_688)
    assert trainable_mask(v, layers=["dense", "dense_1"]) == mask  # the same, said the other way


def test_lecture_numbers_from_block5(lecture):
    model, v = lecture
    mask = trainable_mask(v, from_layer="block5_conv1", model=model)
    assert count_params(v, mask) == (16_812_353, 9_177_089, 7_635_264)
    text = summary(model, trainable=mask, variables=v, print_fn=None)
    assert "Trainable params: 9,177,089" in text and "Non-trainable params: 7,635,264" in text
    # the traced order can be computed once and reused
    assert trainable_mask(v, from_layer="vgg16/block5_conv1", order=layer_order(model, v)) == mask
    assert trainable_mask(v, from_layer="block4_pool", model=model) == mask  # a layer without params


def test_defaults_and_where(lecture):
    _, v = lecture
    everything, nothing = trainable_mask(v), trainable_mask(v, "none")
    assert all(jax.tree_util.tree_leaves(everything)) and not any(jax.tree_util.tree_leaves(nothing))
    biases = trainable_mask(v, where=lambda path, leaf: path.endswith("/bias"))
    assert count_params(v, biases)[1] == sum(
        leaf.shape[0] for leaf in jax.tree_util.tree_leaves(v["params"]) if leaf.ndim == 1)
    # "all" + a selector freezes the selection
    frozen_biases = trainable_mask(v, "all", where=lambda path, leaf: path.endswith("/bias"))
    assert jax.tree_util.tree_map(lambda a, b: a != b, biases, frozen_biases) == everything


def test_call_order_not_dict_order():
    # 12 convs: alphabetical order puts conv10 before conv2, and "dense_1" before "vgg"-like names
    convs = [Conv2D(2, 1, name=f"conv{i}") for i in range(1, 13)]
    model = Sequential([*convs, Flatten(), Dense(3, name="zhead"), Dense(1, name="ahead")])
    v = shapes(model, 4)
    mask = trainable_mask(v, from_layer="conv10", model=model, input_shape=(4, 4, 3))
    trained = {name for name, leaf in mask.items() if leaf["kernel"]}
    assert trained == {"conv10", "conv11", "conv12", "zhead", "ahead"}
    assert layer_order(model, v, (4, 4, 3))[:3] == ["conv1", "conv2", "conv3"]


def test_errors_name_the_problem(lecture):
    model, v = lecture
    with pytest.raises(ValueError, match="no layer named 'block6_conv1'.*block5_conv1"):
        trainable_mask(v, from_layer="block6_conv1", model=model)
    with pytest.raises(ValueError, match="needs the call order"):
        trainable_mask(v, from_layer="block5_conv1")
    with pytest.raises(ValueError, match="trainable must be"):
        trainable_mask(v, "some")
    with pytest.raises(TypeError, match="list of layer names"):
        trainable_mask(v, layers="vgg16")
    with pytest.raises(ValueError, match='needs the model variables'):
        trainable_mask(v["params"])
    nested = Sequential([Sequential([Dense(2)], name="a"), Sequential([Dense(2)], name="b")])
    nv = jax.eval_shape(lambda x: nested.init(jax.random.key(0), x), jax.ShapeDtypeStruct((1, 3), jnp.float32))
    with pytest.raises(ValueError, match="ambiguous.*a/dense.*b/dense"):
        trainable_mask(nv, layers=["dense"])
    assert count_params(nv, trainable_mask(nv, layers=["b/dense"]))[1] == 2 * 2 + 2
    with pytest.raises(ValueError, match="needs input_shape"):
        layer_order(Sequential([Conv2D(1, 1), MaxPooling2D(1)]))
