"""The on-disk form of a :class:`~minicnn.train.Trainer`: train state, trainable mask, epoch, history.

One orbax directory written by :func:`minicnn.weights.save` (atomic: a crash mid-write leaves the
previous checkpoint loadable) holding

- ``state``: ``params``, ``batch_stats``, ``opt_state`` (``flax.serialization.to_state_dict`` form),
  ``step``, ``rng``;
- ``trainable``: the mask, one bool per parameter;
- ``epoch``: epochs completed;
- ``history``: the :class:`History` as JSON text stored as uint8 bytes (no pickle).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import serialization, traverse_util

from minicnn import weights
from minicnn.train.history import History

__all__ = ["save", "load"]


def save(path: str | os.PathLike, state: dict, flat_mask: dict, epoch: int, history: History):
    """Write the checkpoint directory ``path`` atomically and return its absolute path."""
    tree = {
        "state": {**state, "opt_state": serialization.to_state_dict(state["opt_state"])},
        "trainable": traverse_util.unflatten_dict({k: np.asarray(v) for k, v in flat_mask.items()}),
        "epoch": int(epoch),
        "history": np.frombuffer(history.to_json().encode(), np.uint8),
    }
    return weights.save(jax.device_get(tree), path)


def load(path: str | os.PathLike) -> dict:
    """``{"state", "flat_mask", "epoch", "history"}`` from :func:`save`'s directory.

    ``state["opt_state"]`` is still a state dict; :func:`restore_opt_state` puts it into the
    optimizer's own structure.
    """
    tree = weights.load(path)
    missing = {"state", "trainable", "epoch", "history"} - set(tree)
    if missing:
        raise ValueError(f"{path} is not a minicnn train checkpoint: missing {sorted(missing)} "
                         f"(a weights-only file? load it with minicnn.weights.load)")
    return {
        "state": {**tree["state"], "batch_stats": tree["state"].get("batch_stats", {})},
        "flat_mask": {k: bool(v) for k, v in traverse_util.flatten_dict(tree["trainable"]).items()},
        "epoch": int(tree["epoch"]),
        "history": History.from_json(np.asarray(tree["history"], np.uint8).tobytes().decode()),
    }


def restore_opt_state(template, saved):
    """The saved optimizer state in the structure of ``template`` (a fresh ``optimizer.init``)."""
    try:
        return serialization.from_state_dict(template, saved)
    except (ValueError, KeyError) as e:
        raise ValueError(f"checkpoint optimizer state does not fit this optimizer ({e}); restore "
                         f"with the optimizer the checkpoint was trained with") from None
