"""Whole-model save and load (Keras' ``model.save`` / ``load_model``), and Keras 3 ``.keras`` files imported."""

import json

import flax.linen as nn
import keras
import numpy as np
import pytest

import minicnn
from minicnn import layers as L
from minicnn.models.vgg import VGG16
from minicnn.train import Trainer, checkpoint, saving
from minicnn.weights import store

rng = np.random.default_rng(0)
x = rng.random((16, 12, 12, 3), np.float32)
y = (np.arange(16) % 2).astype(np.float32)


def convnet():
    return L.Sequential([L.Conv2D(4, 3, activation="relu"), L.MaxPooling2D(2), L.Flatten(), L.Dropout(0.5),
                         L.Dense(8, activation="relu", trainable=False), L.Dense(1, activation="sigmoid")],
                        input_shape=(12, 12, 3))


def leaves(tree):
    return [np.asarray(a) for a in __import__("jax").tree_util.tree_leaves(tree)]


def test_save_then_load_model_is_the_same_trainer_without_rebuilding_the_model(tmp_path):
    trainer = Trainer(convnet(), metrics=["acc"], optimizer_kwargs={"learning_rate": 1e-3})
    trainer.fit(x, y, epochs=2, verbose=0)
    trainer.save(tmp_path / "model")
    loaded = minicnn.load_model(tmp_path / "model")
    assert loaded.model == convnet()
    assert loaded.epoch == 2 and loaded.history.history == trainer.history.history
    assert set(loaded.history.history) >= {"loss", "acc"}
    np.testing.assert_array_equal(loaded.predict(x), trainer.predict(x))
    # the optimizer state and the mask came back: one more epoch is bit-identical on both
    for t in (trainer, loaded):
        t.fit(x, y, epochs=3, initial_epoch=2, verbose=0)
    for a, b in zip(leaves(trainer.variables), leaves(loaded.variables)):
        np.testing.assert_array_equal(a, b)


def test_nested_models_round_trip_through_json():
    model = L.Sequential([VGG16(include_top=False, input_shape=(32, 32, 3), trainable=False), L.Flatten(),
                          L.Dense(1, activation="sigmoid", name="head")])
    config = json.loads(json.dumps(saving.model_config(model)))
    assert saving.from_config(config) == model
    assert config["config"]["layers"][0] == {"class": "minicnn.models.vgg.VGG16", "config": {
        "include_top": False, "input_shape": [32, 32, 3], "trainable": False}}


@pytest.mark.parametrize("name", ["os.system", "subprocess.Popen", "minicnn.train.trainer.Trainer",
                                  "minicnn.layers._Opaque", "minicnn.layers.keras_name", "minicnn.layers..Dense"])
def test_only_minicnn_modules_are_rebuilt(name):
    with pytest.raises(ValueError, match="not one of minicnn's layers or models"):
        saving.from_config({"class": name, "config": {}})


def test_unknown_fields_are_named():
    with pytest.raises(ValueError, match=r"no fields \['kernel_regularizer'\]"):
        saving.from_config({"class": "minicnn.layers.Dense", "config": {"units": 1, "kernel_regularizer": "l2"}})


def test_keras_file_names_and_swapped_arguments_are_one_clear_error(tmp_path):
    trainer = Trainer(convnet())
    trainer.build(x)
    for name in ("x.h5", "x.keras", "x.weights.h5"):
        with pytest.raises(ValueError, match="directory .* not as a Keras"):
            trainer.save(tmp_path / name)
        assert not (tmp_path / name).exists()
    trainer.save(tmp_path / "model")
    with pytest.raises(TypeError, match="the path comes first"):
        Trainer.restore(convnet(), tmp_path / "model")
    foreign = tmp_path / "notes.txt"
    foreign.write_text("hello")
    with pytest.raises(ValueError, match="notes.txt is a file, neither a Keras 3 .keras"):
        minicnn.load_model(foreign)
    with pytest.raises(ValueError, match="is not a model saved by minicnn"):
        minicnn.load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        minicnn.load_model(tmp_path / "absent")


