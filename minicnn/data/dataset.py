"""The batch protocol shared by every minicnn dataset, and ``from_arrays`` for data already in memory.

The consumer owns the epoch. ``ds.epoch(n)`` returns an iterator over the batches of epoch ``n``, a pure
function of ``(ds.seed, n)``: the same sample order and the same augmentation keys every time it is called, in
any order, by any number of consumers (a peek changes nothing). ``minicnn.train.Trainer.fit`` asks for
``epoch(initial_epoch)``, ``epoch(initial_epoch + 1)``, ..., so a run resumed from a checkpoint sees exactly the
batches of the uninterrupted run when the seed is the same (``seed=None`` draws one, kept in ``ds.seed``: pass
it again to rebuild the dataset for a resume).

**``iter(ds)`` is always epoch 0.** It is there for convenience (``next(iter(ds))``, ``for x, y in ds``); it does
not reshuffle. This differs from Keras, whose ``tf.data`` datasets reshuffle on every iteration; a loop of your
own over several epochs must call ``ds.epoch(n)``.

``len(ds)`` is the number of batches per epoch. Batches are ``(x, y)`` tuples, ``x: (B, H, W, C) float32`` (no
rescaling unless asked) as NumPy arrays, or ``x`` alone when there are no labels. The last batch of an epoch is
smaller when the sample count is not a multiple of ``batch_size`` (as in Keras) unless ``drop_remainder=True``.

``ds.map(fn)`` moves ``x`` to the device and applies ``fn`` batch by batch; maps chain, and a JAX array stays on
its device through every later map (casts are done there). ``ds.map(augmenter)`` with an ``ImageAugmenter`` is
the one way to attach augmentation (``augment=`` of ``from_arrays`` and ``image_dataset_from_directory`` is
spelled out as that call). Internally a dataset produces batches in their stored dtype (uint8 for 8-bit images)
and casts to float32 last; an ``ImageAugmenter`` gets the stored dtype and casts after resampling, so a quarter
of the bytes move to the device and through its gathers.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator

import jax
import numpy as np

from minicnn.augment import ImageAugmenter

__all__ = ["ArrayDataset", "Dataset", "MappedDataset", "from_arrays"]


def new_seed() -> int:
    """A fresh random seed (uint32) for a dataset built with ``seed=None``; it is kept in ``ds.seed``."""
    return int(np.random.SeedSequence().generate_state(1)[0])


def epoch_order(n: int, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """Sample order for one epoch: a permutation drawn from (seed, epoch), or 0..n-1 without shuffling."""
    return np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)


def num_batches(n: int, batch_size: int, drop_remainder: bool) -> int:
    return n // batch_size if drop_remainder else math.ceil(n / batch_size)


def shard_positions(n: int, batch_size: int, index: int, count: int, drop_remainder: bool) -> np.ndarray:
    """The positions (int, sorted) of an epoch's order of ``n`` samples that shard ``index`` of ``count`` reads:
    the ``index``-th of ``count`` equal slices of every batch of ``batch_size`` (the last, shorter batch too, unless
    dropped; its size must divide by ``count``). The shards' batches, concatenated in shard order, are the batches."""
    starts = np.arange(0, n - n % batch_size if drop_remainder else n, batch_size)
    sizes = np.minimum(batch_size, n - starts) // count
    slices = [np.arange(s + index * k, s + (index + 1) * k) for s, k in zip(starts, sizes)]
    return np.concatenate([np.zeros(0, int), *slices])


