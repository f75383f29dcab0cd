"""Where a train step's convolution time goes: each pass of one 3x3 "same" convolution, jitted alone,
interleaved with PyTorch channels_last's ``convolution_backward`` (benchmarks/NOTES.md, issue 16).

    python -m benchmarks.profile_conv [--batch 20] [--shapes 150x64x64,75x64x128] [--alternatives]

Per shape ``HxCxF`` (input H x H x C, F filters): forward, d/dx and d/dkernel under ``minicnn.ops.jit``
(XLA's Eigen kernels) and under plain ``jax.jit`` (YNNPACK), against PyTorch. ``--alternatives`` adds
the formulations tried for the backward passes: the filter gradient as nine shifted matmuls and as
one im2col matmul, the same convolution on operands transposed beforehand, Winograd F(2x2, 3x3) for
d/dx, and the convolution as a 3-D one (which YNNPACK declines). Each is checked against XLA's
gradient first. Not part of ``python -m benchmarks``: it profiles, it does not compare products.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks.common import time_interleaved
from minicnn import ops

VGG16_SHAPES = "150x64x64,75x64x128,75x128x128,37x128x256,37x256x256,18x256x512,18x512x512,9x512x512"
SAME = ((1, 1), (1, 1))
DIMS = ("NHWC", "HWIO", "NHWC")


def conv(x, kernel):
    """x: (N, H, W, C), kernel: (3, 3, C, F) -> (N, H, W, F)."""
    return lax.conv_general_dilated(x, kernel, (1, 1), SAME, dimension_numbers=DIMS)


def conv_3d(x, kernel):
    """The same convolution with a unit third spatial axis: YNNPACK takes only 2-D windows."""
    y = lax.conv_general_dilated(x[:, :, :, None], kernel[:, :, None], (1, 1, 1), (*SAME, (0, 0)),
                                 dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    return y[:, :, :, 0]


def grad_x(f):
    return lambda dy, kernel: jax.vjp(lambda x: f(x, kernel), jnp.zeros(dy.shape[:3] + kernel.shape[2:3]))[1](dy)[0]


def grad_kernel(f):
    return lambda x, dy: jax.vjp(lambda k: f(x, k), jnp.zeros((3, 3, x.shape[-1], dy.shape[-1])))[1](dy)[0]


def _shifted(x, dy):
    """The nine (N*H*W, C) windows of the padded x that meet dy."""
    xp = jnp.pad(x, ((0, 0), *SAME, (0, 0)))
    h, w = dy.shape[1:3]
    return [xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)]


def grad_kernel_shifted_dots(x, dy):
    """d/dkernel as nine ``dy^T x_shifted`` matmuls (contraction over N*H*W)."""
    dots = [jnp.einsum("nhwf,nhwc->cf", dy, xs) for xs in _shifted(x, dy)]
    return jnp.stack(dots).reshape(3, 3, x.shape[-1], dy.shape[-1])


def grad_kernel_im2col(x, dy):
    """d/dkernel as one ``patches^T dy`` matmul over a (N*H*W, 9*C) patch matrix."""
    patches = jnp.stack(_shifted(x, dy), axis=3).reshape(-1, 9 * x.shape[-1])
    return (patches.T @ dy.reshape(-1, dy.shape[-1])).reshape(3, 3, x.shape[-1], dy.shape[-1])


def grad_kernel_pretransposed(x, dy):
    """XLA's own filter-gradient convolution, on operands transposed to its canonical layout first."""
    out = lax.conv_general_dilated(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)), (1, 1), SAME,
                                   dimension_numbers=DIMS)  # (C, 3, 3, F)
    return out.transpose(1, 2, 0, 3)


def grad_x_winograd(dy, kernel):
    """d/dx as the padded output gradient convolved with the flipped kernel, by Winograd F(2x2, 3x3)."""
    return ops.winograd.conv2d_3x3(dy, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2), SAME)


def profile(shape: str, batch: int, alternatives: bool, repeats: int) -> dict:
    import torch
    size, c, f = (int(v) for v in shape.split("x"))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, size, size, c), np.float32))
    kernel = jnp.asarray(rng.standard_normal((3, 3, c, f), np.float32) * 0.05)
    dy = jnp.asarray(rng.standard_normal((batch, size, size, f), np.float32))
    cases = {"fwd": (ops.jit(conv), (x, kernel)), "dx": (ops.jit(grad_x(conv)), (dy, kernel)),
             "dkernel": (ops.jit(grad_kernel(conv)), (x, dy)),
             "plain jit fwd": (jax.jit(conv), (x, kernel)), "plain jit dx": (jax.jit(grad_x(conv)), (dy, kernel)),
             "plain jit dkernel": (jax.jit(grad_kernel(conv)), (x, dy))}
    if alternatives:
        cases.update({
            "dkernel shifted dots": (ops.jit(grad_kernel_shifted_dots), (x, dy)),
            "dkernel im2col": (ops.jit(grad_kernel_im2col), (x, dy)),
            "dkernel pre-transposed": (ops.jit(grad_kernel_pretransposed), (x, dy)),
            "dx winograd": (ops.jit(grad_x_winograd), (dy, kernel)),
            "3-D plain jit fwd": (jax.jit(conv_3d), (x, kernel)),
            "3-D plain jit dx": (jax.jit(grad_x(conv_3d)), (dy, kernel)),
            "3-D plain jit dkernel": (jax.jit(grad_kernel(conv_3d)), (x, dy))})
    errors = {}
    for name, (fn, args) in cases.items():
        ref_fn, ref_args = cases[next(p for p in ("fwd", "dx", "dkernel") if p in name.split())]  # XLA's pass
        ref = ref_fn(*ref_args)
        errors[name] = float(jnp.max(jnp.abs(fn(*args) - ref)) / jnp.max(jnp.abs(ref)))
    channels_last = torch.channels_last
    tx = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous(memory_format=channels_last)
    tk = torch.from_numpy(np.array(kernel)).permute(3, 2, 0, 1).contiguous(memory_format=channels_last)
    tdy = torch.from_numpy(np.array(dy)).permute(0, 3, 1, 2).contiguous(memory_format=channels_last)

    def torch_backward(mask):
        with torch.no_grad():
            return torch.ops.aten.convolution_backward(tdy, tx, tk, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

    fns = {name: (lambda fn=fn, args=args: fn(*args)) for name, (fn, args) in cases.items()}
    fns.update({"torch fwd": lambda: torch.nn.functional.conv2d(tx, tk, padding=1),
                "torch dx": lambda: torch_backward([True, False, False]),
                "torch dkernel": lambda: torch_backward([False, True, False])})
    times = time_interleaved(fns, repeats=repeats)
    return {name: {"ms": t["seconds"] * 1e3, "rel_err": errors.get(name, 0.0)} for name, t in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--shapes", default=VGG16_SHAPES, help="comma-separated HxCxF")
    p.add_argument("--alternatives", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    import torch
    torch.set_num_threads(os.cpu_count())
    for shape in args.shapes.split(","):
        result = profile(shape, args.batch, args.alternatives, args.repeats)
        print(f"{shape} b{args.batch}: " + ", ".join(f"{k} {v['ms']:.0f} ms" for k, v in result.items()))
        worst = max(result.items(), key=lambda kv: kv[1]["rel_err"])
        print(f"  largest relative difference from XLA's pass: {worst[0]} {worst[1]['rel_err']:.1e}")


if __name__ == "__main__":
    main()
