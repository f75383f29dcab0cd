"""Compile cost where a user feels it, minicnn versus Keras 3 on JAX, and plain ``jax.jit`` speed.

    python -m benchmarks.bench_compile [--quick]

1. Time to the first train step, the second, the first ``evaluate`` (40 images, batch 20) and one
   ``fit`` epoch of 50 images (batch 20: a short last batch of 10) for the chapter-5 small convnet and
   a frozen ``VGG16(weights=None)`` + Dense(256) + Dense(1) head, 150x150, batch 20. Compile caches
   live in the process (and minicnn's on disk), so every measurement is a fresh interpreter, the
   contenders taking turns: minicnn with the persistent compilation cache off (``MINICNN_COMPILATION_CACHE=0``,
   a first run ever), minicnn with a warm cache (a directory an earlier child filled: a second run),
   and Keras. The clock starts after imports and data, before the model is built. Each child also
   logs what XLA compiled (``jax_log_compiles``): programs and compile seconds, by name.
2. VGG16 with the top, 224x224 batch 8, forward: ``jax.jit(model.apply)`` as it is,
   ``jax.jit(model.apply)`` with the Dense layers computed as a plain ``jnp.dot`` (minicnn before
   issue 16) and ``minicnn.ops.jit(model.apply)``, interleaved in one process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

from benchmarks.common import row, time_interleaved  # noqa: E402

WORKLOADS = ("small convnet", "frozen VGG16 + head")
PHASES = ("first_step", "second_step", "first_evaluate", "fit_epoch_short_last")
# impl -> MINICNN_COMPILATION_CACHE ("warm": the directory an earlier child filled)
CONTENDERS = {"minicnn": "0", "minicnn:warm-cache": "warm", "keras": "0"}


class _CompileLog(logging.Handler):
    """Collects ``jax_log_compiles``' "Finished XLA compilation of <name> in <s> sec" lines."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.compiles: list[tuple[str, float]] = []

    def emit(self, record):
        found = re.search(r"Finished XLA compilation of (.+?) in ([0-9.e-]+) sec", record.getMessage())
        if found:
            self.compiles.append((found.group(1), float(found.group(2))))


def _data(size: int, n: int, seed: int = 0):
    r = np.random.default_rng(seed)
    return r.random((n, size, size, 3), np.float32), (r.random(n) > 0.5).astype(np.float32)


def _minicnn_model(workload: str, size: int):
    from minicnn.layers import Dense, Flatten, Sequential
    from minicnn.models import VGG16, small_convnet
    if workload == "small convnet":
        return small_convnet((size, size, 3))
    base = VGG16(include_top=False, weights=None, input_shape=(size, size, 3), trainable=False)
    return Sequential([base, Flatten(), Dense(256, activation="relu"), Dense(1, activation="sigmoid")])


def _keras_model(workload: str, size: int):
    import keras
    L = keras.layers
    if workload == "small convnet":
        layers = [L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(2), L.Conv2D(64, 3, activation="relu"),
                  L.MaxPooling2D(2), L.Conv2D(128, 3, activation="relu"), L.MaxPooling2D(2),
                  L.Conv2D(128, 3, activation="relu"), L.MaxPooling2D(2), L.Flatten(),
                  L.Dense(512, activation="relu")]
    else:
        base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(size, size, 3))
        base.trainable = False
        layers = [base, L.Flatten(), L.Dense(256, activation="relu")]
    model = keras.Sequential([keras.Input((size, size, 3)), *layers, L.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.RMSprop(1e-4), loss="binary_crossentropy", metrics=["accuracy"])
    return model


def child(impl: str, workload: str, size: int) -> dict:
    """Seconds of each phase in this (fresh) process, and the programs XLA compiled."""
    import jax
    log = _CompileLog()
    logging.getLogger("jax").addHandler(log)
    logging.getLogger("jax").setLevel(logging.DEBUG)
    jax.config.update("jax_log_compiles", True)
    x, y = _data(size, 20)
    xv, yv = _data(size, 40, 1)
    xf, yf = _data(size, 50, 2)
    if impl == "keras":
        t0 = time.perf_counter()
        model = _keras_model(workload, size)
        phases = [lambda: model.train_on_batch(x, y), lambda: model.train_on_batch(x, y),
                  lambda: model.evaluate(xv, yv, batch_size=20, verbose=0),
                  lambda: model.fit(xf, yf, batch_size=20, epochs=1, verbose=0)]
    else:
        from minicnn.train import Trainer
        t0 = time.perf_counter()
        trainer = Trainer(_minicnn_model(workload, size), "binary_crossentropy", "rmsprop",
                          optimizer_kwargs={"learning_rate": 1e-4})
        phases = [lambda: trainer.train_on_batch(x, y), lambda: trainer.train_on_batch(x, y),
                  lambda: trainer.evaluate(xv, yv, batch_size=20),
                  lambda: trainer.fit(xf, yf, batch_size=20, epochs=1, verbose=0)]
    out, start = {}, t0
    for name, phase in zip(PHASES, phases):
        n_before = len(log.compiles)
        jax.block_until_ready(phase())
        now = time.perf_counter()
        out[name] = now - start
        out[f"{name}_programs"] = log.compiles[n_before:]
        start = now
    return out


def _run_child(impl: str, workload: str, size: int, cache: str, repo: str) -> dict:
    env = dict(os.environ, MINICNN_COMPILATION_CACHE=cache, PYTHONPATH=repo)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, os.path.join(here, "benchmarks", "bench_compile.py"), "--child", impl,
                           workload, str(size)], env=env, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench_compile child {impl} {workload} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compile_rows(quick: bool, contenders=tuple(CONTENDERS), before_repo: str | None = None,
                 repeats: int | None = None) -> list[dict]:
    """Per workload and phase, the median over fresh processes of each contender (taking turns).
    ``before_repo``: another checkout, timed as ``minicnn:before`` (its ops.jit, its Trainer)."""
    size, repeats = (64, 1) if quick else (150, repeats or 2)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    settings = {impl: (CONTENDERS[impl], here) for impl in contenders}
    if before_repo:
        settings["minicnn:before"] = ("0", os.path.abspath(before_repo))
    rows = []
    with tempfile.TemporaryDirectory(prefix="minicnn-xla-cache-") as cache:
        for workload in WORKLOADS:
            if "minicnn:warm-cache" in settings:
                _run_child("minicnn", workload, size, cache, here)  # fills the cache the warm contender reads
            runs = {impl: [] for impl in settings}
            for _ in range(repeats):
                for impl, (setting, repo) in settings.items():
                    runs[impl].append(_run_child(impl.split(":")[0], workload, size,
                                                 cache if setting == "warm" else setting, repo))
            for phase in PHASES:
                reference = runs.get("keras") or next(iter(runs.values()))
                base = float(np.median([r[phase] for r in reference]))
                for impl, rs in runs.items():
                    seconds = float(np.median([r[phase] for r in rs]))
                    programs = rs[-1][f"{phase}_programs"]
                    rows.append(row(f"{workload} {size}x{size} b20 {phase}", impl, seconds,
                                    times=[r[phase] for r in rs], ratio_to_keras=seconds / base,
                                    programs=len(programs), compile_s=sum(s for _, s in programs),
                                    compiled=programs))
    return rows


