"""Keras weight files written by real Keras 3 (legacy HDF5 and .weights.h5) port to the same outputs;
preprocess_input and decode_predictions equal keras.applications.imagenet_utils."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import functools
import shutil

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="Keras 3 writes the reference files ([test] extra)")

from keras.src.applications import imagenet_utils  # noqa: E402
from keras.src.legacy.saving import legacy_h5_format  # noqa: E402

import minicnn  # noqa: E402
from minicnn.models import VGG16, VGG19  # noqa: E402
from minicnn.weights import decode_predictions, port, port_file, preprocess_input, pretrained_variables  # noqa: E402
from minicnn.weights import load  # noqa: E402
from minicnn.weights.keras_h5 import weight_role  # noqa: E402

SIZE = 32  # the smallest VGG input: 1x1x512 after block5, the fc layers 512 -> 4096 -> 4096 -> classes


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def images(n=2, size=SIZE, seed=0):
    return np.random.default_rng(seed).uniform(-120, 140, (n, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """Real Keras VGG16s (random weights) and their outputs, in both weight layouts, with and without top."""
    d = tmp_path_factory.mktemp("keras")
    out = {}
    for top in (False, True):
        kmodel = keras.applications.VGG16(weights=None, include_top=top, input_shape=(SIZE, SIZE, 3), classes=10)
        legacy, k3 = d / f"vgg16_top{top}.h5", d / f"vgg16_top{top}.weights.h5"
        with h5py.File(legacy, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, kmodel)
        kmodel.save_weights(k3)
        out[top] = {"legacy": legacy, "keras3": k3, "y": np.asarray(kmodel(images(), training=False))}
    kmodel.save(d / "whole_model.h5")  # legacy whole-model file: weights under model_weights/
    out["whole"] = d / "whole_model.h5"
    return out


@functools.lru_cache(maxsize=None)
def _forward(top: bool, arch=VGG16):
    """One compiled forward per configuration, shared by the tests: they differ only in variables."""
    return jax.jit(arch(include_top=top, classes=10).apply)


def outputs(variables, top, arch=VGG16):
    return np.asarray(_forward(top, arch)(variables, images()))


@pytest.mark.parametrize("layout", ["legacy", "keras3"])
@pytest.mark.parametrize("top", [False, True])
def test_vgg16_from_keras_file_matches_keras(keras_files, layout, top):
    variables = pretrained_variables("vgg16", str(keras_files[top][layout]), top)
    assert rel_err(outputs(variables, top), keras_files[top]["y"]) < 1e-5


def test_whole_model_h5(keras_files):
    with h5py.File(keras_files["whole"]) as f:
        assert "model_weights" in f
    assert rel_err(outputs(pretrained_variables("vgg16", str(keras_files["whole"]), True), True),
                   keras_files[True]["y"]) < 1e-5


@pytest.mark.parametrize("top", [False, True])
def test_init_returns_the_pretrained_variables(keras_files, top):
    path = str(keras_files[top]["keras3"])
    model = VGG16(include_top=top, weights=path, classes=10, input_shape=(SIZE, SIZE, 3))
    variables = minicnn.init(model, jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    want = pretrained_variables("vgg16", path, top)
    jax.tree_util.tree_map(np.testing.assert_array_equal, dict(variables), want)


@pytest.mark.parametrize("layout", ["legacy", "keras3"])
def test_file_with_top_serves_include_top_false(keras_files, layout):
    got = pretrained_variables("vgg16", str(keras_files[True][layout]), False)
    assert "fc1" not in got["params"] and len(got["params"]) == 13
    base, _ = port_file(keras_files[False][layout])
    assert "fc1" not in base["params"]
    with pytest.raises(ValueError, match="layer fc1 of vgg16 is missing .*use include_top=False"):
        pretrained_variables("vgg16", str(keras_files[False][layout]), True)


def _rename_legacy(src, dst, style):
    """Copy a legacy file, renaming every weight to ``style``: the Keras 1 and Keras 2 namings."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        for layer in f.attrs["layer_names"]:
            g = f[layer]
            names = []
            for wn in g.attrs["weight_names"]:
                wn = wn.decode() if isinstance(wn, bytes) else wn
                role = wn.split("/")[-1]
                new = {"keras1": f"{layer}_{'W' if role == 'kernel' else 'b'}_1:0",
                       "keras2": f"{layer}/{role}:0"}[style]
                data = np.asarray(g[wn])
                del g[wn]
                g[new] = data
                names.append(new.encode())
            g.attrs["weight_names"] = np.array(names)


