import os

# Keras parity tests run Keras 3 on the JAX backend; it must be chosen before keras is imported.
os.environ.setdefault("KERAS_BACKEND", "jax")
