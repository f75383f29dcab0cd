"""minicnn: small-data image classification in JAX, Flax and optax, numerically matching Keras.

Importing minicnn does nothing but define names: subpackages load when first used, and no JAX backend
starts until a computation runs.
"""

import importlib

# eager: the submodule minicnn.summary would otherwise shadow the function minicnn.summary
from minicnn.summary import count_params, summary

from minicnn.version import __version__
__all__ = ["__version__", "layers", "ops", "models", "masks", "inspector", "data", "augment", "weights", "train", "transfer",
           "viz", "parallel", "nnx", "count_params", "summary", "pretrained", "init", "load_model"]

_FUNCTIONS = {"pretrained": "minicnn.weights.pretrained", "init": "minicnn.weights.pretrained",
              "load_model": "minicnn.train.trainer"}


def __getattr__(name):
    if name in _FUNCTIONS:
        return getattr(importlib.import_module(_FUNCTIONS[name]), name)
    if name in __all__:
        return importlib.import_module(f"minicnn.{name}")
    raise AttributeError(f"module 'minicnn' has no attribute {name!r}")
