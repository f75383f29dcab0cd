"""Save and load nested dicts of arrays with orbax-checkpoint, atomically, checksummed, never over
data minicnn did not write.

A checkpoint is an orbax directory plus minicnn's marker file ``minicnn_checkpoint.json``: format
version, creation info, the tree's structure (variable paths, shapes, dtypes), the sha256 of every
file orbax wrote, and the caller's JSON ``metadata``. ``save`` writes the new checkpoint next to
its destination under a temporary name and only then swaps it in, so a crash mid-write leaves the
previous checkpoint intact. It overwrites only an empty directory or a checkpoint carrying the
marker whose files are all minicnn's; ``load`` verifies every recorded checksum first.
Directories written by minicnn 0.1 (no marker) still load, unverified, and are never overwritten.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["save", "load", "read_marker", "is_checkpoint", "MARKER"]

MARKER = "minicnn_checkpoint.json"
FORMAT = "minicnn-checkpoint"
VERSION = 1
_ORBAX_FILES = ("_METADATA", "_CHECKPOINT_METADATA")  # what orbax writes first: a minicnn 0.1 checkpoint


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


def structure(tree, prefix: str = "") -> dict:
    """``{"params/dense/kernel": {"shape": [3, 4], "dtype": "float32"}, "step": {"type": "int"}}``
    for a tree of NumPy arrays and Python scalars (``/``-joined paths)."""
    out = {}
    for key, value in tree.items():
        where = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(structure(value, where + "/"))
        elif isinstance(value, np.ndarray):
            out[where] = {"shape": list(value.shape), "dtype": str(value.dtype)}
        else:
            out[where] = {"type": type(value).__name__}
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _files(directory: Path) -> list[str]:
    """Every regular file under ``directory`` (relative, ``/``-separated, sorted), the marker excluded."""
    names = (p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    return sorted(name for name in names if name != MARKER)


def _write_marker(directory: Path, tree: dict, metadata: Mapping | None) -> None:
    from minicnn.version import __version__

    marker = {"format": FORMAT, "version": VERSION, "minicnn": __version__,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "structure": structure(tree),
              "files": {name: {"size": (directory / name).stat().st_size, "sha256": _sha256(directory / name)}
                        for name in _files(directory)},
              "metadata": dict(metadata or {})}
    (directory / MARKER).write_text(json.dumps(marker, indent=1))


def _resolve(path: str | os.PathLike) -> Path:
    """``path``, or its backup when a save was interrupted between its two renames."""
    path = Path(path).absolute()
    return _backup(path) if not path.exists() and _backup(path).exists() else path


def read_marker(path: str | os.PathLike) -> dict | None:
    """The marker of the checkpoint directory ``path`` (or of the checkpoint :func:`load` falls
    back to); None for a directory without one."""
    path = _resolve(path)
    try:
        marker = json.loads((path / MARKER).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ValueError(f"checkpoint {path} is damaged: {MARKER} cannot be read ({e})") from None
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} is damaged: {MARKER} is not a minicnn checkpoint marker")
    if marker.get("version", 0) > VERSION:
        raise ValueError(f"checkpoint {path} has format version {marker['version']}, written by a newer "
                         f"minicnn; this one reads up to {VERSION}: upgrade minicnn")
    return marker


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory :func:`load` can read (marker, or minicnn 0.1's orbax files)."""
    path = Path(path)
    return path.is_dir() and ((path / MARKER).is_file() or all((path / f).is_file() for f in _ORBAX_FILES))


def _refusal(path: Path) -> str | None:
    """Why ``save`` must not replace ``path``; None when it is absent, empty, or wholly minicnn's."""
    if not os.path.lexists(path):
        return None
    if not path.is_dir():
        return "it is a file, not a checkpoint directory"
    if not any(path.iterdir()):
        return None
    marker = read_marker(path) if (path / MARKER).is_file() else None
    if marker is None:
        return f"it is not a minicnn checkpoint (no {MARKER}) and not empty"
    foreign = sorted(set(_files(path)) - set(marker["files"]))
    if foreign:
        return f"{foreign[0]} in it was not written by minicnn"
    return None


