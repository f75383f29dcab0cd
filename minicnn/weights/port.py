"""Port a weight file to minicnn variables, check it against the model, cache it with orbax.

``pretrained_variables(arch, weights, include_top)`` is what ``VGG16(weights=...)`` and
``EfficientNetLite0(weights=...)`` call while initialising: ``weights`` is ``"imagenet"`` or a
path (legacy Keras ``.h5``, Keras 3 ``.weights.h5``, PyTorch ``.pth``, or a directory written by
:func:`minicnn.weights.save`). Every layer the model has must be in the file with the right
shapes; the error names the layer, the expected and the actual shape.
"""

from __future__ import annotations

import functools
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from minicnn.weights import keras_h5, store, torch_layouts, torch_pth
from minicnn.weights.fetch import get, local_file
from minicnn.weights.registry import entry, home, registry

__all__ = ["pretrained_variables", "port", "port_file", "list_weights", "detect_format", "ARCHS"]

ARCHS = ("vgg16", "vgg19", "efficientnet_lite0")
TOP_LAYERS = {"vgg16": ("fc1", "fc2", "predictions"), "vgg19": ("fc1", "fc2", "predictions"),
              "efficientnet_lite0": ("predictions",)}
INPUT = (1, 224, 224, 3)  # the ImageNet size: the VGG top's fc1 depends on it


def _model(arch: str, include_top: bool):
    from minicnn import models
    builders = {"vgg16": models.VGG16, "vgg19": models.VGG19, "efficientnet_lite0": models.EfficientNetLite0}
    if arch not in builders:
        raise ValueError(f"unknown architecture {arch!r}; minicnn ports {', '.join(ARCHS)}")
    return builders[arch](include_top=include_top)


@functools.lru_cache(maxsize=None)
def _expected(arch: str, include_top: bool):
    """(shapes {collection: {layer: {leaf: shape}}}, weighted layers [(name, keras kind)] in call order)."""
    import flax.linen as nn
    import jax

    from minicnn.layers import BatchNormalization, Conv2D, Dense, DepthwiseConv2D, keras_name

    order = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, (Conv2D, DepthwiseConv2D, Dense,
                                                                       BatchNormalization)):
            order.append((module.name, keras_name(type(module).__name__)))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        shapes = jax.eval_shape(_model(arch, include_top).init, jax.random.key(0),
                                jax.ShapeDtypeStruct(INPUT, np.float32))
    shapes = jax.tree_util.tree_map(lambda s: tuple(s.shape), dict(shapes))
    return shapes, tuple(order)


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
            have = {k: v for k, v in have.items() if k not in TOP_LAYERS[arch]}
        extra = sorted(set(have) - set(layers))
        if extra:
            raise ValueError(f"{where}: layers {', '.join(extra)} in {collection} are not in {arch} "
                             f"(include_top={include_top})")
        out[collection] = {}
        for layer, leaves in layers.items():
            if layer not in have:
                hint = " (the file has no top: use include_top=False)" if layer in TOP_LAYERS[arch] else ""
                raise ValueError(f"{where}: layer {layer} of {arch} is missing from {collection}; "
                                 f"expected {dict(leaves)}{hint}")
            out[collection][layer] = {}
            for leaf, shape in leaves.items():
                value = have[layer].get(leaf)
                if value is None:
                    raise ValueError(f"{where}: layer {layer} has no {leaf}; expected shape {shape}")
                # a top's shapes depend on the input size and classes: its initialisers check them
                if layer not in TOP_LAYERS[arch] and tuple(np.shape(value)) != shape:
                    raise ValueError(f"{where}: layer {layer} {leaf}: expected shape {shape}, "
                                     f"got {tuple(np.shape(value))}")
                out[collection][layer][leaf] = np.asarray(value, np.float32)
    return out


def detect_format(path: Path) -> str:
    """``"orbax"`` (a minicnn checkpoint directory), ``"keras_h5"``, ``"keras3_weights"`` or ``"torch_pth"``."""
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
    with open(path, "rb") as f:
        head = f.read(2)
    if zipfile.is_zipfile(path) or head[:1] == b"\x80":  # zip archive or pickle protocol >= 2
        return "torch_pth"
    raise ValueError(f"{path}: not a weight file minicnn can read (expected a Keras .h5/.weights.h5, "
                     f"a PyTorch .pth, or a directory written by minicnn.weights.save)")


