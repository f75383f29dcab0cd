"""Keras' metrics as pure per-sample functions ``fn(y_true, y_pred) -> (N, ...)``.

Mean metrics (accuracies, the losses used as metrics) give one value per sample; the trainer
averages them over all samples of an epoch (padded samples masked out), as Keras'
``MeanMetricWrapper`` does. Streaming metrics (``AUC``, ``Precision``, ``Recall``) give each sample's
confusion counts, (N, T, 4) for T thresholds as ``[tp, fp, tn, fn]``; the trainer averages those
over the epoch too and :class:`Metric`'s ``result`` turns the epoch's counts into the value (a ratio,
so averaging instead of summing changes nothing), exactly as Keras accumulates its confusion
variables over the epoch and computes the metric from the totals, never a mean of batch values.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import re
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from minicnn.train import losses
from minicnn.train.losses import EPSILON, match_rank

__all__ = ["binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy",
           "top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy", "confusion_counts",
           "precision", "recall", "auc", "Metric", "get", "direction"]


class Metric(NamedTuple):
    """A compiled metric: ``fn(y_true, y_pred) -> (N, ...)`` per-sample values, ``result(epoch mean of
    them) -> ()`` (None: the mean is the value)."""
    name: str
    fn: Callable
    result: Callable | None = None


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


def confusion_counts(y_true, y_pred, thresholds):
    """Each sample's ``[tp, fp, tn, fn]`` at every threshold, Keras' ``update_confusion_matrix_variables``:
    every entry of a sample counts (a prediction is positive when ``y_pred > threshold``, a label when
    it is non-zero).

    y_true, y_pred: (N, ...); thresholds: (T,) -> (N, T, 4) float32 counts.
    """
    y_pred = jnp.asarray(y_pred, jnp.float32)
    y_true = match_rank(y_true, y_pred)
    n = y_pred.shape[0]
    label = (y_true.reshape(n, -1, 1) != 0)
    predicted = y_pred.reshape(n, -1, 1) > jnp.asarray(thresholds, jnp.float32)
    counts = [predicted & label, predicted & ~label, ~predicted & ~label, ~predicted & label]
    return jnp.stack([jnp.sum(c, axis=1) for c in counts], axis=-1).astype(jnp.float32)


def _ratio(a, b):
    """Keras' ``divide_no_nan``: 0 where ``b`` is 0."""
    return jnp.where(b == 0, 0.0, a / jnp.where(b == 0, 1.0, b))


def precision(counts):
    """tp / (tp + fp) from (T, 4) counts at one threshold -> ()."""
    tp, fp = counts[0, 0], counts[0, 1]
    return _ratio(tp, tp + fp)


def recall(counts):
    """tp / (tp + fn) from (T, 4) counts at one threshold -> ()."""
    tp, fn = counts[0, 0], counts[0, 3]
    return _ratio(tp, tp + fn)


def auc(counts):
    """Area under the ROC curve from (T, 4) counts at increasing thresholds, Keras' ``AUC()``
    (Riemann sum with interpolated heights) -> ()."""
    tp, fp, tn, fn = (counts[:, i] for i in range(4))
    tpr, fpr = _ratio(tp, tp + fn), _ratio(fp, fp + tn)
    return jnp.sum((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2.0)


def auc_thresholds(num_thresholds: int = 200) -> np.ndarray:
    """Keras' ``AUC`` thresholds: ``num_thresholds - 2`` evenly spaced in (0, 1), then -eps and 1 + eps."""
    inner = [(i + 1) * 1.0 / (num_thresholds - 1) for i in range(num_thresholds - 2)]
    return np.array([0.0 - EPSILON, *inner, 1.0 + EPSILON], np.float32)


def _streaming(name: str, thresholds, result: Callable) -> Metric:
    return Metric(name, functools.partial(confusion_counts, thresholds=np.asarray(thresholds, np.float32)), result)


# Keras' confusion-matrix metrics with their default arguments, by the names keras.metrics.get accepts
_STREAMING = {"auc": (auc_thresholds(), auc), "precision": ([0.5], precision), "recall": ([0.5], recall)}

_BY_NAME = {f.__name__: f for f in (binary_accuracy, categorical_accuracy, sparse_categorical_accuracy,
                                     top_k_categorical_accuracy, sparse_top_k_categorical_accuracy)}
# What Keras' compile(metrics=["accuracy"]) resolves to for each loss.
_ACCURACY_FOR_LOSS = {"binary_crossentropy": binary_accuracy,
                      "categorical_crossentropy": categorical_accuracy,
                      "sparse_categorical_crossentropy": sparse_categorical_accuracy}


def _snake(name: str) -> str:
    """Keras' ``to_snake_case`` of class names: ``"TopKCategoricalAccuracy"`` -> ``"top_k_categorical_accuracy"``,
    ``"AUC"`` -> ``"auc"``."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def get(metric: str | Callable, loss_name: str | None = None) -> Metric:
    """The :class:`Metric` for a name or callable, logged under the name the user wrote, as Keras 3 does.

    ``"accuracy"``/``"acc"`` picks the accuracy that fits the loss (binary, categorical or sparse);
    ``metrics=["acc"]`` logs ``acc``/``val_acc``. Keras' metric names, class names and short aliases
    are accepted (``"AUC"``, ``"auc"``, ``"Precision"``, ``"mse"``, ``"TopKCategoricalAccuracy"`` ...);
    the losses work as mean metrics. A callable is logged as its ``__name__``.
    """
    if callable(metric):
        return Metric(getattr(metric, "__name__", "metric"), metric)
    if not isinstance(metric, str):
        raise TypeError(f"metric {metric!r}: expected a name or a callable fn(y_true, y_pred) -> (N,)")
    if metric.lower() in ("accuracy", "acc"):
        if loss_name not in _ACCURACY_FOR_LOSS:
            raise ValueError(f'metric {metric!r} is ambiguous for loss {loss_name!r}; name one of '
                             f"{sorted(_BY_NAME)}")
        return Metric(metric, _ACCURACY_FOR_LOSS[loss_name])
    key = metric if metric in losses.ALIASES else _snake(metric)
    if key in _STREAMING:
        return _streaming(metric, *_STREAMING[key])
    if key in ("top_k_categorical_accuracy", "sparse_top_k_categorical_accuracy"):
        return Metric(metric, functools.partial(_BY_NAME[key], k=5))
    if key in _BY_NAME:
        return Metric(metric, _BY_NAME[key])
    loss = losses.by_name(metric)
    if loss is not None:
        return Metric(metric, loss)
    raise ValueError(f"unknown metric {metric!r}; expected 'accuracy', one of {sorted(_BY_NAME)}, "
                     f"{sorted(_STREAMING)}, a loss name, or a callable")


def direction(name: str) -> str | None:
    """Whether a logged quantity should go ``"up"`` or ``"down"`` (Keras' ``_direction``, which its
    callbacks' ``mode="auto"`` reads), from its log name (``val_`` prefix ignored); None when unknown.

    The loss and the losses used as metrics go down; accuracies (any name with ``acc``), AUC,
    precision and recall go up.
    """
    name = name.removeprefix("val_")
    if name == "loss" or losses.by_name(name) is not None:
        return "down"
    if "acc" in name.lower() or (name if name in losses.ALIASES else _snake(name)) in _STREAMING:
        return "up"
    return None
