"""Training across 2 processes (``jax.distributed`` on localhost, gloo CPU collectives) equals one process.

Two worker processes (this module run as a program) each read their shard of one image folder and train
with a mesh over both processes' devices; meanwhile the test process trains the same model on the whole
folder. Parameters, losses, validation logs and predictions must agree within 1e-5, only process 0 may
write the CSV log and the progress bar, and a checkpoint save (not yet supported across processes) is a
clear error, not a hang. The dataset's ``shard`` is checked here too.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
BATCH, EPOCHS = 4, 2  # global batch of 4: 2 images per process, 3 steps per epoch


def make_folder(root: Path) -> Path:
    """2 classes x 6 tiny PNGs (8x8 RGB) whose pixels tell the classes apart; small values, so the model needs
    no rescaling (a ``map`` would compile eager programs in every process)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("cats", "dogs")):
        (root / name).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 4, (8, 8, 3)) + 4 * c * (np.arange(8)[:, None, None] < 4)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def train(folder, shard=(0, 1), mesh=None, callbacks=(), verbose=0):
    """The run both sides make: a small convnet, 2 epochs over the folder (this process's shard of it),
    validated on the folder unshuffled. Returns ``(trainer, history, validation data)``."""
    from minicnn.data import image_dataset_from_directory
    from minicnn.layers import Conv2D, Dense, Flatten, MaxPooling2D, Sequential
    from minicnn.train import Trainer

    def data(shuffle):
        ds = image_dataset_from_directory(folder, target_size=(8, 8), batch_size=BATCH, shuffle=shuffle, seed=1,
                                          verbose=False)
        return ds.shard(*shard)

    model = Sequential([Conv2D(4, 3, activation="relu"), MaxPooling2D(2), Flatten(), Dense(1, activation="sigmoid")])
    trainer = Trainer(model, "binary_crossentropy", "rmsprop", optimizer_kwargs={"learning_rate": 1e-2}, mesh=mesh)
    history = trainer.fit(data(True), epochs=EPOCHS, validation_data=data(False), callbacks=list(callbacks),
                          verbose=verbose, seed=0)
    return trainer, history, data(False)


