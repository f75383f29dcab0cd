"""Train-step time of the chapter-5 small convnet (150x150x3, batch 20, RMSprop 1e-4, binary
cross-entropy): minicnn versus Keras 3 on JAX and PyTorch built from ``torch.nn`` (NCHW and
channels_last), one process, one run, the contenders taking turns so load hits them alike.

    python -m benchmarks.bench_train [--quick]

Each contender is timed the way a training loop calls it, reading the loss back every step:
``Trainer.train_on_batch``, Keras' ``train_on_batch`` and a PyTorch step ending in ``loss.item()``.
Two more rows: ``minicnn:step`` times minicnn's jitted step alone (no Python wrapper), to show
the wrapper's share, and ``minicnn:xla-pool-grad`` the same step with max pooling differentiated by
jax (XLA's select-and-scatter, the step before issue 16), the before/after ratio of that change.
The chapter's VGG16 train steps (all trainable, block5 + head, base frozen) are
``benchmarks/bench_transfer.py``'s rows.
"""

from __future__ import annotations

import argparse
import copy
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import load_average, row, time_interleaved  # noqa: E402
from minicnn import ops  # noqa: E402
from minicnn.layers import MaxPooling2D, Sequential  # noqa: E402
from minicnn.models import small_convnet  # noqa: E402
from minicnn.train import Trainer  # noqa: E402

WIDTHS = (32, 64, 128, 128)


def flops(size: int, batch: int) -> float:
    """Training FLOPs per step, taken as 3x the forward convolutions and dense layers (2 x MACs)."""
    total, h, c = 0, size, 3
    for w in WIDTHS:
        h -= 2
        total += 2 * 9 * c * w * h * h
        c, h = w, h // 2
    total += 2 * (h * h * c * 512 + 512)
    return 3.0 * total * batch


class XlaGradMaxPooling2D(MaxPooling2D):
    """MaxPooling2D differentiated by jax through ``lax.reduce_window`` (XLA's select-and-scatter)."""
    pool = staticmethod(ops.max_pool2d)


def with_xla_pool_grad(model: Sequential) -> Sequential:
    """``model`` with each MaxPooling2D replaced by :class:`XlaGradMaxPooling2D` (same values)."""
    return Sequential([XlaGradMaxPooling2D(p.pool_size, p.strides, p.padding) if isinstance(p, MaxPooling2D) else p
                       for p in model.layers], input_shape=model.input_shape)


def minicnn_steps(x, y, xla_pool_grad: bool = False):
    model = small_convnet(x.shape[1:])
    t = Trainer(with_xla_pool_grad(model) if xla_pool_grad else model, "binary_crossentropy", "rmsprop",
                optimizer_kwargs={"learning_rate": 1e-4})
    t.build(x)
    xj, yj = jax.device_put(x), jax.device_put(y)

    def jitted_step():
        t.state, logs = t._train_step(t.state, (xj, yj))
        return logs["loss"]

    return (lambda: t.train_on_batch(x, y)), jitted_step


def keras_step(x, y):
    import keras
    L = keras.layers
    m = keras.Sequential([keras.Input(x.shape[1:]),
                          L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(2),
                          L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(2),
                          L.Conv2D(128, 3, activation="relu"), L.MaxPooling2D(2),
                          L.Conv2D(128, 3, activation="relu"), L.MaxPooling2D(2),
                          L.Flatten(), L.Dense(512, activation="relu"), L.Dense(1, activation="sigmoid")])
    m.compile(optimizer=keras.optimizers.RMSprop(1e-4), loss="binary_crossentropy", metrics=["accuracy"])
    return lambda: m.train_on_batch(x, y)


def torch_step(x, y, channels_last: bool):
    import torch
    from torch import nn

    torch.manual_seed(0)
    h = x.shape[1]
    for _ in WIDTHS:
        h = (h - 2) // 2
    layers, c = [], 3
    for w in WIDTHS:
        layers += [nn.Conv2d(c, w, 3), nn.ReLU(), nn.MaxPool2d(2)]
        c = w
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * h * h, 512), nn.ReLU(), nn.Linear(512, 1),
                        nn.Sigmoid())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = copy.deepcopy(net).to(memory_format=fmt)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
    yt = torch.from_numpy(y)[:, None]
    opt = torch.optim.RMSprop(net.parameters(), lr=1e-4, alpha=0.9, eps=1e-7)
    loss_fn = nn.BCELoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def run(quick: bool = False) -> list[dict]:
    """Rows for ``python -m benchmarks``; ``quick``: 64x64 inputs and 2 timed rounds (a smoke run)."""
    size, batch, repeats = (64, 20, 2) if quick else (150, 20, 10)
    r = np.random.default_rng(0)
    x = r.random((batch, size, size, 3), np.float32)
    y = (r.random(batch) > 0.5).astype(np.float32)
    on_batch, jitted = minicnn_steps(x, y)
    fns = {"minicnn": on_batch, "minicnn:step": jitted,
           "minicnn:xla-pool-grad": minicnn_steps(x, y, xla_pool_grad=True)[1]}
    try:
        fns["keras"] = keras_step(x, y)
    except ImportError:
        pass
    try:
        fns["torch"] = torch_step(x, y, channels_last=False)
        fns["torch_cl"] = torch_step(x, y, channels_last=True)
    except ImportError:
        pass
    times = time_interleaved(fns, repeats=repeats, warmup=2)
    name = f"small convnet train step {size}x{size} b{batch}"
    base = times["minicnn"]["seconds"]
    return [row(name, impl, t["seconds"], items=batch, flops=flops(size, batch), min_s=t["min"],
                ratio_to_minicnn=t["seconds"] / base) for impl, t in times.items()]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    before = load_average()
    rows = run(p.parse_args().quick)
    print(f"load average before {before}, after {load_average()}")
    print(f"{'implementation':<24}{'ms/step':>10}{'images/s':>10}{'GFLOP/s':>9}{'x minicnn':>11}")
    for r_ in rows:
        print(f"{r_['impl']:<24}{1000 * r_['seconds']:>10.1f}{r_['items_per_s']:>10.1f}"
              f"{r_['gflops_per_s']:>9.1f}{r_['ratio_to_minicnn']:>11.2f}")


if __name__ == "__main__":
    main()
