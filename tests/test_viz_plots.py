"""Activations from one pass, and the pictures: grids, overlays, prediction charts."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
from PIL import Image

from minicnn import ops
from minicnn.layers import Conv2D, Dense, Flatten, MaxPooling2D, Sequential
from minicnn.viz import activations, overlay, plot_activations, plot_filter_grid, plot_predictions


@pytest.fixture(scope="module")
def setup():
    model = Sequential([Conv2D(4, 3, activation="relu"), MaxPooling2D(2), Conv2D(32, 3, activation="relu"),
                        Flatten(), Dense(2)])
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    return model, jax.jit(model.init)(jax.random.key(1), x), x


def test_activations_are_the_layer_outputs(setup):
    model, variables, x = setup
    p = variables["params"]
    a1 = ops.relu(ops.conv2d(x, p["conv2d"]["kernel"], p["conv2d"]["bias"]))
    a2 = ops.max_pool2d(a1, 2)
    a3 = ops.relu(ops.conv2d(a2, p["conv2d_1"]["kernel"], p["conv2d_1"]["bias"]))
    acts = activations(model, variables, x)
    assert list(acts) == ["conv2d", "max_pooling2d", "conv2d_1"]  # every 4-D output, in order
    for got, want in zip(acts.values(), (a1, a2, a3)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert list(activations(model, variables, x, ["conv2d_1", "dense"])) == ["conv2d_1", "dense"]


def test_plot_activations_grid_and_dead_channels(setup):
    model, variables, x = setup
    acts = activations(model, variables, x)
    acts["dead"] = jnp.zeros((2, 8, 8, 5))
    for layer in ("conv2d_1", "dead"):  # 32 channels -> 2 rows of 16; 5 channels -> a padded row
        img = plot_activations(acts, layer, images_per_row=16)
        assert isinstance(img, Image.Image) and img.mode == "RGB"
        assert img.size[0] > img.size[1]
    with pytest.raises(KeyError, match="no activations for layer 'nope'"):
        plot_activations(acts, "nope")


def test_filter_grid_layout():
    patterns = np.random.default_rng(0).normal(128, 20, (10, 12, 12, 3))
    grid = np.asarray(plot_filter_grid(patterns, cols=4, margin=5))
    assert grid.shape == (3 * 12 + 2 * 5, 4 * 12 + 3 * 5, 3)
    assert grid[12:17].max() == 0 and grid[-12:, 2 * 17:].max() == 0  # margins and missing tiles are black
    with pytest.raises(ValueError, match=r"\(F, H, W, C\)"):
        plot_filter_grid(patterns[0])


def test_overlay_is_the_lectures_sum():
    img = np.random.default_rng(1).integers(0, 200, (20, 30, 3)).astype(np.uint8)
    heat = np.zeros((2, 3), np.float32)
    heat[0, 0] = 1.0
    out = np.asarray(overlay(img, heat, alpha=0.4))
    assert out.shape == img.shape
    big = np.asarray(Image.fromarray(heat).resize((30, 20), Image.BILINEAR))
    jet = matplotlib.colormaps["jet"](big)[..., :3] * 255
    np.testing.assert_allclose(out, np.clip(img + 0.4 * jet, 0, 255).astype(np.uint8), atol=1)
    # the hot corner is redder than the cold one
    assert out[0, 0, 0] - img[0, 0, 0] > out[-1, -1, 0] - img[-1, -1, 0]
    with pytest.raises(ValueError, match=r"heatmap: expected shape \(h, w\)"):
        overlay(img, heat[None])


def test_plot_predictions():
    img = np.zeros((32, 32, 3), np.uint8)
    decoded = [("n02123045", "tabby", 0.6), ("n02123159", "tiger_cat", 0.2), ("n02124075", "Egyptian_cat", 0.1)]
    chart = plot_predictions(img, decoded)
    assert isinstance(chart, Image.Image) and chart.size[0] > chart.size[1]
    with pytest.raises(ValueError, match="empty"):
        plot_predictions(img, [])


def test_plots_draw_headless_without_changing_matplotlibs_backend():
    """A notebook keeps its inline backend: the plots render PNGs under any backend (here "pdf",
    which cannot show a window) and never switch it; in a fresh interpreter, as backends are global."""
    code = """if True:
        import matplotlib, numpy as np
        from minicnn.viz import plot_activations, plot_predictions
        acts = {"conv": np.random.default_rng(0).normal(size=(1, 6, 6, 3))}
        images = [plot_activations(acts, "conv"), plot_predictions(np.zeros((8, 8, 3)), [("n0", "cat", 0.9)])]
        assert all(im.mode == "RGB" and im.size[0] > 1 for im in images)
        print(matplotlib.get_backend())
    """
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MPLBACKEND": "pdf"},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["pdf"]

