"""Save and load nested dicts of arrays with orbax-checkpoint, atomically, checksummed, never over
data minicnn did not write.

A checkpoint is an orbax directory plus minicnn's marker file ``minicnn_checkpoint.json``: format
version, creation info, the tree's structure (variable paths, shapes, dtypes), the sha256 of every
file orbax wrote, and the caller's JSON ``metadata``. ``save`` writes the new checkpoint next to
its destination under a temporary name and only then swaps it in, so a crash mid-write leaves the
previous checkpoint intact. It overwrites only an empty directory or a checkpoint carrying the
marker whose files are all minicnn's; ``load`` verifies every recorded checksum first.
Directories written by minicnn 0.1 (no marker) still load, unverified, and are never overwritten.

A *step root* (the directory of :class:`Manager`, through orbax's CheckpointManager)
carries a marker too (``"layout": "steps"``, no files of its own): its entries are numbered step
directories, each a checkpoint sealed with its own marker (its tree in the item folder the marker names),
and the steps being written (``pending``). :func:`open_root` makes a directory a step root only when it
is absent or empty, and reopens one only when every entry in it is minicnn's.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

__all__ = ["save", "load", "read_marker", "is_checkpoint", "seal", "Manager", "resolve", "open_root",
           "set_pending", "sealed_steps", "is_root", "MARKER"]

MARKER = "minicnn_checkpoint.json"
FORMAT = "minicnn-checkpoint"
VERSION = 1
_ORBAX_FILES = ("_METADATA", "_CHECKPOINT_METADATA")  # what orbax writes first: a minicnn 0.1 checkpoint
ITEM = "state"  # the orbax item holding a step's tree


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


def _new_marker(**fields) -> dict:
    from minicnn.version import __version__

    return {"format": FORMAT, "version": VERSION, "minicnn": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **fields}


def _write_json(path: Path, value) -> None:
    """Write ``path`` whole or not at all (a reader never sees half a marker)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def seal(directory: str | os.PathLike, tree: dict, metadata: Mapping | None, **fields) -> None:
    """Write the marker of the finished checkpoint ``directory``: the structure of ``tree`` (NumPy
    arrays and Python scalars), the size and sha256 of every file in it, ``metadata`` and ``fields``
    (a step's: ``item``, the folder holding the tree; ``metric``, its monitored value)."""
    directory = Path(directory)
    files = {name: {"size": (directory / name).stat().st_size, "sha256": _sha256(directory / name)}
             for name in _files(directory)}
    _write_json(directory / MARKER, _new_marker(structure=structure(tree), files=files,
                                                metadata=dict(metadata or {}), **fields))


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
    if not isinstance(marker, dict) or marker.get("format") != FORMAT or not isinstance(marker.get("files"), dict):
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
    if is_root(path):
        return "it holds a checkpoint manager's numbered steps (ModelCheckpoint with max_to_keep or keep_best)"
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


def _this_process_only(ocp):
    """orbax's options for a save or load by this process alone: the tree is host NumPy, so in a
    multi-process run (jax.distributed) the one process that writes (process 0) needs no barrier
    with the others, which would otherwise wait for it forever."""
    import jax
    return ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                              active_processes={jax.process_index()})


def _checkpointer(ocp):
    """A PyTree checkpointer for this process alone (see :func:`_this_process_only`)."""
    local = _this_process_only(ocp)
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=local), multiprocessing_options=local)


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
        with _checkpointer(ocp) as ckpt:
            ckpt.save(tmp, tree)
        seal(tmp, tree, metadata)
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
    if marker is not None and is_root(path):
        raise ValueError(f"{path} holds a checkpoint manager's numbered steps ({', '.join(map(str, sealed_steps(path)))}"
                         f"); load one of them: {path / 'STEP'}, or Trainer.load/minicnn.load_model({str(path)!r}, "
                         f"step=...)")
    if marker is not None:
        if marker.get("item") not in (None, ITEM):
            raise ValueError(f"checkpoint {path} is damaged: {MARKER} names the folder {marker['item']!r}")
        _verify(path, marker)
    tree_dir = path / ITEM if marker is not None and marker.get("item") else path
    with _checkpointer(ocp) as ckpt:
        meta = ckpt.metadata(tree_dir)
        tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
        restored = ckpt.restore(tree_dir, restore_args=_restore_args(tree))
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


# ------------------------------------------------------------------ step roots
_STEP = re.compile(r"(\d+)")
_ORBAX_TMP = re.compile(r"(\d+)\.orbax-checkpoint-tmp.*")  # orbax writes step N there, then renames it to N
_MARKER_PART = re.compile(re.escape(f".{MARKER}.") + r"[0-9a-f]{8}\.part")  # _write_json's, left by a crash


