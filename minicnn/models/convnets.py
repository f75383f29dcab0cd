"""The small from-scratch convnets of Chollet's chapter 5."""

from __future__ import annotations

from minicnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPooling2D, Sequential


def small_convnet(input_shape=(150, 150, 3), dropout: float | None = None, classes: int = 1) -> Sequential:
    """The cats-vs-dogs network: four conv/pool stages, Dense(512), a sigmoid unit (3,453,121 params).

    ``dropout`` (e.g. 0.5) inserts a Dropout layer before the dense head, as in the lecture's
    second model trained with augmentation.
    """
    head = [Flatten()] + ([Dropout(dropout)] if dropout else []) + [
        Dense(512, activation="relu"),
        Dense(classes, activation="sigmoid" if classes == 1 else "softmax")]
    return Sequential([
        Conv2D(32, 3, activation="relu"), MaxPooling2D(2),
        Conv2D(64, 3, activation="relu"), MaxPooling2D(2),
        Conv2D(128, 3, activation="relu"), MaxPooling2D(2),
        Conv2D(128, 3, activation="relu"), MaxPooling2D(2),
        *head], input_shape=tuple(input_shape))


def mnist_convnet(include_top: bool = True, input_shape=(28, 28, 1), classes: int = 10) -> Sequential:
    """The MNIST convnet: three convs and two pools (55,744 params), plus Dense(64), Dense(10) (93,322)."""
    base = [Conv2D(32, 3, activation="relu"), MaxPooling2D(2),
            Conv2D(64, 3, activation="relu"), MaxPooling2D(2),
            Conv2D(64, 3, activation="relu")]
    head = [Flatten(), Dense(64, activation="relu"), Dense(classes, activation="softmax")]
    return Sequential(base + (head if include_top else []), input_shape=tuple(input_shape))
