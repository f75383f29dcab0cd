"""InceptionV3 (Szegedy et al., 2016) as ``keras.applications.InceptionV3`` builds it.

Keras builds InceptionV3 with its functional API, so two of its facts are not visible in the code
that defines the layers:

* names: every ``conv2d_bn`` block is an unnamed ``Conv2D(use_bias=False)``,
  ``BatchNormalization(scale=False)`` and ``Activation("relu")``, named by Keras' per-class counters in
  creation order (``conv2d``, ``conv2d_1``, ..., ``batch_normalization_93``, ``activation_93``,
  ``average_pooling2d_8``, ``concatenate_1``) as in a fresh Keras 3 session;
* order: ``model.layers`` lists the layers by their depth from the output, then by the order a
  depth-first walk from the output first meets them (``keras.src.ops.function.map_graph``), not
  in creation order: ``model.layers[249]`` is ``conv2d_80``, not the first conv of ``mixed9``.

Here the graph is data (:func:`inception_v3_graph`, recorded the way Keras' API would name it) and
the forward pass calls the layers in Keras' order (:func:`keras_order`), so the layer inspector,
``trainable_mask(from_index=...)`` and ``summary(show_index=True)`` see Keras' ``model.layers``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import flax.linen as nn

from minicnn.layers import (
    Activation,
    AveragePooling2D,
    BatchNormalization,
    Concatenate,
    Conv2D,
    Dense,
    GlobalAveragePooling2D,
    GlobalMaxPooling2D,
    MaxPooling2D,
    keras_name,
)
from minicnn.models.common import KerasApplication, check_images, warn_if_random

__all__ = ["InceptionV3", "Node", "inception_v3_graph", "keras_order", "MIN_SIZE", "DEFAULT_SIZE"]

MIN_SIZE, DEFAULT_SIZE = 75, 299  # Keras' obtain_input_shape(min_size=75, default_size=299)
BN_EPSILON = 1e-3  # Keras' BatchNormalization default, which inception_v3.py keeps (scale=False)
INPUT = "input_layer"


@dataclass(frozen=True)
class Node:
    """One layer of a functional graph: its Keras name, the unbound layer, its inputs' names."""
    name: str
    layer: nn.Module
    inputs: tuple[str, ...]


class _Graph:
    """Records Keras functional-API calls: ``g(Conv2D, [x], filters=32)`` adds a node and returns its
    name, ``Conv2D``'s next Keras auto name (``conv2d``, ``conv2d_1``, ...) unless ``name`` is given."""

    def __init__(self):
        self.nodes: list[Node] = []
        self.counts: dict[str, int] = {}

    def __call__(self, kind: type, inputs: Sequence[str], name: str | None = None, **fields) -> str:
        if name is None:  # Keras' auto_name: only unnamed layers advance their class's counter
            base = keras_name(kind.__name__)
            k = self.counts.get(base, 0)
            self.counts[base] = k + 1
            name = base if k == 0 else f"{base}_{k}"
        self.nodes.append(Node(name, kind(**fields, name=name, parent=None), tuple(inputs)))
        return name


def _conv_bn(g: _Graph, x: str, filters: int, kh: int, kw: int, strides: int = 1, padding: str = "same") -> str:
    """Keras' ``conv2d_bn``: Conv2D without bias, BatchNormalization without gamma, ReLU."""
    x = g(Conv2D, [x], filters=filters, kernel_size=(kh, kw), strides=strides, padding=padding, use_bias=False)
    x = g(BatchNormalization, [x], scale=False, epsilon=BN_EPSILON)
    return g(Activation, [x], activation="relu")


def _chain(g: _Graph, x: str, convs: Sequence[tuple]) -> str:
    """``conv2d_bn`` blocks in sequence, each ``(filters, kh, kw[, strides, padding])``."""
    for conv in convs:
        x = _conv_bn(g, x, *conv)
    return x


def _pool_branch(g: _Graph, x: str, filters: int) -> str:
    return _conv_bn(g, g(AveragePooling2D, [x], pool_size=3, strides=1, padding="same"), filters, 1, 1)


def _block_35(g: _Graph, x: str, pool_filters: int, name: str) -> str:
    """mixed0-2: (N, 35, 35, C) -> (N, 35, 35, 224 + pool_filters)."""
    branches = [_conv_bn(g, x, 64, 1, 1), _chain(g, x, [(48, 1, 1), (64, 5, 5)]),
                _chain(g, x, [(64, 1, 1), (96, 3, 3), (96, 3, 3)]), _pool_branch(g, x, pool_filters)]
    return g(Concatenate, branches, name=name)


def _block_17(g: _Graph, x: str, width: int, name: str) -> str:
    """mixed4-7, factorised 7x7 convolutions of ``width`` channels: (N, 17, 17, 768) -> same."""
    branches = [_conv_bn(g, x, 192, 1, 1), _chain(g, x, [(width, 1, 1), (width, 1, 7), (192, 7, 1)]),
                _chain(g, x, [(width, 1, 1), (width, 7, 1), (width, 1, 7), (width, 7, 1), (192, 1, 7)]),
                _pool_branch(g, x, 192)]
    return g(Concatenate, branches, name=name)


def _block_8(g: _Graph, x: str, i: int) -> str:
    """mixed9 (i=0) and mixed10 (i=1): (N, 8, 8, C) -> (N, 8, 8, 2048)."""
    b1 = _conv_bn(g, x, 320, 1, 1)
    b3 = _conv_bn(g, x, 384, 1, 1)
    b3 = g(Concatenate, [_conv_bn(g, b3, 384, 1, 3), _conv_bn(g, b3, 384, 3, 1)], name=f"mixed9_{i}")
    b3d = _chain(g, x, [(448, 1, 1), (384, 3, 3)])
    b3d = g(Concatenate, [_conv_bn(g, b3d, 384, 1, 3), _conv_bn(g, b3d, 384, 3, 1)])
    return g(Concatenate, [b1, b3, b3d, _pool_branch(g, x, 192)], name=f"mixed{9 + i}")


