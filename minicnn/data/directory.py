"""``image_dataset_from_directory``: one sub-folder per class to batches, decoded ahead of the consumer."""

from __future__ import annotations

import collections
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
from PIL import Image

from minicnn.data.dataset import Dataset, epoch_order, new_seed, num_batches
from minicnn.data.decode import (
    COLOR_MODES,
    IMAGE_EXTENSIONS,
    INTERPOLATIONS,
    TENSOR_INTERPOLATIONS,
    BadImageError,
    check_image,
    check_target_size,
    decode_image,
)

__all__ = ["DirectoryDataset", "flow_from_directory", "image_dataset_from_directory"]

CLASS_MODES = ("binary", "categorical", "sparse", None)
_BAD_FILE = (BadImageError, Image.DecompressionBombError)


class _Index(NamedTuple):
    paths: list[str]
    classes: np.ndarray  # (N,) int32
    class_names: list[str]
    skipped_folders: list[str]


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk(root: str, follow_links: bool, problems: list[tuple[str, str]], hidden: list[str]):
    """Yield ``(folder, sorted file names)`` for ``root`` and every folder below it, like ``os.walk``, but: names
    starting with "." are left out (and appended to ``hidden``), a folder that cannot be listed or that a symbolic
    link loops back to is appended to ``problems`` as ``(path, reason)`` instead of being dropped silently or
    walked forever. Directories are recognised by stat (no file is opened)."""
    try:
        ancestors = {_identity(os.stat(root))}
    except OSError as e:
        problems.append((root, f"cannot be read ({e.strerror or e})"))
        return
    stack = [(root, ancestors)]
    while stack:
        folder, ancestors = stack.pop()
        try:
            with os.scandir(folder) as entries:
                entries = sorted(entries, key=lambda e: e.name)
        except OSError as e:
            problems.append((folder, f"cannot be read ({e.strerror or e})"))
            continue
        files = []
        for entry in entries:
            if _is_hidden(entry.name):
                if entry.name.lower().endswith(IMAGE_EXTENSIONS) or _is_dir(entry):
                    hidden.append(entry.path)
            elif not _is_dir(entry):
                files.append(entry.name)
            elif follow_links or not entry.is_symlink():
                try:
                    identity = _identity(entry.stat())
                except OSError as e:
                    problems.append((entry.path, f"cannot be read ({e.strerror or e})"))
                    continue
                if identity in ancestors:
                    target = os.path.realpath(entry.path)
                    problems.append((entry.path, f"is a symbolic link loop back to {target!r}; not followed"))
                    continue
                stack.append((entry.path, ancestors | {identity}))
        yield folder, files


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # e.g. a symbolic link loop: stat fails, it is not a directory we can walk
        return False


