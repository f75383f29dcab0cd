"""Filter patterns by gradient ascent: they work, vmapping changes nothing, regularisers are right."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from minicnn.layers import Conv2D, Dense, Flatten, MaxPooling2D, Sequential, from_array
from minicnn.ops.kernels import gabor_kernel
from minicnn.viz import (activations, blur, deprocess_image, filter_patterns, jitter, l2_decay, pad,
                         random_rotate, random_scale, total_variation)
from minicnn.viz import filters as F
from minicnn.inspector import forward_to

SIZE = 32


def gabor_model():
    """A first layer of four oriented Gabor filters (even part, same on R, G, B), then a random conv."""
    def even_gabor(theta):  # the central 7x7, made zero-mean so grey input gives no response
        k = gabor_kernel(0.2, theta, sigma_x=2, sigma_y=2).real
        c = k.shape[0] // 2
        k = k[c - 3:c + 4, c - 3:c + 4]
        return k - k.mean()

    bank = np.stack([even_gabor(theta) for theta in np.arange(4) * np.pi / 4], -1)
    kernel = np.repeat(bank[:, :, None, :], 3, axis=2).astype(np.float32) / 3
    return Sequential([Conv2D(4, kernel.shape[0], activation="relu", kernel_initializer=from_array(kernel, "gabor")),
                       MaxPooling2D(2), Conv2D(8, 3, activation="relu")])


@pytest.fixture(scope="module")
def setup():
    model = gabor_model()
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    return model, variables


def start_images(key, filters):
    """The book preset's starting images, as filter_patterns draws them (fold_in per filter)."""
    return jnp.stack([F._pixels(jax.random.split(jax.random.fold_in(key, f))[0], SIZE)[0] for f in filters])


def mean_activation(model, variables, layer, x, filters):
    a = np.asarray(activations(model, variables, x, [layer])[layer])
    return np.array([a[i, ..., f].mean() for i, f in enumerate(filters)])


@pytest.mark.parametrize("layer, filters", [("conv2d", [0, 1, 2, 3]), ("conv2d_1", [0, 3, 5])])
def test_ascent_raises_each_filters_mean_activation(setup, layer, filters):
    model, variables = setup
    key = jax.random.key(1)
    patterns = filter_patterns(model, variables, layer, filters, size=SIZE, key=key)  # the book's recipe
    assert patterns.shape == (len(filters), SIZE, SIZE, 3)
    before = mean_activation(model, variables, layer, start_images(key, filters), filters)
    after = mean_activation(model, variables, layer, patterns, filters)
    assert np.all(after > 20 * before), (before, after)


def test_gabor_filter_pattern_is_a_grating_of_its_orientation(setup):
    """For a linear first layer the best input is the kernel itself, tiled: the pattern of the
    horizontal Gabor filter must vary along y, not x, and vice versa."""
    model, variables = setup
    p = np.asarray(filter_patterns(model, variables, "conv2d", [0, 1, 2, 3], size=SIZE))[::2].mean(-1)
    along_x = np.abs(np.diff(p, axis=2)).mean(axis=(1, 2))
    along_y = np.abs(np.diff(p, axis=1)).mean(axis=(1, 2))
    assert along_x[0] > 3 * along_y[0] and along_y[1] > 3 * along_x[1]


@pytest.mark.parametrize("preset, steps, transforms", [
    ("book", 40, None), ("lucid", 2, (jitter(4),))])  # random crops: each filter's own key
def test_vmapped_equals_per_filter_loop(setup, preset, steps, transforms):
    model, variables = setup
    key = jax.random.key(2)
    kw = dict(size=SIZE, key=key, preset=preset, steps=steps, transforms=transforms)
    together = filter_patterns(model, variables, "conv2d_1", [1, 4, 6], **kw)
    one_by_one = np.concatenate([filter_patterns(model, variables, "conv2d_1", f, **kw) for f in (1, 4, 6)])
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5, atol=1e-3)


def test_vmapped_equals_the_lectures_per_filter_loop(setup):
    """All filters in one program (vmap, a one-channel cut layer) give the lecture's loop written out
    here (one image, the layer's full output sliced to the filter, ``g / (rms(g) + 1e-5)`` steps),
    within float reassociation (pixels ~128: 1e-3 absolute)."""
    model, variables = setup
    key, filters = jax.random.key(3), [1, 4, 6]

    @jax.jit
    def lecture_step(image, f):
        g = jax.grad(lambda x: activations(model, variables, x, ["conv2d_1"])["conv2d_1"][..., f].mean())(image)
        return image + g / (jnp.sqrt(jnp.mean(jnp.square(g))) + 1e-5)

    expected = []
    for f, image in zip(filters, start_images(key, filters)):
        image = image[None]
        for _ in range(10):
            image = lecture_step(image, f)
        expected.append(image[0])
    got = filter_patterns(model, variables, "conv2d_1", filters, size=SIZE, key=key, steps=10)  # book: step 1.0
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-5, atol=1e-3)


