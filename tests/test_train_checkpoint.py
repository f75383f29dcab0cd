"""Train-state checkpoints: round trip, and a SIGKILL during a checkpoint write, then resume bit for bit."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from minicnn import weights
from minicnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPooling2D, Sequential
from minicnn.train import Trainer

EPOCHS = 3
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model():
    return Sequential([Conv2D(4, 3, activation="relu"), MaxPooling2D(2), Flatten(), Dropout(0.5),
                       Dense(1, activation="sigmoid")])


r = np.random.default_rng(0)
x = r.random((32, 8, 8, 1), np.float32)
y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(np.float32)

# The child trains the same model on the same data (imported from this module) and hangs inside its
# second checkpoint save, at the n-th os.replace of minicnn.weights.save, so the parent's SIGKILL
# lands mid-write: n=2 before the old checkpoint is moved aside, n=3 between moving it aside and
# moving the new one in.
CHILD = """
import os, sys, time
from pathlib import Path
from minicnn.train import ModelCheckpoint, Trainer
from tests.test_train_checkpoint import EPOCHS, model, x, y
ckpt, hang_at = sys.argv[1], int(sys.argv[2])
real_replace, calls = os.replace, [0]

def replace(src, dst):
    if ".tmp-" in Path(src).name or str(dst).endswith(".previous"):
        calls[0] += 1
        if calls[0] == hang_at:
            print("HANG", flush=True)
            time.sleep(600)
    return real_replace(src, dst)

os.replace = replace
Trainer(model(), optimizer="adam").fit(x, y, batch_size=8, epochs=EPOCHS, verbose=0, seed=1,
                                       callbacks=[ModelCheckpoint(ckpt, monitor="loss")])