@pytest.mark.parametrize("style", ["keras1", "keras2"])
def test_legacy_weight_namings(keras_files, tmp_path, style):
    renamed = tmp_path / f"{style}.h5"
    _rename_legacy(keras_files[False]["legacy"], renamed, style)
    with h5py.File(renamed) as f:
        assert "block1_conv1_W_1:0" in f["block1_conv1"] if style == "keras1" else "block1_conv1" in f["block1_conv1"]
    assert rel_err(outputs(pretrained_variables("vgg16", str(renamed), False), False),
                   keras_files[False]["y"]) < 1e-5


def test_weight_roles():
    assert weight_role("block1_conv1", "block1_conv1_W_1:0") == "kernel"
    assert weight_role("block1_conv1", "block1_conv1_b_1:0") == "bias"
    assert weight_role("fc1", "fc1/kernel:0") == "kernel"
    assert weight_role("bn", "bn/moving_variance") == "moving_variance"
    with pytest.raises(ValueError, match="layer fc1: cannot tell the role of weight 'fc1/strange:0'"):
        weight_role("fc1", "fc1/strange:0")


def _anonymous(src, tmp_path):
    """A copy of a .weights.h5 without the layer names Keras 3.x records in vars/ attributes."""
    dst = tmp_path / "anonymous.weights.h5"
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        for g in f["layers"].values():
            if "vars" in g and "name" in g["vars"].attrs:
                del g["vars"].attrs["name"]
    return dst


def test_keras3_without_layer_names_maps_by_creation_order(keras_files, tmp_path):
    """Groups are conv2d, conv2d_1, ..., conv2d_10 (sorted as text: conv2d_10 before conv2d_2)."""
    anonymous = _anonymous(keras_files[True]["keras3"], tmp_path)
    with h5py.File(anonymous) as f:
        assert list(f["layers"])[:3] == ["conv2d", "conv2d_1", "conv2d_10"]
    assert rel_err(outputs(pretrained_variables("vgg16", str(anonymous), True), True),
                   keras_files[True]["y"]) < 1e-5


def test_mismatches_name_layer_expected_and_actual(keras_files, tmp_path):
    bad, missing = tmp_path / "bad.h5", tmp_path / "missing.h5"
    shutil.copy(keras_files[False]["legacy"], bad)
    shutil.copy(keras_files[False]["legacy"], missing)
    with h5py.File(bad, "r+") as f:
        del f["block3_conv2/block3_conv2/bias"]
        f["block3_conv2/block3_conv2/bias"] = np.zeros(7, np.float32)
    with pytest.raises(ValueError, match=r"layer block3_conv2 bias: expected shape \(256,\), got \(7,\)"):
        pretrained_variables("vgg16", str(bad), False)
    with h5py.File(missing, "r+") as f:
        names = [n if isinstance(n, bytes) else n.encode() for n in f.attrs["layer_names"]]
        f.attrs["layer_names"] = np.array([n for n in names if n != b"block4_conv1"])
    with pytest.raises(ValueError, match="layer block4_conv1 of vgg16 is missing"):
        pretrained_variables("vgg16", str(missing), False)
    with pytest.raises(ValueError, match="layer block3_conv4 of vgg19 is missing"):
        pretrained_variables("vgg19", str(keras_files[False]["legacy"]), False)
    with pytest.raises(ValueError, match="layer block3_conv4 of vgg19 is missing"):
        pretrained_variables("vgg19", str(keras_files[False]["keras3"]), False)
    with pytest.raises(ValueError, match=r"the model has 16 conv2d layers \(block1_conv1, .*\), the file only 13"):
        port_file(_anonymous(keras_files[False]["keras3"], tmp_path), arch="vgg19")


