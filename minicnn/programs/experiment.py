"""The four chapter-5 recipes side by side on real photos: faces vs non-faces.

Data: ``skimage.data.lfw_subset()``, 200 grey 25x25 crops of Labeled Faces in the Wild (the first
100 faces, the last 100 non-face patches of the same photos), upscaled to ``size`` and repeated to
RGB. A stratified split (``seed``) keeps ``n_train`` images for training and every other image as
the held-out test set; nothing is tuned on the test set (fixed epochs, no early stopping): it is
passed as validation data only so the training curves show it. Used by
``minicnn demo`` and ``python -m benchmarks.transfer_experiment``.
"""

from __future__ import annotations

import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from minicnn.augment import ImageAugmenter
from minicnn.data import from_arrays
from minicnn.models import architecture, small_convnet
from minicnn.train import History
from minicnn.transfer.features import extract_features
from minicnn.transfer.recipes import (feature_extraction, feature_extraction_with_augmentation, fine_tune,
                                      train_from_scratch)
from minicnn.weights import init, preprocess_input, preprocessing

__all__ = ["AUGMENT", "lfw_split", "run"]

AUGMENT = ImageAugmenter(rotation_range=20, width_shift_range=0.1, height_shift_range=0.1, zoom_range=0.1,
                         horizontal_flip=True)


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


def run(model: str = "efficientnet_lite0", size: int = 96, n_train: int = 50, seed: int = 0,
        epochs: int = 20, batch_size: int = 10, scratch_epochs: int | None = None, verbose: int = 0) -> dict:
    """Train and test the four recipes; returns ``{"rows": [...], "histories": {...}, ...}``.

    Each row: recipe, test accuracy, train accuracy of the last epoch, seed, wall and CPU seconds
    (compilation included). Fine-tuning continues the model of the frozen-base recipe (as the
    lecture does), so its row times phase 2 only. ``scratch_epochs`` (default ``epochs``) lets the from-scratch convnet
    train longer, as it needs to.
    """
    arch = architecture(model)
    mode = preprocessing(model)

    def prep(x):
        return preprocess_input(x, mode)

    x_tr, y_tr, x_te, y_te = lfw_split(size, n_train, seed)
    train = lambda: from_arrays(x_tr, y_tr, batch_size=batch_size, seed=seed)  # noqa: E731
    # The same batch size everywhere: one compiled program per shape, shared by train and test.
    test = lambda: from_arrays(x_te, y_te, batch_size=batch_size, shuffle=False)  # noqa: E731
    base = arch.build(include_top=False, weights="imagenet", pooling="avg")
    t = time.perf_counter()
    base_vars = init(base, jax.random.key(seed), jnp.zeros((1, size, size, 3)))
    load_s = time.perf_counter() - t
    rows, histories, trained, frozen_bn = [], {}, {}, {}

    def record(key, name, fn, **details):
        if verbose:
            print(f"\n{name}", flush=True)
        t, cpu = time.perf_counter(), time.process_time()
        history, accuracy = fn()
        rows.append({"recipe": name, "test_accuracy": float(accuracy), "seed": seed,
                     "wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - cpu,
                     "train_accuracy": float(history.history["accuracy"][-1]), **details})
        histories[key] = History.from_json(history.to_json())  # a snapshot: fine_tune continues one
        trained[key] = history

    def scratch():
        h = train_from_scratch(small_convnet((size, size, 3), dropout=0.5), train(), test(),
                               epochs=scratch_epochs or epochs,
                               learning_rate=1e-4, augment=AUGMENT, preprocess=lambda x: x / 255.0, seed=seed,
                               verbose=verbose)
        return h, h.trainer.evaluate(test().map(lambda x: x / 255.0), return_dict=True)["accuracy"]

    def features():
        h = feature_extraction(base, train(), test(), variables=base_vars, epochs=epochs, learning_rate=1e-4,
                               preprocess=prep, seed=seed, verbose=verbose)
        f, y = extract_features(base, base_vars, test().map(prep), verbose=False)
        test_data = from_arrays(f, y, batch_size=batch_size, shuffle=False)
        return h, h.trainer.evaluate(test_data, return_dict=True)["accuracy"]

    def augmented():
        h = feature_extraction_with_augmentation(base, train(), test(), variables=base_vars, epochs=epochs,
                                                 learning_rate=1e-4, augment=AUGMENT, preprocess=prep,
                                                 seed=seed, verbose=verbose)
        stats = h.trainer.variables["batch_stats"]
        frozen_bn["unchanged"] = all(np.array_equal(a, b) for a, b in zip(
            jax.tree_util.tree_leaves(stats), jax.tree_util.tree_leaves(base_vars.get("batch_stats", {}))))
        return h, h.trainer.evaluate(test().map(prep), return_dict=True)["accuracy"]

    def tuned():  # continues from the frozen-base model, as the lecture does
        h = fine_tune(base, train(), test(), unfreeze_from=arch.unfreeze_from, epochs=(epochs, epochs),
                      learning_rates=(1e-4, 1e-5), augment=AUGMENT, preprocess=prep,
                      phase1=trained["features_aug"], seed=seed, verbose=verbose)
        return h, h.trainer.evaluate(test().map(prep), return_dict=True)["accuracy"]

    lr = "RMSprop 1e-4"
    record("scratch", "train_from_scratch (small convnet, augmented)", scratch,
           epochs=scratch_epochs or epochs, lr=lr)
    record("features", "feature_extraction (cached features, no augmentation)", features, epochs=epochs, lr=lr)
    record("features_aug", "feature_extraction_with_augmentation (frozen base)", augmented, epochs=epochs, lr=lr)
    record("fine_tune", f"fine_tune (the frozen-base model above, then from {arch.unfreeze_from})", tuned,
           epochs=f"{epochs} + {epochs}", lr=f"{lr}, then 1e-5")
    return {"rows": rows, "histories": histories, "model": model, "preprocessing": mode, "size": size,
            "n_train": n_train, "n_test": len(y_te), "seed": seed, "batch_size": batch_size, "load_s": load_s,
            "frozen_bn_unchanged": frozen_bn.get("unchanged"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
                       f"({jax.default_backend()})",
            "load_average": os.getloadavg()}
