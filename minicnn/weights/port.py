"""Port a weight file to minicnn variables, check it against the architecture, cache it on disk.

``pretrained_variables(arch, weights, include_top)`` is how pretrained variables are obtained (by
:func:`minicnn.init` and :func:`minicnn.pretrained`, eagerly, never under a JAX transformation):
``weights`` is ``"imagenet"``, a registered name or a path (legacy Keras ``.h5``, Keras 3
``.weights.h5``, PyTorch ``.pth``, ``.safetensors``, or a directory written by :func:`minicnn.weights.save`). Every
layer the architecture has must be in the file with the right shapes; the error names the layer,
the expected and the actual shape.
"""

from __future__ import annotations

import functools
import os
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from minicnn import inspector
from minicnn.models.registry import ARCHITECTURES, architecture, pretrained_names
from minicnn.weights import keras_h5, safetensors_io, store, torch_layouts, torch_pth
from minicnn.weights.fetch import get, local_file
from minicnn.weights.registry import entry, home, registry

__all__ = ["pretrained_variables", "port", "port_file", "list_weights", "detect_format"]

_WEIGHTED = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense", "BatchNormalization")


def _top_layers(arch: str) -> tuple[str, ...]:
    return architecture(arch).top_layers


@functools.lru_cache(maxsize=None)
def _expected(arch: str, include_top: bool):
    """(shapes {collection: {layer: {leaf: shape}}}, weighted layers [(name, keras kind)] in call order)."""
    import jax

    from minicnn.layers import keras_name

    a = architecture(arch)
    if not a.pretrained:
        raise ValueError(f"minicnn ports weights for {', '.join(pretrained_names())}, not {arch!r}")
    model, size = a.build(include_top=include_top), a.input_size  # the ImageNet size: fc1 depends on it
    variables = inspector.abstract_variables(model, (size, size, 3))
    order = tuple((i.path, keras_name(i.kind.__name__)) for i in inspector.layer_infos(model, variables, (size, size, 3))
                  if i.kind.__name__ in _WEIGHTED)
    shapes = jax.tree_util.tree_map(lambda s: tuple(s.shape), dict(variables))
    return shapes, order


def conform(variables: Mapping, arch: str, include_top: bool, where: str) -> dict:
    """Keep the collections and layers ``arch`` has, as float32; raise on anything missing or misshapen.

    A top in the file is dropped for ``include_top=False``; other layers the model lacks are errors.
    Top layers are checked for presence only: their shapes follow the input size and ``classes``,
    and ``from_array`` checks them against the model being initialised.
    """
    shapes, _ = _expected(arch, include_top)
    out = {}
    for collection, layers in shapes.items():
        have = dict(variables.get(collection, {}))
        if not include_top:
            have = {k: v for k, v in have.items() if k not in _top_layers(arch)}
        extra = sorted(set(have) - set(layers))
        if extra:
            raise ValueError(f"{where}: layers {', '.join(extra)} in {collection} are not in {arch} "
                             f"(include_top={include_top})")
        out[collection] = {}
        for layer, leaves in layers.items():
            if layer not in have:
                hint = " (the file has no top: use include_top=False)" if layer in _top_layers(arch) else ""
                raise ValueError(f"{where}: layer {layer} of {arch} is missing from {collection}; "
                                 f"expected {dict(leaves)}{hint}")
            out[collection][layer] = {}
            for leaf, shape in leaves.items():
                value = have[layer].get(leaf)
                if value is None:
                    raise ValueError(f"{where}: layer {layer} has no {leaf}; expected shape {shape}")
                # a top's shapes depend on the input size and classes: its initialisers check them
                if layer not in _top_layers(arch) and tuple(np.shape(value)) != shape:
                    raise ValueError(f"{where}: layer {layer} {leaf}: expected shape {shape}, "
                                     f"got {tuple(np.shape(value))}")
                out[collection][layer][leaf] = np.asarray(value, np.float32)
    return out


def detect_format(path: Path) -> str:
    """``"orbax"`` (a minicnn checkpoint directory), ``"keras_h5"``, ``"keras3_weights"``, ``"safetensors"``
    or ``"torch_pth"``."""
    import h5py

    if path.is_dir():
        return "orbax"
    if h5py.is_hdf5(path):
        try:
            with h5py.File(path, "r") as f:
                if keras_h5.is_legacy_h5(f):
                    return "keras_h5"
                if keras_h5.is_keras3_weights(f):
                    return "keras3_weights"
        except OSError as e:  # h5py's message does not name the file
            raise torch_pth.CorruptWeightsError(f"{path}: a damaged HDF5 file: {e}") from None
        raise ValueError(f"{path}: an HDF5 file but neither Keras layout (no layer_names attribute, no layers/ group)")
    if safetensors_io.is_safetensors(path):  # first: its header length may begin with a pickle's 0x80
        return "safetensors"
    with open(path, "rb") as f:
        head = f.read(2)
    if zipfile.is_zipfile(path) or head[:1] == b"\x80":  # zip archive or pickle protocol >= 2
        return "torch_pth"
    raise ValueError(f"{path}: not a weight file minicnn can read (expected a Keras .h5/.weights.h5, "
                     f"a PyTorch .pth, a .safetensors, or a directory written by minicnn.weights.save)")


