"""Parameter counts and the Keras-style model summary table."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# A trainable spec: None (all params trainable), a pytree of bools shaped like
# variables["params"], or a predicate on ("block5_conv1/kernel"-style path, leaf).
Trainable = None | Mapping | Callable[[str, Any], bool]

__all__ = ["count_params", "summary", "trainable_leaves", "path_str"]


def path_str(path) -> str:
    """A jax key path -> ``"vgg16/block5_conv1/kernel"``."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def trainable_leaves(params, trainable: Trainable = None):
    """A pytree of bools shaped like ``params``: which leaves train under ``trainable``."""
    if trainable is None:
        return jax.tree_util.tree_map(lambda _: True, params)
    if callable(trainable):
        return jax.tree_util.tree_map_with_path(lambda p, v: bool(trainable(path_str(p), v)), params)
    try:
        return jax.tree_util.tree_map(lambda _, m: bool(m), params, trainable)
    except ValueError as e:
        raise ValueError(f"trainable mask does not match the params' structure: {e}") from None


def _size(tree) -> int:
    return int(sum(np.prod(np.shape(x), dtype=np.int64) for x in jax.tree_util.tree_leaves(tree)))


def count_params(variables: Mapping, trainable: Trainable = None) -> tuple[int, int, int]:
    """``(total, trainable, non_trainable)`` scalar counts over all collections.

    As in Keras, batch-norm moving statistics count as non-trainable; ``trainable`` (mask or
    predicate) decides which ``params`` leaves train. Works on arrays or ``ShapeDtypeStruct``s.
    """
    params = variables.get("params", {})
    mask = trainable_leaves(params, trainable)
    n_trainable = int(sum(np.prod(np.shape(v), dtype=np.int64)
                          for v, m in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(mask))
                          if m))
    total = _size(variables)
    return total, n_trainable, total - n_trainable


def _shape_str(shape) -> str:
    return "(" + ", ".join(["None", *map(str, shape[1:])]) + ")"


def _layer_rows(model: nn.Module, variables, x, train: bool):
    """(name, type, output shape) of the model's direct children, in call order."""
    rows = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        mod = context.module
        if context.method_name == "__call__" and mod.path and len(mod.path) == 1:
            shape = out.shape if hasattr(out, "shape") else None
            rows.append((mod.path[0], type(mod).__name__, shape))
        return out

    with nn.intercept_methods(record):
        out = jax.eval_shape(lambda v, x: model.apply(v, x, train=train), variables, x)
    return rows, out


def summary(model: nn.Module, input_shape=None, trainable: Trainable = None, variables=None,
            print_fn: Callable[[str], None] | None = print, line_length: int = 78) -> str:
    """Print and return a Keras-style table: Layer (type), Output Shape, Param #, then totals.

    input_shape: (H, W, C) without the batch axis; defaults to the model's ``input_shape``.
    variables: the model's variables (arrays or shapes); built abstractly when None, so a
    summary of VGG16 with top costs no memory. ``trainable`` as in :func:`count_params`.
    """
    input_shape = input_shape or _declared_input_shape(model)
    if input_shape is None:
        raise ValueError(f"summary({type(model).__name__}) needs input_shape=(H, W, C)")
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    if variables is None:
        variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    rows, _ = _layer_rows(model, variables, x, train=False)

    table = [(name, f"{name} ({kind})", _shape_str(shape) if shape is not None else "?",
              sum(_size(variables[c].get(name, {})) for c in variables)) for name, kind, shape in rows]
    if not isinstance(model, _sequential_type()):
        table.insert(0, ("input_layer", "input_layer (InputLayer)", _shape_str((1, *input_shape)), 0))
    widths = (max(int(line_length * 0.45), max(len(row[1]) for row in table) + 2), int(line_length * 0.33))
    line_length = max(line_length, sum(widths) + 14)
    total, n_train, n_frozen = count_params(variables, trainable)
    name = model.name or _default_name(model)
    lines = [f'Model: "{name}"', "_" * line_length,
             f"{'Layer (type)':<{widths[0]}}{'Output Shape':<{widths[1]}}{'Param #':>{line_length - sum(widths)}}",
             "=" * line_length]
    for i, (_, label, shape, n) in enumerate(table):
        lines.append(f"{label:<{widths[0]}}{shape:<{widths[1]}}{n:>{line_length - sum(widths)},}")
        lines.append("=" * line_length if i == len(table) - 1 else "_" * line_length)
    lines += [f"Total params: {total:,}", f"Trainable params: {n_train:,}",
              f"Non-trainable params: {n_frozen:,}", "_" * line_length]
    text = "\n".join(lines)
    if print_fn is not None:
        print_fn(text)
    return text


def _declared_input_shape(model: nn.Module):
    """The model's ``input_shape``, or that of a Sequential's first layer (Keras' convention)."""
    shape = getattr(model, "input_shape", None)
    if shape is None and isinstance(model, _sequential_type()) and len(model.layers):
        shape = getattr(model.layers[0], "input_shape", None)
    return shape


def _sequential_type():
    from minicnn.layers import Sequential
    return Sequential


def _default_name(model: nn.Module) -> str:
    from minicnn.layers import keras_name
    return getattr(model, "arch", None) or keras_name(type(model).__name__)
