"""``Trainer``: Keras' ``compile``/``fit``/``evaluate``/``predict`` for a Flax Linen model.

The Trainer is the Keras loop and callbacks around the pure steps of :mod:`minicnn.train.step`: its
state is that module's ``TrainState`` pytree ``{"params", "batch_stats", "opt_state", "step", "rng"}``,
its train step ``make_train_step`` jitted with :func:`minicnn.ops.jit` (state buffers donated).

Freezing. ``trainable`` is any :mod:`minicnn.masks` mask (a prefix mask ``{"vgg16": False, ...}``
included): the step differentiates only the trainable partition, runs BatchNormalization layers whose
parameters are all frozen in inference mode (Keras >= 2.1.3), and the optimizer is
``masks.freeze(optimizer, mask)``, so frozen weights carry no optimizer state and no decay. Setting
``trainer.trainable`` (or :meth:`Trainer.set_trainable`) between phases keeps the parameters and builds
a new optimizer state for the new partition.

Batches. ``fit`` takes any re-iterable of ``(x, y)`` batches (a minicnn dataset's ``epoch(n)`` for
epoch ``n``, so resuming at ``initial_epoch`` is exact; otherwise one ``iter()`` per epoch; with
``steps_per_epoch`` one iterator is kept across epochs and restarted when it runs out) or arrays
``fit(x, y, batch_size=32)`` (shuffled each epoch from ``seed``, like Keras). A grain pipeline
(``grain.MapDataset``/``IterDataset``/``DataLoader`` of ``(x, y)`` batches) is such a re-iterable: an
epoch is one ``iter()`` pass, as Keras iterates a grain or tf.data dataset. Integer images (uint8)
are cast to float32 on the device, as a Keras model casts inputs to its ``Input`` dtype. A checkpoint
written during ``fit`` records where fit is in its data (epoch, batch, the iterator's ``get_state()``
when it has one, the epoch's running log sums), so ``fit(initial_epoch=trainer.epoch)`` after
:meth:`Trainer.load` continues mid-epoch exactly: from the iterator's state (grain), else by skipping
the batches done (exact for a minicnn dataset, whose epochs are pure functions of the seed).
A smaller last training batch is padded to the first batch's size with rows that weigh 0 in the loss,
metrics and gradients, so one program serves the epoch (unless a BatchNormalization layer trains: padding would change its
batch statistics, so that batch is a second shape, compiled once). ``evaluate`` and ``predict`` pad the
last batch to the first batch's size and mask the padding out, so they compile once.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from minicnn import inspector, masks, ops, parallel
from minicnn.data.grain_pipeline import get_iterator_state, set_iterator_state
from minicnn.train import checkpoint, losses as losses_lib, metrics as metrics_lib, optimizers
from minicnn.train import saving
from minicnn.train.callbacks import Callback, CallbackList, ProgbarLogger
from minicnn.train.history import History
from minicnn.weights.pretrained import init
from minicnn.train.step import TrainState, init_state, make_eval_step, make_train_step

__all__ = ["Trainer", "load_model"]


def _is_arrays(data) -> bool:
    """``(x, y)`` or ``(x, y, sample_weight)`` arrays (Keras' ``validation_data`` forms)."""
    return (isinstance(data, tuple) and len(data) in (2, 3)
            and all(hasattr(a, "shape") and hasattr(a, "dtype") for a in data))


def _array_batches(arrays: tuple, batch_size: int, order=None):
    """(x, y[, sample_weight]) arrays -> list of per-batch tuples; ``order`` a permutation of the samples."""
    sizes = [len(a) for a in arrays]
    if len(set(sizes)) > 1:
        names = ("x", "y", "sample_weight")[:len(sizes)]
        raise ValueError(f"{', '.join(names)} have different numbers of samples: {' and '.join(map(str, sizes))}")
    idx = np.arange(sizes[0]) if order is None else order
    return [tuple(a[idx[i:i + batch_size]] for a in arrays) for i in range(0, sizes[0], batch_size)]


def _arrays(data, y, sample_weight, what: str):
    """``(x, y[, sample_weight])`` as NumPy arrays when the input is arrays, else None (a dataset)."""
    if y is not None:
        if not (hasattr(y, "shape") and hasattr(data, "shape")):
            hint = f"; did you mean epochs={y}?" if isinstance(y, int) else ""
            raise TypeError(f"{what}(x, y): with y, x and y must be arrays (got {type(data).__name__} and "
                            f"{type(y).__name__}){hint} A dataset of (x, y) batches goes alone: {what}(dataset)")
        data = (data, y)
    if not _is_arrays(data):
        if sample_weight is not None:
            raise ValueError(f"{what}: sample_weight applies to array inputs only; a dataset carries its "
                             f"weights in its batches, (x, y, sample_weight)")
        return None
    if sample_weight is not None:
        if len(data) == 3:
            raise ValueError(f"{what}: sample_weight given twice (in the data and as an argument)")
        data = (*data, sample_weight)
    arrays = tuple(np.asarray(a) for a in data)
    if len(arrays) == 3 and arrays[2].shape != (len(arrays[0]),):
        raise ValueError(f"{what}: sample_weight has shape {arrays[2].shape}, expected ({len(arrays[0])},), "
                         f"one weight per sample")
    return arrays


def _as_batches(data, y, batch_size, what: str, shuffle_seed=None, sample_weight=None):
    """Normalise ``data`` (batches, or arrays with ``y``/a 2- or 3-tuple) to a re-iterable of batches."""
    arrays = _arrays(data, y, sample_weight, what)
    if arrays is not None:
        order = None if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(len(arrays[0]))
        return _array_batches(arrays, batch_size or 32, order)
    if batch_size is not None:
        raise ValueError(f"{what}: batch_size applies to array inputs only; a dataset of batches sets its own")
    if not isinstance(data, Iterable):
        raise TypeError(f"{what}: expected an iterable of (x, y) batches or (x, y) arrays, got {type(data).__name__}")
    return data


def validation_split_arrays(arrays: tuple, validation_split: float) -> tuple[tuple, tuple]:
    """Keras' ``train_validation_split``: the LAST ``validation_split`` fraction of the samples (before any
    shuffling) is validation, the first ``floor(n * (1 - validation_split))`` train."""
    n = len(arrays[0])
    split_at = int(math.floor(n * (1.0 - validation_split)))
    if not 0.0 < validation_split < 1.0 or split_at in (0, n):
        raise ValueError(f"fit: validation_split={validation_split} leaves no training or no validation "
                         f"samples of {n}; use a fraction in (0, 1) and more data")
    return tuple(a[:split_at] for a in arrays), tuple(a[split_at:] for a in arrays)


def class_weight_to_sample_weight(y, class_weight: dict) -> np.ndarray:
    """Keras' ``class_weight_to_sample_weights``: each sample's weight is its class's (1.0 for a class not
    in the dict); the class is ``argmax`` of a one-hot row, else the rounded label.

    y: (N,), (N, 1) or (N, K) labels -> (N,) float32.
    """
    y = np.asarray(y)
    if y.ndim > 1:
        y = np.argmax(y, axis=-1) if y.shape[-1] != 1 else np.squeeze(y, axis=-1)
    classes = np.round(y).astype(np.int32).reshape(-1)
    return np.array([class_weight.get(int(c), 1.0) for c in classes], np.float32)


def _callback_list(callbacks) -> list:
    """One callback or a (nested) list of them, as Keras' ``CallbackList`` accepts."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback):
        return [callbacks]
    if isinstance(callbacks, (list, tuple)):
        return [c for item in callbacks for c in _callback_list(item)]
    raise TypeError(f"fit(callbacks=): expected a Callback or a list of them, got {type(callbacks).__name__}")


def _pad(a, n: int):
    """Pad the batch axis of ``a`` with zeros up to ``n`` rows; a JAX array is padded on its device."""
    xp = jnp if isinstance(a, jax.Array) else np
    a = xp.asarray(a)
    return xp.concatenate([a, xp.zeros((n - len(a), *a.shape[1:]), a.dtype)]) if len(a) < n else a


def _epoch_batches(data, epoch: int):
    """An iterator over ``data``'s batches of ``epoch``: ``data.epoch(epoch)`` for a minicnn dataset (the order
    and augmentation keys of that epoch, so a resumed fit sees the uninterrupted run's batches), else ``iter``."""
    epoch_fn = getattr(data, "epoch", None)
    return iter(epoch_fn(epoch)) if callable(epoch_fn) else iter(data)


def _float_images(x):
    """Integer images (uint8 batches of a grain pipeline) as float32, cast on the device; other
    arrays as they are."""
    return x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.integer) else x


