"""ImageAugmenter against Keras' legacy ImageDataGenerator (keras.src.legacy.preprocessing.image)."""

import functools
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import numpy as np
import pytest
from scipy import stats
from skimage import data, transform

from minicnn.augment import FILL_MODES, PARAM_NAMES, ImageAugmenter

legacy = pytest.importorskip("keras.src.legacy.preprocessing.image", reason="parity needs Keras 3")
pytestmark = pytest.mark.filterwarnings("ignore:Please import `affine_transform`:DeprecationWarning")  # Keras' import

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


@functools.cache
def _photo(name, shape):
    return transform.resize(getattr(data, name)(), shape, anti_aliasing=True).astype(np.float32)


def photo(name, shape=(64, 64)):
    """A real photo from skimage.data, resized, float32 in [0, 1] (a fresh copy)."""
    return _photo(name, shape).copy()


WIDE = dict(  # every geometric augmentation, with ranges that push samples far past the borders
    rotation_range=90,
    width_shift_range=0.4,
    height_shift_range=0.4,
    shear_range=40,
    zoom_range=0.5,
    horizontal_flip=True,
    vertical_flip=True,
)


def wide_ranges(**kw):
    return ImageAugmenter(**WIDE, **kw)


def keras_params(generator, image_shape, n, seed):
    """n parameter sets drawn by Keras' own get_random_transform, stacked into minicnn's dict of (n,) arrays."""
    np.random.seed(seed)
    draws = [generator.get_random_transform(image_shape) for _ in range(n)]
    return {k: None if draws[0][k] is None else np.array([d[k] for d in draws]) for k in draws[0]}


def assert_matches_keras(images, params, generator, tol=1e-6, **augmenter_kw):
    """minicnn's apply_transform on the batch vs Keras' apply_transform image by image, same parameters.

    tol: the README's "mean abs. difference < 1e-6" on images in [0, 1] (measured worst 4.4e-7, reflect).
    """
    aug = ImageAugmenter(fill_mode=generator.fill_mode, cval=generator.cval, **augmenter_kw)
    ours = np.asarray(aug.apply_transform(images, params))
    for j, image in enumerate(images):
        one = {k: None if v is None else v[j].item() for k, v in params.items()}
        ref = generator.apply_transform(image.copy(), one)
        mad = np.abs(ours[j] - ref).mean()
        assert mad < tol, f"image {j}, fill_mode={generator.fill_mode}, params {one}: mean |diff| {mad:.2e}"


@pytest.mark.parametrize("fill_mode", FILL_MODES)
def test_apply_transform_matches_keras_on_photos(fill_mode):
    # 4 photos x 13 = 52 random parameter sets per fill mode, drawn by Keras.
    generator = legacy.ImageDataGenerator(**WIDE, fill_mode=fill_mode, cval=0.37)
    images = np.stack([photo(name) for name in PHOTOS for _ in range(13)])
    params = keras_params(generator, images.shape[1:], len(images), seed=FILL_MODES.index(fill_mode))
    assert_matches_keras(images, params, generator)


@pytest.mark.parametrize("fill_mode", FILL_MODES)
def test_keras_compat_matches_keras_on_non_square_images(fill_mode):
    generator = legacy.ImageDataGenerator(**WIDE, fill_mode=fill_mode, cval=0.5)
    images = np.stack([photo(name, (40, 72)) for name in PHOTOS[:2] for _ in range(4)])
    params = keras_params(generator, images.shape[1:], len(images), seed=7)
    assert_matches_keras(images, params, generator, keras_compat=True)


def test_random_params_draws_are_applied_like_keras():
    # minicnn's own draws (flips as bool arrays, float32) through Keras give the same images.
    aug = wide_ranges(fill_mode="reflect")
    images = np.stack([photo(name) for name in PHOTOS])
    params = aug.random_params(jax.random.key(2), len(images), images.shape[1:])
    assert_matches_keras(images, params, legacy.ImageDataGenerator(fill_mode="reflect"))


