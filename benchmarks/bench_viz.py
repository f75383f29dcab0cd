"""Visualisation speed: the lecture's filter-pattern grid (VGG16, 4 layers x 64 filters, 40 steps,
64 px) as one minicnn call for all filters (one vmapped program), minicnn one filter per call, and
the lecture's per-filter loop in Keras 3 on JAX; batched Grad-CAM vs one plain forward+backward pass.

    python benchmarks/bench_viz.py [--quick]

Weights are random (speed does not depend on them, and nothing is downloaded). Times are wall
clock on whatever runs this, contenders interleaved per layer (``benchmarks.common.time_interleaved``,
medians); ``first_call_s`` is the first call (compile + run). The two per-filter loops are timed on
a sample of filters and extrapolated per filter to the whole grid (every filter does the same work;
the rows say how many were timed).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
# first calls and the Keras per-filter compile are measured cold: the lecture's loop compiles a new
# program per filter, which a persistent cache warmed by an earlier run would hide
os.environ.setdefault("MINICNN_COMPILATION_CACHE", "0")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import row, time_interleaved  # noqa: E402
from minicnn.models import VGG16  # noqa: E402
from minicnn.viz import filter_patterns, grad_cam  # noqa: E402

LECTURE_LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1")


def _timed(fn):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t


def _random_variables(model, x, seed: int = 0):
    """He-normal kernels, zero biases, drawn by NumPy (Flax's init of VGG16 is slow on CPU; speed
    does not depend on the values)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32)
                                              * np.sqrt(2 / np.prod(s.shape[:-1])) if len(s.shape) > 1
                                              else np.zeros(s.shape, np.float32)), shapes)


def _row(name, seconds, **extra):
    return {"name": name, "seconds": round(seconds, 3), **extra}


def bench_filters(layers=LECTURE_LAYERS, n_filters: int = 64, steps: int = 40, size: int = 64,
                  sampled: int = 2, repeats: int = 2) -> list[dict]:
    """The lecture's grid: per layer, all ``n_filters`` in one minicnn call, interleaved with
    ``sampled`` filters one call each (minicnn) and the lecture's per-filter loop (Keras); the loops'
    per-filter medians are scaled to ``n_filters``. One comparison row per contender for the grid
    (sum over layers) and one detail row per layer."""
    model = VGG16(include_top=False)
    variables = _random_variables(model, jnp.zeros((1, size, size, 3)))
    keras_loop = _keras_lecture(size, steps)
    kw = dict(size=size, steps=steps, key=jax.random.key(1))
    grid = f"filter patterns VGG16 {len(layers)} layers x {n_filters} filters, {steps} steps, {size}px"
    scale = n_filters / sampled
    per_layer, totals = [], {"one_call": 0.0, "minicnn_loop": 0.0, "keras_loop": 0.0, "one_call_first": 0.0,
                             "keras_compile": 0.0}
    for layer in layers:
        keras_layer = keras_loop(layer)
        fns = {"one_call": lambda: filter_patterns(model, variables, layer, list(range(n_filters)), **kw),
               "minicnn_loop": lambda: [filter_patterns(model, variables, layer, [f], **kw) for f in range(sampled)],
               "keras_loop": lambda: [keras_layer(f) for f in range(sampled)]}
        first = {k: _timed(fn) for k, fn in fns.items()}  # the warm-up: compiles every program once
        t = time_interleaved(fns, repeats=repeats, warmup=0)
        grid_s = {"one_call": t["one_call"]["seconds"], "minicnn_loop": scale * t["minicnn_loop"]["seconds"],
                  "keras_loop": scale * t["keras_loop"]["seconds"]}
        for k, v in grid_s.items():
            totals[k] += v
        totals["one_call_first"] += first["one_call"]
        totals["keras_compile"] += max(first["keras_loop"] - t["keras_loop"]["seconds"], 0.0)
        per_layer.append(_row(f"filters {layer}: all {n_filters} in one call", grid_s["one_call"],
                              first_call_s=round(first["one_call"], 3), **{
                                  f"{k}_s (from {sampled} filters)": round(v, 2) for k, v in grid_s.items()
                                  if k != "one_call"},
                              x_minicnn_loop=round(grid_s["minicnn_loop"] / grid_s["one_call"], 2),
                              x_keras_loop=round(grid_s["keras_loop"] / grid_s["one_call"], 2),
                              first_calls={k: round(v, 2) for k, v in first.items()},
                              times={k: [round(x, 3) for x in v["times"]] for k, v in t.items()}))
    lecture_literal = totals["keras_loop"] + n_filters * totals["keras_compile"]
    tag = dict(layers=list(layers), filters=n_filters, steps=steps, size=size, sampled_filters=sampled)
    return [row(grid, "minicnn", totals["one_call"], items=len(layers) * n_filters,
                first_call_s=round(totals["one_call_first"], 2), **tag),
            row(grid, "keras", totals["keras_loop"], items=len(layers) * n_filters,
                extrapolated_from_filters_per_layer=sampled, **tag),
            _row("filters grid: minicnn one call per filter (extrapolated)", totals["minicnn_loop"],
                 extrapolated_from_filters_per_layer=sampled,
                 x_one_call=round(totals["minicnn_loop"] / totals["one_call"], 2), **tag),
            # the lecture builds its function per filter: one compile per filter, measured once per layer
            _row("filters grid: Keras lecture, compiled per filter (extrapolated)", lecture_literal,
                 compile_s_per_filter_all_layers=round(totals["keras_compile"], 2),
                 x_one_call=round(lecture_literal / totals["one_call"], 2), **tag),
            *per_layer]


