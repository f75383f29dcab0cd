"""Training parity with real Keras 3 (JAX backend): same convnet, same initial weights, same batches."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest

from minicnn.models import small_convnet
from minicnn.train import Trainer
from tests.keras_utils import keras_variables

keras = pytest.importorskip("keras", reason="Keras 3 is the reference for training parity")

SHAPE = (48, 48, 3)  # the smallest comfortable size that survives four conv/pool stages
STEPS, BATCH = 20, 4


def keras_small_convnet():
    L = keras.layers
    return keras.Sequential([
        keras.Input(SHAPE),
        L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(2),
        L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(2),
        L.Conv2D(128, 3, activation="relu"), L.MaxPooling2D(2),
        L.Conv2D(128, 3, activation="relu"), L.MaxPooling2D(2),
        L.Flatten(), L.Dense(512, activation="relu"), L.Dense(1, activation="sigmoid")])


@pytest.fixture(scope="module")
def batches():
    rng = np.random.default_rng(0)
    return [(rng.random((BATCH, *SHAPE), np.float32), (rng.random(BATCH) > 0.5).astype(np.float32))
            for _ in range(STEPS)]


@pytest.mark.parametrize("name, keras_opt, lr", [
    ("rmsprop", "RMSprop", 1e-4),
    ("adam", "Adam", 1e-3),
])
def test_per_step_losses_match_keras(batches, name, keras_opt, lr):
    keras.utils.set_random_seed(1)
    km = keras_small_convnet()
    km.compile(optimizer=getattr(keras.optimizers, keras_opt)(learning_rate=lr),
               loss="binary_crossentropy", metrics=["accuracy"])
    model = small_convnet(SHAPE)
    names = [n for n in model.layer_names() if n.startswith(("conv2d", "dense"))]
    initial = keras_variables(km, names)
    trainer = Trainer(model, "binary_crossentropy", name, optimizer_kwargs={"learning_rate": lr}, variables=initial)
    ours, theirs = [], []
    for x, y in batches:
        logs = trainer.train_on_batch(x, y)
        k_loss, k_acc = km.train_on_batch(x, y)
        ours.append((logs["loss"], logs["accuracy"]))
        theirs.append((k_loss, k_acc))
    ours, theirs = np.array(ours), np.array(theirs)
    np.testing.assert_allclose(ours[:, 0], theirs[:, 0], rtol=1e-5)  # measured: RMSprop 8.5e-8, Adam 6.1e-6
    np.testing.assert_array_equal(ours[:, 1], theirs[:, 1])
    # Weights: Adam's step is about lr whatever the gradient's size, so float noise in a near-zero
    # gradient can flip a weight's step; compare the difference with how far the weights moved.
    final = keras_variables(km, names)["params"]
    for layer in names:
        moved = final[layer]["kernel"] - initial["params"][layer]["kernel"]
        diff = trainer.variables["params"][layer]["kernel"] - final[layer]["kernel"]
        assert np.linalg.norm(moved) > 1e-3, layer
        assert np.linalg.norm(diff) < 0.02 * np.linalg.norm(moved), layer


# Out-of-range labels: Keras with TensorFlow raises; inside a jitted step they would give NaN (7 of 3
# classes) or train as another class (-1, negative indexing), so the trainer checks before the step.

def dense_trainer(classes, loss):
    from minicnn.layers import Dense, Flatten, Sequential
    activation = "sigmoid" if classes == 1 else "softmax"
    return Trainer(Sequential([Flatten(), Dense(classes, activation=activation)]), loss, "sgd")


def label_batches(labels, as_jax=False):
    import jax.numpy as jnp
    x = np.random.default_rng(0).random((len(labels[0]), 2, 2, 1), np.float32)
    return [(x, jnp.asarray(y) if as_jax else np.asarray(y)) for y in labels]


@pytest.mark.parametrize("as_jax", [False, True])
@pytest.mark.parametrize("bad", [7, -1, 3])
def test_sparse_labels_out_of_range_raise_naming_batch_and_value(bad, as_jax):
    trainer = dense_trainer(3, "sparse_categorical_crossentropy")
    data = label_batches([[0, 1, 2, 1], [2, bad, 0, 1]], as_jax)
    with pytest.raises(ValueError, match=rf"batch 1 has label {bad} at position 1 .*\[0, 3\)"):
        trainer.fit(data, epochs=1, verbose=0)
    before = trainer.variables
    with pytest.raises(ValueError, match=rf"batch 1 has label {bad}"):
        trainer.evaluate(data)
    with pytest.raises(ValueError, match=rf"batch 0 has label {bad}"):
        trainer.train_on_batch(*data[1])
    after = trainer.variables  # the refused batch changed nothing
    np.testing.assert_array_equal(after["params"]["dense"]["kernel"], before["params"]["dense"]["kernel"])


@pytest.mark.parametrize("bad", [2.0, -0.5, float("nan")])
def test_binary_labels_outside_0_1_raise(bad):
    trainer = dense_trainer(1, "binary_crossentropy")
    with pytest.raises(ValueError, match=rf"binary_crossentropy: batch 0 has label {bad}.*\[0, 1\]"):
        trainer.fit(label_batches([[0.0, 1.0, bad, 0.5]]), epochs=1, verbose=0)


def test_labels_in_range_train():
    trainer = dense_trainer(3, "sparse_categorical_crossentropy")
    history = trainer.fit(label_batches([[0, 1, 2, 2]], as_jax=True), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
