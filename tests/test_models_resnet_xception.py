"""ResNet50 and Xception against real Keras 3 (JAX backend, weights=None with random batch-norm
statistics copied in): parameter counts, layer names in Keras' order, outputs for include_top
True/False and pooling None/avg/max at the default size and one other, weights ported from the
legacy .h5 and the .weights.h5 that Keras writes, Keras' argument errors, and the chapter-5 recipes."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import functools

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="Keras 3 is the reference ([test] extra)")

from keras.src.legacy.saving import legacy_h5_format

import minicnn
from minicnn import inspector, ops
from minicnn.augment import ImageAugmenter
from minicnn.data import from_arrays
from minicnn.models import ResNet50, Xception, architecture
from minicnn.transfer.recipes import (
    feature_extraction,
    feature_extraction_with_augmentation,
    fine_tune,
)
from minicnn.weights import port_file, pretrained_variables
from minicnn.weights.port import conform

# arch: (minicnn class, Keras constructor, default size, smallest size, Keras' counts with / without top)
MODELS = {"resnet50": (ResNet50, keras.applications.ResNet50, 224, 32, 25_636_712, 23_587_712),
          "xception": (Xception, keras.applications.Xception, 299, 71, 22_910_480, 20_861_480)}
# the other size the outputs are checked at: a feature map of more than one pixel (2x2, 3x3), so
# average and max pooling differ
OTHER_SIZE = {"resnet50": 64, "xception": 71}
KERAS_LEAVES = {"Conv2D": ("kernel", "bias"), "Dense": ("kernel", "bias"),
                "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel", "bias")}


@pytest.fixture(scope="module", autouse=True)
def minicnn_home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINICNN_HOME", str(tmp_path_factory.mktemp("minicnn_home")))
        pretrained_variables.cache_clear()
        yield
        pretrained_variables.cache_clear()


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def images(size, n=1, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def _randomize_batch_norms(kmodel, seed=0):
    """Keras' weights=None batch norms are the identity; random statistics make a swapped or
    misread one visible in the outputs."""
    rng = np.random.default_rng(seed)
    for layer in kmodel.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.uniform(-0.2, 0.2, c),
                               rng.uniform(-0.2, 0.2, c), rng.uniform(0.5, 1.5, c)])


def keras_variables(kmodel) -> dict:
    """minicnn variables from a Keras model's weighted layers, by Keras layer name and role."""
    params, stats = {}, {}
    for layer in kmodel.layers:
        w = [np.asarray(v) for v in layer.get_weights()]
        if not w:
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            params[layer.name] = {"gamma": w[0], "beta": w[1]}
            stats[layer.name] = {"moving_mean": w[2], "moving_variance": w[3]}
        else:
            roles = KERAS_LEAVES[type(layer).__name__]
            params[layer.name] = dict(zip(roles if len(w) == len(roles) else roles[:-1], w))
    return {"params": params, "batch_stats": stats}


@functools.cache
def reference(arch):
    """Keras' model with its top at the default size and the same weights without the top at any size,
    built in a fresh Keras session (so the unnamed layers get the names minicnn gives them)."""
    _, build, _size, *_ = MODELS[arch]
    keras.backend.clear_session()
    top = build(weights=None)
    _randomize_batch_norms(top)
    keras.backend.clear_session()
    notop = build(weights=None, include_top=False, input_shape=(None, None, 3))
    notop.set_weights(top.get_weights()[:-2])  # the top is the last layer: predictions kernel, bias
    return top, notop, keras_variables(top)


def minicnn_output(arch, variables, size, **kwargs):
    model = MODELS[arch][0](**kwargs)
    kept = {c: {k: v for k, v in tree.items() if kwargs.get("include_top", True) or k != "predictions"}
            for c, tree in variables.items()}
    return np.asarray(ops.jit(model.apply)(kept, jnp.asarray(images(size))))


def keras_notop(arch, size, pooling=None):
    """Keras' no-top outputs, pooled with Keras' own global pooling layers."""
    y = reference(arch)[1](images(size))
    pool = {"avg": keras.layers.GlobalAveragePooling2D(), "max": keras.layers.GlobalMaxPooling2D()}.get(pooling)
    return np.asarray(pool(y) if pool else y)


