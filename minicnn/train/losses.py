"""Keras' losses as pure per-sample functions: cross-entropies, squared/absolute error, hinges, KL divergence.

Each loss takes ``(y_true, y_pred)`` and returns one value per sample, shape (N,) (Keras averages
the elementwise binary, squared, absolute and hinge losses over the last axis, and sums the
categorical ones over classes). The trainer averages them over the batch, as Keras'
``"sum_over_batch_size"`` reduction does (with sample weights: ``sum(w * loss) / N``).

``from_logits=False`` matches Keras exactly, including its clipping of probabilities to
``[1e-7, 1 - 1e-7]``; ``from_logits=True`` is computed with ``log_sigmoid``/``log_softmax`` and is
finite for any finite logit.
"""

from __future__ import annotations

from collections.abc import Callable
import functools

import jax
import jax.numpy as jnp
import numpy as np

EPSILON = 1e-7  # keras.backend.epsilon()

__all__ = ["binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy",
           "mean_squared_error", "mean_absolute_error", "hinge", "squared_hinge", "categorical_hinge",
           "kl_divergence", "get", "match_rank", "check_labels", "EPSILON"]


def match_rank(y_true, y_pred):
    """Give labels of shape (N,) the (N, 1) shape of a one-unit output, as Keras does."""
    y_true = jnp.asarray(y_true)
    if y_true.ndim == y_pred.ndim - 1 and y_pred.shape[-1] == 1:
        y_true = y_true[..., None]
    return y_true


def binary_crossentropy(y_true, y_pred, from_logits: bool = False):
    """y_true: (N, ...) in [0, 1]; y_pred: (N, ..., K) probabilities or logits -> (N, ...) mean over K."""
    y_pred = jnp.asarray(y_pred)
    y_true = match_rank(y_true, y_pred).astype(y_pred.dtype)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"binary_crossentropy: y_true shape {y_true.shape} does not match "
                         f"y_pred shape {y_pred.shape}")
    if from_logits:
        elem = -y_true * jax.nn.log_sigmoid(y_pred) - (1.0 - y_true) * jax.nn.log_sigmoid(-y_pred)
    else:
        p = jnp.clip(y_pred, EPSILON, 1.0 - EPSILON)
        elem = -(y_true * jnp.log(p) + (1.0 - y_true) * jnp.log(1.0 - p))
    return jnp.mean(elem, axis=-1)


def _log_probs(y_pred, from_logits):
    if from_logits:
        return jax.nn.log_softmax(y_pred, axis=-1)
    p = y_pred / jnp.sum(y_pred, axis=-1, keepdims=True)
    return jnp.log(jnp.clip(p, EPSILON, 1.0 - EPSILON))


def categorical_crossentropy(y_true, y_pred, from_logits: bool = False):
    """y_true: (N, K) one-hot (or soft) labels; y_pred: (N, K) probabilities or logits -> (N,)."""
    y_pred = jnp.asarray(y_pred)
    y_true = jnp.asarray(y_true, y_pred.dtype)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"categorical_crossentropy: y_true shape {y_true.shape} does not match "
                         f"y_pred shape {y_pred.shape} (integer labels need sparse_categorical_crossentropy)")
    return -jnp.sum(y_true * _log_probs(y_pred, from_logits), axis=-1)


def sparse_categorical_crossentropy(y_true, y_pred, from_logits: bool = False):
    """y_true: (N,) or (N, 1) integer class ids; y_pred: (N, K) probabilities or logits -> (N,)."""
    y_pred = jnp.asarray(y_pred)
    y_true = jnp.asarray(y_true).astype(jnp.int32)
    if y_true.ndim == y_pred.ndim and y_true.shape[-1] == 1:
        y_true = y_true[..., 0]
    if y_true.shape != y_pred.shape[:-1]:
        raise ValueError(f"sparse_categorical_crossentropy: y_true shape {y_true.shape} does not match "
                         f"y_pred shape {y_pred.shape} without its class axis")
    log_p = _log_probs(y_pred, from_logits)
    return -jnp.take_along_axis(log_p, y_true[..., None], axis=-1)[..., 0]


def _same_rank(y_true, y_pred):
    """Float ``(y_true, y_pred)`` of one rank: labels (N,) meet a one-unit output (N, 1) (Keras'
    ``squeeze_or_expand_to_same_rank``)."""
    y_pred = jnp.asarray(y_pred)
    y_true = match_rank(y_true, y_pred).astype(y_pred.dtype)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true shape {y_true.shape} does not match y_pred shape {y_pred.shape}")
    return y_true, y_pred


def mean_squared_error(y_true, y_pred):
    """y_true, y_pred: (N, ..., K) -> (N, ...) mean of squared differences over K."""
    y_true, y_pred = _same_rank(y_true, y_pred)
    return jnp.mean(jnp.square(y_true - y_pred), axis=-1)


def mean_absolute_error(y_true, y_pred):
    """y_true, y_pred: (N, ..., K) -> (N, ...) mean of absolute differences over K."""
    y_true, y_pred = _same_rank(y_true, y_pred)
    return jnp.mean(jnp.abs(y_true - y_pred), axis=-1)


def _hinge_labels(y_true):
    """0/1 labels become -1/1 when every label of the batch is 0 or 1; others pass unchanged (as Keras)."""
    binary = jnp.all((y_true == 0) | (y_true == 1))
    return jnp.where(binary, 2.0 * y_true - 1.0, y_true)


def hinge(y_true, y_pred):
    """y_true: (N, K) labels in {-1, 1} (or {0, 1}); y_pred: (N, K) scores -> (N,) mean of max(1 - y*p, 0)."""
    y_true, y_pred = _same_rank(y_true, y_pred)
    return jnp.mean(jnp.maximum(1.0 - _hinge_labels(y_true) * y_pred, 0.0), axis=-1)


