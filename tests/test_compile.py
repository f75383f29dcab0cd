"""Compile cost: one train-step program for an epoch with a short last batch (padded and masked,
exact), JAX's persistent compilation cache (on at the first ``ops.jit`` call, never at import; off
with ``MINICNN_COMPILATION_CACHE=0``), and Dense layers that plain ``jax.jit`` keeps off YNNPACK at
small batch. Structure only: speed is measured in benchmarks/bench_compile.py, never asserted."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from minicnn import masks, ops
from minicnn.layers import BatchNormalization, Conv2D, Dense, Flatten, Sequential
from minicnn.train import Trainer
from minicnn.train.losses import get as get_loss
from minicnn.train.step import init_state, make_train_step


def tiny_model(batch_norm: bool = False):
    return Sequential([Conv2D(4, 3, activation="relu"), *([BatchNormalization()] if batch_norm else []),
                       Flatten(), Dense(3, activation="relu"), Dense(1, activation="sigmoid")])


def data(n: int, seed: int = 0):
    r = np.random.default_rng(seed)
    return r.random((n, 6, 6, 2), np.float32), (r.random(n) > 0.5).astype(np.float32)


def test_padded_masked_step_equals_the_short_batch():
    model = tiny_model()
    x, y = data(3)
    sample_weight = np.array([0.5, 2.0, 1.0], np.float32)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.asarray(x))
    tx = masks.freeze(optax.rmsprop(1e-2), True)
    accuracy = lambda y_true, y_pred: (jnp.round(y_pred[:, 0]) == y_true).astype(jnp.float32)  # noqa: E731
    step = jax.jit(make_train_step(model, get_loss("binary_crossentropy"), tx, True, {"acc": accuracy}))

    def pad(a):  # 3 real rows of 8; padding rows are garbage on purpose: they must count for nothing
        return np.concatenate([a, np.full((5, *a.shape[1:]), 7.0, a.dtype)])

    short, short_logs = step(init_state(variables, tx, jax.random.key(1)), (x, y, sample_weight))
    padded, padded_logs = step(init_state(variables, tx, jax.random.key(1)), (pad(x), pad(y), pad(sample_weight)),
                               jnp.asarray([1.0] * 3 + [0.0] * 5))
    for a, b in zip(jax.tree_util.tree_leaves(short["params"]), jax.tree_util.tree_leaves(padded["params"])):
        np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)
    for k in short_logs:
        np.testing.assert_allclose(padded_logs[k], short_logs[k], atol=1e-6)
    changed = jax.tree_util.tree_leaves(short["params"])[0] - jax.tree_util.tree_leaves(variables["params"])[0]
    assert np.max(np.abs(changed)) > 1e-3  # a real step was taken


def test_an_epoch_with_a_short_last_batch_compiles_the_train_step_once():
    x, y = data(13)
    trainer = Trainer(tiny_model(), "binary_crossentropy", "rmsprop", metrics=["acc"])
    history = trainer.fit(x, y, batch_size=5, epochs=1, verbose=0)  # batches of 5, 5, 3
    assert trainer._train_step._cache_size() == 1
    assert np.all(np.isfinite(history.history["loss"]))
    # A training BatchNormalization layer would count padding rows in its batch statistics: not padded.
    with_bn = Trainer(tiny_model(batch_norm=True), "binary_crossentropy", "rmsprop")
    with_bn.fit(x, y, batch_size=5, epochs=1, verbose=0)
    assert with_bn._train_step._cache_size() == 2


def _run(code: str, cache: str, tmp_path) -> str:
    env = {**os.environ, "MINICNN_COMPILATION_CACHE": cache, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


CACHE_PROBE = """
    import os, jax, jax.numpy as jnp
    from jax import monitoring
    import minicnn
    from minicnn import ops
    assert jax.config.jax_compilation_cache_dir is None, "configured at import"
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # cache even a tiny program
    hits = []
    monitoring.register_event_listener(lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None)
    f = ops.jit(lambda x: jnp.tanh(x) @ x.T)
    f(jnp.ones((4, 4))).block_until_ready()
    jax.clear_caches()  # forget the in-memory executable: the next call reads the disk cache (if on)
    ops.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((4, 4))).block_until_ready()
    d = jax.config.jax_compilation_cache_dir
    print(d, len(os.listdir(d)) if d else 0, len(hits))
"""


def test_compilation_cache_is_on_at_first_jit_not_at_import(tmp_path):
    cache = tmp_path / "xla"
    directory, entries, hits = _run(CACHE_PROBE, str(cache), tmp_path).split()
    assert directory == str(cache) and int(entries) >= 1 and int(hits) >= 1


def test_compilation_cache_off_with_the_flag(monkeypatch):
    monkeypatch.setenv("MINICNN_COMPILATION_CACHE", "0")  # (conftest's default: the suite leaves ~/.cache alone)
    assert jax.config.jax_compilation_cache_dir is None
    ops.jit(lambda x: x * 3)(jnp.ones(2)).block_until_ready()
    assert ops.use_compilation_cache() is None and jax.config.jax_compilation_cache_dir is None


@pytest.mark.parametrize("setting, expected", [("0", None), ("off", None), ("/some/dir", "/some/dir"),
                                               ("", "XDG/minicnn/xla"), ("1", "XDG/minicnn/xla")])
def test_compilation_cache_dir_setting(monkeypatch, setting, expected):
    monkeypatch.setenv("MINICNN_COMPILATION_CACHE", setting)
    monkeypatch.setenv("XDG_CACHE_HOME", "XDG")
    got = ops.compilation_cache_dir()
    assert got == (expected if expected is None or expected.startswith("/") else os.path.join("XDG", "minicnn", "xla"))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="YNNPACK is the CPU backend's")
def test_dense_under_plain_jax_jit_stays_off_ynnpack_at_small_batch():
    x = jax.random.normal(jax.random.key(0), (8, 96))
    layer = Dense(64)
    variables = layer.init(jax.random.key(1), x)
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
    plain = jax.jit(lambda x: jnp.dot(x, kernel) + bias)
    assert "__ynn_fusion" in plain.lower(x).compile().as_text()  # this jaxlib would send the dot to YNNPACK
    forward = jax.jit(layer.apply)  # (the backward's kernel gradient, 96 rows, stays on YNNPACK: faster there)
    assert "__ynn_fusion" not in forward.lower(variables, x).compile().as_text()
    np.testing.assert_allclose(forward(variables, x), plain(x), rtol=1e-6, atol=1e-6)
    x3 = x.reshape(2, 4, 96)  # leading axes are rows too
    np.testing.assert_allclose(jax.jit(layer.apply)(variables, x3), plain(x).reshape(2, 4, 64), rtol=1e-6, atol=1e-6)