def _resume_epoch(iterator, saved: dict) -> tuple[int, dict, int]:
    """Move a fresh epoch ``iterator`` to a checkpoint's data position (``Trainer._data_state``): its
    recorded state (grain), else past the ``step`` batches done. Returns ``(step, log sums, count)``."""
    if saved["iterator"] is not None:
        set_iterator_state(iterator, saved["iterator"])
    else:
        for done in range(saved["step"]):
            if next(iterator, None) is None:
                raise ValueError(f"fit: the checkpoint was written after batch {saved['step']} of epoch "
                                 f"{saved['epoch']}, but this data has only {done} batches in that epoch")
    sums = {k: np.asarray(v["value"], v["dtype"]) for k, v in saved["sums"].items()}
    return saved["step"], sums, saved["count"]


def _copy(tree):
    """Fresh device buffers, so donating the train state never deletes the caller's arrays."""
    return jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True), tree)


def _check_like(new, old) -> None:
    """Raise naming the first variable whose path or shape differs between ``new`` and ``old``."""
    new_flat, old_flat = traverse_util.flatten_dict(new), traverse_util.flatten_dict(old)
    for path in sorted(new_flat.keys() | old_flat.keys()):
        where = "/".join(path)
        if path not in new_flat or path not in old_flat:
            raise ValueError(f"set_variables: {where} is {'missing' if path not in new_flat else 'unexpected'} "
                             f"(the model's variables and the new ones must have the same layers)")
        if np.shape(new_flat[path]) != np.shape(old_flat[path]):
            raise ValueError(f"set_variables: {where} has shape {np.shape(new_flat[path])}, "
                             f"expected {np.shape(old_flat[path])}")


