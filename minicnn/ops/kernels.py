"""Classic hand-made convolution kernels, as (kh, kw) float32 arrays.

Use one with :func:`minicnn.ops.conv2d` by adding the channel axes:
``conv2d(gray[..., None], k[:, :, None, None])``.
"""

from __future__ import annotations

import numpy as np

SOBEL_HORIZONTAL = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], np.float32)  # responds to horizontal edges
SOBEL_VERTICAL = SOBEL_HORIZONTAL.T.copy()                                     # responds to vertical edges
DIAGONAL = np.array([[0, 1, 2], [-1, 0, 1], [-2, -1, 0]], np.float32)
EDGE_DETECT = np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], np.float32)


def sobel_horizontal() -> np.ndarray:
    return SOBEL_HORIZONTAL.copy()


def sobel_vertical() -> np.ndarray:
    return SOBEL_VERTICAL.copy()


def diagonal() -> np.ndarray:
    return DIAGONAL.copy()


def edge_detect() -> np.ndarray:
    """8 in the centre, -1 around: sums to zero, so flat regions map to 0."""
    return EDGE_DETECT.copy()


def gabor_kernel(frequency: float, theta: float = 0.0, sigma_x: float | None = None,
                 sigma_y: float | None = None, n_stds: float = 3, offset: float = 0.0) -> np.ndarray:
    """Complex Gabor kernel, equal to ``skimage.filters.gabor_kernel`` (complex128, (2r+1, 2c+1)).

    A Gaussian envelope (``sigma_x``, ``sigma_y``; default ``0.56 / frequency``, a bandwidth of 1)
    times a complex harmonic of ``frequency`` cycles per pixel along direction ``theta``. Take
    ``.real`` for the even (edge/bar) filter used as a convolution kernel.
    """
    # Bandwidth 1 gives sigma = (1/pi) * sqrt(ln 2 / 2) * (2^b + 1)/(2^b - 1) / frequency.
    default = 1 / np.pi * np.sqrt(np.log(2) / 2) * 3 / frequency
    sx = default if sigma_x is None else sigma_x
    sy = default if sigma_y is None else sigma_y
    ct, st = np.cos(theta), np.sin(theta)
    x0 = np.ceil(max(np.abs(n_stds * sx * ct), np.abs(n_stds * sy * st), 1))
    y0 = np.ceil(max(np.abs(n_stds * sy * ct), np.abs(n_stds * sx * st), 1))
    y, x = np.meshgrid(np.arange(-y0, y0 + 1), np.arange(-x0, x0 + 1), indexing="ij", sparse=True)
    rotx = x * ct + y * st
    roty = -x * st + y * ct
    g = np.exp(-0.5 * (rotx ** 2 / sx ** 2 + roty ** 2 / sy ** 2)) / (2 * np.pi * sx * sy)
    return g * np.exp(1j * (2 * np.pi * frequency * rotx + offset))
