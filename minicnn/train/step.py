"""The pure train and eval steps: ``step(state, batch) -> (state, logs)`` over a pytree state.

Usable without the ``Trainer`` (which is the Keras loop and callbacks around them)::

    tx = masks.freeze(optax.rmsprop(1e-4), mask)
    state = init_state(variables, tx, jax.random.key(0))
    step = ops.jit(make_train_step(model, losses.get("binary_crossentropy"), tx, mask), donate_argnums=0)
    for x, y in batches:
        state, logs = step(state, (x, y))

``minicnn.ops.jit`` is ``jax.jit`` with XLA's Eigen convolutions on CPU: under plain ``jax.jit``
jaxlib 0.10 gives the filter gradients to YNNPACK, 2.6-6.4x slower (benchmarks/NOTES.md).

Freezing: the step splits ``params`` by the mask and differentiates the loss with respect to the
trainable part only (the frozen part is a constant, so XLA computes no gradient for it and
backpropagation stops at the lowest trainable layer), runs BatchNormalization layers whose
parameters are all frozen in inference mode (Keras >= 2.1.3), and updates with the optimizer built by
:func:`minicnn.masks.freeze`, so frozen leaves have no optimizer state and no decay or clipping.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypedDict

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from minicnn import masks
from minicnn.layers import BatchNormalization

__all__ = ["TrainState", "init_state", "apply_model", "make_train_step", "make_eval_step"]

LossFn = Callable[[Any, Any], jax.Array]  # (y_true, y_pred) -> per-sample (N,)


class TrainState(TypedDict):
    """The whole training state, a plain pytree (jit, donate, replicate and checkpoint it as is)."""
    params: Any
    batch_stats: Any
    opt_state: Any
    step: jax.Array   # () int32, optimizer steps taken
    rng: jax.Array    # the dropout stream's key, split every step


def init_state(variables: Mapping, tx: optax.GradientTransformation, rng) -> TrainState:
    """A fresh state: ``variables``' params and batch_stats, ``tx.init(params)``, step 0."""
    params = dict(variables.get("params", {}))
    return TrainState(params=params, batch_stats=dict(variables.get("batch_stats", {})), opt_state=tx.init(params),
                      step=jnp.zeros([], jnp.int32), rng=rng)


def apply_model(model: nn.Module, params, batch_stats, x, *, train: bool, frozen: frozenset = frozenset(),
                rngs=None):
    """``(y, new batch_stats)``: the forward pass; in training, BatchNormalization layers whose path is in
    ``frozen`` (:func:`minicnn.masks.frozen_modules`) run with ``train=False``.

    x: (N, ...) the model's input; y: its output.
    """
    variables = {"params": params, "batch_stats": batch_stats}
    if not train:
        return model.apply(variables, x, train=False), batch_stats

    def freeze_bn(next_fun, args, kwargs, context):
        module = context.module
        if (isinstance(module, BatchNormalization) and context.method_name == "__call__"
                and module.scope is not None and tuple(module.scope.path) in frozen):
            kwargs = {**kwargs, "train": False}
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(freeze_bn):
        y, updates = model.apply(variables, x, train=True, rngs=rngs, mutable=["batch_stats"])
    return y, updates.get("batch_stats", batch_stats)


def make_train_step(model: nn.Module, loss_fn: LossFn, tx: optax.GradientTransformation, mask: masks.Mask = None,
                    metrics: Mapping[str, LossFn] | None = None):
    """``step(state, (x, y), weight=None) -> (state, logs)``: one optimizer step, pure (jit and donate it).

    loss_fn, metrics: per-sample ``fn(y_true, y_pred) -> (N, ...)`` (:mod:`minicnn.train.losses`,
    :mod:`minicnn.train.metrics`); logs are their batch means over the sample axis, ``{"loss": (), name: (...)}``.
    tx: built with :func:`minicnn.masks.freeze` over the same ``mask`` (``init_state`` with it).
    batch: ``(x, y)`` or ``(x, y, sample_weight)`` with sample_weight (N,): the loss is then Keras'
    ``sum(sample_weight * loss) / N``; metrics stay unweighted (Keras' ``metrics``, not ``weighted_metrics``).
    weight: None, or (N,) 1 on real rows and 0 on padding rows, which then count in no loss, metric or
    gradient (means are over the real rows), so a short batch padded to full size runs the same program.
    Padding rows still pass through the model: BatchNormalization layers in training mode would count
    them in their batch statistics (the Trainer pads only when none trains).
    """
    metrics = dict(metrics or {})

    def mean(values, weight):  # (N, ...) -> (...), over the rows whose weight is 1
        if weight is None:
            return jnp.mean(values, axis=0)
        real = weight.reshape(weight.shape + (1,) * (values.ndim - 1)) > 0
        return jnp.sum(jnp.where(real, values, 0), axis=0) / jnp.sum(weight)

    def step(state: TrainState, batch, weight=None) -> tuple[TrainState, dict]:
        x, y, *sample_weight = batch
        flat = masks.flat_mask(state["params"], mask)
        rng, dropout_key = jax.random.split(state["rng"])
        trainable, frozen = masks.split(state["params"], flat)

        def objective(trainable):
            pred, batch_stats = apply_model(model, masks.merge(trainable, frozen), state["batch_stats"], x,
                                            train=True, frozen=masks.frozen_modules(flat),
                                            rngs={"dropout": dropout_key})
            per_sample = loss_fn(y, pred)
            loss = mean(per_sample * sample_weight[0] if sample_weight else per_sample, weight)
            return loss, (pred, batch_stats)

        (loss, (pred, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
        # frozen leaves: zero gradients (constants, nothing computed) that the frozen partition discards
        full = masks.merge(grads, jax.tree_util.tree_map(jnp.zeros_like, frozen))
        updates, opt_state = tx.update(full, state["opt_state"], state["params"])
        trainable = optax.apply_updates(trainable, masks.split(updates, flat)[0])  # frozen leaves untouched
        new = TrainState(params=masks.merge(trainable, frozen), batch_stats=batch_stats, opt_state=opt_state,
                         step=state["step"] + 1, rng=rng)
        return new, {"loss": loss, **{k: mean(fn(y, pred), weight) for k, fn in metrics.items()}}

    return step


def make_eval_step(model: nn.Module, loss_fn: LossFn, metrics: Mapping[str, LossFn] | None = None):
    """``step(variables, batch, weight) -> sums``: weighted sums over the sample axis of the loss and
    metrics in inference mode (``weight`` (N,) is 0 on padding rows, so one compiled program serves a
    smaller last batch). batch: ``(x, y)`` or ``(x, y, sample_weight)``; sample_weight (N,) weights
    the loss only, as in the train step."""
    metrics = dict(metrics or {})

    def weighted_sum(w, values):  # values (N, ...): w broadcast over the trailing axes
        return jnp.sum(w.reshape(w.shape + (1,) * (values.ndim - 1)) * values, axis=0)

    def step(variables, batch, weight):
        x, y, *sample_weight = batch
        pred, _ = apply_model(model, variables["params"], variables.get("batch_stats", {}), x, train=False)
        loss_weight = weight * sample_weight[0] if sample_weight else weight
        return {"loss": jnp.sum(loss_weight * loss_fn(y, pred)),
                **{k: weighted_sum(weight, fn(y, pred)) for k, fn in metrics.items()}}

    return step