def is_root(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a step root (a marker with ``"layout": "steps"``)."""
    marker = read_marker(path) if (Path(path) / MARKER).is_file() else None
    return marker is not None and marker.get("layout") == "steps"


def _root_marker(root: Path) -> dict:
    marker = read_marker(root)
    if marker is None or marker.get("layout") != "steps":
        raise ValueError(f"{root} is not a checkpoint manager's directory (no {MARKER} with numbered steps)")
    return marker


def sealed_steps(root: str | os.PathLike) -> list[int]:
    """The steps of ``root`` whose directory carries its marker (finished and checksummed), ascending."""
    root = Path(root)
    return sorted(int(p.name) for p in root.iterdir()
                  if _STEP.fullmatch(p.name) and p.is_dir() and (p / MARKER).is_file())


def _foreign_entry(root: Path, name: str, pending: set[int]) -> str | None:
    """Why the entry ``name`` of the step root ``root`` is not minicnn's; None when it is."""
    path = root / name
    step = _STEP.fullmatch(name) or _ORBAX_TMP.fullmatch(name)
    if name == MARKER or _MARKER_PART.fullmatch(name) and path.is_file():
        return None
    if step is None or path.is_symlink() or not path.is_dir():
        return f"{name} in it was not written by minicnn"
    if int(step.group(1)) in pending:
        return None  # a save of ours that was interrupted: ours to remove
    if name != step.group(1) or not (path / MARKER).is_file():
        return f"{name} in it is not a checkpoint minicnn finished (no {MARKER})"
    foreign = sorted(set(_files(path)) - set(read_marker(path)["files"]))
    return f"{name}/{foreign[0]} in it was not written by minicnn" if foreign else None


def open_root(root: str | os.PathLike, settings: Mapping) -> Path:
    """Make ``root`` a step root (when it is absent or an empty directory) or reopen one, and return it.

    Reopening removes the leftovers of saves that were interrupted (pending steps) and checks that
    every other entry is a step minicnn sealed, with no file added since: anything else raises
    :class:`FileExistsError` naming it, and nothing is written or removed. ``settings`` (JSON) are
    recorded in the marker's metadata (the latest opening's)."""
    root = Path(root).absolute()
    reason = None
    if os.path.lexists(root) and not root.is_dir():
        reason = "it is a file, not a directory"
    elif root.is_dir() and any(root.iterdir()):
        if not is_root(root):
            reason = _refusal(root) or "it is a single minicnn checkpoint, not a checkpoint manager's directory"
        else:
            pending = set(_root_marker(root).get("pending", []))
            reason = next(filter(None, (_foreign_entry(root, p.name, pending) for p in sorted(root.iterdir()))), None)
    if reason:
        raise FileExistsError(f"refusing to write checkpoints into {root}: {reason}. Choose a new directory, or "
                              f"move or delete it yourself")
    root.mkdir(parents=True, exist_ok=True)
    for p in root.iterdir():  # what is left of interrupted saves of ours (checked above)
        if _MARKER_PART.fullmatch(p.name):
            p.unlink()
        elif p.name != MARKER and not (p / MARKER).is_file():
            shutil.rmtree(p)
    _write_json(root / MARKER, _new_marker(layout="steps", files={}, pending=[], metadata=dict(settings)))
    return root


def set_pending(root: Path, step: int, pending: bool) -> None:
    """Record in ``root``'s marker that ``step`` is being written (before orbax starts) or is done."""
    marker = _root_marker(root)
    steps = set(marker.get("pending", [])) - {step} | ({step} if pending else set())
    _write_json(root / MARKER, {**marker, "pending": sorted(steps)})


class Manager:
    """Numbered checkpoints (steps) in the directory ``root``, written and pruned by orbax's
    ``CheckpointManager``: ``ModelCheckpoint(max_to_keep=, keep_best=)``'s, one step per epoch.

    ``max_to_keep``: keep the latest N steps; ``keep_best``: keep the k steps with the best
    ``monitor`` value (``mode`` ``"min"`` or ``"max"``); both given: a step stays if either keeps it;
    neither: every step stays. ``async_save``: :meth:`save` returns once orbax has copied the arrays
    (its NumPy handler's ``deepcopy_host_arrays``, so training may go on and reuse its buffers) and
    writes them in the background; the next :meth:`save`, :meth:`wait` and :meth:`close` wait for it
    (so does the end of the process: the writer thread is joined at exit).

    Disk safety as :func:`save`'s: ``root`` must be absent, empty, or a directory this class wrote
    with nothing added (:func:`open_root`); orbax removes only steps it finds there, so retention never
    deletes anything minicnn did not write. A step counts as saved once it carries its marker (checksums,
    structure, metadata as JSON), written after orbax has renamed it into place.
    """

    def __init__(self, root: str | os.PathLike, *, max_to_keep: int | None = None, keep_best: int | None = None,
                 monitor: str | None = None, mode: str = "min", async_save: bool = True):
        import orbax.checkpoint as ocp
        from orbax.checkpoint import checkpoint_managers as policies

        for name, n in (("max_to_keep", max_to_keep), ("keep_best", keep_best)):
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise ValueError(f"{name} must be a positive int or None, got {n!r}")
        if keep_best is not None and monitor is None:
            raise ValueError("keep_best needs the metric to rank steps by: pass monitor=")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.keep_best, self.async_save = monitor, keep_best, async_save
        self.root = open_root(root, {"monitor": monitor, "mode": mode, "max_to_keep": max_to_keep,
                                     "keep_best": keep_best})
        kept = ([policies.LatestN(n=max_to_keep)] if max_to_keep else []) + \
            ([policies.BestN(get_metric_fn=self._rank, reverse=mode == "min", n=keep_best)] if keep_best else [])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(kept) if kept else policies.PreserveAll(),
            best_fn=self._rank if keep_best else None, best_mode=mode, create=False, save_root_metadata=False,
            multiprocessing_options=_this_process_only(ocp))
        self._args = ocp.args
        self._orbax = ocp.CheckpointManager(self.root, options=options, item_names=(ITEM,))
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="minicnn-checkpoint")
        self._sealing = None

    def _rank(self, metrics) -> float:
        return float(metrics[self.monitor])

    def save(self, step: int, tree: Mapping, metadata: Mapping, metric: float | None = None) -> Path:
        """Write ``tree`` (as :func:`save`) as step ``step`` with ``metadata`` and the monitored value
        ``metric``; return the step's directory (complete once :meth:`wait` returns). Steps from
        ``step`` on that are already there (a run that went further) are replaced."""
        self.wait()
        if self.keep_best and metric is None:
            raise ValueError(f"keep_best ranks steps by {self.monitor!r}; no value was given for step {step}")
        tree = _to_numpy(tree)
        json.dumps(dict(metadata))  # not serialisable: fail before writing anything
        for later in [s for s in self._orbax.all_steps() if s >= step]:
            self._orbax.delete(later)  # minicnn's own step: open_root checked every entry
        set_pending(self.root, step, True)
        self._orbax.save(step, args=self._args.Composite(**{ITEM: self._args.PyTreeSave(tree)}),
                         metrics={self.monitor: float(metric)} if metric is not None else None)
        self._sealing = self._writer.submit(self._seal, step, tree, metadata, metric)
        if not self.async_save:
            self.wait()
        return self.root / str(step)

    def _seal(self, step: int, tree: dict, metadata: Mapping, metric: float | None) -> None:
        """Once orbax has renamed the step into place, write its marker (retention may already have
        removed it: a step that is not among the best)."""
        self._orbax.wait_until_finished()
        self._orbax.check_for_errors()
        directory = self.root / str(step)
        if directory.is_dir():
            seal(directory, tree, metadata, item=ITEM, metric=metric)
        set_pending(self.root, step, False)

    def wait(self) -> None:
        """Block until the save in flight is finished and sealed; raise its error, if any."""
        sealing, self._sealing = self._sealing, None
        if sealing is not None:
            sealing.result()

    def close(self) -> None:
        self.wait()
        self._orbax.close()
        self._writer.shutdown()