def inception_v3_graph(include_top: bool = True, pooling: str | None = None, classes: int = 1000,
                       classifier_activation: str | Callable | None = "softmax") -> tuple[list[Node], str]:
    """``(nodes in creation order, output node name)`` of Keras' InceptionV3; the input is ``"input_layer"``."""
    g = _Graph()
    x = _chain(g, INPUT, [(32, 3, 3, 2, "valid"), (32, 3, 3, 1, "valid"), (64, 3, 3)])
    x = g(MaxPooling2D, [x], pool_size=3, strides=2)
    x = _chain(g, x, [(80, 1, 1, 1, "valid"), (192, 3, 3, 1, "valid")])
    x = g(MaxPooling2D, [x], pool_size=3, strides=2)
    for i, pool_filters in enumerate((32, 64, 64)):
        x = _block_35(g, x, pool_filters, f"mixed{i}")
    x = g(Concatenate, [_conv_bn(g, x, 384, 3, 3, 2, "valid"),
                        _chain(g, x, [(64, 1, 1), (96, 3, 3), (96, 3, 3, 2, "valid")]),
                        g(MaxPooling2D, [x], pool_size=3, strides=2)], name="mixed3")
    for i, width in enumerate((128, 160, 160, 192), start=4):
        x = _block_17(g, x, width, f"mixed{i}")
    x = g(Concatenate, [_chain(g, x, [(192, 1, 1), (320, 3, 3, 2, "valid")]),
                        _chain(g, x, [(192, 1, 1), (192, 1, 7), (192, 7, 1), (192, 3, 3, 2, "valid")]),
                        g(MaxPooling2D, [x], pool_size=3, strides=2)], name="mixed8")
    for i in range(2):
        x = _block_8(g, x, i)
    if include_top:
        x = g(GlobalAveragePooling2D, [x], name="avg_pool")
        x = g(Dense, [x], units=classes, activation=classifier_activation, name="predictions")
    elif pooling == "avg":
        x = g(GlobalAveragePooling2D, [x])
    elif pooling == "max":
        x = g(GlobalMaxPooling2D, [x])
    return g.nodes, x


def keras_order(nodes: Sequence[Node], output: str) -> list[Node]:
    """``nodes`` in the order of Keras' ``Functional.layers`` (without the InputLayer).

    As ``keras.src.ops.function.map_graph``: a node's depth is its longest path to ``output``;
    deeper nodes come first, ties in the order a depth-first walk from ``output`` (inputs in order)
    first reaches them.
    """
    by_name = {n.name: n for n in nodes}
    first_seen: dict[str, int] = {}
    finished: list[str] = []  # inputs before the layers that use them

    def visit(name: str):
        if name in first_seen:
            return
        first_seen[name] = len(first_seen)
        for parent in by_name[name].inputs if name in by_name else ():
            visit(parent)
        finished.append(name)

    visit(output)
    depth: dict[str, int] = {}
    for name in reversed(finished):
        d = depth.setdefault(name, 0)
        for parent in by_name[name].inputs if name in by_name else ():
            depth[parent] = max(depth.get(parent, 0), d + 1)
    return [by_name[n] for n in sorted(by_name, key=lambda n: (-depth[n], first_seen[n]))]


class InceptionV3(KerasApplication):
    """Keras' ``keras.applications.InceptionV3``: 23,851,784 parameters with the top (23,817,352
    trainable), 21,802,784 without.

    x: (N, H, W, C) float32 with H, W >= 75, preprocessed as the ImageNet weights expect
    (``minicnn.weights.preprocess_input(x, "tf")``: x / 127.5 - 1). Returns (N, classes) with
    ``include_top``, else (N, h, w, 2048) (h = 8 at 299) or (N, 2048) with ``pooling``.
    ``weights``: None (random), ``"imagenet"`` or a path to a Keras ``.h5``/``.weights.h5`` or a
    minicnn checkpoint: the variables :func:`minicnn.init` (or :func:`minicnn.pretrained`) loads
    for it; ``model.init`` is architecture only. Layer names and ``model.layers`` order are those
    of a fresh Keras 3 session (see the module docstring).
    """
    arch = "inception_v3"

    def check_model_arguments(self):
        if self.input_shape is not None:
            _check_size(self.input_shape[:2], f"input_shape={self.input_shape}")
        self.check_imagenet_input_shape(DEFAULT_SIZE)

    def _check(self, x):
        check_images(self, x, self.input_channels())
        _check_size(x.shape[1:3], f"got shape {tuple(x.shape)}")
        self.check_imagenet_input(x, DEFAULT_SIZE)

    @nn.compact
    def __call__(self, x, train: bool = False):
        self._check(x)
        warn_if_random(self)
        nodes, output = inception_v3_graph(self.include_top, self.pooling, self.classes, self.classifier_activation)
        values = {INPUT: x}
        for node in keras_order(nodes, output):
            inputs = [values[name] for name in node.inputs]
            layer = node.layer.clone(parent=self)
            values[node.name] = layer(inputs if isinstance(layer, Concatenate) else inputs[0], train=train)
        return values[output]


def _check_size(hw, got: str) -> None:
    if min(hw) < MIN_SIZE:
        raise ValueError(f"inception_v3 input: height and width must be at least {MIN_SIZE}, {got}")
