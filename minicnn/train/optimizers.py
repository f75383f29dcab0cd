"""Optimizers by Keras name, with Keras 3's defaults and update formulas, as optax transforms.

Every optimizer from :func:`get` is wrapped in ``optax.inject_hyperparams`` so the learning rate is
a value in the optimizer state that callbacks read and change (:func:`get_learning_rate`,
:func:`set_learning_rate`) without recompiling the train step.

Keras 3's formulas (``keras/src/optimizers``), per parameter, step t = 1, 2, ...:

- RMSprop: ``v = rho v + (1 - rho) g^2; w -= lr g / sqrt(v + eps)`` (epsilon inside the root), which
  is ``optax.rmsprop(lr, decay=rho, eps=eps, eps_in_sqrt=True)``.
- Adam: ``m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
  w -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``. The bias correction multiplies the
  learning rate, so epsilon is added to the uncorrected ``sqrt(v)``; ``optax.adam`` adds it to the
  corrected one, i.e. its epsilon is effectively ``sqrt(1 - b2^t)`` times larger. :func:`keras_adam`
  implements Keras' placement.
- SGD: ``m = momentum m - lr g; w += m`` (nesterov: ``w += momentum m - lr g``), which is
  ``optax.sgd(lr, momentum, nesterov)`` for a constant learning rate.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["get", "rmsprop", "adam", "sgd", "keras_adam", "scale_by_keras_adam",
           "get_learning_rate", "set_learning_rate"]


class KerasAdamState(NamedTuple):
    count: jax.Array  # steps taken so far
    mu: optax.Updates
    nu: optax.Updates


def scale_by_keras_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7) -> optax.GradientTransformation:
    """Keras 3's Adam direction ``sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`` (no learning rate)."""

    def init(params):
        zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)  # noqa: E731 (two buffers: both are donated)
        return KerasAdamState(jnp.zeros([], jnp.int32), zeros(), zeros())

    def update(grads, state, params=None):
        del params
        mu = jax.tree_util.tree_map(lambda m, g: m + (g - m) * (1 - b1), state.mu, grads)
        nu = jax.tree_util.tree_map(lambda v, g: v + (jnp.square(g) - v) * (1 - b2), state.nu, grads)
        count = state.count + 1
        t = count.astype(jnp.float32)
        alpha = jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        updates = jax.tree_util.tree_map(lambda m, v: m * alpha / (jnp.sqrt(v) + eps), mu, nu)
        return updates, KerasAdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def keras_adam(learning_rate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7) -> optax.GradientTransformation:
    """Keras' ``Adam`` as an optax transform (without hyperparameter injection)."""
    return optax.chain(scale_by_keras_adam(b1, b2, eps), optax.scale_by_learning_rate(learning_rate))


def rmsprop(learning_rate: float = 0.001, rho: float = 0.9, momentum: float = 0.0,
            epsilon: float = 1e-7, centered: bool = False) -> optax.GradientTransformation:
    """Keras ``RMSprop`` (defaults lr=0.001, rho=0.9, momentum=0, epsilon=1e-7, centered=False)."""
    return optax.inject_hyperparams(lambda learning_rate: optax.rmsprop(
        learning_rate, decay=rho, eps=epsilon, eps_in_sqrt=True, centered=centered,
        momentum=momentum or None))(learning_rate=learning_rate)


def adam(learning_rate: float = 0.001, beta_1: float = 0.9, beta_2: float = 0.999,
         epsilon: float = 1e-7) -> optax.GradientTransformation:
    """Keras ``Adam`` (defaults lr=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7)."""
    return optax.inject_hyperparams(lambda learning_rate: keras_adam(
        learning_rate, beta_1, beta_2, epsilon))(learning_rate=learning_rate)


def sgd(learning_rate: float = 0.01, momentum: float = 0.0, nesterov: bool = False) -> optax.GradientTransformation:
    """Keras ``SGD`` (defaults lr=0.01, momentum=0, nesterov=False)."""
    return optax.inject_hyperparams(lambda learning_rate: optax.sgd(
        learning_rate, momentum=momentum or None, nesterov=nesterov))(learning_rate=learning_rate)


_BY_NAME = {"rmsprop": rmsprop, "adam": adam, "sgd": sgd}


def get(optimizer: str | optax.GradientTransformation = "rmsprop", **kwargs) -> optax.GradientTransformation:
    """An optimizer from a Keras name (``"rmsprop"``, ``"adam"``, ``"sgd"``; keyword arguments as
    Keras', e.g. ``learning_rate=1e-4``) or an optax transform, returned unchanged.

    Wrap your own transform with ``optax.inject_hyperparams`` to let callbacks change its
    learning rate.
    """
    if isinstance(optimizer, optax.GradientTransformation):
        if kwargs:
            raise ValueError(f"optimizer keyword arguments {sorted(kwargs)} apply to optimizer names only, "
                             f"not to an optax transform")
        return optimizer
    if not isinstance(optimizer, str) or optimizer.lower() not in _BY_NAME:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {sorted(_BY_NAME)} "
                         f"or an optax GradientTransformation")
    return _BY_NAME[optimizer.lower()](**kwargs)


def _learning_rate(opt_state, what):
    """The injected learning rate, wherever it sits in the state (e.g. inside ``masks.freeze``'s partition)."""
    lr = optax.tree_utils.tree_get(opt_state, "learning_rate")
    if lr is None:
        raise ValueError(f"cannot {what} the learning rate: the optimizer was not built with "
                         f"optax.inject_hyperparams(...)(learning_rate=...) (minicnn.train.optimizers.get does that)")
    return lr


def get_learning_rate(opt_state) -> float:
    """The current learning rate in an ``inject_hyperparams`` state."""
    return float(_learning_rate(opt_state, "read"))


def set_learning_rate(opt_state, value: float):
    """A copy of ``opt_state`` with the learning rate ``value`` (same dtype, so nothing recompiles)."""
    dtype = jnp.asarray(_learning_rate(opt_state, "set")).dtype
    return optax.tree_utils.tree_set(opt_state, learning_rate=jnp.asarray(value, dtype=dtype))
