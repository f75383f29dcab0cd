"""``image_dataset_from_directory``: one sub-folder per class to batches, decoded ahead of the consumer."""

from __future__ import annotations

import collections
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from PIL import Image

from minicnn.data.dataset import Dataset, epoch_order, num_batches
from minicnn.data.decode import (
    COLOR_MODES,
    IMAGE_EXTENSIONS,
    INTERPOLATIONS,
    BadImageError,
    check_image,
    decode_image,
)

__all__ = ["DirectoryDataset", "image_dataset_from_directory"]

CLASS_MODES = ("binary", "categorical", "sparse", None)
_BAD_FILE = (BadImageError, Image.DecompressionBombError)


def list_image_files(directory, follow_links: bool = False) -> tuple[list[str], np.ndarray, list[str]]:
    """Index ``directory/<class>/**/<image>``: (paths, int32 class indices, class names), classes sorted by name
    and files sorted within each class, as Keras' ``index_directory`` lists them. Hidden folders are not classes;
    files without an image extension are ignored."""
    directory = os.fspath(directory)
    if not os.path.exists(directory):
        raise FileNotFoundError(f"image_dataset_from_directory: directory {directory!r} does not exist")
    if not os.path.isdir(directory):
        raise NotADirectoryError(f"image_dataset_from_directory: {directory!r} is not a directory")
    class_names = sorted(
        d for d in os.listdir(directory) if not d.startswith(".") and os.path.isdir(os.path.join(directory, d))
    )
    if not class_names:
        raise ValueError(
            f"image_dataset_from_directory: {directory!r} has no sub-folders; it needs one sub-folder per class"
        )
    paths, labels = [], []
    for index, name in enumerate(class_names):
        root = os.path.join(directory, name)
        found = [
            os.path.join(folder, f)
            for folder, _, files in sorted(os.walk(root, followlinks=follow_links), key=lambda t: t[0])
            for f in sorted(files)
            if f.lower().endswith(IMAGE_EXTENSIONS)
        ]
        if not found:
            warnings.warn(f"image_dataset_from_directory: class folder {root!r} has no images", stacklevel=3)
        paths += found
        labels += [index] * len(found)
    if not paths:
        raise ValueError(
            f"image_dataset_from_directory: no images in {directory!r} (looked for {', '.join(IMAGE_EXTENSIONS)} "
            f"in {len(class_names)} class folder(s))"
        )
    return paths, np.asarray(labels, np.int32), class_names


def encode_labels(classes: np.ndarray, class_mode: str | None, num_classes: int):
    """class indices (B,) int -> binary (B,) float32 | categorical (B, K) float32 one-hot | sparse (B,) int32."""
    if class_mode == "binary":
        return classes.astype(np.float32)
    if class_mode == "categorical":
        return np.eye(num_classes, dtype=np.float32)[classes]
    return classes.astype(np.int32)


