"""Each CLI command, its output and its error paths (one line on stderr, exit code 2)."""

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from minicnn.programs.cli import main


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the test photos")
    path = tmp_path_factory.mktemp("img") / "chelsea.jpg"
    Image.fromarray(skimage_data.chelsea()).save(path)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minicnn: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_from_the_entry_point():
    result = subprocess.run([sys.executable, "-m", "minicnn.programs", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("demo", "predict", "gradcam", "filters", "activations", "summary", "train", "weights"):
        assert command in result.stdout


def test_predict_names_the_cat(capsys, cat):
    code, out, _ = run(capsys, "predict", cat, "--top", "3")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == str(cat) and len(lines) == 4
    assert any(name in lines[1] for name in ("cat", "tabby", "lynx"))


def test_predict_errors(capsys, tmp_path):
    code, _, err = run(capsys, "predict", tmp_path / "missing.jpg")
    assert_one_line_error(code, err, "no such image file", "missing.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    code, _, err = run(capsys, "predict", bad)
    assert_one_line_error(code, err, "bad.jpg", "cannot decode")


def test_predict_vgg16_offline_says_what_to_do(capsys, cat, tmp_path, monkeypatch):
    from minicnn.weights import registry
    table = registry()
    table["vgg16_imagenet"]["url"] = "http://127.0.0.1:9/vgg16.h5"  # nothing listens on the discard port
    (tmp_path / "registry.json").write_text(json.dumps(table))
    monkeypatch.setenv("MINICNN_REGISTRY", str(tmp_path / "registry.json"))
    monkeypatch.setenv("MINICNN_HOME", str(tmp_path / "home"))
    code, _, err = run(capsys, "predict", cat, "--model", "vgg16")
    assert_one_line_error(code, err, "vgg16_imagenet", "minicnn weights port FILE")


def test_gradcam_writes_overlay(capsys, cat, tmp_path):
    out = tmp_path / "cam.png"
    code, stdout, _ = run(capsys, "gradcam", cat, "--class", "espresso", "--out", out)
    assert code == 0 and stdout.strip() == str(out)
    image = Image.open(out)
    assert image.size == Image.open(cat).size
    code, _, err = run(capsys, "gradcam", cat, "--class", "no such class")
    assert_one_line_error(code, err, "unknown class 'no such class'", "0-999", "tench")


def test_activations_and_unknown_layer(capsys, cat, tmp_path):
    out = tmp_path / "acts.png"
    code, _, _ = run(capsys, "activations", cat, "stem_conv", "--out", out)
    assert code == 0 and Image.open(out).size[0] > 0
    code, _, err = run(capsys, "activations", cat, "block99_conv")
    assert_one_line_error(code, err, "unknown layer 'block99_conv'", "stem_conv", "top_conv")


def test_filters_on_a_random_small_convnet(capsys, tmp_path):
    out = tmp_path / "f.png"
    code, _, _ = run(capsys, "filters", "small_convnet", "conv2d_1", "--weights", "none", "--filters", "2",
                     "--steps", "2", "--out", out)
    assert code == 0
    assert np.asarray(Image.open(out)).ndim == 3
    code, _, err = run(capsys, "filters", "small_convnet", "nope", "--weights", "none")
    assert_one_line_error(code, err, "unknown layer 'nope'", "conv2d_1")


def test_summary(capsys):
    code, out, _ = run(capsys, "summary", "vgg16", "--no-top", "--input-shape", "150", "150", "3")
    assert code == 0 and "Total params: 14,714,688" in out and "(None, 4, 4, 512)" in out
    code, out, _ = run(capsys, "summary", "small_convnet")
    assert code == 0 and "Total params: 3,453,121" in out


def test_weights_list_fetch_port(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MINICNN_HOME", str(tmp_path / "home"))
    code, out, _ = run(capsys, "weights", "list")
    assert code == 0
    for name in ("vgg16_imagenet", "vgg16_imagenet_notop", "vgg16_torchvision", "efficientnet_lite0_imagenet"):
        assert name in out
    code, out, _ = run(capsys, "weights", "fetch", "efficientnet_lite0_imagenet")
    assert code == 0 and out.strip().endswith(".pth")
    code, _, err = run(capsys, "weights", "fetch", "no_such_weights")
    assert_one_line_error(code, err, "no_such_weights")
    code, _, err = run(capsys, "weights", "port", tmp_path / "missing.h5")
    assert_one_line_error(code, err, "no such weight file")
    code, _, err = run(capsys, "weights", "port")
    assert_one_line_error(code, err, "needs a FILE")


def test_train_errors(capsys, tmp_path):
    code, _, err = run(capsys, "train", tmp_path / "nowhere", "--recipe", "scratch")
    assert_one_line_error(code, err, "no such data directory")


def test_train_scratch_saves_model_history_log_and_curves(capsys, tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), np.uint8)).save(tmp_path / "data" / cls / f"{i}.png")
    out = tmp_path / "run"
    code, stdout, _ = run(capsys, "train", tmp_path / "data", "--recipe", "scratch", "--epochs", "2",
                          "--image-size", "48", "--batch-size", "4", "--out", out)
    assert code == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["classes"] == ["cats", "dogs"] and 0 <= summary["val_accuracy"] <= 1
    history = json.loads((out / "history.json").read_text())
    assert len(history["history"]["loss"]) == 2
    assert (out / "log.csv").read_text().splitlines()[0].startswith("epoch,")
    assert len((out / "log.csv").read_text().splitlines()) == 3
    assert Image.open(out / "curves_accuracy.png").format == "PNG"
    from minicnn.weights import load
    assert "params" in load(out / "model")


# Ordinary bad input: one line on stderr, exit code 2, never a traceback (issue 14, item 11).

def png_claiming(width, height):
    """A valid PNG header declaring width x height 1-bit pixels, with no pixel data: a few dozen bytes."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("argv, fragment", [
    (["train", ".", "--recipe", "scratch", "--epochs", "0"], "--epochs: expected a positive integer, got 0"),
    (["activations", "x.png", "stem_conv", "--images-per-row", "0"], "--images-per-row: expected a positive"),
    (["predict", "x.png", "--top", "0"], "--top: expected a positive integer, got 0"),
    (["predict", "x.png", "--top", "five"], "--top: expected a positive integer, got 'five'"),
    (["train", ".", "--recipe", "scratch", "--validation-split", "1"], "--validation-split: expected a fraction"),
    (["summary", "vgg16", "--input-shape", "0", "32", "3"], "--input-shape: expected a positive integer"),
    (["nonsense"], "invalid choice: 'nonsense'"),
])
def test_bad_arguments_are_one_line(capsys, argv, fragment):
    code, out, err = run(capsys, *argv)
    assert_one_line_error(code, err, fragment)
    assert out == "" and "Traceback" not in err


def test_decompression_bomb_is_one_line(capsys, tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "data" / cls / "fine.png")
    (tmp_path / "data" / "a" / "bomb.png").write_bytes(png_claiming(30000, 30000))  # 900 megapixels in 67 bytes
    code, _, err = run(capsys, "train", tmp_path / "data", "--recipe", "scratch", "--image-size", "32",
                       "--validation-split", "0.5", "--out", tmp_path / "run")
    assert_one_line_error(code, err, "bomb.png", "decompression bomb")


@pytest.fixture
def hostile(tmp_path):
    """A .pth whose pickle would create tmp_path/marker if it were ever unpickled freely."""
    import pickle

    class RunsCode:
        def __reduce__(self):
            return (open, (str(tmp_path / "marker"), "w"))
    path = tmp_path / "hostile.pth"
    path.write_bytes(pickle.dumps({"stem_conv.weight": RunsCode()}))
    return path


def test_refused_pth_is_one_line(capsys, tmp_path, hostile):
    code, _, err = run(capsys, "weights", "port", hostile, "--arch", "efficientnet_lite0", "--out", tmp_path / "out")
    assert_one_line_error(code, err, "hostile.pth", "refusing to unpickle")
    assert not (tmp_path / "marker").exists() and not (tmp_path / "out").exists()


def test_directory_that_is_not_a_checkpoint_is_one_line(capsys, tmp_path, cat):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "weights", "port", folder)
    assert_one_line_error(code, err, "results")
    code, out, err = run(capsys, "predict", cat, "--weights", folder)
    assert_one_line_error(code, err, "results", "not a minicnn checkpoint")
    assert out == "" and (folder / "notes.txt").read_text() == "mine"


def test_refused_pth_as_weights_is_one_line(capsys, tmp_path, cat, hostile):
    code, out, err = run(capsys, "predict", cat, "--weights", hostile)
    assert_one_line_error(code, err, "hostile.pth", "refusing to unpickle")
    assert out == "" and not (tmp_path / "marker").exists()


# Every model the library builds, a `minicnn train` folder included, serves every command (issue 13, item 10).

def photo_folders(root, layout):
    """Tiny real-photo crops (skimage chelsea / coffee) as cats/ and coffee/ folders under each split of
    ``layout`` (() for plain class folders)."""
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the test photos")
    photos = {"cats": skimage_data.chelsea(), "coffee": skimage_data.coffee()}
    for split in layout or ("",):
        for cls, photo in photos.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                crop = photo[40 * i:40 * i + 120, 50 * i:50 * i + 160]
                Image.fromarray(crop).save(root / split / cls / f"{cls}_{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A `minicnn train` output folder, trained on the lecture's train/validation/test layout (one epoch, 48px)."""
    root = tmp_path_factory.mktemp("cli")
    data = photo_folders(root / "data", ("train", "validation", "test"))
    out = root / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["train", str(data), "--recipe", "scratch", "--epochs", "1", "--image-size", "48",
                     "--batch-size", "4", "--out", str(out)]) == 0
    return data, out, printed.getvalue()


def test_train_uses_the_split_layout_and_writes_the_architecture(trained, capsys):
    _, out, printed = trained
    assert printed.count("Found 6 files belonging to 2 classes.") == 3  # train/, validation/, test/: 2 classes
    summary = json.loads(printed.splitlines()[-1])
    assert summary["classes"] == ["cats", "coffee"] and {"test_loss", "val_loss"} <= set(summary)
    spec = json.loads((out / "model.json").read_text())
    assert spec["class_names"] == ["cats", "coffee"] and spec["architecture"] == "small_convnet"
    assert spec["input_shape"] == [48, 48, 3] and spec["classes"] == 1
    history = json.loads((out / "history.json").read_text())["history"]
    assert len(history["loss"]) == 1 and "val_loss" in history


def test_train_layout_errors(capsys, tmp_path):
    only_train = photo_folders(tmp_path / "a", ("train", "test"))
    code, _, err = run(capsys, "train", only_train, "--recipe", "scratch", "--out", tmp_path / "o")
    assert_one_line_error(code, err, "not both train/ and validation/")
    split = photo_folders(tmp_path / "b", ("train", "validation"))
    code, _, err = run(capsys, "train", split, "--recipe", "scratch", "--validation-split", "0.3",
                       "--out", tmp_path / "o")
    assert_one_line_error(code, err, "split already", "drop --validation-split")
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_predict_a_trained_folder_on_files_folders_and_globs(trained, capsys):
    data, out, _ = trained
    code, stdout, _ = run(capsys, "predict", data / "test", str(data / "validation" / "*" / "*_0.png"),
                          data / "train" / "cats" / "cats_1.png", "--model", out, "--top", "2")
    assert code == 0
    lines = stdout.splitlines()
    named = [line for line in lines if not line.startswith("  ")]
    assert len(named) == 6 + 2 + 1 and named[0].endswith("test/cats/cats_0.png")
    scores = [float(line.split()[-1]) for line in lines if line.startswith("  ")]
    assert {line.split()[1] for line in lines if line.startswith("  ")} == {"cats", "coffee"}
    assert np.allclose(np.add.reduceat(scores, np.arange(0, len(scores), 2)), 1)  # sigmoid: p and 1 - p


def test_every_command_takes_a_trained_folder(trained, capsys, tmp_path):
    data, out, _ = trained
    image = data / "test" / "cats" / "cats_0.png"
    code, stdout, _ = run(capsys, "gradcam", image, "--model", out, "--class", "coffee", "--out", tmp_path / "g.png")
    assert code == 0 and Image.open(tmp_path / "g.png").size == Image.open(image).size
    code, _, _ = run(capsys, "activations", image, "conv2d_1", "--model", out, "--out", tmp_path / "a.png")
    assert code == 0 and Image.open(tmp_path / "a.png").size[0] > 0
    code, _, _ = run(capsys, "filters", out, "conv2d", "--filters", "2", "--steps", "2", "--out", tmp_path / "f.png")
    assert code == 0 and Image.open(tmp_path / "f.png").size[0] > 0
    code, stdout, _ = run(capsys, "summary", out)
    assert code == 0 and "dropout" in stdout


def test_weights_are_never_silently_ignored(trained, capsys, cat):
    _, out, _ = trained
    code, _, err = run(capsys, "predict", cat, "--model", "small_convnet")
    assert_one_line_error(code, err, "small_convnet has no pretrained weights", "--weights none")
    code, _, err = run(capsys, "predict", cat, "--model", out, "--weights", "imagenet")
    assert_one_line_error(code, err, "cannot apply", "drop --weights")
    code, _, err = run(capsys, "predict", cat, "--model", "small_convnet", "--weights", out / "model")
    assert_one_line_error(code, err, "do not fit small_convnet", "--model FOLDER")
    code, stdout, _ = run(capsys, "predict", cat, "--model", "mnist_convnet", "--weights", "none", "--top", "1")
    assert code == 0 and stdout.splitlines()[1].split()[0] == "1."


@pytest.mark.parametrize("argv, fragments", [
    (["predict", "{tmp}/nothing/*.png"], ["no files match", "nothing/*.png"]),
    (["predict", "{tmp}"], ["no images in folder"]),
    (["predict", "{cat}", "--model", "{tmp}"], ["not written by `minicnn train`"]),
    (["predict", "{cat}", "--model", "resnet5"], ["unknown model 'resnet5'", "small_convnet"]),
    (["gradcam", "{cat}", "--model", "small_convnet", "--weights", "{tmp}/missing"], ["no such weights"]),
    (["activations", "{cat}", "conv2d", "--model", "small_convnet"], ["--weights none"]),
    (["filters", "small_convnet", "conv2d_1", "--size", "64", "--weights", "none"], ["150x150", "--size 150"]),
    (["filters", "nope", "conv2d"], ["unknown model 'nope'"]),
    (["summary", "{tmp}"], ["not written by `minicnn train`"]),
    (["train", "{tmp}", "--recipe", "scratch"], ["has no sub-folders"]),
])
def test_bad_input_is_one_line_never_a_traceback(capsys, tmp_path, cat, argv, fragments):
    code, _, err = run(capsys, *[a.format(tmp=tmp_path, cat=cat) for a in argv])
    assert_one_line_error(code, err, *fragments)
    assert "Traceback" not in err


def test_a_damaged_model_json_is_one_line(trained, capsys, tmp_path, cat):
    import shutil
    _, out, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "model.json").write_text("{not json")
    code, _, err = run(capsys, "predict", cat, "--model", copy)
    assert_one_line_error(code, err, "model.json is damaged", "train again")


def test_features_recipe_saves_a_model_that_takes_images(capsys, tmp_path):
    """The features recipe trains a head on cached features; the saved model is base + that head: on a test/
    folder identical to validation/, the whole model's test loss is the head's validation loss."""
    data = photo_folders(tmp_path / "data", ("train", "validation", "test"))
    code, stdout, _ = run(capsys, "train", data, "--recipe", "features", "--epochs", "1", "--image-size", "32",
                          "--batch-size", "4", "--out", tmp_path / "run")
    assert code == 0
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["test_loss"] == pytest.approx(summary["val_loss"], rel=1e-5)
    code, stdout, _ = run(capsys, "predict", data / "test", "--model", tmp_path / "run", "--top", "1")
    assert code == 0 and len(stdout.splitlines()) == 12
