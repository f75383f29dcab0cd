"""Timing helpers shared by the benchmarks: warm-up, interleaved medians, the matmul ceiling and the
machine's float32 peak (best BLAS sgemm; theoretical FMA peak), FLOPs.

A benchmark module ``benchmarks/bench_<topic>.py`` exposes ``run(quick=False) -> list[dict]``. Rows
made with :func:`row` (``workload``, ``impl``, ``seconds``, optional ``items`` and ``flops``) are
pivoted by ``python -m benchmarks`` into one comparison table; ``impl`` is one of :data:`IMPLS`.
Any other dict is listed as it is under "other measurements".
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping

import numpy as np

# Column order of the suite's table; a torch row names its memory format.
IMPLS = ("minicnn", "keras", "torch", "torch_cl")
IMPL_TITLES = {"minicnn": "minicnn", "keras": "Keras-JAX", "torch": "PyTorch NCHW",
               "torch_cl": "PyTorch channels_last"}

VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG_WIDTHS = (64, 128, 256, 512, 512)


def block(out):
    """Wait for JAX arrays (any pytree) to be computed; other values pass through."""
    try:
        import jax
    except ImportError:
        return out
    return jax.block_until_ready(out)


def time_interleaved(fns: Mapping[str, Callable[[], object]], repeats: int = 5,
                     warmup: int = 1) -> dict[str, dict]:
    """Median wall time of each zero-argument callable, the callables taking turns.

    Taking turns (a, b, c, a, b, c, ...) spreads load from other processes over every contender
    alike, so ratios stay meaningful on a shared machine. Each callable's result is synchronised
    (``block_until_ready``) inside the timed region. Returns ``{name: {"seconds": median,
    "min": min, "times": [...]}}``.
    """
    for fn in fns.values():
        for _ in range(warmup):
            block(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            block(fn())
            times[name].append(time.perf_counter() - t)
    return {name: {"seconds": float(np.median(ts)), "min": float(np.min(ts)), "times": ts}
            for name, ts in times.items()}


def timeit(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` after ``warmup`` untimed calls (compilation happens there)."""
    return time_interleaved({"fn": fn}, repeats, warmup)["fn"]["seconds"]


def row(workload: str, impl: str, seconds: float, items: int | None = None,
        flops: float | None = None, **extra) -> dict:
    """One measurement: ``items`` processed (images) in ``seconds``, ``flops`` per call if known."""
    out = {"workload": workload, "impl": impl, "seconds": float(seconds)}
    if items:
        out["items_per_s"] = items / seconds
    if flops:
        out["flops"] = float(flops)
        out["gflops_per_s"] = flops / seconds / 1e9
    return {**out, **extra}


def conv_flops(h: int, w: int, c_in: int, c_out: int, k: int = 3) -> int:
    """Multiply-adds x 2 of one stride-1 "same" k x k convolution on one (h, w, c_in) image."""
    return 2 * k * k * c_in * c_out * h * w


def vgg16_flops(size: int | tuple[int, int], batch: int = 1, include_top: bool = False,
                classes: int = 1000) -> int:
    """Forward FLOPs (2 x multiply-adds of convs and dense layers) of VGG16 on ``batch`` images.

    Pooling, bias and ReLU are left out (under 0.1%). 224x224: 30.7 GFLOP per image with the top.
    """
    h, w = (size, size) if isinstance(size, int) else size
    total, c = 0, 3
    for n_convs, width in zip(VGG16_BLOCKS, VGG_WIDTHS):
        for _ in range(n_convs):
            total += conv_flops(h, w, c, width)
            c = width
        h, w = h // 2, w // 2
    if include_top:
        total += 2 * (h * w * c * 4096 + 4096 * 4096 + 4096 * classes)
    return total * batch


CEILING = "matmul ceiling"
CEILING_N = 2048


