"""Data pipeline speed: augmentation and JPEG decoding, minicnn vs Keras' legacy ImageDataGenerator.

    python benchmarks/bench_augment.py [--quick]

Augmentation: the lecture's settings (rotation 40, shifts 0.2, shear 0.2 rad, zoom 0.2, horizontal flips) on
150x150x3 images in batches of 32 — minicnn's ``from_arrays(..., augment=ImageAugmenter)`` (host batch, move to
device, one jitted program) against ``ImageDataGenerator.flow`` over the same arrays. Decoding: one epoch over a
folder of JPEGs resized to 150x150 — ``image_dataset_from_directory`` against ``flow_from_directory``. Times are
medians of interleaved runs after a warm-up (compilation excluded), wall clock on whatever runs this.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np
from PIL import Image
from skimage import data as skdata

from benchmarks.common import block, load_average, row, time_interleaved
from minicnn.augment import ImageAugmenter
from minicnn.data import from_arrays, image_dataset_from_directory

LECTURE = dict(
    rotation_range=40,
    width_shift_range=0.2,
    height_shift_range=0.2,
    shear_range=math.degrees(0.2),  # the lecture's 0.2 was radians (Keras 2.0.8)
    zoom_range=0.2,
    horizontal_flip=True,
    fill_mode="nearest",
)
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry")


def _photos(n: int, size: tuple[int, int]) -> list[np.ndarray]:
    """n real photos (crops of skimage.data pictures) resized to size=(h, w), uint8 (h, w, 3)."""
    out = []
    for i in range(n):
        img = getattr(skdata, PHOTOS[i % len(PHOTOS)])()
        h, w = img.shape[:2]
        y, x = (13 * i) % (h // 4), (17 * i) % (w // 4)
        crop = Image.fromarray(img[y : y + 3 * h // 4, x : x + 3 * w // 4])
        out.append(np.asarray(crop.resize((size[1], size[0]), Image.Resampling.BILINEAR)))
    return out


def bench_augmentation(n_images: int, repeats: int) -> list[dict]:
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    x = np.stack(_photos(n_images, (150, 150)))  # uint8, as decoded photos are; Keras casts to float32 itself
    batches = n_images // 32
    augmenter = ImageAugmenter(**LECTURE)
    ours = from_arrays(x, batch_size=32, seed=0, augment=augmenter)
    keras_flow = ImageDataGenerator(**LECTURE).flow(x, batch_size=32, seed=0)
    on_device = [jax.device_put(x[i * 32 : (i + 1) * 32]) for i in range(batches)]
    t = time_interleaved(
        {
            "minicnn": lambda: [block(b) for b in ours],
            "keras": lambda: [next(keras_flow) for _ in range(batches)],
            "program": lambda: [augmenter(jax.random.key(i), b) for i, b in enumerate(on_device)],
        },
        repeats,
    )
    workload = "augment 150x150x3, batch 32 (lecture settings)"
    speedup = t["keras"]["seconds"] / t["minicnn"]["seconds"]
    program = t["program"]["seconds"]
    return [
        row(workload, "minicnn", t["minicnn"]["seconds"], n_images, speedup_vs_keras=round(speedup, 1)),
        row(workload, "keras", t["keras"]["seconds"], n_images),
        {"name": "augment program alone on batches already on device", "seconds": round(program, 4),
         "images_per_s": round(n_images / program), "speedup_vs_keras": round(t["keras"]["seconds"] / program, 1)},
    ]


def bench_decoding(n_files: int, repeats: int) -> list[dict]:
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    with tempfile.TemporaryDirectory() as root:
        for i, img in enumerate(_photos(n_files, (375, 500))):  # dogs-vs-cats sized JPEGs
            folder = os.path.join(root, ("cats", "dogs")[i % 2])
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(img).save(os.path.join(folder, f"{i:04d}.jpg"), quality=90)
        t0 = time.perf_counter()
        ours = image_dataset_from_directory(root, (150, 150), batch_size=32, seed=0)
        build = time.perf_counter() - t0
        keras_it = ImageDataGenerator().flow_from_directory(
            root, (150, 150), batch_size=32, class_mode="binary", seed=0, interpolation="bilinear"
        )
        cached = image_dataset_from_directory(root, (150, 150), batch_size=32, seed=0, cache=True)
        t = time_interleaved(
            {
                "minicnn": lambda: list(ours),
                "keras": lambda: [next(keras_it) for _ in range(len(keras_it))],
                "cached": lambda: list(cached),  # the warm-up epoch fills the cache
            },
            repeats,
        )
    workload = "decode+resize JPEG 500x375 -> 150x150, batch 32"
    speedup = t["keras"]["seconds"] / t["minicnn"]["seconds"]
    return [
        row(workload, "minicnn", t["minicnn"]["seconds"], n_files, speedup_vs_keras=round(speedup, 1),
            build_seconds=round(build, 3), cpu_cores=os.cpu_count()),
        row(workload, "keras", t["keras"]["seconds"], n_files),
        {"name": "later epochs with cache=True (no decoding)", "seconds": round(t["cached"]["seconds"], 4),
         "images_per_s": round(n_files / t["cached"]["seconds"]),
         "speedup_vs_keras": round(t["keras"]["seconds"] / t["cached"]["seconds"], 1)},
    ]


def run(quick: bool = False) -> list[dict]:
    """Rows for ``python -m benchmarks``: per workload one minicnn and one Keras row (images/s, speedup)."""
    repeats = 3 if quick else 5
    rows = bench_augmentation(64 if quick else 256, repeats) + bench_decoding(64 if quick else 256, repeats)
    return [{**r, "load_average": load_average()} for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats")
    rows = run(quick=parser.parse_args().quick)
    print(f"{'workload':<52} {'impl':<8} {'seconds':>8} {'images/s':>9} {'speedup':>8}")
    for r in rows:
        speedup = f"{r['speedup_vs_keras']}x" if "speedup_vs_keras" in r else ""
        name, impl = (r["workload"], r["impl"]) if "workload" in r else (r["name"], "minicnn")
        rate = r.get("items_per_s", r.get("images_per_s"))
        print(f"{name:<52} {impl:<8} {r['seconds']:>8.3f} {rate:>9.0f} {speedup:>8}")
    print(f"load average while measuring: {rows[-1]['load_average']}")


if __name__ == "__main__":
    main()
