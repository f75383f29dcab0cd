"""weights/registry.json against the Keras 3 it names: every ImageNet set of ResNet50, Xception, InceptionV3,
MobileNet and MobileNetV2 has the file name, URL and hash Keras' own loader asks for, and the preprocessing mode
Keras' ``preprocess_input`` uses. A wrong pin (a typo, another model's hash) fails here.

Keras keeps the URL and hash inside each application's ``if weights == "imagenet":`` block (ResNet's hashes in a
``WEIGHTS_HASHES`` table, Xception's and InceptionV3's as literals, MobileNet's not at all), so the test runs that
block of the installed module's source with ``file_utils.get_file`` recording its arguments instead of downloading.
"""

import ast
import inspect
import os
import types

os.environ.setdefault("KERAS_BACKEND", "jax")

import pytest

keras = pytest.importorskip("keras", reason="Keras 3 is the reference ([test] extra)")

from keras.src.applications import inception_v3, mobilenet, mobilenet_v2, resnet, xception  # noqa: E402

from minicnn.models import architecture  # noqa: E402
from minicnn.weights.registry import registry  # noqa: E402

# registry arch -> (Keras module, the builder function holding the loading block, its local arguments)
KERAS = {"resnet50": (resnet, "ResNet", {"weights_name": "resnet50"}),
         "xception": (xception, "Xception", {}),
         "inception_v3": (inception_v3, "InceptionV3", {}),
         "mobilenet": (mobilenet, "MobileNet", {"alpha": 1.0, "rows": 224}),
         "mobilenet_v2": (mobilenet_v2, "MobileNetV2", {"alpha": 1.0, "rows": 224})}


def keras_download(arch: str, include_top: bool) -> dict:
    """``{"fname", "origin", "file_hash"}`` that Keras' ``keras.applications`` model passes to ``get_file`` for
    ``weights="imagenet"`` (file_hash None when Keras pins none)."""
    module, function, local = KERAS[arch]
    tree = ast.parse(inspect.getsource(getattr(module, function)))
    block = next(node for node in ast.walk(tree) if isinstance(node, ast.If)
                 and "weights == 'imagenet'" in ast.unparse(node.test) and "get_file" in ast.unparse(node))
    calls = []

    def get_file(fname, origin, file_hash=None, **_):
        calls.append({"fname": fname, "origin": origin, "file_hash": file_hash})
        return fname

    scope = {**vars(module), **local, "weights": "imagenet", "include_top": include_top,
             "file_utils": types.SimpleNamespace(get_file=get_file),
             "model": types.SimpleNamespace(load_weights=lambda path: None)}
    exec(compile(ast.Module(body=[block], type_ignores=[]), inspect.getsourcefile(module), "exec"), scope)
    assert len(calls) == 1, calls
    return calls[0]


def keras_preprocessing(arch: str) -> str:
    """The ``mode`` Keras' ``preprocess_input`` of that application passes to imagenet_utils."""
    module = KERAS[arch][0]
    call = next(node for node in ast.walk(ast.parse(inspect.getsource(module.preprocess_input)))
                if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("preprocess_input"))
    return next(ast.literal_eval(k.value) for k in call.keywords if k.arg == "mode")


ENTRIES = [(arch, top) for arch in KERAS for top in (True, False)]


@pytest.mark.parametrize("arch, include_top", ENTRIES)
def test_registry_entry_is_the_file_keras_downloads(arch, include_top):
    row = architecture(arch)
    name = row.imagenet if include_top else row.imagenet_notop
    entry, keras_file = registry()[name], keras_download(arch, include_top)
    assert (entry["arch"], entry["include_top"], entry["format"]) == (arch, include_top, "keras_h5")
    assert (entry["filename"], entry["url"]) == (keras_file["fname"], keras_file["origin"])
    if keras_file["file_hash"] is None:  # MobileNet(V2): Keras checks nothing; the entry must say whose pin it is
        assert "pins no hash" in entry["hash_note"], name
    else:
        assert entry["hash"] == keras_file["file_hash"], name
    # Keras' get_file(hash_algorithm="auto"): a 64-digit hash is sha256, any other md5
    assert entry["hash_algorithm"] == ("sha256" if len(entry["hash"]) == 64 else "md5")
    assert entry["preprocessing"] == keras_preprocessing(arch)
    assert entry["license"] and entry["source"]
    assert entry["size"] is None or (isinstance(entry["size"], int) and entry["size"] > 0)  # None: not measured


def test_the_recorder_sees_a_changed_pin():
    """The reading above is not vacuous: Keras' InceptionV3 no-top pin as the test reads it is the literal in
    Keras' source, and differs from the top one."""
    source = inspect.getsource(inception_v3.InceptionV3)
    notop, top = keras_download("inception_v3", False)["file_hash"], keras_download("inception_v3", True)["file_hash"]
    assert notop != top and f'file_hash="{notop}"' in source and f'file_hash="{top}"' in source
