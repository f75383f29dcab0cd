"""Read Keras HDF5 weight files into minicnn variables.

Two layouts:

* legacy HDF5 (Keras 1/2 ``save_weights(".h5")``, the published ``vgg16_weights_tf_dim_ordering_tf_kernels.h5``):
  root attribute ``layer_names``, one group per layer with a ``weight_names`` attribute. Weights
  are mapped by layer name and by role parsed from the weight name, whichever naming wrote it:
  ``block1_conv1_W_1:0`` (Keras 1), ``block1_conv1/kernel:0`` (Keras 2), ``block1_conv1/kernel`` (Keras 3).
* Keras 3 ``.weights.h5`` (``model.save_weights``): ``layers/<class>_<k>/vars/<i>``, groups named by
  layer class and creation order. Keras 3.x also records the layer name in the ``vars`` group's
  ``name`` attribute; when every name is one of the model's layers it is used, otherwise layers
  are matched by class and creation order. A nested model (``Sequential([VGG16(...), Flatten(),
  Dense(...)])``) keeps its layers under ``layers/<model>/layers/``; they are read in place.

Every dataset is checked before it is read: its bytes must be in this file (external storage,
virtual datasets and external links are refused) and the file must store as many bytes as its
shape declares (``MAX_INFLATION`` times that for compressed data), so a dataset that was never
written or is a decompression bomb is an error, not an allocation of gigabytes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping, Sequence

import h5py
import numpy as np

from minicnn.weights.torch_pth import MAX_INFLATION, CorruptWeightsError

__all__ = ["is_keras3_weights", "is_legacy_h5", "keras3_layers", "read_keras3_weights", "read_keras_h5"]

_ROLES = {"kernel": "kernel", "W": "kernel", "depthwise_kernel": "kernel", "bias": "bias", "b": "bias",
          "gamma": "gamma", "beta": "beta", "moving_mean": "moving_mean", "running_mean": "moving_mean",
          "moving_variance": "moving_variance", "running_std": "moving_variance",
          "pointwise_kernel": "pointwise_kernel"}
_STATS = ("moving_mean", "moving_variance")
# Keras 3 variable order per layer class (optional trailing ones may be absent: use_bias=False).
_KERAS3_ROLES = {"conv2d": ("kernel", "bias"), "depthwise_conv2d": ("kernel", "bias"),
                 "dense": ("kernel", "bias"), "separable_conv2d": ("depthwise_kernel", "pointwise_kernel", "bias"),
                 "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance")}
_MAX_NESTING = 8  # models inside models (Sequential([VGG16, ...]) is 1); HDF5 hard links can make cycles


def _weights_root(f: h5py.File):
    return f.get("model_weights", f)  # a whole-model .h5 nests the weights


def is_legacy_h5(f: h5py.File) -> bool:
    return "layer_names" in _weights_root(f).attrs


def is_keras3_weights(f: h5py.File) -> bool:
    return "layers" in f and "layer_names" not in f.attrs


def _text(v) -> str:
    return v.decode("utf8") if isinstance(v, bytes) else str(v)


def weight_role(layer: str, weight_name: str) -> str:
    """``block1_conv1_W_1:0 -> kernel``, ``block1_conv1/bias:0 -> bias``, ``bn/moving_mean -> moving_mean``."""
    name = re.sub(r":\d+$", "", weight_name.split("/")[-1])
    if name.startswith(layer + "_"):
        name = name[len(layer) + 1:]
    name = re.sub(r"_\d+$", "", name)
    if name not in _ROLES:
        raise ValueError(f"layer {layer}: cannot tell the role of weight {weight_name!r} "
                         f"(known: {sorted(_ROLES)})")
    return _ROLES[name]


def _read_dataset(f: h5py.File, group: h5py.Group, key: str, where: str) -> np.ndarray:
    """The numbers of dataset ``group[key]`` of the open file ``f``, once they are shown to be this
    file's bytes (no external storage, virtual dataset or link into another file) and the file stores
    as many bytes as the shape declares (``MAX_INFLATION`` times fewer when compressed)."""
    name = f"{group.name.rstrip('/')}/{key}"
    dset = group.get(key)
    if dset is None:
        raise CorruptWeightsError(f"{where}: dataset {name} is missing (or links to a missing file)")
    if not isinstance(dset, h5py.Dataset):
        raise CorruptWeightsError(f"{where}: {name} is a {type(dset).__name__}, not a dataset of weights")
    if os.path.realpath(dset.file.filename) != os.path.realpath(f.filename):
        raise CorruptWeightsError(f"{where}: dataset {name} is a link into {dset.file.filename}; "
                                  f"weights must be in the file itself")
    if dset.is_virtual:
        raise CorruptWeightsError(f"{where}: dataset {name} is a virtual dataset (its bytes are in other "
                                  f"files); weights must be in the file itself")
    if dset.external:
        raise CorruptWeightsError(f"{where}: dataset {name} keeps its bytes in external file "
                                  f"{dset.external[0][0]!r:.200}; weights must be in the file itself")
    if dset.shape is None or dset.dtype.kind not in "biuf":
        raise CorruptWeightsError(f"{where}: dataset {name} holds {dset.dtype} of shape {dset.shape}, not numbers")
    declared, stored = dset.size * dset.dtype.itemsize, dset.id.get_storage_size()
    inflation = MAX_INFLATION if dset.id.get_create_plist().get_nfilters() else 1
    if declared > inflation * stored or stored > os.path.getsize(f.filename):
        raise CorruptWeightsError(f"{where}: dataset {name} declares {dset.shape} {dset.dtype} ({declared} bytes) "
                                  f"but stores {stored} in a {os.path.getsize(f.filename)}-byte file: it was "
                                  f"never written, or the file is truncated, corrupt or a decompression bomb")
    try:
        return dset[()]
    except OSError as e:
        raise CorruptWeightsError(f"{where}: dataset {name} cannot be read: {e}") from None


def _put(variables: dict, layer: str, role: str, value: np.ndarray, where: str):
    tree = variables["batch_stats" if role in _STATS else "params"].setdefault(layer, {})
    if role in tree:
        raise ValueError(f"{where}: layer {layer} has two weights with role {role}")
    tree[role] = value


def read_keras_h5(path: str | os.PathLike) -> dict:
    """Legacy HDF5 weights -> ``{"params": {layer: {kernel, bias | gamma, beta}}, "batch_stats": ...}``."""
    variables: dict = {"params": {}, "batch_stats": {}}
    with h5py.File(path, "r") as f:
        root = _weights_root(f)
        if "layer_names" not in root.attrs:
            raise ValueError(f"{path}: not a legacy Keras HDF5 weight file (no layer_names attribute)")
        for layer in map(_text, root.attrs["layer_names"]):
            if layer not in root:
                raise ValueError(f"{path}: layer_names lists {layer} but the file has no group {layer}")
            group = root[layer]
            names = list(map(_text, group.attrs.get("weight_names", [])))
            try:
                roles = [weight_role(layer, wn) for wn in names]
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
            if "pointwise_kernel" in roles:  # a SeparableConv2D: its depthwise kernel keeps that name
                roles = ["depthwise_kernel" if r == "kernel" else r for r in roles]
            for wn, role in zip(names, roles):
                if wn not in group:
                    raise ValueError(f"{path}: layer {layer} lists weight {wn!r} but has no such dataset")
                _put(variables, layer, role, _read_dataset(f, group, wn, str(path)), str(path))
    return {k: v for k, v in variables.items() if v or k == "params"}


def _keras3_groups(f: h5py.File, path) -> list[tuple[str, str, tuple[str, int], str | None, list]]:
    """[(kind, group path, (model path, creation index), recorded layer name, [(vars group, key), ...])]
    for every layer with weights, the layers of nested models included."""
    out = []

    def walk(layers, model: str, depth: int):
        if depth > _MAX_NESTING:
            raise CorruptWeightsError(f"{path}: {model} nests models more than {_MAX_NESTING} deep")
        for group_name, group in layers.items():
            if isinstance(group, h5py.Group) and isinstance(group.get("layers"), h5py.Group):
                walk(group["layers"], f"{model}/{group_name}/layers", depth + 1)  # a model inside the model
            if not isinstance(group, h5py.Group) or "vars" not in group or not len(group["vars"]):
                continue
            m = re.fullmatch(r"(.*?)(?:_(\d+))?", group_name)
            kind, k = m.group(1), int(m.group(2) or 0)
            if kind not in _KERAS3_ROLES:
                raise ValueError(f"{path}: {model}/{group_name} is a {kind} layer, which minicnn cannot port "
                                 f"(known: {sorted(_KERAS3_ROLES)})")
            vars_ = [(group["vars"], str(i)) for i in range(len(group["vars"]))]
            name = group["vars"].attrs.get("name")
            out.append((kind, f"{model}/{group_name}", (model, k), None if name is None else _text(name), vars_))

    walk(f["layers"], "layers", 0)
    return out


def keras3_layers(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """``[(kind, recorded layer name or group name, model path), ...]`` for every layer with weights of a
    Keras 3 ``.weights.h5``, nested models included (``model path`` is ``layers`` at the top level)."""
    with h5py.File(path, "r") as f:
        return [(kind, name or group.rsplit("/", 1)[1], order[0])
                for kind, group, order, name, _ in _keras3_groups(f, path)]


def read_keras3_weights(path: str | os.PathLike, layers: Sequence[tuple[str, str]],
                        leaves: Mapping[str, Collection[str]] | None = None) -> dict:
    """Keras 3 ``.weights.h5`` -> minicnn variables for a model whose weighted layers, in call
    order, are ``layers = [(name, kind), ...]`` with kind a Keras class name (``"conv2d"``).
    ``leaves``: ``{layer: its leaf names}`` when a layer lacks some of its class's variables (the
    file stores them by position: InceptionV3's ``BatchNormalization(scale=False)`` has no gamma).

    Layers of the file absent from ``layers`` (a top the model does not have) are dropped only
    when they come after every matched layer of their kind; count mismatches raise naming both.
    """
    with h5py.File(path, "r") as f:
        if not is_keras3_weights(f):
            raise ValueError(f"{path}: not a Keras 3 .weights.h5 file (no layers/ group)")
        return _read_keras3_pairs(f, path, _keras3_groups(f, path), layers, leaves or {})


def _read_keras3_pairs(f: h5py.File, path, groups: list, layers: Sequence[tuple[str, str]],
                       leaves: Mapping[str, Collection[str]]) -> dict:
    """Match the file's groups to the model's layers (by recorded name, else by kind and creation
    order) and read the matched datasets only."""
    variables: dict = {"params": {}, "batch_stats": {}}
    names = {name for name, _ in layers}
    by_name = all(g[3] in names for g in groups)  # Keras 3.x records each layer's name
    if by_name:
        pairs = [(g[3], g) for g in groups if g[3] in names]
    else:
        pairs = []
        for kind in sorted({g[0] for g in groups} | {k for _, k in layers}):
            file_layers = sorted((g for g in groups if g[0] == kind), key=lambda g: g[2])
            model_layers = [n for n, k in layers if k == kind]
            if len(file_layers) < len(model_layers):
                raise ValueError(f"{path}: the model has {len(model_layers)} {kind} layers "
                                 f"({', '.join(model_layers)}), the file only {len(file_layers)}")
            pairs += list(zip(model_layers, file_layers))
    for layer, (kind, group_name, _, _, vars_) in pairs:
        roles = tuple(r for r in _KERAS3_ROLES[kind] if layer not in leaves or r in leaves[layer])
        if len(vars_) > len(roles):
            raise ValueError(f"{path}: {group_name} ({layer}) has {len(vars_)} variables, "
                             f"a {kind} has at most {len(roles)}")
        for role, (group, key) in zip(roles, vars_):
            _put(variables, layer, role, _read_dataset(f, group, key, str(path)), str(path))
    return {k: v for k, v in variables.items() if v or k == "params"}
