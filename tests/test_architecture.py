"""The package's structure, checked: the import graph (function-level imports included) has no cycle,
no module imports a later layer of docs/DESIGN.md, and a pretrained model's abstract init reads no file."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import minicnn

ROOT = Path(minicnn.__file__).parent

# docs/DESIGN.md's layer table: a module may import its own layer or an earlier one.
LAYERS = {
    "minicnn.ops": 0, "minicnn.version": 0,
    "minicnn.layers": 1, "minicnn.augment": 1, "minicnn.parallel": 1,
    "minicnn.inspector": 2, "minicnn.masks": 2, "minicnn.data": 2,
    "minicnn.models": 3, "minicnn.summary": 3,
    "minicnn.weights": 4,
    "minicnn.train": 5,
    "minicnn.transfer": 6, "minicnn.viz": 6, "minicnn.nnx": 6,
    "minicnn.programs": 7,
    "minicnn": 8,  # the package's own __init__: the facade, imported by no module
}


def module_names() -> dict[str, Path]:
    names = {}
    for path in ROOT.rglob("*.py"):
        parts = ("minicnn", *path.relative_to(ROOT).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def layer(module: str) -> int:
    best = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len)
    return LAYERS[best]


def import_graph() -> dict[str, set[str]]:
    """module -> the minicnn modules its code imports (at any depth in the file), each resolved to the
    most specific module, plus the package __init__s that import executes (outside the importer's own)."""
    modules = module_names()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            found = []
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names]
            for target in found:
                if target.split(".")[0] != "minicnn":
                    continue
                parts = target.split(".")
                for k in range(2, len(parts)):  # parent packages run their __init__ first
                    parent = ".".join(parts[:k])
                    if not (name == parent or name.startswith(parent + ".")):
                        targets.add(parent)
                targets.add(target)
        graph[name] = targets - {name}
    return graph


def cycles(graph) -> list[list[str]]:
    """Every cycle found by a depth-first search (one per back edge)."""
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_import_graph_has_no_cycle_and_respects_the_layers():
    graph = import_graph()
    print("\nminicnn import graph (module -> minicnn imports):")
    for name in sorted(graph):
        print(f"  L{layer(name)} {name} -> {', '.join(sorted(graph[name])) or '-'}")
    found = cycles(graph)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} edges, {len(found)} cycles")
    assert found == []
    upward = [f"{a} (L{layer(a)}) imports {b} (L{layer(b)})" for a, targets in graph.items() for b in targets
              if a != "minicnn" and layer(b) > layer(a)]
    assert upward == []


def test_the_checks_can_fail():
    """The cycle search and the layer rule find what they are meant to find."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert layer("minicnn.weights.port") == 4 and layer("minicnn.models.registry") == 3


def test_abstract_init_of_a_pretrained_model_reads_no_file(tmp_path):
    """eval_shape/jit of model.init never port or download: the weights are data, loaded by minicnn.init."""
    code = """
import builtins, io, os, sys, urllib.request, jax, jax.numpy as jnp
import minicnn
from minicnn.layers import Dense, Flatten, Sequential
from minicnn.models import VGG16
model = Sequential([VGG16(include_top=False, weights="imagenet", input_shape=(64, 64, 3)), Flatten(), Dense(1)])
opened = []
real_open, real_io_open = builtins.open, io.open
def spy(file, *a, **k):
    opened.append(str(file))
    return real_open(file, *a, **k)
