"""The one mask type and the one freezing mechanism.

A *mask* says which parameters train. It is one of

- ``None``: everything trains;
- a tree of bools over ``variables["params"]`` where a bool may stand for a whole subtree (a *prefix*
  mask): ``{"vgg16": False}`` freezes the conv base; a layer the mask does not mention trains, as every
  Keras layer is trainable until set otherwise;
- a predicate ``fn(path, leaf) -> bool`` on ``"vgg16/block5_conv1/kernel"``-style paths.

Every consumer (:func:`minicnn.count_params`, :func:`minicnn.summary`, the ``Trainer``, :func:`freeze`)
expands it with :func:`flat_mask`, so a mask means the same thing everywhere. :func:`trainable_mask`
builds one from layer names in the model's call order (Keras' ``layer.trainable`` loop in one call).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from minicnn import inspector
from minicnn.layers import Sequential

__all__ = ["Mask", "path_str", "flat_mask", "expand", "split", "merge", "frozen_modules", "freeze", "labels",
           "check_frozen", "trainable_mask", "layer_order", "keras_layers", "from_trainable_fields"]

Mask = None | Mapping | bool | Callable[[str, Any], bool]
Path = tuple[str, ...]
TRAINABLE, FROZEN = "trainable", "frozen"


def path_str(path) -> str:
    """A jax key path or a tuple of names -> ``"vgg16/block5_conv1/kernel"``."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _is_bool(node) -> bool:
    return isinstance(node, (bool, np.bool_)) or (isinstance(node, np.ndarray) and node.shape == ()
                                                  and node.dtype == np.bool_)


def flat_mask(params, mask: Mask) -> dict[Path, bool]:
    """``{parameter path: trainable}`` for every leaf of ``params`` (arrays or shapes).

    A parameter the mask does not reach trains (Keras' default). Raises ValueError naming the mask
    entries that name no parameter (a misspelt layer would otherwise freeze nothing, silently); TypeError
    for a leaf that is not a bool (a ``jax.Array`` mask would be traced under ``jit``: masks are static,
    use Python bools).
    """
    leaves = traverse_util.flatten_dict(dict(params))
    if mask is None or _is_bool(mask):
        return {p: True if mask is None else bool(mask) for p in leaves}
    if callable(mask) and not isinstance(mask, Mapping):
        return {p: bool(mask(path_str(p), v)) for p, v in leaves.items()}
    if not isinstance(mask, Mapping):
        raise TypeError(f"a trainable mask is None, a bool, a dict of bools or a predicate; got "
                        f"{type(mask).__name__}")
    out, used = {}, set()
    for p in leaves:
        node, depth = mask, 0
        while isinstance(node, Mapping) and depth < len(p) and p[depth] in node:
            node, depth = node[p[depth]], depth + 1
        if isinstance(node, Mapping):
            used.update(p[:d] for d in range(1, depth + 1))
            out[p] = True
            continue
        if not _is_bool(node):
            raise TypeError(f"trainable mask leaves must be Python bools, got {type(node).__name__} at "
                            f"{path_str(p[:depth])}")
        used.add(p[:depth])
        out[p] = bool(node)
    mask_paths = traverse_util.flatten_dict(dict(mask), keep_empty_nodes=True)
    extra = sorted(path_str(m) for m in mask_paths if m not in used)
    if extra:
        raise ValueError(f"trainable mask entries that are no parameter: {extra[:5]}{' ...' if len(extra) > 5 else ''}"
                         f" (the parameters' layers: {sorted({path_str(p[:1]) for p in leaves})[:8]})")
    return out


def expand(params, mask: Mask):
    """The mask as a full tree of Python bools with exactly ``params``' structure."""
    flat = flat_mask(params, mask)
    return traverse_util.unflatten_dict(flat) if flat else {}


def split(params, flat: dict[Path, bool]):
    """``(trainable, frozen)`` nested dicts holding the leaves the mask marks True / False."""
    leaves = traverse_util.flatten_dict(dict(params))
    trainable = {p: v for p, v in leaves.items() if flat[p]}
    frozen = {p: v for p, v in leaves.items() if not flat[p]}
    return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge(trainable, frozen):
    """Inverse of :func:`split`."""
    leaves = traverse_util.flatten_dict(dict(trainable))
    leaves.update(traverse_util.flatten_dict(dict(frozen)))
    return traverse_util.unflatten_dict(leaves)


def frozen_modules(flat: dict[Path, bool]) -> frozenset[Path]:
    """Paths of the layers whose parameters are all frozen."""
    layers: dict[Path, bool] = {}
    for path, trains in flat.items():
        layers[path[:-1]] = layers.get(path[:-1], False) or trains
    return frozenset(p for p, trains in layers.items() if not trains)


def labels(tree, mask: Mask):
    """``"trainable"``/``"frozen"`` per leaf of ``tree`` (the params), for ``optax.transforms.partition``."""
    flat = flat_mask(tree, mask)
    return traverse_util.unflatten_dict({p: TRAINABLE if t else FROZEN for p, t in flat.items()})


