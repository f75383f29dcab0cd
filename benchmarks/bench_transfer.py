"""Train-step time of the lecture's VGG16 conv base + Flatten + Dense(256) + Dense(1) (150x150, batch 20,
RMSprop) with everything trainable, with block5 + head trainable, and with the whole base frozen:
minicnn versus Keras 3 on JAX (``layer.trainable = False``) and PyTorch (``requires_grad = False``,
NCHW and channels_last).

    python -m benchmarks.bench_transfer [--quick]

Freezing should save work: with block5 open the step is the forward of the whole base plus the
backward of block5 and the head only, so it should cost at most half the all-trainable step, and
with the base frozen little more than the forward. Within one setting the contenders take turns
(``time_interleaved``) so load from other processes hits them alike; each is timed the way a loop
calls it, reading the loss back every step. Random weights: the speed does not depend on them.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import VGG16_BLOCKS, VGG_WIDTHS, row, time_interleaved, vgg16_flops  # noqa: E402
from minicnn.layers import Dense, Flatten, Sequential  # noqa: E402
from minicnn.models import VGG16  # noqa: E402
from minicnn.train import Trainer  # noqa: E402
from minicnn.transfer import trainable_mask  # noqa: E402

SETTINGS = ("all trainable", "block5 + head", "base frozen")
BLOCK5 = "block5_conv1"


def glorot(shapes, seed: int = 0):
    """Glorot-uniform kernels, zero biases, drawn with NumPy (fast for VGG16's 14.7M weights)."""
    rng = np.random.default_rng(seed)

    def draw(leaf):
        if len(leaf.shape) == 1:
            return np.zeros(leaf.shape, np.float32)
        fan_in, fan_out = np.prod(leaf.shape[:-1]), np.prod(leaf.shape[:-2]) * leaf.shape[-1]
        limit = np.sqrt(6 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map(draw, shapes)


class MinicnnSteps:
    """One Trainer; ``use(setting)`` switches the trainable mask (a new optimizer state, same params)."""

    def __init__(self, x, y):
        size = x.shape[1]
        self.model = Sequential([VGG16(include_top=False, input_shape=(size, size, 3)), Flatten(),
                                 Dense(256, activation="relu"), Dense(1, activation="sigmoid")])
        variables = glorot(jax.eval_shape(self.model.init, jax.random.key(0), jnp.zeros((1, size, size, 3))))
        self.masks = {"all trainable": trainable_mask(variables),
                      "block5 + head": trainable_mask(variables, from_layer=BLOCK5, model=self.model),
                      "base frozen": trainable_mask(variables, "all", layers=["vgg16"])}
        self.trainer = Trainer(self.model, "binary_crossentropy", "rmsprop", optimizer_kwargs={"learning_rate": 1e-5},
                               variables=variables)
        self.trainer.build(x)
        self.x, self.y = x, y

    def use(self, setting):
        self.trainer.set_trainable(self.masks[setting])
        return lambda: self.trainer.train_on_batch(self.x, self.y)


class KerasSteps:
    """Keras' way: set ``trainable`` on the layers, then compile again (or the change is ignored)."""

    def __init__(self, x, y):
        import keras
        self.keras = keras
        self.base = keras.applications.VGG16(weights=None, include_top=False, input_shape=x.shape[1:])
        self.model = keras.Sequential([self.base, keras.layers.Flatten(), keras.layers.Dense(256, activation="relu"),
                                       keras.layers.Dense(1, activation="sigmoid")])
        self.x, self.y = x, y

    def use(self, setting):
        self.base.trainable = setting != "base frozen"
        open_ = setting == "all trainable"
        for layer in self.base.layers:  # the lecture's set_trainable loop
            open_ = open_ or (setting == "block5 + head" and layer.name == BLOCK5)
            layer.trainable = open_ and setting != "base frozen"
        self.model.compile(optimizer=self.keras.optimizers.RMSprop(1e-5), loss="binary_crossentropy")
        return lambda: self.model.train_on_batch(self.x, self.y)


class TorchSteps:
    """The same network from ``torch.nn``; frozen parameters get ``requires_grad=False`` and stay out
    of the optimizer."""

    def __init__(self, x, y, channels_last: bool):
        import torch
        from torch import nn
        self.torch = torch
        torch.manual_seed(0)
        layers, c = [], 3
        for n_convs, width in zip(VGG16_BLOCKS, VGG_WIDTHS):
            for _ in range(n_convs):
                layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU()]
                c = width
            layers.append(nn.MaxPool2d(2))
        self.base = nn.Sequential(*layers)
        h = x.shape[1] // 32
        self.net = nn.Sequential(self.base, nn.Flatten(), nn.Linear(c * h * h, 256), nn.ReLU(), nn.Linear(256, 1),
                                 nn.Sigmoid())
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.net = self.net.to(memory_format=fmt)
        self.x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
        self.y = torch.from_numpy(y)[:, None]
        self.convs = [m for m in self.base if isinstance(m, nn.Conv2d)]

    def use(self, setting):
        first_open = {"all trainable": 0, "block5 + head": 10, "base frozen": len(self.convs)}[setting]
        for i, conv in enumerate(self.convs):  # block5_conv1 is the 11th convolution
            conv.requires_grad_(i >= first_open)
        params = [p for p in self.net.parameters() if p.requires_grad]
        opt = self.torch.optim.RMSprop(params, lr=1e-5, alpha=0.9, eps=1e-7)
        loss_fn = self.torch.nn.BCELoss()

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(self.net(self.x), self.y)
            loss.backward()
            opt.step()
            return loss.item()

        return step


def run(quick: bool = False) -> list[dict]:
    """Rows for ``python -m benchmarks``; ``quick``: 64x64, batch 4, 2 timed rounds (a smoke run)."""
    size, batch, repeats = (64, 4, 2) if quick else (150, 20, 3)
    r = np.random.default_rng(0)
    x = r.random((batch, size, size, 3), np.float32) * 255
    y = (r.random(batch) > 0.5).astype(np.float32)
    contenders = {"minicnn": MinicnnSteps(x, y)}
    try:
        contenders["keras"] = KerasSteps(x, y)
    except ImportError:
        pass
    try:
        contenders["torch"] = TorchSteps(x, y, channels_last=False)
        contenders["torch_cl"] = TorchSteps(x, y, channels_last=True)
    except ImportError:
        pass
    forward = vgg16_flops(size, batch)
    rows, seconds = [], {}
    for setting in SETTINGS:
        times = time_interleaved({impl: c.use(setting) for impl, c in contenders.items()}, repeats=repeats, warmup=1)
        name = f"VGG16 base + head train step {size}x{size} b{batch}, {setting}"
        for impl, t in times.items():
            seconds[impl, setting] = t["seconds"]
            rows.append(row(name, impl, t["seconds"], items=batch, min_s=t["min"],
                            ratio_to_minicnn=t["seconds"] / times["minicnn"]["seconds"]))
    for impl in contenders:
        full = seconds[impl, "all trainable"]
        rows.append({"workload": f"VGG16 freezing ratios {size}x{size} b{batch}", "impl": impl,
                     "block5_over_all": seconds[impl, "block5 + head"] / full,
                     "frozen_over_all": seconds[impl, "base frozen"] / full,
                     "forward_gflop": forward / 1e9})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    rows = run(p.parse_args().quick)
    print(f"{'setting':<48}{'implementation':<12}{'s/step':>9}{'x minicnn':>11}")
    for r_ in rows:
        if "seconds" in r_:
            print(f"{r_['workload'].split(', ')[-1]:<48}{r_['impl']:<12}{r_['seconds']:>9.3f}"
                  f"{r_['ratio_to_minicnn']:>11.2f}")
    print(f"\n{'implementation':<12}{'block5/all':>12}{'frozen/all':>12}")
    for r_ in rows:
        if "block5_over_all" in r_:
            print(f"{r_['impl']:<12}{r_['block5_over_all']:>12.2f}{r_['frozen_over_all']:>12.2f}")


if __name__ == "__main__":
    main()
