"""Visualisation speed: filter patterns vmapped vs per-filter loops (minicnn and the lecture's Keras
loop), and batched Grad-CAM vs one plain forward+backward pass.

    python benchmarks/bench_viz.py [--quick]

Weights are random (speed does not depend on them, and nothing is downloaded). Times are wall
clock on whatever runs this: ``seconds`` is a warm run, ``first_call_s`` the first call (compile + run).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from minicnn.models import VGG16  # noqa: E402
from minicnn.viz import filter_patterns, grad_cam  # noqa: E402

LAYER = "block1_conv1"


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


def bench_filters(n_filters: int, steps: int, size: int) -> list[dict]:
    """The lecture's recipe on VGG16 ``block1_conv1``: all filters vmapped vs a loop over filters."""
    model = VGG16(include_top=False)
    variables = _random_variables(model, jnp.zeros((1, size, size, 3)))
    kw = dict(size=size, steps=steps, key=jax.random.key(1))
    filters = list(range(n_filters))
    first_vmap = _timed(lambda: filter_patterns(model, variables, LAYER, filters, **kw))
    vmapped = _timed(lambda: filter_patterns(model, variables, LAYER, filters, **kw))
    first_one = _timed(lambda: filter_patterns(model, variables, LAYER, [0], **kw))
    loop = _timed(lambda: [filter_patterns(model, variables, LAYER, [f], **kw) for f in filters])
    keras_loop = _keras_filter_loop(filters, steps, size)
    tag = dict(filters=n_filters, steps=steps, size=size)
    # workload + impl: the suite (python -m benchmarks) pivots these two into its comparison table
    workload = f"filter patterns VGG16 {LAYER}, {n_filters} filters x {steps} steps, {size}px"
    return [_row("filters: minicnn vmapped (warm)", vmapped, first_call_s=round(first_vmap, 3),
                 workload=workload, impl="minicnn", **tag),
            _row("filters: minicnn per-filter loop (warm)", loop, first_call_s=round(first_one, 3),
                 speedup_of_vmapped=round(loop / vmapped, 1), **tag),
            _row("filters: Keras 3 per-filter loop (lecture)", keras_loop, workload=workload, impl="keras",
                 speedup_of_vmapped=round(keras_loop / vmapped, 1),
                 speedup_of_vmapped_first_call=round(keras_loop / first_vmap, 1), **tag)]


def _keras_filter_loop(filters, steps: int, size: int) -> float:
    """Chollet's loop in Keras 3 on JAX: per filter, a compiled loss-and-gradient function
    (``K.function`` in the lecture) called ``steps`` times from Python with NumPy updates."""
    import keras
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(size, size, 3))
    model = keras.Model(base.inputs, base.get_layer(LAYER).output)
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    start = time.perf_counter()
    for f in filters:
        def loss(x, f=f):
            out, _ = model.stateless_call(tv, ntv, x)
            return keras.ops.mean(out[:, :, :, f])

        iterate = jax.jit(jax.value_and_grad(loss))
        img = np.random.random((1, size, size, 3)).astype("float32") * 20 + 128.0
        for _ in range(steps):
            _, grads = iterate(img)
            grads = np.array(grads)
            grads /= np.sqrt(np.mean(np.square(grads))) + 1e-5
            img += grads * 1.0
    return time.perf_counter() - start


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
    """All benchmark rows; ``quick`` shrinks the problem (8 filters, 10 steps, 64 px; 4 images)."""
    if quick:
        return bench_filters(8, 10, 64) + bench_grad_cam(4)
    return bench_filters(64, 40, 150) + bench_grad_cam(32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small problem, for a smoke test")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    for row in run(args.quick):
        print(row)


if __name__ == "__main__":
    main()