def test_default_rotates_about_the_true_centre_of_non_square_images():
    image = photo("coffee", (30, 52))[None]
    half_turn = {"theta": 180.0}
    ours = np.asarray(ImageAugmenter().apply_transform(image, half_turn))[0]
    np.testing.assert_allclose(ours, image[0, ::-1, ::-1], atol=1e-5)
    # Keras pivots about (h/2, w/2) swapped; keras_compat keeps that, so the half turn is shifted.
    compat = np.asarray(ImageAugmenter(keras_compat=True).apply_transform(image, half_turn))[0]
    assert np.abs(compat - image[0, ::-1, ::-1]).mean() > 1e-2


def test_channel_shift_and_brightness_match_keras_on_0_255_images():
    settings = dict(rotation_range=20, channel_shift_range=40.0, brightness_range=(0.3, 1.7))
    generator = legacy.ImageDataGenerator(**settings)
    base = photo("astronaut", (40, 40)) * 255
    # In [0, 255], and outside it, where Keras stretches to 8 bits and back.
    for images in (np.stack([base] * 10), np.stack([base * 1.4 - 30] * 10)):
        params = keras_params(generator, images.shape[1:], len(images), seed=1)
        ours = np.asarray(ImageAugmenter(**settings).apply_transform(images, params))
        level = np.ptp(images) / 255  # one 8-bit step in the image's units
        for j, image in enumerate(images):
            ref = generator.apply_transform(image.copy(), {k: None if v is None else v[j] for k, v in params.items()})
            # Keras floors to 8 bits: a sample within float rounding of an integer may land one step apart.
            assert np.abs(ours[j] - ref).mean() < 1e-2 * level
            assert np.abs(ours[j] - ref).max() <= 2 * level + 1e-3


def test_call_is_random_params_then_apply_transform_and_deterministic():
    aug = wide_ranges(channel_shift_range=0.1, rescale=0.5)
    images = np.stack([photo(name) for name in PHOTOS])
    key = jax.random.key(3)
    out = np.asarray(aug(key, images))
    again = np.asarray(aug(key, images))
    via_params = np.asarray(aug.apply_transform(images, aug.random_params(key, 4, images.shape[1:])))
    np.testing.assert_array_equal(out, again)
    np.testing.assert_allclose(out, via_params, atol=1e-6)
    assert np.abs(out - np.asarray(aug(jax.random.key(4), images))).mean() > 1e-2
    # Equal settings compare equal, hash equal and so share one compiled program.
    assert aug == wide_ranges(channel_shift_range=0.1, rescale=0.5) and aug != wide_ranges(channel_shift_range=0.1)
    assert hash(aug) == hash(wide_ranges(channel_shift_range=0.1, rescale=0.5))


def test_default_augmenter_is_identity_and_rescale_comes_last():
    images = (np.stack([photo(name) for name in PHOTOS]) * 255).astype(np.uint8)
    out = ImageAugmenter()(jax.random.key(0), images)
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_array_equal(np.asarray(out), images.astype(np.float32))
    rescaled = ImageAugmenter(rescale=1 / 255)(jax.random.key(0), images)
    np.testing.assert_allclose(np.asarray(rescaled), images / np.float32(255), rtol=1e-6)


def test_random_params_ranges_and_flip_frequency():
    aug = ImageAugmenter(
        rotation_range=30,
        width_shift_range=0.1,
        height_shift_range=0.25,
        shear_range=15,
        zoom_range=(0.7, 1.2),
        horizontal_flip=True,
        channel_shift_range=20,
        brightness_range=(0.5, 1.5),
    )
    n, (h, w) = 20000, (40, 100)
    p = {k: (None if v is None else np.asarray(v)) for k, v in aug.random_params(jax.random.key(0), n, (h, w, 3)).items()}
    assert set(p) == set(PARAM_NAMES) and all(v.shape == (n,) for v in p.values())

    def spans(x, lo, hi):  # inside [lo, hi], reaching within 1% of both ends, uniform (KS test)
        assert lo <= x.min() < lo + 0.01 * (hi - lo) and hi - 0.01 * (hi - lo) < x.max() <= hi
        assert stats.kstest(x, stats.uniform(lo, hi - lo).cdf).pvalue > 1e-3

    spans(p["theta"], -30, 30)
    spans(p["tx"], -0.1 * w, 0.1 * w)  # horizontal shift: fraction of the width
    spans(p["ty"], -0.25 * h, 0.25 * h)
    spans(p["shear"], -15, 15)
    spans(p["zx"], 0.7, 1.2)
    spans(p["zy"], 0.7, 1.2)
    spans(p["channel_shift_intensity"], -20, 20)
    spans(p["brightness"], 0.5, 1.5)
    assert abs(np.corrcoef(p["zx"], p["zy"])[0, 1]) < 0.03  # independent draws per axis
    assert abs(p["flip_horizontal"].mean() - 0.5) < 0.02 and p["flip_horizontal"].dtype == bool
    assert not p["flip_vertical"].any()


