"""minicnn: small-data image classification in JAX, Flax and optax, numerically matching Keras."""

from minicnn import layers, ops
from minicnn.summary import count_params, summary

__version__ = "0.1.0"
__all__ = ["layers", "ops", "count_params", "summary"]