def _plain_dot_dense(next_fun, args, kwargs, context):
    """Dense layers as minicnn computed them before issue 16: one row-major ``jnp.dot``."""
    import jax.numpy as jnp
    from minicnn import ops
    from minicnn.layers import Dense
    module = context.module
    if not (isinstance(module, Dense) and context.method_name == "__call__"):
        return next_fun(*args, **kwargs)
    params = module.variables["params"]
    y = jnp.dot(args[0], params["kernel"]) + params["bias"]
    return ops.get_activation(module.activation)(y)


def jit_rows(quick: bool) -> list[dict]:
    """VGG16 with the top forward, interleaved: plain jax.jit now, before, and minicnn.ops.jit."""
    import flax.linen as nn
    import jax
    from minicnn import ops
    from minicnn.models import VGG16
    batch, repeats = (1, 2) if quick else (8, 5)
    model = VGG16(include_top=True, weights=None)
    x = jax.random.uniform(jax.random.key(0), (batch, 224, 224, 3))
    variables = ops.jit(model.init, run_once=True)(jax.random.key(1), x[:1])  # compiled once, run once

    def before(v, xs):
        with nn.intercept_methods(_plain_dot_dense):
            return model.apply(v, xs)

    fns = {"jax.jit": jax.jit(model.apply), "jax.jit:before": jax.jit(before), "ops.jit": ops.jit(model.apply)}
    outs = {name: np.asarray(f(variables, x)) for name, f in fns.items()}
    err = float(max(np.max(np.abs(o - outs["ops.jit"])) for o in outs.values()))
    times = time_interleaved({name: (lambda f=f: f(variables, x)) for name, f in fns.items()}, repeats=repeats)
    base = times["ops.jit"]["seconds"]
    return [row(f"VGG16 with top 224x224 b{batch} forward, {name}", "minicnn", t["seconds"], items=batch,
                min_s=t["min"], times=t["times"], ratio_to_ops_jit=t["seconds"] / base, max_abs_diff=err)
            for name, t in times.items()]


def run(quick: bool = False) -> list[dict]:
    """Rows for ``python -m benchmarks``; ``quick``: 64x64 inputs, one process per contender, batch 1."""
    return compile_rows(quick) + jit_rows(quick)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--child", nargs=3, metavar=("IMPL", "WORKLOAD", "SIZE"), help=argparse.SUPPRESS)
    p.add_argument("--only", choices=("compile", "jit"))
    p.add_argument("--contenders", nargs="+", choices=tuple(CONTENDERS), default=tuple(CONTENDERS))
    p.add_argument("--before", metavar="REPO", help="another checkout, timed as minicnn:before")
    p.add_argument("--repeats", type=int)
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    if args.child:
        impl, workload, size = args.child
        print(json.dumps(child(impl, workload, int(size))))
        return
    rows = []
    if args.only != "jit":
        rows += compile_rows(args.quick, args.contenders, args.before, args.repeats)
    if args.only != "compile":
        rows += jit_rows(args.quick)
    for r in rows:
        extra = f"  {r['programs']} programs, {r['compile_s']:.2f} s compiling" if "programs" in r else ""
        print(f"{r['workload']:<60}{r['impl']:<20}{r['seconds']:>8.2f} s{extra}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
