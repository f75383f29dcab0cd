"""grain interoperability: minicnn datasets as grain data sources, and the JSON form of an iterator's position.

``grain_source(ds)`` is a ``grain`` ``RandomAccessDataSource`` (``len`` and ``source[i]``) over the samples of a
dataset from :func:`~minicnn.data.image_dataset_from_directory`, :func:`~minicnn.data.flow_from_directory` or
:func:`~minicnn.data.from_arrays`. A record is ``(image, label)`` (``image`` alone without labels): the image
decoded and resized exactly as the dataset's own batches are, in its stored dtype (uint8 for 8-bit images;
float32 after ``image_dataset_from_directory``'s bilinear tensor resize, as in Keras), the label encoded per
``class_mode``. A directory source decodes in ``__getitem__``, so grain's workers (``mp_prefetch``,
``DataLoader(worker_count=)``) do the decoding. grain's ``batch`` stacks records into the ``(x, y)`` batches
that ``Trainer.fit``/``evaluate``/``predict`` and ``minicnn.transfer.extract_features`` take
(``x: (B, H, W, C)`` uint8 or float32; the Trainer casts integer images to float32 on the device, as a Keras
model casts its inputs to its ``Input`` dtype).

The source itself needs no grain (it is a plain sequence); grain is needed only to build pipelines from it
(``pip install minicnn[grain]``).

``get_iterator_state``/``set_iterator_state``: an iterator's position (grain's ``get_state()``: a dict for
``grain.DatasetIterator``, JSON bytes for ``grain.DataLoader``'s iterator) as JSON for a checkpoint's metadata,
and back. ``Trainer.save`` during ``fit`` records it, so a resumed ``fit`` continues mid-epoch exactly.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from minicnn.data.dataset import ArrayDataset, MappedDataset
from minicnn.data.decode import decode_image
from minicnn.data.directory import DirectoryDataset, encode_labels

__all__ = ["ArraySource", "DirectorySource", "get_iterator_state", "grain_source", "set_iterator_state"]


def _digest(*parts) -> str:
    """A short hash of the source's contents, so its ``repr`` (which grain's ``DataLoader`` stores in its state
    and compares on restore) changes when the files or arrays do."""
    h = hashlib.sha256()
    for part in parts:
        h.update(np.ascontiguousarray(part).data if isinstance(part, np.ndarray) else str(part).encode())
    return h.hexdigest()[:12]


class DirectorySource:
    """Image files as a grain data source: record ``i`` is ``(decoded image, label)`` of file ``i``.

    paths, classes: (N,) files and int class indices; the other arguments are ``decode_image``'s and the
    label's encoding (``class_mode``; None: records are the image alone). A file that cannot be decoded
    raises ``BadImageError`` naming it (``PIL.Image.DecompressionBombError`` over ``max_pixels``).
    """

    def __init__(self, paths, classes, num_classes: int, *, target_size, color_mode, interpolation, resize,
                 class_mode, max_pixels=None):
        self.paths, self.classes = list(paths), np.asarray(classes, np.int32)
        self.num_classes, self.class_mode = num_classes, class_mode
        self.decode_args = (tuple(target_size), color_mode, interpolation, max_pixels, resize)
        self._repr = (f"DirectorySource({len(self.paths)} files, target_size={self.decode_args[0]}, "
                      f"color_mode={color_mode!r}, interpolation={interpolation!r}, resize={resize!r}, "
                      f"class_mode={class_mode!r}, digest={_digest(*self.paths, self.classes)})")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = decode_image(self.paths[index], *self.decode_args)
        if self.class_mode is None:
            return image
        return image, encode_labels(self.classes[index:index + 1], self.class_mode, self.num_classes)[0]

    def __repr__(self) -> str:
        return self._repr


class ArraySource:
    """In-memory samples as a grain data source: record ``i`` is ``(x[i], y[i])`` (``x[i]`` without ``y``)."""

    def __init__(self, x: np.ndarray, y: np.ndarray | None):
        self.x, self.y = x, y
        self._repr = (f"ArraySource({len(x)} samples of {x.dtype}{list(x.shape[1:])}, "
                      f"digest={_digest(x, 'no labels' if y is None else y)})")

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        return self.x[index] if self.y is None else (self.x[index], self.y[index])

    def __repr__(self) -> str:
        return self._repr


def grain_source(ds) -> DirectorySource | ArraySource:
    """The samples of the minicnn dataset ``ds`` as a grain ``RandomAccessDataSource`` (module docstring).

    Record ``i`` is sample ``i`` of the dataset's listing (for a shuffled ``image_dataset_from_directory``
    that is the seeded file shuffle Keras makes before splitting); order, batching and epochs are the
    grain pipeline's (``grain.MapDataset.source(src).shuffle(seed=).batch(n)``), not the dataset's. Files
    the dataset left out (``on_error="skip"``) are not in the source. ``ds.map(fn)`` is refused: its
    augmentation runs on the device, batch by batch, after the host pipeline; build the source from the
    unmapped dataset.
    """
    if isinstance(ds, MappedDataset):
        raise TypeError(
            "grain_source: ds is a dataset with ds.map(fn) applied (augmentation/preprocessing run on the device, "
            "batch by batch); a grain source holds host records: pass the dataset before .map(...)"
        )
    if isinstance(ds, DirectoryDataset):
        return DirectorySource(ds.filepaths, ds.classes, ds.num_classes, target_size=ds.target_size,
                               color_mode=ds.color_mode, interpolation=ds.interpolation, resize=ds.resize,
                               class_mode=ds.class_mode, max_pixels=ds.max_pixels)
    if isinstance(ds, ArrayDataset):
        return ArraySource(ds.x, ds.y)
    raise TypeError(f"grain_source: expected a minicnn dataset (image_dataset_from_directory, flow_from_directory "
                    f"or from_arrays), got {type(ds).__name__}")


def get_iterator_state(iterator) -> dict | None:
    """``iterator.get_state()`` as JSON-ready data (``{"state": ..., "bytes": bool}``), or None when the
    iterator has no ``get_state`` (a plain Python iterator: its position is the step count alone)."""
    get_state = getattr(iterator, "get_state", None)
    if not callable(get_state):
        return None
    state = get_state()
    if isinstance(state, bytes):  # grain.DataLoader's iterator: UTF-8 JSON
        return {"state": state.decode(), "bytes": True}
    try:
        json.dumps(state)
    except TypeError as e:
        raise TypeError(f"the data iterator's get_state() ({type(iterator).__name__}) is not JSON ({e}); a "
                        "checkpoint records the position of grain iterators and minicnn datasets only") from None
    return {"state": state, "bytes": False}


def set_iterator_state(iterator, saved: dict) -> None:
    """Put ``iterator`` at the position :func:`get_iterator_state` recorded."""
    set_state = getattr(iterator, "set_state", None)
    if not callable(set_state):
        raise TypeError(f"the checkpoint records a data iterator's position, but this data's iterator "
                        f"({type(iterator).__name__}) has no set_state: resume with the same kind of pipeline")
    set_state(saved["state"].encode() if saved["bytes"] else saved["state"])