def test_random_params_disabled_steps_follow_keras_conventions():
    p = ImageAugmenter().random_params(jax.random.key(0), 5, (8, 8))
    assert p["channel_shift_intensity"] is None and p["brightness"] is None
    for name, value in [("theta", 0), ("tx", 0), ("ty", 0), ("shear", 0), ("zx", 1), ("zy", 1)]:
        np.testing.assert_array_equal(np.asarray(p[name]), value)


def test_keras_compat_reproduces_the_swapped_shift_draw_of_keras():
    # keras#17398: Keras draws tx (horizontal) from height_shift_range * height.
    settings = dict(width_shift_range=0.05, height_shift_range=0.3, rotation_range=25, zoom_range=0.2)
    shape = (40, 100, 3)
    n = 2000
    ours = ImageAugmenter(keras_compat=True, **settings).random_params(jax.random.key(5), n, shape)
    gen = legacy.ImageDataGenerator(**settings)
    np.random.seed(0)
    theirs = [gen.get_random_transform(shape) for _ in range(n)]
    for name in ("tx", "ty", "theta", "zx", "zy"):
        ks = stats.ks_2samp(np.asarray(ours[name]), [t[name] for t in theirs])
        assert ks.pvalue > 1e-3, f"{name}: KS p={ks.pvalue:.1e}"
    default_tx = np.asarray(ImageAugmenter(**settings).random_params(jax.random.key(5), n, shape)["tx"])
    assert np.abs(default_tx).max() <= 0.05 * 100 < np.abs(np.asarray(ours["tx"])).max()


def test_integer_and_list_shift_ranges_follow_keras():
    aug = ImageAugmenter(width_shift_range=3, height_shift_range=[0.1, 0.2])
    p = aug.random_params(jax.random.key(0), 4000, (50, 80))
    assert set(np.unique(np.asarray(p["tx"]))) == {-2.0, -1.0, 0.0, 1.0, 2.0}  # pixels in (-3, 3)
    np.testing.assert_allclose(np.unique(np.asarray(p["ty"])), [-10, -5, 5, 10], rtol=1e-6)  # fractions of 50


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="fill_mode"):
        ImageAugmenter(fill_mode="mirror")
    with pytest.raises(ValueError, match="zoom_range"):
        ImageAugmenter(zoom_range=(0.5, 1.0, 2.0))
    with pytest.raises(ValueError, match="brightness_range"):
        ImageAugmenter(brightness_range=(0.5,))
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        ImageAugmenter()(jax.random.key(0), np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="unknown parameter"):
        ImageAugmenter().apply_transform(np.zeros((1, 8, 8, 3), np.float32), {"rotation": 3.0})


def test_show_augmentations_tiles_the_augmenter_output():
    from minicnn.viz.augmentation import show_augmentations

    cat = (photo("chelsea", (30, 40)) * 255).round()
    aug = ImageAugmenter(rotation_range=40, horizontal_flip=True, rescale=1 / 255)
    grid = show_augmentations(cat, aug, n=6, key=jax.random.key(1), columns=4, gap=2)
    assert grid.mode == "RGB" and grid.size == (4 * 40 + 3 * 2, 2 * 30 + 2)
    tiles = np.clip(np.rint(np.asarray(aug(jax.random.key(1), np.stack([cat] * 6))) / aug.rescale), 0, 255)
    pixels = np.asarray(grid)
    np.testing.assert_array_equal(pixels[32:62, 42:82], tiles[5].astype(np.uint8))  # row 1, column 1
    assert (pixels[:, 40:42] == 255).all() and (pixels[32:, 2 * 42 :] == 255).all()  # gaps and empty slots
