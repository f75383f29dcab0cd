"""PyTorch .pth files read without torch: a torchvision-layout VGG16 ports to the same logits,
and a malicious pickle is refused without running."""

import os
import pickle
import zipfile

import jax
import numpy as np
import pytest

from minicnn.models import VGG16
from minicnn.weights import UnsafePickleError, get, port_file, pretrained_variables, read_pth

torch = pytest.importorskip("torch", reason="PyTorch writes the reference .pth files and computes the logits")
nn = torch.nn

SIZE = 64  # VGG16 at 64x64 ends in a (512, 2, 2) map: fc1's C,H,W -> H,W,C row permutation is exercised


class TorchvisionVGG16(nn.Module):
    """torchvision's VGG16 layout (features.N, avgpool, classifier.0/3/6), built from torch.nn."""

    def __init__(self, classes=10, hw=SIZE // 32):
        super().__init__()
        layers, c = [], 3
        for width, convs in zip((64, 128, 256, 512, 512), (2, 2, 3, 3, 3)):
            for _ in range(convs):
                layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=True)]
                c = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((hw, hw))
        self.classifier = nn.Sequential(nn.Linear(512 * hw * hw, 4096), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(4096, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    model = TorchvisionVGG16().eval()
    x = np.random.default_rng(0).uniform(-2, 2, (2, SIZE, SIZE, 3)).astype(np.float32)
    with torch.no_grad():
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        logits, features = model(xt).numpy(), model.features(xt).numpy().transpose(0, 2, 3, 1)
    return model, x, logits, features


def test_torchvision_vgg16_ports_to_the_same_logits(reference, tmp_path):
    model, x, logits, _ = reference
    path = tmp_path / "vgg16.pth"
    torch.save(model.state_dict(), path)  # the zip format of PyTorch >= 1.6
    variables = pretrained_variables("vgg16", str(path), True)
    got = jax.jit(VGG16(include_top=True, classes=10, classifier_activation=None).apply)(variables, x)
    assert rel_err(got, logits) < 1e-5


def test_legacy_pth_conv_base_matches(reference, tmp_path):
    """The pre-1.6 stream format (of vgg16-397923af.pth), conv base only."""
    model, x, _, features = reference
    path = tmp_path / "features.pth"
    state = {k: v for k, v in model.state_dict().items() if k.startswith("features.")}
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    raw = read_pth(path)
    assert sorted(raw) == sorted(state)
    for k, v in state.items():
        np.testing.assert_array_equal(raw[k], v.numpy(), err_msg=k)
    variables, arch = port_file(path)
    assert arch == "vgg16" and "fc1" not in variables["params"]
    got = jax.jit(VGG16(include_top=False).apply)(pretrained_variables("vgg16", str(path), False), x)
    assert rel_err(got, features) < 1e-5


def test_reader_keeps_dtypes_strides_and_shared_storage(tmp_path):
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    state = {"t": base.t(), "view": base[1:3, 2:], "i": torch.tensor([3, -1], dtype=torch.int64),
             "h": torch.ones(3, dtype=torch.float16), "nested": {"b": torch.zeros(2, dtype=torch.bool)},
             "bf": torch.linspace(-3, 3, 7, dtype=torch.bfloat16)}
    for zip_format in (True, False):
        path = tmp_path / f"mixed{zip_format}.pth"
        torch.save(state, path, _use_new_zipfile_serialization=zip_format)
        got = read_pth(path)
        assert sorted(got) == ["bf", "h", "i", "nested.b", "t", "view"]
        for k, v in [("t", state["t"]), ("view", state["view"]), ("i", state["i"]), ("h", state["h"]),
                     ("nested.b", state["nested"]["b"])]:
            assert got[k].dtype == v.numpy().dtype, k
            np.testing.assert_array_equal(got[k], v.numpy(), err_msg=k)
        assert got["bf"].dtype.name == "bfloat16"  # NumPy has no bfloat16: torch compares in float32
        np.testing.assert_array_equal(got["bf"].astype(np.float32), state["bf"].float().numpy())


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_pickle_is_refused_without_running(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    Evil.marker = marker
    path = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.zeros(1), "payload": Evil()}, path,
               _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafePickleError, match=r"evil.pth: refusing to unpickle global (posix|os)\.system"):
        read_pth(path)
    with pytest.raises(UnsafePickleError):
        pretrained_variables("vgg16", str(path), False)
    assert not marker.exists()


def test_malicious_header_is_refused(tmp_path):
    """Even the legacy header pickles (magic number, protocol) go through the allow-list."""
    marker = tmp_path / "pwned"
    Evil.marker = marker
    path = tmp_path / "header.pth"
    path.write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(UnsafePickleError, match="refusing to unpickle global"):
        read_pth(path)
    assert not marker.exists()


def test_not_a_pth_and_truncated_files(reference, tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x02K\x07.")  # a pickle of 7, not a torch file
    with pytest.raises(ValueError, match="junk.pth: not a PyTorch .pth file"):
        read_pth(junk)
    model = reference[0]
    whole = tmp_path / "whole.pth"
    torch.save({"features.0.weight": model.features[0].weight}, whole, _use_new_zipfile_serialization=False)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[:-100])
    with pytest.raises(ValueError, match="cut.pth: storage .* the file is truncated or corrupt"):
        read_pth(cut)
    with pytest.raises(KeyError, match="layer block1_conv1 needs 'features.0.bias'"):
        port_file(whole, arch="vgg16")


def test_training_checkpoints_are_unwrapped(reference, tmp_path):
    """{"epoch": ..., "state_dict": ..., "optimizer": ...} reads as the state dict it nests."""
    state = {k: v for k, v in reference[0].state_dict().items() if k.startswith("features.")}
    for key in ("state_dict", "model_state_dict", "model"):
        path = tmp_path / f"{key}.pth"
        torch.save({"epoch": 3, key: state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}, path)
        got = read_pth(path)
        assert sorted(got) == sorted(state), key
        np.testing.assert_array_equal(got["features.28.weight"], state["features.28.weight"].numpy())
        assert port_file(path)[1] == "vgg16"


def test_hostile_file_does_not_change_later_loads(tmp_path):
    """A pickle BUILD on the torch.FloatStorage stand-in is refused; the next file reads float32."""
    from pathlib import Path
    path = tmp_path / "w.pth"
    w = torch.linspace(-1, 1, 6).reshape(2, 3)
    torch.save({"w": w}, path)
    poison = Path(__file__).parent / "fixtures" / "hostile" / "poison_build.pth"
    with pytest.raises(UnsafePickleError, match=r"poison_build.pth: refusing a pickle BUILD on torch\.FloatStorage"):
        read_pth(poison)
    got = read_pth(path)["w"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, w.numpy())


def test_expanded_and_empty_tensors_and_deflated_archives(tmp_path):
    """torch.save writes an expanded tensor as a zero stride over a small storage: refused, since
    a tiny file would otherwise allocate without bound. Empty tensors read; a re-zipped (deflated)
    archive reads the same numbers, streamed."""
    from minicnn.weights.torch_pth import CorruptWeightsError
    expanded = tmp_path / "expanded.pth"
    torch.save({"e": torch.ones(1).expand(1000)}, expanded)
    with pytest.raises(CorruptWeightsError, match=r"expanded.pth: tensor e: shape \(1000,\) has 1000 elements, "
                                                  r"its storage 0 holds 1"):
        read_pth(expanded)
    plain, deflated = tmp_path / "plain.pth", tmp_path / "deflated.pth"
    state = {"empty": torch.zeros(0, 3), "w": torch.randn(64, 32), "t": torch.randn(8, 5).t()}
    torch.save(state, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    for path in (plain, deflated):
        got = read_pth(path)
        assert got["empty"].shape == (0, 3)
        for k in ("w", "t"):
            np.testing.assert_array_equal(got[k], state[k].numpy(), err_msg=f"{path.name} {k}")


def test_tensors_come_back_c_contiguous():
    """A channels-last kernel in the file reads as a C-contiguous array (raw-buffer writers rely on it)."""
    state = read_pth(get("efficientnet_lite0_imagenet"))
    assert all(v.flags.c_contiguous for v in state.values())
