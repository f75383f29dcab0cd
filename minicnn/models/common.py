"""The Keras application arguments and checks every pretrained-style model shares (VGG, ResNet50, Xception,
InceptionV3, MobileNet, MobileNetV2, EfficientNet-Lite0)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import ClassVar

import flax.linen as nn

from minicnn import ops
from minicnn.layers import GlobalAveragePooling2D, GlobalMaxPooling2D

MIN_SIZE = 32  # five stride-2 stages: smaller inputs vanish before the last block


def check_arguments(model) -> None:
    """Keras' constructor checks; call from ``__post_init__`` (normalises ``input_shape`` to ints)."""
    if model.input_shape is not None:
        object.__setattr__(model, "input_shape", tuple(int(d) for d in model.input_shape))
    if model.pooling not in (None, "avg", "max"):
        raise ValueError(f'pooling must be None, "avg" or "max", got {model.pooling!r}')
    if model.weights == "imagenet" and model.include_top and model.classes != 1000:
        raise ValueError(f'weights="imagenet" with include_top=True needs classes=1000, got {model.classes}')


def check_images(model, x, channels: int = 3) -> None:
    """x: (N, H, W, channels) float, matching ``model.input_shape`` if set, H and W >= MIN_SIZE."""
    ops.check_input(x, 4, channels, what=f"{model.arch} input")
    if model.input_shape is not None and tuple(x.shape[1:]) != model.input_shape:
        raise ValueError(f"{model.arch} input: expected shape (N, {', '.join(map(str, model.input_shape))}), "
                         f"got {tuple(x.shape)}")
    if min(x.shape[1:3]) < MIN_SIZE:
        raise ValueError(f"{model.arch} input: height and width must be at least {MIN_SIZE}, "
                         f"got shape {tuple(x.shape)}")


def warn_if_random(model) -> None:
    """Warn (once per call site) when ``model.init`` runs on a module whose ``weights`` are set.

    Keras' ``VGG16(weights="imagenet")`` comes with its weights; a Flax module is architecture only
    and its ``init`` never reads a file (so ``jit``/``eval_shape`` of it stay pure). The pretrained
    variables are data, loaded by ``minicnn.init(model, key, x)`` or ``minicnn.pretrained(name)``.
    """
    if model.weights is not None and model.is_initializing():
        warnings.warn(f"{model.arch}(weights={model.weights!r}).init gives RANDOM weights: a minicnn model is "
                      f"architecture only (Keras' model would come with its weights). Load them with "
                      f"minicnn.init(model, key, x) or minicnn.pretrained({model.arch!r})", UserWarning,
                      stacklevel=2)


class KerasApplication(nn.Module):
    """Keras' ``keras.applications`` arguments, as fields (abstract: the models subclass it).

    include_top, weights (None, ``"imagenet"``, a registered name or a file: the variables ``minicnn.init``
    loads; ``init`` itself is architecture only), input_shape, pooling (None/"avg"/"max"), classes,
    classifier_activation, and ``trainable`` (Keras' ``model.trainable``: False freezes every layer inside).
    ``arch`` names the registry row and, as ``keras_model_name``, the model's path inside a Sequential.
    """
    arch: ClassVar[str]
    # Keras' names of the global pooling layers ``pooling`` adds without the top (each application its own)
    pooling_names: ClassVar[tuple[str, str]] = ("global_average_pooling2d", "global_max_pooling2d")

    include_top: bool = True
    weights: str | None = None
    input_shape: tuple[int, int, int] | None = None
    pooling: str | None = None
    classes: int = 1000
    classifier_activation: str | Callable | None = "softmax"
    trainable: bool = True

    @property
    def keras_model_name(self) -> str:
        """The name Keras gives the model (hence its path inside a Sequential)."""
        return self.arch

    def __post_init__(self):
        check_arguments(self)
        self.check_model_arguments()
        super().__post_init__()

    def check_model_arguments(self) -> None:
        """The model's own constructor checks, after the shared ones (``input_shape`` is then ints)."""

    def check_imagenet_input_shape(self, size: int) -> None:
        """Keras' rule: ``weights="imagenet"`` with the top needs the ImageNet input (size, size, 3)."""
        if self.weights == "imagenet" and self.include_top and self.input_shape not in (None, (size, size, 3)):
            raise ValueError(f'weights="imagenet" with include_top=True needs input_shape ({size}, {size}, 3), '
                             f"got {self.input_shape}")

    def check_imagenet_input(self, x, size: int) -> None:
        """The same rule on the input ``x`` (N, H, W, C) when no ``input_shape`` was declared."""
        if self.include_top and self.weights == "imagenet" and tuple(x.shape[1:3]) != (size, size):
            raise ValueError(f'{self.arch} with include_top=True and weights="imagenet" needs {size}x{size} input, '
                             f"got shape {tuple(x.shape)}; use include_top=False for other sizes")

    def pool(self, x):
        """x: (N, H, W, C) -> (N, C) by the global pooling ``pooling`` asks for ("avg"/"max"), else x as it is;
        call from ``__call__`` when ``include_top`` is False."""
        if self.pooling == "avg":
            return GlobalAveragePooling2D(name=self.pooling_names[0])(x)
        if self.pooling == "max":
            return GlobalMaxPooling2D(name=self.pooling_names[1])(x)
        return x

    def input_channels(self) -> int:
        """3 for pretrained weights (RGB) or an undeclared shape, else the declared channels."""
        return 3 if self.weights is not None or self.input_shape is None else self.input_shape[-1]