def test_lucid_images_are_in_pixel_range_and_penalties_apply(setup):
    model, variables = setup
    kw = dict(size=SIZE, preset="lucid", steps=8, transforms=())
    plain = np.asarray(filter_patterns(model, variables, "conv2d", [0], **kw))
    assert plain.min() >= 0 and plain.max() <= 255
    smooth = np.asarray(filter_patterns(model, variables, "conv2d", [0], penalties=(total_variation(1e3),), **kw))
    tv = lambda x: np.abs(np.diff(x, axis=1)).mean() + np.abs(np.diff(x, axis=2)).mean()  # noqa: E731
    assert tv(smooth) < tv(plain)


def test_forward_stops_at_the_layer(setup):
    model, variables = setup
    x = jax.random.uniform(jax.random.key(3), (2, SIZE, SIZE, 3))
    np.testing.assert_allclose(forward_to(model, variables, x, "conv2d"),
                               activations(model, variables, x, ["conv2d"])["conv2d"])
    # one channel, computed by a one-filter copy of the layer (for the Gabor layer too, whose
    # initialiser is a fixed array)
    for layer in ("conv2d", "conv2d_1"):
        full = activations(model, variables, x, [layer])[layer]
        for c in (0, 3):
            np.testing.assert_allclose(forward_to(model, variables, x, layer, channel=c), full[..., c:c + 1],
                                       rtol=1e-5, atol=1e-5)
    # a softmax couples the channels, so that layer is computed whole and then sliced
    head = Sequential([Flatten(), Dense(3, activation="softmax")])
    hv = head.init(jax.random.key(1), x)
    np.testing.assert_allclose(forward_to(head, hv, x, "dense", channel=1), head.apply(hv, x)[:, 1:2], rtol=1e-6)
    # the cut program holds one convolution, not the model's two
    jaxpr = jax.make_jaxpr(lambda x: forward_to(model, variables, x, "conv2d"))(x)
    assert str(jaxpr).count("conv_general_dilated") == 1


def test_regularisers_match_references():
    x = jax.random.uniform(jax.random.key(4), (20, 24, 3)) * 255
    xn = np.asarray(x)
    k = jax.random.key(5)
    apply = lambda t: np.asarray(jax.jit(t)(k, x))  # noqa: E731  (one compile, not one per op)
    scipy_blur = ndimage.gaussian_filter(xn, (1, 1, 0), mode="nearest", truncate=3.0)
    np.testing.assert_allclose(apply(blur(1.0)), scipy_blur, rtol=1e-5, atol=1e-3)
    assert apply(jitter(4)).shape == (16, 20, 3)
    np.testing.assert_allclose(apply(pad(2, 7.0))[:2], 7.0)
    np.testing.assert_allclose(apply(random_rotate([0])), xn, atol=1e-3)
    np.testing.assert_allclose(apply(random_rotate([180])), xn[::-1, ::-1], atol=1e-2)
    # a 2x zoom about the centre samples source pixel c + (i - c) / 2, bilinearly
    yy, xx = np.meshgrid(np.arange(20), np.arange(24), indexing="ij")
    src = [9.5 + (yy - 9.5) / 2, 11.5 + (xx - 11.5) / 2]
    zoomed = np.stack([ndimage.map_coordinates(xn[..., c], src, order=1, mode="nearest") for c in range(3)], -1)
    np.testing.assert_allclose(apply(random_scale([2.0])), zoomed, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(l2_decay(0.5)(x), 0.5 * ((xn - xn.mean()) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(total_variation(2.0)(x), 2 * (np.abs(np.diff(xn, axis=0)).mean()
                                                             + np.abs(np.diff(xn, axis=1)).mean()), rtol=1e-5)


def test_deprocess_image_is_the_lectures():
    x = np.random.default_rng(0).normal(130, 30, (2, 8, 8, 3))
    got = deprocess_image(x)
    for i in range(2):  # the lecture's code, one image at a time
        y = x[i] - x[i].mean()
        y /= y.std() + 1e-5
        y *= 0.1
        y += 0.5
        y = np.clip(y, 0, 1) * 255
        np.testing.assert_array_equal(got[i], np.clip(y, 0, 255).astype("uint8"))


def test_bad_arguments(setup):
    model, variables = setup
    with pytest.raises(ValueError, match=r"filters must be indices in \[0, 4\) of layer 'conv2d'"):
        filter_patterns(model, variables, "conv2d", [4], size=SIZE)
    with pytest.raises(ValueError, match="preset"):
        filter_patterns(model, variables, "conv2d", [0], size=SIZE, preset="deepdream")
    with pytest.raises(ValueError, match="unknown layer 'conv9'"):
        filter_patterns(model, variables, "conv9", [0], size=SIZE)
