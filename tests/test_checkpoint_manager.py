"""ModelCheckpoint(max_to_keep=, keep_best=): numbered steps through orbax's CheckpointManager.

One 5-epoch fit feeds three checkpoint directories (latest 2, best 1, both) and records the train state
at every epoch end; the tests check what is on disk, what loads, and that nothing minicnn did not write is
touched."""

import json

import jax
import numpy as np
import pytest

import minicnn
from minicnn.layers import Dense, Flatten, Sequential
from minicnn.train import Callback, ModelCheckpoint, Trainer
from minicnn.weights import store

EPOCHS = 5
SCORES = [0.5, 0.2, 0.4, 0.3, 0.6]  # the monitored value per epoch: best (min) at epoch 2, not the last

r = np.random.default_rng(0)
x = r.random((16, 4, 4, 1), np.float32)
y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(np.float32)


def model():
    return Sequential([Flatten(), Dense(1, activation="sigmoid")])


class Score(Callback):
    """Logs ``score`` (before the checkpoints see the logs, so History has it too)."""

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = SCORES[epoch]


class Snapshots(Callback):
    """The train state at each epoch's end, as host copies (after the checkpoints were started)."""

    def on_train_begin(self, logs=None):
        self.states = {}

    def on_epoch_end(self, epoch, logs=None):
        self.states[epoch + 1] = jax.tree.map(np.array, jax.device_get(dict(self.trainer.state)))


def assert_trees_equal(a, b):
    a, b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in a] == [p for p, _ in b]
    for (path, u), (_, v) in zip(a, b):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=jax.tree_util.keystr(path))


def steps_on_disk(root):
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    roots = {"latest": tmp / "latest", "best": tmp / "best", "both": tmp / "both"}
    snapshots = Snapshots()
    trainer = Trainer(model(), optimizer="adam", metrics=["acc"])
    trainer.fit(x, y, batch_size=8, epochs=EPOCHS, verbose=0, seed=1, callbacks=[
        Score(),
        ModelCheckpoint(roots["latest"], max_to_keep=2),  # async (the default)
        ModelCheckpoint(roots["best"], monitor="score", mode="min", keep_best=1),
        ModelCheckpoint(roots["both"], monitor="score", mode="min", max_to_keep=2, keep_best=1, async_save=False),
        snapshots])
    return trainer, roots, snapshots.states


def test_keep_last_two_of_five_epochs(run):
    trainer, roots, states = run
    assert steps_on_disk(roots["latest"]) == [4, 5]
    back = minicnn.load_model(roots["latest"])  # the latest step
    assert back.epoch == EPOCHS and back.history.history == trainer.history.history
    assert_trees_equal(back.state, states[5])
    assert minicnn.load_model(roots["latest"], step=4).epoch == 4
    with pytest.raises(FileNotFoundError, match=r"has no finished step 3 \(it has 4, 5\)"):
        minicnn.load_model(roots["latest"], step=3)


def test_keep_best_one_by_the_monitored_metric(run):
    _, roots, states = run
    assert steps_on_disk(roots["best"]) == [2]
    assert steps_on_disk(roots["both"]) == [2, 4, 5]  # either policy keeps a step
    back = minicnn.load_model(roots["both"], best=True)
    assert back.epoch == 2 and back.history.history["score"] == SCORES[:2]
    assert_trees_equal(back.state, states[2])
    assert minicnn.load_model(roots["both"]).epoch == 5


def test_async_saves_hold_the_state_at_save_time(run, tmp_path):
    """Training went on while each step was written; and arrays changed in place after save() returned
    (the save still in flight) do not reach the files."""
    trainer, roots, states = run
    for step in (4, 5):
        assert_trees_equal(Trainer(model(), optimizer="adam", metrics=["acc"]).load(roots["latest"], step=step).state,
                           states[step])
    manager = store.Manager(tmp_path / "m", max_to_keep=1)
    weights = np.zeros((256, 1024), np.float32)
    tree = {"state": {"params": {"w": weights}, "step": 1}, "trainable": {"w": np.ones((), bool)}}
    manager.save(1, tree, {"note": "in flight"})
    weights += 1
    manager.close()
    assert np.all(store.load(tmp_path / "m" / "1")["state"]["params"]["w"] == 0)


