"""VGG16 inference: minicnn vs Keras 3 (JAX backend) vs PyTorch built from ``torch.nn`` (NCHW and
channels_last), in one process, the contenders taking turns so load hits them alike.

    python -m benchmarks.bench_inference [--quick]

Workloads: the conv base on 150x150 batch 20 (chapter 5's feature extraction) and the full VGG16
with its top on 224x224 batch 8. Weights are random (speed does not depend on them). minicnn also
runs as plain ``jax.jit`` would compile it, with XLA's convolution everywhere and with Winograd for
every eligible conv, so the table shows what its defaults (``minicnn.ops.jit`` and
``conv_algorithm="auto"``) buy against the alternatives.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import (CEILING, ceiling_gflops, matmul_callable, row, time_interleaved,
                               vgg16_flops)  # noqa: E402
from minicnn import ops  # noqa: E402
from minicnn.models import VGG16  # noqa: E402

WORKLOADS = ((150, 20, False), (224, 8, True))  # (size, batch, include_top)
QUICK = ((150, 2, False), (224, 1, True))


def workload_name(size: int, batch: int, include_top: bool) -> str:
    return f"VGG16 {'with top' if include_top else 'conv base'} {size}x{size} b{batch}"


def minicnn_forward(size: int, batch: int, include_top: bool, algorithm: str = "auto",
                    xla_defaults: bool = False):
    """A zero-argument callable running the jitted minicnn VGG16 forward on a fixed batch.

    ``xla_defaults`` jits with plain ``jax.jit`` instead of ``minicnn.ops.jit`` (minicnn's
    compiler options), to measure what those options buy.
    """
    model = VGG16(include_top=include_top, input_shape=(size, size, 3))
    x = jax.random.normal(jax.random.key(1), (batch, size, size, 3), jnp.float32)
    variables = model.init(jax.random.key(0), x[:1])
    jit = jax.jit if xla_defaults else ops.jit
    with ops.conv_algorithm(algorithm):
        fwd = jit(lambda v, x: model.apply(v, x)).lower(variables, x).compile()
    return lambda: fwd(variables, x)


def keras_forward(size: int, batch: int, include_top: bool):
    import keras

    model = keras.applications.VGG16(weights=None, include_top=include_top,
                                     input_shape=(size, size, 3))
    x = np.random.default_rng(1).normal(size=(batch, size, size, 3)).astype(np.float32)
    # model.predict_on_batch runs Keras' own jitted predict step, as a Keras user would.
    return lambda: model.predict_on_batch(x)


def torch_vgg16(include_top: bool):
    """VGG16 from ``torch.nn`` layers (torchvision's layout), random weights, eval mode."""
    import torch.nn as tnn

    layers, c = [], 3
    for n_convs, width in zip((2, 2, 3, 3, 3), (64, 128, 256, 512, 512)):
        for _ in range(n_convs):
            layers += [tnn.Conv2d(c, width, 3, padding=1), tnn.ReLU(inplace=True)]
            c = width
        layers.append(tnn.MaxPool2d(2))
    if include_top:
        layers += [tnn.Flatten(), tnn.Linear(512 * 7 * 7, 4096), tnn.ReLU(inplace=True),
                   tnn.Linear(4096, 4096), tnn.ReLU(inplace=True), tnn.Linear(4096, 1000),
                   tnn.Softmax(dim=1)]
    return tnn.Sequential(*layers).eval()


def torch_forward(size: int, batch: int, include_top: bool, channels_last: bool):
    import torch

    model = torch_vgg16(include_top)
    x = torch.randn(batch, 3, size, size)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)

    def fwd():
        with torch.inference_mode():
            return model(x)
    return fwd


def run(quick: bool = False) -> list[dict]:
    try:
        import torch
    except ImportError:
        torch = None
    rows = []
    for size, batch, top in QUICK if quick else WORKLOADS:
        name = workload_name(size, batch, top)
        fns = {"minicnn": minicnn_forward(size, batch, top),
               "minicnn:jax.jit defaults": minicnn_forward(size, batch, top, xla_defaults=True),
               "minicnn:xla conv": minicnn_forward(size, batch, top, "xla"),
               "minicnn:winograd": minicnn_forward(size, batch, top, "winograd")}
        fns["keras"] = keras_forward(size, batch, top)
        if torch is not None:
            fns["torch"] = torch_forward(size, batch, top, channels_last=False)
            fns["torch_cl"] = torch_forward(size, batch, top, channels_last=True)
        fns[CEILING] = matmul_callable()  # the ceiling under the same load as the contenders
        times = time_interleaved(fns, repeats=2 if quick else 5)
        ceiling = ceiling_gflops(times.pop(CEILING))
        flops = vgg16_flops(size, batch, top)
        for impl, t in times.items():
            rows.append(row(name, impl, t["seconds"], items=batch, flops=flops, min_s=t["min"],
                            ceiling_gflops_per_s=ceiling))
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    for r in run(p.parse_args().quick):
        print(json.dumps(r))
