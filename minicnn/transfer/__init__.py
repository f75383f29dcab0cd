"""Transfer learning: feature extraction and the chapter-5 recipes (masks live in :mod:`minicnn.masks`)."""

from minicnn.masks import check_frozen, freeze, layer_order, trainable_mask
from minicnn.summary import count_params
from minicnn.transfer import recipes
from minicnn.transfer.features import extract_features
from minicnn.transfer.recipes import (feature_extraction, feature_extraction_with_augmentation, fine_tune,
                                      train_from_scratch)

__all__ = ["trainable_mask", "layer_order", "count_params", "freeze", "check_frozen",
           "extract_features", "recipes",
           "train_from_scratch", "feature_extraction", "feature_extraction_with_augmentation", "fine_tune"]
