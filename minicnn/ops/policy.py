"""Process-wide choices that change how ops compute, not what: the convolution algorithm, the
compute dtype (mixed precision) and the XLA compiler options minicnn jits with.

Both are read when a function is traced: set them before ``jax.jit`` traces a model (a cached
compiled function keeps the choice it was traced with). Use the context managers to scope a
choice, e.g. for a benchmark: ``with conv_algorithm("xla"): f = jax.jit(...).lower(...).compile()``.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp

CONV_ALGORITHMS = ("xla", "winograd")
_state = {"conv_algorithm": "auto", "compute_dtype": None, "tuned_compile": False}

# jaxlib 0.10's CPU backend hands convolutions and dots to YNNPACK by default ("ynn" library
# fusions). An empty fusion list sends them back to XLA's Eigen kernels, measured faster on VGG16:
# convs forward and (more) backward, and far faster for the memory-bound fc1 at small batch
# (benchmarks/NOTES.md). Numerics are unchanged (float32, within 1e-6 relative).
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def set_conv_algorithm(name: str) -> None:
    """``"auto"`` (default: Winograd where it is eligible and measured faster, see
    :func:`minicnn.ops.conv2d`), ``"xla"`` (``lax.conv_general_dilated``) or ``"winograd"``
    (F(2x2, 3x3) for every eligible conv)."""
    if name not in ("auto", *CONV_ALGORITHMS):
        raise ValueError(f"conv algorithm must be one of {('auto', *CONV_ALGORITHMS)}, got {name!r}")
    _state["conv_algorithm"] = name


def get_conv_algorithm() -> str:
    return _state["conv_algorithm"]


def set_compute_dtype(dtype) -> None:
    """Mixed precision: convs and dense layers cast inputs and kernels to ``dtype`` (e.g.
    ``"bfloat16"``) and return that dtype; parameters stay float32, batch-norm statistics are
    float32, and losses should cast logits to float32. ``None`` (default) computes in the input's
    dtype. Meant for accelerators: on CPU bfloat16 matmuls are emulated and slower."""
    if dtype is not None:
        dtype = jnp.dtype(dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"compute dtype must be a floating dtype or None, got {dtype}")
    _state["compute_dtype"] = dtype


def get_compute_dtype():
    return _state["compute_dtype"]


@contextlib.contextmanager
def _scoped(setter, getter, value):
    old = getter()
    setter(value)
    try:
        yield
    finally:
        setter(old)


def conv_algorithm(name: str):
    """Context manager: ``with conv_algorithm("winograd"): ...`` (restores the previous choice)."""
    return _scoped(set_conv_algorithm, get_conv_algorithm, name)


def compute_dtype(dtype):
    """Context manager: ``with compute_dtype("bfloat16"): ...`` (restores the previous dtype)."""
    return _scoped(set_compute_dtype, get_compute_dtype, dtype)


@functools.cache
def _accepted(backend: str, options: tuple) -> bool:
    """Whether this jaxlib knows ``options`` (a newer one may rename them): compile a tiny program."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(jnp.zeros(1)).compile()
        return True
    except Exception:  # an unknown or invalid option; minicnn then compiles with XLA's defaults
        return False


def compiler_options() -> dict:
    """XLA compiler options minicnn uses for the default backend ({} where none help or are known).

    Pass them to ``jax.jit(f, compiler_options=...)``, or use :func:`jit`.
    """
    backend = jax.default_backend()
    if backend != "cpu":
        return {}
    options = tuple(CPU_COMPILER_OPTIONS.items())
    return dict(options) if _accepted(backend, options) else {}


def tuned_compile() -> bool:
    """True while :func:`jit` traces a function that will compile with :func:`compiler_options`."""
    return _state["tuned_compile"]


def jit(fun, **kwargs):
    """``jax.jit`` with :func:`compiler_options` (explicit ``compiler_options`` entries win).

    While such a function is traced, :func:`tuned_compile` is True, so ``conv2d``'s ``"auto"`` can
    choose what is fast under these options (Winograd's batched matmuls are fast on Eigen, slow on
    jaxlib's default YNNPACK path).
    """
    options = compiler_options()
    kwargs["compiler_options"] = {**options, **(kwargs.get("compiler_options") or {})}

    @functools.wraps(fun)
    def traced(*args, **kw):
        with _scoped(lambda v: _state.update(tuned_compile=v), tuned_compile, bool(options)):
            return fun(*args, **kw)

    return jax.jit(traced, **kwargs)