def _check_replaceable(path: Path) -> None:
    reason = _refusal(path)
    if reason:
        raise FileExistsError(f"refusing to overwrite {path}: {reason}. Save to a new path, or move or "
                              f"delete it yourself")


def _remove_own(path: Path) -> None:
    """Delete a checkpoint (or a link to one) that :func:`_refusal` allows replacing."""
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        _check_replaceable(path)
        shutil.rmtree(path)


def _backup(path: Path) -> Path:
    return path.with_name(path.name + ".previous")


def save(variables: Mapping, path: str | os.PathLike, metadata: Mapping | None = None) -> Path:
    """Write ``variables`` (nested dicts of arrays, ints, floats) to the directory ``path``, with
    ``metadata`` (JSON-serialisable) in its marker file.

    Replaces an existing checkpoint at ``path`` only once the new one is complete, and only if it
    is minicnn's (or an empty directory): anything else raises :class:`FileExistsError`.
    """
    import orbax.checkpoint as ocp  # slow import: only when saving

    path = Path(path).absolute()
    tree = _to_numpy(variables)
    backup = _backup(path)
    _check_replaceable(path)
    _check_replaceable(backup)
    json.dumps(dict(metadata or {}))  # not serialisable: fail before writing anything
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with ocp.PyTreeCheckpointer() as ckpt:
            ckpt.save(tmp, tree)
        _write_marker(tmp, tree, metadata)
        if os.path.lexists(path):
            _remove_own(backup)
            os.replace(path, backup)  # directories cannot be replaced in one step: keep the old one
        os.replace(tmp, path)         # until the new one is in place (load falls back to it)
        _remove_own(backup)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _verify(path: Path, marker: Mapping) -> None:
    """Raise naming the first file of ``path`` that is missing or differs from its recorded sha256."""
    for name, recorded in marker["files"].items():
        file = path / name
        if not file.is_file():
            problem = "is missing"
        elif file.stat().st_size != recorded["size"]:
            problem = f"has {file.stat().st_size} bytes, {recorded['size']} were written"
        else:
            digest = _sha256(file)
            problem = None if digest == recorded["sha256"] else \
                f"has sha256 {digest}, {recorded['sha256']} was written"
        if problem:
            raise ValueError(f"checkpoint {path} is damaged: {name} {problem}. Restore it from a backup "
                             f"or save it again")


def load(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save`: nested dicts of NumPy arrays and Python scalars.

    Every file's checksum is verified first (a damaged file is an error naming it).
    """
    import orbax.checkpoint as ocp

    path = _resolve(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no minicnn checkpoint at {path} (expected a directory written by "
                                f"minicnn.weights.save)")
    if not is_checkpoint(path):
        raise ValueError(f"{path} is not a minicnn checkpoint (no {MARKER}); expected a directory "
                         f"written by minicnn.weights.save")
    marker = read_marker(path)
    if marker is not None:
        _verify(path, marker)
    with ocp.PyTreeCheckpointer() as ckpt:
        meta = ckpt.metadata(path)
        tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
        restored = ckpt.restore(path, restore_args=_restore_args(tree))
    if marker is not None and structure(restored) != marker["structure"]:
        raise ValueError(f"checkpoint {path} is damaged: its arrays do not match the structure in {MARKER}")
    return restored


def _restore_args(meta):
    import orbax.checkpoint as ocp
    if isinstance(meta, Mapping):
        return {k: _restore_args(v) for k, v in meta.items()}
    if isinstance(meta, ocp.metadata.ScalarMetadata):  # Python ints and floats come back as such
        return ocp.RestoreArgs()
    return ocp.RestoreArgs(restore_type=np.ndarray)
