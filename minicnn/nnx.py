"""minicnn models as Flax NNX modules, and minicnn masks as NNX filters.

minicnn's models are Linen modules; this module hands them to an NNX user through Flax's own bridge
(``flax.nnx.bridge.ToNNX``) rather than a second implementation of every architecture: one definition of each
model stays the one tested against Keras, and the NNX module computes exactly what the Linen one does (the
bridge calls the same ``apply``). Parameters become ``nnx.Param``, BatchNormalization statistics
``nnx.BatchStat``, at the Linen paths (``vgg16/block5_conv1/kernel``)::

    model, variables, preprocess = minicnn.pretrained("vgg16", include_top=False)
    module = minicnn.nnx.to_nnx(model, variables)                 # an nnx.Module
    trainable = minicnn.nnx.mask_filter(mask, variables["params"])  # any minicnn mask
    optimizer = nnx.Optimizer(module, optax.rmsprop(1e-5), wrt=trainable)

Everything else minicnn offers (summary, feature extraction, Grad-CAM, activations, filter patterns) takes
``as_linen(module)``, the Linen model and its current variables.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import bridge

from minicnn import masks

__all__ = ["to_nnx", "as_linen", "mask_filter", "variables_of"]

_COLLECTIONS = {"params": nnx.Param, "batch_stats": nnx.BatchStat}


def to_nnx(model: nn.Module, variables: Mapping, seed: int = 0) -> bridge.ToNNX:
    """``model`` with ``variables`` as an NNX module; ``module(x, train=False)`` equals ``model.apply(variables, x)``.

    variables: ``{"params": ..., ["batch_stats": ...]}`` (e.g. from :func:`minicnn.pretrained` or
    :func:`minicnn.init`); ``seed`` keys the module's ``dropout`` stream.
    """
    module = bridge.ToNNX(model, rngs=nnx.Rngs(seed, dropout=seed))
    shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.asarray(a).dtype),
                                    dict(variables))
    example = _example_input(model, shapes)
    with warnings.catch_warnings():  # "init gives random weights": they are replaced right below
        warnings.simplefilter("ignore", UserWarning)
        # jitted: an eager init dispatches op by op (EfficientNet-Lite0: 7.6 s instead of 20.7 s)
        nnx.jit(lambda m, x: bridge.lazy_init(m, x, train=False))(module, example)
    _assign(module, variables)
    return module


def _example_input(model: nn.Module, shapes) -> jax.Array:
    """An input of the size the variables were made for: the first kernel gives the channels; dense heads need
    the model's declared ``input_shape``."""
    declared = masks.declared_input_shape(model)
    if declared is None:
        raise ValueError(f"to_nnx({type(model).__name__}): the model must declare input_shape=(H, W, C) "
                         "(its variables fix it: a dense head depends on the input size)")
    return jnp.zeros((1, *declared), jnp.float32)


def _assign(module: bridge.ToNNX, variables: Mapping) -> None:
    """Put ``variables`` into the module's state, each leaf checked against the variable it replaces."""
    state = nnx.state(module)
    pure = nnx.to_pure_dict(state)
    for collection, tree in variables.items():
        for path, value in jax.tree_util.tree_flatten_with_path(dict(tree))[0]:
            keys = tuple(str(getattr(k, "key", k)) for k in path)
            node = pure
            for k in keys[:-1]:
                node = node.get(k, {}) if isinstance(node, dict) else {}
            if not isinstance(node, dict) or keys[-1] not in node:
                raise ValueError(f"to_nnx: {collection}/{'/'.join(keys)} is not a variable of the model")
            if jnp.shape(node[keys[-1]]) != jnp.shape(value):
                raise ValueError(f"to_nnx: {collection}/{'/'.join(keys)} has shape {jnp.shape(value)}, "
                                 f"the model needs {jnp.shape(node[keys[-1]])}")
            node[keys[-1]] = jnp.asarray(value, jnp.asarray(node[keys[-1]]).dtype)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)


def variables_of(module: bridge.ToNNX) -> dict:
    """The module's current ``{"params", "batch_stats"}`` as the nested dicts Linen and minicnn use."""
    out = {}
    for collection, kind in _COLLECTIONS.items():
        state = nnx.state(module, kind)
        tree = nnx.to_pure_dict(state)
        if tree:
            out[collection] = tree
    return out


def as_linen(module: bridge.ToNNX) -> tuple[nn.Module, dict]:
    """``(Linen model, variables)`` of a :func:`to_nnx` module: what ``minicnn.summary``,
    ``extract_features``, ``viz.grad_cam``, ``viz.activations`` and ``viz.filter_patterns`` take."""
    return module.to_nnx__module, variables_of(module)


def mask_filter(mask: masks.Mask, params):
    """A minicnn mask (any :mod:`minicnn.masks` mask) over ``params`` (the Linen params tree, e.g.
    ``variables["params"]``) as an NNX filter selecting the trainable ``nnx.Param`` leaves, for
    ``nnx.Optimizer(module, tx, wrt=...)`` and ``nnx.DiffState(0, ...)``. The mask is expanded once, by
    :func:`minicnn.masks.flat_mask`, so it means (and fails) exactly as everywhere else in minicnn."""
    flat = masks.flat_mask(params, mask)

    def trainable(path, value) -> bool:
        return isinstance(value, nnx.Param) and flat.get(tuple(str(p) for p in path), False)

    return trainable
