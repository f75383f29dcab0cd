"""The parameter-masking optimizer: ``optimizer`` on trainable leaves, nothing on frozen ones.

``masked(optimizer, mask)`` puts the freeze *outside* the whole optimizer, so everything inside
it (weight decay, global-norm clipping, momentum) sees only trainable leaves and frozen leaves
get exact zeros and no state. :func:`check_frozen` runs one update and names the ways a
hand-built chain silently breaks freezing.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import optax

from minicnn.summary import path_str

__all__ = ["masked", "check_frozen"]

TRAINABLE, FROZEN = "trainable", "frozen"


def masked(optimizer: optax.GradientTransformation, mask) -> optax.GradientTransformation:
    """``optimizer`` on the leaves where ``mask`` is True; frozen leaves get zero updates.

    mask: a pytree of bools with exactly the params' structure (:func:`trainable_mask`).
    Built on ``optax.transforms.partition`` with ``optax.set_to_zero()``: the optimizer's state
    (e.g. Adam's moments) holds no arrays for frozen leaves. A new phase (another mask) is a
    new ``masked(...)`` and a fresh ``init``; the params are not touched.
    """
    return optax.transforms.partition({TRAINABLE: optimizer, FROZEN: optax.set_to_zero()},
                                      lambda tree: labels(tree, mask))


def labels(tree, mask):
    """``"trainable"``/``"frozen"`` per leaf of ``tree``; every leaf must get exactly one label."""
    want = {path_str(p): p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}
    have = dict(jax.tree_util.tree_flatten_with_path(mask)[0])
    have = {path_str(p): m for p, m in have.items()}
    missing, extra = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
    if missing or extra:
        raise ValueError(f"trainable mask does not cover the params exactly: parameters without a "
                         f"label {missing[:5]}{' ...' if len(missing) > 5 else ''}, mask entries "
                         f"that are no parameter {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    bad = [p for p, m in have.items() if not isinstance(m, (bool, np.bool_))]
    if bad:
        raise TypeError(f"trainable mask leaves must be Python bools, got {type(have[bad[0]]).__name__} "
                        f"at {bad[0]}")
    flat = [TRAINABLE if have[path_str(p)] else FROZEN
            for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tree), flat)


def check_frozen(optimizer: optax.GradientTransformation, params, mask) -> None:
    """Raise if ``optimizer`` does not leave the frozen leaves of ``params`` alone.

    One update with non-zero gradients checks that (1) frozen leaves get exactly zero updates
    (no weight decay or transformation chained after the freeze), (2) trainable updates do not
    depend on frozen gradients (no global-norm clipping over all gradients, no freeze inside a
    chain), and (3) the optimizer state holds no array for a frozen leaf (no Adam moments for
    weights that never move). Costs one ``init`` and two ``update``s.
    """
    frozen = {path_str(p) for p, m in jax.tree_util.tree_flatten_with_path(mask)[0] if not m}
    grads = jax.tree_util.tree_map(lambda p: jnp.full(jnp.shape(p), 0.5, jnp.float32), params)
    loud = jax.tree_util.tree_map(lambda g, m: g if m else g * 1e6, grads, mask)
    state = jax.jit(optimizer.init)(params)
    update = jax.jit(lambda g: optimizer.update(g, state, params)[0])  # one compile, two calls
    updates, updates_loud = update(grads), update(loud)

    for (path, u), m in zip(jax.tree_util.tree_flatten_with_path(updates)[0], jax.tree_util.tree_leaves(mask)):
        if not m and np.any(np.asarray(u) != 0):
            raise ValueError(f"frozen parameter {path_str(path)} would move: a transformation (e.g. weight "
                             "decay) acts on it after the freeze; wrap the whole optimizer instead: "
                             "masked(optax.chain(..., optax.adamw(...)), mask)")
    for (path, u), v, m in zip(jax.tree_util.tree_flatten_with_path(updates)[0],
                               jax.tree_util.tree_leaves(updates_loud), jax.tree_util.tree_leaves(mask)):
        if m and not np.array_equal(np.asarray(u), np.asarray(v)):
            raise ValueError(f"the update of trainable parameter {path_str(path)} depends on frozen "
                             "gradients (e.g. clip_by_global_norm over all gradients); put the clipping "
                             "inside: masked(optax.chain(optax.clip_by_global_norm(...), ...), mask)")
    stale = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]
             if any(f"/{path_str(p)}".endswith(f"/{f}") for f in frozen)]
    if stale:
        raise ValueError(f"the optimizer state holds {len(stale)} arrays for frozen parameters (e.g. "
                         f"{stale[0]}): the freeze sits after the optimizer; use masked(optimizer, mask)")
