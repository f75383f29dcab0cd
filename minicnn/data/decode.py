"""Decoding one image file into a float32 array, the way Keras' ``load_img`` + ``img_to_array`` do, refusing
what Keras would get silently wrong (undecodable files, decompression bombs, 16-bit images clipped to white)."""

from __future__ import annotations

import contextlib
import numbers
import os
import stat

import numpy as np
from PIL import Image

__all__ = [
    "COLOR_MODES",
    "IMAGE_EXTENSIONS",
    "INTERPOLATIONS",
    "BadImageError",
    "check_image",
    "check_target_size",
    "decode_image",
    "load_image",
    "resize_like_image_dataset",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Keras' PIL_INTERPOLATION_METHODS: the same Pillow filters, so resized pixels are identical to Keras'.
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "hamming": Image.Resampling.HAMMING,
    "box": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}
# Keras' image_dataset_from_directory does not resize with Pillow: it decodes, casts to float32 and calls
# tf.image.resize / keras.ops.image.resize (half-pixel centres, no antialiasing). These are the two methods
# minicnn reproduces that way (Pillow's bilinear antialiases a downscale: 2-13 levels off on a photo).
TENSOR_INTERPOLATIONS = ("bilinear", "nearest")
COLOR_MODES = {"rgb": "RGB", "grayscale": "L"}
# Pillow clips 16-bit samples to 255 when converting to L or RGB; these are rescaled by 255 / 65535 instead.
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class BadImageError(ValueError):
    """A file with an image extension that Pillow cannot decode (corrupt, truncated, not an image, unreadable, or
    not a regular file)."""

    def __init__(self, path, reason):
        super().__init__(f"{os.fspath(path)}: cannot decode image ({reason})")
        self.path = os.fspath(path)


def check_target_size(target_size, who: str = "target_size") -> None:
    """Raise ValueError unless ``target_size`` is None or ``(height, width)`` of positive ints."""
    if target_size is None:
        return
    if not (
        np.shape(target_size) == (2,)
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in target_size)
    ):
        raise ValueError(f"{who} must be (height, width), two positive ints, got {target_size!r}")


_FILE_KINDS = {stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory"}


def _regular_file_error(path, mode: int) -> BadImageError | None:
    if stat.S_ISREG(mode):
        return None
    return BadImageError(path, f"not a regular file but {_FILE_KINDS.get(stat.S_IFMT(mode), 'a special file')}")


@contextlib.contextmanager
def _open(path, max_pixels: int | None):
    """Open ``path`` (header only) and refuse it when it is not a regular file or has more than ``max_pixels``
    pixels. A named pipe or device is never read: reading one can block forever (the path is stat-ed first, and
    opened non-blocking and fstat-ed again in case it was swapped in between)."""
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        error = _regular_file_error(path, os.stat(path).st_mode)
        if error is not None:
            raise error
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise BadImageError(path, f"{type(e).__name__}: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as file:
        error = _regular_file_error(path, os.fstat(fd).st_mode)
        if error is not None:
            raise error
        try:
            img = Image.open(file)
        except Image.DecompressionBombError as e:
            raise Image.DecompressionBombError(f"{os.fspath(path)}: refused as a decompression bomb ({e})") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise BadImageError(path, f"{type(e).__name__}: {e}") from None
        with img:
            width, height = img.size
            if limit is not None and width * height > limit:
                raise Image.DecompressionBombError(
                    f"{os.fspath(path)}: {width}x{height} = {width * height} pixels exceeds the limit of {limit} "
                    "(decompression-bomb guard; pass a larger max_pixels to allow it)"
                )
            yield img


def check_image(path, max_pixels: int | None = None) -> tuple[int, int]:
    """Read only the header of ``path``; return its (width, height). Raises BadImageError or
    PIL.Image.DecompressionBombError (over ``max_pixels``, default Pillow's ``Image.MAX_IMAGE_PIXELS``)."""
    with _open(path, max_pixels) as img:
        return img.size


def load_image(
    path,
    target_size: tuple[int, int] | None = (150, 150),
    color_mode: str = "rgb",
    interpolation: str = "nearest",
    max_pixels: int | None = None,
) -> np.ndarray:
    """Decode ``path`` to ``(H, W, 3)`` ('rgb') or ``(H, W, 1)`` ('grayscale') float32 in [0, 255].

    Pixel-identical to Keras' ``img_to_array(load_img(path, color_mode, target_size, interpolation))``: the image
    is converted with Pillow (alpha dropped; palette, CMYK and LA converted), then resized to ``target_size``
    (``(height, width)``, None keeps the size) with the Pillow filter named by ``interpolation``, ``"nearest"``
    by default as in ``load_img`` (``image_dataset_from_directory`` resizes bilinearly: pass
    ``interpolation="bilinear"`` for its pixels). 16-bit images
    (modes ``I;16*``/``I``) are the exception: Keras clips them to 255, here they are scaled by 255 / 65535.
    """
    return decode_image(path, target_size, color_mode, interpolation, max_pixels).astype(np.float32)


def _resample_axis(image: np.ndarray, axis: int, size_out: int, interpolation: str) -> np.ndarray:
    """``image`` float32 resampled to ``size_out`` samples along ``axis``: sample ``i`` sits at
    ``(i + 0.5) * scale - 0.5`` (half-pixel centres); bilinear blends the two neighbours (clamped at the
    border), nearest takes the pixel ``floor((i + 0.5) * scale)``. Two gathers and a blend, not a matrix
    product: a BLAS call here starts BLAS's own threads inside every decoding thread (12x slower on 2 cores)."""
    size_in = image.shape[axis]
    centres = (np.arange(size_out, dtype=np.float32) + np.float32(0.5)) * np.float32(size_in / size_out)
    if interpolation == "nearest":
        return np.take(image, np.minimum(np.floor(centres).astype(np.int64), size_in - 1), axis=axis)
    position = centres - np.float32(0.5)
    low = np.floor(position)
    frac = (position - low).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(image.ndim)])
    low = low.astype(np.int64)
    below = np.take(image, np.clip(low, 0, size_in - 1), axis=axis)
    above = np.take(image, np.clip(low + 1, 0, size_in - 1), axis=axis)
    return below * (1 - frac) + above * frac


