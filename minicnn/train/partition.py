"""Trainable/frozen partitions of a parameter tree.

A *mask* says which parameters train: a pytree of bools with the structure of ``params``, where a
bool may also stand for a whole subtree (``{"vgg16": False, "dense": True, "dense_1": True}``).
``None`` means everything trains.
"""

from __future__ import annotations

from collections.abc import Mapping

from flax import traverse_util

__all__ = ["flat_mask", "split", "merge", "frozen_modules"]

Path = tuple[str, ...]


def _lookup(mask, path: Path):
    node = mask
    for depth, key in enumerate(path):
        if isinstance(node, bool) or (hasattr(node, "dtype") and node.shape == ()):
            break
        if not isinstance(node, Mapping) or key not in node:
            raise ValueError(f"trainable mask has no entry for parameter {'/'.join(path)} "
                             f"(missing at {'/'.join(path[:depth + 1])}); expected a bool for every "
                             f"parameter or for one of its enclosing layers")
        node = node[key]
    if isinstance(node, Mapping):
        raise ValueError(f"trainable mask entry {'/'.join(path)} is a dict, expected a bool")
    return bool(node)


def flat_mask(params, mask) -> dict[Path, bool]:
    """``{parameter path: trainable}`` for every leaf of ``params``."""
    paths = traverse_util.flatten_dict(params).keys()
    if mask is None:
        return {p: True for p in paths}
    return {p: _lookup(mask, p) for p in paths}


def split(params, flat: dict[Path, bool]):
    """``(trainable, frozen)`` nested dicts holding the leaves the mask marks True / False."""
    leaves = traverse_util.flatten_dict(params)
    trainable = {p: v for p, v in leaves.items() if flat[p]}
    frozen = {p: v for p, v in leaves.items() if not flat[p]}
    return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge(trainable, frozen):
    """Inverse of :func:`split`."""
    leaves = traverse_util.flatten_dict(trainable)
    leaves.update(traverse_util.flatten_dict(frozen))
    return traverse_util.unflatten_dict(leaves)


def frozen_modules(flat: dict[Path, bool]) -> frozenset[Path]:
    """Paths of the layers whose parameters are all frozen."""
    layers: dict[Path, bool] = {}
    for path, trains in flat.items():
        layers[path[:-1]] = layers.get(path[:-1], False) or trains
    return frozenset(p for p, trains in layers.items() if not trains)