def _detect_arch(names) -> str:
    names = set(names)
    if {"_conv_stem.weight", "stem_conv"} & names:
        return "efficientnet_lite0"
    if "block5_conv4" in names or "features.34.weight" in names:
        return "vgg19"
    if "block1_conv1" in names or "features.0.weight" in names:
        return "vgg16"
    raise ValueError(f"cannot tell the architecture from layers {sorted(names)[:5]}...; pass arch= "
                     f"(one of {', '.join(ARCHS)})")


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
    elif fmt == "keras3_weights":
        layers = keras_h5.keras3_layers(path)  # [(kind, name, model)], nested models included
        if arch is None:
            n_conv = sum(kind == "conv2d" for kind, _, _ in layers)
            arch = {13: "vgg16", 16: "vgg19"}.get(n_conv) or _detect_arch(name for _, name, _ in layers)
        base = next((model for kind, _, model in layers if kind == "conv2d"), "layers")
        has_top = any(kind == "dense" and model == base for kind, _, model in layers)  # not a head on a nested base
        variables = keras_h5.read_keras3_weights(path, _expected(arch, has_top)[1])
    else:
        state = torch_pth.read_pth(path)
        arch = arch or _detect_arch(state)
        if arch == "efficientnet_lite0":
            variables = torch_layouts.from_efficientnet_lite(state, "_fc.weight" in state, where)
        else:
            variables = torch_layouts.from_torchvision_vgg(state, arch, "classifier.0.weight" in state, where)
    return variables, arch


def _ported_dir(name: str) -> Path:
    return home() / "ported" / name


def _registered_file(names: list[str]) -> tuple[str, Path]:
    """The first of ``names`` already ported, else already on disk, else the first one fetched."""
    table = registry()
    for name in names:
        if _ported_dir(name).exists():
            return name, _ported_dir(name)
    for name in names:
        if local_file(entry(name, table)):
            return name, get(name, table)
    return names[0], get(names[0], table)


def _imagenet_names(arch: str, include_top: bool) -> list[str]:
    """The registered ImageNet sets for ``arch``: without include_top the small notop file comes first."""
    table = registry()
    names = [n for n in ([f"{arch}_imagenet_notop"] if not include_top else []) + [f"{arch}_imagenet"]
             if n in table]
    if not names:
        raise ValueError(f"no ImageNet weights registered for {arch}")
    return names


@functools.lru_cache(maxsize=4)
def pretrained_variables(arch: str, weights: str, include_top: bool) -> dict:
    """``{"params": ..., ["batch_stats": ...]}`` for ``arch`` from ``"imagenet"``, a registered
    name (``"vgg16_torchvision"``) or a file path.

    Registered sets are ported once and saved under ``$MINICNN_HOME/ported/<name>``, which later
    processes load with orbax. Cached in memory per arguments.
    """
    weights = str(weights)
    if weights == "imagenet" or weights in registry():
        names = _imagenet_names(arch, include_top) if weights == "imagenet" else [weights]
        name, path = _registered_file(names)
        variables, _ = port_file(path, arch)
        if not path.is_dir():
            store.save(variables, _ported_dir(name))
        where = f"{name} ({path})"
    else:
        variables, _ = port_file(weights, arch)
        where = weights
    return conform(variables, arch, include_top, where)


def port(file: str | os.PathLike, arch: str | None = None, out: str | os.PathLike | None = None) -> Path:
    """Port ``file`` to a minicnn checkpoint (``minicnn weights port FILE``); returns its directory.

    ``out`` defaults to ``$MINICNN_HOME/ported/<file stem>``; load it with ``VGG16(weights=out)``
    or :func:`minicnn.weights.load`. The variables are checked against ``arch`` before saving.
    """
    file = Path(file)
    variables, arch = port_file(file, arch)
    has_top = all(layer in variables["params"] for layer in TOP_LAYERS[arch])
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