def resize_like_image_dataset(image: np.ndarray, target_size, interpolation: str = "bilinear") -> np.ndarray:
    """Resize ``image: (h, w, C)`` to ``(H, W, C)`` float32 as Keras' ``image_dataset_from_directory`` does
    (``tf.image.resize`` / ``keras.ops.image.resize``: half-pixel centres, no antialiasing, no rounding), for
    ``interpolation`` in ``TENSOR_INTERPOLATIONS``. Separable: rows, then columns."""
    rows = _resample_axis(image.astype(np.float32), 0, target_size[0], interpolation)
    return _resample_axis(rows, 1, target_size[1], interpolation)


def decode_image(path, target_size=(150, 150), color_mode="rgb", interpolation="nearest", max_pixels=None,
                 resize="pillow"):
    """``load_image`` without the final cast: uint8 for 8-bit images (a quarter of the bytes to move), float32
    for 16-bit ones. ``resize="tensor"`` resizes as ``image_dataset_from_directory`` does instead of with
    Pillow (:func:`resize_like_image_dataset`; float32)."""
    check_target_size(target_size)
    if resize == "tensor":
        if interpolation not in TENSOR_INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {TENSOR_INTERPOLATIONS}, got {interpolation!r}")
        array = decode_image(path, None, color_mode, interpolation, max_pixels)
        same = target_size is None or array.shape[:2] == tuple(target_size)
        return array if same else resize_like_image_dataset(array, target_size, interpolation)
    if color_mode not in COLOR_MODES:
        raise ValueError(f"color_mode must be one of {tuple(COLOR_MODES)}, got {color_mode!r}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {tuple(INTERPOLATIONS)}, got {interpolation!r}")
    with _open(path, max_pixels) as img:
        try:
            img.load()
            sixteen_bit = img.mode in _SIXTEEN_BIT
            converted = img.convert("F" if sixteen_bit else COLOR_MODES[color_mode])
            if target_size is not None and converted.size != (target_size[1], target_size[0]):
                converted = converted.resize((target_size[1], target_size[0]), INTERPOLATIONS[interpolation])
        except (OSError, SyntaxError, ValueError) as e:
            raise BadImageError(path, f"{type(e).__name__}: {e}") from None
    array = np.asarray(converted)
    if sixteen_bit:
        array = array * np.float32(255 / 65535)
        return np.repeat(array[..., None], 3 if color_mode == "rgb" else 1, axis=-1)
    return array[..., None] if array.ndim == 2 else array
