"""Save and load nested dicts of arrays with orbax-checkpoint, atomically.

A checkpoint is an orbax directory. ``save`` writes it next to its destination under a temporary
name and only then swaps it in, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["save", "load"]


def _to_numpy(tree, where="variables"):
    """Copy arrays to host NumPy (orbax then needs no sharding info); keep Python scalars."""
    if isinstance(tree, Mapping):
        for k in tree:
            if not isinstance(k, str):
                raise TypeError(f"save: {where} has a non-string key {k!r}; use nested dicts with str keys")
        return {k: _to_numpy(v, f"{where}/{k}") for k, v in tree.items()}
    if isinstance(tree, (bool, int, float)):
        return tree
    if hasattr(tree, "shape") and hasattr(tree, "dtype"):
        return np.asarray(tree)
    raise TypeError(f"save: {where} is a {type(tree).__name__}; expected a dict, an array or a scalar")


def _backup(path: Path) -> Path:
    return path.with_name(path.name + ".previous")


def save(variables: Mapping, path: str | os.PathLike) -> Path:
    """Write ``variables`` (nested dicts of arrays, ints, floats) to the directory ``path``.

    Replaces an existing checkpoint at ``path`` only once the new one is complete.
    """
    import orbax.checkpoint as ocp  # slow import: only when saving

    path = Path(path).absolute()
    tree = _to_numpy(variables)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with ocp.PyTreeCheckpointer() as ckpt:
            ckpt.save(tmp, tree)
        backup = _backup(path)
        if path.exists():
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(path, backup)  # directories cannot be replaced in one step: keep the old one
        os.replace(tmp, path)         # until the new one is in place (load falls back to it)
        shutil.rmtree(backup, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save`: nested dicts of NumPy arrays and Python scalars."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if not path.exists() and _backup(path).exists():  # a save was interrupted between its two renames
        path = _backup(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no minicnn checkpoint at {path} (expected a directory written by "
                                f"minicnn.weights.save)")
    with ocp.PyTreeCheckpointer() as ckpt:
        meta = ckpt.metadata(path)
        tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
        restore_args = _restore_args(tree)
        return ckpt.restore(path, restore_args=restore_args)


def _restore_args(meta):
    import orbax.checkpoint as ocp
    if isinstance(meta, Mapping):
        return {k: _restore_args(v) for k, v in meta.items()}
    if isinstance(meta, ocp.metadata.ScalarMetadata):  # Python ints and floats come back as such
        return ocp.RestoreArgs()
    return ocp.RestoreArgs(restore_type=np.ndarray)
