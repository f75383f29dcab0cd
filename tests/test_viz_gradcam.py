"""Grad-CAM, Grad-CAM++ and saliency against step-by-step computations from their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import spearmanr

from minicnn import ops
from minicnn.layers import Conv2D, Dense, Flatten, MaxPooling2D, Sequential
from minicnn.models import VGG16
from minicnn.viz import activations, grad_cam, grad_cam_plus_plus, layer_names, saliency


def tiny(classes=5, activation="softmax"):
    return Sequential([Conv2D(4, 3, activation="relu"), MaxPooling2D(2),
                       Conv2D(6, 3, padding="same", activation="relu"), MaxPooling2D(2),
                       Flatten(), Dense(classes, activation=activation)])


def he_variables(model, x, seed=0):
    """Random He-normal kernels and zero biases for ``model``, drawn by NumPy: initialising VGG16's
    14.7M parameters through Flax costs tens of seconds on a busy CPU."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32)
                                              * np.sqrt(2 / np.prod(s.shape[:-1])) if len(s.shape) > 1
                                              else np.zeros(s.shape, np.float32)), shapes)


def tiny_features(params, x):
    """The tiny model by hand: the feature map A of conv2d_1 (Grad-CAM's default layer)."""
    p = params
    a = ops.relu(ops.conv2d(x, p["conv2d"]["kernel"], p["conv2d"]["bias"]))
    a = ops.max_pool2d(a, 2)
    return ops.relu(ops.conv2d(a, p["conv2d_1"]["kernel"], p["conv2d_1"]["bias"], padding="same"))


def tiny_logits(params, a):
    a = ops.max_pool2d(a, 2)
    return ops.dense(a.reshape(a.shape[0], -1), params["dense"]["kernel"], params["dense"]["bias"])


def cam_by_definition(a, grads):
    """Selvaraju et al.: alpha_k = mean_ij dS/dA_ijk; relu(sum_k alpha_k A_k); divided by the max."""
    alpha = grads.mean(axis=(1, 2))
    cam = np.maximum(np.einsum("nhwk,nk->nhw", a, alpha), 0)
    peak = cam.max(axis=(1, 2), keepdims=True)
    return np.where(peak > 0, cam / np.where(peak > 0, peak, 1), 0)


