"""MobileNet and MobileNetV2 against Keras 3 (JAX backend) at weights=None, with Keras' weights copied in
(batch-norm statistics randomised so they matter): the same layers in the same order, the same parameter
count, the same outputs; ported from the .h5 and .weights.h5 files real Keras writes; Keras' argument rules."""

import functools
import os
import re

os.environ.setdefault("KERAS_BACKEND", "jax")

import h5py
import jax
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from keras.src.legacy.saving import legacy_h5_format

import minicnn
from minicnn import inspector
from minicnn.models import MobileNet, MobileNetV2
from minicnn.models.mobilenet import (
    KERAS_WEIGHTS_URL,
    keras_weights_file,
    make_divisible,
)
from minicnn.models.registry import architecture
from minicnn.weights import port_file, pretrained_variables
from minicnn.weights.registry import registry
from tests.keras_utils import keras_variables, rel_err

MODELS = {"mobilenet": (keras.applications.MobileNet, MobileNet),
          "mobilenet_v2": (keras.applications.MobileNetV2, MobileNetV2)}
# Another width per family (V2's channels rounded to multiples of 8). depth_multiplier=2 matched Keras too, but
# Keras takes 17 s to build that model: kept out of the suite.
OTHER = {"mobilenet": (("alpha", 0.5),), "mobilenet_v2": (("alpha", 0.35),)}
SMALL = 32  # Keras' minimum input side: 1x1 after the five stride-2 stages


def images(size):
    return np.random.default_rng(size).uniform(-1, 1, (1, size, size, 3)).astype(np.float32)


@functools.cache
def keras_model(arch, kwargs, include_top, pooling, size):
    """A Keras application at weights=None, its batch-norm variables drawn at random (seeded)."""
    model = MODELS[arch][0](weights=None, include_top=include_top, pooling=pooling,
                            input_shape=(size, size, 3), **dict(kwargs))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, var.shape)])
    return model, np.asarray(model.predict(images(size), verbose=0))


@functools.cache
def minicnn_model(arch, kwargs, include_top, pooling, size):
    """The minicnn model for the same arguments, and its apply jitted once (tests share the compilation)."""
    model = MODELS[arch][1](include_top=include_top, pooling=pooling,
                            input_shape=None if size == 224 else (size, size, 3), **dict(kwargs))
    return model, jax.jit(model.apply)


def _text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def _keras_names(layers):
    # Keras numbers its unnamed layers per session (global_average_pooling2d_3); minicnn's are the first ones
    return [re.sub(r"_\d+$", "", n) if n.startswith("global_") else n for n in layers]


# Each family at the default size with the top, at the smallest size without it, at another width; the
# pooling top is code both families share: "avg" checked on one, "max" on the other.
CASES = [(arch, (), True, None, 224) for arch in MODELS] + [(arch, (), False, None, SMALL) for arch in MODELS]
CASES += [("mobilenet", (), False, "avg", SMALL), ("mobilenet_v2", (), False, "max", SMALL)]
CASES += [("mobilenet", OTHER["mobilenet"], True, None, SMALL), ("mobilenet_v2", OTHER["mobilenet_v2"], False, "avg", SMALL)]


@pytest.mark.parametrize("arch, kwargs, include_top, pooling, size", CASES)
def test_same_layers_count_and_outputs_as_keras(arch, kwargs, include_top, pooling, size):
    kmodel, want = keras_model(arch, kwargs, include_top, pooling, size)
    model, apply = minicnn_model(arch, kwargs, include_top, pooling, size)
    names = [info.path for info in inspector.layer_infos(model, None, (size, size, 3))]
    assert names == _keras_names(layer.name for layer in kmodel.layers[1:])  # [0] is Keras' InputLayer
    variables = keras_variables(kmodel)
    assert minicnn.count_params(variables)[0] == kmodel.count_params()
    assert rel_err(apply(variables, images(size)), want) < 1e-5


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("include_top", [True, False])
def test_ported_from_files_real_keras_wrote(arch, include_top, tmp_path):
    size = 224 if include_top else SMALL  # Keras models already built above
    kmodel, want = keras_model(arch, (), include_top, None, size)
    legacy, keras3 = tmp_path / "legacy.h5", tmp_path / "model.weights.h5"
    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, kmodel)
    kmodel.save_weights(keras3)
    apply = minicnn_model(arch, (), include_top, None, size)[1]
    for path in (legacy, keras3):
        _variables, detected = port_file(path)
        assert detected == arch
        got = apply(pretrained_variables(arch, str(path), include_top), images(size))
        assert rel_err(got, want) < 1e-5, path.name


