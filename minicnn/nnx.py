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
    y = minicnn.nnx.train_forward(module, x, mask)               # the forward pass of a training step

Everything else minicnn offers (summary, feature extraction, Grad-CAM, activations, filter patterns) takes
``*as_linen(module)``, the Linen model and its current variables.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx, traverse_util
from flax.nnx import bridge
from flax.nnx.bridge import variables as bridge_variables

from minicnn import inspector, masks
from minicnn.train.step import apply_model

__all__ = ["as_linen", "mask_filter", "to_nnx", "train_forward", "variables_of"]

_COLLECTIONS = {"params": nnx.Param, "batch_stats": nnx.BatchStat}


def to_nnx(model: nn.Module, variables: Mapping, seed: int = 0) -> bridge.ToNNX:
    """``model`` with ``variables`` as an NNX module; ``module(x, train=False)`` equals ``model.apply(variables, x)``.

    variables: ``{"params": ..., ["batch_stats": ...]}`` (e.g. from :func:`minicnn.pretrained` or
    :func:`minicnn.init`), exactly the model's variables (checked leaf by leaf against the shapes ``model.init``
    gives, which are only traced: nothing is compiled or run); ``seed`` keys the module's ``dropout`` stream.
    """
    module = bridge.ToNNX(model, rngs=nnx.Rngs(seed, dropout=seed))
    expected = inspector.abstract_variables(model, _example_input(model))
    # what ToNNX's own lazy init stores: one attribute per top-level name, nnx.Param / nnx.BatchStat leaves
    for name, value in bridge_variables.linen_vars_to_nnx_attrs(_checked(variables, expected)).items():
        setattr(module, name, nnx.data(value))
    return module


def _example_input(model: nn.Module) -> jax.ShapeDtypeStruct:
    """An input of the size the variables were made for (a dense head depends on it): the model's declared
    ``input_shape``."""
    declared = masks.declared_input_shape(model)
    if declared is None:
        raise ValueError(f"to_nnx({type(model).__name__}): the model must declare input_shape=(H, W, C) "
                         "(its variables fix it: a dense head depends on the input size)")
    return jax.ShapeDtypeStruct((1, *declared), jnp.float32)


def _checked(variables: Mapping, expected: Mapping) -> dict:
    """``variables`` as nested dicts of arrays in the dtypes of ``expected`` (the model's variable shapes);
    ValueError naming the first variable that is unknown, missing or of another shape."""
    have = traverse_util.flatten_dict(dict(variables))
    want = traverse_util.flatten_dict(dict(expected))
    for path in have:
        if path not in want:
            raise ValueError(f"to_nnx: {'/'.join(map(str, path))} is not a variable of the model")
        if jnp.shape(have[path]) != want[path].shape:
            raise ValueError(f"to_nnx: {'/'.join(map(str, path))} has shape {jnp.shape(have[path])}, "
                             f"the model needs {want[path].shape}")
    missing = [path for path in want if path not in have]
    if missing:
        raise ValueError(f"to_nnx: the variables lack {'/'.join(map(str, missing[0]))} "
                         f"({len(missing)} missing in all)")
    return traverse_util.unflatten_dict({p: jnp.asarray(have[p], want[p].dtype) for p in want})


def variables_of(module: bridge.ToNNX) -> dict:
    """The module's current ``{"params", "batch_stats"}`` as the nested dicts Linen and minicnn use."""
    out = {}
    for collection, kind in _COLLECTIONS.items():
        tree = nnx.to_pure_dict(nnx.state(module, kind))
        if tree:
            out[collection] = tree
    return out


def as_linen(module: bridge.ToNNX) -> tuple[nn.Module, dict]:
    """``(Linen model, variables)`` of a :func:`to_nnx` module: what ``minicnn.summary``,
    ``extract_features``, ``viz.grad_cam``, ``viz.activations`` and ``viz.filter_patterns`` take, as
    ``viz.grad_cam(*as_linen(module), images)``.

    Those functions keep their one ``(model, variables, ...)`` signature rather than also accepting an
    ``nnx.Module``: a module carries its variables, so accepting one would shift every later positional
    argument (``grad_cam(module, images)``) and give each entry point two signatures; this one conversion,
    which copies no array, is the whole NNX path, and the result is the Linen result by construction.
    """
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


def train_forward(module: bridge.ToNNX, x, mask: masks.Mask = None, *, dropout_key=None):
    """The module's output in training mode, as minicnn's train step computes it (``train.step.apply_model``):
    BatchNormalization layers whose parameters ``mask`` freezes run in inference mode (Keras'
    ``layer.trainable = False``), the others normalise with the batch and their updated moving statistics
    are written back into the module; dropout is keyed by ``dropout_key`` (default: the module's ``dropout``
    stream). Use it inside ``nnx.grad``/``nnx.jit``.

    ``module(x, train=True, mutable=["batch_stats"])``, the bridge's own call, would instead update the
    statistics of frozen layers too, which Keras and minicnn do not.
    x: (N, H, W, C) float32; returns the model's output.
    """
    model, variables = as_linen(module)
    flat = masks.flat_mask(variables["params"], mask)
    if dropout_key is None:
        dropout_key = module.to_nnx__rngs.dropout()
    y, batch_stats = apply_model(model, variables["params"], variables.get("batch_stats", {}), x, train=True,
                                 frozen=masks.frozen_modules(flat), rngs={"dropout": dropout_key})
    if batch_stats:
        state = nnx.state(module, nnx.BatchStat)
        nnx.replace_by_pure_dict(state, batch_stats)
        nnx.update(module, state)
    return y