def resolve(path: str | os.PathLike, step: int | None = None, best: bool = False) -> Path:
    """The checkpoint directory to load for ``path``: ``path`` itself, or in a :class:`Manager`'s
    directory the latest finished step, step ``step``, or (``best=True``) the first step with the
    best monitored value."""
    path = Path(path)
    if not is_root(path):
        if step is not None or best:
            raise ValueError(f"step=/best=: {path} is a single checkpoint, not a directory of numbered steps")
        return path
    if step is not None and best:
        raise ValueError("pass step= or best=True, not both")
    steps = sealed_steps(path)
    if not steps:
        raise FileNotFoundError(f"{path} holds no finished checkpoint step")
    if step is not None and step not in steps:
        raise FileNotFoundError(f"{path} has no finished step {step} (it has {', '.join(map(str, steps))})")
    return path / str(step if step is not None else _best(path, steps) if best else steps[-1])


def _best(root: Path, steps: list[int]) -> int:
    settings = _root_marker(root)["metadata"]
    values = {step: read_marker(root / str(step)).get("metric") for step in steps}
    values = {step: value for step, value in values.items() if value is not None}
    if not values:
        raise ValueError(f"best=True: the steps in {root} record no {settings.get('monitor')!r} value to rank "
                         f"them by (written without keep_best)")
    return (min if settings.get("mode") == "min" else max)(values, key=values.get)