def _detect_arch(names) -> str:
    names = set(names)
    for a in ARCHITECTURES.values():  # a row's signature layer: in its files only
        if a.signature in names:
            return a.name
    if {"conv2d_93", "batch_normalization_93"} <= names:  # 94 auto-named conv2d_bn blocks, from 0 or 1
        return "inception_v3"
    if {"_conv_stem.weight", "stem_conv"} & names:
        return "efficientnet_lite0"
    if "block5_conv4" in names or "features.34.weight" in names:
        return "vgg19"
    if "block1_conv1" in names or "features.0.weight" in names:
        return "vgg16"
    raise ValueError(f"cannot tell the architecture from layers {sorted(names)[:5]}...; pass arch= "
                     f"(one of {', '.join(pretrained_names())})")


def _legacy_by_order(variables: dict, arch: str, where: str) -> dict:
    """A legacy file's layers renamed to ``arch``'s by order when its names are not the model's.

    Keras' legacy loader pairs the file's weighted layers with ``model.layers``' by position, not by
    name; the names differ when Keras 2 wrote them (its auto names began at 1: the published
    InceptionV3 file's ``conv2d_1`` is the model's ``conv2d``). The counts must agree, with or
    without the top; shapes are checked by :func:`conform`.
    """
    file_layers = list(variables["params"])  # the file's layer_names order; every weighted layer has params
    counts = {}
    for top in (True, False):
        model_layers = [name for name, _ in _expected(arch, top)[1]]
        if top and set(file_layers) <= set(model_layers):
            return variables  # the model's own names
        if len(file_layers) == len(model_layers):
            rename = dict(zip(file_layers, model_layers))
            return {c: {rename.get(k, k): v for k, v in tree.items()} for c, tree in variables.items()}
        counts[top] = len(model_layers)
    raise ValueError(f"{where}: the file's layer names ({', '.join(file_layers[:3])}, ...) are not {arch}'s, and "
                     f"its {len(file_layers)} weighted layers are not {arch}'s {counts[True]} (with the top) or "
                     f"{counts[False]} (without) to pair by order as Keras does")


