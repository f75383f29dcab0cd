"""Hostile disks: saving never deletes what minicnn did not write, and a damaged checkpoint or cache
file is a clear error naming it, never different numbers (issue 14, items 2, 8 and 10)."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from minicnn import weights
from minicnn.train import ModelCheckpoint, Trainer
from minicnn.weights import store

VARIABLES = {"params": {"dense": {"kernel": np.arange(12, dtype=np.float32).reshape(3, 4),
                                  "bias": np.ones(4, np.float32)}}}


def _user_folder(root: Path) -> dict:
    """A folder of a user's results: files at two levels. Returns {relative path: bytes}."""
    files = {"results.csv": b"epoch,loss\n1,0.5\n", "notes/run1.txt": b"do not delete", "model.py": b"print(1)\n"}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def _assert_untouched(root: Path, files: dict):
    found = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert found == files


def test_save_refuses_a_users_folder_and_keeps_every_file(tmp_path):
    folder = tmp_path / "runs"
    files = _user_folder(folder)
    with pytest.raises(FileExistsError, match=f"refusing to overwrite {folder}: .*not a minicnn checkpoint"):
        weights.save(VARIABLES, folder)
    _assert_untouched(folder, files)
    assert sorted(os.listdir(tmp_path)) == ["runs"]  # no temporary or backup left behind


def test_save_refuses_a_file_at_the_path(tmp_path):
    target = tmp_path / "weights.h5"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match=f"refusing to overwrite {target}: it is a file"):
        weights.save(VARIABLES, target)
    assert target.read_bytes() == b"keep me"


def test_save_into_an_empty_folder_and_over_its_own_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    weights.save(VARIABLES, tmp_path / "empty")
    weights.save({"params": {"dense": {"bias": np.zeros(2, np.float32)}}}, tmp_path / "empty")
    np.testing.assert_array_equal(weights.load(tmp_path / "empty")["params"]["dense"]["bias"], np.zeros(2))
    assert (tmp_path / "empty" / store.MARKER).is_file()


def test_a_checkpoint_holding_a_users_file_is_not_overwritten(tmp_path):
    weights.save(VARIABLES, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "my_notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="my_notes.txt.*was not written by minicnn"):
        weights.save(VARIABLES, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "my_notes.txt").read_text() == "mine"


def test_a_foreign_previous_folder_is_never_deleted(tmp_path):
    weights.save(VARIABLES, tmp_path / "ckpt")
    files = _user_folder(tmp_path / "ckpt.previous")
    with pytest.raises(FileExistsError, match=f"refusing to overwrite {tmp_path / 'ckpt.previous'}"):
        weights.save(VARIABLES, tmp_path / "ckpt")
    _assert_untouched(tmp_path / "ckpt.previous", files)
    np.testing.assert_array_equal(weights.load(tmp_path / "ckpt")["params"]["dense"]["kernel"],
                                  VARIABLES["params"]["dense"]["kernel"])


def test_model_checkpoint_into_a_users_results_folder_is_refused(tmp_path):
    from tests.test_train_checkpoint import model, x, y

    folder = tmp_path / "runs"
    files = _user_folder(folder)
    with pytest.raises(FileExistsError, match=f"refusing to overwrite {folder}"):
        Trainer(model()).fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[ModelCheckpoint(folder, "loss")])
    _assert_untouched(folder, files)


def test_weights_port_out_a_source_tree_is_refused(tmp_path):
    keras = pytest.importorskip("keras", reason="Keras writes the weight file to port")
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    kmodel = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    src = tmp_path / "notop.h5"
    with h5py.File(src, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, kmodel)
    project = tmp_path / "proj"
    files = _user_folder(project)
    with pytest.raises(FileExistsError, match=f"refusing to overwrite {project}"):
        weights.port(src, out=project)
    _assert_untouched(project, files)


def _array_files(ckpt: Path) -> list[Path]:
    """The files of a checkpoint that hold array bytes (orbax's data files), largest first."""
    marker = json.loads((ckpt / store.MARKER).read_text())
    return sorted((ckpt / name for name in marker["files"]), key=lambda p: -p.stat().st_size)


@pytest.mark.parametrize("which", range(3))
def test_a_flipped_byte_in_any_checkpoint_file_is_named(tmp_path, which):
    big = {"params": {"dense": {"kernel": np.random.default_rng(0).random((64, 64), np.float32)}}}
    weights.save(big, tmp_path / "ckpt")
    victims = _array_files(tmp_path / "ckpt")
    victim = victims[min(which, len(victims) - 1)]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"checkpoint {tmp_path / 'ckpt'} is damaged: "
                                         f"{victim.relative_to(tmp_path / 'ckpt')} has sha256"):
        weights.load(tmp_path / "ckpt")


def test_a_missing_checkpoint_file_is_named(tmp_path):
    weights.save(VARIABLES, tmp_path / "ckpt")
    victim = _array_files(tmp_path / "ckpt")[0]
    victim.unlink()
    with pytest.raises(ValueError, match=f"is damaged: {victim.relative_to(tmp_path / 'ckpt')} is missing"):
        weights.load(tmp_path / "ckpt")


def test_a_folder_that_is_not_a_checkpoint_is_named_on_load(tmp_path):
    _user_folder(tmp_path / "proj")
    with pytest.raises(ValueError, match=f"{tmp_path / 'proj'} is not a minicnn checkpoint"):
        weights.load(tmp_path / "proj")
    (tmp_path / "empty").mkdir()
    assert not store.is_checkpoint(tmp_path / "empty")  # what the ported cache asks before trusting a folder
    weights.save(VARIABLES, tmp_path / "ckpt")
    assert store.is_checkpoint(tmp_path / "ckpt")


def test_checkpoint_marker_records_structure_and_metadata(tmp_path):
    weights.save({**VARIABLES, "step": 3}, tmp_path / "ckpt", metadata={"note": "run 1"})
    marker = store.read_marker(tmp_path / "ckpt")
    assert marker["format"] == "minicnn-checkpoint" and marker["version"] == 1
    assert marker["structure"]["params/dense/kernel"] == {"shape": [3, 4], "dtype": "float32"}
    assert marker["structure"]["step"] == {"type": "int"}
    assert marker["metadata"] == {"note": "run 1"}
    for name, recorded in marker["files"].items():
        assert hashlib.sha256((tmp_path / "ckpt" / name).read_bytes()).hexdigest() == recorded["sha256"]
