"""Filter patterns: the input each filter responds to most, found by gradient ascent in input space.

All requested filters are optimised by one jitted program, ``vmap`` across filters of a
``lax.scan`` over steps. The forward pass is cut at the requested layer, and a Conv2D/Dense layer
computes only the optimised filter's channel (its sliced kernel), so filter f's forward and
backward skip the layer's other filters: for a first conv layer that is most of the work. Under
vmap that is a grouped convolution, which :func:`minicnn.ops.jit` keeps on XLA's Eigen kernels
(4.5x faster than YNNPACK's on CPU, measured); the layers before it see unbatched weights, so vmap
makes each of them one ordinary batched convolution over the filters' images. (Measured: 1.2-3.2x
faster than one batched program that computes the whole cut layer and reads image i's channel i;
benchmarks/NOTES.md, issue 16.) Two presets:

- ``"book"``: Chollet's lecture recipe. Start from grey noise ``uniform * 20 + 128``, 40 steps of
  ``x += step_size * g / rms(g)``, the model fed the raw pixels.
- ``"lucid"``: Olah et al.'s (Distill 2017, Lucid) recipe. The image is a sigmoid of colour-
  decorrelated, 1/f-scaled Fourier coefficients, optimised with Adam (0.05, 256 steps; Lucid runs
  512) through random pad, jitter, scale and rotation, which removes the high-frequency noise
  that makes raw ascent unreadable.

Regularisers compose: ``transforms`` are ``(key, image (H, W, C)) -> image`` applied before the
model (``pad``, ``jitter``, ``random_scale``, ``random_rotate``, ``blur``); ``penalties`` are
``image (H, W, C) -> scalar`` subtracted from the objective (``l2_decay``, ``total_variation``).
Images are in pixel units, ``[0, 255]`` for ``"lucid"``; ``preprocess`` maps them to the model's input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from minicnn import ops
from minicnn import inspector

__all__ = ["filter_patterns", "deprocess_image", "pad", "jitter", "random_scale", "random_rotate",
           "blur", "l2_decay", "total_variation", "normalize_by_rms", "PRESETS"]

Transform = Callable[[jax.Array, jax.Array], jax.Array]
Penalty = Callable[[jax.Array], jax.Array]


# --- regularisers -------------------------------------------------------------------------------

def pad(width: int, value: float = 127.5) -> Transform:
    """Pad ``width`` pixels of constant ``value`` on every side (so jitter can move the border in)."""
    return lambda key, x: jnp.pad(x, ((width, width), (width, width), (0, 0)), constant_values=value)


def jitter(pixels: int) -> Transform:
    """A random ``(H - pixels, W - pixels)`` crop: the pattern must survive small translations."""
    def transform(key, x):
        h, w, c = x.shape
        dy, dx = jax.random.randint(key, (2,), 0, pixels + 1)
        return jax.lax.dynamic_slice(x, (dy, dx, 0), (h - pixels, w - pixels, c))
    return transform


def _affine(x, scale, angle):
    """Resample x (H, W, C) zoomed by ``scale`` and rotated by ``angle`` radians about its centre
    (bilinear, edge pixels repeated outside)."""
    h, w, _ = x.shape
    yy, xx = jnp.meshgrid(jnp.arange(h) - (h - 1) / 2, jnp.arange(w) - (w - 1) / 2, indexing="ij")
    cos, sin = jnp.cos(angle) / scale, jnp.sin(angle) / scale
    sy = jnp.clip(cos * yy - sin * xx + (h - 1) / 2, 0, h - 1)
    sx = jnp.clip(sin * yy + cos * xx + (w - 1) / 2, 0, w - 1)
    y0, x0 = jnp.floor(sy).astype(jnp.int32), jnp.floor(sx).astype(jnp.int32)
    y1, x1 = jnp.minimum(y0 + 1, h - 1), jnp.minimum(x0 + 1, w - 1)
    wy, wx = (sy - y0)[..., None], (sx - x0)[..., None]
    return ((x[y0, x0] * (1 - wx) + x[y0, x1] * wx) * (1 - wy)
            + (x[y1, x0] * (1 - wx) + x[y1, x1] * wx) * wy)


def random_scale(scales: Sequence[float]) -> Transform:
    """Zoom by a factor drawn from ``scales`` (same output size)."""
    scales = np.asarray(scales, np.float32)  # NumPy: PRESETS builds this at import, before any backend
    return lambda key, x: _affine(x, jax.random.choice(key, scales), 0.0)


def random_rotate(degrees: Sequence[float]) -> Transform:
    """Rotate by an angle drawn from ``degrees`` (same output size)."""
    angles = np.deg2rad(np.asarray(degrees, np.float32))
    return lambda key, x: _affine(x, 1.0, jax.random.choice(key, angles))


def blur(sigma: float) -> Transform:
    """Gaussian blur (Yosinski et al. 2015); before the model it also low-passes the gradient."""
    r = max(1, int(np.ceil(3 * sigma)))
    g = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    g = (g / g.sum()).astype(np.float32)

    def transform(key, x):
        c = x.shape[-1]
        x = jnp.pad(x, ((r, r), (r, r), (0, 0)), mode="edge")[None]
        x = ops.depthwise_conv2d(x, jnp.tile(jnp.asarray(g)[:, None, None, None], (1, 1, c, 1)))
        return ops.depthwise_conv2d(x, jnp.tile(jnp.asarray(g)[None, :, None, None], (1, 1, c, 1)))[0]
    return transform


def l2_decay(weight: float) -> Penalty:
    """``weight * mean((x - mean(x))^2)``: pulls pixels toward the image mean (Yosinski et al.)."""
    return lambda x: weight * jnp.mean(jnp.square(x - x.mean()))


def total_variation(weight: float) -> Penalty:
    """``weight * mean |neighbour differences|``: favours piecewise-smooth images (Mahendran & Vedaldi)."""
    return lambda x: weight * (jnp.abs(jnp.diff(x, axis=0)).mean() + jnp.abs(jnp.diff(x, axis=1)).mean())


def normalize_by_rms(eps: float = 1e-5) -> optax.GradientTransformation:
    """Divide the update by its root mean square, as the lecture's ``grads /= sqrt(mean(g^2)) + 1e-5``."""
    def update(updates, state, params=None):
        return jax.tree.map(lambda u: u / (jnp.sqrt(jnp.mean(jnp.square(u))) + eps), updates), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


