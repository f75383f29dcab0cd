"""Nothing happens at import: importing minicnn (its packages, then every module) starts no JAX
backend (so ``jax.distributed.initialize`` can still come first, docs/SCALING.md) and leaves
matplotlib's backend alone (a notebook's inline one)."""

import json
import os
import subprocess
import sys

import pytest

PACKAGES = ["minicnn", "minicnn.transfer", "minicnn.viz", "minicnn.train", "minicnn.data", "minicnn.models",
            "minicnn.weights", "minicnn.augment"]

# Runs in a fresh interpreter. The first call of xla_bridge.backends() (which jax.devices(),
# default_backend(), array creation and compilation all go through) records the minicnn lines
# that led to it, so a failure names the file and line doing work at import.
PROBE = r"""
import json, sys, traceback
import jax._src.xla_bridge as xla_bridge
first_call = []
real_backends = xla_bridge.backends
def recording_backends():
    if not first_call:
        first_call.append("".join(f"{f.filename}:{f.lineno}: {f.line}\n" for f in traceback.extract_stack()
                                  if "minicnn" in f.filename))
    return real_backends()
xla_bridge.backends = recording_backends
import importlib, pkgutil
import matplotlib
for name in sys.argv[1:]:
    importlib.import_module(name)
import minicnn
for module in pkgutil.walk_packages(minicnn.__path__, "minicnn."):  # and every other module
    if not module.name.endswith(".__main__"):  # a program's entry point runs when imported, by design
        importlib.import_module(module.name)
# read before get_backend(), which resolves an unset backend itself
resolved = dict.__getitem__(matplotlib.rcParams, "backend") is not matplotlib.rcsetup._auto_backend_sentinel
print(json.dumps({"started": xla_bridge.backends_are_initialized(), "where": first_call,
                  "resolved": resolved, "backend": matplotlib.get_backend()}))
"""


def _import_in_fresh_python(mplbackend: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    if mplbackend:
        env["MPLBACKEND"] = mplbackend
    done = subprocess.run([sys.executable, "-c", PROBE, *PACKAGES], env=env, capture_output=True, check=False,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mplbackend", ["svg", None])
def test_importing_minicnn_starts_no_backend_and_keeps_matplotlibs(mplbackend):
    got = _import_in_fresh_python(mplbackend)
    assert not got["started"], f"importing minicnn started the JAX backend:\n{got['where'][0]}"
    assert got["where"] == []
    if mplbackend:
        assert got["backend"] == mplbackend
    else:  # nothing chose a backend: matplotlib (or a notebook) still resolves it on first use
        assert not got["resolved"]
