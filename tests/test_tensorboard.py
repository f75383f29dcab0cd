"""TensorBoard callback, trackers and ImageLogger: every record read back with TensorBoard's own reader
(``EventAccumulator``, all records kept) and compared with what the run logged; a second, real tracker
(CSV) receives exactly the records the event files hold."""

import csv
import io

import numpy as np
import pytest
from PIL import Image

from minicnn.layers import Conv2D, Dense, Flatten, MaxPooling2D, Sequential
from minicnn.train import Callback, LearningRateScheduler, TensorBoard, TensorBoardTracker, Trainer, Tracker
from minicnn.train.tracking import as_image, weight_image
from minicnn.viz import ImageLogger, grad_cam_overlay

SHAPE, BATCH, N, EPOCHS, FREQ = (8, 8, 3), 8, 40, 2, 2
STEPS = N // BATCH  # batches per epoch


def read(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(directory), size_guidance={kind: 0 for kind in
                                                           ("scalars", "images", "histograms", "tensors", "audio",
                                                            "compressedHistograms")})
    return acc.Reload()


def decode(image_event) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image_event.encoded_image_string)))


class CSVTracker:
    """A second Tracker: one CSV row per record (kind, name, step, value); images and histograms are
    summarised by their shape and sum, hparams by one row per key."""

    def __init__(self, path):
        self.file = open(path, "w", newline="")
        self.rows = csv.writer(self.file)

    def scalar(self, name, value, step):
        self.rows.writerow(["scalar", name, step, float(value)])

    def image(self, name, image, step):
        pixels = as_image(image)
        self.rows.writerow(["image", name, step, f"{pixels.shape} {int(pixels.astype(np.int64).sum())}"])

    def histogram(self, name, values, step):
        self.rows.writerow(["histogram", name, step, float(np.sum(values))])

    def hparams(self, hparams, metrics):
        for key, value in {**hparams, **metrics}.items():
            self.rows.writerow(["hparam", key, 0, value])

    def flush(self):
        self.file.flush()

    def close(self):
        self.file.close()