class DirectoryDataset(Dataset):
    """Images decoded from files in a thread pool, ``prefetch`` batches ahead of the consumer.

    Attributes (Keras ``DirectoryIterator`` names): ``class_names``, ``class_indices`` (name -> index),
    ``classes`` (int32 class index per sample), ``filepaths``, ``samples``, ``num_classes``; ``skipped`` counts the
    files left out under ``on_error="skip"`` and ``skipped_files`` names them.
    """

    def __init__(
        self,
        paths: Sequence[str],
        classes: np.ndarray,
        class_names: Sequence[str],
        *,
        target_size,
        batch_size,
        class_mode,
        color_mode,
        shuffle,
        seed,
        interpolation,
        drop_remainder,
        on_error,
        max_pixels,
        num_workers,
        prefetch,
        cache,
    ):
        super().__init__(batch_size, shuffle, seed, drop_remainder)
        self.class_names = list(class_names)
        self.class_indices = {name: i for i, name in enumerate(self.class_names)}
        self.num_classes = len(self.class_names)
        self.class_mode = class_mode
        self.target_size = tuple(target_size)
        self.color_mode = color_mode
        self.interpolation = interpolation
        self.on_error = on_error
        self.max_pixels = max_pixels
        self.num_workers = num_workers
        self.prefetch = prefetch
        self._cache = {} if cache else None  # path -> decoded array, filled by the first epoch
        self.skipped_files: list[str] = []
        self._paths, self._classes = list(paths), np.asarray(classes, np.int32)
        with ThreadPoolExecutor(num_workers) as pool:  # header-only pass: bad files and bombs fail here, early
            errors = list(pool.map(self._header_error, self._paths))
        self._drop([p for p, e in zip(self._paths, errors) if e is not None], [e for e in errors if e is not None])

    @property
    def filepaths(self) -> list[str]:
        return list(self._paths)

    @property
    def classes(self) -> np.ndarray:
        return self._classes.copy()

    @property
    def samples(self) -> int:
        return len(self._paths)

    @property
    def skipped(self) -> int:
        return len(self.skipped_files)

    def __len__(self) -> int:
        return num_batches(self.samples, self.batch_size, self.drop_remainder)

    def _header_error(self, path):
        try:
            check_image(path, self.max_pixels)
        except _BAD_FILE as e:
            return e
        return None

    def _drop(self, paths, errors):
        """Raise the first error, or (on_error='skip') warn and leave these files out of every later epoch."""
        if not errors:
            return
        if self.on_error == "raise":
            raise errors[0]
        for e in errors:
            warnings.warn(f"skipping {e}", stacklevel=4)
        self.skipped_files += paths
        bad = set(paths)
        keep = [p not in bad for p in self._paths]
        self._paths = [p for p, k in zip(self._paths, keep) if k]
        self._classes = self._classes[np.asarray(keep, bool)]
        if not self._paths:
            raise ValueError("image_dataset_from_directory: every image was skipped as unreadable")

    def _load(self, path):
        try:
            image = decode_image(path, self.target_size, self.color_mode, self.interpolation, self.max_pixels)
        except _BAD_FILE as e:
            return e
        if self._cache is not None:
            self._cache[path] = image
        return image

    def _epoch_batches(self, epoch):
        paths, classes = list(self._paths), self._classes
        order = iter(epoch_order(len(paths), self.shuffle, self.seed, epoch))
        bad_paths, bad_errors = [], []
        pool = ThreadPoolExecutor(self.num_workers)
        try:
            # Keep `prefetch` batches of decodes in flight; results are consumed in submission order, so the
            # batches do not depend on thread timing.
            pending = collections.deque()

            def submit(count):
                for i in (next(order, None) for _ in range(count)):
                    if i is None:
                        continue
                    cached = None if self._cache is None else self._cache.get(paths[i])
                    pending.append((i, pool.submit(self._load, paths[i]) if cached is None else cached))

            submit(self.prefetch * self.batch_size)
            images, indices = [], []
            while pending:
                i, future = pending.popleft()
                submit(1)
                image = future.result() if isinstance(future, Future) else future
                if isinstance(image, Exception):
                    if self.on_error == "raise":
                        raise image
                    bad_paths.append(paths[i])
                    bad_errors.append(image)
                else:
                    images.append(image)
                    indices.append(i)
                if len(images) == self.batch_size or (images and not pending and not self.drop_remainder):
                    yield self._batch(images, classes[indices])
                    images, indices = [], []
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            self._drop(bad_paths, bad_errors)

    def _batch(self, images, classes):
        x = np.stack(images)
        if self.class_mode is None:
            return x
        return x, encode_labels(classes, self.class_mode, self.num_classes)


