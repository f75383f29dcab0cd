"""minicnn models as NNX modules (flax.nnx.bridge): same outputs; fine-tuning with nnx.Optimizer, a minicnn mask
as the filter and minicnn.nnx.train_forward gives minicnn's own train step (a pretrained EfficientNet-Lite0 base
frozen bit for bit, the head trained); summary, Grad-CAM, activations and filter patterns through as_linen."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import minicnn
from minicnn.layers import (
    BatchNormalization,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPooling2D,
    Sequential,
)
from minicnn.masks import freeze, trainable_mask
from minicnn.nnx import as_linen, mask_filter, to_nnx, train_forward, variables_of
from minicnn.train import losses
from minicnn.train.step import init_state, make_train_step

BINARY_CROSSENTROPY = losses.get("binary_crossentropy")
RATE = 1e-2


def model_and_variables():
    base = Sequential([Conv2D(4, 3, activation="relu"), BatchNormalization(), MaxPooling2D(2)], name="base")
    model = Sequential([base, Flatten(), Dense(1, activation="sigmoid")], input_shape=(12, 12, 3))
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 12, 12, 3)))
    return model, variables


X = np.random.default_rng(0).uniform(0, 1, (4, 12, 12, 3)).astype(np.float32)
Y = np.array([0, 1, 1, 0], np.float32)


def nnx_fit(module, mask, params, x, y, steps: int):
    """``steps`` jitted NNX steps (nnx.Optimizer over mask_filter, train_forward), with the dropout keys minicnn's
    step draws from ``init_state(..., jax.random.key(0))``'s rng."""
    wrt = mask_filter(mask, params)
    optimizer = nnx.Optimizer(module, optax.adam(RATE), wrt=wrt)

    @nnx.jit
    def step(module, optimizer, dropout_key):
        def loss(m):
            return jnp.mean(BINARY_CROSSENTROPY(y, train_forward(m, x, mask, dropout_key=dropout_key)))
        optimizer.update(module, nnx.grad(loss, argnums=nnx.DiffState(0, wrt))(module))

    rng = jax.random.key(0)
    for _ in range(steps):
        rng, dropout_key = jax.random.split(rng)
        step(module, optimizer, dropout_key)
    return variables_of(module)


def linen_fit(model, variables, mask, x, y, steps: int) -> dict:
    """The same steps with minicnn's own pure train step; the resulting ``{"params", "batch_stats"}``."""
    tx = freeze(optax.adam(RATE), mask)
    state = init_state(variables, tx, jax.random.key(0))
    step = jax.jit(make_train_step(model, BINARY_CROSSENTROPY, tx, mask))
    for _ in range(steps):
        state, _ = step(state, (x, y))
    return {"params": state["params"], "batch_stats": state["batch_stats"]}


def assert_trees(check, a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    jax.tree_util.tree_map(check, jax.device_get(a), jax.device_get(b))


def test_the_nnx_module_computes_what_the_linen_model_does():
    model, variables = model_and_variables()
    module = to_nnx(model, variables)
    assert isinstance(module, nnx.Module) and minicnn.nnx.to_nnx is to_nnx  # reachable from `import minicnn`
    np.testing.assert_array_equal(module(X, train=False), model.apply(variables, X))
    back_model, back = as_linen(module)
    assert back_model is model
    assert_trees(np.testing.assert_array_equal, back, dict(variables))


def test_fine_tuning_with_nnx_optimizer_and_a_minicnn_mask():
    """Two NNX steps with the conv frozen and its BatchNormalization training equal minicnn's two steps: the
    trained layer's moving statistics are written back into the module, the frozen kernel is untouched."""
    model, variables = model_and_variables()
    mask = trainable_mask(variables, "all", layers=["base/conv2d"])
    nnx_after = nnx_fit(to_nnx(model, variables), mask, variables["params"], X, Y, steps=2)
    linen_after = linen_fit(model, variables, mask, X, Y, steps=2)
    # the same computation in two jitted programs: measured bit-identical on CPU, 1e-6 allows other fusion
    assert_trees(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), nnx_after, linen_after)
    assert_trees(np.testing.assert_array_equal, nnx_after["params"]["base"]["conv2d"],
                 variables["params"]["base"]["conv2d"])
    stats = nnx_after["batch_stats"]["base"]["batch_normalization"]["moving_mean"]
    assert not np.array_equal(stats, variables["batch_stats"]["base"]["batch_normalization"]["moving_mean"])


def test_train_forward_draws_a_new_dropout_key_each_step_from_the_module():
    """Without dropout_key, each jitted step takes the next key of the module's dropout stream (NNX carries the
    stream's count out of nnx.jit/nnx.grad), so no two steps drop the same units."""
    model = Sequential([Flatten(), Dropout(0.5), Dense(1)], input_shape=(12, 12, 3))
    module = to_nnx(model, model.init(jax.random.key(0), X[:1]))
    forward = nnx.jit(lambda m, x: train_forward(m, x))
    first, second = forward(module, X), forward(module, X)
    assert not np.array_equal(first, second)


