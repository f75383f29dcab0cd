"""safetensors: minicnn's own files round trip bit-exact; torchvision- and timm-layout VGG16 files
written by torch port to PyTorch's outputs; layouts whose computation is not Keras' are refused;
a malformed header is one error naming the file and the tensor, before any data is read."""

import json
import struct

import jax
import numpy as np
import pytest

from minicnn import inspector
from minicnn.models import VGG16, EfficientNetLite0
from minicnn.weights import (
    CorruptWeightsError,
    get,
    port_file,
    pretrained_variables,
    read_pth,
    read_safetensors,
    save_safetensors,
)
from minicnn.weights.port import detect_format

torch = pytest.importorskip("torch", reason="PyTorch writes the reference files and computes the outputs")
safetensors_torch = pytest.importorskip("safetensors.torch")
nn = torch.nn

from tests.test_weights_torch import SIZE, TorchvisionVGG16, rel_err


@pytest.fixture(autouse=True)
def minicnn_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MINICNN_HOME", str(tmp_path / "home"))
    pretrained_variables.cache_clear()
    yield
    pretrained_variables.cache_clear()


def random_like(shapes, rng):
    """Random float32 arrays of the given shapes, with the bit patterns a float cast would lose."""
    def leaf(shape):
        a = rng.standard_normal(shape).astype(np.float32)
        a.flat[:3] = np.array([-0.0, np.nan, 1e-45], np.float32)[: a.size]  # sign of zero, NaN, a subnormal
        return a
    return jax.tree_util.tree_map(lambda s: leaf(s.shape), shapes)


def assert_bit_equal(got, want):
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
        assert g.dtype == w.dtype and g.shape == w.shape and g.tobytes() == w.tobytes(), jax.tree_util.keystr(path)


def test_minicnn_round_trip_is_bit_exact(tmp_path):
    """EfficientNet-Lite0 (params and batch_stats) -> Keras-named safetensors -> the same bits."""
    shapes = inspector.abstract_variables(EfficientNetLite0(), (224, 224, 3))
    variables = random_like(dict(shapes), np.random.default_rng(0))
    path = save_safetensors(variables, tmp_path / "lite0.safetensors")
    names = read_safetensors(path)
    assert {"stem_conv/kernel", "stem_bn/gamma", "stem_bn/moving_mean", "block2a_dwconv/kernel"} <= set(names)
    assert names["block2a_dwconv/kernel"].shape == (3, 3, 96, 1)  # as minicnn holds it: (kh, kw, C, multiplier)
    ported, arch = port_file(path)
    assert arch == "efficientnet_lite0"
    assert_bit_equal(ported, variables)
    save_safetensors(ported, path)  # a file minicnn wrote may be overwritten
    assert_bit_equal(port_file(path)[0], variables)


def test_nested_trees_and_dtypes_survive_the_round_trip(tmp_path):
    """A Sequential's nested base (``vgg16/block1_conv1/kernel``), non-float32 dtypes and a transposed
    (not C-contiguous) array, which the safetensors package alone would write scrambled; any file name."""
    variables = {"params": {"vgg16": {"block1_conv1": {"kernel": np.arange(6, dtype=np.float16).reshape(1, 2, 3)}},
                            "dense": {"kernel": np.arange(6.0).reshape(2, 3).T, "bias": np.array([1, -2], np.int32)}},
                 "batch_stats": {"bn": {"moving_mean": np.ones(2, np.float32), "moving_variance": np.zeros(0)}}}
    path = save_safetensors(variables, tmp_path / "weights.bin")
    assert detect_format(path) == "safetensors"  # sniffed from the header, not the name
    from minicnn.weights.safetensors_io import to_variables
    assert_bit_equal(to_variables(read_safetensors(path)), variables)