@pytest.fixture(scope="module")
def setup():
    model = tiny()
    x = jax.random.normal(jax.random.key(1), (3, 18, 18, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    return model, variables, x


def test_default_layer_is_last_feature_map_and_layers_listed(setup):
    model, variables, x = setup
    assert layer_names(model, variables, x) == [
        "conv2d", "max_pooling2d", "conv2d_1", "max_pooling2d_1", "flatten", "dense"]
    assert np.allclose(grad_cam(model, variables, x), grad_cam(model, variables, x, layer="conv2d_1"))


@pytest.mark.parametrize("target", ["logit", "probability"])
def test_grad_cam_equals_definition(setup, target):
    model, variables, x = setup
    params = variables["params"]
    a = tiny_features(params, x)
    z = tiny_logits(params, a)
    cls = np.asarray(jnp.argmax(z, -1))

    def score(a):
        z = tiny_logits(params, a)
        s = jax.nn.softmax(z) if target == "probability" else z
        return s[np.arange(len(cls)), cls].sum()

    expected = cam_by_definition(np.asarray(a), np.asarray(jax.grad(score)(a)))
    got = grad_cam(model, variables, x, target=target)
    assert got.shape == (3, 8, 8)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.all((np.asarray(got) >= 0) & (np.asarray(got) <= 1))
    assert np.allclose(np.asarray(got).max(axis=(1, 2)), 1)


def test_batched_equals_one_at_a_time_and_explicit_classes(setup):
    model, variables, x = setup
    classes = np.array([0, 3, 4])
    batched = grad_cam(model, variables, x, class_index=classes)
    for i in range(3):
        np.testing.assert_allclose(batched[i], grad_cam(model, variables, x[i:i + 1], class_index=int(classes[i]))[0],
                                   atol=1e-5)
    assert not np.allclose(grad_cam(model, variables, x, class_index=0), grad_cam(model, variables, x, class_index=4))


def test_sigmoid_head_class_zero_explains_negated_logit():
    model = tiny(classes=1, activation="sigmoid")
    x = jax.random.normal(jax.random.key(2), (2, 18, 18, 3))
    variables = jax.jit(model.init)(jax.random.key(3), x)
    params = variables["params"]
    a = tiny_features(params, x)
    for cls, sign in ((1, 1.0), (0, -1.0)):
        grads = jax.grad(lambda a: sign * tiny_logits(params, a).sum())(a)
        np.testing.assert_allclose(grad_cam(model, variables, x, class_index=cls),
                                   cam_by_definition(np.asarray(a), np.asarray(grads)), atol=1e-5)
    # the default class is the predicted one: z > 0 -> class 1
    predicted = (np.asarray(tiny_logits(params, a))[:, 0] > 0).astype(int)
    np.testing.assert_allclose(grad_cam(model, variables, x), grad_cam(model, variables, x, class_index=predicted))


def test_nested_vgg16_with_dense_head():
    """The case where Keras' Grad-CAM fails with 'Graph disconnected': a base model inside Sequential."""
    model = Sequential([VGG16(include_top=False), Flatten(), Dense(3, activation="softmax")])
    x = jax.random.uniform(jax.random.key(4), (2, 32, 32, 3)) * 255
    variables = he_variables(model, x)
    vgg, head = variables["params"]["vgg16"], variables["params"]["dense"]

    def features(x):  # VGG16 by hand up to block5_conv3
        for b, n in enumerate((2, 2, 3, 3, 3), start=1):
            for i in range(1, n + 1):
                p = vgg[f"block{b}_conv{i}"]
                x = ops.relu(ops.conv2d(x, p["kernel"], p["bias"], padding="same"))
            if b < 5:
                x = ops.max_pool2d(x, 2)
        return x

    def logits(a):
        return ops.dense(ops.max_pool2d(a, 2).reshape(a.shape[0], -1), head["kernel"], head["bias"])

    a = features(x)
    cls = jnp.argmax(logits(a), -1)
    grads = jax.grad(lambda a: logits(a)[jnp.arange(2), cls].sum())(a)
    expected = cam_by_definition(np.asarray(a), np.asarray(grads))
    for layer in (None, "block5_conv3", "vgg16/block5_conv3"):
        np.testing.assert_allclose(grad_cam(model, variables, x, layer=layer), expected, atol=1e-4)
    acts = activations(model, variables, x, ["block5_conv3"])
    np.testing.assert_allclose(acts["block5_conv3"], a, rtol=1e-4, atol=1e-3)


def test_randomising_the_classifier_changes_the_map():
    """Adebayo et al.'s model-randomisation check: a new head must give a different map."""
    model = Sequential([Conv2D(8, 3, padding="same", activation="relu"),
                        Conv2D(8, 3, padding="same", activation="relu"), Flatten(), Dense(4)])
    x = jax.random.normal(jax.random.key(6), (8, 16, 16, 3))
    init = jax.jit(model.init)
    variables = init(jax.random.key(7), x)
    other = init(jax.random.key(8), x)["params"]["dense"]
    randomised = {"params": {**variables["params"], "dense": other}}
    maps = np.asarray(grad_cam(model, variables, x, class_index=0))
    new = np.asarray(grad_cam(model, randomised, x, class_index=0))
    rho = np.mean([spearmanr(m.ravel(), n.ravel())[0] for m, n in zip(maps, new)])
    assert rho < 0.5
    same = np.mean([spearmanr(m.ravel(), n.ravel())[0]
                    for m, n in zip(maps, np.asarray(grad_cam(model, variables, x, class_index=0)))])
    assert same > 0.99


def test_grad_cam_plus_plus_equals_definition(setup):
    model, variables, x = setup
    params = variables["params"]
    a = tiny_features(params, x)
    cls = jnp.argmax(tiny_logits(params, a), -1)
    g = np.asarray(jax.grad(lambda a: tiny_logits(params, a)[jnp.arange(3), cls].sum())(a), np.float64)
    a = np.asarray(a, np.float64)
    # Chattopadhay et al. eq. 19 with an exponential score: alpha = g^2 / (2 g^2 + sum_ab A_ab g^3)
    alpha = np.zeros_like(g)
    denom = 2 * g ** 2 + a.sum(axis=(1, 2), keepdims=True) * g ** 3
    np.divide(g ** 2, denom, out=alpha, where=(g != 0) & (denom != 0))
    w = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    cam = np.maximum(np.einsum("nhwk,nk->nhw", a, w), 0)
    expected = cam / cam.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(grad_cam_plus_plus(model, variables, x), expected, atol=1e-5)


def test_saliency_equals_input_gradient(setup):
    model, variables, x = setup
    params = variables["params"]
    cls = jnp.argmax(tiny_logits(params, tiny_features(params, x)), -1)
    g = jax.grad(lambda x: tiny_logits(params, tiny_features(params, x))[jnp.arange(3), cls].sum())(x)
    s = np.abs(np.asarray(g)).max(-1)
    np.testing.assert_allclose(saliency(model, variables, x), s / s.max(axis=(1, 2), keepdims=True), atol=1e-5)


def test_bad_input_errors_name_the_problem(setup):
    model, variables, x = setup
    with pytest.raises(ValueError, match=r"unknown layer 'block9'.*conv2d, max_pooling2d, conv2d_1"):
        grad_cam(model, variables, x, layer="block9")
    with pytest.raises(ValueError, match="dense.*4-D"):
        grad_cam(model, variables, x, layer="dense")
    with pytest.raises(ValueError, match="out of range.*5 classes"):
        grad_cam(model, variables, x, class_index=5)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        grad_cam(model, variables, x, class_index=[0, 1])
    with pytest.raises(ValueError, match="target"):
        grad_cam(model, variables, x, target="softmax")
    nested = Sequential([Sequential([Conv2D(2, 3)]), Sequential([Conv2D(2, 3)])])
    v = jax.jit(nested.init)(jax.random.key(0), x)
    with pytest.raises(ValueError, match="ambiguous.*sequential/conv2d, sequential_1/conv2d"):
        activations(nested, v, x, ["conv2d"])


@pytest.fixture(scope="module")
def efficientnet(tmp_path_factory):
    """EfficientNet-Lite0 with its real ImageNet weights (shipped in a pip package, no download),
    and the composite image: skimage's chelsea (a tabby) on the left, coffee (an espresso) on the right."""
    models = pytest.importorskip("minicnn.models")
    if not hasattr(models, "EfficientNetLite0"):
        pytest.skip("minicnn.models.EfficientNetLite0 has not landed yet")
    from PIL import Image
    from skimage import data

    import minicnn
    from minicnn.weights import preprocess_input
    halves = [np.asarray(Image.fromarray(im).resize((224, 224), Image.BILINEAR), np.float32)
              for im in (data.chelsea(), data.coffee())]
    x = jnp.asarray(preprocess_input(np.concatenate(halves, axis=1)[None], "tf"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINICNN_HOME", str(tmp_path_factory.mktemp("minicnn_home")))
        model = models.EfficientNetLite0(weights="imagenet")
        variables = minicnn.init(model, jax.random.key(0), x)
    return model, variables, x


TABBY, ESPRESSO = 281, 967


def left_mass(cam):
    cam = np.asarray(cam)
    return cam[..., : cam.shape[-1] // 2].sum() / cam.sum()


def test_cat_and_espresso_maps_fall_on_their_halves(efficientnet):
    model, variables, x = efficientnet
    cat, espresso = grad_cam(model, variables, jnp.concatenate([x, x]), class_index=[TABBY, ESPRESSO])
    assert cat.shape == (7, 14)
    assert left_mass(cat) >= 0.7
    assert left_mass(espresso) <= 0.3  # >= 70% of the espresso mass on the coffee half
    assert left_mass(grad_cam_plus_plus(model, variables, x, class_index=ESPRESSO)) <= 0.3


def test_randomising_the_pretrained_classifier_changes_the_map(efficientnet):
    model, variables, x = efficientnet
    head = variables["params"]["predictions"]
    kernel = jax.random.permutation(jax.random.key(9), head["kernel"].ravel()).reshape(head["kernel"].shape)
    randomised = {**variables, "params": {**variables["params"], "predictions": {**head, "kernel": kernel}}}
    both, classes = jnp.concatenate([x, x]), [TABBY, ESPRESSO]
    before = np.asarray(grad_cam(model, variables, both, class_index=classes))
    after = np.asarray(grad_cam(model, randomised, both, class_index=classes))
    for b, a in zip(before, after):
        assert spearmanr(b.ravel(), a.ravel())[0] < 0.5


def test_grad_cam_equals_a_pytorch_hook_implementation(setup):
    """The usual PyTorch Grad-CAM (forward hook keeps A, autograd gives dS/dA) on the same network."""
    torch = pytest.importorskip("torch", reason="PyTorch autograd is the independent reference")
    model, variables, x = setup
    p = jax.tree.map(lambda v: torch.tensor(np.asarray(v)), variables["params"])
    conv1 = torch.nn.Conv2d(3, 4, 3)
    conv2 = torch.nn.Conv2d(4, 6, 3, padding=1)  # Keras "same" for a 3x3 stride-1 conv
    dense = torch.nn.Linear(6 * 4 * 4, 5)
    with torch.no_grad():
        for layer, name in ((conv1, "conv2d"), (conv2, "conv2d_1")):
            layer.weight.copy_(p[name]["kernel"].permute(3, 2, 0, 1))  # HWIO -> OIHW
            layer.bias.copy_(p[name]["bias"])
        dense.weight.copy_(p["dense"]["kernel"].T)
        dense.bias.copy_(p["dense"]["bias"])
    xt = torch.tensor(np.asarray(x)).permute(0, 3, 1, 2)
    a = torch.relu(conv2(torch.nn.functional.max_pool2d(torch.relu(conv1(xt)), 2)))
    a.retain_grad()
    pooled = torch.nn.functional.max_pool2d(a, 2).permute(0, 2, 3, 1)  # flatten in Keras' NHWC order
    logits = dense(pooled.reshape(len(xt), -1))
    logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    weights = a.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * a).sum(1))
    cam = cam / cam.amax(dim=(1, 2), keepdim=True)
    np.testing.assert_allclose(grad_cam(model, variables, x), cam.detach().numpy(), atol=1e-5)


def test_probability_target_is_the_lecture_algorithm_run_in_keras():
    """Chollet's chapter-5 Grad-CAM, line by line, on the same small convnet built in Keras 3 with the same weights:
    grads = d model.output[:, c] / d last_conv.output (the softmax output), pooled_grads = mean over (0, 1, 2),
    each channel of the feature map scaled by its pooled gradient, heatmap = mean over channels, ReLU, / max."""
    keras = pytest.importorskip("keras")
    model = tiny()
    x = jax.random.uniform(jax.random.key(11), (1, 18, 18, 3)) * 2
    variables = he_variables(model, x, seed=4)  # He-scaled: a confident softmax, where the two targets differ
    params = jax.tree.map(np.asarray, variables["params"])
    k = keras.Sequential([keras.Input((18, 18, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                          keras.layers.MaxPooling2D(2),
                          keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="last_conv"),
                          keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
                          keras.layers.Dense(5, activation="softmax")])
    for layer, name in zip([k.layers[0], k.layers[2], k.layers[5]], ["conv2d", "conv2d_1", "dense"]):
        layer.set_weights([params[name]["kernel"], params[name]["bias"]])
    last = k.get_layer("last_conv")
    conv_model = keras.Model(k.inputs[0], last.output)
    head = k.layers[k.layers.index(last) + 1:]

    def output_of_class(conv_output, c):  # model.output[:, c] as a function of the last conv layer's output
        for layer in head:
            conv_output = layer(conv_output)
        return conv_output[0, c]

    conv_output = conv_model(np.asarray(x))
    c = int(np.argmax(k(np.asarray(x))))
    grads = jax.grad(output_of_class)(conv_output, c)
    pooled_grads = np.asarray(grads).mean(axis=(0, 1, 2))
    conv_output_value = np.asarray(conv_output)[0].copy()
    for i in range(conv_output_value.shape[-1]):
        conv_output_value[:, :, i] *= pooled_grads[i]
    heatmap = np.maximum(np.mean(conv_output_value, axis=-1), 0)
    heatmap /= np.max(heatmap)

    np.testing.assert_allclose(grad_cam(model, variables, x, target="probability")[0], heatmap, rtol=0, atol=1e-6)
    np.testing.assert_allclose(grad_cam(model, variables, x, class_index=c, target="probability")[0], heatmap,
                               rtol=0, atol=1e-6)
    assert np.abs(np.asarray(grad_cam(model, variables, x)[0]) - heatmap).max() > 1e-3  # the logit's map differs