# --- image parametrisations ---------------------------------------------------------------------

def _pixels(key, size):
    """The lecture's start: grey noise ``uniform * 20 + 128``; the image is the parameter."""
    return jax.random.uniform(key, (size, size, 3)) * 20 + 128, lambda p: p


# Lucid's colour decorrelation: the square root of ImageNet's RGB covariance (from its SVD).
_COLOR_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32)
_COLOR_SQRT /= np.linalg.norm(_COLOR_SQRT, axis=0).max()


def _fourier(key, size, sd=0.01, decay_power=1.0):
    """Lucid's ``param.image(fft=True, decorrelate=True)``: coefficients scaled by 1/frequency, so
    every frequency moves at the same rate; an inverse FFT, decorrelated colours, a sigmoid."""
    freqs = np.sqrt(np.fft.fftfreq(size)[:, None] ** 2 + np.fft.rfftfreq(size)[None] ** 2)
    scale = jnp.asarray(size / np.maximum(freqs, 1.0 / size) ** decay_power, jnp.float32)

    def render(p):
        spectrum = (p[0] + 1j * p[1]) * scale[..., None]
        image = jnp.fft.irfft2(spectrum, s=(size, size), axes=(0, 1)) / 4.0
        return 255.0 * jax.nn.sigmoid(image @ _COLOR_SQRT.T)

    return sd * jax.random.normal(key, (2, *freqs.shape, 3)), render


