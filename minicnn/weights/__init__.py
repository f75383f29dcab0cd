"""Pretrained weights: registry, download and cache, porters, checkpoints, ImageNet utilities."""

from minicnn.weights.store import load, save

__all__ = ["save", "load"]