def _index(directory, follow_links: bool, on_error: str) -> _Index:
    """Index ``directory/<class>/**/<image>`` in Keras' order: classes sorted by name, folders by path, files by
    name. Folders that cannot be walked raise (``on_error="raise"``) or are reported and left out."""
    directory = os.fspath(directory)
    if not os.path.exists(directory):
        raise FileNotFoundError(f"image_dataset_from_directory: directory {directory!r} does not exist")
    if not os.path.isdir(directory):
        raise NotADirectoryError(f"image_dataset_from_directory: {directory!r} is not a directory")
    class_names = sorted(
        d for d in os.listdir(directory) if not _is_hidden(d) and os.path.isdir(os.path.join(directory, d))
    )
    if not class_names:
        raise ValueError(
            f"image_dataset_from_directory: {directory!r} has no sub-folders; it needs one sub-folder per class"
        )
    paths, labels, problems, hidden = [], [], [], []
    for index, name in enumerate(class_names):
        root = os.path.join(directory, name)
        walked = sorted(_walk(root, follow_links, problems, hidden), key=lambda t: t[0])
        if problems and on_error == "raise":
            path, reason = problems[0]
            raise OSError(f"image_dataset_from_directory: folder {path!r} {reason} (on_error='skip' leaves it out)")
        found = [os.path.join(folder, f) for folder, files in walked for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            warnings.warn(f"image_dataset_from_directory: class folder {root!r} has no images", stacklevel=4)
        paths += found
        labels += [index] * len(found)
    for path, reason in problems:
        warnings.warn(f"image_dataset_from_directory: skipping folder {path!r}: it {reason}", stacklevel=4)
    if hidden:  # Keras indexes hidden files and folders inside class folders; we do not: say so once
        warnings.warn(
            f"image_dataset_from_directory: left out {len(hidden)} hidden file(s)/folder(s) inside the class folders "
            f"(names starting with '.', e.g. {hidden[0]!r}: macOS '._' files, .ipynb_checkpoints); Keras would index "
            "them as images",
            stacklevel=4,
        )
    if not paths:
        raise ValueError(
            f"image_dataset_from_directory: no images in {directory!r} (looked for {', '.join(IMAGE_EXTENSIONS)} "
            f"in {len(class_names)} class folder(s))"
        )
    return _Index(paths, np.asarray(labels, np.int32), class_names, [path for path, _ in problems])


def list_image_files(
    directory, follow_links: bool = False, on_error: str = "raise"
) -> tuple[list[str], np.ndarray, list[str]]:
    """Index ``directory/<class>/**/<image>``: (paths, int32 class indices, class names), classes sorted by name
    and files sorted within each class, as Keras' ``index_directory`` lists them.

    Differences from Keras, each deliberate: names starting with "." (hidden files and folders such as
    ``.ipynb_checkpoints/`` or macOS ``._x.jpg``) are left out at every level, with one warning when any held an
    image (Keras leaves out only hidden class folders); a folder that cannot be listed, or that a symbolic link
    loops back to (``follow_links=True``), raises ``OSError`` naming it, or with ``on_error="skip"`` is left out
    with a warning (Keras drops the first silently and walks the second until the path is too long). Files
    without an image extension are ignored; special files with one (named pipes, devices) are listed and refused,
    without being read, when the dataset checks headers.
    """
    return _index(directory, follow_links, on_error)[:3]


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
    files left out under ``on_error="skip"`` and ``skipped_files`` names them; ``skipped_folders`` names the
    folders that could not be walked (unreadable, symbolic link loops).

    A file found undecodable only when an epoch decodes it (``on_error="skip"``) leaves the later epochs, but the
    order of the others does not move: every epoch's order is drawn over the files listed at construction, so
    ``epoch(n)`` stays a function of (seed, n) and a resumed run sees the batches of the uninterrupted one.
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
        skipped_folders=(),
        resize="pillow",
    ):
        super().__init__(batch_size, shuffle, seed, drop_remainder)
        self.class_names = list(class_names)
        self.class_indices = {name: i for i, name in enumerate(self.class_names)}
        self.num_classes = len(self.class_names)
        self.class_mode = class_mode
        self.target_size = tuple(target_size)
        self.color_mode = color_mode
        self.interpolation = interpolation
        self.resize = resize
        self.on_error = on_error
        self.max_pixels = max_pixels
        self.num_workers = num_workers
        self.prefetch = prefetch
        self.skipped_folders = list(skipped_folders)
        self._cache = {} if cache else None  # path -> decoded array, filled by the first epoch
        self._paths, self._classes = list(paths), np.asarray(classes, np.int32)
        self._usable = np.ones(len(self._paths), bool)  # False once a file is skipped
        self.skipped_files: list[str] = []
        with ThreadPoolExecutor(num_workers) as pool:  # header-only pass: bad files and bombs fail here, early
            errors = list(pool.map(self._header_error, self._paths))
        for i, error in enumerate(errors):
            if error is not None:
                self._skip(i, error)

    @property
    def filepaths(self) -> list[str]:
        return [p for p, ok in zip(self._paths, self._usable) if ok]

    @property
    def classes(self) -> np.ndarray:
        return self._classes[self._usable]

    @property
    def samples(self) -> int:
        return int(self._usable.sum())

    @property
    def skipped(self) -> int:
        return len(self.skipped_files)

    def __len__(self) -> int:
        return num_batches(self.samples, self.global_batch_size, self.drop_remainder)

    def _header_error(self, path):
        try:
            check_image(path, self.max_pixels)
        except _BAD_FILE as e:
            return e
        return None

    def _skip(self, i: int, error: Exception) -> None:
        """Raise ``error`` (on_error='raise'), or warn and leave file ``i`` out of this and every later epoch."""
        if self.on_error == "raise":
            raise error
        if self.shard_count > 1:  # the other shards cannot know: their slices of the batches would no longer line up
            raise ValueError(f"{error}; shard {self.shard_index} of {self.shard_count} of a dataset cannot skip a file "
                             f"that fails only when decoded (on_error='skip'); remove or repair it") from error
        if not self._usable[i]:  # already found by another iterator over the same dataset
            return
        warnings.warn(f"skipping {error}", stacklevel=4)
        self._usable[i] = False
        self.skipped_files.append(self._paths[i])
        if not self._usable.any():
            raise ValueError("image_dataset_from_directory: every image was skipped as unreadable")

    def _load(self, path):
        try:
            image = decode_image(path, self.target_size, self.color_mode, self.interpolation, self.max_pixels,
                                 self.resize)
        except _BAD_FILE as e:
            return e
        if self._cache is not None:
            self._cache[path] = image
        return image

    def _epoch_batches(self, epoch):
        order = epoch_order(len(self._paths), self.shuffle, self.seed, epoch)
        order = (i for i in self._shard_order(order[self._usable[order]]) if self._usable[i])
        pool = ThreadPoolExecutor(self.num_workers)
        try:
            # Keep `prefetch` batches of decodes in flight; results are consumed in submission order, so the
            # batches do not depend on thread timing.
            pending = collections.deque()

            def submit(count):
                for i in (next(order, None) for _ in range(count)):
                    if i is None:
                        continue
                    path = self._paths[i]
                    cached = None if self._cache is None else self._cache.get(path)
                    pending.append((i, pool.submit(self._load, path) if cached is None else cached))

            submit(self.prefetch * self.batch_size)
            images, indices = [], []
            while pending:
                i, future = pending.popleft()
                submit(1)
                image = future.result() if isinstance(future, Future) else future
                if isinstance(image, Exception):
                    self._skip(i, image)
                else:
                    images.append(image)
                    indices.append(i)
                if len(images) == self.batch_size or (images and not pending and not self.drop_remainder):
                    yield self._batch(images, self._classes[indices])
                    images, indices = [], []
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

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
    verbose: bool = True,
):
    """Batches from ``directory/<class_name>/<image files>``, as Keras' ``image_dataset_from_directory``.

    Classes are the sub-folders sorted by name (``class_indices``); images are .jpg .jpeg .png .bmp .gif .tif
    .tiff .webp files anywhere below them, decoded with Pillow and resized to ``target_size`` (height, width) as
    Keras' ``image_dataset_from_directory`` resizes: the float image through ``tf.image.resize`` semantics
    (half-pixel centres, no antialiasing), ``interpolation`` 'bilinear' (Keras' default; float pixels) or
    'nearest'. The legacy ``flow_from_directory`` resizes with Pillow, nearest by default:
    :func:`flow_from_directory`. ``verbose`` prints Keras' lines "Found N files belonging to K classes." and,
    with a split, "Using N files for training." / "... for validation.". ``ds.epoch(n)`` yields the ``(x, y)``
    batches of epoch ``n`` (``iter(ds)`` is always epoch 0, see ``minicnn.data.dataset``):
    ``x: (B, H, W, 3|1) float32`` in [0, 255], ``y`` per ``class_mode``: 'binary' (B,) float32 (needs exactly
    2 classes), 'categorical' (B, K) float32 one-hot, 'sparse' (B,) int32, None (``x`` only). The last batch is smaller unless ``drop_remainder``.

    ``seed`` fixes the file order of every epoch; None draws one, kept in ``ds.seed`` (pass it again to rebuild the
    same dataset, e.g. to resume training). ``validation_split`` with ``subset`` ('training', 'validation' or
    'both' for a pair) holds out the last ``int(validation_split * n)`` files of the seeded shuffle, the same
    files as Keras' ``image_dataset_from_directory`` with that seed, so two calls with one seed never overlap.

    Bad input: a file Pillow cannot decode raises ``BadImageError`` naming it (``on_error="raise"``) or is left
    out with a warning (``on_error="skip"``, counted in ``.skipped``); an image over ``max_pixels`` (default
    Pillow's ``Image.MAX_IMAGE_PIXELS``) is refused as a decompression bomb the same way, and so is a named pipe
    or device with an image extension (never opened for reading, so it cannot block). Headers are checked when
    the dataset is built; a file truncated after its header is found when it is decoded. A folder that cannot be
    listed or a symbolic link loop (``follow_links=True``) raises ``OSError`` naming it, or is left out with a
    warning (``.skipped_folders``). Hidden files and folders (names starting with ".") are never indexed: unlike
    Keras, also inside class folders (one warning says when this left out anything; see ``list_image_files``).
    ``target_size`` must be two positive ints.

    ``num_workers`` decoding threads (default: Python's ThreadPoolExecutor default) stay ``prefetch`` batches
    ahead. ``cache=True`` keeps every decoded image in memory (``samples * H * W * C`` float32 after a bilinear
    resize, uint8 otherwise), so later epochs skip the files and, with augmentation on the device, the host has almost nothing left to do.
    ``augment``: an ``ImageAugmenter`` applied on device to the training batches, ``ds.map(augment)`` keyed from
    ``ds.seed`` (never to the validation subset).
    """
    return _from_directory(
        directory, target_size, batch_size, class_mode, color_mode, shuffle, seed, interpolation, validation_split,
        subset, drop_remainder=drop_remainder, on_error=on_error, max_pixels=max_pixels, num_workers=num_workers,
        prefetch=prefetch, cache=cache, follow_links=follow_links, augment=augment, verbose=verbose, resize="tensor",
    )


