"""Image folders and arrays to batches: real files written with Pillow, compared with Keras where Keras has an
answer (decoding, flow_from_directory batches, the validation split)."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import warnings

import jax
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from minicnn.augment import ImageAugmenter
from minicnn.data import (
    BadImageError,
    decode_image,
    flow_from_directory,
    from_arrays,
    image_dataset_from_directory,
    load_image,
)

SIZE = (24, 32)  # target (height, width): small, non-square


def _rgb(seed, size=(37, 29)):
    """A real photo crop (skimage chelsea), different per seed, as uint8 (h, w, 3)."""
    cat = skdata.chelsea()
    y, x = 7 * seed % 200, 11 * seed % 300
    return np.ascontiguousarray(cat[y : y + size[0], x : x + size[1]])


def _save(path, image: Image.Image, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kw)
    return path


def make_folder(root, per_class=(5, 4), extra_formats=True):
    """cats/ and dogs/ with RGB JPEG, RGBA PNG, L BMP, P PNG, CMYK TIFF files (Keras' legacy formats) and a
    non-image file, plus, when ``extra_formats``, GIF, WebP, LA and 16-bit PNGs and a hidden folder (which
    Keras' legacy iterator would take for a class)."""
    kinds = [
        ("jpg", "RGB", {"quality": 90}),
        ("png", "RGBA", {}),
        ("bmp", "L", {}),
        ("png", "P", {}),
        ("tif", "CMYK", {}),
    ]
    if extra_formats:
        kinds += [("gif", "P", {}), ("webp", "RGB", {"lossless": True}), ("png", "LA", {}), ("png", "I;16", {})]
    for c, (name, count) in enumerate(zip(("cats", "dogs"), per_class)):
        for i in range(count):
            ext, mode, kw = kinds[(i + c) % len(kinds)]
            rgb = Image.fromarray(_rgb(10 * c + i))
            img = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257) if mode == "I;16" else rgb.convert(mode)
            _save(root / name / f"{name}_{i:02d}.{ext}", img, **kw)
        (root / name / "notes.txt").write_text("not an image")
    if extra_formats:
        _save(root / ".ipynb_checkpoints" / "x.png", Image.fromarray(_rgb(99)))
    return root


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "train")


def collect(ds):
    xs, ys = zip(*ds)
    return np.concatenate(xs), np.concatenate(ys)


def test_classes_labels_shapes_and_len(folder):
    ds = image_dataset_from_directory(folder, SIZE, batch_size=4, class_mode="binary", shuffle=False)
    assert ds.class_names == ["cats", "dogs"] and ds.class_indices == {"cats": 0, "dogs": 1}
    assert ds.samples == 9 and len(ds) == 3 and ds.skipped == 0
    assert all(p.endswith((".jpg", ".png", ".bmp", ".tif", ".gif", ".webp")) for p in ds.filepaths)
    batches = list(ds)
    assert [x.shape for x, _ in batches] == [(4, 24, 32, 3)] * 2 + [(1, 24, 32, 3)]  # last batch smaller
    x, y = collect(ds)
    assert x.dtype == np.float32 and y.dtype == np.float32 and 0 <= x.min() and x.max() <= 255 and x.max() > 1
    np.testing.assert_array_equal(y, [0] * 5 + [1] * 4)
    np.testing.assert_array_equal(ds.classes, y)
    assert len(list(ds)) == 3  # re-iterable: each iter() is one full epoch (epoch 0)
    np.testing.assert_array_equal(collect(ds)[0], collect(ds.epoch(0))[0])


@pytest.mark.parametrize(
    "class_mode, shape, dtype", [("categorical", (9, 2), np.float32), ("sparse", (9,), np.int32)]
)
def test_class_modes(folder, class_mode, shape, dtype):
    ds = image_dataset_from_directory(folder, SIZE, batch_size=4, class_mode=class_mode, shuffle=False)
    _, y = collect(ds)
    assert y.shape == shape and y.dtype == dtype
    labels = y.argmax(1) if class_mode == "categorical" else y
    np.testing.assert_array_equal(labels, ds.classes)


def test_class_mode_none_yields_images_only_and_drop_remainder(folder):
    ds = image_dataset_from_directory(folder, SIZE, batch_size=4, class_mode=None, drop_remainder=True, shuffle=False)
    batches = list(ds)
    assert len(ds) == 2 and [b.shape for b in batches] == [(4, 24, 32, 3)] * 2


