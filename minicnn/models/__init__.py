"""Model zoo: VGG16/VGG19 (Keras layout), the chapter-5 small convnets, EfficientNet-Lite0, and the
registry of their facts. Architecture only: pretrained variables come from :func:`minicnn.pretrained`
and :func:`minicnn.init`."""

from minicnn.models.convnets import mnist_convnet, small_convnet
from minicnn.models.efficientnet_lite import EfficientNetLite0
from minicnn.models.inception_v3 import InceptionV3
from minicnn.models.mobilenet import MobileNet, MobileNetV2
from minicnn.models.registry import ARCHITECTURES, Architecture, architecture
from minicnn.models.resnet import ResNet50
from minicnn.models.vgg import VGG, VGG16, VGG19
from minicnn.models.xception import Xception

__all__ = ["VGG", "VGG16", "VGG19", "EfficientNetLite0", "InceptionV3", "ResNet50", "Xception",
           "MobileNet", "MobileNetV2", "small_convnet", "mnist_convnet",
           "Architecture", "ARCHITECTURES", "architecture"]
