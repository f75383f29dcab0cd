"""Read PyTorch ``.pth`` state dicts into NumPy arrays without importing torch.

``torch.load`` unpickles arbitrary objects, so a malicious file can run code. This reader
unpickles with an allow-list: the globals a saved state dict needs (``OrderedDict``, the
``torch.*Storage`` type tags, ``torch._utils._rebuild_tensor_v2`` and ``_rebuild_parameter``)
are replaced by stand-ins made fresh for each load, any other global is refused before it is
looked up, and a pickle ``BUILD`` on a stand-in is refused. Both formats ``torch.save`` writes
are read: the zip archive (PyTorch >= 1.6) and the legacy stream (magic number, protocol,
system info, pickle, storage keys, raw storages), the format of older published files such as
``vgg16-397923af.pth`` and ``efficientnet-lite0-57934424.pth``.

Every number in the file is checked against the bytes actually present before anything is
allocated: each pickle's declared lengths and memo indices (the C unpickler allocates them up
front), each storage against its zip entry or the rest of the legacy stream, a compressed zip
entry against its compressed size, and each tensor's size, stride and offset against its
storage. A file failing a check raises :class:`CorruptWeightsError` naming the file and the tensor.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import pickletools
import struct
import zipfile
import zlib
from pathlib import Path

import ml_dtypes  # a JAX dependency: NumPy's bfloat16
import numpy as np

__all__ = ["MAX_INFLATION", "CorruptWeightsError", "UnsafePickleError", "read_pth"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
           "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
           "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
           "BoolStorage": np.bool_}
MAX_INFLATION = 64  # a compressed entry may inflate to this many times its stored bytes (floats: ~1.1)
_MAX_REUSE = 4  # tensors may copy this many times the storage bytes they read (tied weights: 2) ...
_REUSE_SLACK = 1 << 20  # ... plus this many bytes (scalars sharing one storage)
_MAX_NDIM = 64  # NumPy's limit
_MEMO_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")
_WRAPPERS = ("state_dict", "model_state_dict", "model")  # training checkpoints nest the state dict
_CHUNK = 1 << 24  # bytes per read of a zip entry


class UnsafePickleError(pickle.UnpicklingError):
    """The file asks the unpickler for a global, or an operation, that a state dict does not need."""


class CorruptWeightsError(ValueError):
    """A weight file whose numbers contradict its bytes: a tensor outside its storage, a length the
    file does not hold, a decompression bomb, a dataset stored elsewhere or never written."""


class _StandIn:
    """What the unpickler hands out for torch's globals, storages and tensors: fresh objects per
    load, and a pickle BUILD on one is refused (on a shared object it would change later loads)."""

    __slots__ = ("where",)

    def __setstate__(self, state):
        raise UnsafePickleError(f"{self.where}: refusing a pickle BUILD on {self!r}: a state dict never "
                                f"changes torch's classes, storages or tensors")


class _StorageType(_StandIn):
    """Stands in for ``torch.FloatStorage`` & co: only its element dtype is used."""

    __slots__ = ("dtype", "name")

    def __init__(self, where: str, name: str):
        self.where, self.name, self.dtype = where, name, np.dtype(_DTYPES[name])

    def __repr__(self):
        return f"torch.{self.name}"


class _Storage(_StandIn):
    """A flat buffer of one dtype: ``capacity`` elements are in the file; ``data`` holds those read."""

    __slots__ = ("capacity", "data", "dtype", "key")

    def __init__(self, where: str, key: str, dtype: np.dtype, capacity: int):
        self.where, self.key, self.dtype, self.capacity, self.data = where, key, dtype, capacity, None

    def __repr__(self):
        return f"storage {self.key}"


class _Tensor(_StandIn):
    """``_rebuild_tensor_v2``'s arguments, unchecked: :func:`_checked_extent` validates them."""

    __slots__ = ("offset", "size", "storage", "stride")

    def __init__(self, where, storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
        self.where, self.storage, self.offset, self.size, self.stride = where, storage, offset, size, stride

    def __repr__(self):
        return "a tensor"


class _Rebuild(_StandIn):
    """Stands in for a ``torch._utils`` rebuild function."""

    __slots__ = ("function", "name")

    def __init__(self, where: str, name: str, function):
        self.where, self.name, self.function = where, name, function

    def __call__(self, *args, **kwargs):
        return self.function(*args, **kwargs)

    def __repr__(self):
        return f"torch._utils.{self.name}"


def _parameter_data(data, requires_grad=False, hooks=None, state=None):
    return data


def _allowed_globals(where: str) -> dict:
    """The allow-list, made fresh for each unpickler: nothing a file does to it outlives its load."""
    tensor = _Rebuild(where, "_rebuild_tensor_v2", lambda *args: _Tensor(where, *args))
    return {("collections", "OrderedDict"): collections.OrderedDict,  # a built-in type: BUILD fails on it
            ("torch._utils", "_rebuild_tensor_v2"): tensor,
            ("torch._utils", "_rebuild_parameter"): _Rebuild(where, "_rebuild_parameter", _parameter_data),
            ("torch._utils", "_rebuild_parameter_with_state"):
                _Rebuild(where, "_rebuild_parameter_with_state", _parameter_data),
            **{("torch", name): _StorageType(where, name) for name in _DTYPES}}


def _is_count(v) -> bool:
    return type(v) is int and v >= 0  # bool is no count; a torch pickle holds plain ints


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles through the allow-list; ``new_storage(key, dtype, numel)`` makes each storage once."""

    def __init__(self, file, where: str, storages: dict, new_storage):
        super().__init__(file)
        self.where, self.storages, self.new_storage = where, storages, new_storage
        self.allowed = _allowed_globals(where)

    def find_class(self, module, name):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.where}: refusing to unpickle global {module}.{name}: a PyTorch state dict "
                f"needs only tensors, and this file asks for more (it may run code when loaded "
                f"with torch.load). minicnn reads state dicts saved with torch.save(model.state_dict())."
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")):
            raise UnsafePickleError(f"{self.where}: unexpected persistent id {pid!r:.200}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"{self.where}: storage type {storage_type!r:.100} is not a torch storage")
        if not (isinstance(key, str) and _is_count(numel)):
            raise CorruptWeightsError(f"{self.where}: storage key {key!r:.100} with {numel!r:.100} elements: "
                                      f"expected a string key and a non-negative element count")
        if len(pid) == 6 and pid[5] is not None:  # storage views: PyTorch < 0.4, never for a state dict
            raise CorruptWeightsError(f"{self.where}: storage {key} is a view of another storage, which "
                                      f"minicnn does not read; re-save the state dict with a current torch.save")
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = self.new_storage(key, storage_type.dtype, numel)
        elif storage.dtype != storage_type.dtype:
            raise CorruptWeightsError(f"{self.where}: storage {key} is read as {storage.dtype} and as "
                                      f"{storage_type.dtype}; torch.save never writes that")
        return storage


class _Bounded:
    """A file's ``read``/``readline`` capped at ``end``: a declared length never reads past the bytes there."""

    def __init__(self, f, end: int):
        self.f, self.end = f, end

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.end - self.f.tell())
        return self.f.read(left if n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self.f.readline(max(0, self.end - self.f.tell()))

    def tell(self) -> int:
        return self.f.tell()


def _pickle_bytes(f, end: int, where: str) -> bytes:
    """The bytes of the pickle starting at ``f.tell()`` (ending before ``end``), after walking its
    opcodes without running them: every declared length must fit in the bytes present and every
    memo index must be one a pickler writes (the C unpickler allocates both before reading)."""
    start = f.tell()
    try:
        ops = list(pickletools.genops(_Bounded(f, end)))
    except ValueError as e:  # a length past the end, an unknown opcode, no STOP
        raise CorruptWeightsError(f"{where}: the pickle is truncated or corrupt: {e}") from None
    bad = next(((arg, n) for n, (op, arg, _) in enumerate(ops) if op.name in _MEMO_PUTS and arg > n), None)
    if bad is not None:
        raise CorruptWeightsError(f"{where}: the pickle stores memo index {bad[0]} after {bad[1]} opcodes; "
                                  f"a pickler numbers them in order, so the file is corrupt")
    stop = f.tell()
    f.seek(start)
    return f.read(stop - start)


def _unpickle(f, end: int, where: str, storages: dict, new_storage):
    data = _pickle_bytes(f, end, where)
    return _RestrictedUnpickler(io.BytesIO(data), where, storages, new_storage).load()


def _unwrap(obj):
    """A training checkpoint ``{"epoch": ..., "state_dict": {...}}`` -> the state dict it nests."""
    if isinstance(obj, dict):
        for key in _WRAPPERS:
            if isinstance(obj.get(key), dict):
                return obj[key]
    return obj


def _flatten(obj, prefix: str = "") -> dict[str, _Tensor]:
    """{"features.0.weight": tensor, ...}: nested dicts joined with dots."""
    if isinstance(obj, _Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {}  # ints, strings, hyper-parameters stored next to the tensors


def _checked_extent(t: _Tensor, name: str) -> int:
    """Elements of ``t.storage`` the tensor reads (offset + last index + 1; 0 when empty).

    Raises unless size, stride and offset are non-negative ints, one stride per dimension, the
    tensor has no more elements than its storage holds (a zero stride expanding a storage is no
    checkpoint) and every element it reads is inside the storage's bytes in the file.
    """
    where = f"{t.where}: tensor {name}"
    s = t.storage
    if not isinstance(s, _Storage):
        raise CorruptWeightsError(f"{where}: its storage is {type(s).__name__}, not a torch storage")
    if not (isinstance(t.size, tuple) and isinstance(t.stride, tuple) and len(t.size) == len(t.stride) <= _MAX_NDIM
            and all(map(_is_count, (t.offset, *t.size, *t.stride)))):
        raise CorruptWeightsError(f"{where}: size {t.size!r:.100}, stride {t.stride!r:.100} and offset "
                                  f"{t.offset!r:.30} must be non-negative integers, one stride per dimension")
    numel = math.prod(t.size)
    if numel > s.capacity:
        raise CorruptWeightsError(f"{where}: shape {t.size} has {numel} elements, its storage {s.key} holds "
                                  f"{s.capacity}; the file is corrupt (a zero stride expanding a storage "
                                  f"is not a saved state dict)")
    if numel == 0:
        return 0
    end = t.offset + sum((n - 1) * st for n, st in zip(t.size, t.stride)) + 1
    if end > s.capacity:
        raise CorruptWeightsError(f"{where}: shape {t.size}, stride {t.stride} from offset {t.offset} reads "
                                  f"element {end - 1} of storage {s.key}, which holds {s.capacity}; the "
                                  f"file is truncated or corrupt")
    return end


def _copy(t: _Tensor) -> np.ndarray:
    """The (checked) tensor as a new C-contiguous array; strides of length-1 dimensions are unused."""
    flat = t.storage.data
    if math.prod(t.size) == 0:
        return np.zeros(t.size, flat.dtype)
    strides = tuple(st * flat.itemsize if n > 1 else 0 for n, st in zip(t.size, t.stride))
    return np.array(np.lib.stride_tricks.as_strided(flat[t.offset:], t.size, strides, writeable=False), order="C")


def _materialize(obj, where: str, load) -> dict[str, np.ndarray]:
    """Check every tensor against its storage, read what they need (``load(storage, elements)``),
    copy them out. Nothing is read or allocated before every tensor has passed."""
    tensors = _flatten(_unwrap(obj))
    need: dict[_Storage, int] = {}
    for name, t in tensors.items():
        end = _checked_extent(t, name)  # first: it checks t.storage is a storage
        need[t.storage] = max(need.get(t.storage, 0), end)
    out_bytes = sum(math.prod(t.size) * t.storage.dtype.itemsize for t in tensors.values())
    in_bytes = sum(n * s.dtype.itemsize for s, n in need.items())
    if out_bytes > _MAX_REUSE * in_bytes + _REUSE_SLACK:
        raise CorruptWeightsError(f"{where}: {len(tensors)} tensors copy {out_bytes} bytes out of {in_bytes} "
                                  f"bytes of storage; a state dict does not reuse its storages this often")
    for storage, n in need.items():
        load(storage, n)
    return {name: _copy(t) for name, t in tensors.items()}


def _read_legacy(f, size: int, where: str) -> dict[str, np.ndarray]:
    storages: dict = {}

    def load():  # every pickle in the stream, the header too, goes through the allow-list
        return _unpickle(f, size, where, storages, lambda key, dtype, numel: _Storage(where, key, dtype, numel))

    try:
        magic = load()
    except (UnsafePickleError, CorruptWeightsError):
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError) as e:
        raise CorruptWeightsError(f"{where}: not a PyTorch .pth file (neither a zip archive nor a "
                                  f"torch.save pickle stream): {e}") from None
    if magic != _LEGACY_MAGIC:
        raise CorruptWeightsError(f"{where}: not a PyTorch .pth file (bad magic number {magic!r:.50})")
    load()  # protocol version
    load()  # system info: a dict of ints and bools
    result = load()
    keys = load()
    if not isinstance(keys, list):
        raise CorruptWeightsError(f"{where}: the storage key list is a {type(keys).__name__}")
    for key in keys:  # each raw storage: its element count as little-endian int64, then the bytes
        storage, header = storages.get(key), f.read(8)
        if storage is None or storage.data is not None or len(header) < 8:
            raise CorruptWeightsError(f"{where}: storage {key!r:.50} is missing; the file is truncated or corrupt")
        (numel,) = struct.unpack("<q", header)
        nbytes, left = storage.capacity * storage.dtype.itemsize, size - f.tell()
        if numel != storage.capacity or nbytes > left:
            raise CorruptWeightsError(f"{where}: storage {key} claims {numel} elements (the pickle says "
                                      f"{storage.capacity}) of {storage.dtype}, the file has {left} bytes left; "
                                      f"the file is truncated or corrupt")
        storage.data = np.frombuffer(f.read(nbytes), storage.dtype)
    unread = [k for k, s in storages.items() if s.data is None]
    if unread:
        raise CorruptWeightsError(f"{where}: storages {', '.join(unread[:3])} have no data; the file is "
                                  f"truncated or corrupt")
    return _materialize(result, where, lambda storage, n: None)


def _entry_size(info: zipfile.ZipInfo, archive_bytes: int, where: str) -> int:
    """The bytes a zip entry inflates to, once its header is shown to be no decompression bomb."""
    inflation = 1 if info.compress_type == zipfile.ZIP_STORED else MAX_INFLATION
    if info.compress_size > archive_bytes or info.file_size > inflation * info.compress_size:
        raise CorruptWeightsError(f"{where}: {info.filename} inflates {info.compress_size} bytes to "
                                  f"{info.file_size} in a {archive_bytes}-byte file: a decompression bomb or a "
                                  f"corrupt archive (torch.save stores its entries uncompressed)")
    return info.file_size


def _read_entry(z: zipfile.ZipFile, info: zipfile.ZipInfo, nbytes: int, where: str) -> bytearray:
    """The first ``nbytes`` of a zip entry, streamed in chunks: never more than asked for."""
    out, got = bytearray(nbytes), 0
    with z.open(info) as entry:
        while got < nbytes:
            chunk = entry.read(min(_CHUNK, nbytes - got))
            if not chunk:
                raise CorruptWeightsError(f"{where}: {info.filename} ends after {got} of {nbytes} bytes; "
                                          f"the file is truncated or corrupt")
            out[got:got + len(chunk)] = chunk
            got += len(chunk)
    return out


def _read_zip(z: zipfile.ZipFile, archive_bytes: int, where: str) -> dict[str, np.ndarray]:
    pkl = next((i for i in z.infolist() if i.filename.endswith("data.pkl")), None)
    if pkl is None:
        raise CorruptWeightsError(f"{where}: zip archive without data.pkl; not a torch.save file")
    root = pkl.filename[: -len("data.pkl")]
    entries = {}

    def new_storage(key, dtype, numel):
        name = f"{root}data/{key}"
        if name not in z.NameToInfo:
            raise CorruptWeightsError(f"{where}: storage {key} has no entry {name}; the file is truncated or corrupt")
        entries[key] = z.getinfo(name)
        return _Storage(where, key, dtype, min(numel, _entry_size(entries[key], archive_bytes, where) // dtype.itemsize))

    def load(storage, n):
        storage.data = np.frombuffer(_read_entry(z, entries[storage.key], n * storage.dtype.itemsize, where),
                                     storage.dtype)

    data = _read_entry(z, pkl, _entry_size(pkl, archive_bytes, where), where)
    result = _unpickle(io.BytesIO(data), len(data), where, {}, new_storage)
    return _materialize(result, where, load)


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A ``torch.save``d state dict as ``{"features.0.weight": (O, I, kh, kw) ndarray, ...}``.

    A training checkpoint that nests it (``{"state_dict": ...}``, ``"model_state_dict"``,
    ``"model"``) is unwrapped. Raises :class:`UnsafePickleError` (naming the global) for anything
    but tensors and containers, without running it, and :class:`CorruptWeightsError` (naming the
    file and the tensor) for a file whose sizes, strides, offsets or lengths its bytes do not hold.
    """
    path = Path(path)
    where = str(path)
    size = path.stat().st_size
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return _read_zip(z, size, where)
        with open(path, "rb") as f:
            return _read_legacy(f, size, where)
    except (UnsafePickleError, CorruptWeightsError):
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile, zlib.error, EOFError, ValueError, TypeError,
            AttributeError, KeyError, IndexError, RecursionError) as e:  # opcodes that make no state dict
        raise CorruptWeightsError(f"{where}: not a readable torch.save file ({type(e).__name__}: {e})") from None