def test_decoding_matches_keras_load_img_for_every_mode(folder):
    image_utils = pytest.importorskip("keras.src.utils.image_utils", reason="needs Keras 3")
    for path in sorted(folder.glob("*/*")):
        if path.suffix == ".txt" or Image.open(path).mode == "I;16":
            continue
        for color_mode, interpolation in [("rgb", "bilinear"), ("grayscale", "nearest"), ("rgb", "bicubic")]:
            ours = load_image(path, SIZE, color_mode, interpolation)
            ref = image_utils.img_to_array(
                image_utils.load_img(path, color_mode=color_mode, target_size=SIZE, interpolation=interpolation)
            )
            np.testing.assert_array_equal(ours, ref, err_msg=f"{path.name} {color_mode} {interpolation}")


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    values = (np.arange(24 * 32, dtype=np.uint32).reshape(24, 32) * 85).astype(np.uint16)  # up to 65195
    path = _save(tmp_path / "deep.png", Image.fromarray(values))
    assert Image.open(path).mode == "I;16"
    gray = load_image(path, SIZE, "grayscale")
    np.testing.assert_allclose(gray[..., 0], values * (255 / 65535), rtol=1e-5)
    rgb = load_image(path, SIZE, "rgb")
    assert rgb.shape == (24, 32, 3)
    np.testing.assert_array_equal(rgb, np.repeat(gray, 3, -1))


@pytest.mark.parametrize(
    "color_mode, channels, interpolation", [("rgb", 3, "bilinear"), ("grayscale", 1, "nearest")]
)
def test_batches_match_keras_flow_from_directory(tmp_path, color_mode, channels, interpolation):
    legacy = pytest.importorskip("keras.src.legacy.preprocessing.image", reason="needs Keras 3")
    root = make_folder(tmp_path / "k", per_class=(4, 3), extra_formats=False)
    ours = flow_from_directory(
        root, SIZE, color_mode=color_mode, class_mode="categorical", batch_size=3, shuffle=False,
        interpolation=interpolation,
    )
    keras_it = legacy.ImageDataGenerator().flow_from_directory(
        str(root), SIZE, color_mode, batch_size=3, class_mode="categorical", shuffle=False, interpolation=interpolation
    )
    assert ours.class_indices == keras_it.class_indices and len(ours) == len(keras_it)
    for b, (x, y) in enumerate(ours):
        kx, ky = keras_it[b]
        assert x.shape[-1] == channels
        np.testing.assert_array_equal(x, kx)
        np.testing.assert_array_equal(y, ky)


def test_order_is_deterministic_under_a_seed_and_reshuffled_per_epoch(folder):
    def epochs(seed, n=3, **kw):
        ds = image_dataset_from_directory(folder, SIZE, batch_size=4, seed=seed, **kw)
        return [collect(ds.epoch(e)) for e in range(n)]

    a, b, c = epochs(3), epochs(3), epochs(4, n=1)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a[0][0], a[1][0])  # a new order each epoch
    assert not np.array_equal(a[0][0], c[0][0])  # and per seed
    # Every epoch holds every image once.
    key = lambda x: sorted(map(bytes, x.reshape(len(x), -1)))
    assert key(a[0][0]) == key(a[1][0]) == key(c[0][0])
    # Thread timing never changes the batches.
    one_thread = epochs(3, n=1, num_workers=1, prefetch=1)[0]
    np.testing.assert_array_equal(one_thread[0], a[0][0])


def test_cache_decodes_each_file_once(folder):
    ds = image_dataset_from_directory(folder, SIZE, batch_size=4, seed=1, cache=True)
    first = collect(ds.epoch(0))
    for path in ds.filepaths:
        os.remove(path)  # later epochs must not need the files
    second = collect(ds.epoch(1))
    key = lambda a: sorted(map(bytes, a.reshape(len(a), -1)))
    assert key(first[0]) == key(second[0]) and not np.array_equal(first[0], second[0])  # reshuffled


def test_validation_split_matches_keras_and_partitions_the_files(folder):
    dataset_utils = pytest.importorskip("keras.src.utils.dataset_utils", reason="needs Keras 3")
    train, val = image_dataset_from_directory(folder, SIZE, validation_split=0.34, subset="both", seed=11)
    also_val = image_dataset_from_directory(folder, SIZE, validation_split=0.34, subset="validation", seed=11)
    assert val.filepaths == also_val.filepaths
    assert val.samples == int(0.34 * 9) and train.samples + val.samples == 9
    assert not set(train.filepaths) & set(val.filepaths)
    formats = tuple(os.path.splitext(p)[1] for p in train.filepaths + val.filepaths)
    paths, labels, _ = dataset_utils.index_directory(str(folder), "inferred", formats, seed=11, verbose=False)
    for subset, ds in (("training", train), ("validation", val)):
        k_paths, k_labels = dataset_utils.get_training_or_validation_split(paths, labels, 0.34, subset)
        assert sorted(ds.filepaths) == sorted(map(os.path.normpath, k_paths))
        assert sorted(zip(ds.filepaths, ds.classes)) == sorted(zip(map(os.path.normpath, k_paths), k_labels))