def freeze(optimizer: optax.GradientTransformation, mask: Mask) -> optax.GradientTransformation:
    """``optimizer`` on the leaves ``mask`` marks trainable; frozen leaves get zero updates.

    ``optax.transforms.partition`` with ``optax.set_to_zero()`` for the frozen label: the optimizer's
    state (e.g. Adam's moments) holds no array for a frozen leaf, and weight decay or clipping inside
    ``optimizer`` never sees one. The ``Trainer`` builds its optimizer with this; use it when you drive
    optax yourself. A new phase (another mask) is a new ``freeze(...)`` and a fresh ``init``.
    """
    return optax.transforms.partition({TRAINABLE: optimizer, FROZEN: optax.set_to_zero()},
                                      lambda tree: labels(tree, mask))


def check_frozen(optimizer: optax.GradientTransformation, params, mask: Mask) -> None:
    """Raise if ``optimizer`` does not leave the frozen leaves of ``params`` alone.

    One update with non-zero gradients checks that (1) frozen leaves get exactly zero updates
    (no weight decay or transformation chained after the freeze), (2) trainable updates do not
    depend on frozen gradients (no global-norm clipping over all gradients, no freeze inside a
    chain), and (3) the optimizer state holds no array for a frozen leaf (no Adam moments for
    weights that never move). Costs one ``init`` and two ``update``s.
    """
    mask = expand(params, mask)
    frozen = {path_str(p) for p, m in jax.tree_util.tree_flatten_with_path(mask)[0] if not m}
    grads = jax.tree_util.tree_map(lambda p: jnp.full(jnp.shape(p), 0.5, jnp.float32), params)
    loud = jax.tree_util.tree_map(lambda g, m: g if m else g * 1e6, grads, mask)
    state = jax.jit(optimizer.init)(params)
    update = jax.jit(lambda g: optimizer.update(g, state, params)[0])  # one compile, two calls
    updates, updates_loud = update(grads), update(loud)

    for (path, u), m in zip(jax.tree_util.tree_flatten_with_path(updates)[0], jax.tree_util.tree_leaves(mask)):
        if not m and np.any(np.asarray(u) != 0):
            raise ValueError(f"frozen parameter {path_str(path)} would move: a transformation (e.g. weight "
                             "decay) acts on it after the freeze; wrap the whole optimizer instead: "
                             "freeze(optax.chain(..., optax.adamw(...)), mask)")
    for (path, u), v, m in zip(jax.tree_util.tree_flatten_with_path(updates)[0],
                               jax.tree_util.tree_leaves(updates_loud), jax.tree_util.tree_leaves(mask)):
        if m and not np.array_equal(np.asarray(u), np.asarray(v)):
            raise ValueError(f"the update of trainable parameter {path_str(path)} depends on frozen "
                             "gradients (e.g. clip_by_global_norm over all gradients); put the clipping "
                             "inside: freeze(optax.chain(optax.clip_by_global_norm(...), ...), mask)")
    stale = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]
             if any(f"/{path_str(p)}".endswith(f"/{f}") for f in frozen)]
    if stale:
        raise ValueError(f"the optimizer state holds {len(stale)} arrays for frozen parameters (e.g. "
                         f"{stale[0]}): the freeze sits after the optimizer; use freeze(optimizer, mask)")


# ------------------------------------------------------------------ masks from layer names
def layer_order(model: nn.Module, variables: Mapping | None = None, input_shape=None) -> list[str]:
    """Every submodule's path (``"vgg16/block5_conv1"``) in the order the model calls it.

    The order comes from tracing the model once abstractly (:func:`minicnn.inspector.layer_infos`),
    so it is the call order, not the alphabetical order of the params dict (``block10`` vs
    ``block2``, ``dense_1`` vs ``vgg16``). A parent comes before its children.

    input_shape: (H, W, C) without the batch axis; defaults to the model's ``input_shape``.
    variables: the model's variables (arrays or shapes); built abstractly when None.
    """
    shape = tuple(input_shape or declared_input_shape(model) or ())
    if not shape:
        raise ValueError(f"layer_order({type(model).__name__}) needs input_shape=(H, W, C): the call "
                         "order is found by tracing the model on an input of that shape")
    return [i.path for i in inspector.layer_infos(model, variables, shape)]


def keras_layers(model: nn.Module, variables: Mapping | None = None, input_shape=None) -> list[str]:
    """The model's layers as Keras' ``model.layers`` lists them, so ``keras_layers(...)[i]`` is the
    layer Keras calls ``model.layers[i]``.

    A model other than ``Sequential`` is a Keras functional model: ``"input_layer"`` (Keras'
    InputLayer) is index 0, then its own layers in call order (``InceptionV3``: 313 entries, as in
    Keras). A ``Sequential`` lists its children from index 0 (Keras' ``Sequential.layers`` omits
    the InputLayer) and a nested base is one entry (``"inception_v3"``), as in Keras.
    """
    return _keras_layers(model, layer_order(model, variables, input_shape))


def _keras_layers(model: nn.Module, order: Sequence[str]) -> list[str]:
    top = [path for path in order if "/" not in path]
    return top if isinstance(model, Sequential) else ["input_layer", *top]


