"""Make the README's pictures in docs/images/ with minicnn.viz and EfficientNet-Lite0's ImageNet
weights (shipped in a pip package, so nothing is downloaded).

    python docs/make_images.py [--quick]

- activations_stem_conv.png: every channel of ``stem_conv`` for skimage's chelsea.
- filters_book.png / filters_lucid.png: patterns of ``block3a_expand_conv`` filters by the lecture's
  recipe and by the Lucid preset.
- gradcam_composite.png: Grad-CAM of "tabby" and "espresso" on chelsea | coffee, and the top-5 chart.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from skimage import data

from minicnn.models import EfficientNetLite0
from minicnn.viz import (activations, filter_patterns, grad_cam, overlay, plot_activations,
                         plot_filter_grid, plot_predictions)
from minicnn.weights import decode_predictions, preprocess_input

OUT = Path(__file__).parent / "images"
TABBY, ESPRESSO = 281, 967
preprocess = partial(preprocess_input, mode="tf")


def _resized(image, size=224):
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), np.float32)


def main(quick: bool = False) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    model = EfficientNetLite0(weights="imagenet")
    cat, coffee = _resized(data.chelsea()), _resized(data.coffee())
    composite = np.concatenate([cat, coffee], axis=1)
    x = jnp.asarray(preprocess(composite[None]))
    variables = model.init(jax.random.key(0), x)

    acts = activations(model, variables, jnp.asarray(preprocess(cat[None])), ["stem_conv"])
    plot_activations(acts, "stem_conv", images_per_row=8).save(OUT / "activations_stem_conv.png")

    base = EfficientNetLite0(include_top=False)  # same variables minus the head: patterns need no top
    base_vars = {c: {k: v for k, v in tree.items() if k != "predictions"} for c, tree in variables.items()}
    n, steps = (4, 8) if quick else (16, None)
    for preset, size in (("book", 128), ("lucid", 128)):
        patterns = filter_patterns(base, base_vars, "block3a_expand_conv", list(range(n)), size=size,
                                   preset=preset, steps=steps, preprocess=preprocess)
        # the lecture's display stretch for raw ascent; Lucid's images are already valid pixels
        shown = patterns if preset == "book" else np.clip(np.asarray(patterns), 0, 255).astype(np.uint8)
        plot_filter_grid(shown, cols=8).save(OUT / f"filters_{preset}.png")

    maps = grad_cam(model, variables, jnp.concatenate([x, x]), class_index=[TABBY, ESPRESSO])
    overlays = [np.asarray(overlay(composite, np.asarray(m))) for m in maps]
    Image.fromarray(np.concatenate([composite.astype(np.uint8), *overlays], axis=0)).save(
        OUT / "gradcam_composite.png")
    probs = model.apply(variables, jnp.asarray(preprocess(cat[None])))
    plot_predictions(cat, decode_predictions(np.asarray(probs), top=5)[0]).save(OUT / "predictions_chelsea.png")
    print("wrote", ", ".join(sorted(p.name for p in OUT.glob("*.png"))))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few filters and steps, for a smoke test")
    main(parser.parse_args().quick)
