"""Fast feature extraction: one jitted pass of a frozen base over a dataset, cached on disk.

The chapter-5 "fast feature extraction without data augmentation": run the conv base once,
keep its outputs, train a small dense head on them in seconds.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from minicnn import ops
from minicnn.masks import path_str
from minicnn.inspector import forward_to, layer_infos, resolve

__all__ = ["extract_features"]


def extract_features(model: nn.Module, variables: Mapping, dataset: Iterable, layer: str | None = None, *,
                     cache_dir: str | os.PathLike | None = None, verbose: bool = True):
    """``(features, labels)``: the model's (or ``layer``'s) inference output for every sample.

    model, variables: the frozen base, e.g. ``VGG16(include_top=False)`` and its variables.
    dataset: a re-iterable of ``(x, y)`` batches, ``x: (B, H, W, C) float32`` (a
      :func:`minicnn.data.from_arrays` or ``image_dataset_from_directory`` dataset), already
      preprocessed for the model; one epoch is read.
    layer: a layer path or unambiguous suffix (``"block4_pool"``); the forward pass stops there.
    cache_dir: when given, the result is stored in ``cache_dir/features-<key>.npz``, the key hashing
      the model, ``layer``, every variable and every sample (in any order), so a second call on the
      same model, weights and data reads the file instead of running the model. Shuffled datasets
      hit the cache too; the cached arrays keep the first run's order.

    Returns ``features: (N, ...) float32`` and ``labels: (N, ...)`` as NumPy arrays, in the
    order the dataset yielded them. All batches run through one compiled program (a smaller last
    batch is padded, then cut).
    """
    path = None
    if cache_dir is not None:
        path = os.path.join(os.fspath(cache_dir), f"features-{_key(model, variables, dataset, layer)}.npz")
        if os.path.exists(path):
            with np.load(path, allow_pickle=False) as cached:
                return cached["features"], cached["labels"]

    forward = _forward(model, layer)
    features, labels, size = [], [], None
    for batch in tqdm(dataset, desc="extract_features", unit="batch", disable=not verbose,
                      total=len(dataset) if hasattr(dataset, "__len__") else None):
        x, y = _unpack(batch)
        n, size = len(x), size or len(x)
        if n > size:
            raise ValueError(f"extract_features: batch of {n} samples after batches of {size}; "
                             "only the last batch may be smaller")
        x = jnp.asarray(x, jnp.float32)
        if n < size:
            x = jnp.concatenate([x, jnp.zeros((size - n, *x.shape[1:]), x.dtype)])
        features.append(np.asarray(forward(variables, x))[:n])
        labels.append(np.asarray(y))
    if not features:
        raise ValueError("extract_features: the dataset yielded no batches")
    features, labels = np.concatenate(features), np.concatenate(labels)
    if path is not None:
        _save_atomically(path, features=features, labels=labels)
    return features, labels


@functools.lru_cache(maxsize=16)  # modules compare by value: the same base compiles once
def _forward(model: nn.Module, layer: str | None):
    if layer is None:
        return ops.jit(lambda v, x: model.apply(v, x, train=False))

    @ops.jit
    def forward(v, x):
        where = resolve(layer_infos(model, v, x), layer).path  # at trace time: free afterwards
        return forward_to(model, v, x, where)

    return forward


def _unpack(batch):
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError(f"extract_features: expected (x, y) batches, got a {type(batch).__name__}"
                         f"{f' of {len(batch)} items' if isinstance(batch, (tuple, list)) else ''}")
    x, y = batch
    if np.ndim(x) < 2 or len(x) != len(y):
        raise ValueError(f"extract_features: batch x of shape {np.shape(x)} and y of shape {np.shape(y)} "
                         "do not hold the same number of samples")
    return x, y


def _key(model: nn.Module, variables: Mapping, dataset: Iterable, layer: str | None) -> str:
    """sha256 over the model's definition, the layer, every variable and the set of samples."""
    h = hashlib.sha256()
    # Initialiser functions print with their memory address, which changes every run.
    h.update(re.sub(r" at 0x[0-9a-f]+", "", repr(model)).encode())
    h.update(repr(layer).encode())
    for p, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        leaf = np.asarray(leaf)
        h.update(f"{path_str(p)}:{leaf.dtype}:{leaf.shape}".encode())
        h.update(np.ascontiguousarray(leaf).tobytes())
    samples = []
    for batch in dataset:
        x, y = _unpack(batch)
        x, y = np.asarray(x, np.float32), np.asarray(y)
        samples += [hashlib.sha256(xi.tobytes() + f"{xi.shape}|{yi.dtype}{yi.shape}".encode() + yi.tobytes())
                    .digest() for xi, yi in zip(x, y)]
    for digest in sorted(samples):  # sorted: a reshuffled epoch of the same data has the same key
        h.update(digest)
    return h.hexdigest()[:32]


def _save_atomically(path: str, **arrays) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".features-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