def test_save_refuses_what_it_cannot_write_back(tmp_path):
    foreign = tmp_path / "notes.safetensors"
    foreign.write_text("not mine")
    with pytest.raises(FileExistsError, match="notes.safetensors exists"):
        save_safetensors({"params": {"a": {"kernel": np.ones(2)}}}, foreign)
    assert foreign.read_text() == "not mine"
    with pytest.raises(ValueError, match="batch_stats exactly when"):
        save_safetensors({"params": {"bn": {"moving_mean": np.ones(2)}}}, tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match="params/a/kernel is complex128"):
        save_safetensors({"params": {"a": {"kernel": np.ones(2, complex)}}}, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


class TimmVGG16(nn.Module):
    """timm's VGG16 layout: features.N, pre_logits (ConvMlp: fc1 a conv over the whole final map,
    fc2 a 1x1 conv), head.fc after global average pooling. Its kernel is the final map's size
    (timm's is 7 for 224x224; 2 here for a 64x64 input)."""

    def __init__(self, classes=10, hw=SIZE // 32):
        super().__init__()
        self.features = TorchvisionVGG16(classes).features
        self.pre_logits = nn.Module()
        self.pre_logits.fc1, self.pre_logits.fc2 = nn.Conv2d(512, 4096, hw), nn.Conv2d(4096, 4096, 1)
        self.head = nn.Module()
        self.head.fc = nn.Linear(4096, classes)

    def forward(self, x):
        x = torch.relu(self.pre_logits.fc1(self.features(x)))
        x = torch.relu(self.pre_logits.fc2(x))
        return self.head.fc(x.mean((2, 3)))


@pytest.mark.parametrize("layout", [TorchvisionVGG16, TimmVGG16])
def test_torch_vgg16_safetensors_ports_to_pytorch_outputs(layout, tmp_path):
    torch.manual_seed(0)
    model = layout().eval()
    for p in model.parameters():  # biases away from torch's zeros/near-zeros, so a dropped bias shows
        p.data.add_(0.01 * torch.randn_like(p))
    x = np.random.default_rng(0).uniform(-2, 2, (2, SIZE, SIZE, 3)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    path = tmp_path / "vgg16.safetensors"
    safetensors_torch.save_file(model.state_dict(), path)
    assert port_file(path)[1] == "vgg16"
    got = VGG16(include_top=True, classes=10, classifier_activation=None).apply(
        pretrained_variables("vgg16", path, True), x)
    assert rel_err(got, want) < 1e-5


def test_efficientnet_lite0_safetensors_is_the_pth_port(tmp_path):
    """The package's EfficientNet-Lite0 state dict as safetensors ports to the .pth port's very bits."""
    state = read_pth(get("efficientnet_lite0_imagenet"))
    path = tmp_path / "lite0.safetensors"
    from safetensors.numpy import save_file
    # the package writes an array's buffer as it lies in memory: a non-C-contiguous one (read_pth keeps
    # the file's strides, e.g. this file's channels-last conv kernels) would be written scrambled
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, path)
    assert_bit_equal(port_file(path)[0], port_file(get("efficientnet_lite0_imagenet"))[0])


@pytest.mark.parametrize("state, why", [
    ({"features.0.weight": torch.ones(64, 3, 3, 3), "features.1.running_mean": torch.zeros(64)},
     "vgg16_bn.*no BatchNormalization"),
    ({"conv1.weight": torch.ones(64, 3, 7, 7), "layer1.0.conv1.weight": torch.ones(64, 64, 1, 1)},
     "ResNet v1.5 .*3x3 conv"),
    ({"conv_stem.weight": torch.ones(32, 3, 3, 3), "blocks.0.0.conv_dw.weight": torch.ones(32, 1, 3, 3)},
     "tf_efficientnet_lite0.*does not say which"),
])
def test_layouts_that_compute_otherwise_are_refused(state, why, tmp_path):
    path = tmp_path / "other.safetensors"
    safetensors_torch.save_file(state, path)
    with pytest.raises(ValueError, match=f"other.safetensors: .*{why}"):
        port_file(path)


@pytest.fixture(scope="module")
def features_state():
    """torchvision/timm VGG16's conv base: ``features.N.weight``/``bias``."""
    torch.manual_seed(0)
    return {f"features.{k}": v for k, v in TorchvisionVGG16().features.state_dict().items()}


def test_timm_fc2_must_be_1x1(features_state, tmp_path):
    state = {**features_state, "pre_logits.fc1.weight": torch.ones(8, 512, 2, 2), "pre_logits.fc1.bias": torch.ones(8),
             "pre_logits.fc2.weight": torch.ones(4, 8, 2, 2)}  # would flatten to a dense of the wrong meaning
    path = tmp_path / "bad_fc2.safetensors"
    safetensors_torch.save_file(state, path)
    with pytest.raises(ValueError, match=r"bad_fc2.safetensors: layer fc2 \(pre_logits.fc2\) has shape"):
        port_file(path)


def test_a_misshapen_tensor_names_the_file_and_layer(features_state, tmp_path):
    state = {**features_state, "features.2.weight": torch.ones(64, 32, 3, 3)}
    path = tmp_path / "misshapen.safetensors"
    safetensors_torch.save_file(state, path)
    with pytest.raises(ValueError, match=r"misshapen.safetensors: layer block1_conv2 kernel: expected shape "
                                         r"\(3, 3, 64, 64\), got \(3, 3, 32, 64\)"):
        pretrained_variables("vgg16", path, False)


def raw(header, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file's bytes: header length, header (a dict, or bytes as they are), data."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def t(begin, end, shape=(2,), dtype="F32"):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


@pytest.mark.parametrize("content, message", [
    (raw({"w": t(0, 8)}, bytes(8), length=1 << 40), r"header length 1099511627776 exceeds"),
    (raw(b"{not json", bytes(8)), r"header is not JSON"),
    (raw(b"[1, 2]"), r"header is a JSON list"),
    (raw({"w": t(0, 8), "far": t(8, 1 << 50, (1 << 48,))}, bytes(8)), r"tensor 'far': bytes 8\.\.\d+ are outside"),
    (raw({"w": t(0, 8), "v": t(4, 12)}, bytes(12)), r"tensor 'v' \(bytes 4\.\.12\) overlaps tensor 'w'"),
    (raw({"w": t(0, 8, (1 << 30, 1 << 30))}, bytes(8)), (r"tensor 'w': shape \(1073741824, 1073741824\) of F32 "
                                                          r"is \d+ bytes, its data_offsets span 8")),
    (raw({"w": t(0, 8, (4,), "Q9")}, bytes(8)), r"tensor 'w': dtype 'Q9' is not one"),
    (raw({"w": t(0, 8), "v": t(12, 20)}, bytes(20)), r"bytes 8\.\.12 .*before tensor 'v', belong to no tensor"),
    (raw({"w": {"dtype": "F32"}}, bytes(8)), r"tensor 'w': header entry .* needs dtype, shape and data_offsets"),
    (raw({"w": t(0, 8, (-1, -2))}, bytes(8)), r"tensor 'w': shape \[-1, -2\] is not a list of non-negative"),
    (b"\x01\x00", r"2 bytes, too short"),
])
def test_malformed_files_are_one_clear_error(content, message, tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    for read in (read_safetensors, port_file):
        with pytest.raises(CorruptWeightsError, match=f"bad.safetensors: .*{message}") as e:
            read(path)
        assert "\n" not in str(e.value)


def test_truncated_torch_file_is_refused(tmp_path):
    whole = tmp_path / "whole.safetensors"
    safetensors_torch.save_file({"a": torch.ones(4), "b": torch.zeros(3, 2)}, whole)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[:-4])
    with pytest.raises(CorruptWeightsError, match=r"cut.safetensors: tensor 'b': bytes 16\.\.40 are outside the "
                                                  r"36-byte data section"):
        read_safetensors(cut)
    np.testing.assert_array_equal(read_safetensors(whole)["b"], np.zeros((3, 2), np.float32))
