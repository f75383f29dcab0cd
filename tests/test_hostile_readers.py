"""Hostile weight files (.pth, .h5) get one clear error naming the file and the tensor, within a
memory bound and a deadline, and poison nothing: a legitimate file read right after returns the
right numbers. No torch needed: the files are written opcode by opcode (fixtures/hostile/).

Every hostile read runs in one child process (sys.executable) under RLIMIT_AS = 1.5 GiB, so an
out-of-bounds read, an allocation of gigabytes or a segfault shows up as a failed case, not as a
crashed test run. The child reports each case (outcome, seconds, resident peak so far, the legit
file's numbers read right after) as one JSON line as soon as it is done.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "hostile"
ADDRESS_SPACE = 1536 * 2**20  # bytes: the child's whole address space, imports included
PEAK_RSS = 640 * 2**20  # bytes: the child's resident peak (about 180 MB after importing minicnn)
DEADLINE = 20  # seconds per case
SECRET = b"TOPSECRET-local-bytes-"


def _fixture_module():
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make = _fixture_module()

# case -> (reader, error class, pattern the message must match after the file name)
PTH_LAYOUT = r"tensor features\.0\.weight: "
CASES = {
    # 1. out-of-bounds layouts, zip and legacy: never a read outside the storage
    **{f"{kind}_{fmt}.pth": ("read_pth", "CorruptWeightsError", PTH_LAYOUT + pattern)
       for fmt in ("zip", "legacy")
       for kind, pattern in [("negative_stride", "size .*stride .*non-negative"),
                             ("negative_offset", "size .*offset .*non-negative"),
                             ("huge_negative_stride", "size .*stride .*non-negative"),
                             ("scalar_past_end", (r"shape \(\), stride \(\) from offset 4096 reads element "
                                                  r"4096 of storage 0, which holds 1"))]},
    # 4. a pickle BUILD on a stand-in
    "poison_build.pth": ("read_pth", "UnsafePickleError", r"refusing a pickle BUILD on torch\.FloatStorage"),
    # 5. tiny files that ask for gigabytes
    "zero_stride.pth": ("read_pth", "CorruptWeightsError",
                        PTH_LAYOUT + r"shape \(50000, 50000\) has 2500000000 elements, its storage 0 holds 1"),
    "bomb.pth": ("read_pth", "CorruptWeightsError", r"archive/data/0 inflates \d+ bytes to 2147483648"),
    "reused_storage.pth": ("read_pth", "CorruptWeightsError",
                           r"400 tensors copy 1677721600 bytes out of 4194304 bytes of storage"),
    "legacy_storage_numel.pth": ("read_pth", "CorruptWeightsError",
                                 r"storage 0 claims 1099511627776 elements .* the file has \d+ bytes left"),
    "declared_bytes.pth": ("read_pth", "CorruptWeightsError", r"the pickle is truncated or corrupt"),
    "memo_index.pth": ("read_pth", "CorruptWeightsError", r"memo index 2147483647"),
    "unwritten.h5": ("port_file", "CorruptWeightsError",
                     (r"dataset /block1_conv1/block1_conv1/kernel:0 declares \(65536, 65536, 4\) float32 "
                      r"\(68719476736 bytes\) but stores 0")),
    # 6. HDF5 datasets whose bytes live in other files
    "external.h5": ("port_file", "CorruptWeightsError", r"kernel:0 keeps its bytes in external file"),
    "virtual.h5": ("port_file", "CorruptWeightsError", r"kernel:0 is a virtual dataset"),
    "external_link.h5": ("port_file", "CorruptWeightsError", r"kernel:0 is a link into .*source.h5"),
    "bomb.h5": ("port_file", "CorruptWeightsError", r"kernel:0 declares \(536870912,\) float32 \(2147483648 "
                                                    r"bytes\) but stores \d+ .*decompression bomb"),
}

CHILD = r"""
import json, resource, sys, time, traceback
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from minicnn.weights import port_file, read_pth
readers = {{"read_pth": read_pth, "port_file": port_file}}
legit = sys.argv[1]
for reader, path in json.loads(sys.argv[2]):
    start = time.perf_counter()
    try:
        result = readers[reader](path)
        outcome = "no error: " + repr(result)[:300]
    except Exception as e:
        outcome = type(e).__name__ + ": " + str(e)
    seconds = time.perf_counter() - start
    after = read_pth(legit)["features.0.weight"].tolist()
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    peak = int(status["VmHWM"].split()[0]) * 1024  # this process image's peak; ru_maxrss counts the forking parent
    print(json.dumps({{"path": path, "outcome": outcome, "seconds": seconds, "legit_after": after,
                       "peak_rss": peak}}), flush=True)
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """{case: the child's report}; a case the child never reported (it died) has {"died": ...}."""
    d = tmp_path_factory.mktemp("hostile")
    files = {name: FIXTURES / name for name in CASES if (FIXTURES / name).exists()}
    files["bomb.pth"] = d / "bomb.pth"
    files["bomb.pth"].write_bytes(make.deflate_bomb_pth(2))
    files["reused_storage.pth"] = d / "reused_storage.pth"
    files["reused_storage.pth"].write_bytes(make.reused_storage_pth(4, 400))
    secret = d / "secret.bin"
    secret.write_bytes(SECRET * 64)
    files["external.h5"] = d / "external.h5"
    make.h5_external(files["external.h5"], secret)
    source = d / "source.h5"
    import h5py
    with h5py.File(source, "w") as f:
        f["data"] = np.frombuffer(SECRET * 64, np.float32)
    files["virtual.h5"] = d / "virtual.h5"
    make.h5_virtual(files["virtual.h5"], source)
    files["external_link.h5"] = d / "external_link.h5"
    make.h5_link(files["external_link.h5"], source)
    files["bomb.h5"] = d / "bomb.h5"
    make.h5_bomb(files["bomb.h5"], 2)
    assert sorted(files) == sorted(CASES)
    jobs = [(CASES[name][0], str(path)) for name, path in files.items()]
    proc = subprocess.run([sys.executable, "-c", CHILD.format(limit=ADDRESS_SPACE),
                           str(FIXTURES / "legit.pth"), json.dumps(jobs)],
                          check=False, capture_output=True, text=True, timeout=DEADLINE * len(jobs))
    reports = {Path(r["path"]).name: r for r in map(json.loads, proc.stdout.splitlines())}
    died = {"died": f"the reader process exited with {proc.returncode}: {proc.stderr[-2000:]}"}
    return {name: reports.get(name, died) for name in CASES}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_file_gets_one_clear_error_within_bounds(outcomes, case):
    report = outcomes[case]
    assert "died" not in report, report["died"]
    _, error, pattern = CASES[case]
    assert report["outcome"].startswith(f"{error}: "), report["outcome"]
    message = report["outcome"][len(error) + 2:]
    assert case in message.split(":")[0], f"the error does not start with the file name: {message}"
    assert SECRET.decode()[:9] not in message
    import re
    assert re.search(pattern, message), message
    assert report["seconds"] < DEADLINE
    assert report["peak_rss"] < PEAK_RSS
    np.testing.assert_array_equal(report["legit_after"], make.LEGIT_VALUES.reshape(2, 3))


