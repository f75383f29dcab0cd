"""Copy a real Keras 3 model's weights into minicnn variables, by layer name and role."""

import numpy as np

ROLES = {"Conv2D": ("kernel", "bias"), "DepthwiseConv2D": ("kernel", "bias"), "Dense": ("kernel", "bias")}


def keras_variables(keras_model, names=None):
    """{"params": {name: {...}}, "batch_stats": {...}} from a Keras model's weighted layers.

    names: optional list of minicnn layer names, in the order of Keras' weighted layers (for a
    Sequential whose Keras names differ from minicnn's per-model counters).
    """
    params, stats = {}, {}
    layers = [layer for layer in keras_model.layers if layer.weights]
    for i, layer in enumerate(layers):
        name = names[i] if names else layer.name
        w = [np.asarray(v) for v in layer.get_weights()]
        kind = type(layer).__name__
        if kind == "BatchNormalization":
            params[name] = {"gamma": w[0], "beta": w[1]}
            stats[name] = {"moving_mean": w[2], "moving_variance": w[3]}
        else:
            params[name] = dict(zip(ROLES[kind], w))
    return {"params": params, **({"batch_stats": stats} if stats else {})}


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))