print("DONE", flush=True)
"""


def leaves(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def assert_trees_equal(a, b):
    a, b = leaves(a), leaves(b)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def uninterrupted():
    t = Trainer(model(), optimizer="adam")
    t.fit(x, y, batch_size=8, epochs=EPOCHS, verbose=0, seed=1)
    return t


def test_save_restore_round_trip(tmp_path, uninterrupted):
    t = uninterrupted
    t.save(tmp_path / "c")
    back = Trainer.restore(tmp_path / "c", model(), optimizer="adam")
    assert_trees_equal(back.state, t.state)
    assert back.epoch == EPOCHS and back.history.history == t.history.history
    assert back.trainable == t.trainable and back.learning_rate == t.learning_rate


def test_restore_errors_are_clear(tmp_path, uninterrupted):
    weights.save(uninterrupted.variables, tmp_path / "weights_only")
    with pytest.raises(ValueError, match="not a minicnn train checkpoint"):
        Trainer.restore(tmp_path / "weights_only", model())
    with pytest.raises(FileNotFoundError, match="no minicnn checkpoint"):
        Trainer.restore(tmp_path / "missing", model())
    uninterrupted.save(tmp_path / "adam")
    with pytest.raises(ValueError, match="does not fit this optimizer"):
        Trainer.restore(tmp_path / "adam", model(), optimizer="sgd")


@pytest.mark.parametrize("hang_at", [2, 3], ids=["before-swap", "between-renames"])
def test_sigkill_during_checkpoint_write_then_resume_is_bit_exact(tmp_path, uninterrupted, hang_at):
    ckpt = tmp_path / "ckpt"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ckpt), str(hang_at)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = child.stdout.readline()
        assert line == "HANG\n", f"child did not reach the checkpoint write: {line!r} {child.stderr.read()[-2000:]}"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    resumed = Trainer.restore(ckpt, model(), optimizer="adam")  # the previous (epoch 1) checkpoint
    assert resumed.epoch == 1 and len(resumed.history.history["loss"]) == 1
    resumed.fit(x, y, batch_size=8, epochs=EPOCHS, initial_epoch=resumed.epoch, verbose=0, seed=1)
    assert_trees_equal(resumed.state, uninterrupted.state)
    assert resumed.history.history == uninterrupted.history.history
    assert resumed.history.epoch == list(range(EPOCHS))


def other_model(input_shape=None):
    """Shares conv2d and dense (same names and shapes) with model() but has one more layer."""
    return Sequential([Conv2D(4, 3, activation="relu"), MaxPooling2D(2), Flatten(), Dense(1, activation="sigmoid"),
                       Dense(1, activation="sigmoid")], input_shape=input_shape)


def test_checkpoint_of_another_model_is_refused_naming_the_variable(tmp_path, uninterrupted):
    other = Trainer(other_model(), optimizer="adam")
    other.fit(x, y, batch_size=8, epochs=1, verbose=0)
    other.save(tmp_path / "other")
    with pytest.raises(ValueError, match=f"{tmp_path / 'other'} is a checkpoint of another model: "
                                         f"params/dense_1/bias is in the checkpoint, not in this model"):
        t = Trainer(model(), optimizer="adam")
        t.build(x[:1])
        t.load(tmp_path / "other")
    uninterrupted.save(tmp_path / "mine")
    built = Trainer(other_model(), optimizer="adam")
    built.build(x[:1])
    with pytest.raises(ValueError, match="params/dense_1/bias is in this model, not in the checkpoint"):
        built.load(tmp_path / "mine")
    # an unbuilt trainer checks against the model's input_shape
    with pytest.raises(ValueError, match=f"{tmp_path / 'mine'} is a checkpoint of another model"):
        Trainer.restore(tmp_path / "mine", other_model(input_shape=(8, 8, 1)), optimizer="adam")
    with pytest.raises(ValueError, match=f"{tmp_path / 'other'} is a checkpoint of another model"):
        Trainer.restore(tmp_path / "other", model(), optimizer="adam", input_shape=(8, 8, 1))


def test_fingerprint_mismatch_is_refused(tmp_path, uninterrupted):
    uninterrupted.save(tmp_path / "c", fingerprint="small-convnet-v1")
    with pytest.raises(ValueError, match="fingerprint 'small-convnet-v1'.*'small-convnet-v2'"):
        Trainer.restore(tmp_path / "c", model(), optimizer="adam", fingerprint="small-convnet-v2")
    back = Trainer.restore(tmp_path / "c", model(), optimizer="adam", fingerprint="small-convnet-v1")
    assert back.epoch == EPOCHS


def test_swapped_restore_arguments_are_explained(tmp_path):
    with pytest.raises(TypeError, match=r"Trainer.restore\(path, model\): the path comes first"):
        Trainer.restore(model(), tmp_path / "c")


def test_history_and_epoch_are_json_in_the_marker(tmp_path, uninterrupted):
    uninterrupted.save(tmp_path / "c")
    marker = json.loads((tmp_path / "c" / "minicnn_checkpoint.json").read_text())
    assert marker["metadata"]["epoch"] == EPOCHS
    assert marker["metadata"]["history"]["history"] == uninterrupted.history.history


def test_checkpoint_written_by_the_old_layout_still_loads(tmp_path, uninterrupted):
    """minicnn <= 0.1 wrote history as uint8 JSON bytes and no marker file: read-only compatibility."""
    import orbax.checkpoint as ocp
    from flax import serialization, traverse_util

    t = uninterrupted
    tree = {"state": {**t.state, "opt_state": serialization.to_state_dict(t.state["opt_state"])},
            "trainable": traverse_util.unflatten_dict({k: np.asarray(v) for k, v in t._flat_mask.items()}),
            "epoch": EPOCHS,
            "history": np.frombuffer(t.history.to_json().encode(), np.uint8)}
    with ocp.PyTreeCheckpointer() as ckpt:
        ckpt.save(tmp_path / "old", jax.device_get(tree))
    back = Trainer.restore(tmp_path / "old", model(), optimizer="adam")
    assert_trees_equal(back.state, t.state)
    assert back.epoch == EPOCHS and back.history.history == t.history.history
    with pytest.raises(FileExistsError, match="not a minicnn checkpoint"):  # read-only: never overwritten
        back.save(tmp_path / "old")


def test_an_unbuilt_trainer_checks_the_model_against_the_recorded_input_shape(tmp_path, uninterrupted):
    """The checkpoint records the input shape it was built for, so no input_shape argument is needed."""
    uninterrupted.save(tmp_path / "mine")
    with pytest.raises(ValueError, match=f"{tmp_path / 'mine'} is a checkpoint of another model"):
        Trainer.restore(tmp_path / "mine", other_model(), optimizer="adam")
    assert Trainer.restore(tmp_path / "mine", model(), optimizer="adam").epoch == EPOCHS
