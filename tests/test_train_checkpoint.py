"""Train-state checkpoints: round trip, and a SIGKILL during a checkpoint write, then resume bit for bit."""

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
