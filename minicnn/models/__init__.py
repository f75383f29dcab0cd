"""Model zoo: VGG16/VGG19 (Keras layout), the chapter-5 small convnets, EfficientNet-Lite0."""

from minicnn.models.convnets import mnist_convnet, small_convnet
from minicnn.models.efficientnet_lite import EfficientNetLite0
from minicnn.models.vgg import VGG, VGG16, VGG19
from minicnn.models.zoo import PRETRAINED, Pretrained, pretrained

__all__ = ["VGG", "VGG16", "VGG19", "EfficientNetLite0", "small_convnet", "mnist_convnet",
           "pretrained", "Pretrained", "PRETRAINED"]
