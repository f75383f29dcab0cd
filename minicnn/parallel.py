"""Data parallelism on ``jax.sharding``: the batch is split over devices, parameters replicated, and
XLA inserts the gradient all-reduce itself (no ``pmap``, no hand-written collectives).

A jitted function whose inputs are placed this way runs data-parallel unchanged::

    mesh = data_mesh()                                   # every device, one "data" axis
    variables = replicate(variables, mesh)
    (x, y), mask = shard_batch((x, y), mesh)             # pads N up to a multiple of the devices
    loss = masked_mean(per_example_loss(model, variables, x, y), mask)

``shard_batch`` pads rather than raising so that the last, short batch of an epoch still runs (and
compiles once): padded rows are zeros and ``mask`` is 0 there; averaging with :func:`masked_mean`
gives exactly the unpadded batch's loss and gradients. Pass ``pad=False`` to get a clear error instead.

Multi-process (``jax.distributed.initialize()`` first, see docs/SCALING.md): ``data_mesh()`` spans
every process's devices, and each process passes its own slice of the global batch to
``shard_batch``, which assembles the global array with ``jax.make_array_from_process_local_data``
(in the mesh's device order: process 0's rows first for ``data_mesh()``). The global batch is ``process_count(mesh)`` slices,
and :func:`local_rows` gives a process its own rows of a sharded result back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"

__all__ = ["AXIS", "data_mesh", "batch_sharding", "replicated", "replicate", "pad_batch",
           "shard_batch", "masked_mean", "unpad", "process_count", "local_rows"]


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ``"data"`` over ``devices`` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("data_mesh: no devices given")
    return Mesh(np.asarray(devices), (AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the ``"data"`` axis, other axes whole."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree, mesh: Mesh):
    """Place every leaf of ``tree`` (parameters, optimizer state) whole on every device."""
    return jax.device_put(tree, replicated(mesh))


def pad_batch(batch, multiple: int):
    """Pad every leaf's leading axis with zeros up to a multiple of ``multiple``.

    batch: a pytree of arrays sharing the leading size N. Returns ``(padded, mask)``, mask:
    (N_padded,) float32, 1 for real rows and 0 for padding.
    """
    leaves = jax.tree.leaves(batch)
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"pad_batch: every leaf needs the same leading (batch) size, got shapes "
                         f"{[tuple(np.shape(leaf)) for leaf in leaves]}")
    n = sizes.pop()
    extra = -n % multiple
    pad = lambda a: np.pad(np.asarray(a), [(0, extra)] + [(0, 0)] * (np.ndim(a) - 1))  # noqa: E731
    mask = np.concatenate([np.ones(n, np.float32), np.zeros(extra, np.float32)])
    return (jax.tree.map(pad, batch) if extra else batch), mask


def shard_batch(batch, mesh: Mesh, pad: bool = True):
    """Split a batch over the ``"data"`` axis of ``mesh``.

    batch: a pytree of this process's arrays, leading axis N (the whole batch on one host, this
    host's slice on several). Returns ``(sharded, mask)`` with mask (N_padded,) float32, sharded
    alike. N is padded up to a multiple of this process's device count; with ``pad=False`` a
    batch that does not divide raises a ValueError naming N and the device count.
    """
    local = len(mesh.local_devices)
    n = jax.tree.leaves(batch)[0].shape[0]
    if not pad and n % local:
        raise ValueError(f"shard_batch: batch size {n} is not divisible by the {local} local devices "
                         f"of the mesh; pass pad=True (and average with masked_mean) or use a batch "
                         f"size that is a multiple of {local}")
    batch, mask = pad_batch(batch, local)
    sharding = batch_sharding(mesh)
    put = lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a))  # noqa: E731
    return jax.tree.map(put, batch), put(mask)


def masked_mean(values, mask):
    """Mean of ``values`` (N, ...) over the rows where ``mask`` (N,) is 1: padding does not count."""
    values = jnp.asarray(values)
    mask = jnp.asarray(mask, values.dtype).reshape(mask.shape + (1,) * (values.ndim - 1))
    per_row = values[0].size if values.ndim > 1 else 1
    return jnp.sum(values * mask) / (jnp.sum(mask) * per_row)


def unpad(tree, n: int):
    """Drop padded rows: the first ``n`` rows of every leaf (e.g. features from a padded batch)."""
    return jax.tree.map(lambda a: a[:n], tree)


def process_count(mesh: Mesh | None) -> int:
    """How many processes hold devices of ``mesh`` (1 for None): a global batch is that many local slices."""
    return 1 if mesh is None else len({d.process_index for d in mesh.devices.flat})


def local_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of an array split over its leading axis, as NumPy: the whole array in a
    single process, this process's slice of the global batch in a multi-process run (the rows it
    passed to :func:`shard_batch`, padding included)."""
    if array.is_fully_addressable or array.is_fully_replicated:
        return np.asarray(array)
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])