def test_v2_legacy_file_with_the_2018_top_name_logits(tmp_path):
    """The published MobileNetV2 files come from keras-applications, whose top Dense was named ``Logits``;
    Keras' legacy loader pairs layers by order, and so does the porter."""
    kmodel, want = keras_model("mobilenet_v2", (), True, None, 224)
    path = tmp_path / "logits.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, kmodel)
        f.move("predictions", "Logits")
        group = f["Logits"]
        group.move("predictions", "Logits")  # the datasets' folder: weight names are Logits/kernel, Logits/bias
        for where, key in ((f, "layer_names"), (group, "weight_names")):
            where.attrs[key] = [_text(n).replace("predictions", "Logits").encode() for n in where.attrs[key]]
    variables = pretrained_variables("mobilenet_v2", str(path), True)
    assert "predictions" in variables["params"] and "Logits" not in variables["params"]
    assert rel_err(minicnn_model("mobilenet_v2", (), True, None, 224)[1](variables, images(224)), want) < 1e-5


def test_registry_rows_and_weight_sets():
    table = registry()
    for arch, folder in (("mobilenet", "mobilenet"), ("mobilenet_v2", "mobilenet_v2")):
        row = architecture(arch)
        for name, top in ((row.imagenet, True), (row.imagenet_notop, False)):
            entry = table[name]
            assert entry["filename"] == keras_weights_file(arch, 1.0, 224, top)
            assert entry["url"] == f"{KERAS_WEIGHTS_URL}{folder}/{entry['filename']}"
            assert (entry["arch"], entry["include_top"], entry["preprocessing"]) == (arch, top, "tf")
        infos = inspector.layer_infos(row.build(include_top=False), None, (SMALL, SMALL, 3))
        paths = [i.path for i in infos]
        assert {row.gradcam_layer, row.unfreeze_from, *row.demo_layers, row.signature} <= set(paths)
        assert paths[-1] == row.gradcam_layer  # the last feature map
    v2 = keras_model("mobilenet_v2", (), False, None, SMALL)[0]
    assert v2.layers[100].name == architecture("mobilenet_v2").unfreeze_from  # TensorFlow tutorial's fine_tune_at


def test_keras_weight_file_names():
    assert keras_weights_file("mobilenet", 0.25, 128, False) == "mobilenet_2_5_128_tf_no_top.h5"
    assert keras_weights_file("mobilenet_v2", 1.4, 224, True) == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.4_224.h5"
    assert [make_divisible(16 * a) for a in (0.35, 0.5, 1.3)] == [8, 8, 24]


@pytest.mark.parametrize("arch, kwargs", [
    ("mobilenet", {"input_shape": (31, 64, 3)}),
    ("mobilenet_v2", {"input_shape": (64, 31, 3)}),
    ("mobilenet", {"weights": "imagenet", "alpha": 0.6}),
    ("mobilenet", {"weights": "imagenet", "depth_multiplier": 2}),
    ("mobilenet_v2", {"weights": "imagenet", "alpha": 0.25}),
    ("mobilenet", {"weights": "imagenet", "input_shape": (200, 200, 3)}),  # include_top: square, a trained size
    ("mobilenet_v2", {"weights": "imagenet", "input_shape": (96, 128, 3)}),
    ("mobilenet_v2", {"weights": "imagenet", "classes": 10}),
])
def test_keras_argument_errors(arch, kwargs):
    """Keras refuses these (before any download); so does minicnn, naming the value."""
    keras_fn, ours = MODELS[arch]
    with pytest.raises(ValueError):
        keras_fn(**{"weights": None, **kwargs})
    with pytest.raises(ValueError, match=re.escape(str(next(v for k, v in kwargs.items() if k != "weights")))):
        ours(**kwargs)


def test_imagenet_sets_minicnn_lacks_are_named():
    """Keras would download the alpha 0.5 file: minicnn names it; another trained size is loud, not silent."""
    with pytest.raises(ValueError, match=re.escape(KERAS_WEIGHTS_URL + "mobilenet/mobilenet_5_0_224_tf_no_top.h5")):
        MobileNet(weights="imagenet", alpha=0.5, include_top=False)
    with pytest.raises(ValueError, match="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.3_224.h5"):
        MobileNetV2(weights="imagenet", alpha=1.3)
    with pytest.warns(UserWarning, match="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"):
        MobileNetV2(weights="imagenet", include_top=False, input_shape=(96, 96, 3))


def test_wrong_input_is_one_clear_error():
    model = MobileNetV2(include_top=False, input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match=r"expected shape \(N, 64, 64, 3\)"):
        model.init(jax.random.key(0), np.zeros((1, 96, 96, 3), np.float32))
    with pytest.raises(ValueError, match="at least 32"):
        MobileNet(include_top=False).init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))
