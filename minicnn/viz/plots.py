"""Pictures as PIL images: activation grids, filter grids, Grad-CAM overlays and a top-5 prediction
chart. Figures are drawn on ``matplotlib.figure.Figure`` without pyplot, so nothing opens a window,
it works headless, and matplotlib's global backend (a notebook's inline one) is left alone."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from minicnn.viz.filters import deprocess_image

__all__ = ["plot_activations", "plot_filter_grid", "overlay", "plot_predictions"]


def _to_pil(fig: Figure) -> Image.Image:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")  # png renders with Agg, whatever the backend
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _tile(images: np.ndarray, cols: int, margin: int = 0, fill=0) -> np.ndarray:
    """(F, h, w, ...) -> one (rows*(h+margin)-margin, cols*(w+margin)-margin, ...) grid, row-major."""
    f, h, w = images.shape[:3]
    rows = -(-f // cols)
    grid = np.full((rows * (h + margin) - margin, cols * (w + margin) - margin, *images.shape[3:]),
                   fill, images.dtype)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * (h + margin):r * (h + margin) + h, c * (w + margin):c * (w + margin) + w] = im
    return grid


def plot_activations(acts: Mapping, layer: str, images_per_row: int = 16, index: int = 0,
                     cmap: str = "viridis") -> Image.Image:
    """The lecture's grid of every channel of ``acts[layer]`` for image ``index``.

    Each channel is standardised on its own (``x * 64 + 128``, clipped), so a dead channel shows
    flat rather than as NaN. acts[layer]: (N, H, W, C). Returns an RGB image titled ``layer``.
    """
    if layer not in acts:
        raise KeyError(f"no activations for layer {layer!r}; have {sorted(acts)}")
    a = np.asarray(acts[layer][index], np.float64)
    if a.ndim != 3:
        raise ValueError(f"layer {layer!r}: expected (N, H, W, C) activations, got {np.shape(acts[layer])}")
    a = a - a.mean(axis=(0, 1))
    std = a.std(axis=(0, 1))
    a = np.clip(a / np.where(std > 0, std, 1) * 64 + 128, 0, 255).astype(np.uint8)
    grid = _tile(np.moveaxis(a, -1, 0), images_per_row)
    scale = 1.0 / a.shape[0]
    fig = Figure(figsize=(max(scale * grid.shape[1], 2), max(scale * grid.shape[0], 1)))
    ax = fig.add_subplot()
    ax.set_title(layer)
    ax.grid(False)
    ax.axis("off")
    ax.imshow(grid, aspect="auto", cmap=cmap)
    return _to_pil(fig)


def plot_filter_grid(patterns, cols: int = 8, margin: int = 5) -> Image.Image:
    """The lecture's grid of filter patterns on black, ``margin`` pixels apart.

    patterns: (F, H, W, 3) float (deprocessed with :func:`deprocess_image`) or uint8 (as is).
    """
    p = np.asarray(patterns)
    if p.ndim != 4:
        raise ValueError(f"patterns: expected shape (F, H, W, C), got {p.shape}")
    if p.dtype != np.uint8:
        p = deprocess_image(p)
    return Image.fromarray(_tile(p, min(cols, len(p)), margin).squeeze())


def overlay(image, heatmap, alpha: float = 0.4, colormap: str = "jet") -> Image.Image:
    """The lecture's superimposed picture: ``image + alpha * colormap(heatmap)``, clipped to uint8.

    image: (H, W, 3) uint8 or float in [0, 255], or a PIL image; heatmap: (h, w) in [0, 1], resized
    bilinearly to (H, W).
    """
    img = np.asarray(image, np.float32)
    heat = np.asarray(heatmap, np.float32)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image: expected shape (H, W, 3), got {img.shape}")
    if heat.ndim != 2:
        raise ValueError(f"heatmap: expected shape (h, w), got {heat.shape}")
    heat = np.asarray(Image.fromarray(heat).resize((img.shape[1], img.shape[0]), Image.BILINEAR))
    colored = matplotlib.colormaps[colormap](np.clip(heat, 0, 1))[..., :3] * 255
    return Image.fromarray(np.clip(img + alpha * colored, 0, 255).astype(np.uint8))


def plot_predictions(image, decoded: Sequence[tuple[str, str, float]], top: int = 5) -> Image.Image:
    """The image beside a bar chart of its top predictions.

    decoded: ``[(wnid, name, score), ...]`` as ``decode_predictions`` returns for one image.
    """
    rows = list(decoded)[:top]
    if not rows:
        raise ValueError("decoded: expected a list of (wnid, name, score), got an empty list")
    fig = Figure(figsize=(9, 3.5))
    ax_img, ax_bar = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    ax_img.imshow(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    ax_img.axis("off")
    names = [name for _, name, _ in rows][::-1]
    scores = [float(s) for _, _, s in rows][::-1]
    ax_bar.barh(names, scores, color="tab:blue")
    ax_bar.set_xlim(0, max(1.0, max(scores)))
    ax_bar.set_xlabel("score")
    for y, s in enumerate(scores):
        ax_bar.text(s, y, f" {s:.3f}", va="center")
    fig.tight_layout()
    return _to_pil(fig)
