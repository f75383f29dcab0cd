"""Seeing inside the convnet: intermediate activations, filter patterns, class activation maps, plots."""

from minicnn.viz.activations import activations, layer_names
from minicnn.viz.augmentation import show_augmentations
from minicnn.viz.filters import (blur, deprocess_image, filter_patterns, jitter, l2_decay, pad,
                                 random_rotate, random_scale, total_variation)
from minicnn.viz.gradcam import grad_cam, grad_cam_plus_plus, saliency
from minicnn.viz.plots import overlay, plot_activations, plot_filter_grid, plot_predictions
from minicnn.viz.tracking_images import ImageLogger, grad_cam_overlay

__all__ = ["activations", "layer_names", "filter_patterns", "deprocess_image", "pad", "jitter",
           "random_scale", "random_rotate", "blur", "l2_decay", "total_variation", "grad_cam",
           "grad_cam_plus_plus", "saliency", "overlay", "plot_activations", "plot_filter_grid",
           "plot_predictions", "show_augmentations", "ImageLogger", "grad_cam_overlay"]