def test_argument_errors(folder):
    for bad in (dict(target_size=150), dict(color_mode="rgba"), dict(interpolation="area"), dict(class_mode="raw")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            image_dataset_from_directory(folder, **{"target_size": SIZE, **bad})
    with pytest.raises(ValueError, match="on_error"):
        image_dataset_from_directory(folder, SIZE, on_error="ignore")


def test_split_argument_errors(folder):
    with pytest.raises(ValueError, match="needs a seed"):
        image_dataset_from_directory(folder, SIZE, validation_split=0.2, subset="training")
    with pytest.raises(ValueError, match="together"):
        image_dataset_from_directory(folder, SIZE, subset="training")
    with pytest.raises(ValueError, match="empty validation subset"):
        image_dataset_from_directory(folder, SIZE, validation_split=0.05, subset="training", seed=1)
    with pytest.raises(ValueError, match="exactly 2 class folders"):
        (folder / "birds").mkdir()
        _save(folder / "birds" / "b.png", Image.fromarray(_rgb(5)))
        image_dataset_from_directory(folder, SIZE, class_mode="binary")


def test_corrupt_file_raises_naming_it_or_is_skipped(folder):
    bad = folder / "dogs" / "broken.jpg"
    bad.write_bytes(b"\x00 definitely not a jpeg" * 20)
    with pytest.raises(BadImageError, match="broken.jpg"):
        image_dataset_from_directory(folder, SIZE)
    with pytest.warns(UserWarning, match="broken.jpg"):
        ds = image_dataset_from_directory(folder, SIZE, on_error="skip", shuffle=False)
    assert ds.skipped == 1 and ds.skipped_files == [str(bad)] and ds.samples == 9
    assert sum(len(x) for x, _ in ds) == 9


def test_truncated_file_is_found_when_decoded(folder):
    full = _save(folder / "full.jpg", Image.fromarray(_rgb(3, (120, 160)))).read_bytes()
    truncated = folder / "cats" / "cats_zz_truncated.jpg"
    truncated.write_bytes(full[: len(full) * 2 // 3])  # the header survives, the scan data does not
    ds = image_dataset_from_directory(folder, SIZE, batch_size=4, shuffle=False)  # header is fine
    assert ds.samples == 10
    with pytest.raises(BadImageError, match="cats_zz_truncated.jpg"):
        list(ds)
    skipping = image_dataset_from_directory(folder, SIZE, batch_size=4, shuffle=False, on_error="skip")
    with pytest.warns(UserWarning, match="cats_zz_truncated.jpg"):
        sizes = [len(x) for x, _ in skipping]
    assert sizes == [4, 4, 1] and skipping.skipped == 1  # later images fill the gap
    assert skipping.samples == 9 and len(skipping) == 3
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="skipping")  # known-bad files are not retried
        assert sum(len(x) for x, _ in skipping) == 9


def test_decompression_bomb_is_refused(folder):
    # A small limit stands in for Pillow's 89 megapixels: the 29x37 images pass, the 40x40 one does not.
    _save(folder / "cats" / "big.png", Image.fromarray(_rgb(4, (40, 40))))
    with pytest.raises(Image.DecompressionBombError, match=r"big\.png: 40x40 = 1600 pixels exceeds the limit of 1500"):
        image_dataset_from_directory(folder, SIZE, max_pixels=1500)
    with pytest.warns(UserWarning, match="decompression-bomb"):
        ds = image_dataset_from_directory(folder, SIZE, max_pixels=1500, on_error="skip")
    assert ds.skipped == 1 and ds.skipped_files[0].endswith("big.png") and ds.samples == 9
    with pytest.raises(Image.DecompressionBombError, match="big.png"):
        load_image(folder / "cats" / "big.png", max_pixels=1500)


def test_folder_errors_and_warnings(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        image_dataset_from_directory(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    _save(tmp_path / "flat" / "a.png", Image.fromarray(_rgb(1)))
    with pytest.raises(ValueError, match="one sub-folder per class"):
        image_dataset_from_directory(tmp_path / "flat")
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    (tmp_path / "empty" / "dogs").mkdir()
    (tmp_path / "empty" / "dogs" / "readme.txt").write_text("no images here")
    with pytest.warns(UserWarning, match="has no images"), pytest.raises(ValueError, match="no images in"):
        image_dataset_from_directory(tmp_path / "empty")
    _save(tmp_path / "empty" / "dogs" / "d.png", Image.fromarray(_rgb(2)))
    with pytest.warns(UserWarning, match=r"cats'? has no images"):
        ds = image_dataset_from_directory(tmp_path / "empty", SIZE)
    assert ds.samples == 1 and ds.class_names == ["cats", "dogs"]


def test_from_arrays_protocol():
    x = np.arange(10 * 2 * 2 * 1, dtype=np.uint8).reshape(10, 2, 2, 1)
    y = np.arange(10)
    ds = from_arrays(x, y, batch_size=4, seed=0)
    assert len(ds) == 3
    epochs = [list(ds.epoch(e)) for e in range(2)]
    for batches in epochs:
        assert [len(b[0]) for b in batches] == [4, 4, 2]
        xs, ys = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
        assert xs.dtype == np.float32 and sorted(ys) == list(range(10))
        np.testing.assert_array_equal(xs, x[ys].astype(np.float32))  # pairs stay together
    assert not np.array_equal(epochs[0][0][1], epochs[1][0][1])
    again = from_arrays(x, y, batch_size=4, seed=0)
    np.testing.assert_array_equal(next(iter(again))[1], epochs[0][0][1])
    assert len(from_arrays(x, y, batch_size=4, drop_remainder=True)) == 2
    assert [b.shape for b in from_arrays(x, batch_size=5, shuffle=False)] == [(5, 2, 2, 1)] * 2
    with pytest.raises(ValueError, match="10 samples but y has 9"):
        from_arrays(x, y[:9])
    with pytest.raises(ValueError, match="batch_size"):
        from_arrays(x, y, batch_size=0)


def test_map_and_augment_run_on_device_reproducibly(folder):
    aug = ImageAugmenter(rotation_range=30, horizontal_flip=True)
    plain = image_dataset_from_directory(folder, SIZE, batch_size=4, seed=5)
    scaled = plain.map(lambda x: x / 255.0)
    x, y = next(iter(scaled))
    assert isinstance(x, jax.Array) and float(x.max()) <= 1.0 and isinstance(y, np.ndarray)
    assert scaled.class_names == ["cats", "dogs"] and len(scaled) == len(plain)

    def run(**kw):
        train, val = image_dataset_from_directory(
            folder, SIZE, batch_size=4, seed=5, validation_split=0.34, subset="both", augment=aug, **kw
        )
        return train, val, [np.asarray(b[0]) for b in train.epoch(0)], [np.asarray(b[0]) for b in train.epoch(1)]

    _, val, first, second = run()
    _, _, first_again, _ = run()
    for a, b in zip(first, first_again):
        np.testing.assert_array_equal(a, b)  # same seed: same augmented batches
    assert not np.array_equal(first[0], second[0])  # a new epoch: new order and new keys
    # Validation is not augmented: its batches are exactly the decoded files.
    vx, _ = collect(val)
    files = np.stack([decode_image(p, SIZE, interpolation="bilinear", resize="tensor") for p in val.filepaths])
    key = lambda a: sorted(map(bytes, a.reshape(len(a), -1)))
    assert isinstance(vx, np.ndarray) and key(vx) == key(files)
    # augment= is map(augmenter, seed) on the decoded batches.
    undecorated = image_dataset_from_directory(folder, SIZE, batch_size=4, seed=5, validation_split=0.34, subset="training")
    manual = [np.asarray(b[0]) for b in undecorated.map(aug, seed=undecorated.seed)]
    for a, b in zip(first, manual):
        np.testing.assert_array_equal(a, b)


def test_uint8_batches_reach_the_augmenter_unconverted_with_the_same_result():
    x = np.stack([_rgb(i, (20, 24)) for i in range(6)])  # uint8
    aug = ImageAugmenter(rotation_range=25, zoom_range=0.2, horizontal_flip=True)
    via_uint8 = [np.asarray(b) for b in from_arrays(x, batch_size=4, seed=2, augment=aug)]
    via_float = [np.asarray(b) for b in from_arrays(x, batch_size=4, seed=2).map(aug, seed=2, dtype=np.float32)]
    stored = from_arrays(x, batch_size=4, seed=2).map(lambda b: b, dtype=None)
    assert next(iter(stored)).dtype == np.uint8
    assert next(iter(from_arrays(x, batch_size=4).map(lambda b: b))).dtype == np.float32  # the default for fns
    for a, b in zip(via_uint8, via_float):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=1e-4)
