"""minicnn models as NNX modules (flax.nnx.bridge): same outputs, fine-tuning with nnx.Optimizer and a minicnn
mask as the filter (frozen leaves untouched, the same update as minicnn's own step), and the viz/summary path
through as_linen."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import minicnn
from minicnn.layers import BatchNormalization, Conv2D, Dense, Flatten, MaxPooling2D, Sequential
from minicnn.masks import trainable_mask
from minicnn.nnx import as_linen, mask_filter, to_nnx, variables_of
from minicnn.train import losses
from minicnn.train.step import init_state, make_train_step
from minicnn.masks import freeze


def model_and_variables():
    base = Sequential([Conv2D(4, 3, activation="relu"), BatchNormalization(), MaxPooling2D(2)], name="base")
    model = Sequential([base, Flatten(), Dense(1, activation="sigmoid")], input_shape=(12, 12, 3))
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 12, 12, 3)))
    return model, variables


X = np.random.default_rng(0).uniform(0, 1, (4, 12, 12, 3)).astype(np.float32)
Y = np.array([0, 1, 1, 0], np.float32)


def test_the_nnx_module_computes_what_the_linen_model_does():
    model, variables = model_and_variables()
    module = to_nnx(model, variables)
    assert isinstance(module, nnx.Module) and minicnn.nnx.to_nnx is to_nnx  # reachable from `import minicnn`
    np.testing.assert_array_equal(module(X, train=False), model.apply(variables, X))
    back_model, back = as_linen(module)
    assert back_model is model
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, jax.device_get(dict(variables)))


def test_a_pretrained_model_as_nnx_and_minicnn_tools_on_it():
    model, variables, preprocess = minicnn.pretrained("efficientnet_lite0", include_top=False, pooling="avg",
                                                      input_shape=(64, 64, 3))
    module = to_nnx(model, variables)
    x = preprocess(np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32))
    forward = nnx.jit(lambda m, x: m(x, train=False))  # one compile, as a user would (eager is op by op)
    np.testing.assert_allclose(forward(module, x), jax.jit(model.apply)(variables, x), rtol=1e-6, atol=1e-6)
    linen, v = as_linen(module)
    assert minicnn.summary(linen, variables=v, print_fn=None) == minicnn.summary(model, variables=variables,
                                                                                   print_fn=None)
    jax.tree_util.tree_map(np.testing.assert_array_equal, v, jax.device_get(dict(variables)))  # what viz gets


def test_fine_tuning_with_nnx_optimizer_and_a_minicnn_mask():
    """One nnx.Optimizer step on the head only equals minicnn's own step with the same mask (BatchNormalization
    of the frozen base in inference mode in both)."""
    model, variables = model_and_variables()
    mask = trainable_mask(variables, "all", layers=["base"])   # conv_base.trainable = False
    module = to_nnx(model, variables)
    wrt = mask_filter(mask, variables["params"])
    optimizer = nnx.Optimizer(module, optax.adam(1e-2), wrt=wrt)
    loss_fn = losses.get("binary_crossentropy")

    def loss(m):
        return jnp.mean(loss_fn(Y, m(X, train=False)))  # the frozen base's BN: inference mode, as minicnn's step

    grads = nnx.grad(loss, argnums=nnx.DiffState(0, wrt))(module)
    optimizer.update(module, grads)
    nnx_after = variables_of(module)

    tx = freeze(optax.adam(1e-2), mask)
    state, _ = make_train_step(model, loss_fn, tx, mask)(init_state(variables, tx, jax.random.key(0)), (X, Y))
    for a, b in zip(jax.tree_util.tree_leaves(nnx_after["params"]), jax.tree_util.tree_leaves(state["params"])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(jax.tree_util.tree_leaves(nnx_after["params"]["base"]),
                    jax.tree_util.tree_leaves(variables["params"]["base"])):
        np.testing.assert_array_equal(a, b)  # frozen: untouched
    assert not np.array_equal(nnx_after["params"]["dense"]["kernel"], variables["params"]["dense"]["kernel"])


def test_mask_errors_are_minicnns():
    model, variables = model_and_variables()
    with pytest.raises(ValueError, match=r"trainable mask entries that are no parameter: \['bsae'\]"):
        mask_filter({"bsae": False}, variables["params"])
    with pytest.raises(ValueError, match="to_nnx: params/dense/kernel has shape"):
        bad = jax.tree_util.tree_map(lambda a: a, jax.device_get(dict(variables)))
        bad["params"]["dense"]["kernel"] = np.zeros((3, 1), np.float32)
        to_nnx(model, bad)
