"""Transfer learning: trainable masks, the masking optimizer, feature extraction, chapter-5 recipes."""

from minicnn.transfer.features import extract_features
from minicnn.transfer.masks import count_params, layer_order, trainable_mask
from minicnn.transfer.optim import check_frozen, masked
from minicnn.transfer import recipes
from minicnn.transfer.recipes import (feature_extraction, feature_extraction_with_augmentation, fine_tune,
                                      train_from_scratch)

__all__ = ["trainable_mask", "layer_order", "count_params", "masked", "check_frozen",
           "extract_features", "recipes",
           "train_from_scratch", "feature_extraction", "feature_extraction_with_augmentation", "fine_tune"]