def _keras_lecture(size: int, steps: int):
    """The lecture's algorithm in Keras 3 on JAX, as fast as a Keras user would write it: a
    ``keras.Model`` to the layer's output, and per filter one jitted gradient-ascent loop (``steps``
    of ``x += g / (rms(g) + 1e-5)`` from ``uniform * 20 + 128``), compiled once per layer with the
    filter index traced (the lecture's ``K.function`` per filter would recompile for each filter).
    Returns ``layer -> (filter -> image)``."""
    import keras

    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(size, size, 3))

    def for_layer(layer):
        model = keras.Model(base.inputs, base.get_layer(layer).output)
        tv = [v.value for v in model.trainable_variables]
        ntv = [v.value for v in model.non_trainable_variables]

        def mean_activation(x, f, tv, ntv):
            out, _ = model.stateless_call(tv, ntv, x)
            return jnp.mean(jnp.take(out, f, axis=-1))

        def ascend(img, f, tv, ntv):
            def step(_, img):
                g = jax.grad(mean_activation)(img, f, tv, ntv)
                return img + g / (jnp.sqrt(jnp.mean(jnp.square(g))) + 1e-5)
            return jax.lax.fori_loop(0, steps, step, img)

        ascend = jax.jit(ascend)
        rng = np.random.default_rng(0)
        return lambda f: ascend(rng.random((1, size, size, 3), np.float32) * 20 + 128, f, tv, ntv)

    return for_layer


def bench_grad_cam(n_images: int, size: int = 224) -> list[dict]:
    """Grad-CAM of VGG16 (with its top) for a batch vs one jitted forward+backward to the input."""
    model = VGG16(include_top=True)
    x = jax.random.uniform(jax.random.key(2), (n_images, size, size, 3)) * 255
    variables = _random_variables(model, x[:1])
    first_cam = _timed(lambda: grad_cam(model, variables, x))
    cam = _timed(lambda: grad_cam(model, variables, x))
    fwd_bwd = jax.jit(jax.grad(lambda v, x: model.apply(v, x).max(axis=-1).sum(), argnums=1))
    _timed(lambda: fwd_bwd(variables, x))
    plain = _timed(lambda: fwd_bwd(variables, x))
    return [_row("grad_cam: batched (warm)", cam, first_call_s=round(first_cam, 3), images=n_images, size=size,
                 relative_to_forward_backward=round(cam / plain, 2)),
            _row("forward+backward to the input (warm)", plain, images=n_images, size=size)]


def run(quick: bool = False) -> list[dict]:
    """All benchmark rows; ``quick`` shrinks the problem (2 layers x 8 filters, 10 steps; 4 images)."""
    if quick:
        return bench_filters(LECTURE_LAYERS[:2], 8, 10, 64, sampled=1, repeats=1) + bench_grad_cam(4)
    return bench_filters() + bench_grad_cam(32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small problem, for a smoke test")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    for result in run(args.quick):
        print(result)


if __name__ == "__main__":
    main()
