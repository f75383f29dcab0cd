"""Pretrained weights: registry, download and cache, porters, checkpoints, ImageNet utilities.

``minicnn.pretrained("vgg16", include_top=False)`` and ``minicnn.init(model, key, x)`` return ported
ImageNet variables (downloaded, checked and cached on first use) as plain data; ``save(variables, path)``
and ``load(path)`` keep any nested dict of arrays. See docs/WEIGHTS.md.
"""

from minicnn.weights.fetch import WeightsUnavailableError, fetch, get
from minicnn.weights.imagenet import decode_predictions, preprocess_input
from minicnn.weights.port import list_weights, port, port_file, pretrained_variables
from minicnn.weights.pretrained import Pretrained, graft, init, pretrained, preprocessing
from minicnn.weights.registry import registry
from minicnn.weights.safetensors_io import read_safetensors, save_safetensors
from minicnn.weights.store import load, save
from minicnn.weights.torch_pth import CorruptWeightsError, UnsafePickleError, read_pth

__all__ = ["save", "load", "get", "fetch", "port", "port_file", "pretrained_variables", "list_weights",
           "registry", "preprocess_input", "decode_predictions", "read_pth", "UnsafePickleError", "CorruptWeightsError",
           "WeightsUnavailableError", "Pretrained", "pretrained", "init", "preprocessing", "read_safetensors",
           "save_safetensors", "graft"]
