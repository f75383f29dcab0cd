"""safetensors files: read them (header checked first, NumPy only, no torch) and write minicnn variables.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
``{"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}``
and the data section, which the tensors' byte ranges (relative to its start) tile in order with
no gap and no overlap. :func:`read_safetensors` checks all of that against the file's size before
the ``safetensors`` package reads a byte of data, so a malformed file is one
:class:`CorruptWeightsError` naming the file and the tensor, never a large allocation.

Two layouts are ported (:func:`minicnn.weights.port_file` tells them apart by the names):

- **minicnn's own**, written by :func:`save_safetensors`: Keras names joined by ``/``
  (``block1_conv1/kernel``, ``vgg16/block5_conv3/bias``, ``stem_bn/moving_mean``) and arrays as
  minicnn holds them (HWIO conv kernels, depthwise ``(kh, kw, C, multiplier)``, dense ``(in, out)``,
  flatten order H, W, C). A leaf named ``moving_mean`` or ``moving_variance`` is in
  ``batch_stats``, every other in ``params``: the split Keras makes between a BatchNormalization's
  non-trainable and trainable weights.
- **PyTorch state dicts** (``features.0.weight``, timm's ``pre_logits.fc1.weight``, ...): mapped by
  :mod:`minicnn.weights.torch_layouts`, the same mapping as for a ``.pth`` file.
"""

from __future__ import annotations

import json
import math
import os
import struct
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from minicnn.weights.torch_pth import CorruptWeightsError

__all__ = ["MAX_HEADER_BYTES", "is_minicnn_layout", "is_safetensors", "read_safetensors", "save_safetensors",
           "to_variables"]

MAX_HEADER_BYTES = 100 << 20  # the safetensors package's own cap; a VGG16 header is ~3 kB
# the dtypes the package's NumPy API reads (BF16 and the F8 types need torch)
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "U64": np.uint64,
           "I32": np.int32, "U32": np.uint32, "I16": np.int16, "U16": np.uint16, "I8": np.int8,
           "U8": np.uint8, "BOOL": np.bool_}
_BATCH_STATS = ("moving_mean", "moving_variance")
_FORMAT = "minicnn"  # the __metadata__ "format" of the files save_safetensors writes
_MAX_NDIM = 64  # NumPy's limit