def squared_hinge(y_true, y_pred):
    """As :func:`hinge`, squared before the mean."""
    y_true, y_pred = _same_rank(y_true, y_pred)
    return jnp.mean(jnp.square(jnp.maximum(1.0 - _hinge_labels(y_true) * y_pred, 0.0)), axis=-1)


def categorical_hinge(y_true, y_pred):
    """y_true: (N, K) one-hot; y_pred: (N, K) -> (N,) ``max(max_wrong - true + 1, 0)``."""
    y_pred = jnp.asarray(y_pred)
    y_true = jnp.asarray(y_true, y_pred.dtype)
    pos = jnp.sum(y_true * y_pred, axis=-1)
    neg = jnp.max((1.0 - y_true) * y_pred, axis=-1)
    return jnp.maximum(neg - pos + 1.0, 0.0)


def kl_divergence(y_true, y_pred):
    """y_true, y_pred: (N, K) distributions, both clipped to [1e-7, 1] as Keras -> (N,) sum of t log(t / p)."""
    y_pred = jnp.asarray(y_pred)
    y_true = jnp.clip(jnp.asarray(y_true, y_pred.dtype), EPSILON, 1.0)
    y_pred = jnp.clip(y_pred, EPSILON, 1.0)
    return jnp.sum(y_true * jnp.log(y_true / y_pred), axis=-1)


def check_labels(loss: Callable, y_true, classes: Callable[[], int], batch: int) -> None:
    """Raise ValueError when a batch's labels are outside what ``loss`` accepts.

    Inside a jitted step they cannot raise: a sparse label of 7 with 3 classes gives NaN and -1
    trains as the last class (negative indexing). Keras with TensorFlow raises, so minicnn does too.
    ``sparse_categorical_crossentropy``: ids in ``[0, classes())`` (``classes`` is called only for
    this loss); ``binary_crossentropy``: values in ``[0, 1]``; other losses and callables are the
    caller's business. NumPy labels are checked on the host; JAX arrays by their min and max (two
    scalars back from the device), pulled to the host only to name the offending value.
    y_true: (N,) or (N, ...) labels; batch: index of the batch in the epoch, for the message.
    """
    name = getattr(loss, "__name__", None)
    if name not in ("sparse_categorical_crossentropy", "binary_crossentropy") or np.size(y_true) == 0:
        return
    sparse = name == "sparse_categorical_crossentropy"
    upper = classes() if sparse else 1

    def inside(v):  # NaN is never inside
        return (v >= 0) & ((v < upper) if sparse else (v <= upper))

    if isinstance(y_true, jax.Array) and all(inside(v) for v in jax.device_get((jnp.min(y_true), jnp.max(y_true)))):
        return
    y = np.asarray(y_true).reshape(-1)
    bad = np.flatnonzero(~inside(y))
    if bad.size:
        want = f"class ids in [0, {upper})" if sparse else "values in [0, 1]"
        raise ValueError(f"{name}: batch {batch} has label {y[bad[0]].item()!r} at position {bad[0]} "
                         f"({bad.size} of {y.size} out of range); expected {want}")


_CROSSENTROPIES = (binary_crossentropy, categorical_crossentropy, sparse_categorical_crossentropy)
_OTHERS = (mean_squared_error, mean_absolute_error, hinge, squared_hinge, categorical_hinge, kl_divergence)
_BY_NAME = {f.__name__: f for f in (*_CROSSENTROPIES, *_OTHERS)}
# Keras' aliases (keras.losses.ALL_OBJECTS_DICT): short names and the loss classes' names
ALIASES = {"bce": "binary_crossentropy", "BCE": "binary_crossentropy", "mse": "mean_squared_error",
           "MSE": "mean_squared_error", "mae": "mean_absolute_error", "MAE": "mean_absolute_error",
           "kld": "kl_divergence", "KLD": "kl_divergence", "BinaryCrossentropy": "binary_crossentropy",
           "CategoricalCrossentropy": "categorical_crossentropy",
           "SparseCategoricalCrossentropy": "sparse_categorical_crossentropy", "MeanSquaredError": "mean_squared_error",
           "MeanAbsoluteError": "mean_absolute_error", "Hinge": "hinge", "SquaredHinge": "squared_hinge",
           "CategoricalHinge": "categorical_hinge", "KLDivergence": "kl_divergence"}


def by_name(name: str) -> Callable | None:
    """The per-sample loss a Keras name or alias stands for (``"mse"`` -> :func:`mean_squared_error`), or None."""
    return _BY_NAME.get(ALIASES.get(name, name))


def get(loss: str | Callable, from_logits: bool = False) -> Callable:
    """A per-sample loss ``fn(y_true, y_pred) -> (N,)`` from a Keras name or a callable.

    A callable is used as it is; ``fn.__name__`` (or the name) tells the trainer which accuracy
    ``"accuracy"`` means. ``from_logits`` applies to the cross-entropies only (as in Keras, whose
    other losses have no such argument).
    """
    if callable(loss):
        return loss
    fn = by_name(loss) if isinstance(loss, str) else None
    if fn is None:
        raise ValueError(f"unknown loss {loss!r}; expected one of {sorted(_BY_NAME)}, an alias "
                         f"({', '.join(sorted(ALIASES))}) or a callable")
    if fn not in _CROSSENTROPIES:
        if from_logits:
            raise ValueError(f"loss {loss!r} takes no from_logits (only the cross-entropies do)")
        return fn
    partial = functools.partial(fn, from_logits=from_logits)
    functools.update_wrapper(partial, fn)
    return partial
