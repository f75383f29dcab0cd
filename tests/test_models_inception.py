"""InceptionV3 against real Keras 3 (JAX backend, weights=None): layer names and model.layers indices
of a fresh Keras session, parameter and trainable counts (layers[:249] frozen), outputs with Keras'
weights (random BatchNormalization statistics) for include_top True/False and pooling None/avg/max,
files real Keras wrote (legacy .h5 with fresh and Keras 2-style 1-based names, .weights.h5), and the
InceptionV3 lecture's two-phase recipe on a folder of images."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import h5py
import jax
import numpy as np
import pytest
from PIL import Image

keras = pytest.importorskip("keras", reason="Keras 3 is the reference ([test] extra)")

from keras.src.legacy.saving import legacy_h5_format  # noqa: E402

import minicnn  # noqa: E402
from minicnn import inspector  # noqa: E402
from minicnn.data import image_dataset_from_directory  # noqa: E402
from minicnn.masks import keras_layers, layer_order, trainable_mask  # noqa: E402
from minicnn.models import InceptionV3  # noqa: E402
from minicnn.transfer.recipes import fine_tune_inception_v3  # noqa: E402
from minicnn.weights import port_file, pretrained_variables  # noqa: E402

SIZE, CLASSES = 75, 10  # Keras' minimum input: 1x1x2048 after mixed10


def images(n=1, size=SIZE, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def _randomize(kmodel, seed=0):
    """Non-trivial weights: BatchNormalization's beta and moving statistics are 0/0/1 at init, which
    would hide a misplaced one."""
    rng = np.random.default_rng(seed)
    for layer in kmodel.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            beta, mean, var = layer.get_weights()
            layer.set_weights([rng.normal(0, 0.1, beta.shape), rng.normal(0, 0.1, mean.shape),
                               rng.uniform(0.5, 1.5, var.shape)])


def _keras_model(size=SIZE, **kwargs):
    keras.backend.clear_session()  # Keras' auto names as in a fresh session
    return keras.applications.InceptionV3(weights=None, input_shape=(size, size, 3), **kwargs)


@pytest.fixture(scope="module")
def keras_top(tmp_path_factory):
    """A Keras InceptionV3 with its top (randomised), its outputs at mixed10 / avg_pool / predictions,
    and its weights in the files Keras writes."""
    kmodel = _keras_model(classes=CLASSES)
    _randomize(kmodel)
    probe = keras.Model(kmodel.inputs, [kmodel.get_layer(n).output for n in ("mixed10", "avg_pool", "predictions")])
    d = tmp_path_factory.mktemp("inception")
    legacy, k3 = d / "inception.h5", d / "inception.weights.h5"
    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, kmodel)
    kmodel.save_weights(k3)
    outs = [np.asarray(o) for o in probe(images(), training=False)]
    return {"model": kmodel, "legacy": legacy, "keras3": k3, **dict(zip(("mixed10", "avg", "top"), outs))}


def copied(kmodel):
    """Keras' weights as minicnn variables, by layer name (Keras: beta, moving mean, moving variance)."""
    params, stats = {}, {}
    for layer in kmodel.layers:
        w = [np.asarray(v) for v in layer.get_weights()]
        if isinstance(layer, keras.layers.BatchNormalization):
            params[layer.name], stats[layer.name] = {"beta": w[0]}, {"moving_mean": w[1], "moving_variance": w[2]}
        elif w:
            params[layer.name] = dict(zip(("kernel", "bias"), w))
    return {"params": params, "batch_stats": stats}


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def test_from_index_edges_and_errors():
    model, shape = InceptionV3(include_top=False), (SIZE, SIZE, 3)
    variables = inspector.abstract_variables(model, shape)
    order = layer_order(model, variables, shape)  # traced once
    n_layers = len(keras_layers(model, variables, shape))  # 311: input_layer ... mixed10
    counts = {k: minicnn.count_params(variables, trainable_mask(variables, from_index=k, model=model,
                                                                order=order))[1] for k in (0, 1, n_layers)}
    assert counts[0] == counts[1] == 21768352 and counts[n_layers] == 0
    for bad in (-1, n_layers + 1, 2.0):
        with pytest.raises(ValueError, match="from_index"):
            trainable_mask(variables, from_index=bad, model=model, order=order)
    with pytest.raises(ValueError, match="needs an int index and model="):
        trainable_mask(variables, from_index=249)


def test_keras_argument_errors():
    with pytest.raises(ValueError, match="at least 75"):
        InceptionV3(include_top=False, input_shape=(74, 80, 3))
    with pytest.raises(ValueError, match="at least 75"):
        InceptionV3(include_top=False).init(jax.random.key(0), np.zeros((1, 74, 74, 3), np.float32))
    with pytest.raises(ValueError, match=r"needs input_shape \(299, 299, 3\)"):
        InceptionV3(weights="imagenet", input_shape=(150, 150, 3))
    with pytest.raises(ValueError, match="classes=1000"):
        InceptionV3(weights="imagenet", classes=10)
    with pytest.raises(ValueError, match="pooling"):
        InceptionV3(include_top=False, pooling="sum")


@pytest.mark.parametrize("top, pooling, key", [(True, None, "top"), (False, None, "mixed10"),
                                               (False, "avg", "avg")])
def test_outputs_match_keras(keras_top, top, pooling, key):
    model = InceptionV3(include_top=top, pooling=pooling, classes=CLASSES)
    variables = copied(keras_top["model"])
    if not top:
        variables = {c: {k: v for k, v in t.items() if k != "predictions"} for c, t in variables.items()}
    assert rel_err(model.apply(variables, images()), keras_top[key]) < 1e-5


