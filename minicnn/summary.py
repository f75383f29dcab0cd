"""Parameter counts and the Keras-style model summary table."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from minicnn import inspector
from minicnn.layers import Sequential, keras_name
from minicnn.masks import Mask, declared_input_shape, flat_mask, from_trainable_fields

__all__ = ["count_params", "summary"]


def _size(tree) -> int:
    return int(sum(np.prod(np.shape(x), dtype=np.int64) for x in jax.tree_util.tree_leaves(tree)))


def count_params(variables: Mapping, trainable: Mask = None) -> tuple[int, int, int]:
    """``(total, trainable, non_trainable)`` scalar counts over all collections.

    As in Keras, batch-norm moving statistics count as non-trainable; ``trainable`` (any
    :mod:`minicnn.masks` mask: None, a prefix bool tree, a predicate) decides which ``params``
    leaves train. Works on arrays or ``ShapeDtypeStruct``s.
    """
    params = traverse_util.flatten_dict(dict(variables.get("params", {})))
    flat = flat_mask(variables.get("params", {}), trainable)
    n_trainable = sum(int(np.prod(np.shape(v), dtype=np.int64)) for p, v in params.items() if flat[p])
    total = _size(variables)
    return total, n_trainable, total - n_trainable


def _shape_str(shape) -> str:
    return "(" + ", ".join(["None", *map(str, shape[1:])]) + ")"


def summary(model: nn.Module, input_shape=None, trainable: Mask = None, variables=None,
            print_fn: Callable[[str], None] | None = print, line_length: int = 78, show_index: bool = False,
            show_trainable: bool = False) -> str:
    """Print and return a Keras-style table: Layer (type), Output Shape, Param #, then totals.

    input_shape: (H, W, C) without the batch axis; defaults to the model's ``input_shape``.
    variables: the model's variables (arrays or shapes); built abstractly when None, so a
    summary of VGG16 with top costs no memory. ``trainable`` as in :func:`count_params`; None: what
    the layers' ``trainable`` fields say (:func:`minicnn.masks.from_trainable_fields`, Keras' counts).
    A trainer's mask over a nested base is ``trainer.trainable["vgg16"]`` for ``summary(conv_base, ...)``.
    ``show_trainable``: end each row with its trainable parameters, ``Y`` (all), ``N`` (none),
    ``"n of m"`` (a sub-model partly frozen) or ``-`` (no parameters); Keras prints the layer's
    ``trainable`` flag (Y/N) there, which cannot show a partly frozen sub-model.
    ``show_index``: start each row with the layer's Keras ``model.layers`` index (the rows are
    ``model.layers``: the InputLayer is 0 except in a Sequential), the index
    ``trainable_mask(from_index=...)`` takes.
    """
    input_shape = input_shape or declared_input_shape(model)
    if input_shape is None:
        raise ValueError(f"summary({type(model).__name__}) needs input_shape=(H, W, C)")
    if variables is None:
        variables = inspector.abstract_variables(model, tuple(input_shape))
    rows = [(i.path, i.kind.__name__, i.shape) for i in inspector.layer_infos(model, variables, tuple(input_shape))
            if "/" not in i.path]
    if trainable is None:
        trainable = from_trainable_fields(model, variables, tuple(input_shape))

    table = [(name, f"{name} ({kind})", _shape_str(shape) if shape is not None else "?",
              sum(_size(variables[c].get(name, {})) for c in variables)) for name, kind, shape in rows]
    if not isinstance(model, Sequential):
        table.insert(0, ("input_layer", "input_layer (InputLayer)", _shape_str((1, *input_shape)), 0))
    if show_index:
        table = [(name, f"{i:<5}{label}", shape, n) for i, (name, label, shape, n) in enumerate(table)]
    flags = _trainable_flags(variables, trainable, [row[0] for row in table]) if show_trainable else {}
    widths = (max(int(line_length * 0.45), max(len(row[1]) for row in table) + 2), int(line_length * 0.33))
    line_length = max(line_length, sum(widths) + 14)
    total, n_train, n_frozen = count_params(variables, trainable)
    name = model.name or _default_name(model)
    flag_width = max([len("Trainable"), *map(len, flags.values())]) if show_trainable else 0
    rule = line_length + (2 + flag_width if show_trainable else 0)
    lines = [f'Model: "{name}"', "_" * rule,
             f"{'#    ' if show_index else ''}{'Layer (type)':<{widths[0] - 5 * show_index}}"
             f"{'Output Shape':<{widths[1]}}{'Param #':>{line_length - sum(widths)}}"
             + (f"  {'Trainable':>{flag_width}}" if show_trainable else ""),
             "=" * rule]
    for i, (row_name, label, shape, n) in enumerate(table):
        flag = f"  {flags[row_name]:>{flag_width}}" if show_trainable else ""
        lines.append(f"{label:<{widths[0]}}{shape:<{widths[1]}}{n:>{line_length - sum(widths)},}{flag}")
        lines.append("=" * rule if i == len(table) - 1 else "_" * rule)
    lines += [f"Total params: {total:,}", f"Trainable params: {n_train:,}",
              f"Non-trainable params: {n_frozen:,}", "_" * rule]
    text = "\n".join(lines)
    if print_fn is not None:
        print_fn(text)
    return text


def _trainable_flags(variables: Mapping, trainable: Mask, names: list[str]) -> dict[str, str]:
    """``{row name: "Y" | "N" | "n of m" | "-"}``: how many of each top-level layer's params train."""
    params = variables.get("params", {})
    sizes = {p: int(np.prod(np.shape(v), dtype=np.int64)) for p, v in traverse_util.flatten_dict(dict(params)).items()}
    flat = flat_mask(params, trainable)
    flags = {}
    for name in names:
        total = sum(n for p, n in sizes.items() if p[0] == name)
        trains = sum(n for p, n in sizes.items() if p[0] == name and flat[p])
        flags[name] = "-" if total == 0 else "Y" if trains == total else "N" if trains == 0 else \
            f"{trains:,} of {total:,}"
    return flags


def _default_name(model: nn.Module) -> str:
    return getattr(model, "arch", None) or keras_name(type(model).__name__)