def test_a_tampered_architecture_is_refused_not_imported(tmp_path):
    trainer = Trainer(convnet())
    trainer.build(x)
    path = trainer.save(tmp_path / "model")
    marker = json.loads((path / store.MARKER).read_text())
    marker["metadata"]["model"]["config"]["layers"][0]["class"] = "os.system"
    (path / store.MARKER).write_text(json.dumps(marker))
    with pytest.raises(ValueError, match=r"\[0\]: 'os.system' is not one of minicnn's"):
        minicnn.load_model(path)


class Custom(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return L.Dense(1, activation="sigmoid")(x.reshape(len(x), -1))


def test_a_model_minicnn_cannot_describe_keeps_its_weights_and_says_why(tmp_path):
    trainer = Trainer(Custom())
    trainer.fit(x, y, epochs=1, verbose=0)
    trainer.save(tmp_path / "model")
    with pytest.raises(ValueError, match="no architecture .*test_saving.Custom.*Trainer.restore"):
        minicnn.load_model(tmp_path / "model")
    restored = Trainer.restore(tmp_path / "model", Custom())
    np.testing.assert_array_equal(restored.predict(x), trainer.predict(x))


def test_a_checkpoint_without_architecture_loads_with_its_model(tmp_path):
    """Checkpoints written before whole-model saving (checkpoint.save) still restore given the model."""
    trainer = Trainer(convnet())
    trainer.fit(x, y, epochs=1, verbose=0)
    checkpoint.save(tmp_path / "old", trainer.state, trainer._flat_mask, trainer.epoch, trainer.history)
    with pytest.raises(ValueError, match="no architecture"):
        minicnn.load_model(tmp_path / "old")
    np.testing.assert_array_equal(Trainer.restore(tmp_path / "old", convnet()).predict(x), trainer.predict(x))


def keras_convnet():
    model = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.MaxPooling2D(2), keras.layers.Flatten(), keras.layers.Dropout(0.5),
                              keras.layers.Dense(8, activation="relu", trainable=False),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(loss="binary_crossentropy", optimizer=keras.optimizers.RMSprop(1e-4), metrics=["acc"])
    return model


def test_a_keras_file_of_minicnn_layers_loads(tmp_path):
    """A .keras file real Keras writes: the same outputs, trainable counts and compile arguments."""
    theirs = keras_convnet()
    theirs.save(tmp_path / "m.keras")
    theirs.save_weights(tmp_path / "m.weights.h5")
    ours = minicnn.load_model(tmp_path / "m.keras")
    assert [(type(layer), layer.trainable) for layer in ours.model.layers] == \
        [(type(layer), layer.trainable) for layer in convnet().layers]
    assert ours.model.layer_names() == [layer.name for layer in theirs.layers]  # Keras' names, kept
    np.testing.assert_allclose(ours.predict(x), theirs.predict(x, verbose=0), atol=1e-6)
    trainable = sum(int(np.prod(w.shape)) for w in theirs.trainable_weights)
    assert minicnn.count_params(ours.variables, ours.trainable) == (theirs.count_params(), trainable,
                                                                    theirs.count_params() - trainable)
    assert ours._compile[:2] == ("binary_crossentropy", ("acc",))
    assert ours._optimizer[0] == "rmsprop" and ours._optimizer[1]["learning_rate"] == pytest.approx(1e-4)
    from_weights = minicnn.load_model(tmp_path / "m.weights.h5", model=convnet())
    np.testing.assert_array_equal(from_weights.predict(x), ours.predict(x))


def test_a_keras_argument_minicnn_does_not_compute_is_named(tmp_path):
    theirs = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3, kernel_regularizer="l2")])
    theirs.save(tmp_path / "reg.keras")
    with pytest.raises(ValueError, match=r"\(conv2d(_\d+)?\): kernel_regularizer=.*minicnn computes only"):
        minicnn.load_model(tmp_path / "reg.keras")
    theirs = keras.Sequential([keras.Input((6,)), keras.layers.LayerNormalization()])
    theirs.save(tmp_path / "ln.keras")
    with pytest.raises(ValueError, match="Keras LayerNormalization has no minicnn layer"):
        minicnn.load_model(tmp_path / "ln.keras")