def _from_directory(
    directory, target_size, batch_size, class_mode, color_mode, shuffle, seed, interpolation, validation_split, subset,
    *, drop_remainder, on_error, max_pixels, num_workers, prefetch, cache, follow_links, augment, verbose, resize,
):
    """``image_dataset_from_directory`` with the resizing chosen: ``resize="tensor"`` as Keras' tensor resize
    (its ``image_dataset_from_directory``), ``"pillow"`` as Keras' ``load_img`` (``flow_from_directory``)."""
    if class_mode not in CLASS_MODES:
        raise ValueError(f"class_mode must be one of {CLASS_MODES}, got {class_mode!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if not (isinstance(prefetch, int) and prefetch >= 1):
        raise ValueError(f"prefetch must be an int >= 1, got {prefetch!r}")
    check_target_size(target_size)
    if color_mode not in COLOR_MODES:
        raise ValueError(f"color_mode must be one of {tuple(COLOR_MODES)}, got {color_mode!r}")
    methods = TENSOR_INTERPOLATIONS if resize == "tensor" else tuple(INTERPOLATIONS)
    if interpolation not in methods:
        hint = " (Pillow's filters: flow_from_directory(interpolation=...))" if resize == "tensor" else ""
        raise ValueError(f"interpolation must be one of {methods}, got {interpolation!r}{hint}")
    if validation_split is not None and not 0 < validation_split < 1:
        raise ValueError(f"validation_split must be strictly between 0 and 1, got {validation_split!r}")
    if (validation_split is None) != (subset is None):
        raise ValueError("validation_split and subset must be given together")
    if subset not in (None, "training", "validation", "both"):
        raise ValueError(f"subset must be 'training', 'validation' or 'both', got {subset!r}")
    if validation_split is not None and shuffle and seed is None:
        raise ValueError("validation_split with shuffle=True needs a seed, so that both subsets split the same way")

    if seed is None:  # drawn once and kept in ds.seed: the listing shuffle and every epoch follow from it
        seed = new_seed()
    paths, classes, class_names, skipped_folders = _index(directory, follow_links, on_error)
    if verbose:
        print(f"Found {len(paths)} files belonging to {len(class_names)} classes.")
    if class_mode == "binary" and len(class_names) != 2:
        raise ValueError(
            f"class_mode='binary' needs exactly 2 class folders in {os.fspath(directory)!r}, found "
            f"{len(class_names)}: {class_names}; use 'categorical' or 'sparse'"
        )
    if shuffle:  # Keras' index_directory shuffle, so a seed selects the same validation files as in Keras
        perm = np.arange(len(paths))
        np.random.RandomState(seed).shuffle(perm)
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
        skipped_folders=skipped_folders,
        resize=resize,
    )
    if validation_split is None:
        ds = DirectoryDataset(paths, classes, class_names, **settings)
        return ds if augment is None else ds.map(augment)
    n_val = int(validation_split * len(paths))
    if n_val == 0 or n_val == len(paths):
        raise ValueError(
            f"validation_split={validation_split} of {len(paths)} images leaves an empty "
            f"{'validation' if n_val == 0 else 'training'} subset"
        )
    if verbose:  # Keras' two lines, in its order
        for name, count in (("training", len(paths) - n_val), ("validation", n_val)):
            if subset in (name, "both"):
                print(f"Using {count} files for {name}.")
    subsets = {}
    if subset in ("training", "both"):
        train = DirectoryDataset(paths[:-n_val], classes[:-n_val], class_names, **settings)
        subsets["training"] = train if augment is None else train.map(augment)
    if subset in ("validation", "both"):
        subsets["validation"] = DirectoryDataset(paths[-n_val:], classes[-n_val:], class_names, **settings)
    return (subsets["training"], subsets["validation"]) if subset == "both" else subsets[subset]


