import os

# Keras parity tests run Keras 3 on the JAX backend; it must be chosen before keras is imported.
os.environ.setdefault("KERAS_BACKEND", "jax")
# minicnn.ops.jit turns JAX's persistent compilation cache on (~/.cache/minicnn/xla); the suite neither
# fills the user's cache nor reads programs an older checkout left there (measured: benchmarks/NOTES.md).
os.environ.setdefault("MINICNN_COMPILATION_CACHE", "0")


def pytest_sessionfinish(session, exitstatus):
    """CI (.ci/run) installs every test-only peer, so there a skipped test is a failure, not a footnote."""
    if not os.environ.get("MINICNN_REQUIRE_NO_SKIPS") or hasattr(session.config, "workerinput"):
        return  # xdist workers report to the controller, which counts the skips
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and session.exitstatus == 0:
        print(f"\nMINICNN_REQUIRE_NO_SKIPS: {skipped} test(s) skipped; CI installs every peer, so none may skip")
        session.exitstatus = 1


# The slowest modules (seconds measured on the 2-core VM, `--durations`), scheduled first: pytest-xdist's
# `--dist loadfile` hands out whole files in collection order, so a slow file collected last would run
# alone at the end while the other worker idles (longest-processing-time-first scheduling).
SLOWEST_FIRST = ("test_models_inception", "test_docs", "test_models_resnet_xception", "test_cli", "test_demo",
                 "test_transfer_recipes", "test_models_mobilenet", "test_viz_gradcam", "test_keras_parity",
                 "test_keras_fit", "test_conv_algorithms", "test_ops", "test_nnx", "test_viz_filters", "test_train",
                 "test_weights_keras", "test_train_parity", "test_efficientnet", "test_distributed")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: file order kept within a file
