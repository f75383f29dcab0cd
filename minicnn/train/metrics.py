"""Keras' accuracy metrics as pure per-sample functions: ``fn(y_true, y_pred) -> (N,)`` of 0/1.

The trainer averages them over all samples of an epoch (padded samples masked out), as Keras'
``MeanMetricWrapper`` does.
"""

from __future__ import annotations

from collections.abc import Callable
import functools

import jax.numpy as jnp

from minicnn.train.losses import match_rank

__all__ = ["binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy",
           "top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy", "get"]


def binary_accuracy(y_true, y_pred, threshold: float = 0.5):
    """y_pred: (N, ..., K) probabilities; a prediction is 1 when ``y_pred > threshold`` -> (N, ...)."""
    y_pred = jnp.asarray(y_pred)
    y_true = match_rank(y_true, y_pred)
    hit = (y_pred > threshold).astype(jnp.float32) == y_true.astype(jnp.float32)
    return jnp.mean(hit.astype(jnp.float32), axis=-1)


def categorical_accuracy(y_true, y_pred):
    """y_true: (N, K) one-hot; y_pred: (N, K) -> (N,) whether the argmaxes agree."""
    return (jnp.argmax(y_true, -1) == jnp.argmax(y_pred, -1)).astype(jnp.float32)


def _sparse(y_true, y_pred):
    y_true = jnp.asarray(y_true)
    if y_true.ndim == y_pred.ndim and y_true.shape[-1] == 1:
        y_true = y_true[..., 0]
    return y_true.astype(jnp.int32)


def sparse_categorical_accuracy(y_true, y_pred):
    """y_true: (N,) class ids; y_pred: (N, K) -> (N,)."""
    return (_sparse(y_true, y_pred) == jnp.argmax(y_pred, -1)).astype(jnp.float32)


def sparse_top_k_categorical_accuracy(y_true, y_pred, k: int = 5):
    """y_true: (N,) class ids; y_pred: (N, K) -> (N,) whether the true class scores among the top k.

    The true class is in the top k when fewer than k classes score strictly higher (Keras'
    ``in_top_k``: ties go in its favour).
    """
    y_pred = jnp.asarray(y_pred)
    true_score = jnp.take_along_axis(y_pred, _sparse(y_true, y_pred)[..., None], axis=-1)
    return (jnp.sum(y_pred > true_score, axis=-1) < k).astype(jnp.float32)


def top_k_categorical_accuracy(y_true, y_pred, k: int = 5):
    """y_true: (N, K) one-hot; y_pred: (N, K) -> (N,)."""
    return sparse_top_k_categorical_accuracy(jnp.argmax(y_true, -1), y_pred, k)


_BY_NAME = {f.__name__: f for f in (binary_accuracy, categorical_accuracy, sparse_categorical_accuracy,
                                     top_k_categorical_accuracy, sparse_top_k_categorical_accuracy)}
# What Keras' compile(metrics=["accuracy"]) resolves to for each loss.
_ACCURACY_FOR_LOSS = {"binary_crossentropy": binary_accuracy,
                      "categorical_crossentropy": categorical_accuracy,
                      "sparse_categorical_crossentropy": sparse_categorical_accuracy}


def get(metric: str | Callable, loss_name: str | None = None) -> tuple[str, Callable]:
    """``(log_name, fn)`` for a metric name or callable.

    ``"accuracy"``/``"acc"`` picks the accuracy that fits the loss (binary, categorical or sparse)
    and is logged as ``"accuracy"``, like Keras.
    """
    if callable(metric):
        return getattr(metric, "__name__", "metric"), metric
    if metric in ("accuracy", "acc"):
        if loss_name not in _ACCURACY_FOR_LOSS:
            raise ValueError(f'metric "accuracy" is ambiguous for loss {loss_name!r}; name one of '
                             f"{sorted(_BY_NAME)}")
        return "accuracy", _ACCURACY_FOR_LOSS[loss_name]
    if metric in ("top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy"):
        return metric, functools.partial(_BY_NAME[metric], k=5)
    if metric not in _BY_NAME:
        raise ValueError(f"unknown metric {metric!r}; expected 'accuracy', one of {sorted(_BY_NAME)} "
                         f"or a callable")
    return metric, _BY_NAME[metric]