def matmul_callable(n: int = CEILING_N):
    """A zero-argument jitted n x n float32 matmul: add it to :func:`time_interleaved`'s contenders
    under the name :data:`CEILING` to measure the ceiling under the same load as the workloads."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.dot)
    return lambda: mm(a, b)


def ceiling_gflops(timing: dict, n: int = CEILING_N) -> float:
    """GFLOP/s of the ceiling matmul from its :func:`time_interleaved` entry (best time: a ceiling)."""
    return 2 * n ** 3 / timing["min"] / 1e9


def matmul_ceiling(n: int = CEILING_N, repeats: int = 7) -> dict:
    """Measured float32 n x n matmul GFLOP/s (best of ``repeats``, interleaved): jitted JAX, NumPy's
    BLAS and torch's (if installed); ``sgemm_peak_gflops_per_s`` is the best BLAS sgemm, the
    machine's measured float32 peak, and :func:`fma_peak` the theoretical one beside it."""
    a = np.random.default_rng(0).standard_normal((n, n), np.float32)
    fns = {"jax": matmul_callable(n), "numpy": lambda: a @ a}
    try:
        import torch
        ta = torch.from_numpy(a)
        fns["torch"] = lambda: torch.mm(ta, ta)
    except ImportError:
        pass
    t = time_interleaved(fns, repeats)
    out = {f"{k}_gflops_per_s": ceiling_gflops(v, n) for k, v in t.items()} | {"n": n}
    out["sgemm_peak_gflops_per_s"] = max(out[k] for k in ("numpy_gflops_per_s", "torch_gflops_per_s") if k in out)
    return out | fma_peak()


def fma_peak(fma_units: int = 2) -> dict:
    """The theoretical float32 peak: cores x GHz x lanes x 2 (an FMA is 2 FLOPs) x FMA units per core.

    From ``/proc/cpuinfo`` (Linux; ``{}`` elsewhere or without FMA): lanes 16 with ``avx512f``, 8 with
    ``avx2`` + ``fma``; GHz from cpufreq's ``cpuinfo_max_freq`` when present, else ``cpu MHz`` (a VM
    reports its nominal clock: turbo can exceed it, AVX-512 clocks fall below it); cores: those this
    process may run on. FMA units per core are not in the flags: 2 on Xeon Scalable Gold/Platinum
    and AVX2 cores since Haswell (1 on some Xeon Silver/Bronze; AMD Zen 4 splits 512-bit FMAs in two).
    Returns ``{"fma_peak_gflops_per_s": ..., "fma_peak_formula": "2 cores x ... = ... GFLOP/s"}``.
    """
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    lanes = 16 if "avx512f" in flags else 8 if {"avx2", "fma"} <= flags else None
    mhz = next((float(ln.split(":", 1)[1]) for ln in lines if ln.startswith("cpu MHz")), None)
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
            mhz = int(f.read()) / 1000
    except (OSError, ValueError):
        pass
    if lanes is None or mhz is None:
        return {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    peak = cores * mhz / 1000 * lanes * 2 * fma_units
    return {"fma_peak_gflops_per_s": peak,
            "fma_peak_formula": f"{cores} cores x {mhz / 1000:.3f} GHz x {lanes} float32 lanes x 2 FLOP/FMA "
                                f"x {fma_units} FMA units = {peak:.0f} GFLOP/s"}


def load_average() -> tuple[float, float, float] | None:
    """1, 5 and 15 minute load averages (other processes distort timings; report them)."""
    try:
        return os.getloadavg()
    except OSError:
        return None


def machine_info() -> dict:
    """CPU model, core count, versions of JAX and the references, and the current load."""
    info = {"machine": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "load_average": load_average(), "xla_flags": os.environ.get("XLA_FLAGS", "")}
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
        flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
        info["cpu"] = names[0] if names else info["cpu"]
        info["avx512"] = "avx512f" in flags
    except OSError:
        pass
    for mod in ("jax", "jaxlib", "flax", "keras", "torch"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    try:
        import jax
        info["devices"] = [str(d) for d in jax.devices()]
    except ImportError:
        pass
    return info