def worker(process_id: int, port: int, folder: str, out: str) -> None:
    """One of the 2 processes: join the others, train on this process's shard, write what it got to ``out``."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # jax 0.10's default on CPU, said aloud
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id,
                               initialization_timeout=120)
    from minicnn import parallel
    from minicnn.train import CSVLogger, ModelCheckpoint

    out = Path(out)
    callbacks = [CSVLogger(out / f"log-p{process_id}.csv"),
                 ModelCheckpoint(out / f"ckpt-p{process_id}"),  # one directory, store.save
                 ModelCheckpoint(out / f"steps-p{process_id}", max_to_keep=1)]  # numbered steps, orbax's manager
    trainer, history, val = train(folder, (jax.process_index(), jax.process_count()), parallel.data_mesh(), callbacks,
                                  verbose=2)
    np.savez(out / f"params-p{process_id}.npz", *jax.tree.leaves(trainer.variables["params"]))
    np.save(out / f"predict-p{process_id}.npy", trainer.predict(val))
    (out / f"history-p{process_id}.json").write_text(json.dumps(history.history))
    jax.distributed.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def wait_all(procs, timeout: float) -> None:
    """Wait for every worker; the first to fail, or the timeout, ends the others (a worker whose peer is
    gone would wait in a collective until JAX's heartbeat timeout), so nothing hangs the suite."""
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs) and not any(p.returncode for p in procs):
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 2-process run (in subprocesses) and the single-process reference (here, meanwhile)."""
    import jax

    tmp = tmp_path_factory.mktemp("distributed")
    folder, out = make_folder(tmp / "images"), tmp / "out"
    out.mkdir()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    port = free_port()
    logs = [(out / f"stdout-p{i}.txt", out / f"stderr-p{i}.txt") for i in range(2)]  # files: a full pipe cannot block
    procs = []
    try:
        for i, (stdout, stderr) in enumerate(logs):
            with stdout.open("w") as o, stderr.open("w") as e:
                procs.append(subprocess.Popen([sys.executable, "-m", "tests.test_distributed", str(i), str(port),
                                               str(folder), str(out)], cwd=ROOT, env=env, stdout=o, stderr=e))
        trainer, history, val = train(folder)
        reference = {"params": [np.asarray(a) for a in jax.tree.leaves(trainer.variables["params"])],
                     "history": history.history, "predict": trainer.predict(val)}
    finally:
        wait_all(procs, timeout=300)
    stdouts = [stdout.read_text() for stdout, _ in logs]
    for p, text, (_, stderr) in zip(procs, stdouts, logs):
        assert p.returncode == 0, f"worker failed ({p.returncode}):\n{text[-2000:]}\n{stderr.read_text()[-4000:]}"
    return reference, out, stdouts


def test_two_processes_train_as_one(runs):
    reference, out, _ = runs
    for pid in range(2):
        with np.load(out / f"params-p{pid}.npz") as f:
            params = [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(params, reference["params"]))
        print(f"process {pid}: max |params - single-process params| = {diff:.2e}")
        assert diff < 1e-5
        history = json.loads((out / f"history-p{pid}.json").read_text())
        assert history.keys() == reference["history"].keys() and "val_loss" in history
        for k, values in reference["history"].items():
            np.testing.assert_allclose(history[k], values, rtol=1e-5, atol=1e-6, err_msg=k)
    assert reference["history"]["loss"][-1] < reference["history"]["loss"][0]  # it trained
    # predict: each process gets its own rows, the halves of each global batch
    p0, p1 = (np.load(out / f"predict-p{pid}.npy") for pid in range(2))
    together = np.concatenate([np.concatenate([p0[i:i + 2], p1[i:i + 2]]) for i in range(0, len(p0), 2)])
    np.testing.assert_allclose(together, reference["predict"], rtol=1e-5, atol=1e-6)


def test_only_process_zero_writes(runs):
    _, out, stdouts = runs
    rows = (out / "log-p0.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,") and len(rows) == 1 + EPOCHS
    assert not (out / "log-p1.csv").exists()
    assert "Epoch 1/2" in stdouts[0] and "Epoch" not in stdouts[1]


def test_only_process_zero_saves_checkpoints_and_they_load(runs):
    """Process 0 saves alone (no barrier with process 1, which never saves): both kinds of checkpoint load."""
    import jax
    from minicnn import load_model

    reference, out, _ = runs
    for directory in ("ckpt", "steps"):
        assert not (out / f"{directory}-p1").exists()
        trainer = load_model(out / f"{directory}-p0")
        assert trainer.epoch == EPOCHS
        for a, b in zip(jax.tree.leaves(trainer.variables["params"]), reference["params"]):
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_shards_concatenate_to_the_batches():
    from minicnn.data import from_arrays

    x, y = np.arange(14, dtype=np.float32)[:, None], np.arange(14)
    for drop in (False, True):
        ds = from_arrays(x, y, batch_size=6, seed=3, drop_remainder=drop)  # last batch: 2 samples, or dropped
        shards = [ds.shard(i, 2) for i in range(2)]
        assert [s.batch_size for s in shards] == [3, 3] and shards[0].global_batch_size == 6
        for epoch in (0, 1):
            whole = [yb for _, yb in ds.epoch(epoch)]
            parts = [[yb for _, yb in s.epoch(epoch)] for s in shards]
            assert len(whole) == len(ds) == len(shards[1]) == (2 if drop else 3)
            for k, yb in enumerate(whole):
                np.testing.assert_array_equal(np.concatenate([parts[0][k], parts[1][k]]), yb)
    mapped = from_arrays(x, y, batch_size=6, seed=3).map(lambda a: a + 100)  # a map shards its parent
    halves = [[np.asarray(xb) for xb, _ in mapped.shard(i, 2).epoch(1)] for i in range(2)]
    for k, (xb, _) in enumerate(mapped.epoch(1)):
        np.testing.assert_array_equal(np.concatenate([halves[0][k], halves[1][k]]), xb)
    assert mapped.shard(1, 2).global_batch_size == 6 and len(halves[1]) == 3


def test_shard_that_cannot_split_evenly_is_a_clear_error():
    from minicnn.data import from_arrays

    x = np.zeros((13, 1), np.float32)
    with pytest.raises(ValueError, match="batch_size=5 does not split into 2"):
        from_arrays(x, batch_size=5).shard(0, 2)
    with pytest.raises(ValueError, match="last batch has 1 samples .*drop_remainder=True"):
        from_arrays(x, batch_size=4).shard(0, 2)
    with pytest.raises(ValueError, match="0 <= index < count"):
        from_arrays(x, batch_size=4, drop_remainder=True).shard(2, 2)
    with pytest.raises(ValueError, match="already shard 0 of 2"):
        from_arrays(x, batch_size=4, drop_remainder=True).shard(0, 2).shard(0, 2)


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