def is_safetensors(path: Path) -> bool:
    """A ``.safetensors`` name, or (any name) a header length that fits the file followed by ``{``."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{" and 8 + struct.unpack("<Q", head[:8])[0] <= path.stat().st_size


def _is_count(v) -> bool:
    return type(v) is int and v >= 0  # bool is no count


def _header(f, size: int, where: str) -> dict:
    """The JSON header of an open file of ``size`` bytes, its length checked before it is read."""
    head = f.read(8)
    if len(head) < 8:
        raise CorruptWeightsError(f"{where}: {size} bytes, too short for a safetensors file (8-byte header length)")
    (n,) = struct.unpack("<Q", head)
    if n > min(size - 8, MAX_HEADER_BYTES):
        raise CorruptWeightsError(f"{where}: the header length {n} exceeds the {size - 8} bytes after it "
                                  f"(or the {MAX_HEADER_BYTES}-byte cap); not a safetensors file, or truncated")
    try:
        header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CorruptWeightsError(f"{where}: the {n}-byte header is not JSON ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict):
        raise CorruptWeightsError(f"{where}: the header is a JSON {type(header).__name__}, not an object")
    return header


def _check_tensor(name: str, info, data_bytes: int, where: str) -> tuple[int, int]:
    """``(begin, end)`` of one header entry, once dtype, shape and byte range agree with each other
    and lie inside the data section."""
    where = f"{where}: tensor {name!r}"
    if not (isinstance(info, dict) and {"dtype", "shape", "data_offsets"} <= set(info)):
        raise CorruptWeightsError(f"{where}: header entry {info!r:.100} needs dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in _DTYPES:
        raise CorruptWeightsError(f"{where}: dtype {dtype!r:.30} is not one minicnn reads without torch "
                                  f"({', '.join(_DTYPES)}); convert the file to float32")
    if not (isinstance(shape, list) and len(shape) <= _MAX_NDIM and all(map(_is_count, shape))):
        raise CorruptWeightsError(f"{where}: shape {shape!r:.100} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise CorruptWeightsError(f"{where}: data_offsets {offsets!r:.100} is not [begin, end]")
    begin, end = offsets
    if not begin <= end <= data_bytes:
        raise CorruptWeightsError(f"{where}: bytes {begin}..{end} are outside the {data_bytes}-byte data "
                                  f"section; the file is truncated or corrupt")
    nbytes = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize
    if end - begin != nbytes:
        raise CorruptWeightsError(f"{where}: shape {tuple(shape)} of {dtype} is {nbytes} bytes, its data_offsets "
                                  f"span {end - begin}")
    return begin, end


def _check_header(header: dict, data_bytes: int, where: str) -> None:
    """Every entry valid, and their byte ranges tile the data section in order (the format's rule)."""
    metadata = header.get("__metadata__", {})
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise CorruptWeightsError(f"{where}: __metadata__ {metadata!r:.100} is not an object of strings")
    spans = sorted((*_check_tensor(name, info, data_bytes, where), name)
                   for name, info in header.items() if name != "__metadata__")
    last, last_name = 0, None
    for begin, end, name in spans:
        if begin < last:
            raise CorruptWeightsError(f"{where}: tensor {name!r} (bytes {begin}..{end}) overlaps tensor "
                                      f"{last_name!r} (ending at byte {last})")
        if begin > last:
            raise CorruptWeightsError(f"{where}: bytes {last}..{begin} of the data section, before tensor "
                                      f"{name!r}, belong to no tensor; the file is corrupt")
        last, last_name = end, name
    if last != data_bytes:
        raise CorruptWeightsError(f"{where}: the tensors end at byte {last} of a {data_bytes}-byte data "
                                  f"section; the file is corrupt")


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{name: ndarray}`` of a safetensors file, in the file's dtypes (F32 -> float32, ...).

    The header is checked in full (see the module docstring) before any data is read; then the
    ``safetensors`` package reads the tensors with its NumPy API. Raises :class:`CorruptWeightsError`
    naming the file and, where one is at fault, the tensor.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    where, size = str(path), path.stat().st_size
    with open(path, "rb") as f:
        header = _header(f, size, where)
        data_start = f.tell()
    _check_header(header, size - data_start, where)
    try:
        with safe_open(path, framework="np") as f:
            return {name: f.get_tensor(name) for name in header if name != "__metadata__"}
    except (SafetensorError, OSError, ValueError, TypeError) as e:  # what the checks above did not foresee
        raise CorruptWeightsError(f"{where}: the safetensors package cannot read it ({type(e).__name__}: {e})") from None


def is_minicnn_layout(state: Mapping) -> bool:
    """Keras names joined by ``/`` (:func:`save_safetensors`), not a PyTorch state dict's dots."""
    return bool(state) and all("/" in name for name in state)


def to_variables(state: Mapping[str, np.ndarray], where: str = "safetensors file") -> dict:
    """``{"block1_conv1/kernel": a, "stem_bn/moving_mean": m}`` -> ``{"params": {"block1_conv1":
    {"kernel": a}}, "batch_stats": {"stem_bn": {"moving_mean": m}}}`` (the arrays themselves)."""
    variables: dict = {}
    for name, value in state.items():
        *layers, leaf = name.split("/")
        node = variables.setdefault("batch_stats" if leaf in _BATCH_STATS else "params", {})
        for layer in layers:
            node = node.setdefault(layer, {})
            if not isinstance(node, dict):
                raise CorruptWeightsError(f"{where}: tensor {name!r} is inside {layer!r}, which is itself a tensor")
        if not leaf or leaf in node:
            raise CorruptWeightsError(f"{where}: tensor {name!r} does not name a variable (empty or repeated leaf)")
        node[leaf] = value
    return variables


def _flat(tree: Mapping, collection: str, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts -> ``{"a/b/kernel": C-contiguous ndarray}``, checking names and dtypes."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if not isinstance(key, str) or not key or "/" in key:
            raise ValueError(f"save_safetensors: {collection}/{name!r}: keys must be non-empty strings without '/'")
        if isinstance(value, Mapping):
            out.update(_flat(value, collection, name + "/"))
            continue
        if (key in _BATCH_STATS) != (collection == "batch_stats"):
            raise ValueError(f"save_safetensors: {collection}/{name}: the file keeps no collection names, so a "
                             f"leaf is in batch_stats exactly when it is named {' or '.join(_BATCH_STATS)}")
        array = np.ascontiguousarray(value)
        if array.dtype not in map(np.dtype, _DTYPES.values()):
            raise TypeError(f"save_safetensors: {collection}/{name} is {array.dtype}; cast it to one of "
                            f"{', '.join(sorted({np.dtype(t).name for t in _DTYPES.values()}))}")
        out[name] = array
    return out


def _written_by_minicnn(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            header = _header(f, path.stat().st_size, str(path))
    except (OSError, CorruptWeightsError):
        return False
    return isinstance(header.get("__metadata__"), dict) and header["__metadata__"].get("format") == _FORMAT


def save_safetensors(variables: Mapping, path: str | os.PathLike) -> Path:
    """Write minicnn variables (``{"params": ..., ["batch_stats": ...]}``) to a safetensors file.

    Names are Keras' joined by ``/`` (``block1_conv1/kernel``, ``block1_conv1/bias``,
    ``stem_bn/gamma``, ``stem_bn/moving_mean``), arrays exactly as minicnn holds them: HWIO conv
    kernels, depthwise ``(kh, kw, C, multiplier)``, dense ``(in, out)`` reading an H, W, C flatten;
    ``__metadata__`` is ``{"format": "minicnn", "layout": ...}``. :func:`read_safetensors` and
    :func:`minicnn.weights.port_file` read it back bit-exact. The file is written under a
    temporary name and renamed over ``path``, which must be absent or a file this function wrote.
    Returns the path.
    """
    path = Path(path)
    extra = sorted(set(variables) - {"params", "batch_stats"})
    if extra or "params" not in variables:
        raise ValueError(f"save_safetensors: expected {{'params': ..., ['batch_stats': ...]}}, got collections "
                         f"{sorted(variables)}")
    tensors: dict[str, np.ndarray] = {}
    for collection in ("params", "batch_stats"):
        for name, array in _flat(variables.get(collection, {}), collection).items():
            if name in tensors:
                raise ValueError(f"save_safetensors: {name} is in both params and batch_stats")
            tensors[name] = array
    if path.exists() and not _written_by_minicnn(path):
        raise FileExistsError(f"save_safetensors: {path} exists and is not a safetensors file minicnn wrote; "
                              f"minicnn overwrites only its own files")
    from safetensors.numpy import save_file

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(tensors, tmp, metadata={"format": _FORMAT,
                                          "layout": "Keras names; HWIO conv kernels, dense (in, out), NHWC"})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
