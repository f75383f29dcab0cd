"""Data: image folders and in-memory arrays to re-iterable batches (see ``dataset`` for the protocol)."""

from minicnn.data.dataset import ArrayDataset, Dataset, MappedDataset, from_arrays
from minicnn.data.decode import (
    IMAGE_EXTENSIONS,
    BadImageError,
    check_image,
    decode_image,
    load_image,
)
from minicnn.data.directory import (
    DirectoryDataset,
    flow_from_directory,
    image_dataset_from_directory,
    list_image_files,
)
from minicnn.data.grain_pipeline import grain_source

__all__ = [
    "IMAGE_EXTENSIONS",
    "ArrayDataset",
    "BadImageError",
    "Dataset",
    "DirectoryDataset",
    "MappedDataset",
    "check_image",
    "decode_image",
    "flow_from_directory",
    "from_arrays",
    "grain_source",
    "image_dataset_from_directory",
    "list_image_files",
    "load_image",
]
