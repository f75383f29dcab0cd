"""The layer inspector: list a model's layers, capture or perturb a layer's output, stop the
forward pass at a layer, and take the logits before a softmax/sigmoid head.

This is minicnn's one routine for tracing a model's layers; ``summary``, ``masks``, the weight
porter, feature extraction and ``viz`` all use it. Everything works through
:func:`flax.linen.intercept_methods` on the modules' ``__call__``, so it sees through nesting
(``Sequential([VGG16(include_top=False), Flatten(), Dense(1)])``) without the model's
cooperation. A layer is named by its path, ``"vgg16/block5_conv3"``, or by any unambiguous path
suffix, ``"block5_conv3"``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import flax.linen as nn
import jax
import jax.numpy as jnp

from minicnn import layers as L
from minicnn import ops

__all__ = ["LayerInfo", "abstract_variables", "layer_infos", "resolve", "apply_capturing", "apply_logits",
           "forward_to", "squashed_head", "feature_layer"]

_POOLS = (L.MaxPooling2D, L.AveragePooling2D)


@dataclass(frozen=True)
class LayerInfo:
    """One called module: its path, output shape (None when the output is not an array), class,
    whether it contains no other layer, its ``activation`` field when it has one (``"softmax"`` on
    a classifier head), and the module itself (for its other fields, e.g. ``weights``)."""
    path: str
    shape: tuple[int, ...] | None
    kind: type
    leaf: bool
    activation: object = None
    module: nn.Module | None = field(default=None, compare=False, repr=False)


def _path(module: nn.Module) -> str:
    return "/".join(module.path)


def _calls(context) -> bool:
    return context.method_name == "__call__" and bool(context.module.path)


def _as_input(x):
    """An example input: an array, a ``ShapeDtypeStruct``, or an ``(H, W, C)`` shape (batch of 1)."""
    if isinstance(x, (tuple, list)) and all(isinstance(d, int) for d in x):
        return jax.ShapeDtypeStruct((1, *x), jnp.float32)
    return x


def abstract_variables(model: nn.Module, x):
    """The shapes of ``model.init``'s variables for inputs like ``x`` (no FLOPs, no memory, no I/O).

    x: (N, H, W, C) array or ``ShapeDtypeStruct``, or an ``(H, W, C)`` shape. Only shapes are
    computed, so the warning that a module's pretrained ``weights`` are not loaded by a plain
    ``init`` does not apply and is silenced here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), _as_input(x))


def layer_infos(model: nn.Module, variables: Mapping | None, x, train: bool = False) -> list[LayerInfo]:
    """Every sub-layer the forward pass calls, in call order (a parent before its children; a
    layer called twice counts at its first call). Shape-only: no FLOPs, no memory.

    x: (N, H, W, C) float32 example input (array or ``ShapeDtypeStruct``), or an ``(H, W, C)`` shape.
    variables: the model's variables (arrays or shapes); traced abstractly when None.
    """
    x = _as_input(x)
    if variables is None:
        variables = abstract_variables(model, x)
    entered, done = {}, {}

    def record(next_fun, args, kwargs, context):
        if not _calls(context):
            return next_fun(*args, **kwargs)
        m = context.module
        entered.setdefault(_path(m), (type(m), getattr(m, "activation", None), m))
        out = next_fun(*args, **kwargs)
        done.setdefault(_path(m), tuple(out.shape) if hasattr(out, "shape") else None)
        return out

    def run(v, x):
        with nn.intercept_methods(record):
            return model.apply(v, x, train=train)

    jax.eval_shape(run, variables, x)
    paths = list(entered)
    return [LayerInfo(p, done.get(p), kind, not any(q.startswith(p + "/") for q in paths), act, m)
            for p, (kind, act, m) in entered.items()]


def resolve(infos: Sequence[LayerInfo], layer: str) -> LayerInfo:
    """The layer named ``layer`` (a full path or an unambiguous suffix such as ``"block5_conv3"``)."""
    exact = [i for i in infos if i.path == layer]
    matches = exact or [i for i in infos if i.path.endswith("/" + layer)]
    if len(matches) == 1:
        return matches[0]
    valid = ", ".join(i.path for i in infos)
    if not matches:
        raise ValueError(f"unknown layer {layer!r}; the model's layers are: {valid}")
    raise ValueError(f"layer {layer!r} is ambiguous, it matches "
                     f"{', '.join(i.path for i in matches)}; give the full path")


