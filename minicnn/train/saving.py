"""Whole-model save and load: Keras' ``model.save(path)`` and ``keras.models.load_model(path)``.

A saved model is a train checkpoint (:mod:`minicnn.train.checkpoint`'s layout, written by
:func:`minicnn.weights.store.save`: atomic, checksummed, marked as minicnn's) whose marker also holds

- ``model``: the architecture as JSON, ``{"class": "minicnn.layers.Dense", "config": {"units": 32, ...}}``,
  recursively for a ``Sequential``'s layers and for models held in fields. Only minicnn's own classes
  (``minicnn.layers`` and ``minicnn.models.*``, public ``nn.Module`` subclasses) are rebuilt from it:
  an allow-list, never an arbitrary import, never a pickle;
- ``compile``: the loss, optimizer (with its keyword arguments) and metrics when they are names.

:func:`minicnn.load_model` (``Trainer.restore(path)``) rebuilds the model and returns a ready
``Trainer`` (Keras returns a compiled model that can ``fit``, ``evaluate`` and ``predict``; the
Trainer is that here). A model that cannot be described this way (a class of your own, a callable
in a field) is still saved with its weights, and loading without ``model=`` says why it cannot
rebuild it. This module reads and writes; the Trainer (one layer above) puts the pieces together.

It also imports what Keras 3 writes for a ``Sequential`` of the layers minicnn has (the lecture's
small convnet): a ``.keras`` file (architecture, weights, compile arguments) or a ``.weights.h5``
with ``model=``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import flax.linen as nn
import numpy as np

from minicnn import inspector, layers as L
from minicnn.train import checkpoint
from minicnn.weights import keras_h5, store

__all__ = ["save", "read_saved", "read_keras", "is_keras_file", "model_config", "from_config", "from_keras_config",
           "compile_config", "check_path", "UnsavableModel", "KERAS_SUFFIXES"]

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")  # Keras' files; a minicnn model is a directory
_ALLOWED_MODULE = re.compile(r"minicnn\.(layers|models\.[a-z][a-z0-9_]*)")
_MAX_DEPTH = 16  # nested models; deeper JSON is refused before recursion gets costly
_MAX_KERAS_CONFIG = 16 << 20  # bytes of a .keras file's config.json
_MAX_KERAS_WEIGHTS = 4 << 30  # bytes of a .keras file's model.weights.h5 once extracted


class UnsavableModel(TypeError):
    """The module's configuration cannot be written as JSON of minicnn classes (the reason says where)."""


# ------------------------------------------------------------------ architecture <-> JSON
def _fields(module: nn.Module) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(module) if f.init and f.name not in ("parent", "name")]


def _encode(value, where: str):
    """A field's value as JSON: scalars, strings, tuples (as lists), dtypes, minicnn modules."""
    if isinstance(value, nn.Module):
        return model_config(value, where)
    if isinstance(value, L._Opaque) or isinstance(value, (tuple, list)):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.dtype, type)) and _is_dtype(value):
        return {"dtype": np.dtype(value).name}
    raise UnsavableModel(f"{where} is a {type(value).__name__} ({value!r}), which minicnn cannot write as "
                         "JSON (only names, numbers, tuples, dtypes and minicnn modules)")


def _is_dtype(value) -> bool:
    try:
        np.dtype(value)
    except TypeError:
        return False
    return True


def model_config(module: nn.Module, where: str = "model") -> dict:
    """``{"class": "minicnn.layers.Dense", "config": {field: value}, "name": ...}`` for a minicnn module.

    Fields equal to their default are left out (the initialisers, mostly). Raises
    :class:`UnsavableModel` naming the field for a class outside minicnn or a value that is not JSON."""
    cls = type(module)
    path = f"{cls.__module__}.{cls.__qualname__}"
    if _class(path, where) is not cls:
        raise UnsavableModel(f"{where} is a {path}, not one of minicnn's layers or models")
    config = {}
    for field in _fields(module):
        value = getattr(module, field.name)
        default = field.default if field.default is not dataclasses.MISSING else dataclasses.MISSING
        if default is not dataclasses.MISSING and _same(value, default):
            continue
        config[field.name] = _encode(value, f"{where}.{field.name}")
    out = {"class": path, "config": config}
    if module.name is not None:
        out["name"] = module.name
    return out


def _same(value, default) -> bool:
    try:
        return bool(value is default or value == default)
    except Exception:  # an array-valued field: compare by identity only
        return False