PRESETS = {
    "book": dict(param=_pixels, steps=40, optimizer=lambda lr: optax.chain(normalize_by_rms(), optax.sgd(lr)),
                 step_size=1.0, transforms=()),
    "lucid": dict(param=_fourier, steps=256, optimizer=optax.adam, step_size=0.05,
                  transforms=(pad(12), jitter(8), random_scale([1 + (i - 5) / 50 for i in range(11)]),
                              random_rotate(list(range(-10, 11)) + 5 * [0]), jitter(4))),
}


# --- the program --------------------------------------------------------------------------------

@partial(ops.jit, static_argnames=("model", "path", "size", "steps", "param", "optimizer", "step_size",
                                   "transforms", "penalties", "preprocess"))
def _ascend(model, variables, filters, key, *, path, size, steps, param, optimizer, step_size,
            transforms, penalties, preprocess):
    tx = optimizer(step_size)

    def one(f):
        k_init, k_steps = jax.random.split(jax.random.fold_in(key, f))
        p, render = param(k_init, size)

        def loss(p, k):
            image = x = render(p)
            for t, kt in zip(transforms, jax.random.split(k, max(len(transforms), 1))):
                x = t(kt, x)
            a = inspector.forward_to(model, variables, preprocess(x[None]), path, channel=f)
            return -jnp.mean(a) + sum(pen(image) for pen in penalties)

        def step(carry, k):
            p, state = carry
            g = jax.grad(loss)(p, k)
            updates, state = tx.update(g, state, p)
            return (optax.apply_updates(p, updates), state), None

        (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), jax.random.split(k_steps, steps))
        return render(p)

    return jax.vmap(one)(filters)


def _identity(x):
    return x


def filter_patterns(model: nn.Module, variables: Mapping, layer: str, filters=None, size: int = 150,
                    steps: int | None = None, step_size: float | None = None, key=None,
                    preset: str = "book", transforms: Sequence[Transform] | None = None,
                    penalties: Sequence[Penalty] = (), preprocess: Callable | None = None):
    """The input pattern that maximises the mean activation of each of ``filters`` in ``layer``.

    layer: a layer path or suffix (``"block3_conv1"``); filters: channel indices (default all);
    ``steps``, ``step_size`` and ``transforms`` default to the preset's; ``key`` seeds the start
    image of filter f with ``fold_in(key, f)``, so a filter's pattern does not depend on which
    other filters are asked for. ``preprocess`` maps the (1, size, size, 3) pixel image to the
    model's input (default: none, as in the lecture). Returns (F, size, size, 3) float32 pixel
    images; :func:`deprocess_image` makes them viewable.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    cfg = PRESETS[preset]
    probe = jnp.zeros((1, size, size, 3), jnp.float32)
    info = inspector.resolve(inspector.layer_infos(model, variables, (preprocess or _identity)(probe)), layer)
    n = info.shape[-1]
    filters = np.arange(n) if filters is None else np.atleast_1d(np.asarray(filters))
    if filters.size == 0 or filters.min() < 0 or filters.max() >= n:
        raise ValueError(f"filters must be indices in [0, {n}) of layer {info.path!r} "
                         f"(output shape {info.shape}), got {filters.tolist()}")
    return _ascend(model, variables, jnp.asarray(filters, jnp.int32),
                   jax.random.key(0) if key is None else key, path=info.path, size=size,
                   steps=cfg["steps"] if steps is None else steps,
                   param=cfg["param"], optimizer=cfg["optimizer"],
                   step_size=float(cfg["step_size"] if step_size is None else step_size),
                   transforms=tuple(cfg["transforms"] if transforms is None else transforms),
                   penalties=tuple(penalties), preprocess=preprocess or _identity)


def deprocess_image(x) -> np.ndarray:
    """The lecture's display mapping: standardise, std 0.1 around 0.5, clip, to uint8.

    x: (..., H, W, C) float; each image is normalised on its own. Returns the same shape, uint8.
    """
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=(-3, -2, -1), keepdims=True)
    std = x.std(axis=(-3, -2, -1), keepdims=True)
    x = (x - mean) / (std + 1e-5) * 0.1 + 0.5
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)