@pytest.mark.parametrize("arch", MODELS)
def test_parameter_count_and_layer_names_equal_keras(arch):
    cls, _, size, small, with_top, without_top = MODELS[arch]
    top, notop, _ = reference(arch)
    assert top.count_params() == with_top and notop.count_params() == without_top
    for model, kmodel in ((cls(), top), (cls(include_top=False), notop)):
        variables = inspector.abstract_variables(model, (size, size, 3))
        assert sum(np.prod(v.shape) for v in jax.tree_util.tree_leaves(variables)) == kmodel.count_params()
        names = [i.path for i in inspector.layer_infos(model, variables, (size, size, 3))]
        assert names == [layer.name for layer in kmodel.layers[1:]]  # Keras' list starts with its InputLayer
    infos = inspector.layer_infos(cls(include_top=False), None, (small, small, 3))
    assert {architecture(arch).gradcam_layer, architecture(arch).unfreeze_from} <= {i.path for i in infos}


@pytest.mark.parametrize("arch", MODELS)
def test_outputs_equal_keras_at_the_default_size(arch):
    _, _, size, *_ = MODELS[arch]
    top, _, variables = reference(arch)
    errors = {"top": rel_err(minicnn_output(arch, variables, size), top(images(size))),
              "notop": rel_err(minicnn_output(arch, variables, size, include_top=False), keras_notop(arch, size))}
    print(arch, size, errors)
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("pooling", [None, "avg", "max"])
def test_outputs_equal_keras_at_another_size(arch, pooling):
    size, variables = OTHER_SIZE[arch], reference(arch)[2]
    got, expected = minicnn_output(arch, variables, size, include_top=False, pooling=pooling), keras_notop(arch, size, pooling)
    assert got.shape == expected.shape
    err = rel_err(got, expected)
    print(arch, size, pooling, err)
    assert err < 1e-5


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """{(arch, layout): path}: the reference models' weights as Keras writes them (with their top)."""
    d = tmp_path_factory.mktemp("keras_files")
    files = {}
    for arch in MODELS:
        top = reference(arch)[0]
        files[arch, "h5"] = d / f"{arch}.h5"
        with h5py.File(files[arch, "h5"], "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, top)
        files[arch, "weights.h5"] = d / f"{arch}.weights.h5"
        top.save_weights(files[arch, "weights.h5"])
    return files


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("layout", ["h5", "weights.h5"])
def test_keras_files_port_to_keras_variables_bit_exact(arch, layout, keras_files):
    variables, detected = port_file(keras_files[arch, layout])
    assert detected == arch
    got = conform(variables, arch, True, str(keras_files[arch, layout]))
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(reference(arch)[2])
    for (path, value), expected in zip(jax.tree_util.tree_leaves_with_path(got),
                                       jax.tree_util.tree_leaves(reference(arch)[2])):
        np.testing.assert_array_equal(value, expected, jax.tree_util.keystr(path))


def test_pretrained_xception_from_a_legacy_file_equals_keras(keras_files):
    model, variables, preprocess = minicnn.pretrained("xception", include_top=False,
                                                      weights=keras_files["xception", "h5"], input_shape=(71, 71, 3))
    assert preprocess.keywords["mode"] == "tf"
    err = rel_err(ops.jit(model.apply)(variables, jnp.asarray(images(71))), keras_notop("xception", 71))
    print("pretrained xception .h5", err)
    assert err < 1e-5


def test_legacy_file_from_another_session_ports_xception_by_order(keras_files, tmp_path):
    """Keras numbers Xception's unnamed shortcut layers per session (``conv2d_4``; Keras 2's own file
    says ``conv2d_1``): paired by order, as Keras' legacy loader does, they land on the same weights."""
    renamed = tmp_path / "xception_renamed.h5"
    with h5py.File(keras_files["xception", "h5"], "r") as src, h5py.File(renamed, "w") as dst:
        old = [n.decode() if isinstance(n, bytes) else n for n in src.attrs["layer_names"]]
        new = [f"{n}_{int(n.rsplit('_', 1)[1]) + 5 if n[-1].isdigit() else 5}"
               if n.startswith(("conv2d", "batch_normalization")) else n for n in old]
        dst.attrs.update({k: v for k, v in src.attrs.items() if k != "layer_names"})
        dst.attrs["layer_names"] = np.array([n.encode() for n in new])
        for o, n in zip(old, new):
            src.copy(src[o], dst, name=n)
    assert "conv2d_5" in new
    variables, arch = port_file(renamed)
    expected = port_file(keras_files["xception", "h5"])[0]
    assert arch == "xception" and set(variables["params"]) == set(expected["params"])
    for layer in ("conv2d", "conv2d_3", "batch_normalization_2"):
        for leaf, value in variables["params"][layer].items():
            np.testing.assert_array_equal(value, expected["params"][layer][leaf])


@pytest.mark.parametrize("arch, kwargs", [
    ("resnet50", {"include_top": False, "input_shape": (31, 64, 3)}),
    ("xception", {"include_top": False, "input_shape": (70, 71, 3)}),
    ("xception", {"weights": "imagenet", "input_shape": (71, 71, 3)}),
    ("resnet50", {"weights": "imagenet", "classes": 10}),
])
def test_keras_argument_errors(arch, kwargs):
    cls, build, _, small, *_ = MODELS[arch]
    with pytest.raises(ValueError):
        build(**{"weights": None, **kwargs})
    with pytest.raises(ValueError):
        model = cls(**kwargs)
        model.init(jax.random.key(0), jnp.zeros((1, *(model.input_shape or (small, small, 3)))))


def test_unknown_pooling_is_an_error_where_keras_ignores_it():
    """Keras silently returns the unpooled feature map for ``pooling="mean"``; minicnn names the choices."""
    with pytest.raises(ValueError, match='pooling must be None, "avg" or "max", got .mean.'):
        ResNet50(include_top=False, pooling="mean")


@pytest.mark.parametrize("arch, size", [("resnet50", 31), ("xception", 70)])
def test_input_below_the_minimum_names_the_shape(arch, size):
    with pytest.raises(ValueError, match=f"at least {MODELS[arch][3]}.*{size}"):
        MODELS[arch][0](include_top=False).init(jax.random.key(0), jnp.zeros((1, size, size, 3)))


def _four_images():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 255, (4, 32, 32, 3)).astype(np.float32), np.arange(4) % 2
    return from_arrays(x, y, batch_size=2, seed=0)


