"""How ops compute, chosen explicitly: the convolution algorithm and the compute dtype (numerics),
and the XLA compiler options :func:`jit` compiles with (speed only).

Numerics are chosen per call or per layer, as Flax's ``dtype`` field: ``conv2d(..., algorithm=,
dtype=)``, ``dense(..., dtype=)``, ``layers.Conv2D(..., algorithm=, dtype=)``. An argument left at
``None`` follows the *scoped default*, read when the function is traced:
``with conv_algorithm("winograd"): jax.jit(f).lower(x)``. Outside any ``with`` it is ``"auto"`` and
the input's dtype. Scopes are per thread and per asyncio task (``contextvars``), and a compiled
function keeps the choices it was traced with.

:func:`jit` is ``jax.jit`` plus compiler options; it changes how XLA compiles a program, never the
program: the same function traced by ``jax.jit`` and by :func:`jit` computes the same thing.

Importing this module touches no JAX backend and no JAX setting: options are decided, and JAX's
persistent compilation cache turned on (:func:`use_compilation_cache`), on a function's first call.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import warnings

import jax
import jax.numpy as jnp

CONV_ALGORITHMS = ("xla", "winograd")
_conv_algorithm = contextvars.ContextVar("minicnn_conv_algorithm", default="auto")
_compute_dtype = contextvars.ContextVar("minicnn_compute_dtype", default=None)

# jaxlib 0.10's CPU backend hands convolutions and dots to YNNPACK by default ("ynn" library
# fusions). An empty fusion list sends them back to XLA's Eigen kernels, measured faster on VGG16:
# convs forward and (more) backward, and far faster for the memory-bound fc1 at small batch
# (benchmarks/NOTES.md). Numerics are unchanged (float32, within 1e-6 relative).
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}

# For programs run once (a model's initialisation): XLA's backend optimisations are most of their
# compile time and none of their use (the small convnet's init: 17 s -> 4 s compiling under load,
# 0.05 s slower to run, identical values; benchmarks/NOTES.md).
RUN_ONCE_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}

COMPILATION_CACHE_ENV = "MINICNN_COMPILATION_CACHE"


def check_conv_algorithm(name: str) -> str:
    """``name`` if it is ``"auto"``, ``"xla"`` or ``"winograd"``, else a ValueError naming it."""
    if name not in ("auto", *CONV_ALGORITHMS):
        raise ValueError(f"conv algorithm must be one of {('auto', *CONV_ALGORITHMS)}, got {name!r}")
    return name


def check_compute_dtype(dtype):
    """``None`` or ``dtype`` as a floating ``jnp.dtype``, else a ValueError naming it."""
    if dtype is None:
        return None
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"compute dtype must be a floating dtype or None, got {dtype}")
    return dtype


def get_conv_algorithm() -> str:
    """The scoped default conv algorithm (``"auto"`` outside any :func:`conv_algorithm` block)."""
    return _conv_algorithm.get()


def get_compute_dtype():
    """The scoped default compute dtype (``None``, the input's dtype, outside :func:`compute_dtype`)."""
    return _compute_dtype.get()


@contextlib.contextmanager
def _scoped(var: contextvars.ContextVar, value):
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def conv_algorithm(name: str):
    """Scoped default for convs traced inside the block whose ``algorithm`` is None:
    ``"auto"``, ``"xla"`` (``lax.conv_general_dilated``) or ``"winograd"`` (F(2x2, 3x3) for every
    eligible conv). An explicit ``algorithm=`` argument or layer field wins."""
    return _scoped(_conv_algorithm, check_conv_algorithm(name))


def compute_dtype(dtype):
    """Scoped default for convs and dense layers traced inside the block whose ``dtype`` is None.

    Mixed precision: ``with compute_dtype("bfloat16")`` casts inputs and kernels to bfloat16 and
    returns bfloat16; parameters stay float32 and batch-norm statistics float32; cast logits to
    float32 before the loss. Meant for accelerators: on CPU bfloat16 matmuls are emulated and slower.
    """
    return _scoped(_compute_dtype, check_compute_dtype(dtype))


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

    Starts the JAX backend (and, once, compiles a probe program). Pass them to
    ``jax.jit(f, compiler_options=...)``, or use :func:`jit`.
    """
    backend = jax.default_backend()
    if backend != "cpu":
        return {}
    options = tuple(CPU_COMPILER_OPTIONS.items())
    return dict(options) if _accepted(backend, options) else {}


def compilation_cache_dir() -> str | None:
    """Where :func:`jit` keeps compiled programs across processes, from ``$MINICNN_COMPILATION_CACHE``:
    None when it is ``0``/``false``/``off``, the path when it is one, else (unset, ``1``)
    ``$XDG_CACHE_HOME/minicnn/xla`` (default ``~/.cache/minicnn/xla``)."""
    setting = os.environ.get(COMPILATION_CACHE_ENV, "").strip()
    if setting.lower() in ("0", "false", "off", "no"):
        return None
    if setting and setting.lower() not in ("1", "true", "on", "yes"):
        return os.path.abspath(os.path.expanduser(setting))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "minicnn", "xla")


def use_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache in :func:`compilation_cache_dir` (a second run of a
    program loads it instead of compiling: the chapter's train steps take seconds to compile) and
    return the directory in use; None when it is off. A cache directory the user gave JAX
    (``jax_compilation_cache_dir``) is kept. :func:`jit` calls this on a function's first use, never
    at import. JAX writes only programs that took over ``jax_persistent_cache_min_compile_time_secs``
    (1 s) to compile. The directory is trusted code: keep it private, as JAX's documentation says.
    """
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return configured
    path = compilation_cache_dir()
    if path is None:
        return None
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        _warn_once(f"minicnn: compilation cache off, cannot create {path} ({e.strerror}); set "
                   f"{COMPILATION_CACHE_ENV} to a writable directory, or to 0 to silence this")
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    return path


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class _LazyJit:
    """``jax.jit(fun, compiler_options=compiler_options(), **kwargs)``, built on first use.

    Deciding the options needs the backend, so building is deferred until the function is called
    (or lowered, traced, ...): a module-level ``@ops.jit`` starts nothing at import.
    """

    def __init__(self, fun, kwargs: dict):
        self._fun, self._kwargs, self._jitted = fun, kwargs, None
        functools.update_wrapper(self, fun)

    def _get(self):
        if self._jitted is None:
            use_compilation_cache()
            explicit = self._kwargs.get("compiler_options") or {}
            kwargs = {**self._kwargs, "compiler_options": {**compiler_options(), **explicit}}
            self._jitted = jax.jit(self._fun, **kwargs)
        return self._jitted

    def __call__(self, *args, **kwargs):
        return self._get()(*args, **kwargs)

    def __getattr__(self, name):  # lower, trace, eval_shape, clear_cache, ...
        if name.startswith("_") and name != "_cache_size":  # copy/pickle probes must not build it
            raise AttributeError(name)
        return getattr(self._get(), name)


def jit(fun, *, run_once: bool = False, **kwargs):
    """``jax.jit`` with :func:`compiler_options` (explicit ``compiler_options`` entries win) and
    JAX's persistent compilation cache on (:func:`use_compilation_cache`).

    Only compilation differs from ``jax.jit(fun, **kwargs)``: the traced program is the same.
    ``run_once``: a program called once or twice (an initialisation) is compiled with XLA's backend
    optimisations off, a fraction of the compile time. The options are decided, and ``jax.jit``
    called, on first use; the result supports ``jax.jit``'s ``lower``, ``trace`` and ``eval_shape``.
    """
    if run_once:
        kwargs = {**kwargs, "compiler_options": {**RUN_ONCE_COMPILER_OPTIONS, **(kwargs.get("compiler_options") or {})}}
    return _LazyJit(fun, kwargs)