def test_max_pooling_and_the_default_size_match_keras(keras_top):
    kmax = _keras_model(include_top=False, pooling="max")
    kmax.set_weights(keras_top["model"].get_weights()[:-2])  # the same layers, without predictions
    variables = copied(kmax)
    assert rel_err(InceptionV3(include_top=False, pooling="max").apply(variables, images()),
                   kmax(images(), training=False)) < 1e-5
    k299 = _keras_model(299, include_top=False, pooling="avg")
    k299.set_weights(kmax.get_weights())
    x = images(size=299, seed=1)
    got = jax.jit(InceptionV3(include_top=False, pooling="avg").apply)(variables, x)
    assert rel_err(got, k299(x, training=False)) < 1e-5


@pytest.mark.parametrize("layout", ["legacy", "keras3"])
def test_ported_from_files_keras_wrote(keras_top, layout):
    variables, arch = port_file(keras_top[layout])
    assert arch == "inception_v3" and "gamma" not in variables["params"]["batch_normalization"]
    checked = pretrained_variables("inception_v3", str(keras_top[layout]), True)
    assert rel_err(InceptionV3(classes=CLASSES).apply(checked, images()), keras_top["top"]) < 1e-5


def test_keras2_names_port_by_order(keras_top, tmp_path):
    """Keras 2 wrote the published file with auto names from 1 (conv2d_1 is Keras 3's conv2d): weighted
    layers pair by order, as Keras' legacy loader does; a count mismatch is one error."""
    keras.backend.clear_session()
    keras.layers.Conv2D(1, 1), keras.layers.BatchNormalization(), keras.layers.Activation("relu")
    shifted = keras.applications.InceptionV3(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    assert shifted.layers[1].name == "conv2d_1" and shifted.layers[-1].name == "mixed10"
    shifted.set_weights(keras_top["model"].get_weights()[:-2])
    path = tmp_path / "keras2_names_notop.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, shifted)
    variables = pretrained_variables("inception_v3", str(path), False)
    assert "conv2d_94" not in variables["params"] and "conv2d" in variables["params"]
    assert rel_err(InceptionV3(include_top=False).apply(variables, images()), keras_top["mixed10"]) < 1e-5
    with h5py.File(path, "a") as f:  # one weighted layer fewer: no pairing by order
        names = [n for n in f.attrs["layer_names"] if n not in ("conv2d_94", b"conv2d_94")]
        f.attrs["layer_names"] = names
    with pytest.raises(ValueError, match="187 weighted layers are not inception_v3's 189 \\(with the top\\) or 188"):
        port_file(path)


def test_the_lectures_recipe_runs_both_phases(tmp_path):
    """InceptionV3 + GAP + Dense(1024) + Dense(2, softmax); RMSprop on the frozen base, then SGD with
    layers[:249] frozen; six 75x75 images, one epoch each (random base: offline)."""
    rng = np.random.default_rng(0)
    for c in ("cats", "dogs"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (80, 90, 3), np.uint8)).save(tmp_path / c / f"{i}.png")
    train = image_dataset_from_directory(tmp_path, target_size=(SIZE, SIZE), batch_size=3, class_mode="sparse", seed=0)
    history = fine_tune_inception_v3(train, classes=2, weights=None, epochs=(1, 1))
    assert len(history.history["loss"]) == 2 and np.all(np.isfinite(history.history["loss"]))
    trainer = history.trainer
    _, trainable, _ = minicnn.count_params(trainer.variables, trainer.trainable)
    # Keras' count for layers[249:] of the lecture's model: the base's top blocks + the head
    assert trainable == (13163880 - 2049000) + (2048 * 1024 + 1024) + (1024 * 2 + 2)


def test_layers_counts_and_keras_indices_match_a_fresh_keras_session(keras_top):
    """keras_top was built right after ``clear_session()``: its auto names are a fresh session's."""
    kmodel = keras_top["model"]
    model = InceptionV3(classes=CLASSES)
    variables = inspector.abstract_variables(model, (SIZE, SIZE, 3))
    infos = inspector.layer_infos(model, variables, (SIZE, SIZE, 3))
    assert keras_layers(model, variables, (SIZE, SIZE, 3)) == [layer.name for layer in kmodel.layers]
    assert ["InputLayer", *(i.kind.__name__ for i in infos)] == [type(layer).__name__ for layer in kmodel.layers]
    assert kmodel.layers[249].name == "conv2d_80" == minicnn.models.architecture("inception_v3").unfreeze_from
    mask = trainable_mask(variables, from_index=249, model=model, input_shape=(SIZE, SIZE, 3))
    total, trainable, _ = minicnn.count_params(variables, mask)
    # Keras' counts for the lecture's ``for layer in model.layers[:249]: layer.trainable = False``
    keras_trainable = sum(int(np.prod(w.shape)) for layer in kmodel.layers[249:] for w in layer.trainable_weights)
    assert (total, trainable) == (kmodel.count_params(), keras_trainable)
    # with Keras' 1000 classes: the README's model table (2048 * (1000 - CLASSES) more weights and biases)
    assert total + 2049 * (1000 - CLASSES) == 23851784 and trainable + 2049 * (1000 - CLASSES) == 13163880
    table = minicnn.summary(InceptionV3(), (SIZE, SIZE, 3), print_fn=None, show_index=True)
    assert "249  conv2d_80 (Conv2D)" in table and "0    input_layer (InputLayer)" in table
