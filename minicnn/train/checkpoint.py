"""The on-disk form of a :class:`~minicnn.train.Trainer`: train state, trainable mask, epoch, history.

One checkpoint directory written by :func:`minicnn.weights.save` (atomic, checksummed, marked as
minicnn's) holding the arrays

- ``state``: ``params``, ``batch_stats``, ``opt_state`` (``flax.serialization.to_state_dict`` form),
  ``step``, ``rng``;
- ``trainable``: the mask, one bool per parameter;

and, as JSON in the marker file's ``metadata``: ``kind``, ``epoch``, ``history`` and the caller's
model ``fingerprint``. The marker also records every variable's path, shape and dtype, which
:func:`check_model` compares with the model being restored. Checkpoints of minicnn 0.1 (epoch and
history as arrays, the history as uint8 JSON bytes, no marker) still load.

Given a :class:`minicnn.weights.store.Manager` (a run's numbered steps kept by orbax's
``CheckpointManager``), the same checkpoint is written as the step ``epoch`` (epochs completed);
:func:`resolve` picks the step to load.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from flax import serialization, traverse_util

from minicnn.weights import store
from minicnn.train.history import History

__all__ = ["contents", "save", "load", "resolve", "check_model", "model_shapes"]

KIND = "minicnn.train"
resolve = store.resolve  # Trainer.load's: a directory of numbered steps -> the step to load


def contents(state: dict, flat_mask: dict, epoch: int, history: History, **metadata) -> tuple[dict, dict]:
    """``(tree, metadata)`` of a train checkpoint: the arrays (host NumPy) and the JSON that goes with
    them (``kind``, ``epoch``, ``history`` and the keyword ``metadata``, e.g. ``fingerprint``,
    ``data_seed``, ``input_shape``). The one place the on-disk form is built."""
    tree = {
        "state": {**state, "opt_state": serialization.to_state_dict(state["opt_state"])},
        "trainable": traverse_util.unflatten_dict({k: np.asarray(v) for k, v in flat_mask.items()}),
    }
    return jax.device_get(tree), {"kind": KIND, "epoch": int(epoch), "history": json.loads(history.to_json()),
                                  **metadata}


def save(path: str | os.PathLike, state: dict, flat_mask: dict, epoch: int, history: History,
         fingerprint: str | None = None, data_seed: int | None = None, input_shape=None):
    """Write the checkpoint directory ``path`` atomically and return its absolute path.

    ``data_seed``: the seed of the training data's order and augmentation keys, so that a resumed
    ``fit`` can tell whether it sees the uninterrupted run's batches (with the epoch number, the
    data pipeline's position)."""
    tree, metadata = contents(state, flat_mask, epoch, history, fingerprint=fingerprint, data_seed=data_seed,
                              input_shape=input_shape)
    return store.save(tree, path, metadata=metadata)


def load(path: str | os.PathLike) -> dict:
    """``{"state", "flat_mask", "epoch", "history", "fingerprint", "data_seed"}`` from :func:`save`'s directory.

    ``state["opt_state"]`` is still a state dict; :func:`restore_opt_state` puts it into the
    optimizer's own structure.
    """
    tree = store.load(path)
    metadata = (store.read_marker(path) or {}).get("metadata", {})
    epoch, data_seed = None, metadata.get("data_seed")
    if metadata.get("kind") == KIND:
        epoch, history, fingerprint = metadata["epoch"], json.dumps(metadata["history"]), metadata["fingerprint"]
    elif {"epoch", "history"} <= set(tree):  # minicnn 0.1: epoch and history (uint8 JSON bytes) as arrays
        epoch, history, fingerprint = tree["epoch"], np.asarray(tree["history"], np.uint8).tobytes().decode(), None
    missing = {"state", "trainable"} - set(tree) | ({"epoch", "history"} if epoch is None else set())
    if missing:
        raise ValueError(f"{path} is not a minicnn train checkpoint: missing {sorted(missing)} "
                         f"(a weights-only file? load it with minicnn.weights.load)")
    return {
        "state": {**tree["state"], "batch_stats": tree["state"].get("batch_stats", {})},
        "flat_mask": {k: bool(v) for k, v in traverse_util.flatten_dict(tree["trainable"]).items()},
        "epoch": int(epoch),
        "history": History.from_json(history),
        "fingerprint": fingerprint,
        "data_seed": data_seed,
        "input_shape": tuple(metadata["input_shape"]) if metadata.get("input_shape") else None,
        "data_state": metadata.get("data_state"),  # where fit was in its data (see Trainer.save)
    }


def model_shapes(model, input_shape) -> dict:
    """``{"params", "batch_stats"}`` of ``model`` for one input of ``input_shape`` (no batch axis),
    as ``jax.ShapeDtypeStruct`` leaves: traced, nothing computed."""
    import jax.numpy as jnp

    key = jax.random.key(0)
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    variables = jax.eval_shape(lambda: model.init({"params": key, "dropout": key}, x, train=False))
    return {"params": variables.get("params", {}), "batch_stats": variables.get("batch_stats", {})}


def check_model(path, saved: dict, expected: dict) -> None:
    """Raise naming ``path`` and the first variable (sorted by path) whose presence, shape or dtype
    differs between the checkpoint's ``saved`` and the model's ``expected`` ``{"params",
    "batch_stats"}`` (arrays or ``ShapeDtypeStruct`` leaves)."""
    def flat(variables):
        return {"/".join(k): v for k, v in traverse_util.flatten_dict(
            {c: variables.get(c) or {} for c in ("params", "batch_stats")}).items()}

    have, want = flat(saved), flat(expected)
    for name in sorted(have.keys() | want.keys()):
        if name not in want:
            problem = "is in the checkpoint, not in this model"
        elif name not in have:
            problem = "is in this model, not in the checkpoint"
        elif (tuple(np.shape(have[name])), np.dtype(have[name].dtype)) != \
                (tuple(want[name].shape), np.dtype(want[name].dtype)):
            problem = (f"is {np.dtype(have[name].dtype)}{list(np.shape(have[name]))} in the checkpoint, "
                       f"{np.dtype(want[name].dtype)}{list(want[name].shape)} in this model")
        else:
            continue
        raise ValueError(f"{path} is a checkpoint of another model: {name} {problem}")


def check_fingerprint(path, saved: str | None, expected: str | None) -> None:
    """Raise when both the checkpoint and the caller name a model fingerprint and they differ."""
    if saved is not None and expected is not None and saved != expected:
        raise ValueError(f"{path} is a checkpoint of another model: it has fingerprint {saved!r}, "
                         f"this model {expected!r}")


def restore_opt_state(template, saved):
    """The saved optimizer state in the structure of ``template`` (a fresh ``optimizer.init``)."""
    try:
        return serialization.from_state_dict(template, saved)
    except (ValueError, KeyError) as e:
        raise ValueError(f"checkpoint optimizer state does not fit this optimizer ({e}); restore "
                         f"with the optimizer the checkpoint was trained with") from None
