"""Keras ``ImageDataGenerator`` augmentation as one jitted, vmapped JAX program.

``ImageAugmenter(...)(key, images)`` draws one set of transform parameters per image and applies them all in a
single resampling pass: a per-image affine matrix (rotation, shift, shear, zoom about the centre, composed exactly
as Keras' legacy ``apply_affine_transform``), horizontal/vertical flips folded into the sampling grid, bilinear
interpolation with scipy.ndimage's border rules (``jax.scipy.ndimage.map_coordinates`` differs from scipy at
borders, jax#5687, so the index folding is written out here), then channel shift, brightness and rescale.

Semantics follow ``keras.src.legacy.preprocessing.image.ImageDataGenerator``: angles in degrees, shifts as
fractions of the image size (or pixels when >= 1), zoom factors drawn independently per axis from
``[1 - z, 1 + z]`` (> 1 zooms out), parameters under Keras' ``transform_parameters`` names. See
docs/AUGMENTATION.md for where (and why) minicnn departs from Keras by default and how ``keras_compat=True``
restores Keras' behaviour bit for bit.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["FILL_MODES", "PARAM_NAMES", "ImageAugmenter"]

FILL_MODES = ("nearest", "constant", "reflect", "wrap")
PARAM_NAMES = (
    "theta",
    "tx",
    "ty",
    "shear",
    "zx",
    "zy",
    "flip_horizontal",
    "flip_vertical",
    "channel_shift_intensity",
    "brightness",
)
# What Keras' apply_transform assumes for a missing key; None means "step not applied".
_DEFAULTS = {
    "theta": 0.0,
    "tx": 0.0,
    "ty": 0.0,
    "shear": 0.0,
    "zx": 1.0,
    "zy": 1.0,
    "flip_horizontal": False,
    "flip_vertical": False,
    "channel_shift_intensity": None,
    "brightness": None,
}


# ----------------------------------------------------------------------------------------------------------------
# Resampling: scipy.ndimage.affine_transform(order=1) border rules, one axis at a time.


def _neighbours(coord, n: int, fill_mode: str):
    """The two bilinear taps along one axis, folded into the image as scipy.ndimage does for ``order=1``.

    coord: (...) float32 input coordinates along an axis of length ``n``.
    Returns ``(i0, i1, w1, inside)``: int32 tap indices in ``[0, n)``, the float32 weight of ``i1`` and a bool mask,
    False only for 'constant' mode points outside ``[0, n - 1]`` (scipy's 'constant' does not interpolate
    towards ``cval``: such points take ``cval`` outright).
    """
    inside = jnp.ones(coord.shape, bool)
    if fill_mode == "wrap":
        # scipy's legacy 'wrap' folds the *coordinate* with period n - 1 (not n, that is 'grid-wrap'):
        # the first and last samples are identified.
        if n == 1:
            coord = jnp.zeros_like(coord)
        else:
            sz = n - 1
            coord = jnp.where(
                coord < 0,
                coord + sz * (jnp.floor(-coord / sz) + 1),
                jnp.where(coord > sz, coord - sz * jnp.floor(coord / sz), coord),
            )
    elif fill_mode == "constant":
        inside = (coord >= 0) & (coord <= n - 1)
    floor = jnp.floor(coord)
    w1 = coord - floor
    i0 = floor.astype(jnp.int32)
    i1 = i0 + 1
    if fill_mode == "reflect":
        # Half-sample symmetric extension of the sample indices: d c b a | a b c d | d c b a.
        def fold(i):
            m = jnp.mod(i, 2 * n)
            return jnp.where(m >= n, 2 * n - 1 - m, m)

        return fold(i0), fold(i1), w1, inside
    # 'nearest' clamps; for 'wrap' and 'constant' the coordinate is already in [0, n - 1] wherever it matters and
    # clamping only keeps the zero-weight tap in bounds.
    return jnp.clip(i0, 0, n - 1), jnp.clip(i1, 0, n - 1), w1, inside


def _resample(image, rows, cols, fill_mode: str, cval: float):
    """Bilinear sample of ``image`` at fractional positions.

    image: (H, W, C) float32; rows, cols: (H', W') float32 input coordinates. Returns (H', W', C) float32.
    """
    h, w, c = image.shape
    r0, r1, wr, inside_r = _neighbours(rows, h, fill_mode)
    c0, c1, wc, inside_c = _neighbours(cols, w, fill_mode)
    flat = image.reshape(h * w, c)

    def tap(r, cc):
        return flat.at[r * w + cc].get(mode="promise_in_bounds")

    wr, wc = wr[..., None], wc[..., None]
    top = tap(r0, c0) * (1 - wc) + tap(r0, c1) * wc
    bottom = tap(r1, c0) * (1 - wc) + tap(r1, c1) * wc
    out = top * (1 - wr) + bottom * wr
    if fill_mode == "constant":
        out = jnp.where((inside_r & inside_c)[..., None], out, jnp.asarray(cval, out.dtype))
    return out


# ----------------------------------------------------------------------------------------------------------------
# The per-image transform.


def _affine_matrix(p, h: int, w: int, keras_compat: bool):
    """3x3 matrix taking an output pixel ``(col, row, 1)`` to the input position it samples.

    Composed as Keras does: ``rotate @ shift @ shear @ zoom``, conjugated by a move of the centre to the origin.
    Keras centres column coordinates on ``h / 2 - 0.5`` and row coordinates on ``w / 2 - 0.5`` (its offset helper
    is called with the axes swapped), which is off-centre for non-square images; ``keras_compat`` keeps that.
    """
    theta, shear = jnp.deg2rad(p["theta"]), jnp.deg2rad(p["shear"])
    one, zero = jnp.ones_like(theta), jnp.zeros_like(theta)

    def matrix(*rows):
        return jnp.stack([jnp.stack(r) for r in rows])

    rotate = matrix([jnp.cos(theta), -jnp.sin(theta), zero], [jnp.sin(theta), jnp.cos(theta), zero], [zero, zero, one])
    shift = matrix([one, zero, p["tx"]], [zero, one, p["ty"]], [zero, zero, one])
    shear_m = matrix([one, -jnp.sin(shear), zero], [zero, jnp.cos(shear), zero], [zero, zero, one])
    zoom = matrix([p["zx"], zero, zero], [zero, p["zy"], zero], [zero, zero, one])
    cx, cy = (h / 2 - 0.5, w / 2 - 0.5) if keras_compat else (w / 2 - 0.5, h / 2 - 0.5)
    to_centre = jnp.array([[1.0, 0.0, cx], [0.0, 1.0, cy], [0.0, 0.0, 1.0]])
    from_centre = jnp.array([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]])
    return to_centre @ rotate @ shift @ shear_m @ zoom @ from_centre


def _channel_shift(image, intensity):
    """Keras' apply_channel_shift: one offset for every channel, clipped to the image's own range."""
    return jnp.clip(image + intensity, image.min(), image.max())


def _brightness(image, factor):
    """Keras' apply_brightness_shift(scale=False), including its 8-bit PIL round trip.

    Keras truncates the image to uint8, lets PIL scale it (``floor(x * factor)``, clipped to [0, 255]) and reads it
    back; an image outside [0, 255] is first stretched to [0, 255] and mapped back afterwards. So brightness is
    meant for 0..255 images (Keras rescales after augmenting); a [0, 1] image truncates to black, as in Keras.
    """
    lo, hi = image.min(), image.max()
    stretch = (lo < 0) | (hi > 255)
    span = hi - lo
    eight_bit = jnp.floor(jnp.where(stretch, (image - lo) / jnp.where(span != 0, span, 1) * 255, image))
    out = jnp.clip(jnp.floor(eight_bit * factor), 0, 255)
    return jnp.where(stretch, out / 255 * span + lo, out)


def _apply_transform(images, params, fill_mode, cval, keras_compat, rescale):
    """images: (N, H, W, C); params: dict of (N,) arrays or None. Returns (N, H, W, C) float32."""
    one = functools.partial(_transform_one, fill_mode=fill_mode, cval=cval, keras_compat=keras_compat)
    out = jax.vmap(one)(images.astype(jnp.float32), params)
    return out * rescale if rescale else out


def _transform_one(image, p, *, fill_mode, cval, keras_compat):
    """image: (H, W, C) float32; p: dict of scalars (None entries skip their step). Returns (H, W, C) float32."""
    h, w, _ = image.shape
    m = _affine_matrix(p, h, w, keras_compat)
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    # Keras flips after the affine resampling; a flip only permutes output pixels, so it folds into the grid.
    cols = jnp.where(p["flip_horizontal"], w - 1 - cols, cols)
    rows = jnp.where(p["flip_vertical"], h - 1 - rows, rows)
    src_cols = m[0, 0] * cols + m[0, 1] * rows + m[0, 2]
    src_rows = m[1, 0] * cols + m[1, 1] * rows + m[1, 2]
    out = _resample(image, src_rows, src_cols, fill_mode, cval)
    # Channel shift uses the image's global min/max, which the flips do not change: order is as in Keras.
    if p["channel_shift_intensity"] is not None:
        out = _channel_shift(out, p["channel_shift_intensity"])
    if p["brightness"] is not None:
        out = _brightness(out, p["brightness"])
    return out


# ----------------------------------------------------------------------------------------------------------------
# Parameter draws (Keras' get_random_transform, vectorised over a batch with jax.random).


def _symmetric(key, n, bound):
    return jax.random.uniform(key, (n,), jnp.float32, -bound, bound)


def _shift(key, n, shift_range, size):
    """Keras' shift draw: a float is uniform in ``±range``, an int an integer in ``[0, range)`` with a random sign,
    a sequence one of its elements with a random sign; when every value is below 1 it is a fraction of ``size``."""
    if not _enabled(shift_range):
        return jnp.zeros((n,), jnp.float32)
    k_value, k_sign = jax.random.split(key)
    if isinstance(shift_range, numbers.Integral):
        value = jax.random.randint(k_value, (n,), 0, shift_range) * jax.random.rademacher(k_sign, (n,))
    elif isinstance(shift_range, numbers.Real):
        value = _symmetric(k_value, n, shift_range)
    else:
        value = jax.random.choice(k_value, jnp.asarray(shift_range, jnp.float32), (n,))
        value = value * jax.random.rademacher(k_sign, (n,))
    value = value.astype(jnp.float32)
    return value * size if np.max(shift_range) < 1 else value


def _enabled(value) -> bool:
    return bool(np.any(np.asarray(value) != 0)) if value is not None else False


class ImageAugmenter:
    """Random image augmentation with Keras ``ImageDataGenerator`` semantics.

    Args mirror Keras': ``rotation_range`` (degrees), ``width_shift_range``/``height_shift_range`` (float: fraction
    of the width/height when < 1, pixels otherwise; int: whole pixels in ``[0, range)``; sequence: one of its
    values, each with a random sign), ``shear_range`` (degrees, counter-clockwise), ``zoom_range`` (float ``z`` for
    ``[1 - z, 1 + z]`` or a ``(lo, hi)`` pair), ``horizontal_flip``/``vertical_flip`` (each with p=0.5),
    ``fill_mode`` ('nearest', 'constant', 'reflect', 'wrap', scipy.ndimage's meaning) with ``cval``,
    ``brightness_range`` (``(lo, hi)`` PIL brightness factor, meant for 0..255 images), ``channel_shift_range``
    (pixel units) and ``rescale`` (multiplied in last, as Keras' ``standardize`` does after augmenting).

    ``keras_compat=True`` reproduces two Keras legacy quirks: the swapped shift draw (keras#17398: ``tx``, a
    horizontal shift, is drawn from ``height_shift_range`` times the height, and ``ty`` from the width settings) and
    the off-centre pivot for non-square images. By default the documented axes and the true centre are used.

    Treat the settings as read-only: they are baked into the compiled programs.

    Example::

        aug = ImageAugmenter(rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
                             shear_range=11.46, zoom_range=0.2, horizontal_flip=True)
        batch = aug(jax.random.key(0), images)  # images: (N, H, W, C), same shape back, float32
    """

    def __init__(
        self,
        rotation_range: float = 0.0,
        width_shift_range: float | Sequence[float] = 0.0,
        height_shift_range: float | Sequence[float] = 0.0,
        shear_range: float = 0.0,
        zoom_range: float | Sequence[float] = 0.0,
        horizontal_flip: bool = False,
        vertical_flip: bool = False,
        fill_mode: str = "nearest",
        cval: float = 0.0,
        brightness_range: Sequence[float] | None = None,
        channel_shift_range: float = 0.0,
        rescale: float | None = None,
        keras_compat: bool = False,
    ):
        if fill_mode not in FILL_MODES:
            raise ValueError(f"ImageAugmenter: fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")
        if isinstance(zoom_range, numbers.Real):
            zoom_range = (1 - zoom_range, 1 + zoom_range)
        elif len(zoom_range) != 2:
            raise ValueError(f"ImageAugmenter: zoom_range must be a float or a (lo, hi) pair, got {zoom_range!r}")
        if brightness_range is not None and len(brightness_range) != 2:
            raise ValueError(f"ImageAugmenter: brightness_range must be a (lo, hi) pair, got {brightness_range!r}")
        for name, value in (("width_shift_range", width_shift_range), ("height_shift_range", height_shift_range)):
            if not isinstance(value, numbers.Real) and np.asarray(value).ndim != 1:
                raise ValueError(f"ImageAugmenter: {name} must be a number or a 1-D sequence, got {value!r}")
        self.rotation_range = float(rotation_range)
        self.width_shift_range = width_shift_range if isinstance(width_shift_range, numbers.Real) else tuple(width_shift_range)
        self.height_shift_range = height_shift_range if isinstance(height_shift_range, numbers.Real) else tuple(height_shift_range)
        self.shear_range = float(shear_range)
        self.zoom_range = (float(zoom_range[0]), float(zoom_range[1]))
        self.horizontal_flip = bool(horizontal_flip)
        self.vertical_flip = bool(vertical_flip)
        self.fill_mode = fill_mode
        self.cval = float(cval)
        self.brightness_range = None if brightness_range is None else tuple(map(float, brightness_range))
        self.channel_shift_range = float(channel_shift_range)
        self.rescale = rescale
        self.keras_compat = bool(keras_compat)

    # Augmenters with equal settings are equal and share compiled programs (they are static jit arguments).
    def _settings(self) -> tuple:
        return tuple(vars(self).items())

    def __eq__(self, other) -> bool:
        return type(other) is ImageAugmenter and self._settings() == other._settings()

    def __hash__(self) -> int:
        return hash(self._settings())

    def __repr__(self) -> str:
        return f"ImageAugmenter({', '.join(f'{k}={v!r}' for k, v in self._settings())})"

    # -- public API ---------------------------------------------------------------------------------------------

    def __call__(self, key: jax.Array, images) -> jax.Array:
        """Augment a batch. key: a PRNG key; images: (N, H, W, C) -> (N, H, W, C) float32, on images' device."""
        return _augment(self, key, _check_images(images))

    def random_params(self, key: jax.Array, n: int, image_shape: Sequence[int]) -> dict:
        """Draw ``n`` parameter sets for images of ``image_shape`` ((H, W) or (H, W, C)).

        Returns Keras' ``transform_parameters`` as a dict of (n,) arrays: ``theta``, ``shear`` (degrees), ``tx``
        (pixels along the width: positive samples further right, moving content left), ``ty`` (pixels along the
        height), ``zx``, ``zy``, ``flip_horizontal``, ``flip_vertical`` (bool), and ``channel_shift_intensity``,
        ``brightness``, which are None when that augmentation is off (as in Keras).
        """
        return _draw(self, key, int(n), (int(image_shape[0]), int(image_shape[1])))

    def apply_transform(self, images, params: dict) -> jax.Array:
        """Apply given parameters: images (N, H, W, C); params: Keras names -> (N,) arrays or scalars (missing keys
        take Keras' defaults, None skips channel shift / brightness). Returns (N, H, W, C) float32."""
        images = _check_images(images)
        unknown = set(params) - set(PARAM_NAMES)
        if unknown:
            raise ValueError(f"apply_transform: unknown parameter(s) {sorted(unknown)}; expected {PARAM_NAMES}")
        n = images.shape[0]
        full = {}
        for name, default in _DEFAULTS.items():
            value = params.get(name, default)
            if value is not None:
                dtype = jnp.bool_ if name.startswith("flip") else jnp.float32
                value = jnp.broadcast_to(jnp.asarray(value, dtype), (n,))
            full[name] = value
        return _apply(self.fill_mode, self.cval, self.keras_compat, self.rescale, images, full)

    # -- bodies of the jitted programs below ---------------------------------------------------------------------

    def _random_params(self, key, n, hw):
        h, w = hw
        keys = dict(zip(PARAM_NAMES, jax.random.split(key, len(PARAM_NAMES))))
        if self.keras_compat:  # keras#17398: x shift from the height settings, y shift from the width settings
            tx = _shift(keys["tx"], n, self.height_shift_range, h)
            ty = _shift(keys["ty"], n, self.width_shift_range, w)
        else:
            tx = _shift(keys["tx"], n, self.width_shift_range, w)
            ty = _shift(keys["ty"], n, self.height_shift_range, h)
        lo, hi = self.zoom_range
        if lo == 1 and hi == 1:
            zx = zy = jnp.ones((n,), jnp.float32)
        else:
            zx, zy = jax.random.uniform(keys["zx"], (2, n), jnp.float32, lo, hi)
        return {
            "theta": _symmetric(keys["theta"], n, self.rotation_range),
            "tx": tx,
            "ty": ty,
            "shear": _symmetric(keys["shear"], n, self.shear_range),
            "zx": zx,
            "zy": zy,
            "flip_horizontal": jax.random.bernoulli(keys["flip_horizontal"], 0.5, (n,)) & self.horizontal_flip,
            "flip_vertical": jax.random.bernoulli(keys["flip_vertical"], 0.5, (n,)) & self.vertical_flip,
            "channel_shift_intensity": (
                _symmetric(keys["channel_shift_intensity"], n, self.channel_shift_range)
                if self.channel_shift_range
                else None
            ),
            "brightness": (
                jax.random.uniform(keys["brightness"], (n,), jnp.float32, *self.brightness_range)
                if self.brightness_range is not None
                else None
            ),
        }

    def _random_augment(self, key, images):
        n, h, w = images.shape[:3]
        params = self._random_params(key, n, (h, w))
        return _apply_transform(images, params, self.fill_mode, self.cval, self.keras_compat, self.rescale)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _draw(aug, key, n, hw):
    return aug._random_params(key, n, hw)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _apply(fill_mode, cval, keras_compat, rescale, images, params):
    return _apply_transform(images, params, fill_mode, cval, keras_compat, rescale)


@functools.partial(jax.jit, static_argnums=0)
def _augment(aug, key, images):
    return aug._random_augment(key, images)


def _check_images(images):
    if getattr(images, "ndim", None) != 4:
        raise ValueError(
            f"ImageAugmenter expects a batch of images (N, H, W, C); got shape {getattr(images, 'shape', None)}"
        )
    return images