def test_port_then_load_from_minicnn_checkpoint(keras_files, tmp_path):
    out = port(keras_files[False]["legacy"], out=tmp_path / "ported")
    ported = load(out)
    assert sorted(ported["params"]) == sorted(pretrained_variables("vgg16", str(keras_files[False]["legacy"]),
                                                                   False)["params"])
    assert rel_err(outputs(pretrained_variables("vgg16", str(out), False), False),
                   keras_files[False]["y"]) < 1e-5


def test_vgg19_legacy_file_is_detected():
    kmodel = keras.applications.VGG19(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"minicnn_vgg19_{os.getpid()}.h5")
    try:
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, kmodel)
        _, arch = port_file(path)
        assert arch == "vgg19"
        got = outputs(pretrained_variables("vgg19", path, False), False, VGG19)
        assert rel_err(got, np.asarray(kmodel(images(), training=False))) < 1e-5
    finally:
        os.remove(path)


@pytest.mark.parametrize("mode", ["caffe", "torch", "tf"])
def test_preprocess_input_equals_keras(mode):
    rng = np.random.default_rng(3)
    for x in (rng.integers(0, 256, (2, 5, 4, 3)).astype(np.uint8), rng.uniform(0, 255, (5, 4, 3)).astype(np.float32)):
        want = imagenet_utils.preprocess_input(x.copy(), mode=mode)
        got = preprocess_input(x, mode)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(np.asarray(jax.jit(lambda v: preprocess_input(v, mode))(jnp.asarray(x))),
                                   want, rtol=1e-6, atol=1e-4)


def test_preprocess_input_rejects_bad_input():
    with pytest.raises(ValueError, match=r"expected RGB images \(..., 3\) channels last, got shape \(2, 3, 8, 8\)"):
        preprocess_input(np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="mode must be one of"):
        preprocess_input(np.zeros((1, 3)), "BGR")


def test_decode_predictions_equals_keras(monkeypatch):
    from minicnn.weights.imagenet import class_index
    monkeypatch.setattr(imagenet_utils, "CLASS_INDEX", class_index())  # Keras would download it
    preds = np.random.default_rng(4).dirichlet(np.ones(1000), size=3).astype(np.float32)
    want = imagenet_utils.decode_predictions(preds, top=4)
    got = decode_predictions(preds, top=4)
    assert [[r[:2] for r in row] for row in got] == [[r[:2] for r in row] for row in want]
    np.testing.assert_array_equal([[r[2] for r in row] for row in got], [[r[2] for r in row] for row in want])
    with pytest.raises(ValueError, match=r"\(N, 1000\), got shape \(2, 10\)"):
        decode_predictions(np.zeros((2, 10)))


def test_vgg16_nested_in_a_sequential_ports_its_conv_base(tmp_path):
    """A fine-tuned Sequential([VGG16, Flatten, Dense, Dense]) keeps VGG16's 13 conv layers under
    layers/functional/layers/: they port (with or without recorded names); the head is not VGG's top."""
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), base, keras.layers.Flatten(),
                              keras.layers.Dense(8), keras.layers.Dense(1)])
    path = tmp_path / "finetuned.weights.h5"
    model.save_weights(path)
    with h5py.File(path) as f:
        assert "conv2d" in f["layers/functional/layers"] and "conv2d" not in f["layers"]
    want = np.asarray(base(images(), training=False))
    for p in (path, _anonymous(path, tmp_path)):
        variables, arch = port_file(p)
        assert arch == "vgg16" and len(variables["params"]) == 13 and "fc1" not in variables["params"]
        assert rel_err(outputs(pretrained_variables("vgg16", str(p), False), False), want) < 1e-5