def image_dataset_from_directory(
    directory,
    target_size: tuple[int, int] = (150, 150),
    batch_size: int = 20,
    class_mode: str | None = "binary",
    color_mode: str = "rgb",
    shuffle: bool = True,
    seed: int | None = None,
    interpolation: str = "bilinear",
    validation_split: float | None = None,
    subset: str | None = None,
    *,
    drop_remainder: bool = False,
    on_error: str = "raise",
    max_pixels: int | None = None,
    num_workers: int | None = None,
    prefetch: int = 2,
    cache: bool = False,
    follow_links: bool = False,
    augment=None,
):
    """Batches from ``directory/<class_name>/<image files>``, the ``flow_from_directory`` workflow.

    Classes are the sub-folders sorted by name (``class_indices``); images are .jpg .jpeg .png .bmp .gif .tif
    .tiff .webp files anywhere below them, decoded and resized to ``target_size`` (height, width) exactly as Keras'
    ``load_img`` does. Iterating yields one epoch of ``(x, y)`` batches: ``x: (B, H, W, 3|1) float32`` in [0, 255],
    ``y`` per ``class_mode``: 'binary' (B,) float32 (needs exactly 2 classes), 'categorical' (B, K) float32
    one-hot, 'sparse' (B,) int32, None (``x`` only). The last batch is smaller unless ``drop_remainder``.

    ``seed`` fixes the file order of every epoch. ``validation_split`` with ``subset`` ('training', 'validation'
    or 'both' for a pair) holds out the last ``int(validation_split * n)`` files of the seeded shuffle, the same
    files as Keras' ``image_dataset_from_directory`` with that seed, so two calls with one seed never overlap.

    Bad input: a file Pillow cannot decode raises ``BadImageError`` naming it (``on_error="raise"``) or is left
    out with a warning (``on_error="skip"``, counted in ``.skipped``); an image over ``max_pixels`` (default
    Pillow's ``Image.MAX_IMAGE_PIXELS``) is refused as a decompression bomb the same way. Headers are checked
    when the dataset is built; a file truncated after its header is found when it is decoded.

    ``num_workers`` decoding threads (default: Python's ThreadPoolExecutor default) stay ``prefetch`` batches
    ahead. ``cache=True`` keeps every decoded image in memory (uint8, ``samples * H * W * C`` bytes), so later
    epochs skip the files and, with augmentation on the device, the host has almost nothing left to do.
    ``augment``: an ``ImageAugmenter`` applied on device to the training batches (never to the validation
    subset).
    """
    if class_mode not in CLASS_MODES:
        raise ValueError(f"class_mode must be one of {CLASS_MODES}, got {class_mode!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if not (isinstance(prefetch, int) and prefetch >= 1):
        raise ValueError(f"prefetch must be an int >= 1, got {prefetch!r}")
    if np.shape(target_size) != (2,):
        raise ValueError(f"target_size must be (height, width), got {target_size!r}")
    if color_mode not in COLOR_MODES:
        raise ValueError(f"color_mode must be one of {tuple(COLOR_MODES)}, got {color_mode!r}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {tuple(INTERPOLATIONS)}, got {interpolation!r}")
    if validation_split is not None and not 0 < validation_split < 1:
        raise ValueError(f"validation_split must be strictly between 0 and 1, got {validation_split!r}")
    if (validation_split is None) != (subset is None):
        raise ValueError("validation_split and subset must be given together")
    if subset not in (None, "training", "validation", "both"):
        raise ValueError(f"subset must be 'training', 'validation' or 'both', got {subset!r}")
    if validation_split is not None and shuffle and seed is None:
        raise ValueError("validation_split with shuffle=True needs a seed, so that both subsets split the same way")

    paths, classes, class_names = list_image_files(directory, follow_links)
    if class_mode == "binary" and len(class_names) != 2:
        raise ValueError(
            f"class_mode='binary' needs exactly 2 class folders in {os.fspath(directory)!r}, found "
            f"{len(class_names)}: {class_names}; use 'categorical' or 'sparse'"
        )
    if shuffle:  # Keras' index_directory shuffle, so a seed selects the same validation files as in Keras
        perm = np.arange(len(paths))
        np.random.RandomState(seed if seed is not None else np.random.randint(1_000_000)).shuffle(perm)
        paths, classes = [paths[i] for i in perm], classes[perm]
    settings = dict(
        target_size=target_size,
        batch_size=batch_size,
        class_mode=class_mode,
        color_mode=color_mode,
        shuffle=shuffle,
        seed=seed,
        interpolation=interpolation,
        drop_remainder=drop_remainder,
        on_error=on_error,
        max_pixels=max_pixels,
        num_workers=num_workers,
        prefetch=prefetch,
        cache=cache,
    )
    if validation_split is None:
        ds = DirectoryDataset(paths, classes, class_names, **settings)
        return ds if augment is None else ds.map(augment, seed=ds.seed)
    n_val = int(validation_split * len(paths))
    if n_val == 0 or n_val == len(paths):
        raise ValueError(
            f"validation_split={validation_split} of {len(paths)} images leaves an empty "
            f"{'validation' if n_val == 0 else 'training'} subset"
        )
    subsets = {}
    if subset in ("training", "both"):
        train = DirectoryDataset(paths[:-n_val], classes[:-n_val], class_names, **settings)
        subsets["training"] = train if augment is None else train.map(augment, seed=train.seed)
    if subset in ("validation", "both"):
        subsets["validation"] = DirectoryDataset(paths[-n_val:], classes[-n_val:], class_names, **settings)
    return (subsets["training"], subsets["validation"]) if subset == "both" else subsets[subset]