def _class(path, where: str) -> type:
    """The minicnn class ``path`` names, imported only from the allow-list."""
    module_name, _, name = str(path).rpartition(".")
    if not _ALLOWED_MODULE.fullmatch(module_name) or not name.isidentifier() or name.startswith("_"):
        raise UnsavableModel(f"{where}: {path!r} is not one of minicnn's layers or models (only classes of "
                             "minicnn.layers and minicnn.models are rebuilt)")
    try:
        cls = getattr(importlib.import_module(module_name), name, None)
    except ImportError:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__ == module_name):
        raise UnsavableModel(f"{where}: {path!r} is not one of minicnn's layers or models")
    return cls


def _decode(value, where: str, depth: int):
    if depth > _MAX_DEPTH:
        raise ValueError(f"{where}: nested more than {_MAX_DEPTH} deep")
    if isinstance(value, list):
        return tuple(_decode(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
    if isinstance(value, dict) and set(value) == {"dtype"}:
        return np.dtype(str(value["dtype"]))
    if isinstance(value, dict):
        return from_config(value, where, depth + 1)
    return value


def from_config(config: Mapping, where: str = "model", depth: int = 0) -> nn.Module:
    """The module :func:`model_config` describes. Raises ValueError naming ``where`` and the entry
    for a class outside the allow-list, an unknown field or a value the class refuses."""
    if not isinstance(config, Mapping) or not isinstance(config.get("config"), Mapping) or "class" not in config:
        raise ValueError(f"{where}: expected {{'class': ..., 'config': {{...}}}}, got {str(config)[:80]}")
    try:
        cls = _class(config["class"], where)
    except UnsavableModel as e:
        raise ValueError(str(e)) from None
    known = {f.name for f in _fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = sorted(set(config["config"]) - known)
    if unknown:
        raise ValueError(f"{where}: {config['class']} has no fields {unknown} (saved by another minicnn version?)")
    kwargs = {k: _decode(v, f"{where}.{k}", depth) for k, v in config["config"].items()}
    if cls is L.Sequential and "layers" in kwargs:
        kwargs["layers"] = list(kwargs["layers"])
    try:
        return cls(**kwargs, name=config.get("name"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {config['class']}(**config) fails: {e}") from None


# ------------------------------------------------------------------ save
def compile_config(loss, optimizer, optimizer_kwargs, metrics, from_logits: bool) -> dict:
    """The compile arguments as JSON, each None where it is an object rather than a name."""
    try:
        json.dumps(optimizer_kwargs)
    except TypeError:
        optimizer = None  # a schedule or other object among the optimizer's arguments
    named = isinstance(optimizer, str)
    return {"loss": loss if isinstance(loss, str) else None, "from_logits": from_logits,
            "optimizer": optimizer if named else None, "optimizer_kwargs": optimizer_kwargs if named else None,
            "metrics": list(metrics) if all(isinstance(m, str) for m in metrics) else None}


def check_path(path) -> Path | store.Manager:
    """``path`` as a Path (or the :class:`~minicnn.weights.store.Manager` given); a model or a Keras
    file name (``x.h5``, ``x.keras``) is refused, naming what to do."""
    if isinstance(path, store.Manager):
        return path
    if isinstance(path, nn.Module):
        raise TypeError("Trainer.save(path): got a model; pass the directory to write")
    path = Path(path)
    if path.name.lower().endswith(KERAS_SUFFIXES):
        raise ValueError(f"Trainer.save({str(path)!r}): minicnn saves a model as a directory (architecture, "
                         f"weights, optimizer state, history), not as a Keras {path.suffix} file; name it without "
                         f"the {path.suffix} suffix (e.g. {str(path.with_suffix(''))!r}) and load it with "
                         "minicnn.load_model")
    return path


def save(path: str | os.PathLike | store.Manager, model: nn.Module, state: Mapping, flat_mask: Mapping,
         epoch: int, history, compile: Mapping, fingerprint: str | None = None, data_seed: int | None = None,
         input_shape: tuple[int, ...] | None = None, data_state: dict | None = None) -> Path:
    """Write the directory ``path`` atomically and return its absolute path: ``model``'s architecture
    (when it is minicnn's), the train ``state``, the mask, ``epoch``, ``history`` and the
    :func:`compile_config`; given a :class:`~minicnn.weights.store.Manager`, as its step ``epoch``.
    The arrays and the other metadata are :func:`minicnn.train.checkpoint.contents`', so
    ``Trainer.restore(path, model)`` and older readers read it too."""
    path = check_path(path)
    try:
        architecture, unsavable = model_config(model), None
    except UnsavableModel as e:
        architecture, unsavable = None, str(e)
    tree, metadata = checkpoint.contents(state, flat_mask, epoch, history, fingerprint=fingerprint,
                                         data_seed=data_seed, input_shape=input_shape, data_state=data_state,
                                         model=architecture, unsavable=unsavable, compile=dict(compile))
    if isinstance(path, store.Manager):
        values = history.history.get(path.monitor) if path.monitor else None
        return path.save(int(epoch), tree, metadata, metric=values[-1] if values else None)
    return store.save(tree, path, metadata=metadata)


# ------------------------------------------------------------------ load
def is_keras_file(path) -> bool:
    """Whether ``path`` names a file (not a minicnn directory): Keras' ``.keras``/``.weights.h5`` or a foreign one."""
    return isinstance(path, (str, os.PathLike)) and Path(path).is_file()


def read_saved(path: str | os.PathLike, model: nn.Module | None) -> tuple[nn.Module, dict]:
    """``(model, compile arguments)`` of the directory ``Trainer.save`` wrote: ``model`` if given, else
    rebuilt from the saved architecture; the compile arguments that were names (none for a checkpoint
    written before they were saved: the caller's ``load`` then checks the directory itself)."""
    path = Path(path)
    marker = store.read_marker(path)  # None without a marker, a missing path included
    metadata = (marker or {}).get("metadata", {})
    if model is None and (marker is None or metadata.get("kind") != checkpoint.KIND):
        if marker is None and not path.exists():
            raise FileNotFoundError(f"{path} does not exist (expected a directory written by Trainer.save)")
        raise ValueError(f"{path} is not a model saved by minicnn (Trainer.save writes a directory with "
                         f"{store.MARKER}; a Keras model is a .keras file)")
    if model is None:
        if metadata.get("model") is None:
            reason = metadata.get("unsavable") or "written before minicnn saved architectures"
            raise ValueError(f"{path} holds weights but no architecture ({reason}); build the model in code "
                             f"and call Trainer.restore({str(path)!r}, model)")
        model = from_config(metadata["model"], f"{path}: model")
    return model, {k: v for k, v in (metadata.get("compile") or {}).items() if v is not None}


def read_keras(path: str | os.PathLike, model: nn.Module | None) -> tuple[nn.Module, dict, dict]:
    """``(model, compile arguments, variables)`` of a Keras 3 ``.keras`` file (the model rebuilt from
    its config unless given) or of a ``.weights.h5`` for ``model``."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            config = json.loads(_zip_member(archive, path, "config.json", _MAX_KERAS_CONFIG))
            model = model if model is not None else from_keras_config(config, path)
            with tempfile.TemporaryDirectory() as tmp:
                weights = Path(tmp) / "model.weights.h5"
                weights.write_bytes(_zip_member(archive, path, "model.weights.h5", _MAX_KERAS_WEIGHTS))
                return model, _keras_compile(config), _keras_variables(weights, model, path)
    if path.name.endswith(".weights.h5") and model is not None:
        return model, {}, _keras_variables(path, model, path)
    raise ValueError(f"{path} is a file, neither a Keras 3 .keras archive nor a .weights.h5 given with its model; "
                     "a minicnn model is a directory written by Trainer.save")


def _zip_member(archive: zipfile.ZipFile, path: Path, name: str, limit: int) -> bytes:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ValueError(f"load_model: {path} has no {name}; is it a Keras 3 .keras file?") from None
    if info.file_size > limit:
        raise ValueError(f"load_model: {path}: {name} declares {info.file_size} bytes, more than {limit}")
    with archive.open(info) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"load_model: {path}: {name} inflates to more than {limit} bytes")
    return data


# Keras config entries minicnn accepts only at these values (they change what is computed).
_KERAS_FIXED = {"data_format": "channels_last", "groups": 1, "kernel_regularizer": None, "bias_regularizer": None,
                "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None,
                "depthwise_regularizer": None, "pointwise_regularizer": None, "depthwise_constraint": None,
                "pointwise_constraint": None, "beta_regularizer": None, "gamma_regularizer": None,
                "beta_constraint": None, "gamma_constraint": None, "noise_shape": None, "lora_rank": None,
                "synchronized": False, "renorm": False, "axis": -1}
# Keras config entries that change nothing in minicnn's forward pass or in loading weights.
_KERAS_IGNORED = {"name", "dtype", "seed", "kernel_initializer", "bias_initializer", "depthwise_initializer",
                  "pointwise_initializer", "beta_initializer", "gamma_initializer", "moving_mean_initializer",
                  "moving_variance_initializer", "lora_alpha", "quantization_config"}


def from_keras_config(config: Mapping, where="config") -> L.Sequential:
    """The minicnn ``Sequential`` of a Keras 3 ``Sequential``'s config (``config.json`` of a ``.keras``).

    Each layer's class must be one of :mod:`minicnn.layers` and each of its entries a minicnn field,
    an entry that changes nothing here (initialisers, dtype policy float32) or at the one value minicnn
    computes (``data_format="channels_last"``, no regularizers): anything else is an error naming it."""
    if config.get("class_name") != "Sequential" or not isinstance(config.get("config", {}).get("layers"), list):
        raise ValueError(f"{where}: only a Keras Sequential can be imported, got {config.get('class_name')!r}")
    layers, input_shape = [], None
    for i, layer in enumerate(config["config"]["layers"]):
        kind, cfg = layer.get("class_name"), dict(layer.get("config") or {})
        at = f"{where}: layer {i} ({cfg.get('name', kind)})"
        if kind == "InputLayer":
            input_shape = tuple(cfg.get("batch_shape") or [None, *cfg.get("batch_input_shape", [])])[1:]
            continue
        cls = getattr(L, str(kind), None) if kind in L.__all__ and kind != "Sequential" else None
        if cls is None or not isinstance(cls, type):
            raise ValueError(f"{at}: Keras {kind} has no minicnn layer (minicnn has {', '.join(L.__all__[:19])})")
        dtype = cfg.get("dtype")
        dtype = dtype.get("config", {}).get("name") if isinstance(dtype, Mapping) else dtype
        if dtype not in (None, "float32"):
            raise ValueError(f"{at}: dtype policy {dtype!r}; minicnn imports float32 models")
        fields = {f.name for f in _fields(cls)}
        kwargs = {}
        for key, value in cfg.items():
            if key in _KERAS_IGNORED:
                continue
            if key in fields:
                kwargs[key] = tuple(value) if isinstance(value, list) else value
            elif key in _KERAS_FIXED:
                if value != _KERAS_FIXED[key]:
                    raise ValueError(f"{at}: {key}={value!r}; minicnn computes only {key}={_KERAS_FIXED[key]!r}")
            else:
                raise ValueError(f"{at}: Keras argument {key}={value!r} has no minicnn equivalent")
        layers.append(cls(**kwargs, name=cfg.get("name")))
    return L.Sequential(layers, input_shape=input_shape, trainable=config["config"].get("trainable", True),
                        name=config["config"].get("name"))


def _keras_compile(config: Mapping) -> dict:
    """The loss, optimizer (with its learning rate) and metrics of a .keras file's compile_config, where
    they are names."""
    compile_config = config.get("compile_config") or {}
    out = {}
    if isinstance(compile_config.get("loss"), str):
        out["loss"] = compile_config["loss"]
    optimizer = compile_config.get("optimizer")
    if isinstance(optimizer, str):
        out["optimizer"] = optimizer
    elif isinstance(optimizer, Mapping) and isinstance(optimizer.get("class_name"), str):
        out["optimizer"] = optimizer["class_name"].lower()
        rate = (optimizer.get("config") or {}).get("learning_rate")
        if isinstance(rate, (int, float)):
            out["optimizer_kwargs"] = {"learning_rate": float(rate)}
    metrics = compile_config.get("metrics")
    if isinstance(metrics, list) and all(isinstance(m, str) for m in metrics):
        out["metrics"] = metrics
    return out


def _keras_variables(weights: Path, model: nn.Module, where: Path) -> dict:
    """The variables of ``model`` (a Sequential) from a Keras 3 ``.weights.h5``, checked against its shapes."""
    if not isinstance(model, L.Sequential):
        raise ValueError(f"load_model: {where}: Keras weights are imported into a minicnn Sequential only")
    layers = [(name, L.keras_name(type(layer).__name__)) for name, layer in zip(model.layer_names(), model.layers)
              if L.keras_name(type(layer).__name__) in keras_h5._KERAS3_ROLES]
    variables = keras_h5.read_keras3_weights(weights, layers)
    shape = model.input_shape
    if shape is not None:
        checkpoint.check_model(where, variables, inspector.abstract_variables(model, tuple(shape)))
    return variables
