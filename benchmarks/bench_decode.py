"""Decode throughput on a folder of JPEGs: minicnn's thread pool, minicnn + grain (0 and 2 worker processes) and
Keras 3's ``image_dataset_from_directory(format="grain")`` (JAX backend).

    python benchmarks/bench_decode.py [--quick]

The folder: 2,000 JPEGs (quick: 200) in two class folders, random crops of ``skimage.data`` photos resized to
one of four camera sizes (500x375, 375x500, 500x333, 333x500, as in dogs-vs-cats; quality 90), written to a
temporary directory at setup. Few sizes matter to Keras: its resize is a JAX op compiled once per input shape
(random sizes would compile for nearly every file in its first epoch). Every
contender reads one epoch: decode, convert to RGB, resize to 150x150 as Keras' ``image_dataset_from_directory``
does (float32, bilinear, no antialiasing), batches of 32 with labels:

- ``minicnn``: ``image_dataset_from_directory(...)``, one epoch (``ThreadPoolExecutor``, Python's default
  thread count, 2 batches ahead);
- ``grain 0 workers``: ``grain.MapDataset.source(grain_source(ds)).shuffle(seed).batch(32).to_iter_dataset()``:
  decoding in grain's read threads (``ReadOptions()`` defaults: 16 threads) in this process;
- ``grain 2 workers``: the same with ``.mp_prefetch(MultiprocessingOptions(num_workers=2))``: decoding in two
  worker processes; the time includes starting them, as every epoch of ``fit`` does (one ``iter()`` per epoch);
  their start-up alone (time to the first batch) is reported beside;
- ``keras``: ``keras.utils.image_dataset_from_directory(..., format="grain")``: Pillow decode, then
  ``keras.ops.image.resize`` per image and ``ops.stack`` per batch on the JAX CPU device.

Medians of interleaved epochs after one warm-up epoch each (page cache, compilation; its time is reported as
``first_epoch_seconds``); images/s and each contender's ratio to minicnn's thread pool; the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from PIL import Image
from skimage import data as skdata

from benchmarks.common import load_average, row, time_interleaved
from minicnn.data import grain_source, image_dataset_from_directory

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "hubble_deep_field", "immunohistochemistry")
SIZE, BATCH = (150, 150), 32
CAMERA_SIZES = ((500, 375), (375, 500), (500, 333), (333, 500))  # (width, height)


def write_jpegs(root: str, n: int, seed: int = 0) -> None:
    """``n`` JPEGs under ``root/{cats,dogs}/``: random crops (half to all of each side) of skimage.data photos,
    resized to one of ``CAMERA_SIZES``."""
    rng = np.random.default_rng(seed)
    photos = [np.asarray(Image.fromarray(getattr(skdata, name)()).convert("RGB")) for name in PHOTOS]
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = rng.integers(h // 2, h + 1), rng.integers(w // 2, w + 1)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = Image.fromarray(photo[y:y + ch, x:x + cw]).resize(CAMERA_SIZES[rng.integers(len(CAMERA_SIZES))])
        folder = os.path.join(root, ("cats", "dogs")[i % 2])
        os.makedirs(folder, exist_ok=True)
        crop.save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def _grain_flags_workaround() -> None:
    """grain 0.2.18's multi-process prefetch reads an absl flag that a script not started by ``absl.app`` has not
    parsed (UnparsedFlagAccessError; google/grain#1355, fixed after 0.2.18): mark the flags parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _epoch(dataset) -> int:
    """Read one epoch; the number of images."""
    return sum(len(batch[0]) for batch in dataset)


def bench(n_files: int, repeats: int) -> list[dict]:
    import grain
    import keras

    _grain_flags_workaround()
    with tempfile.TemporaryDirectory() as root:
        write_jpegs(root, n_files)
        ours = image_dataset_from_directory(root, SIZE, batch_size=BATCH, seed=0, verbose=False)
        batches = grain.MapDataset.source(grain_source(ours)).shuffle(seed=0).batch(BATCH)
        threads = batches.to_iter_dataset()
        workers = batches.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(num_workers=2))
        theirs = keras.utils.image_dataset_from_directory(root, image_size=SIZE, batch_size=BATCH, seed=0,
                                                         format="grain", verbose=False)
        contenders = {
            "minicnn": lambda: _epoch(ours.epoch(0)),
            "grain_0_workers": lambda: _epoch(threads),
            "grain_2_workers": lambda: _epoch(workers),
            "keras": lambda: _epoch(theirs),
        }
        first = {}
        for name, fn in contenders.items():  # the warm-up epoch, checked and timed
            start = time.perf_counter()
            assert fn() == n_files, name
            first[name] = round(time.perf_counter() - start, 2)
        load_before = load_average()
        t = time_interleaved(contenders, repeats, warmup=0)
        start = time.perf_counter()
        iterator = iter(workers)
        next(iterator)
        startup = time.perf_counter() - start
        iterator.close()
    workload = f"decode+resize {n_files} JPEGs (500x375 and kin) -> 150x150 float32, batch 32"
    base = t["minicnn"]["seconds"]
    rows = []
    for name in contenders:
        impl = name if name in ("minicnn", "keras") else f"minicnn+{name}"
        rows.append(row(workload, impl, t[name]["seconds"], n_files, first_epoch_seconds=first[name],
                        ratio_to_minicnn_threads=round(base / t[name]["seconds"], 2)))
    rows.append({"name": "grain 2 worker processes: start-up, time to the first batch", "seconds": round(startup, 2)})
    return [{**r, "load_average": (load_before, load_average()), "cpu_cores": os.cpu_count()} for r in rows]


def run(quick: bool = False) -> list[dict]:
    """Rows for ``python -m benchmarks``: images/s per contender and its ratio to minicnn's thread pool."""
    return bench(200 if quick else 2000, 2 if quick else 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 images, 2 interleaved epochs each")
    rows = run(quick=parser.parse_args().quick)
    print(f"{'contender':<26} {'seconds':>8} {'images/s':>9} {'ratio to minicnn':>17} {'first epoch s':>14}")
    for r in rows:
        if "impl" in r:
            print(f"{r['impl']:<26} {r['seconds']:>8.2f} {r['items_per_s']:>9.1f} "
                  f"{r['ratio_to_minicnn_threads']:>17.2f} {r['first_epoch_seconds']:>14.2f}")
        else:
            print(f"{r['name']}: {r['seconds']} s")
    print(f"workload: {rows[0]['workload']}; load average before/after: {rows[0]['load_average']}; "
          f"{rows[0]['cpu_cores']} cores")


if __name__ == "__main__":
    main()
