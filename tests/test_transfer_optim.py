"""The masking optimizer: frozen leaves never move and carry no state; broken chains are named."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from minicnn.layers import Conv2D, Dense, Flatten, MaxPooling2D, Sequential
from minicnn.transfer import check_frozen, count_params, freeze, trainable_mask

MODEL = Sequential([Conv2D(4, 3, activation="relu"), MaxPooling2D(2), Conv2D(4, 3, activation="relu"),
                    Flatten(), Dense(8, activation="relu"), Dense(1)], input_shape=(10, 10, 3))


@functools.cache
def setup():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 10, 10, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 2, size=(8, 1)), jnp.float32)
    variables = jax.jit(MODEL.init)(jax.random.key(0), x)
    mask = trainable_mask(variables, from_layer="conv2d_1", model=MODEL)
    return variables["params"], mask, x, y


def loss(params, x, y):
    return optax.sigmoid_binary_cross_entropy(MODEL.apply({"params": params}, x), y).mean()


def train(tx, params, x, y, steps=5):
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return params, state


def n_elements(tree):
    return sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(tree))


def test_frozen_bit_identical_with_adamw_and_clipping():
    params, mask, x, y = setup()
    inner = optax.chain(optax.clip_by_global_norm(0.1), optax.adamw(1e-2, weight_decay=0.5))
    tx = freeze(inner, mask)
    check_frozen(tx, params, mask)
    new, state = train(tx, params, x, y)
    for old, now, m in zip(*map(jax.tree_util.tree_leaves, (params, new, mask))):
        if m:
            assert not np.array_equal(old, now)
        else:
            np.testing.assert_array_equal(old, now)  # bit-identical, despite weight decay
    # Adam's two moments exist for trainable leaves only (plus scalar counts)
    _, n_trainable, n_frozen = count_params({"params": params}, mask)
    assert n_frozen > 0
    moments = sum(int(np.size(s)) for s in jax.tree_util.tree_leaves(state) if np.ndim(s) > 0)
    assert moments == 2 * n_trainable
    # the trainable leaves follow exactly the path of `inner` applied to them alone
    sub = lambda tree: {k: v for k, v in tree.items() if mask[k]["kernel"]}
    frozen_part = {k: v for k, v in params.items() if not mask[k]["kernel"]}
    state_alone = inner.init(sub(params))

    @jax.jit
    def step_alone(p, s):
        grads = jax.grad(lambda q: loss({**frozen_part, **q}, x, y))(p)
        u, s = inner.update(grads, s, p)
        return optax.apply_updates(p, u), s

    p = sub(params)
    for _ in range(5):
        p, state_alone = step_alone(p, state_alone)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), p, sub(new))


def test_new_phase_rebuilds_optimizer_not_params():
    params, mask, x, y = setup()
    head_only = trainable_mask({"params": params}, layers=["dense", "dense_1"])
    p1, _ = train(freeze(optax.adam(1e-2), head_only), params, x, y, steps=2)
    p2, state = train(freeze(optax.adam(1e-5), mask), p1, x, y, steps=2)
    assert not np.array_equal(p1["conv2d_1"]["kernel"], p2["conv2d_1"]["kernel"])
    np.testing.assert_array_equal(p1["conv2d"]["kernel"], p2["conv2d"]["kernel"])
    assert n_elements(optax.tree_utils.tree_get(state, "mu")) == count_params({"params": params}, mask)[1]


def broken_chains(mask):
    inverse = jax.tree_util.tree_map(lambda m: not m, mask)
    zero_frozen = optax.masked(optax.set_to_zero(), inverse)
    return {
        "weight decay after the freeze": (optax.chain(freeze(optax.adam(1e-3), mask),
                                                      optax.add_decayed_weights(0.1)), "would move"),
        "freeze before adamw": (optax.chain(zero_frozen, optax.adamw(1e-3, weight_decay=0.1)), "would move"),
        "global clipping outside": (optax.chain(optax.clip_by_global_norm(1.0), freeze(optax.adam(1e-3), mask)),
                                    "depends on frozen gradients"),
        "freeze after the optimizer": (optax.chain(optax.adam(1e-3), zero_frozen), "state holds"),
    }


@pytest.mark.parametrize("case", ["weight decay after the freeze", "freeze before adamw",
                                  "global clipping outside", "freeze after the optimizer"])
def test_check_frozen_names_broken_chains(case):
    params, mask, _, _ = setup()
    tx, message = broken_chains(mask)[case]
    with pytest.raises(ValueError, match=message):
        check_frozen(tx, params, mask)


def test_layers_a_mask_omits_train_and_invented_ones_are_errors():
    params, mask, _, _ = setup()
    partial = {k: v for k, v in mask.items() if k != "dense_1"}  # dense_1 unmentioned: trainable, as in Keras
    state = freeze(optax.adam(1e-3), partial).init(params)
    assert "dense_1" in " ".join(str(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0])
    extra = {**mask, "dense_9": {"kernel": True}}
    with pytest.raises(ValueError, match=r"no parameter: \['dense_9/kernel'\]"):
        freeze(optax.adam(1e-3), extra).init(params)
    arrays = jax.tree_util.tree_map(lambda m: jnp.asarray(m), mask)
    with pytest.raises(TypeError, match="Python bools"):
        freeze(optax.adam(1e-3), arrays).init(params)
