"""Hostile image folders: special files, hidden files, unreadable folders, symbolic link loops and bad arguments
each get one clear error (or a counted, warned skip) within a deadline; nothing blocks, nothing is silently wrong.
Real folders written with Pillow, compared with Keras' own indexer where Keras has an answer."""

import json
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest
from PIL import Image

from minicnn.data import (
    BadImageError,
    image_dataset_from_directory,
    list_image_files,
    load_image,
)

SIZE = (8, 8)
DEADLINE_S = 30


def _folder(root, per_class=3):
    """cats/ and dogs/ with ``per_class`` small real PNGs each."""
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(root / name / f"{name}_{i}.png")
    return root


def _within_deadline(fn, unblock=lambda: None):
    """``fn()``'s result or exception, failing the test if it takes longer than DEADLINE_S; ``unblock`` then frees
    whatever it blocks on, so a failing run does not hang the suite."""
    outcome = {}

    def run():
        try:
            outcome["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    blocked = thread.is_alive()
    if blocked:
        unblock()
        thread.join(DEADLINE_S)
    assert not blocked, f"blocked for more than {DEADLINE_S} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _open_writer(fifo):
    """Open and close the write end of ``fifo``: a reader blocked on it then reads end-of-file."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need POSIX")
def test_a_named_pipe_with_an_image_name_is_refused_without_blocking(tmp_path):
    root = _folder(tmp_path / "data")
    fifo = root / "cats" / "x.jpg"
    os.mkfifo(fifo)
    build = lambda on_error: image_dataset_from_directory(root, SIZE, batch_size=2, on_error=on_error, shuffle=False)
    with pytest.raises(BadImageError, match=r"x\.jpg.*not a regular file but a named pipe"):
        _within_deadline(lambda: build("raise"), lambda: _open_writer(fifo))
    with pytest.warns(UserWarning, match=r"x\.jpg.*named pipe"):
        ds = _within_deadline(lambda: build("skip"), lambda: _open_writer(fifo))
    assert ds.skipped_files == [str(fifo)] and ds.samples == 6
    assert sum(len(x) for x, _ in ds) == 6
    with pytest.raises(BadImageError, match="named pipe"):
        _within_deadline(lambda: load_image(fifo, SIZE), lambda: _open_writer(fifo))


def test_hidden_files_and_folders_are_not_samples(tmp_path):
    dataset_utils = pytest.importorskip("keras.src.utils.dataset_utils", reason="needs Keras 3")
    root = _folder(tmp_path / "data")
    (root / "cats" / "._cats_0.png").write_bytes(b"\x00\x05\x16\x07" + bytes(4092))  # macOS AppleDouble junk
    (root / "dogs" / ".ipynb_checkpoints").mkdir()
    shutil.copy(root / "dogs" / "dogs_0.png", root / "dogs" / ".ipynb_checkpoints" / "dogs_0-checkpoint.png")
    shutil.copy(root / "dogs" / "dogs_1.png", root / "dogs" / ".dogs_1.png")
    (root / ".cache").mkdir()  # a hidden top-level folder is no class (Keras agrees)
    shutil.copy(root / "dogs" / "dogs_1.png", root / ".cache" / "x.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = image_dataset_from_directory(root, SIZE, batch_size=4)
    hidden = [str(w.message) for w in caught if "hidden" in str(w.message)]
    assert len(hidden) == 1 and "3 hidden" in hidden[0] and "Keras would index them" in hidden[0]
    assert ds.samples == 6 and ds.skipped == 0 and ds.class_names == ["cats", "dogs"]
    assert not any(os.sep + "." in p for p in ds.filepaths)
    # The documented difference: Keras' indexer takes the three hidden entries inside class folders as images.
    keras_paths, _, keras_classes = dataset_utils.index_directory(str(root), "inferred", (".png",), verbose=False)
    assert keras_classes == ds.class_names and len(keras_paths) == ds.samples + 3


def _as_unprivileged(fn):
    """``fn()`` (JSON-able) run without the power to read every folder: as is for an ordinary user; as root, in a
    forked child that drops to nobody (uid 65534) first. The child only lists folders and reads image headers
    with modules already imported (no JAX), so forking a multithreaded parent is safe here."""
    if os.geteuid() != 0:
        return fn()
    Image.init()  # load Pillow's format plugins now: nobody cannot read the interpreter's files
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # JAX's warning about fork()
        pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            try:
                result = fn()
            except Exception as e:  # noqa: BLE001 - reported to the parent, which fails the test
                result = {"child_error": repr(e)}
            with os.fdopen(write_end, "w") as out:
                json.dump(result, out)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as result:
        text = result.read()
    os.waitpid(pid, 0)
    out = json.loads(text)
    assert "child_error" not in out, out
    return out


def _list_unreadable(root):
    out = {}
    try:
        image_dataset_from_directory(root, SIZE, batch_size=2)
    except OSError as e:
        out["raised"] = str(e)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = image_dataset_from_directory(root, SIZE, batch_size=2, on_error="skip")
    return {**out, "samples": ds.samples, "skipped_folders": ds.skipped_folders,
            "warnings": [str(w.message) for w in caught]}


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="needs POSIX permissions")
def test_an_unreadable_subfolder_is_reported_or_raised():
    top = Path(tempfile.mkdtemp(prefix="minicnn-unreadable-"))  # not under pytest's 0700 tmp: nobody must enter
    try:
        root = _folder(top / "data")
        locked = root / "dogs" / "more"
        locked.mkdir()
        shutil.copy(root / "dogs" / "dogs_0.png", locked / "hidden_from_us.png")
        for folder in (top, root, root / "cats", root / "dogs"):
            folder.chmod(0o755)
        locked.chmod(0o000)
        out = _as_unprivileged(lambda: _list_unreadable(str(root)))
    finally:
        locked.chmod(0o755)
        shutil.rmtree(top)
    assert "raised" in out and str(locked) in out["raised"] and "cannot be read" in out["raised"]
    assert out["skipped_folders"] == [str(locked)] and out["samples"] == 6
    assert any(str(locked) in w and "Permission denied" in w for w in out["warnings"])


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_a_symbolic_link_loop_is_detected(tmp_path):
    root = _folder(tmp_path / "data")
    (root / "cats" / "sub").mkdir()
    loop = root / "cats" / "sub" / "back"
    loop.symlink_to(root / "cats", target_is_directory=True)
    with pytest.raises(OSError, match=r"back.*symbolic link loop"):
        _within_deadline(lambda: image_dataset_from_directory(root, SIZE, follow_links=True))
    with pytest.warns(UserWarning, match=r"skipping folder .*back.*loop"):
        ds = _within_deadline(lambda: image_dataset_from_directory(root, SIZE, follow_links=True, on_error="skip"))
    assert ds.samples == 6 and ds.skipped_folders == [str(loop)]
    # Without follow_links a linked folder is not entered at all (as in Keras): no loop, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert image_dataset_from_directory(root, SIZE).samples == 6
    # Two links to one folder are no loop: both are listed, as Keras lists them.
    loop.unlink()
    (root / "dogs" / "again").symlink_to(root / "cats", target_is_directory=True)
    paths, _, _ = list_image_files(root, follow_links=True)
    assert len(paths) == 9


@pytest.mark.parametrize("target_size", [(0, 0), (-1, 8), (8, 0), (8.5, 8), ("8", "8"), (True, 8), (8,), 150])
def test_bad_target_size_is_an_argument_error(tmp_path, target_size):
    root = _folder(tmp_path / "data", per_class=1)
    with pytest.raises(ValueError, match=r"target_size must be \(height, width\), two positive ints") as caught:
        image_dataset_from_directory(root, target_size)
    assert not isinstance(caught.value, BadImageError)
    with pytest.raises(ValueError, match="target_size must be") as caught:
        load_image(root / "cats" / "cats_0.png", target_size)
    assert not isinstance(caught.value, BadImageError)


def test_a_missing_or_unreadable_file_names_itself(tmp_path):
    root = _folder(tmp_path / "data")
    (root / "cats" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(BadImageError, match=r"dangling\.png.*FileNotFoundError"):
        image_dataset_from_directory(root, SIZE)
    with pytest.warns(UserWarning, match="dangling.png"):
        assert image_dataset_from_directory(root, SIZE, on_error="skip").samples == 6
