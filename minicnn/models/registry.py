"""The model registry: every fact about an architecture, in one row.

The porter, ``minicnn.pretrained``, the recipes, the CLI and the demo read these rows; nothing else
spells an architecture's top layers, weight sets, Grad-CAM layer or unfreeze point. Facts about a
weight *file* (URL, hash, the preprocessing it was trained with) live in ``weights/registry.json``,
under the names given here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import flax.linen as nn

from minicnn.models.convnets import mnist_convnet, small_convnet
from minicnn.models.efficientnet_lite import EfficientNetLite0
from minicnn.models.inception_v3 import InceptionV3
from minicnn.models.mobilenet import MobileNet, MobileNetV2
from minicnn.models.resnet import ResNet50
from minicnn.models.vgg import VGG16, VGG19
from minicnn.models.xception import Xception

__all__ = ["Architecture", "ARCHITECTURES", "architecture", "pretrained_names", "from_scratch_names"]


@dataclass(frozen=True)
class Architecture:
    """One architecture.

    build: the Keras-style constructor (``VGG16(include_top=..., weights=..., ...)``).
    top_layers: the layers ``include_top=True`` adds (dropped when porting a file into a no-top model).
    input_size: the ImageNet input side (224); also the size the top's ``fc1`` is built for.
    imagenet, imagenet_notop: the ``weights/registry.json`` names of its ImageNet weight sets.
    gradcam_layer: the last feature map before the spatial pooling, Grad-CAM's default.
    unfreeze_from: the first layer fine-tuning opens (the lecture's ``block5_conv1`` for VGG16).
    demo_layers: ``(filter-pattern layer, activation layer)`` shown by ``minicnn demo``.
    signature: a weighted layer only this architecture's weight files have; the porter recognises a file by it.
    """
    name: str
    build: Callable[..., nn.Module]
    top_layers: tuple[str, ...] = ()
    input_size: int | None = None
    imagenet: str | None = None
    imagenet_notop: str | None = None
    gradcam_layer: str | None = None
    unfreeze_from: str | None = None
    demo_layers: tuple[str, str] | None = None
    signature: str | None = None

    @property
    def pretrained(self) -> bool:
        return self.imagenet is not None


ARCHITECTURES = {a.name: a for a in (
    Architecture("vgg16", VGG16, ("fc1", "fc2", "predictions"), 224, "vgg16_imagenet", "vgg16_imagenet_notop",
                 "block5_conv3", "block5_conv1", ("block3_conv1", "block1_conv2")),
    Architecture("vgg19", VGG19, ("fc1", "fc2", "predictions"), 224, "vgg19_imagenet", "vgg19_imagenet_notop",
                 "block5_conv4", "block5_conv1", ("block3_conv1", "block1_conv2")),
    Architecture("efficientnet_lite0", EfficientNetLite0, ("predictions",), 224, "efficientnet_lite0_imagenet",
                 None, "top_conv", "block6a_expand_conv", ("block3a_expand_conv", "block2a_expand_conv")),
    # unfreeze_from: Keras' model.layers[249], where the fine-tuning example's "top 2 inception blocks" begin
    Architecture("inception_v3", InceptionV3, ("predictions",), 299, "inception_v3_imagenet",
                 "inception_v3_imagenet_notop", "mixed10", "conv2d_80", ("conv2d_4", "activation_2")),
    Architecture("resnet50", ResNet50, ("predictions",), 224, "resnet50_imagenet", "resnet50_imagenet_notop",
                 "conv5_block3_out", "conv5_block1_1_conv", ("conv3_block1_2_conv", "conv1_relu"),
                 signature="conv5_block3_3_conv"),
    Architecture("xception", Xception, ("predictions",), 299, "xception_imagenet", "xception_imagenet_notop",
                 "block14_sepconv2_act", "block14_sepconv1", ("block3_sepconv1", "block1_conv1_act"),
                 signature="block14_sepconv2"),
    # unfreeze_from: the last two depthwise-separable blocks (the 7x7 stage)
    Architecture("mobilenet", MobileNet, ("conv_preds",), 224, "mobilenet_imagenet", "mobilenet_imagenet_notop",
                 "conv_pw_13_relu", "conv_dw_12", ("conv_pw_5", "conv_pw_2"), signature="conv_dw_13"),
    # unfreeze_from: Keras' model.layers[100], TensorFlow's MobileNetV2 fine-tuning tutorial's fine_tune_at
    Architecture("mobilenet_v2", MobileNetV2, ("predictions",), 224, "mobilenet_v2_imagenet",
                 "mobilenet_v2_imagenet_notop", "out_relu", "block_11_expand_relu", ("block_3_expand", "block_1_expand"),
                 signature="block_16_project"),
    Architecture("small_convnet", small_convnet),
    Architecture("mnist_convnet", mnist_convnet),
)}


def architecture(name: str) -> Architecture:
    """The registry row for ``name`` (``"vgg16"``); a clear error listing the known names."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def pretrained_names() -> tuple[str, ...]:
    """Architectures with ImageNet weights (``vgg16``, ...)."""
    return tuple(n for n, a in ARCHITECTURES.items() if a.pretrained)


def from_scratch_names() -> tuple[str, ...]:
    """Architectures without pretrained weights (the chapter's own convnets)."""
    return tuple(n for n, a in ARCHITECTURES.items() if not a.pretrained)
