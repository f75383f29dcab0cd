"""Trainable masks from layer names: Keras' ``layer.trainable`` loop in one call.

A mask is a pytree of Python bools shaped like ``variables["params"]``; ``True`` trains. It is
what :func:`minicnn.transfer.masked`, :func:`count_params`, :func:`minicnn.summary` and the
``Trainer`` take as ``trainable``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from minicnn.summary import _declared_input_shape, count_params, path_str

__all__ = ["trainable_mask", "layer_order", "count_params"]


def layer_order(model: nn.Module, variables: Mapping | None = None, input_shape=None) -> list[str]:
    """Every submodule's path (``"vgg16/block5_conv1"``) in the order the model calls it.

    The order comes from tracing ``model.apply`` once abstractly (no FLOPs, no memory), so it is
    the call order, not the alphabetical order of the params dict (``block10`` vs ``block2``,
    ``dense_1`` vs ``vgg16``). A parent comes before its children; a module called twice counts
    at its first call.

    input_shape: (H, W, C) without the batch axis; defaults to the model's ``input_shape``.
    variables: the model's variables (arrays or shapes); built abstractly when None.
    """
    shape = tuple(input_shape or _declared_input_shape(model) or ())
    if not shape:
        raise ValueError(f"layer_order({type(model).__name__}) needs input_shape=(H, W, C): the call "
                         "order is found by tracing the model on an input of that shape")
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    if variables is None:
        variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    order: dict[str, None] = {}

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and context.module.path:
            order.setdefault("/".join(context.module.path), None)  # on entry: parents first
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    return list(order)


def trainable_mask(variables: Mapping, trainable: str | bool | None = None, *,
                   from_layer: str | None = None, layers: Iterable[str] | None = None,
                   where: Callable[[str, Any], bool] | None = None,
                   model: nn.Module | None = None, input_shape=None,
                   order: Sequence[str] | None = None):
    """A pytree of bools over ``variables["params"]``: which parameters train.

    ``trainable`` (``"all"``/``True`` or ``"none"``/``False``) is the state of every parameter
    the selectors do not pick; the selected ones get the opposite. With no selector it defaults
    to ``"all"``, with one to ``"none"``, so the selectors name what trains:

    - ``from_layer="block5_conv1"``: that layer and every layer called after it (Keras'
      ``set_trainable`` loop of the fine-tuning lecture); needs the call order: pass ``model``
      (and ``input_shape`` unless the model declares one) or ``order`` (from :func:`layer_order`).
    - ``layers=["dense", "dense_1"]``: these layers, with everything inside them (a whole
      sub-model such as ``"vgg16"`` counts as one layer).
    - ``where=lambda path, leaf: ...``: leaves whose path (``"vgg16/block1_conv1/kernel"``)
      satisfies the predicate.

    Several selectors pick the union. ``trainable_mask(v, "all", layers=["vgg16"])`` freezes
    the conv base (Keras' ``conv_base.trainable = False``). A layer name is a path
    (``"vgg16/block5_conv1"``) or a single name that must appear once (``"block5_conv1"``).
    """
    params = _params(variables)
    selectors = from_layer is not None or layers is not None or where is not None
    default = _default_state(trainable, selectors)
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    owners = ["/".join(path_str(p).split("/")[:-1]) for p in paths]
    known = sorted({"/".join(o.split("/")[:k]) for o in owners if o
                    for k in range(1, o.count("/") + 2)})

    picked = [False] * len(paths)
    if layers is not None:
        if isinstance(layers, str):
            raise TypeError(f"layers must be a list of layer names, got the string {layers!r}")
        for name in layers:
            full = _resolve(name, known)
            picked = [s or _inside(o, full) for s, o in zip(picked, owners)]
    if from_layer is not None:
        picked = [s or a for s, a in zip(picked, _from(from_layer, owners, known, model, variables,
                                                         input_shape, order))]
    if where is not None:
        leaves = jax.tree_util.tree_leaves(params)
        picked = [s or bool(where(path_str(p), v)) for s, p, v in zip(picked, paths, leaves)]
    treedef = jax.tree_util.tree_structure(params)
    return jax.tree_util.tree_unflatten(treedef, [default != s for s in picked])


def _params(variables: Mapping):
    if not isinstance(variables, Mapping) or "params" not in variables:
        keys = list(variables) if isinstance(variables, Mapping) else type(variables).__name__
        raise ValueError(f'trainable_mask needs the model variables ({{"params": ...}}), got {keys}')
    return variables["params"]


def _default_state(trainable, selectors: bool) -> bool:
    if trainable is None:
        return not selectors
    if trainable in ("all", True):
        return True
    if trainable in ("none", False):
        return False
    raise ValueError(f'trainable must be "all", "none", True or False, got {trainable!r}')


def _inside(owner: str, layer: str) -> bool:
    return owner == layer or owner.startswith(layer + "/")


def _resolve(name: str, known: list[str]) -> str:
    """A layer name or path -> the one full path of the params dict it names."""
    if name in known:
        return name
    matches = [k for k in known if k.endswith("/" + name)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"layer name {name!r} is ambiguous: it matches {matches}; pass the full path")
    raise ValueError(f"no layer named {name!r}; the layers are: {known}")


def _from(name, owners, known, model, variables, input_shape, order) -> list[bool]:
    """Which leaves belong to layer ``name`` (any called layer, e.g. ``"block4_pool"``) or to a
    layer called after it."""
    if order is None:
        if model is None:
            raise ValueError(f"trainable_mask(from_layer={name!r}) needs the call order: pass model= "
                             "(and input_shape= unless the model declares one) or order=layer_order(...)")
        order = layer_order(model, variables, input_shape)
    layer = _resolve(name, list(order) if name not in known else known)  # also layers without params
    position = {"": -1} | {path: i for i, path in enumerate(order)}  # "": the model's own params
    missing = sorted({o for o in owners if o not in position} | ({layer} - position.keys()))
    if missing:
        raise ValueError(f"the call order does not contain layers {missing}; was it traced from this model?")
    start = position[layer]
    return [position[o] >= start for o in owners]

