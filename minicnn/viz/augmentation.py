"""``show_augmentations``: one image, n random augmentations, as a PIL grid (the lecture's augmented cats)."""

from __future__ import annotations

import math

import jax
import numpy as np
from PIL import Image

__all__ = ["show_augmentations"]


def show_augmentations(image, augmenter, n: int = 8, *, key=None, columns: int = 4, gap: int = 4) -> Image.Image:
    """Draw ``n`` augmentations of ``image`` with ``augmenter`` and tile them into one picture.

    image: (H, W, C) array in [0, 255] (C = 1 or 3) or a PIL image; augmenter: an ``ImageAugmenter`` (its
    ``rescale`` is undone for display). Returns an RGB/L ``PIL.Image`` of ``min(n, columns)`` tiles per row with
    ``gap`` white pixels between them; ``key`` (default ``jax.random.key(0)``) fixes the draws.
    """
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3):
        raise ValueError(f"show_augmentations: image must be (H, W, 1|3) or a PIL image, got shape {array.shape}")
    batch = np.broadcast_to(array, (n, *array.shape))
    tiles = np.asarray(augmenter(jax.random.key(0) if key is None else key, batch))
    if augmenter.rescale:
        tiles = tiles / augmenter.rescale
    tiles = np.clip(np.rint(tiles), 0, 255).astype(np.uint8)
    h, w, c = array.shape
    cols = min(n, columns)
    rows = math.ceil(n / cols)
    grid = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, c), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, q = divmod(i, cols)
        grid[r * (h + gap) : r * (h + gap) + h, q * (w + gap) : q * (w + gap) + w] = tile
    return Image.fromarray(grid[..., 0] if c == 1 else grid)