def test_activations_and_filter_patterns_through_as_linen():
    model, variables = model_and_variables()
    module = to_nnx(model, variables)
    layers = ["base/conv2d", "batch_normalization"]
    assert_trees(np.testing.assert_array_equal, minicnn.viz.activations(*as_linen(module), X, layers=layers),
                 minicnn.viz.activations(model, variables, X, layers=layers))
    kwargs = {"layer": "conv2d", "filters": [0, 3], "size": 12, "steps": 3}
    np.testing.assert_array_equal(minicnn.viz.filter_patterns(*as_linen(module), **kwargs),
                                  minicnn.viz.filter_patterns(model, variables, **kwargs))


@pytest.fixture(scope="module")
def fine_tuned():
    """EfficientNet-Lite0's ImageNet base (pooling="avg", 64x64) + a new Dense head, the base frozen
    (``conv_base.trainable = False``), two steps in NNX and two with minicnn's step."""
    base, base_variables, preprocess = minicnn.pretrained("efficientnet_lite0", include_top=False, pooling="avg",
                                                          input_shape=(64, 64, 3))
    head = Dense(1, activation="sigmoid")
    model = Sequential([base, head])
    x = preprocess(np.random.default_rng(1).uniform(0, 255, (4, 64, 64, 3)).astype(np.float32))
    # the variables composed as data: minicnn.init(model, ...) gives the same but compiles the random init of the
    # whole base first (20 s of CPU here) only to replace it
    variables = {"params": {"efficient_net_lite0": base_variables["params"],
                            "dense": head.init(jax.random.key(0), jnp.zeros((1, 1280)))["params"]},
                 "batch_stats": {"efficient_net_lite0": base_variables["batch_stats"]}}
    mask = trainable_mask(variables, "all", layers=["efficient_net_lite0"])
    module = to_nnx(model, variables)
    linen, current = as_linen(module)
    summary = minicnn.summary(linen, variables=current, print_fn=None)
    nnx_fit(module, mask, variables["params"], x, Y, steps=2)
    return {"model": model, "variables": variables, "x": x, "module": module, "summary": summary,
            "linen_after": linen_fit(model, variables, mask, x, Y, steps=2)}


def test_nnx_fine_tuning_of_a_pretrained_base(fine_tuned):
    model, variables, module = fine_tuned["model"], fine_tuned["variables"], fine_tuned["module"]
    assert fine_tuned["summary"] == minicnn.summary(model, variables=variables, print_fn=None)
    after = variables_of(module)
    for collection in ("params", "batch_stats"):  # frozen: every weight and moving statistic, bit for bit
        assert_trees(np.testing.assert_array_equal, after[collection]["efficient_net_lite0"],
                     variables[collection]["efficient_net_lite0"])
    assert not np.array_equal(after["params"]["dense"]["kernel"], variables["params"]["dense"]["kernel"])
    # the base's drop-connect runs in both (same keys); measured bit-identical on CPU
    assert_trees(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), after,
                 fine_tuned["linen_after"])


def test_grad_cam_of_the_nnx_model_is_the_linen_one(fine_tuned):
    heatmap = minicnn.viz.grad_cam(*as_linen(fine_tuned["module"]), fine_tuned["x"])
    assert heatmap.shape == (4, 2, 2) and float(heatmap.max()) == 1.0
    # measured identical on CPU (same program, variables equal to 1e-6 at most)
    np.testing.assert_allclose(heatmap, minicnn.viz.grad_cam(fine_tuned["model"], fine_tuned["linen_after"],
                                                             fine_tuned["x"]), atol=1e-5)


def test_mask_and_variable_errors_are_clear():
    model, variables = model_and_variables()
    with pytest.raises(ValueError, match=r"trainable mask entries that are no parameter: \['bsae'\]"):
        mask_filter({"bsae": False}, variables["params"])
    bad = jax.device_get(dict(variables))
    bad["params"]["dense"]["kernel"] = np.zeros((3, 1), np.float32)
    with pytest.raises(ValueError, match=r"to_nnx: params/dense/kernel has shape \(3, 1\), the model needs"):
        to_nnx(model, bad)
    del bad["params"]["dense"]
    with pytest.raises(ValueError, match=r"to_nnx: the variables lack params/dense/bias \(2 missing in all\)"):
        to_nnx(model, bad)
    bad["params"]["dense2"] = {"kernel": np.zeros((100, 1), np.float32)}
    with pytest.raises(ValueError, match="to_nnx: params/dense2/kernel is not a variable of the model"):
        to_nnx(model, bad)