class Trainer:
    """Train, evaluate and predict with a minicnn (Flax Linen) model, the Keras way.

    model: any module called as ``model.apply(variables, x, train=...)``.
    loss: ``"binary_crossentropy"``, ``"categorical_crossentropy"``, ``"sparse_categorical_crossentropy"``
      or a per-sample callable ``fn(y_true, y_pred) -> (N,)``; ``from_logits`` as in Keras.
    optimizer: ``"rmsprop"``/``"adam"``/``"sgd"`` (Keras defaults, e.g. ``optimizer_kwargs={"learning_rate": 1e-4}``)
      or an optax transform (see :mod:`minicnn.train.optimizers`).
    metrics: names as Keras takes them (``"acc"``/``"accuracy"`` pick the accuracy matching the loss,
      ``"AUC"``, ``"Precision"``, ``"top_k_categorical_accuracy"``, a loss name ...) or per-sample callables;
      each is logged under the name written (``acc``, ``val_acc``), see :func:`minicnn.train.metrics.get`.
    variables: start from these (pretrained, or built by a transfer-learning recipe) instead of
      ``model.init`` on the first batch.
    trainable: a mask of bools over ``params`` (a bool may stand for a whole layer); None: what the
      layers' ``trainable`` fields say (Keras' ``layer.trainable``, :func:`minicnn.masks.from_trainable_fields`:
      everything unless a field is False). An explicit mask replaces the fields, it is not combined
      with them: ``trainable=True`` trains a ``VGG16(trainable=False)`` too (the fine-tuning phase).
    mesh: data parallelism over a ``jax.sharding.Mesh`` (e.g. ``minicnn.parallel.data_mesh()``, every
      device, of every process after ``jax.distributed.initialize``: docs/SCALING.md): the train state is
      replicated, each batch is split over the devices and XLA reduces the gradients. Training batches
      must divide by the device count (a clear error otherwise); evaluate and predict pad. None: the
      default device.
    """

    def __init__(self, model: nn.Module, loss: str | Callable = "binary_crossentropy",
                 optimizer: str | optax.GradientTransformation = "rmsprop",
                 metrics: Sequence[str | Callable] | None = ("accuracy",), *, from_logits: bool = False,
                 optimizer_kwargs: dict | None = None, variables: dict | None = None, trainable=None,
                 mesh=None):
        self.model = model
        self.mesh = mesh
        self.loss_fn = losses_lib.get(loss, from_logits)
        compiled = [metrics_lib.get(m, getattr(self.loss_fn, "__name__", None)) for m in (metrics or ())]
        names = [m.name for m in compiled]
        if len(set(names)) < len(names) or "loss" in names:
            raise ValueError(f"metrics {names}: each metric needs its own log name, other than 'loss'")
        self.metric_fns = {m.name: m.fn for m in compiled}  # Keras' order: the evaluate list follows it
        self._metric_results = {m.name: m.result for m in compiled if m.result is not None}
        self._optimizer = (optimizer, dict(optimizer_kwargs or {}))  # set_trainable may rebuild it with new kwargs
        self.optimizer = optimizers.get(optimizer, **(optimizer_kwargs or {}))
        self._mask = trainable
        self._field_mask = None  # what the modules' trainable fields say, found by build
        self._compile = (loss, tuple(metrics or ()), from_logits)  # save() keeps those that are names
        self._initial_variables = variables
        self.state: TrainState | None = None
        self.epoch = 0
        self.history = History()
        self.stop_training = False
        self._data_seed = None  # the seed of the data fit last trained on (kept in checkpoints)
        self._input_shape = None  # (H, W, C) the model was built for (kept in checkpoints: load checks the model)
        self._ending_epoch = None  # (epoch, logs) while on_epoch_end callbacks run
        self._data_position = None  # (epoch, batches done, iterator, log sums, samples) during fit: see save
        self._resume_from = None  # a loaded checkpoint's data_state, for the next fit
        self._predict_step = ops.jit(lambda variables, x: model.apply(variables, x, train=False))
        self._eval_step = ops.jit(make_eval_step(model, self.loss_fn, self.metric_fns))
        self._output_widths: dict = {}  # input shape (H, W, C) -> width of the model's last axis

    # ----------------------------------------------------------------- state
    @property
    def built(self) -> bool:
        return self.state is not None

    def build(self, x, seed: int = 0) -> None:
        """Create the train state for inputs like ``x`` (N, ...): ``model.init`` with the
        ``"params"`` and ``"dropout"`` streams from ``seed``, unless ``variables=`` was given."""
        init_key, dropout_key, step_key = jax.random.split(jax.random.PRNGKey(seed), 3)
        if self._initial_variables is None:
            # minicnn.init: pretrained submodules (VGG16(weights="imagenet")) get their weights, the rest is fresh
            variables = init(self.model, {"params": init_key, "dropout": dropout_key}, _float_images(jnp.asarray(x)),
                             train=False)
        else:
            variables = self._initial_variables
        self.state = init_state(_copy(dict(variables)), optax.identity(), step_key)  # set_trainable: opt_state
        self._input_shape = tuple(int(d) for d in np.shape(x)[1:])
        self._field_mask = masks.from_trainable_fields(self.model, variables, np.shape(x)[1:])
        self.set_trainable(self._mask)

    def _require_built(self, what):
        if not self.built:
            raise RuntimeError(f"Trainer.{what}: the trainer has no variables yet; call fit() first, "
                               f"or build(x), or pass variables=")

    @property
    def variables(self) -> dict:
        """A host (NumPy) copy of ``{"params", "batch_stats"}``, safe to keep across train steps."""
        self._require_built("variables")
        return jax.device_get({"params": self.state["params"], "batch_stats": self.state["batch_stats"]})

    def set_variables(self, variables: dict) -> None:
        """Replace params (and batch_stats, if given) keeping the optimizer state and step."""
        self._require_built("set_variables")
        new = {"params": variables["params"], "batch_stats": variables.get("batch_stats", self.state["batch_stats"])}
        _check_like(new, {"params": self.state["params"], "batch_stats": self.state["batch_stats"]})
        self.state = {**self.state, **self._placed(_copy(new))}

    @property
    def trainable(self):
        """The mask, one bool per parameter (after build), or what was passed."""
        return traverse_util.unflatten_dict(self._flat_mask) if self.built else self._mask

    @trainable.setter
    def trainable(self, mask):
        self.set_trainable(mask)

    def set_trainable(self, mask, optimizer: str | optax.GradientTransformation | None = None,
                      **optimizer_kwargs) -> None:
        """Train the parameters ``mask`` marks (None: all; any :mod:`minicnn.masks` mask). Keeps the
        parameters, starts a fresh optimizer state for the new trainable partition and rebuilds the
        jitted step.

        ``optimizer``/``optimizer_kwargs``: a new optimizer for the new phase (the lecture's
        ``compile`` again); kwargs alone (``learning_rate=1e-5``) rebuild the current optimizer, by
        name, with them.
        """
        if optimizer is not None or optimizer_kwargs:
            name, kwargs = self._optimizer
            if optimizer is None and not isinstance(name, str):
                raise ValueError("set_trainable(**optimizer_kwargs): the trainer's optimizer is an optax "
                                 "transform, which minicnn cannot rebuild with new arguments; pass optimizer=")
            self._optimizer = (name, {**kwargs, **optimizer_kwargs}) if optimizer is None else \
                (optimizer, optimizer_kwargs)
            self.optimizer = optimizers.get(self._optimizer[0], **self._optimizer[1])
        self._mask = mask
        if not self.built:
            return
        self._flat_mask = masks.flat_mask(self.state["params"], self._field_mask if mask is None else mask)
        frozen_layers = masks.frozen_modules(self._flat_mask)  # padding a batch changes no frozen BN's statistics
        self._pad_exact = all(p[:-1] in frozen_layers for p in traverse_util.flatten_dict(self.state["batch_stats"]))
        mask_tree = traverse_util.unflatten_dict(self._flat_mask)
        self.tx = masks.freeze(self.optimizer, mask_tree)
        self.state["opt_state"] = _copy(self.tx.init(self.state["params"]))  # own buffers: the state is donated
        self.state = self._placed(self.state)
        self._train_step = ops.jit(make_train_step(self.model, self.loss_fn, self.tx, mask_tree, self.metric_fns),
                                   donate_argnums=0)

    @property
    def learning_rate(self) -> float:
        self._require_built("learning_rate")
        return optimizers.get_learning_rate(self.state["opt_state"])

    @learning_rate.setter
    def learning_rate(self, value: float):
        self._require_built("learning_rate")
        self.state["opt_state"] = optimizers.set_learning_rate(self.state["opt_state"], value)

    # ----------------------------------------------------------------- API
    def train_on_batch(self, x, y, seed: int = 0) -> dict:
        """One optimizer step on one batch; returns that batch's ``loss`` and metrics (floats, a dict)."""
        if not self.built:
            self.build(x, seed)
        self._check_labels(x, y, 0)
        self.state, logs = self._train_step(self.state, *self._train_batch(len(x), x, y))
        return {k: float(v) for k, v in self._results(logs).items()}

    def _results(self, means: dict) -> dict:
        """Logs from the sample means of the per-sample values: streaming metrics (AUC, precision,
        recall) turn their mean confusion counts into the value, mean metrics are their mean."""
        return {k: self._metric_results[k](v) if k in self._metric_results else v for k, v in means.items()}

    def _placed(self, tree):
        """``tree`` replicated over ``mesh`` (data parallelism), or as it is."""
        return tree if self.mesh is None else parallel.replicate(tree, self.mesh)

    def _check_labels(self, x, y, batch: int) -> None:
        """Out-of-range labels raise here, naming the batch: in the jitted step they give NaN or
        train as another class. The class count comes from the model's output shape (traced once
        per input shape, never run)."""
        def classes() -> int:
            shape = tuple(np.shape(x)[1:])
            if shape not in self._output_widths:
                variables = {"params": self.state["params"], "batch_stats": self.state["batch_stats"]}
                out = jax.eval_shape(lambda v, xs: self.model.apply(v, xs, train=False), variables,
                                     jax.ShapeDtypeStruct((1, *shape), jnp.float32))
                self._output_widths[shape] = out.shape[-1]
            return self._output_widths[shape]

        losses_lib.check_labels(self.loss_fn, y, classes, batch)

    def _train_batch(self, size: int, *arrays) -> tuple[tuple, jax.Array]:
        """``(batch, weight)`` on the devices for the train step: ``arrays`` (x, y[, sample_weight]) padded
        with zero rows up to ``size``, ``weight`` (size,) 1 on real rows and 0 on padding, so an epoch's
        short last batch runs the compiled step of the full ones. Exact (padding rows count in no loss,
        metric or gradient) except for dropout, whose draws for the real rows then differ from an
        unpadded batch's; not padded while a BatchNormalization layer trains (its batch statistics)."""
        n = len(arrays[0])
        size = size if self._pad_exact and n < size else n
        *batch, weight = self._on_devices(*(_pad(a, size) for a in arrays), _pad(np.ones(n, np.float32), size),
                                          pad=False)
        return tuple(batch), weight

    def _on_devices(self, *arrays, pad: bool):
        """Device arrays for a batch: whole on the default device, or split over ``mesh``
        (padded with zero rows up to a multiple of the device count when ``pad``)."""
        if self.mesh is None:
            placed = tuple(jnp.asarray(a) for a in arrays)
        else:
            placed = parallel.shard_batch(tuple(np.asarray(a) for a in arrays), self.mesh, pad=pad)[0]
        return (_float_images(placed[0]), *placed[1:])

    def fit(self, x, y=None, *, batch_size: int | None = None, epochs: int = 1, validation_data=None,
            validation_split: float = 0.0, class_weight: dict | None = None, sample_weight=None,
            steps_per_epoch: int | None = None, validation_steps: int | None = None,
            callbacks: Callback | Sequence[Callback] | None = None, verbose: int = 1, shuffle: bool = True,
            initial_epoch: int = 0, seed: int = 0) -> History:
        """Train for ``epochs`` (counting from ``initial_epoch``, as Keras does) and return the
        :class:`History`. ``seed`` initialises the variables and dropout stream when the trainer is
        not built yet, and orders the samples of array inputs (epoch by epoch).

        As Keras' ``fit``: ``validation_split`` takes the last fraction of array inputs, before
        shuffling, as validation data (``validation_data`` overrides it; a dataset is refused);
        ``class_weight`` ``{class: weight}`` and ``sample_weight`` (N,) (arrays only; a dataset may
        yield ``(x, y, sample_weight)`` batches) weight the training loss, ``sum(w * loss) / N`` per batch;
        metrics stay unweighted. ``callbacks``: one callback or a list. The logs hold ``loss``, the
        metrics under the names given to the Trainer and their ``val_`` twins (a ``learning_rate``
        entry only when a learning-rate callback adds it, as in Keras).

        ``initial_epoch > 0`` continues ``self.history`` (e.g. after :meth:`restore`); otherwise a
        new history starts.
        """
        if initial_epoch == 0 or not self.history.epoch:
            self.history = History()
        arrays = _arrays(x, y, sample_weight, "fit")
        if class_weight is not None and (sample_weight is not None or (arrays is not None and len(arrays) == 3)):
            raise ValueError("fit: class_weight and sample_weight cannot be given together (as in Keras); "
                             "fold the class weights into sample_weight")
        if validation_split:
            if arrays is None:
                raise ValueError("fit: validation_split is only supported for array inputs (as in Keras); "
                                 "pass validation_data= for a dataset")
            arrays, split = validation_split_arrays(arrays, validation_split)
            validation_data = split if validation_data is None else validation_data
        if class_weight is not None and arrays is not None:
            arrays = (*arrays, class_weight_to_sample_weight(arrays[1], class_weight))
        data_seed = seed if arrays is not None else getattr(x, "seed", None)
        if not isinstance(data_seed, (int, type(None))):  # grain datasets have a seed() method
            data_seed = None
        if initial_epoch > 0 and None not in (self._data_seed, data_seed) and data_seed != self._data_seed:
            warnings.warn(f"fit(initial_epoch={initial_epoch}): the training data's seed is {data_seed}, the "
                          f"checkpoint's run used {self._data_seed}: the resumed run sees other batches than "
                          f"the uninterrupted one would (pass the same seed to resume exactly)", stacklevel=2)
        self._data_seed = data_seed
        steps = steps_per_epoch
        if steps is None and arrays is not None:
            steps = math.ceil(len(arrays[0]) / (batch_size or 32))
        elif steps is None and hasattr(x, "__len__"):
            steps = len(x)
        # Keras' CallbackList: the user's callbacks, then History (it records what they add to the logs)
        cbs = [*_callback_list(callbacks), self.history]
        if verbose:
            cbs.append(ProgbarLogger(verbose, steps, epochs))
        cb = CallbackList(cbs)
        cb.set_trainer(self)
        self.stop_training = False
        iterator, resume = None, self._take_resume_from(initial_epoch)
        size = None  # the first batch's size: shorter batches are padded to it (_train_batch)
        cb.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            if arrays is not None:
                data = _as_batches(arrays, None, batch_size, "fit", (seed, epoch) if shuffle else None)
            else:
                data = _as_batches(x, None, batch_size, "fit")
            if steps_per_epoch is None or iterator is None:
                iterator = _epoch_batches(data, epoch)
            cb.on_epoch_begin(epoch)
            sums, count, batch = {}, 0, 0
            if resume is not None:  # a checkpoint written mid-epoch: continue at its batch
                batch, sums, count = _resume_epoch(iterator, resume)
                resume = None
            while steps_per_epoch is None or batch < steps_per_epoch:
                try:
                    xb, yb, *wb = next(iterator)
                except StopIteration:
                    if steps_per_epoch is None:
                        break
                    iterator = _epoch_batches(data, epoch)
                    try:
                        xb, yb, *wb = next(iterator)
                    except StopIteration:
                        raise ValueError("fit: the training data yielded no batches") from None
                if class_weight is not None and arrays is None:  # a dataset's batches: weighted here
                    if wb:
                        raise ValueError("fit: class_weight with a dataset that yields sample weights")
                    wb = [class_weight_to_sample_weight(yb, class_weight)]
                if not self.built:
                    self.build(xb, seed)
                cb.on_batch_begin(batch)
                self._check_labels(xb, yb, batch)
                size = size or len(xb)
                self.state, logs = self._train_step(self.state, *self._train_batch(size, xb, yb, *wb))
                n = len(xb)
                sums = {k: sums.get(k, 0.0) + v * n for k, v in logs.items()}
                count += n
                self._data_position = (epoch, batch + 1, iterator, sums, count)
                cb.on_batch_end(batch, self._results({k: s / count for k, s in sums.items()}))
                batch += 1
                if self.stop_training:
                    break
            if batch == 0:
                raise ValueError("fit: the training data yielded no batches")
            epoch_logs = {k: float(v) for k, v in self._results({k: s / count for k, s in sums.items()}).items()}
            if validation_data is not None:
                val = self._evaluate_logs(validation_data, None, batch_size if _is_arrays(validation_data) else None,
                                          validation_steps, None)
                epoch_logs.update({f"val_{k}": v for k, v in val.items()})
            self.epoch = epoch + 1
            self._ending_epoch = (epoch, epoch_logs)  # History records it last: a checkpoint saved now needs it
            # the next epoch starts afresh; only an iterator kept across epochs (steps_per_epoch) goes on
            self._data_position = (epoch + 1, 0, None if steps_per_epoch is None else iterator, {}, 0)
            cb.on_epoch_end(epoch, epoch_logs)
            self._ending_epoch = None
            if self.stop_training:
                break
        self._data_position = None  # no reference to the iterator (and grain's worker processes) after fit
        cb.on_train_end()
        return self.history

    def evaluate(self, x, y=None, *, batch_size: int | None = None, steps: int | None = None,
                 sample_weight=None, return_dict: bool = False):
        """The loss and metrics over the data (inference mode), as Keras returns them: the loss (a
        float) when the Trainer has no metrics, else ``[loss, *metrics]`` in the order the metrics were
        given (``test_loss, test_acc = trainer.evaluate(x, y)``); ``return_dict=True``:
        ``{"loss": .., "acc": ..}``. ``sample_weight`` (N,) weights the loss, arrays only."""
        logs = self._evaluate_logs(x, y, batch_size, steps, sample_weight)
        if return_dict:
            return logs
        return logs["loss"] if len(logs) == 1 else [logs["loss"], *(logs[k] for k in self.metric_fns)]

    def _evaluate_logs(self, x, y, batch_size, steps, sample_weight) -> dict:
        """``{"loss": .., name: ..}`` over the data: weighted sums per batch (padding weighs 0), then means.
        The per-batch sums stay on the device until the end (no sync per batch) and are added on the host in
        batch order: adding them on the device would compile two small eager programs in every new process."""
        data = _as_batches(x, y, batch_size, "evaluate", sample_weight=sample_weight)
        outs, count, size = [], 0, None
        for i, (xb, yb, *wb) in enumerate(data):
            if steps is not None and i >= steps:
                break
            if not self.built:
                self.build(xb)
            self._check_labels(xb, yb, i)
            n = len(xb)
            size = size or n
            weight = _pad(np.ones(n, np.float32), size)
            xd, yd, wd, *swd = self._on_devices(_pad(xb, size), _pad(yb, size), weight,
                                                 *(_pad(w, size) for w in wb), pad=True)
            out = self._eval_step({"params": self.state["params"], "batch_stats": self.state["batch_stats"]},
                                  (xd, yd, *swd), wd)
            outs.append(out)
            count += n * parallel.process_count(self.mesh)  # the sums are over every process's slice
        if not outs:
            raise ValueError("evaluate: the data yielded no batches")
        outs = jax.device_get(outs)
        sums = {k: sum((out[k] for out in outs[1:]), outs[0][k]) for k in outs[0]}
        return {k: float(v) for k, v in self._results({k: v / np.float32(count) for k, v in sums.items()}).items()}

    def predict(self, x, *, batch_size: int | None = None, steps: int | None = None) -> np.ndarray:
        """Model outputs (inference mode) for an array ``x`` (N, ...) or an iterable of batches
        (``x`` or ``(x, y)``; labels are ignored), concatenated into a NumPy array."""
        if hasattr(x, "shape"):
            x = np.asarray(x)
            bs = batch_size or 32
            data = [x[i:i + bs] for i in range(0, len(x), bs)]
        else:
            data = x
        outs, size = [], None
        for i, batch in enumerate(data):
            if steps is not None and i >= steps:
                break
            xb = batch[0] if isinstance(batch, (tuple, list)) else batch
            if not self.built:
                self.build(xb)
            n = len(xb)
            size = size or n
            variables = {"params": self.state["params"], "batch_stats": self.state["batch_stats"]}
            out = self._predict_step(variables, *self._on_devices(_pad(xb, size), pad=True))
            outs.append(parallel.local_rows(out)[:n])  # this process's rows
        if not outs:
            raise ValueError("predict: the data yielded no batches")
        return np.concatenate(outs)

    # ----------------------------------------------------------------- checkpoints
    def save(self, directory: str | os.PathLike, *, fingerprint: str | None = None):
        """Keras' ``model.save``: write the model's architecture (a minicnn model's configuration),
        the whole train state, mask, epoch, history and the compile arguments that are names to the
        directory ``directory`` (atomically, checksummed; only over a minicnn checkpoint or an empty
        directory), for :func:`load_model`. A Keras file name (``x.h5``, ``x.keras``) is refused: this
        is not a Keras file. ``fingerprint``: any string naming the model, checked by :meth:`load`
        when it is given one too. Saved during ``fit`` (a callback), it records fit's data position
        too (module docstring), so a resume from it is exact mid-epoch."""
        saving.check_path(directory)
        self._require_built("save")
        loss, metrics, from_logits = self._compile
        compile_config = saving.compile_config(loss, *self._optimizer, metrics, from_logits)
        return saving.save(directory, self.model, self.state, self._flat_mask, self.epoch, self._history_so_far(),
                           compile_config, fingerprint, self._data_seed, self._input_shape, self._data_state())

    def _data_state(self) -> dict | None:
        """JSON of where ``fit`` is in its data: ``epoch``, ``step`` (batches done in it), ``iterator``
        (grain's ``get_state()``, or None), the epoch's log ``sums`` and sample ``count``; None outside fit."""
        if self._data_position is None:
            return None
        epoch, step, iterator, sums, count = self._data_position
        sums = {k: {"dtype": str(np.asarray(v).dtype), "value": np.asarray(v).tolist()} for k, v in sums.items()}
        return {"epoch": epoch, "step": step, "iterator": None if iterator is None else get_iterator_state(iterator),
                "sums": sums, "count": count}

    def _take_resume_from(self, initial_epoch: int) -> dict | None:
        """The loaded checkpoint's data position if ``fit`` starts in its epoch (consumed: used once)."""
        resume, self._resume_from = self._resume_from, None
        if resume is None or resume["epoch"] == initial_epoch:
            return resume
        if resume["step"] > 0:
            warnings.warn(f"fit(initial_epoch={initial_epoch}): the checkpoint was written after batch "
                          f"{resume['step']} of epoch {resume['epoch']}; epoch {initial_epoch} starts from its first "
                          f"batch (pass initial_epoch=trainer.epoch to continue where it stopped)", stacklevel=3)
        return None

    def _history_so_far(self) -> History:
        """The history including the epoch whose end callbacks are running (Keras' CallbackList calls
        History last, so a ModelCheckpoint saving at that epoch's end comes before it is recorded)."""
        if self._ending_epoch is None or self._ending_epoch[0] in self.history.epoch:
            return self.history
        history = History(self.history.history, self.history.epoch)
        history.on_epoch_end(*self._ending_epoch)
        return history

    def load(self, directory: str | os.PathLike, *, fingerprint: str | None = None,
             input_shape: Sequence[int] | None = None, step: int | None = None, best: bool = False) -> "Trainer":
        """Replace this trainer's state, mask, epoch and history with the checkpoint's; continue
        with ``fit(..., initial_epoch=trainer.epoch)``.

        The checkpoint's variables (paths, shapes, dtypes) must be this model's: those of the built
        trainer, else of ``model.init`` on one input of ``input_shape`` (default the model's own
        ``input_shape``, else the one the checkpoint was trained on); only a checkpoint written before
        minicnn recorded that, loaded into an unbuilt trainer of a model without one, is not checked.
        A directory of numbered steps (``ModelCheckpoint(max_to_keep=/keep_best=)``) loads its latest
        step, step ``step``, or with ``best=True`` the step with the best monitored value.
        """
        if isinstance(directory, nn.Module):
            raise TypeError("Trainer.load(directory): got a model; pass the checkpoint's path")
        directory = checkpoint.resolve(directory, step, best)
        ckpt = checkpoint.load(directory)
        checkpoint.check_fingerprint(directory, ckpt["fingerprint"], fingerprint)
        input_shape = input_shape or getattr(self.model, "input_shape", None) or ckpt["input_shape"]
        if self.built:
            checkpoint.check_model(directory, ckpt["state"], self.state)
        elif input_shape is not None:
            checkpoint.check_model(directory, ckpt["state"], inspector.abstract_variables(self.model, tuple(input_shape)))
        saved = ckpt["state"]
        self.state = TrainState(params=_copy(saved["params"]), batch_stats=_copy(saved["batch_stats"]),
                                opt_state=None, step=jnp.asarray(saved["step"]), rng=jnp.asarray(saved["rng"]))
        self.set_trainable(traverse_util.unflatten_dict(ckpt["flat_mask"]))
        self.state["opt_state"] = self._placed(
            _copy(checkpoint.restore_opt_state(self.state["opt_state"], saved["opt_state"])))
        self.epoch, self.history, self._data_seed = ckpt["epoch"], ckpt["history"], ckpt["data_seed"]
        self._resume_from = ckpt["data_state"]
        self._input_shape = ckpt["input_shape"] or self._input_shape
        return self

    @classmethod
    def restore(cls, directory: str | os.PathLike, model: nn.Module | None = None, loss=None, optimizer=None,
                metrics=None, *, fingerprint: str | None = None, input_shape: Sequence[int] | None = None,
                step: int | None = None, best: bool = False, **kwargs) -> "Trainer":
        """A trainer with the model saved in ``directory`` loaded (see :func:`load_model`).

        model: None rebuilds it from the saved architecture; given, it must have the saved variables.
        loss/optimizer/metrics (and ``optimizer_kwargs``, ``from_logits``): None takes the saved ones
        (those that were names), else the Trainer's defaults. ``directory`` may also be a Keras 3
        ``.keras`` file, or a ``.weights.h5`` with ``model``. ``fingerprint``, ``input_shape``, ``step``
        and ``best`` as in :meth:`load`."""
        if isinstance(directory, nn.Module) or isinstance(model, (str, os.PathLike)):
            raise TypeError("Trainer.restore(path, model): the path comes first; got "
                            f"({type(directory).__name__}, {type(model).__name__})")
        given = {k: v for k, v in dict(loss=loss, optimizer=optimizer, metrics=metrics, **kwargs).items()
                 if v is not None}
        if saving.is_keras_file(directory):
            model, saved, variables = saving.read_keras(directory, model)
            return cls(model, **{**saved, **given, "variables": variables})
        directory = checkpoint.resolve(directory, step, best)
        model, saved = saving.read_saved(directory, model)
        return cls(model, **{**saved, **given}).load(directory, fingerprint=fingerprint, input_shape=input_shape)


def load_model(path: str | os.PathLike, model: nn.Module | None = None, **kwargs) -> Trainer:
    """Keras' ``keras.models.load_model``: the :class:`Trainer` saved by :meth:`Trainer.save` in ``path``,
    its model rebuilt from the saved architecture, with the weights, optimizer state, trainable mask,
    epoch, history and compile arguments, ready to ``fit``/``evaluate``/``predict``.

    ``path`` may also be a Keras 3 ``.keras`` file of a ``Sequential`` of layers minicnn has (the
    lecture's small convnet; its compile arguments when they are names, weights and ``trainable``
    flags; the optimizer state starts afresh). ``model`` and ``kwargs`` as in :meth:`Trainer.restore`
    (``loss=`` etc. replace the saved compile arguments, needed where those were objects)."""
    return Trainer.restore(path, model, **kwargs)
