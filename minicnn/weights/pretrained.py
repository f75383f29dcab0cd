"""Pretrained variables as data: ``minicnn.pretrained(name)`` and ``minicnn.init(model, key, x)``.

A minicnn model is architecture only; its ``init`` never reads a file. The weights a module asks for
with ``weights="imagenet"`` (or a registered name, or a file) are ported eagerly here, outside any
JAX transformation, and grafted into the fresh variables at the module's path.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Mapping
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from minicnn import inspector, ops
from minicnn.models.registry import architecture, pretrained_names
from minicnn.weights.imagenet import preprocess_input
from minicnn.weights.port import pretrained_variables
from minicnn.weights.registry import registry

__all__ = ["Pretrained", "pretrained", "init", "graft", "preprocessing"]


class Pretrained(NamedTuple):
    """``model, variables, preprocess = minicnn.pretrained("vgg16")``."""
    model: nn.Module
    variables: dict
    preprocess: Callable  # RGB in [0, 255], (N, H, W, 3) -> the model's input


def preprocessing(arch: str, weights: str | os.PathLike = "imagenet") -> str:
    """The ``preprocess_input`` mode the weight set was trained with (``"caffe"``, ``"torch"``, ``"tf"``).

    A registered set says it in ``weights/registry.json``; a file path is assumed to hold the
    architecture's ImageNet weights' convention.
    """
    table = registry()
    name = os.fspath(weights)
    if name not in table:
        name = architecture(arch).imagenet
    return table[name]["preprocessing"]


def pretrained(name: str = "efficientnet_lite0", include_top: bool = True, weights: str | os.PathLike = "imagenet",
               **kwargs) -> Pretrained:
    """A ready pretrained network: ``model.apply(variables, preprocess(x))`` on RGB ``x`` in [0, 255].

    name: an architecture of the registry with weights (``vgg16``, ``vgg19``, ``efficientnet_lite0``).
    weights: ``"imagenet"`` (cache, installed package or download), a registered name or a file.
    kwargs: the Keras application arguments (``input_shape``, ``pooling``, ``classes``, ...).
    Variables are NumPy float32 arrays, ported once and cached (see :mod:`minicnn.weights.port`).
    """
    a = architecture(name)
    if not a.pretrained:
        raise ValueError(f"{name!r} has no pretrained weights; choose from {', '.join(pretrained_names())}")
    model = a.build(include_top=include_top, weights=weights, **kwargs)
    size = a.input_size
    variables = init(model, jax.random.key(0), jnp.zeros((1, *(model.input_shape or (size, size, 3))), jnp.float32))
    return Pretrained(model, variables, functools.partial(preprocess_input, mode=preprocessing(name, weights)))


@functools.lru_cache(maxsize=32)
def _jitted_init(model: nn.Module, kwargs: tuple):
    # jitted: an eager init compiles every op on its own (23 s instead of 2 s for EfficientNet-Lite0); run once, so
    # compiled without XLA's backend optimisations (frozen VGG16 + head: 84.6 s -> 31.5 s compile and run)
    return ops.jit(lambda rngs, x: model.init(rngs, x, **dict(kwargs)), run_once=True)


def init(model: nn.Module, rngs, x, **kwargs) -> dict:
    """``model.init(rngs, x, **kwargs)`` with the pretrained variables of every module that asks for them.

    x: (N, H, W, C) float32, an example input. A module with ``weights`` set (``VGG16(weights="imagenet")``,
    alone or inside a ``Sequential``) gets the ported variables at its path; every other layer (a new head)
    is initialised from ``rngs`` as ``model.init`` would. Porting happens here, eagerly; the shapes are
    checked leaf by leaf against the model's.
    """
    shapes = inspector.abstract_variables(model, x)
    found = _weighted(model, shapes, x)
    if found and found[0][0] == ():  # the model itself is pretrained: no random initialisation to compile
        whole = _whole(shapes, pretrained_variables(model.arch, model.weights, model.include_top))
        if whole is not None:
            return whole
    with warnings.catch_warnings():  # this function loads the weights the warning says are missing
        warnings.simplefilter("ignore", UserWarning)
        variables = jax.device_get(_jitted_init(model, tuple(sorted(kwargs.items())))(rngs, x))
    for path, module in found:
        loaded = pretrained_variables(module.arch, module.weights, module.include_top)
        variables = graft(variables, path, loaded, f"{module.arch}(weights={module.weights!r})")
    return variables


def _whole(shapes, loaded: Mapping) -> dict | None:
    """``loaded`` when it holds exactly the model's variables (same paths, shapes), cast to their dtypes;
    None when the model has more (e.g. a top the weights lack), which the graft then reports."""
    want = traverse_util.flatten_dict(dict(shapes))
    have = traverse_util.flatten_dict(dict(loaded))
    if want.keys() != have.keys() or any(tuple(want[k].shape) != np.shape(have[k]) for k in want):
        return None
    return traverse_util.unflatten_dict({k: np.asarray(have[k], want[k].dtype) for k in want})


def _weighted(model: nn.Module, variables, x) -> list[tuple[tuple[str, ...], nn.Module]]:
    """``(path, module)`` of every module with ``weights`` set, the model itself included."""
    found = [((), model)] if getattr(model, "weights", None) is not None else []
    for info in inspector.layer_infos(model, variables, x):
        if getattr(info.module, "weights", None) is not None:
            found.append((tuple(info.path.split("/")), info.module))
    return found


def graft(variables: Mapping, path: tuple[str, ...], loaded: Mapping, where: str = "graft") -> dict:
    """``variables`` with ``loaded``'s collections placed at ``path`` (``("vgg16",)``; ``()`` for the
    whole model). Every leaf of ``loaded`` must exist in ``variables`` with the same shape; the error
    names the first that does not (``where`` prefixes it)."""
    fresh = traverse_util.flatten_dict(dict(variables))
    for leaf_path, value in traverse_util.flatten_dict(dict(loaded)).items():
        target = (leaf_path[0], *path, *leaf_path[1:])
        if target not in fresh:
            raise ValueError(f"{where}: {'/'.join(target)} is in the weights but not in the model")
        if np.shape(fresh[target]) != np.shape(value):
            raise ValueError(f"{where}: {'/'.join(target)} has shape {np.shape(value)} in the weights, "
                             f"the model needs {np.shape(fresh[target])}")
        fresh[target] = np.asarray(value, np.asarray(fresh[target]).dtype)
    return traverse_util.unflatten_dict(fresh)