def apply_capturing(model: nn.Module, variables: Mapping, x, paths: Sequence[str]):
    """``(model output, {path: that layer's output})`` from one inference forward pass."""
    wanted, got = set(paths), {}

    def capture(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if _calls(context) and _path(context.module) in wanted:
            got[_path(context.module)] = out
        return out

    with nn.intercept_methods(capture):
        y = model.apply(variables, x, train=False)
    return y, got


def apply_logits(model: nn.Module, variables: Mapping, x, head: str | None = None,
                 path: str | None = None, delta=None):
    """``(logits, activation)``: the inference forward pass with the last layer ``head`` run without
    its softmax/sigmoid, and ``delta`` added to the output of layer ``path`` (whose output is returned).

    Differentiating with respect to ``delta`` at ``delta = 0`` gives the gradient with respect to
    that layer's activation, the quantity Grad-CAM needs. ``head=None``: the model's own output;
    ``path=None``: nothing perturbed, activation None.
    """
    got = {}

    def perturb(next_fun, args, kwargs, context):
        if not _calls(context):
            return next_fun(*args, **kwargs)
        where = _path(context.module)
        if where == head:
            return _without_squash(context.module, args, kwargs)
        out = next_fun(*args, **kwargs)
        if where == path:
            got["a"] = out
            out = out + delta
        return out

    with nn.intercept_methods(perturb):
        y = model.apply(variables, x, train=False)
    return y, got.get("a")


class _Stop(Exception):
    def __init__(self, value):
        super().__init__("forward stopped at the requested layer")
        self.value = value


def forward_to(model: nn.Module, variables: Mapping, x, path: str, channel=None):
    """The output of layer ``path``, computing nothing after it (the forward pass is cut there).

    With ``channel`` (an int, may be traced) only that output channel is returned, (N, ..., 1);
    a Conv2D or Dense target then computes just that channel from its sliced kernel, so a
    per-filter objective on a conv layer costs one filter's work rather than the layer's.
    """

    def stop(next_fun, args, kwargs, context):
        if not (_calls(context) and _path(context.module) == path):
            return next_fun(*args, **kwargs)
        if channel is None:
            raise _Stop(next_fun(*args, **kwargs))
        raise _Stop(_one_channel(context.module, next_fun, args, kwargs, channel))

    try:
        with nn.intercept_methods(stop):
            model.apply(variables, x, train=False)
    except _Stop as s:
        return s.value
    raise ValueError(f"layer {path!r} was not called by the forward pass")


_SOFTMAXES = ("softmax", ops.softmax, jax.nn.softmax)


def _one_channel(module: nn.Module, next_fun, args, kwargs, c):
    """Channel ``c`` of a bound layer's output, (N, ..., 1). Conv2D and Dense (channels independent
    unless a softmax mixes them) run as one-filter copies on their sliced kernel and bias."""
    width = {L.Conv2D: "filters", L.Dense: "units"}.get(type(module))
    if width is None or module.activation in _SOFTMAXES:
        return jax.lax.dynamic_slice_in_dim(next_fun(*args, **kwargs), c, 1, axis=-1)
    params = jax.tree.map(lambda v: jax.lax.dynamic_slice_in_dim(v, c, 1, axis=-1),
                          dict(module.variables["params"]))
    # plain initialisers: Flax shape-checks them even when the variables are given
    bare = module.clone(parent=None, kernel_initializer=nn.initializers.zeros,
                        bias_initializer=nn.initializers.zeros, **{width: 1})
    return bare.apply({"params": params}, *args, **kwargs)


def _without_squash(module: nn.Module, args, kwargs):
    """Call a bound layer again as a copy without its softmax/sigmoid, on the same variables."""
    bare = module.clone(parent=None, activation=None)
    return bare.apply(dict(module.variables), *args, **kwargs)


def squashed_head(infos: Sequence[LayerInfo]) -> str | None:
    """The path of the last layer when it ends in a softmax or sigmoid (its ``activation`` field),
    None when the model already outputs logits. A squash applied outside any layer is not seen."""
    head = [i for i in infos if i.leaf][-1]
    squashes = ("softmax", "sigmoid", ops.softmax, ops.sigmoid, jax.nn.softmax, jax.nn.sigmoid)
    return head.path if head.activation in squashes else None


def feature_layer(infos: Sequence[LayerInfo]) -> LayerInfo:
    """Grad-CAM's default layer: the last feature map before the spatial pooling, i.e. the last
    layer with a 4-D output that is not a pooling layer (``block5_conv3`` in VGG16)."""
    maps = [i for i in infos if i.leaf and len(i.shape or ()) == 4 and not issubclass(i.kind, _POOLS)]
    if not maps:
        raise ValueError("the model has no layer with a 4-D (N, H, W, C) output to explain; layers: "
                         + ", ".join(f"{i.path} {i.shape}" for i in infos))
    return maps[-1]
