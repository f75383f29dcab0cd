"""The benchmark suite: every ``benchmarks/bench_*.py`` in its own process, one markdown table.

    python -m benchmarks [--quick] [--only inference,train] [--out benchmarks/results]

Each module's ``run(quick) -> list[dict]`` runs in a fresh interpreter (so one comparison's
compilation caches, threads and XLA flags cannot disturb another's, and a failing benchmark is
reported without stopping the rest). Rows made with ``benchmarks.common.row`` are pivoted into
one line per workload with minicnn, Keras-JAX and PyTorch side by side, the ratios (> 1: minicnn is
faster), achieved GFLOP/s, the fraction of the machine's float32 peak (the best BLAS sgemm, NumPy's
or torch's, measured once at the start; the theoretical FMA peak is printed beside it) and the
fraction of jitted JAX's own matmul (measured by the benchmark interleaved with its workloads when
it reports ``ceiling_gflops_per_s``, else once at the start);
other rows are listed as they come. Everything, with the machine's details and load, goes to
``benchmarks/results/<machine>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent

CHILD = """
import json, sys
from benchmarks.common import load_average
import importlib
mod = importlib.import_module("benchmarks." + sys.argv[1])
before = load_average()
rows = mod.run(quick=sys.argv[2] == "1")
print("ROWS" + json.dumps({"rows": rows, "load_before": before, "load_after": load_average()}))
"""


def discover(only: list[str] | None = None) -> list[str]:
    """Module names ``bench_*`` in ``benchmarks/``, optionally only the named topics."""
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if only:
        names = [n for n in names if n.removeprefix("bench_") in only or n in only]
    return names


def run_module(name: str, quick: bool, timeout: float) -> dict:
    """Run one benchmark module in a subprocess; ``{"rows": [...]}`` or ``{"error": ...}``."""
    t = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, name, "1" if quick else "0"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "wall_s": timeout}
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("ROWS")), None)
    if proc.returncode or line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail), "wall_s": time.perf_counter() - t}
    return {**json.loads(line[4:]), "wall_s": time.perf_counter() - t}


def _compared(r: dict, impls) -> bool:
    """A timed row of one of the compared implementations (others, e.g. ratios, are listed apart)."""
    return "workload" in r and r.get("impl") in impls and "seconds" in r


def _fmt(v, spec: str = ".3g") -> str:
    return "–" if v is None else format(v, spec)


def comparison_table(rows: list[dict], ceiling: float | None, peak: float | None = None) -> str:
    """One markdown line per workload: seconds per call of each implementation, ratios, GFLOP/s,
    % of ``peak`` (the measured float32 peak) and % of ``ceiling`` (jitted JAX's matmul)."""
    from benchmarks.common import IMPL_TITLES, IMPLS

    by_workload: dict[str, dict[str, dict]] = {}
    for r in rows:
        if _compared(r, IMPLS):
            by_workload.setdefault(r["workload"], {})[r["impl"]] = r
    head = ["workload"] + [f"{IMPL_TITLES[i]} s (items/s)" for i in IMPLS] + [
        "× Keras", "× PyTorch best", "minicnn GFLOP/s", "% peak", "% JAX matmul", "goal ≥ 1×"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for workload, impls in by_workload.items():
        cells = [workload]
        for i in IMPLS:
            r = impls.get(i)
            cells.append("–" if r is None else f"{r['seconds']:.3g}" + (
                f" ({r['items_per_s']:.3g})" if "items_per_s" in r else ""))
        ours = impls.get("minicnn")
        keras = impls.get("keras")
        torch_best = min((impls[i]["seconds"] for i in ("torch", "torch_cl") if i in impls), default=None)
        ratio_k = keras["seconds"] / ours["seconds"] if ours and keras else None
        ratio_t = torch_best / ours["seconds"] if ours and torch_best else None
        gf = ours.get("gflops_per_s") if ours else None
        ceil = (ours or {}).get("ceiling_gflops_per_s") or ceiling
        missed = [what for what, r in (("Keras", ratio_k), ("PyTorch", ratio_t)) if r is not None and r < 1]
        cells += [_fmt(ratio_k, ".2f"), _fmt(ratio_t, ".2f"), _fmt(gf, ".0f"),
                  _fmt(100 * gf / peak if gf and peak else None, ".0f"),
                  _fmt(100 * gf / ceil if gf and ceil else None, ".0f"),
                  "not met: slower than " + " and ".join(missed) if missed else "met"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def other_table(rows: list[dict]) -> str:
    """Rows outside the comparison (variants such as ``minicnn:winograd``, free-form rows)."""
    from benchmarks.common import IMPLS

    lines = ["| measurement | seconds | details |", "|---|---|---|"]
    for r in rows:
        if _compared(r, IMPLS):
            continue
        name = r.get("name") or f"{r.get('workload', '?')} [{r.get('impl', '?')}]"
        extra = {k: v for k, v in r.items() if k not in ("name", "workload", "impl", "seconds", "times")
                 and v is not None}
        details = ", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in extra.items())
        lines.append(f"| {name} | {_fmt(r.get('seconds'))} | {details} |")
    return "\n".join(lines)


def _write(path: pathlib.Path, results: dict) -> None:
    """Results so far, after every module: a crash later (or in printing) loses no measurement."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    os.replace(tmp, path)  # atomic: a reader never sees half a file


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="minicnn benchmark suite")
    p.add_argument("--quick", action="store_true", help="small batches, few repeats (a smoke test)")
    p.add_argument("--only", default="", help="comma-separated topics, e.g. inference,train")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for <machine>.json")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark module")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import machine_info, matmul_ceiling

    info = machine_info()
    ceiling = matmul_ceiling(1024 if args.quick else 2048)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{info['machine'] or 'machine'}{'-quick' if args.quick else ''}.json"
    results = {}
    for name in discover([s for s in args.only.split(",") if s]):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = run_module(name, args.quick, args.timeout)
        _write(path, {"machine": info, "ceiling": ceiling, "quick": args.quick, "modules": results})
    rows = [r for res in results.values() for r in res.get("rows", [])]
    ceiling_gf = ceiling["jax_gflops_per_s"]
    print(f"## minicnn benchmarks on {info['cpu']} ({info['cores']} cores), "
          f"load {info['load_average']}\n")
    peak = ceiling["sgemm_peak_gflops_per_s"]
    blas = ", ".join(f"{lib} {ceiling[f'{lib}_gflops_per_s']:.0f}" for lib in ("numpy", "torch")
                     if f"{lib}_gflops_per_s" in ceiling)
    print(f"Float32 peak (\"% peak\"): best BLAS sgemm {ceiling['n']}², best of 7: {peak:.0f} GFLOP/s ({blas}); "
          f"theoretical FMA peak: {ceiling.get('fma_peak_formula', 'unknown')}.  \n"
          f"JAX matmul (\"% JAX matmul\", jitted, {ceiling['n']}², interleaved with each workload where the "
          f"benchmark measures it): {ceiling_gf:.0f} GFLOP/s at the start. Ratios > 1: minicnn is faster.\n")
    print(comparison_table(rows, ceiling_gf, peak), "\n")
    print(other_table(rows))
    for name, res in results.items():
        if "error" in res:
            print(f"\n**{name} failed**: {res['error']}")
    print(f"\nwrote {path}", file=sys.stderr)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
