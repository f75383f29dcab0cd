"""Losses, metrics and optimizer updates against real Keras 3 on the same inputs."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from minicnn.train import losses, metrics, optimizers

keras = pytest.importorskip("keras", reason="Keras 3 is the reference for losses and metrics")

rng = np.random.default_rng(0)
N, K = 64, 5
# Logits from ordinary to extreme, where naive formulas overflow or take log(0).
LOGITS = np.concatenate([rng.normal(size=(N - 8, K)) * 3,
                         np.array([[60, -60, 0, 1, -1], [-200, 200, 5, 0, 0], [1e4, -1e4, 0, 0, 0],
                                   [30, 30, 30, 30, 30], [-88, -88, 88, 0, 0], [0, 0, 0, 0, 0],
                                   [17, -17, 17, -17, 0], [500, 499, -3, 2, 1]])]).astype(np.float32)
SPARSE = rng.integers(0, K, size=N)
ONEHOT = np.eye(K, dtype=np.float32)[SPARSE]
BINARY = (rng.random((N, K)) > 0.5).astype(np.float32)


def np_(x):
    return np.asarray(x, np.float64)


@pytest.mark.parametrize("from_logits", [False, True])
def test_binary_crossentropy_equals_keras(from_logits):
    pred = LOGITS if from_logits else np.asarray(jax.nn.sigmoid(LOGITS))  # saturated 0/1 probabilities included
    ours = losses.binary_crossentropy(BINARY, pred, from_logits=from_logits)
    ref = keras.losses.binary_crossentropy(BINARY, pred, from_logits=from_logits)
    assert ours.shape == (N,)
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(np_(ours), np_(ref), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("from_logits", [False, True])
def test_categorical_losses_equal_keras(from_logits):
    pred = LOGITS if from_logits else np.asarray(jax.nn.softmax(LOGITS))
    for ours, ref, y in ((losses.categorical_crossentropy, keras.losses.categorical_crossentropy, ONEHOT),
                         (losses.sparse_categorical_crossentropy,
                          keras.losses.sparse_categorical_crossentropy, SPARSE)):
        got = ours(y, pred, from_logits=from_logits)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(np_(got), np_(ref(y, pred, from_logits=from_logits)), rtol=1e-6, atol=1e-5)


def test_binary_crossentropy_from_logits_is_stable_where_probabilities_clip():
    z = np.array([[-1e4], [-100.0], [100.0], [1e4]], np.float32)
    y = np.array([1.0, 1.0, 0.0, 0.0], np.float32)  # labels of shape (N,) meet a (N, 1) output, as in Keras
    got = np_(losses.binary_crossentropy(y, z, from_logits=True))
    np.testing.assert_allclose(got, np.abs(z[:, 0]), rtol=1e-6)  # -log(sigmoid(-|z|)) ~ |z|
    # probabilities are clipped to [1e-7, 1 - 1e-7] in float32, as Keras does: the loss saturates
    p = np.asarray(jax.nn.sigmoid(z))
    saturated = np_(losses.binary_crossentropy(y, p, from_logits=False))
    np.testing.assert_array_equal(saturated, np_(keras.losses.binary_crossentropy(y[:, None], p)))
    assert np.all(saturated < 16.2) and np.all(saturated > 15.9)


def test_loss_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(3, 4\)"):
        losses.categorical_crossentropy(np.zeros((3, 2)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="unknown loss 'msee'"):  # "mse" is Keras' alias, accepted
        losses.get("msee")


def test_accuracies_equal_keras():
    probs = np.asarray(jax.nn.sigmoid(LOGITS[:, :1]))
    y = BINARY[:, 0]
    cases = [
        (metrics.binary_accuracy(y, probs), keras.metrics.binary_accuracy(y[:, None], probs)),
        (metrics.categorical_accuracy(ONEHOT, LOGITS), keras.metrics.categorical_accuracy(ONEHOT, LOGITS)),
        (metrics.sparse_categorical_accuracy(SPARSE, LOGITS),
         keras.metrics.sparse_categorical_accuracy(SPARSE, LOGITS)),
    ]
    for k in (1, 2, 3):  # rows with ties included
        cases.append((metrics.sparse_top_k_categorical_accuracy(SPARSE, LOGITS, k),
                      keras.metrics.sparse_top_k_categorical_accuracy(SPARSE, LOGITS, k)))
        cases.append((metrics.top_k_categorical_accuracy(ONEHOT, LOGITS, k),
                      keras.metrics.top_k_categorical_accuracy(ONEHOT, LOGITS, k)))
    for ours, ref in cases:
        np.testing.assert_array_equal(np.asarray(ours).reshape(-1), np.asarray(ref).reshape(-1))


def test_accuracy_follows_the_loss_like_keras_compile():
    assert metrics.get("accuracy", "binary_crossentropy").fn is metrics.binary_accuracy
    assert metrics.get("acc", "sparse_categorical_crossentropy").fn is metrics.sparse_categorical_accuracy
    with pytest.raises(ValueError, match="ambiguous"):
        metrics.get("accuracy", None)


def _keras_trajectory(opt, w0, grads):
    var = keras.Variable(w0)
    out = []
    for g in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
        out.append(np.asarray(var.value))
    return np.array(out)


def _ours_trajectory(tx, w0, grads):
    w, state, out = jnp.asarray(w0), tx.init(jnp.asarray(w0)), []
    for g in grads:
        upd, state = tx.update(jnp.asarray(g), state, w)
        w = optax.apply_updates(w, upd)
        out.append(np.asarray(w))
    return np.array(out)


@pytest.mark.parametrize("name, kwargs", [
    ("rmsprop", {}), ("rmsprop", {"learning_rate": 1e-2, "momentum": 0.9}),
    ("rmsprop", {"centered": True, "rho": 0.8}),
    ("adam", {}), ("adam", {"learning_rate": 1e-2, "beta_1": 0.5, "epsilon": 1e-3}),
    ("sgd", {}), ("sgd", {"momentum": 0.9}), ("sgd", {"momentum": 0.9, "nesterov": True}),
])
def test_optimizer_updates_equal_keras(name, kwargs):
    # Tiny gradients make the epsilon placement visible: optax.adam's would differ here.
    r = np.random.default_rng(1)
    w0 = r.normal(size=(7,)).astype(np.float32)
    grads = (r.normal(size=(12, 7)) * np.logspace(-6, 0, 7)).astype(np.float32)
    keras_cls = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}
    ref = _keras_trajectory(keras_cls[name](**kwargs), w0, grads)
    ours = _ours_trajectory(optimizers.get(name, **kwargs), w0, grads)
    np.testing.assert_allclose(ours - w0, ref - w0, rtol=2e-5, atol=1e-8)


def test_optax_adam_epsilon_differs_from_keras():
    """Why minicnn has its own Adam: optax's epsilon sits after the bias correction."""
    w0, g = np.zeros(1, np.float32), np.full((1, 1), 1e-7, np.float32)
    ref = _keras_trajectory(keras.optimizers.Adam(), w0, g)
    assert not np.allclose(_ours_trajectory(optax.adam(1e-3, eps=1e-7), w0, g), ref, rtol=1e-3, atol=0)
    np.testing.assert_allclose(_ours_trajectory(optimizers.get("adam"), w0, g), ref, rtol=1e-5)


def test_learning_rate_is_injected_and_settable():
    tx = optimizers.get("rmsprop", learning_rate=1e-4)
    state = tx.init({"w": jnp.ones(3)})
    assert optimizers.get_learning_rate(state) == pytest.approx(1e-4)
    state = optimizers.set_learning_rate(state, 0.5)
    upd, _ = tx.update({"w": jnp.ones(3)}, state)
    np.testing.assert_allclose(upd["w"], -0.5 / np.sqrt(0.1 + 1e-7), rtol=1e-6)
    with pytest.raises(ValueError, match="inject_hyperparams"):
        optimizers.get_learning_rate(optax.sgd(0.1).init({"w": jnp.ones(3)}))
    with pytest.raises(ValueError, match="unknown optimizer 'adamw'"):
        optimizers.get("adamw")
