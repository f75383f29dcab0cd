"""minicnn.weights.save/load: orbax round trips of nested dicts, atomic replacement."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minicnn.weights import load, save
from minicnn.weights import store


def _state():
    return {"params": {"block1_conv1": {"kernel": jnp.arange(24, dtype=jnp.float32).reshape(1, 2, 3, 4),
                                        "bias": np.zeros(4, np.float32)}},
            "batch_stats": {"bn": {"moving_mean": np.full(3, 0.5, np.float32)}},
            "step": 7, "lr": 1e-3, "count": np.int64(3),
            "rng": np.asarray(jax.random.key_data(jax.random.key(0)), np.uint32),
            "half": jnp.ones(2, jnp.bfloat16)}


def _assert_same(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        if isinstance(y, (int, float)):
            assert type(x) is type(y) and x == y
        else:
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_keeps_structure_dtypes_and_scalars(tmp_path):
    state = _state()
    save(state, tmp_path / "ckpt")
    _assert_same(load(tmp_path / "ckpt"), state)


def test_save_replaces_an_existing_checkpoint(tmp_path):
    save({"step": 1}, tmp_path / "ckpt")
    save(_state(), tmp_path / "ckpt")
    _assert_same(load(tmp_path / "ckpt"), _state())
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary or backup left behind


def test_crash_mid_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    save(_state(), tmp_path / "ckpt")
    import orbax.checkpoint as ocp

    def crash(self, directory, *args, **kwargs):
        os.makedirs(directory)
        (directory / "half_written").write_bytes(b"\0" * 10)
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(ocp.Checkpointer, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save({"step": 2}, tmp_path / "ckpt")
    monkeypatch.undo()
    _assert_same(load(tmp_path / "ckpt"), _state())
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_crash_between_renames_loads_previous(tmp_path, monkeypatch):
    save(_state(), tmp_path / "ckpt")
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old checkpoint is moved aside, the new one not yet in place
            raise KeyboardInterrupt("killed between renames")
        real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        save({"step": 2}, tmp_path / "ckpt")
    monkeypatch.undo()
    _assert_same(load(tmp_path / "ckpt"), _state())


def test_bad_input_and_missing_checkpoint_are_named(tmp_path):
    with pytest.raises(TypeError, match="variables/params.*non-string key 0"):
        save({"params": {0: np.zeros(1)}}, tmp_path / "x")
    with pytest.raises(TypeError, match="variables/opt is a list"):
        save({"opt": [1, 2]}, tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="no minicnn checkpoint at .*nothing"):
        load(tmp_path / "nothing")