_FLOW_OPTIONS = ("drop_remainder", "on_error", "max_pixels", "num_workers", "prefetch", "cache")


def flow_from_directory(
    directory,
    target_size: tuple[int, int] = (256, 256),
    *,
    color_mode: str = "rgb",
    class_mode: str | None = "categorical",
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int | None = None,
    interpolation: str = "nearest",
    follow_links: bool = False,
    augment=None,
    **options,
):
    """Keras' ``ImageDataGenerator().flow_from_directory(directory, ...)`` as a minicnn dataset.

    Keras' defaults (``target_size=(256, 256)``, ``class_mode="categorical"``, ``batch_size=32``) and its
    resizing: ``interpolation="nearest"``, where :func:`image_dataset_from_directory` resizes bilinearly, so
    the batches are pixel-identical to Keras' ``DirectoryIterator`` (unshuffled order: classes by name, files
    by path). Prints Keras' line "Found N images belonging to K classes.". ``augment``: an ``ImageAugmenter``
    in place of the generator's augmentation arguments (``rescale=1./255`` is ``ds.map(lambda x: x / 255)``).
    ``options``: ``image_dataset_from_directory``'s keyword options (``drop_remainder``, ``on_error``,
    ``max_pixels``, ``num_workers``, ``prefetch``, ``cache``). The generator's ``validation_split``/``subset``
    and ``classes=`` are not offered: use separate folders (the lecture's layout) or
    ``image_dataset_from_directory(validation_split=, subset=)``. Returns a ``DirectoryDataset`` (mapped by
    ``augment``), batches ``x: (B, H, W, 3|1) float32`` in [0, 255] and ``y`` per ``class_mode``.
    """
    unknown = sorted(set(options) - set(_FLOW_OPTIONS))
    if unknown:
        raise TypeError(
            f"flow_from_directory: unexpected argument(s) {unknown}; its options are {list(_FLOW_OPTIONS)} "
            "(for a validation split use image_dataset_from_directory(validation_split=, subset=))"
        )
    settings = dict(drop_remainder=False, on_error="raise", max_pixels=None, num_workers=None, prefetch=2, cache=False)
    ds = _from_directory(
        directory, target_size, batch_size, class_mode, color_mode, shuffle, seed, interpolation, None, None,
        follow_links=follow_links, augment=None, verbose=False, resize="pillow", **{**settings, **options},
    )
    print(f"Found {ds.samples + ds.skipped} images belonging to {ds.num_classes} classes.")
    return ds if augment is None else ds.map(augment)