def from_trainable_fields(model: nn.Module, variables: Mapping | None = None, input_shape=None) -> Mask:
    """The mask the modules' ``trainable`` fields say (Keras' ``layer.trainable``): None when every
    field is True (or absent), False when ``model.trainable`` is False, else a tree of bools over
    ``params`` (``Sequential([VGG16(trainable=False), Flatten(), Dense(1)])``: every ``vgg16`` leaf False).

    A frozen module freezes every parameter inside it, whatever its children's fields say (Keras:
    ``conv_base.trainable = False`` freezes all of ``conv_base``); ``model.trainable=False`` freezes
    everything. The modules are found by tracing the model once abstractly
    (:func:`minicnn.inspector.layer_infos`), so layers built inside ``@nn.compact`` count too.
    input_shape: (H, W, C); defaults to the model's ``input_shape``. variables: arrays or shapes;
    built abstractly when None.
    """
    if not getattr(model, "trainable", True):
        return False
    shape = input_shape if input_shape is not None else declared_input_shape(model)
    if shape is None:
        raise ValueError(f"from_trainable_fields({type(model).__name__}) needs input_shape=(H, W, C): the "
                         "layers are found by tracing the model on an input of that shape")
    shape = tuple(shape)
    if variables is None:
        variables = inspector.abstract_variables(model, shape)
    frozen = [tuple(i.path.split("/")) for i in inspector.layer_infos(model, variables, shape)
              if not getattr(i.module, "trainable", True)]
    if not frozen:
        return None
    return traverse_util.unflatten_dict({path: not any(path[:len(f)] == f for f in frozen)
                                         for path in traverse_util.flatten_dict(dict(variables.get("params", {})))})


def declared_input_shape(model: nn.Module):
    """The model's ``input_shape``, or that of a Sequential's first layer (Keras' convention)."""
    shape = getattr(model, "input_shape", None)
    if shape is None and isinstance(model, Sequential) and len(model.layers):
        shape = getattr(model.layers[0], "input_shape", None)
    return shape


def trainable_mask(variables: Mapping, trainable: str | bool | None = None, *,
                   from_layer: str | None = None, layers: Iterable[str] | None = None,
                   where: Callable[[str, Any], bool] | None = None,
                   model: nn.Module | None = None, input_shape=None,
                   order: Sequence[str] | None = None, from_index: int | None = None):
    """A tree of bools over ``variables["params"]``: which parameters train.

    ``trainable`` (``"all"``/``True`` or ``"none"``/``False``) is the state of every parameter
    the selectors do not pick; the selected ones get the opposite. With no selector it defaults
    to ``"all"``, with one to ``"none"``, so the selectors name what trains:

    - ``from_layer="block5_conv1"``: that layer and every layer called after it (Keras'
      ``set_trainable`` loop of the fine-tuning lecture); needs the call order: pass ``model``
      (and ``input_shape`` unless the model declares one) or ``order`` (from :func:`layer_order`).
    - ``from_index=249``: the layers at Keras index 249 and after, counted as Keras'
      ``model.layers`` counts them (:func:`keras_layers`: the InputLayer is index 0 of a functional
      model), so ``trainable_mask(v, from_index=249, model=InceptionV3(...), input_shape=...)`` is
      ``for layer in model.layers[:249]: layer.trainable = False``; needs ``model``.
    - ``layers=["dense", "dense_1"]``: these layers, with everything inside them (a whole
      sub-model such as ``"vgg16"`` counts as one layer).
    - ``where=lambda path, leaf: ...``: leaves whose path (``"vgg16/block1_conv1/kernel"``)
      satisfies the predicate.

    Several selectors pick the union. ``trainable_mask(v, "all", layers=["vgg16"])`` freezes
    the conv base (Keras' ``conv_base.trainable = False``), as does the prefix mask
    ``{"vgg16": False, ...}``. A layer name is a path (``"vgg16/block5_conv1"``) or a single name
    that must appear once (``"block5_conv1"``).
    """
    params = _params(variables)
    if from_index is not None:
        from_layer, where, order = _from_index(from_index, model, variables, input_shape, from_layer, where, order)
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


def _from_index(index, model, variables, input_shape, from_layer, where, order):
    """``from_index`` as ``(from_layer, where, order)``: the name of Keras' ``model.layers[index]``
    (or a selector that picks nothing when ``index`` is one past the last layer: ``layers[:n]``
    freezes all) and the call order it was found in."""
    if from_layer is not None or model is None or isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(f"trainable_mask(from_index={index!r}) needs an int index and model= (and input_shape= "
                         f"unless the model declares one), and no from_layer")
    order = layer_order(model, variables, input_shape) if order is None else list(order)
    names = _keras_layers(model, order)
    if not 0 <= index <= len(names):
        raise ValueError(f"from_index={index} is outside 0..{len(names)}: the model has {len(names)} Keras layers "
                         f"({names[0]} ... {names[-1]})")
    if index == len(names):
        return None, where if where is not None else (lambda path, leaf: False), order
    first = 0 if isinstance(model, Sequential) else 1  # a functional model's InputLayer has no weights
    return names[max(index, first)], where, order


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
