"""Class activation maps: Grad-CAM, Grad-CAM++ and a plain gradient saliency map.

All three are one jitted forward+backward pass over the whole batch. The score being explained is
the class logit (``target="logit"``, Selvaraju et al. 2017) or its probability
(``target="probability"``, Chollet's lecture); for a model whose head ends in softmax or sigmoid
the logit is taken by running the head without its squash. A single sigmoid unit is a two-class
classifier whose class-1 logit is ``z`` and class-0 logit is ``-z``, so asking for class 0 explains
``-z`` (pytorch-grad-cam#428 explained ``+z`` for both and got the class-0 maps wrong).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from minicnn import ops
from minicnn import inspector

__all__ = ["grad_cam", "grad_cam_plus_plus", "saliency"]

_TARGETS = ("logit", "probability")


def _scores(z, class_index, target: str):
    """Per-image scores (N,) of the explained class.

    z: (N, K) logits; class_index None (each image's top prediction), an int or (N,) ints.
    """
    n, k = z.shape
    if class_index is None:
        cls = (z[:, 0] > 0).astype(jnp.int32) if k == 1 else jnp.argmax(z, axis=-1)
    else:
        cls = jnp.broadcast_to(jnp.asarray(class_index, jnp.int32), (n,))
    if k == 1:  # one sigmoid unit: class 1 has logit z, class 0 has logit -z
        logit = jnp.where(cls == 1, z[:, 0], -z[:, 0])
        return jax.nn.sigmoid(logit) if target == "probability" else logit
    scores = jax.nn.softmax(z, axis=-1) if target == "probability" else z
    return jnp.take_along_axis(scores, cls[:, None], axis=-1)[:, 0]


def _check_args(images, target: str):
    if target not in _TARGETS:
        raise ValueError(f"target must be one of {_TARGETS}, got {target!r}")
    if getattr(images, "ndim", None) != 4:
        raise ValueError(f"images: expected shape (N, H, W, C), got {getattr(images, 'shape', None)}")


def _check_classes(images, class_index, classes: int):
    if class_index is None:
        return
    idx = jnp.asarray(class_index)
    top = max(classes, 2)  # a single sigmoid unit has classes 0 and 1
    if idx.ndim > 1 or (idx.ndim == 1 and idx.shape[0] != images.shape[0]):
        raise ValueError(f"class_index: expected an int or shape ({images.shape[0]},), got shape {idx.shape}")
    if int(idx.min()) < 0 or int(idx.max()) >= top:
        raise ValueError(f"class_index {class_index} out of range for a model with {top} classes")


def _setup(model, variables, images, layer, class_index, target):
    _check_args(images, target)
    infos = inspector.layer_infos(model, variables, images)
    info = inspector.feature_layer(infos) if layer is None else inspector.resolve(infos, layer)
    if len(info.shape) != 4:
        raise ValueError(f"layer {info.path!r} outputs shape {info.shape}; Grad-CAM needs a 4-D "
                         "(N, H, W, C) feature map, e.g. the last conv layer")
    head = inspector.squashed_head(infos)
    out = infos[-1].shape
    if len(out) != 2:
        raise ValueError(f"the model outputs shape {out}; class maps need (N, classes) scores")
    _check_classes(images, class_index, out[-1])
    return info, head


@partial(ops.jit, static_argnames=("model", "path", "shape", "head", "target"))
def _feature_grads(model, variables, images, class_index, path, shape, head, target):
    """``(A, dS/dA)``, both (N, h, w, K), for the summed class scores S (images are independent)."""

    def total_score(delta):
        z, a = inspector.apply_logits(model, variables, images, head, path, delta)
        return _scores(z, class_index, target).sum(), a

    grads, a = jax.grad(total_score, has_aux=True)(jnp.zeros(shape, images.dtype))
    return a, grads


def _normalise(cam):
    """ReLU, then divide each map by its maximum (an all-zero map stays zero). cam: (N, h, w)."""
    cam = jnp.maximum(cam, 0)
    peak = cam.max(axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1), 0.0)


def grad_cam(model: nn.Module, variables: Mapping, images, class_index=None, layer: str | None = None,
             target: str = "logit"):
    """Grad-CAM of the class logit by default (paper, Keras example); target="probability": the lecture's map.

    Selvaraju et al. 2017: where the feature map ``layer`` supports the class score. The default differentiates
    the pre-softmax score, as the paper and Keras' current Grad-CAM example (which removes the last activation)
    do; Chollet's chapter-5 lecture differentiates the model's softmax output (``model.output[:, class]``):
    ``target="probability"`` gives that map exactly (the two correlate, but differ: a confident softmax
    saturates its gradient).

    images: (N, H, W, C) float32, preprocessed as the model expects. class_index: None (each image's
    top prediction), an int, or (N,) ints. layer: a layer path or suffix; default the last feature
    map before the spatial pooling (``block5_conv3`` for VGG16, as in the paper and Keras' example).
    Returns (N, h, w) float32 in [0, 1], h x w the layer's spatial size:
    ``relu(sum_k mean_ij(dS/dA_ijk) A_k)`` divided by its maximum.
    """
    info, head = _setup(model, variables, images, layer, class_index, target)
    a, g = _feature_grads(model, variables, images, class_index, info.path, info.shape, head, target)
    weights = g.mean(axis=(1, 2))
    return _normalise(jnp.einsum("nhwk,nk->nhw", a, weights))


def grad_cam_plus_plus(model: nn.Module, variables: Mapping, images, class_index=None,
                       layer: str | None = None, target: str = "logit"):
    """Grad-CAM++ (Chattopadhay et al. 2018): pixel-weighted positive gradients, which spreads the
    map over several instances of the class. Same arguments and (N, h, w) [0, 1] result as
    :func:`grad_cam`; uses the closed form for an exponential score (as pytorch-grad-cam does).
    """
    info, head = _setup(model, variables, images, layer, class_index, target)
    a, g = _feature_grads(model, variables, images, class_index, info.path, info.shape, head, target)
    g2, g3 = g ** 2, g ** 3
    denom = 2 * g2 + a.sum(axis=(1, 2), keepdims=True) * g3
    defined = (g != 0) & (denom != 0)
    alpha = jnp.where(defined, g2 / jnp.where(defined, denom, 1.0), 0.0)
    weights = (alpha * jnp.maximum(g, 0)).sum(axis=(1, 2))
    return _normalise(jnp.einsum("nhwk,nk->nhw", a, weights))


@partial(ops.jit, static_argnames=("model", "head", "target"))
def _input_grads(model, variables, images, class_index, head, target):
    def total_score(x):
        z, _ = inspector.apply_logits(model, variables, x, head)
        return _scores(z, class_index, target).sum()

    return jax.grad(total_score)(images)


def saliency(model: nn.Module, variables: Mapping, images, class_index=None, target: str = "logit"):
    """Gradient saliency (Simonyan et al. 2013): ``max_c |dS/dx_ijc|`` per pixel.

    images: (N, H, W, C) float32. Returns (N, H, W) float32 in [0, 1] (divided by each map's max).
    """
    _check_args(images, target)
    infos = inspector.layer_infos(model, variables, images)
    head = inspector.squashed_head(infos)
    _check_classes(images, class_index, infos[-1].shape[-1])
    g = _input_grads(model, variables, images, class_index, head, target)
    return _normalise(jnp.abs(g).max(axis=-1))
