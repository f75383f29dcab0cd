"""Intermediate activations: every requested layer's output from one forward pass."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.linen as nn

from minicnn import inspector

__all__ = ["activations", "layer_names"]


def layer_names(model: nn.Module, variables: Mapping, images) -> list[str]:
    """The paths of the layers (not containers) the forward pass calls, in order.

    images: (N, H, W, C) float32, an example input (only its shape is used).
    """
    return [i.path for i in inspector.layer_infos(model, variables, images) if i.leaf]


def activations(model: nn.Module, variables: Mapping, images, layers: Sequence[str] | None = None) -> dict:
    """``{layer: output}`` for ``layers`` (paths or suffixes such as ``"block1_conv1"``), one inference pass.

    images: (N, H, W, C) float32. Default ``layers``: every layer with a 4-D output, keyed by path,
    as the lecture's ``activation_model``; outputs are (N, H', W', C') for conv and pooling layers.
    Keys are the names as given.
    """
    infos = inspector.layer_infos(model, variables, images)
    if layers is None:
        layers = [i.path for i in infos if i.leaf and len(i.shape or ()) == 4]
    paths = {name: inspector.resolve(infos, name).path for name in layers}
    _, got = inspector.apply_capturing(model, variables, images, list(paths.values()))
    return {name: got[path] for name, path in paths.items()}