def test_feature_extraction_on_resnet50(keras_files):
    """The first recipe on ResNet50(include_top=False, weights=<the Keras .weights.h5>): one epoch on
    four 32x32 images."""
    base = ResNet50(include_top=False, weights=str(keras_files["resnet50", "weights.h5"]))
    history = feature_extraction(base, _four_images(), epochs=1)
    assert history.epoch == [0] and np.isfinite(history.history["loss"]).all()


def test_augmented_extraction_then_fine_tuning_on_resnet50(keras_files):
    """Feature extraction with augmentation, then fine-tuning from the registry's unfreeze point on that
    run (phase1=), one epoch each on four 32x32 images. The Sequential's base is grafted by minicnn.init
    from the Keras .weights.h5 (conv4 stays as ported); fine-tuning moves conv5's convolutions, no batch norm."""
    base = ResNet50(include_top=False, weights=str(keras_files["resnet50", "weights.h5"]))
    data = _four_images()
    augmented = feature_extraction_with_augmentation(base, data, epochs=1, augment=ImageAugmenter(horizontal_flip=True))
    tuned = fine_tune(base, data, epochs=(1, 1), phase1=augmented, unfreeze_from=architecture("resnet50").unfreeze_from)
    assert tuned.epoch == [0, 1] and np.isfinite(tuned.history["loss"]).all()
    model = tuned.trainer.model
    params, ported = tuned.trainer.variables["params"][model.layer_names()[0]], reference("resnet50")[2]["params"]
    for layer, leaf in (("conv4_block6_3_conv", "kernel"), ("conv5_block3_3_bn", "gamma")):
        np.testing.assert_array_equal(params[layer][leaf], ported[layer][leaf], f"{layer}/{leaf}")
    assert not np.array_equal(params["conv5_block1_1_conv"]["kernel"], ported["conv5_block1_1_conv"]["kernel"])