class Dataset:
    """Base class: subclasses implement ``_epoch_batches(epoch)`` (reading ``_shard_order`` of each epoch's order)
    and ``__len__``."""

    shard_index, shard_count = 0, 1  # see shard()

    def __init__(self, batch_size: int, shuffle: bool, seed: int | None, drop_remainder: bool):
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.seed = new_seed() if seed is None else int(seed)
        self.drop_remainder = bool(drop_remainder)

    def epoch(self, n: int) -> Iterator:
        """The batches of epoch ``n`` (>= 0): the same batches every call, whatever was iterated before."""
        if not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
            raise ValueError(f"epoch must be an int >= 0, got {n!r}")
        return self._stored_batches(n, cast=True)

    @property
    def global_batch_size(self) -> int:
        """The batch of all shards together: ``batch_size * shard_count`` (``batch_size`` unless sharded)."""
        return self.batch_size * self.shard_count

    def shard(self, index: int, count: int) -> Dataset:
        """This dataset as shard ``index`` of ``count`` (one per process of a multi-process run): every batch of
        the dataset is split into ``count`` equal, consecutive slices and the shard yields slice ``index``, so the
        shards' batches, concatenated in index order, are exactly this dataset's batches (same epochs, same order;
        a directory shard decodes only its own files). ``batch_size`` becomes ``batch_size // count`` (per
        process), ``global_batch_size`` the original; ``len()``, ``samples`` and ``seed`` stay the whole dataset's.

        ``batch_size`` must divide by ``count``, and so must the last, shorter batch unless ``drop_remainder``
        (a ValueError names the sizes). Use ``shard(jax.process_index(), jax.process_count())``.
        """
        if self.shard_count > 1:
            raise ValueError(f"shard: the dataset is already shard {self.shard_index} of {self.shard_count}")
        if not (type(count) is int and count > 0 and type(index) is int and 0 <= index < count):
            raise ValueError(f"shard(index={index!r}, count={count!r}): need ints with 0 <= index < count")
        last = 0 if self.drop_remainder else self.samples % self.batch_size
        if self.batch_size % count:
            raise ValueError(f"shard(count={count}): batch_size={self.batch_size} does not split into {count} equal "
                             f"shards; use a batch_size that divides by {count}")
        if last % count:
            raise ValueError(f"shard(count={count}): the last batch has {last} samples ({self.samples} samples, "
                             f"batch_size={self.batch_size}), which do not split into {count} equal shards; pass "
                             f"drop_remainder=True to the dataset or use a sample count that leaves a multiple "
                             f"of {count}")
        sharded = copy.copy(self)
        sharded.shard_index, sharded.shard_count, sharded.batch_size = index, count, self.batch_size // count
        return sharded

    def _shard_order(self, order: np.ndarray) -> np.ndarray:
        """This shard's part of an epoch's sample ``order`` (all of it unless sharded)."""
        if self.shard_count == 1:
            return order
        return order[shard_positions(len(order), self.global_batch_size, self.shard_index, self.shard_count,
                                     self.drop_remainder)]

    def __iter__(self) -> Iterator:
        """Epoch 0, every time (no hidden epoch counter; see the module docstring)."""
        return self.epoch(0)

    def _stored_batches(self, epoch: int, cast: bool) -> Iterator:
        """One epoch of batches; ``x`` in its stored dtype, or float32 when ``cast``."""
        for batch in self._epoch_batches(epoch):
            if not cast:
                yield batch
            elif isinstance(batch, tuple):
                yield (batch[0].astype(np.float32, copy=False), *batch[1:])
            else:
                yield batch.astype(np.float32, copy=False)

    def _epoch_batches(self, epoch: int) -> Iterator:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def map(self, fn: Callable, seed: int | None = None, dtype="auto") -> MappedDataset:
        """A dataset yielding ``fn(x)`` instead of ``x`` (labels untouched), ``x`` moved to the default device.

        With ``seed``, ``fn`` is called as ``fn(key, x)`` with a PRNG key folded from (seed, epoch, batch index),
        the signature of ``ImageAugmenter``, so augmented runs are reproducible; an ``ImageAugmenter`` without
        ``seed`` is keyed from ``self.seed``. ``x`` reaches ``fn`` as ``dtype``: None keeps the stored dtype
        (uint8 for 8-bit images); "auto" is None for an ``ImageAugmenter`` and float32 otherwise. ``fn`` should
        be jitted (an ``ImageAugmenter`` is); its output may stay a JAX array on device, and a later ``map``
        keeps it there.
        """
        augmenter = isinstance(fn, ImageAugmenter)
        if isinstance(dtype, str) and dtype == "auto":
            dtype = None if augmenter else np.float32
        if seed is None and augmenter:
            seed = self.seed
        return MappedDataset(self, fn, seed, dtype)