def test_steps_are_checksummed_and_history_is_json(run, tmp_path):
    _, roots, _ = run
    marker = json.loads((roots["both"] / "5" / store.MARKER).read_text())
    assert marker["metadata"]["epoch"] == 5 and marker["metadata"]["history"]["history"]["score"] == SCORES
    assert marker["item"] == "state" and "state/_METADATA" in marker["files"]
    import shutil
    shutil.copytree(roots["both"], tmp_path / "copy")
    victim = sorted(name for name in marker["files"] if "/d/" in name)[0]
    data = bytearray((tmp_path / "copy" / "5" / victim).read_bytes())
    data[len(data) // 2] ^= 1
    (tmp_path / "copy" / "5" / victim).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"is damaged: {victim} has sha256"):
        minicnn.load_model(tmp_path / "copy")
    assert minicnn.load_model(tmp_path / "copy", step=4).epoch == 4  # the other steps still load


def test_a_checkpoint_written_by_trainer_save_loads_through_the_new_path(run, tmp_path):
    """The single-directory format (store.save, what Trainer.save writes) is read by the same load_model."""
    trainer, roots, _ = run
    trainer.save(tmp_path / "single")
    back = minicnn.load_model(tmp_path / "single")
    assert back.epoch == EPOCHS and back.history.history == trainer.history.history
    assert_trees_equal(back.state, trainer.state)
    with pytest.raises(ValueError, match="is a single checkpoint, not a directory of numbered steps"):
        minicnn.load_model(tmp_path / "single", best=True)
    with pytest.raises(FileExistsError, match="checkpoint manager's numbered steps"):
        trainer.save(roots["latest"])  # a step root is never replaced by a single checkpoint
    with pytest.raises(ValueError, match="numbered steps .*load one of them"):
        minicnn.weights.load(roots["latest"])


def fit_into(root, **kwargs):
    Trainer(model(), optimizer="adam").fit(x, y, batch_size=8, epochs=1, verbose=0,
                                           callbacks=[ModelCheckpoint(root, monitor="loss", **kwargs)])


def listing(root):
    return sorted((p.relative_to(root).as_posix(), p.read_bytes() if p.is_file() else None) for p in root.rglob("*"))


def test_a_users_folder_is_refused_and_left_as_it_was(tmp_path):
    user = tmp_path / "runs"
    (user / "3").mkdir(parents=True)  # looks like a step: orbax alone would count and delete it
    (user / "3" / "results.csv").write_text("epoch,acc\n1,0.9\n")
    (user / "notes.txt").write_text("mine")
    before = listing(user)
    with pytest.raises(FileExistsError, match=f"refusing to write checkpoints into {user}: it is not a minicnn"):
        fit_into(user, max_to_keep=2)
    (single := tmp_path / "single").mkdir()
    store.save({"w": np.zeros(2, np.float32)}, single)
    with pytest.raises(FileExistsError, match="a single minicnn checkpoint"):
        fit_into(single, max_to_keep=2)
    assert listing(user) == before


def test_reopening_refuses_anything_added_and_clears_interrupted_saves(run, tmp_path):
    _, roots, _ = run
    import shutil
    root = tmp_path / "run"
    shutil.copytree(roots["latest"], root)
    (root / "5" / "state" / "mine.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="5/state/mine.txt in it was not written by minicnn"):
        fit_into(root, max_to_keep=2)
    (root / "5" / "state" / "mine.txt").unlink()
    (root / "7").mkdir()
    with pytest.raises(FileExistsError, match="7 in it is not a checkpoint minicnn finished"):
        fit_into(root, max_to_keep=2)
    store.set_pending(root, 7, True)  # as a save killed before its marker leaves it: ours, removed on reopening
    (root / "7" / "partial").write_text("")
    (root / f".{store.MARKER}.0123abcd.part").write_text("{")  # a marker write cut short
    fit_into(root, max_to_keep=2)  # a new run from epoch 0: step 1 replaces the later steps
    assert sorted(p.name for p in root.iterdir()) == ["1", store.MARKER]
    assert json.loads((root / store.MARKER).read_text())["pending"] == []


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="takes no"):
        ModelCheckpoint("ckpt/{epoch:02d}", max_to_keep=2)
    with pytest.raises(ValueError, match="max_to_keep must be a positive int"):
        store.Manager("unused", max_to_keep=0)
