"""Keras' ``layer.trainable`` as a field: masks, summary counts and the Trainer follow it, as in Keras 3."""

import keras
import numpy as np
import pytest

import minicnn
from minicnn import layers as L
from minicnn import masks
from minicnn.models.vgg import VGG16
from minicnn.train import Trainer


def keras_counts(model) -> tuple[int, int]:
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return trainable, model.count_params() - trainable


def minicnn_counts(model, input_shape) -> tuple[int, int]:
    """The counts summary prints when no mask is given (the fields)."""
    text = minicnn.summary(model, input_shape, print_fn=None)
    numbers = {line.split(":")[0]: int(line.split(":")[1].replace(",", "")) for line in text.splitlines()
               if line.endswith(tuple("0123456789")) and ":" in line}
    return numbers["Trainable params"], numbers["Non-trainable params"]


def test_dense_trainable_false_counts_as_keras():
    ours = L.Sequential([L.Dense(32, trainable=False), L.Dense(1)], input_shape=(16,))
    theirs = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, trainable=False), keras.layers.Dense(1)])
    assert minicnn_counts(ours, (16,)) == keras_counts(theirs) == (33, 544)


def test_frozen_conv_base_counts_as_keras():
    """The lecture's ``conv_base.trainable = False`` on VGG16 + a dense head: 14,714,688 frozen."""
    conv_base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    conv_base.trainable = False
    theirs = keras.Sequential([conv_base, keras.layers.Flatten(), keras.layers.Dense(256, activation="relu"),
                               keras.layers.Dense(1, activation="sigmoid")])
    ours = L.Sequential([VGG16(include_top=False, input_shape=(32, 32, 3), trainable=False), L.Flatten(),
                         L.Dense(256, activation="relu"), L.Dense(1, activation="sigmoid")])
    assert minicnn_counts(ours, (32, 32, 3)) == keras_counts(theirs) == (131_585, 14_714_688)
    text = minicnn.summary(ours, (32, 32, 3), show_trainable=True, print_fn=None)
    assert [line.split()[-1] for line in text.splitlines() if "(None" in line] == \
        ["N", "-", "Y", "Y"]


def test_a_frozen_parent_freezes_its_children_as_keras():
    inner = L.Sequential([L.Dense(4, trainable=True), L.Dense(3)], trainable=False)
    ours = L.Sequential([inner, L.Dense(1)], input_shape=(5,))
    k_inner = keras.Sequential([keras.layers.Dense(4, trainable=True), keras.layers.Dense(3)])
    k_inner.trainable = False
    theirs = keras.Sequential([keras.Input((5,)), k_inner, keras.layers.Dense(1)])
    assert minicnn_counts(ours, (5,)) == keras_counts(theirs) == (4, 39)
    assert masks.from_trainable_fields(ours) == {"sequential": {"dense": {"kernel": False, "bias": False},
                                                                "dense_1": {"kernel": False, "bias": False}},
                                                 "dense": {"kernel": True, "bias": True}}
    assert masks.from_trainable_fields(L.Sequential([L.Dense(1)], (2,), trainable=False)) is False
    assert masks.from_trainable_fields(L.Sequential([L.Dense(1)], (2,))) is None


def test_from_trainable_fields_needs_an_input_shape():
    with pytest.raises(ValueError, match="needs input_shape"):
        masks.from_trainable_fields(L.Sequential([L.Dense(1, trainable=False)]))


def test_summary_shows_a_partly_frozen_sub_model_and_an_explicit_mask_wins():
    model = L.Sequential([L.Sequential([L.Dense(4), L.Dense(3)]), L.Dense(1, trainable=False)], input_shape=(5,))
    mask = {"sequential": {"dense": False, "dense_1": True}, "dense": True}
    text = minicnn.summary(model, trainable=mask, show_trainable=True, print_fn=None)
    assert "15 of 39" in text and "Trainable params: 19" in text


def test_trainer_follows_the_fields_and_an_explicit_mask_replaces_them():
    model = L.Sequential([L.Dense(4, trainable=False), L.Dense(1, activation="sigmoid")], input_shape=(3,))
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 3), np.float32), (np.arange(16) % 2).astype(np.float32)

    def moved(trainer):
        trainer.build(x)
        before = trainer.variables["params"]
        trainer.fit(x, y, epochs=1, verbose=0)
        after = trainer.variables["params"]
        return {name: not np.array_equal(before[name]["kernel"], after[name]["kernel"]) for name in before}

    assert moved(Trainer(model)) == {"dense": False, "dense_1": True}
    assert moved(Trainer(model, trainable=True)) == {"dense": True, "dense_1": True}


def test_keras_model_methods_that_cannot_exist_say_what_to_do():
    """Keras' model.add / model.summary() on a minicnn Sequential: one clear error naming the minicnn way
    (before: Flax's AttributeError with a misleading .setup() hint)."""
    from minicnn.layers import Dense, Sequential

    model = Sequential([Dense(2)])
    with pytest.raises(TypeError, match=r"immutable .* Sequential\(\[\*model.layers, layer\]\)"):
        model.add(Dense(1))
    with pytest.raises(TypeError, match=r"minicnn.summary\(model, input_shape=\(H, W, C\)\)"):
        model.summary()
