"""Keras' cross-entropy losses as pure per-sample functions.

Each loss takes ``(y_true, y_pred)`` and returns one value per sample, shape (N,) (Keras averages
the elementwise binary loss over the last axis, and sums the categorical one over classes). The
trainer averages them over the batch, as Keras' ``"sum_over_batch_size"`` reduction does.

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
           "get", "match_rank", "check_labels", "EPSILON"]


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


_BY_NAME = {f.__name__: f for f in (binary_crossentropy, categorical_crossentropy,
                                     sparse_categorical_crossentropy)}


def get(loss: str | Callable, from_logits: bool = False) -> Callable:
    """A per-sample loss ``fn(y_true, y_pred) -> (N,)`` from a Keras name or a callable.

    A callable is used as it is; ``fn.__name__`` (or the name) tells the trainer which accuracy
    ``"accuracy"`` means.
    """
    if callable(loss):
        return loss
    if loss not in _BY_NAME:
        raise ValueError(f"unknown loss {loss!r}; expected one of {sorted(_BY_NAME)} or a callable")
    fn = functools.partial(_BY_NAME[loss], from_logits=from_logits)
    functools.update_wrapper(fn, _BY_NAME[loss])
    return fn