def port_file(path: str | os.PathLike, arch: str | None = None) -> tuple[dict, str]:
    """Read any supported weight file into minicnn variables (with whatever top it has) and its arch."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no weight file at {path}; weights is \"imagenet\", a registered name "
                                f"({', '.join(registry())}) or a file path")
    fmt = detect_format(path)
    where = str(path)
    if fmt == "orbax":
        variables = store.load(path)
        arch = arch or _detect_arch(variables.get("params", {}))
    elif fmt == "keras_h5":
        variables = keras_h5.read_keras_h5(path)
        arch = arch or _detect_arch(variables["params"])
        variables = _legacy_by_order(variables, arch, where)
    elif fmt == "keras3_weights":
        layers = keras_h5.keras3_layers(path)  # [(kind, name, model)], nested models included
        if arch is None:
            n_conv = sum(kind == "conv2d" for kind, _, _ in layers)
            arch = {13: "vgg16", 16: "vgg19"}.get(n_conv) or _detect_arch(name for _, name, _ in layers)
        base = next((model for kind, _, model in layers if kind == "conv2d"), "layers")
        top = _top_layers(arch)  # MobileNet's top is a Conv2D (conv_preds); not a head on a nested base
        has_top = any((kind == "dense" or name in top) and model == base for kind, name, model in layers)
        shapes, order = _expected(arch, has_top)
        leaves = {name: {*shapes["params"].get(name, ()), *shapes.get("batch_stats", {}).get(name, ())}
                  for name, _ in order}
        variables = keras_h5.read_keras3_weights(path, order, leaves)
    else:
        state = safetensors_io.read_safetensors(path) if fmt == "safetensors" else torch_pth.read_pth(path)
        if fmt == "safetensors" and safetensors_io.is_minicnn_layout(state):
            variables = safetensors_io.to_variables(state, where)
            arch = arch or _detect_arch(variables.get("params", {}))
        else:
            torch_layouts.refuse_unportable(state, where)  # before guessing an architecture it is not
            arch = arch or _detect_arch(state)
            variables = torch_layouts.from_state_dict(state, arch, where)
    return variables, arch


def _ported_dir(name: str) -> Path:
    return home() / "ported" / name


def _registered_file(names: list[str]) -> tuple[str, Path]:
    """The first of ``names`` already ported, else already on disk, else the first one fetched."""
    table = registry()
    for name in names:
        if _ported_dir(name).is_dir() and any(_ported_dir(name).iterdir()):
            return name, _ported_dir(name)
    for name in names:
        if local_file(entry(name, table)):
            return name, get(name, table)
    return names[0], get(names[0], table)


def _imagenet_names(arch: str, include_top: bool) -> list[str]:
    """The registered ImageNet sets for ``arch``: without include_top the small notop file comes first."""
    a = architecture(arch)
    names = [n for n in ([a.imagenet_notop] if not include_top else []) + [a.imagenet] if n in registry()]
    if not names:
        raise ValueError(f"no ImageNet weights registered for {arch}")
    return names


def _identity(path: Path) -> tuple:
    """What changes when the file (or any file of a checkpoint directory) is replaced."""
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return tuple((str(f), st.st_size, st.st_mtime_ns) for f in files if (st := f.stat()))


_MEMORY: dict[tuple, dict] = {}  # ported variables by (arch, include_top, file identity): one entry per set


def pretrained_variables(arch: str, weights: str | os.PathLike, include_top: bool) -> dict:
    """``{"params": ..., ["batch_stats": ...]}`` (NumPy float32) for ``arch`` from ``"imagenet"``, a
    registered name (``"vgg16_torchvision"``) or a file path. Eager: call it outside ``jit``.

    Registered sets are ported once and saved under ``$MINICNN_HOME/ported/<name>``, which later
    processes load; a damaged ported directory is reported and the source file ported again. Kept
    in memory while the file on disk is unchanged (size and modification time).
    """
    weights = os.fspath(weights)
    if weights == "imagenet" or weights in registry():
        names = _imagenet_names(arch, include_top) if weights == "imagenet" else [weights]
        name, path = _registered_file(names)
    else:
        name, path = None, Path(weights)
        if not path.exists():
            raise FileNotFoundError(f"no weight file at {path}; weights is \"imagenet\", a registered name "
                                    f"({', '.join(registry())}) or a file path")
    key = (arch, include_top, _identity(path))
    if key not in _MEMORY:
        _MEMORY.clear()  # one set at a time: VGG16 with its top is 528 MB
        _MEMORY[key] = _read(arch, name, path, include_top)
    return _MEMORY[key]


pretrained_variables.cache_clear = _MEMORY.clear  # as functools.lru_cache: forget what is in memory


def _read(arch: str, name: str | None, path: Path, include_top: bool) -> dict:
    if name is not None and path == _ported_dir(name):
        try:
            return conform(port_file(path, arch)[0], arch, include_top, f"{name} ({path})")
        except (OSError, ValueError, KeyError) as e:
            warnings.warn(f"the ported copy of {name} at {path} is damaged ({e}); porting the source file again",
                          stacklevel=3)
            path = get(name, registry())
    variables, _ = port_file(path, arch)
    if name is not None:
        _save_ported(variables, name)
    return conform(variables, arch, include_top, f"{name} ({path})" if name else str(path))


def _save_ported(variables: dict, name: str) -> None:
    """Keep a ported copy so later processes skip porting; the cache is an optimisation, so a folder
    minicnn may not overwrite is reported, not fatal."""
    try:
        store.save(variables, _ported_dir(name))
    except (OSError, ValueError) as e:
        warnings.warn(f"could not cache the ported {name}: {e}", stacklevel=4)


def port(file: str | os.PathLike, arch: str | None = None, out: str | os.PathLike | None = None) -> Path:
    """Port ``file`` to a minicnn checkpoint (``minicnn weights port FILE``); returns its directory.

    ``out`` defaults to ``$MINICNN_HOME/ported/<file stem>``; load it with ``VGG16(weights=out)``
    or :func:`minicnn.weights.load`. The variables are checked against ``arch`` before saving.
    """
    file = Path(file)
    variables, arch = port_file(file, arch)
    has_top = all(layer in variables["params"] for layer in _top_layers(arch))
    checked = conform(variables, arch, has_top, str(file))
    out = Path(out) if out else _ported_dir(file.name.split(".")[0])
    return store.save(checked, out)


def list_weights(table: Mapping | None = None) -> list[dict]:
    """Rows for ``minicnn weights list``: each registered set and what is on disk for it."""
    table = registry() if table is None else table
    rows = []
    for name in table:
        e = entry(name, table)
        cached = local_file(e)
        rows.append({"name": name, "arch": e["arch"], "include_top": e["include_top"], "format": e["format"],
                     "size": e.get("size"), "preprocessing": e["preprocessing"], "license": e.get("license"),
                     "source": e.get("url") or f"pypi:{e.get('package')}",
                     "cached": str(cached) if cached else None,
                     "ported": str(_ported_dir(name)) if _ported_dir(name).exists() else None})
    return rows