def test_legit_fixture_reads_in_process():
    """The hand-written well-formed file, in this process: the baseline the hostile ones differ from."""
    from minicnn.weights import read_pth
    got = read_pth(FIXTURES / "legit.pth")
    assert list(got) == ["features.0.weight"] and got["features.0.weight"].dtype == np.float32
    np.testing.assert_array_equal(got["features.0.weight"], make.LEGIT_VALUES.reshape(2, 3))


def test_committed_fixtures_are_what_the_script_writes(tmp_path):
    make.main(tmp_path)
    for name, data in make.committed().items():
        assert (FIXTURES / name).read_bytes() == data, f"{name} is stale: run {FIXTURES / 'make_fixtures.py'}"
    assert (tmp_path / "unwritten.h5").exists() and (FIXTURES / "unwritten.h5").exists()


def test_missing_keras3_variable_is_named(tmp_path):
    """A Keras 3 layer with two variables numbered 0 and 2: one error naming the missing vars/1."""
    import h5py

    from minicnn.weights.keras_h5 import read_keras3_weights
    from minicnn.weights.torch_pth import CorruptWeightsError
    path = tmp_path / "gap.weights.h5"
    with h5py.File(path, "w") as f:
        v = f.create_group("layers/conv2d/vars")
        v["0"] = np.zeros((3, 3, 3, 4), np.float32)
        v["2"] = np.zeros(4, np.float32)
    with pytest.raises(CorruptWeightsError, match=r"gap.weights.h5: dataset /layers/conv2d/vars/1 is missing"):
        read_keras3_weights(path, [("block1_conv1", "conv2d")])
