"""Read PyTorch ``.pth`` state dicts into NumPy arrays without importing torch.

``torch.load`` unpickles arbitrary objects, so a malicious file can run code. This reader
unpickles with an allow-list: the globals a saved state dict needs (``OrderedDict``, the
``torch.*Storage`` type tags, ``torch._utils._rebuild_tensor_v2`` and ``_rebuild_parameter``)
are replaced by NumPy stand-ins, and any other global is refused before it is looked up.
Both formats ``torch.save`` writes are read: the zip archive (PyTorch >= 1.6) and the legacy
stream (magic number, protocol, system info, pickle, storage keys, raw storages), the format of
older published files such as ``vgg16-397923af.pth`` and ``efficientnet-lite0-57934424.pth``.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
import zipfile
from pathlib import Path

import ml_dtypes  # a JAX dependency: NumPy's bfloat16
import numpy as np

__all__ = ["read_pth", "UnsafePickleError"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
           "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
           "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
           "BoolStorage": np.bool_}


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks the unpickler for a global that a state dict does not need."""


class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co: only its element dtype is used."""

    def __init__(self, name: str):
        self.dtype = np.dtype(_DTYPES[name])


class _Storage:
    """A flat buffer of one dtype, filled after unpickling (legacy) or read on demand (zip)."""

    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel, self.data = dtype, numel, None


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return _Tensor(storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    return data


class _Tensor:
    """A tensor whose storage may not be read yet; ``.numpy()`` makes the strided view a copy."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def numpy(self) -> np.ndarray:
        flat = self.storage.data
        item = flat.itemsize
        if self.size and self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) >= flat.size:
            raise ValueError(f"tensor of shape {self.size} runs past the end of its storage "
                             f"({flat.size} elements); the file is truncated or corrupt")
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], self.size,
                                               tuple(s * item for s in self.stride), writeable=False)
        return np.array(view)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, where: str, storages: dict, load_storage=None):
        super().__init__(file)
        self.where, self.storages, self.load_storage = where, storages, load_storage

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.where}: refusing to unpickle global {module}.{name}: a PyTorch state dict "
                f"needs only tensors, and this file asks for more (it may run code when loaded "
                f"with torch.load). minicnn reads state dicts saved with torch.save(model.state_dict())."
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage")):
            raise UnsafePickleError(f"{self.where}: unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"{self.where}: storage type {storage_type!r} is not a torch storage")
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, int(numel))
            if self.load_storage is not None:
                self.storages[key].data = self.load_storage(key, storage_type.dtype)
        if view is not None:  # storage views: written only by PyTorch < 0.4, never for a state dict
            raise ValueError(f"{self.where}: storage {key} is a view of another storage, which minicnn "
                             f"does not read; re-save the state dict with a current torch.save")
        return self.storages[key]


def _flatten(obj, prefix: str = "") -> dict[str, np.ndarray]:
    """{"features.0.weight": array, ...}; a checkpoint dict nesting the state dict is flattened too."""
    if isinstance(obj, _Tensor):
        return {prefix: obj.numpy()}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {}  # ints, strings, hyper-parameters stored next to the tensors


def _read_legacy(f, where: str):
    storages: dict = {}

    def load():  # every pickle in the stream, the header too, goes through the allow-list
        return _RestrictedUnpickler(f, where, storages).load()

    try:
        magic = load()
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError) as e:
        if isinstance(e, UnsafePickleError):
            raise
        raise ValueError(f"{where}: not a PyTorch .pth file (neither a zip archive nor a "
                         f"torch.save pickle stream): {e}") from None
    if magic != _LEGACY_MAGIC:
        raise ValueError(f"{where}: not a PyTorch .pth file (bad magic number {magic!r})")
    load()  # protocol version
    load()  # system info: a dict of ints and bools
    result = load()
    keys = load()
    for key in keys:  # each raw storage: its element count as little-endian int64, then the bytes
        storage, header = storages.get(key), f.read(8)
        if storage is None or len(header) < 8:
            raise ValueError(f"{where}: storage {key} is missing; the file is truncated or corrupt")
        (numel,) = struct.unpack("<q", header)
        raw = f.read(storage.numel * storage.dtype.itemsize)
        if numel != storage.numel or len(raw) != storage.numel * storage.dtype.itemsize:
            raise ValueError(f"{where}: storage {key} has {len(raw) // storage.dtype.itemsize} of "
                             f"{storage.numel} elements; the file is truncated or corrupt")
        storage.data = np.frombuffer(raw, storage.dtype)
    unread = [k for k, s in storages.items() if s.data is None]
    if unread:
        raise ValueError(f"{where}: storages {', '.join(unread[:3])} have no data; the file is truncated or corrupt")
    return result


def _read_zip(path: Path, where: str):
    with zipfile.ZipFile(path) as z:
        pkl = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
        if pkl is None:
            raise ValueError(f"{where}: zip archive without data.pkl; not a torch.save file")
        root = pkl[: -len("data.pkl")]

        def load_storage(key, dtype):
            return np.frombuffer(z.read(f"{root}data/{key}"), dtype)

        with z.open(pkl) as f:
            return _RestrictedUnpickler(f, where, {}, load_storage).load()


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A ``torch.save``d state dict as ``{"features.0.weight": (O, I, kh, kw) ndarray, ...}``.

    Raises :class:`UnsafePickleError` (naming the global) for anything but tensors and
    containers, without running it.
    """
    path = Path(path)
    where = str(path)
    if zipfile.is_zipfile(path):
        return _flatten(_read_zip(path, where))
    with open(path, "rb") as f:
        return _flatten(_read_legacy(f, where))