class BatchLogs(Callback):
    """Records each batch's logs (floats) and the learning rate, keyed by the global batch count from 1."""

    def on_train_begin(self, logs=None):
        self.logs, self.count = {}, 0

    def on_batch_end(self, batch, logs=None):
        self.count += 1
        self.logs[self.count] = {**{k: float(v) for k, v in logs.items()},
                                 "learning_rate": self.trainer.learning_rate}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One 2-epoch fit of a tiny convnet with every TensorBoard record turned on, a CSV tracker beside it
    and an ImageLogger writing a Grad-CAM overlay (compiling dominates: one fit, one Grad-CAM)."""
    tmp = tmp_path_factory.mktemp("tb")
    r = np.random.default_rng(0)
    x = (r.random((N, *SHAPE)) * 255).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > np.median(x.mean(axis=(1, 2, 3)))).astype(np.float32)
    model = Sequential([Conv2D(4, 3, activation="relu"), MaxPooling2D(2), Flatten(), Dense(1, activation="sigmoid")])
    trainer = Trainer(model, optimizer_kwargs={"learning_rate": 1e-2})
    trainer.build(x[:1])
    picture = x[0].astype(np.uint8)
    csv_path = tmp / "records.csv"
    csv_tracker = CSVTracker(csv_path)
    settings = dict(histogram_freq=1, write_images=True, write_steps_per_second=True, update_freq=FREQ,
                    hparams={"batch_size": np.int64(BATCH), "note": "tiny"})
    batches = BatchLogs()
    images = {"grad_cam": lambda v: grad_cam_overlay(model, v, picture, preprocess=lambda p: p / 255)}
    history = trainer.fit(x / 255, y, batch_size=BATCH, epochs=EPOCHS, validation_data=(x / 255, y), verbose=0,
                          callbacks=[LearningRateScheduler(lambda epoch, lr: 1e-2 * 0.5 ** epoch), batches,
                                     TensorBoard(tmp / "logs", **settings),
                                     TensorBoard(tracker=csv_tracker, **settings),
                                     ImageLogger(tmp / "logs", images)])
    csv_tracker.close()
    return dict(tmp=tmp, logs=tmp / "logs", trainer=trainer, history=history.history, batches=batches.logs,
                csv=list(csv.reader(csv_path.open())), model=model, picture=picture)


def test_per_step_scalars_every_update_freq_batches_equal_the_batch_logs(run):
    train = read(run["logs"] / "train")
    expected_steps = list(range(FREQ, EPOCHS * STEPS + 1, FREQ))
    for name in ("loss", "accuracy", "learning_rate"):
        events = train.Scalars(f"batch_{name}")
        assert [e.step for e in events] == expected_steps
        np.testing.assert_array_equal([e.value for e in events],
                                      np.float32([run["batches"][s][name] for s in expected_steps]))
    rates = [e.value for e in train.Scalars("batch_steps_per_second")]
    assert [e.step for e in train.Scalars("batch_steps_per_second")] == expected_steps
    assert all(np.isfinite(rates)) and min(rates) > 0


def test_epoch_scalars_learning_rate_and_validation_as_keras_writes_them(run):
    train, validation = read(run["logs"] / "train"), read(run["logs"] / "validation")
    history = run["history"]
    for acc, prefix in ((train, ""), (validation, "val_")):
        for name in ("loss", "accuracy"):
            events = acc.Scalars(f"epoch_{name}")
            assert [e.step for e in events] == list(range(EPOCHS))
            np.testing.assert_array_equal([e.value for e in events], np.float32(history[prefix + name]))
    lr = train.Scalars("epoch_learning_rate")
    np.testing.assert_array_equal([e.value for e in lr], np.float32([1e-2, 5e-3]))  # the scheduler's rates
    assert [e.step for e in validation.Scalars("evaluation_loss_vs_iterations")] == [STEPS, 2 * STEPS]
    assert [e.step for e in train.Scalars("epoch_steps_per_second")] == list(range(EPOCHS))


def test_weight_histograms_and_images_with_keras_tags(run):
    train = read(run["logs"] / "train")
    params = run["trainer"].variables["params"]
    expected = {f"{layer}/{name}/histogram" for layer in params for name in params[layer]}
    assert set(train.Tags()["histograms"]) == expected
    kernel = np.asarray(params["conv2d"]["kernel"], np.float64)
    events = train.Histograms("conv2d/kernel/histogram")
    assert [e.step for e in events] == list(range(EPOCHS))
    last = events[-1].histogram_value  # epoch 1 ends the run: the final weights
    assert (last.num, last.min, last.max) == (kernel.size, kernel.min(), kernel.max())
    assert last.sum == pytest.approx(kernel.sum(), rel=1e-6)
    assert sum(last.bucket) == kernel.size
    # write_images draws what Keras draws: the Dense kernel (36, 1) as one 36 x 1 image (float clipped to [0, 1])
    dense = train.Images("dense/kernel/image")
    want = as_image(weight_image(params["dense"]["kernel"]))[0]
    np.testing.assert_array_equal(decode(dense[-1]), np.repeat(want, 3, axis=-1))


def test_image_logger_writes_the_pictures_it_was_given(run):
    images = read(run["logs"] / "images")
    final = run["trainer"].variables
    cam = images.Images("grad_cam")
    assert [e.step for e in cam] == list(range(EPOCHS))
    want = grad_cam_overlay(run["model"], final, run["picture"], preprocess=lambda p: p / 255)
    assert want.shape == (*SHAPE[:2], 3) and want.dtype == np.uint8
    np.testing.assert_array_equal(decode(cam[-1]), want)


def test_hparams_hold_compile_arguments_user_values_and_final_metrics(run):
    from tensorboard.plugins.hparams import plugin_data_pb2
    root = read(run["logs"])
    content = root.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    values = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    assert values == {"loss": "binary_crossentropy", "from_logits": False, "optimizer": "rmsprop",
                      "learning_rate": 1e-2, "metrics": "accuracy", "batch_size": BATCH, "note": "tiny"}
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert metrics == {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
    for name in metrics:
        assert root.Scalars(name)[0].value == np.float32(run["history"][name][-1])


def test_a_second_tracker_gets_the_records_the_event_files_hold(run):
    assert isinstance(TensorBoardTracker(run["tmp"] / "unused"), Tracker)
    assert not (run["tmp"] / "unused").exists()  # nothing written until the first record
    rows = run["csv"]
    scalars = {(name, int(step)): float(value) for kind, name, step, value in rows if kind == "scalar"}
    from_events = {}
    for run_name in ("train", "validation", "images", ""):
        acc = read(run["logs"] / run_name)
        for tag in acc.Tags()["scalars"]:
            for e in acc.Scalars(tag):
                from_events[(f"{run_name}/{tag}" if run_name else tag, e.step)] = e.value
    hparam_metrics = {k for k in from_events if "/" not in k[0]}  # written by TensorBoardTracker.hparams
    assert set(scalars) == set(from_events) - hparam_metrics
    for key, value in scalars.items():
        if "steps_per_second" not in key[0]:  # each callback times itself
            assert np.float32(value) == from_events[key], key
    histograms = {(name, int(step)) for kind, name, step, _ in rows if kind == "histogram"}
    assert len(histograms) == 4 * EPOCHS and ("train/conv2d/kernel/histogram", 1) in histograms
    hparams = {name: value for kind, name, _, value in rows if kind == "hparam"}
    assert hparams["note"] == "tiny" and float(hparams["val_loss"]) == run["history"]["val_loss"][-1]


def test_bad_arguments_fail_at_construction(tmp_path):
    with pytest.raises(ValueError, match="update_freq must be 'epoch', 'batch' or a positive int, got 'epochs'"):
        TensorBoard(tmp_path, update_freq="epochs")
    with pytest.raises(ValueError, match="histogram_freq"):
        TensorBoard(tmp_path, histogram_freq=-1)
    with pytest.raises(TypeError, match=r"hparams\['layers'\]"):
        TensorBoard(tmp_path, hparams={"layers": [1, 2]})
    with pytest.raises(ValueError, match="or tracker=, not both"):
        TensorBoard(tmp_path, tracker=TensorBoardTracker(tmp_path))
    with pytest.raises(TypeError, match="lacks the Tracker methods"):
        TensorBoard(tracker=object())
    with pytest.raises(TypeError, match=r"\['grad_cam'\] are not callable"):
        ImageLogger(tmp_path, {"grad_cam": np.zeros((4, 4, 3))})
    with pytest.raises(ValueError, match=r"got shape \(4, 4, 2\)"):
        as_image(np.zeros((4, 4, 2)))
    assert list(tmp_path.iterdir()) == []  # a refused callback writes nothing
    np.testing.assert_array_equal(as_image(np.float32([[0.0, 0.5, 2.0]])), np.uint8([[[0], [128], [255]]]))