class ArrayDataset(Dataset):
    """Batches of in-memory arrays; see ``from_arrays``."""

    def __init__(self, x, y, batch_size, shuffle, seed, drop_remainder):
        super().__init__(batch_size, shuffle, seed, drop_remainder)
        self.x = np.asarray(x)
        self.y = None if y is None else np.asarray(y)
        if self.x.ndim < 1 or len(self.x) == 0:
            raise ValueError(f"from_arrays: x must hold at least one sample, got shape {self.x.shape}")
        if self.y is not None and len(self.y) != len(self.x):
            raise ValueError(f"from_arrays: x has {len(self.x)} samples but y has {len(self.y)}")
        self.samples = len(self.x)

    def __len__(self) -> int:
        return num_batches(self.samples, self.global_batch_size, self.drop_remainder)

    def _epoch_batches(self, epoch):
        order = self._shard_order(epoch_order(self.samples, self.shuffle, self.seed, epoch))
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.x[idx]
            yield x if self.y is None else (x, self.y[idx])


def from_arrays(
    x,
    y=None,
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int | None = None,
    drop_remainder: bool = False,
    augment=None,
) -> Dataset:
    """Batches over arrays already in memory.

    x: (N, ...) any numeric dtype, yielded as float32 batches (B, ...); y: (N, ...) or None, yielded as given.
    ``seed`` fixes every epoch's shuffle (and the augmentation keys); None draws one, kept in ``ds.seed``.
    ``augment``: an ``ImageAugmenter`` applied to each batch on device, exactly ``ds.map(augment)``.
    """
    ds = ArrayDataset(x, y, batch_size, shuffle, seed, drop_remainder)
    return ds if augment is None else ds.map(augment)


class MappedDataset(Dataset):
    """``parent`` with ``fn`` applied to each batch's images on device. Other attributes read through to
    ``parent`` (``class_names``, ``samples``, ...)."""

    def __init__(self, parent: Dataset, fn: Callable, seed: int | None, dtype):
        super().__init__(parent.batch_size, parent.shuffle, parent.seed, parent.drop_remainder)
        self.parent, self.fn, self.key_seed, self.dtype = parent, fn, seed, dtype
        self.shard_index, self.shard_count = parent.shard_index, parent.shard_count

    def __getattr__(self, name):
        if name == "parent":  # not yet set: avoid recursing while unpickling / copying
            raise AttributeError(name)
        return getattr(self.parent, name)

    def __len__(self) -> int:
        return len(self.parent)

    def shard(self, index: int, count: int) -> MappedDataset:
        """The parent's shard (see ``Dataset.shard``) mapped by the same ``fn``: each shard applies ``fn`` to
        its own slice, with the batch's key, which is the same in every shard."""
        return MappedDataset(self.parent.shard(index, count), self.fn, self.key_seed, self.dtype)

    def _stored_batches(self, epoch, cast):
        return self._epoch_batches(epoch)  # fn decides what comes out

    def _epoch_batches(self, epoch):
        root = None if self.key_seed is None else jax.random.key(self.key_seed)
        for b, batch in enumerate(self.parent._stored_batches(epoch, cast=False)):
            x, rest = (batch[0], batch[1:]) if isinstance(batch, tuple) else (batch, None)
            x = _on_device(x, self.dtype)
            x = self.fn(x) if root is None else self.fn(_batch_key(root, epoch, b), x)
            yield x if rest is None else (x, *rest)


def _on_device(x, dtype):
    """``x`` as a JAX array of ``dtype`` (None: as stored). A host array moves in its stored dtype and is cast on
    the device (uint8 moves a quarter of the bytes); a JAX array is never copied back to the host."""
    if not isinstance(x, jax.Array):
        x = np.asarray(x)
        # A 64-bit host array is cast here: JAX without x64 would first narrow it to 32 bits (ints wrap).
        x = jax.device_put(x if dtype is None or x.dtype.itemsize < 8 else x.astype(dtype))
    return x if dtype is None or x.dtype == dtype else x.astype(dtype)


@jax.jit
def _batch_key(root, epoch, batch):
    """The key of one batch: ``root`` folded with the epoch, then the batch index (one dispatch per batch)."""
    return jax.random.fold_in(jax.random.fold_in(root, epoch), batch)
