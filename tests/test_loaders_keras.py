"""Each loader resizes as the Keras function it mirrors, by default, on real photos (scikit-image's):
``load_image`` as ``load_img`` (nearest), ``image_dataset_from_directory`` as Keras' (bilinear, as a tensor resize),
``flow_from_directory`` as ``ImageDataGenerator.flow_from_directory`` (nearest); and each prints Keras' line."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from minicnn.data import flow_from_directory, image_dataset_from_directory, load_image

SIZE = (37, 53)  # (height, width): a downscale of every photo below, non-square

PHOTOS = {"cats": ("chelsea", "cat"), "scenes": ("astronaut", "coffee", "rocket")}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """cats/ and scenes/ holding skimage's colour photos as PNG (lossless: the bytes Keras and we read)."""
    root = tmp_path_factory.mktemp("photos")
    for cls, names in PHOTOS.items():
        (root / cls).mkdir()
        for name in names:
            Image.fromarray(getattr(skdata, name)()).save(root / cls / f"{name}.png")
    return root


def keras_load_img(path, **kw):
    image_utils = pytest.importorskip("keras.src.utils.image_utils", reason="needs Keras 3")
    return image_utils.img_to_array(image_utils.load_img(path, target_size=SIZE, **kw))


def test_load_image_defaults_to_load_img_nearest(photos):
    path = photos / "cats" / "chelsea.png"
    ours = load_image(path, SIZE)
    np.testing.assert_array_equal(ours, keras_load_img(path))  # Keras' default, not named
    np.testing.assert_array_equal(ours, keras_load_img(path, interpolation="nearest"))
    bilinear = load_image(path, SIZE, interpolation="bilinear")
    np.testing.assert_array_equal(bilinear, keras_load_img(path, interpolation="bilinear"))
    assert np.abs(ours - bilinear).mean() > 1  # the choice matters on a photo: a test of the default can fail


def keras_image_dataset(directory, **kw):
    """What Keras' image_dataset_from_directory prints and yields, through its own functions: its lines (printed
    while indexing, before any tf.data; without TensorFlow installed the call stops after them), its file order
    and labels (``index_directory``) and its per-file loader (``format="grain"``: PIL, float32,
    ``keras.ops.image.resize``, here on the JAX backend)."""
    keras = pytest.importorskip("keras")
    from keras.src.utils import dataset_utils, image_dataset_utils
    try:
        keras.utils.image_dataset_from_directory(directory, **kw)
    except ImportError:  # "This requires the tensorflow module": the lines are already printed
        pass
    paths, labels, _ = dataset_utils.index_directory(str(directory), "inferred", (".png",), shuffle=False, verbose=False)
    images = [image_dataset_utils._load_image_grain(p, kw["image_size"], 3, kw.get("interpolation", "bilinear"),
                                                    "channels_last") for p in paths]
    return np.stack([np.asarray(i) for i in images]), np.asarray(labels)


def test_image_dataset_from_directory_matches_keras_tensor_resize(photos, capsys):
    ours = image_dataset_from_directory(photos, SIZE, batch_size=5, class_mode="sparse", shuffle=False)
    ours_line = capsys.readouterr().out
    kx, ky = keras_image_dataset(photos, image_size=SIZE, batch_size=5, shuffle=False)
    assert capsys.readouterr().out == ours_line == "Found 5 files belonging to 2 classes.\n"
    (x, y), = list(ours)
    np.testing.assert_allclose(x, kx, rtol=0, atol=1e-3)  # float pixels; one matrix product apart
    np.testing.assert_array_equal(y, ky)
    pillow = np.stack([load_image(p, SIZE, interpolation="bilinear") for p in ours.filepaths])
    assert np.abs(pillow - kx).mean() > 1  # Pillow's antialiased bilinear is not Keras' tensor resize here
    nearest = np.concatenate([b[0] for b in image_dataset_from_directory(
        photos, SIZE, 5, "sparse", shuffle=False, interpolation="nearest", verbose=False)])
    assert capsys.readouterr().out == ""
    knearest, _ = keras_image_dataset(photos, image_size=SIZE, shuffle=False, interpolation="nearest", verbose=False)
    np.testing.assert_array_equal(nearest, knearest)


def test_image_dataset_from_directory_refuses_pillow_only_filters(photos):
    with pytest.raises(ValueError, match=r"interpolation must be one of \('bilinear', 'nearest'\).*flow_from_directory"):
        image_dataset_from_directory(photos, SIZE, interpolation="bicubic", verbose=False)


def test_split_lines_match_keras(photos, capsys):
    image_dataset_from_directory(photos, SIZE, seed=3, validation_split=0.4, subset="both")
    ours = capsys.readouterr().out
    keras_image_dataset(photos, image_size=SIZE, seed=3, validation_split=0.4, subset="both")
    assert ours == capsys.readouterr().out
    assert "Using 3 files for training.\nUsing 2 files for validation.\n" in ours


@pytest.mark.parametrize("kw", [{}, {"interpolation": "bicubic", "color_mode": "grayscale", "class_mode": "binary"}])
def test_flow_from_directory_matches_keras_generator(photos, capsys, kw):
    legacy = pytest.importorskip("keras.src.legacy.preprocessing.image", reason="needs Keras 3")
    ours = flow_from_directory(photos, SIZE, batch_size=2, shuffle=False, **kw)
    ours_line = capsys.readouterr().out
    it = legacy.ImageDataGenerator().flow_from_directory(str(photos), SIZE, batch_size=2, shuffle=False, **kw)
    assert capsys.readouterr().out == ours_line == "Found 5 images belonging to 2 classes.\n"
    assert ours.class_indices == it.class_indices and len(ours) == len(it) == 3
    for b, (x, y) in enumerate(ours):
        kx, ky = it[b]
        np.testing.assert_array_equal(x, kx)
        np.testing.assert_array_equal(y, ky)
    if not kw:  # the default differs from image_dataset_from_directory's: the pixels prove which one ran
        bilinear = np.concatenate([b[0] for b in image_dataset_from_directory(
            photos, SIZE, 2, "categorical", shuffle=False, verbose=False)])
        assert not np.array_equal(np.concatenate([b[0] for b in ours]), bilinear)


def test_flow_from_directory_refuses_what_it_does_not_offer(photos):
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['subset'\].*validation_split="):
        flow_from_directory(photos, SIZE, subset="training")
    with pytest.raises(ValueError, match="interpolation must be one of"):
        flow_from_directory(photos, SIZE, interpolation="area")