builtins.open = io.open = spy
urllib.request.urlopen = lambda *a, **k: opened.append(f"download {a[0]}")
shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
lowered = jax.jit(model.init).lower(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
text = minicnn.summary(model, print_fn=None)
builtins.open, io.open = real_open, real_io_open
home = os.environ["MINICNN_HOME"]
weights = (".h5", ".pth", ".safetensors", "registry.json")
print("OPENED", [f for f in opened if f.startswith((home, "download")) or f.endswith(weights)])
print("PARAMS", shapes["params"]["vgg16"]["block1_conv1"]["kernel"].shape, "14,714,688" in text)
print("CACHE", os.listdir(home))
"""
    home = tmp_path / "home"
    home.mkdir(mode=0o000)  # unreadable (to a non-root user): using the cache would fail loudly
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                             env={**os.environ, "MINICNN_HOME": str(home), "JAX_PLATFORMS": "cpu"})
    finally:
        home.chmod(0o700)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OPENED []" in out.stdout
    assert "PARAMS (3, 3, 3, 64) True" in out.stdout
    assert "CACHE []" in out.stdout


def test_a_prefix_mask_means_the_same_everywhere():
    """{"vgg16": False} (Keras' conv_base.trainable = False: unmentioned layers train) in count_params, summary,
    the Trainer and masks.freeze."""
    from minicnn.layers import Dense, Flatten, Sequential
    from minicnn.masks import check_frozen, freeze, trainable_mask
    from minicnn.models import VGG16
    from minicnn.train import Trainer

    model = Sequential([VGG16(include_top=False, input_shape=(32, 32, 3)), Flatten(), Dense(1, activation="sigmoid")])
    prefix = {"vgg16": False}
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    full = trainable_mask(variables, "all", layers=["vgg16"])
    counts = minicnn.count_params(variables, prefix)
    assert counts == minicnn.count_params(variables, full) == (14_715_201, 513, 14_714_688)
    text = minicnn.summary(model, trainable=prefix, variables=variables, print_fn=None)
    assert "Trainable params: 513" in text and "Non-trainable params: 14,714,688" in text
    check_frozen(freeze(optax.adam(1e-3), prefix), variables["params"], prefix)
    x = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    y = np.array([0, 1, 0, 1], np.float32)
    runs = {}
    for name, mask in (("prefix", prefix), ("full", full)):
        t = Trainer(model, "binary_crossentropy", "adam", variables=variables, trainable=mask)
        t.fit(x, y, batch_size=4, epochs=1, verbose=0)
        runs[name] = t.variables
        state_leaves = jax.tree_util.tree_leaves(t.state["opt_state"])
        assert sum(np.size(a) for a in state_leaves) < 3 * 513 + 10  # Adam's moments for the head only
    for a, b, before in zip(jax.tree_util.tree_leaves(runs["prefix"]), jax.tree_util.tree_leaves(runs["full"]),
                            jax.tree_util.tree_leaves(variables)):
        np.testing.assert_array_equal(a, b)
    base_after = jax.tree_util.tree_leaves(runs["prefix"]["params"]["vgg16"])
    for a, b in zip(base_after, jax.tree_util.tree_leaves(variables["params"]["vgg16"])):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(runs["prefix"]["params"]["dense"]["kernel"], variables["params"]["dense"]["kernel"])


@pytest.mark.parametrize("bad", [{"vgg61": False}, {"vgg16": {"block1_conv1": {"kernal": False}}}])
def test_a_mask_that_invents_layers_is_the_same_error_everywhere(bad):
    from minicnn.layers import Dense, Flatten, Sequential
    from minicnn.masks import freeze
    from minicnn.models import VGG16
    from minicnn.train import Trainer

    model = Sequential([VGG16(include_top=False, input_shape=(32, 32, 3)), Flatten(), Dense(1)])
    variables = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    messages = set()
    for call in (lambda: minicnn.count_params(variables, bad),
                 lambda: minicnn.summary(model, trainable=bad, variables=variables, print_fn=None),
                 lambda: freeze(optax.adam(1e-3), bad).init(variables["params"]),
                 lambda: Trainer(model, variables=jax.tree.map(lambda s: jnp.zeros(s.shape), variables),
                                 trainable=bad).build(np.zeros((1, 32, 32, 3), np.float32))):
        with pytest.raises(ValueError, match="trainable mask entries that are no parameter") as e:
            call()
        messages.add(str(e.value))
    assert len(messages) == 1


def test_every_name_the_package_exports_resolves():
    """`import minicnn` then `minicnn.<name>` works for every name in __all__ (subpackages load lazily)."""
    missing = [name for name in minicnn.__all__ if not hasattr(minicnn, name)]
    assert missing == []
