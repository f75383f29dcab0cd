"""Data parallelism over 4 simulated CPU devices equals single-device computation.

The devices exist only when XLA_FLAGS is set before JAX starts, so the checks run in one
subprocess and report back as JSON.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from minicnn import parallel
    from minicnn.layers import Conv2D, Dense, Flatten, MaxPooling2D, Sequential

    assert jax.device_count() == 4, jax.devices()
    out = {}
    model = Sequential([Conv2D(4, 3, activation="relu"), MaxPooling2D(2), Flatten(), Dense(3)])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 8, 8, 3)).astype(np.float32)          # 10 rows: not divisible by 4
    y = rng.integers(0, 3, 10)
    variables = model.init(jax.random.key(0), x[:1])
    opt = optax.adam(1e-2)

    def per_example(params, x, y):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y)

    @jax.jit
    def step(params, state, x, y):
        loss, g = jax.value_and_grad(lambda p: jnp.mean(per_example(p, x, y)))(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, loss

    @jax.jit
    def step_masked(params, state, x, y, mask):
        loss, g = jax.value_and_grad(lambda p: parallel.masked_mean(per_example(p, x, y), mask))(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, loss

    p1, s1 = variables["params"], opt.init(variables["params"])
    mesh = parallel.data_mesh()
    p4 = parallel.replicate(variables["params"], mesh)
    s4 = parallel.replicate(opt.init(variables["params"]), mesh)
    (xs, ys), mask = parallel.shard_batch((x, y), mesh)
    out["padded_rows"] = int(xs.shape[0]); out["mask_sum"] = float(mask.sum())
    out["x_devices"] = len(xs.sharding.device_set)
    losses1, losses4 = [], []
    for _ in range(5):
        p1, s1, l1 = step(p1, s1, x, y)
        p4, s4, l4 = step_masked(p4, s4, xs, ys, mask)
        losses1.append(float(l1)); losses4.append(float(l4))
    out["losses"] = [losses1, losses4]
    out["param_devices"] = len(jax.tree.leaves(p4)[0].sharding.device_set)
    out["param_err"] = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(a))))
                           for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)))

    feats = jax.jit(lambda v, x: model.apply(v, x))
    f1 = feats(variables, x)
    f4 = parallel.unpad(feats(parallel.replicate(variables, mesh), xs), len(x))
    out["feature_err"] = float(np.max(np.abs(np.asarray(f1) - np.asarray(f4))) / np.max(np.abs(np.asarray(f1))))

    try:
        parallel.shard_batch((x, y), mesh, pad=False)
        out["no_pad_error"] = None
    except ValueError as e:
        out["no_pad_error"] = str(e)
    (x8,), mask8 = parallel.shard_batch((x[:8],), mesh, pad=False)
    out["even_rows"], out["even_mask"] = int(x8.shape[0]), float(mask8.sum())
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def result():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_batch_is_padded_and_spread_over_four_devices(result):
    assert result["padded_rows"] == 12 and result["mask_sum"] == 10
    assert result["x_devices"] == 4 and result["param_devices"] == 4


def test_sharded_training_equals_single_device(result):
    assert result["param_err"] < 1e-5
    np.testing.assert_allclose(result["losses"][1], result["losses"][0], rtol=1e-5)
    assert result["losses"][0][-1] < result["losses"][0][0]  # it trained


def test_sharded_feature_extraction_equals_single_device(result):
    assert result["feature_err"] < 1e-5


def test_indivisible_batch_without_padding_is_a_clear_error(result):
    msg = result["no_pad_error"]
    assert msg and "10" in msg and "4 local devices" in msg
    assert result["even_rows"] == 8 and result["even_mask"] == 8


def test_masked_mean_ignores_padding():
    from minicnn.parallel import masked_mean, pad_batch
    v = np.arange(6, dtype=np.float32).reshape(3, 2)
    (padded,), mask = pad_batch((v,), 4)
    assert padded.shape == (4, 2) and mask.tolist() == [1, 1, 1, 0]
    assert float(masked_mean(padded + 100 * (1 - mask)[:, None], mask)) == pytest.approx(v.mean())
    with pytest.raises(ValueError, match="same leading"):
        pad_batch((v, v[:2]), 4)


TRAINER_SCRIPT = textwrap.dedent("""
    import json
    import jax, numpy as np
    from minicnn import parallel
    from minicnn.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D, Sequential
    from minicnn.train import Trainer

    assert jax.device_count() == 4
    model = Sequential([Conv2D(4, 3, activation="relu"), BatchNormalization(), MaxPooling2D(2), Flatten(),
                        Dropout(0.3), Dense(1, activation="sigmoid")])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 10, 10, 3)).astype(np.float32)
    y = rng.integers(0, 2, 40).astype(np.float32)
    runs = {}
    for name, mesh in (("one", None), ("four", parallel.data_mesh())):
        trainer = Trainer(model, "binary_crossentropy", "adam", mesh=mesh)
        history = trainer.fit(x, y, batch_size=8, epochs=1, verbose=0, seed=3)   # 5 steps
        runs[name] = {"params": [np.asarray(a).tolist() for a in jax.tree.leaves(trainer.variables)],
                      "loss": history.history["loss"],
                      "eval": trainer.evaluate(x[:13], y[:13], batch_size=13, return_dict=True),  # 13 rows: padded to 16
                      "predict": trainer.predict(x[:7]).tolist(),
                      "devices": len(jax.tree.leaves(trainer.state["params"])[0].sharding.device_set)}
    try:
        Trainer(model, "binary_crossentropy", "adam", mesh=parallel.data_mesh()).fit(x[:6], y[:6], batch_size=6,
                                                                                   verbose=0)
        runs["error"] = None
    except ValueError as e:
        runs["error"] = str(e)
    print(json.dumps(runs))
""")


def test_trainer_data_parallel_equals_single_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", TRAINER_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    one, four = runs["one"], runs["four"]
    assert one["devices"] == 1 and four["devices"] == 4
    for a, b in zip(one["params"], four["params"]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(four["loss"], one["loss"], rtol=1e-5)
    for k in one["eval"]:
        assert abs(four["eval"][k] - one["eval"][k]) <= 1e-5 * max(1.0, abs(one["eval"][k]))
    np.testing.assert_allclose(four["predict"], one["predict"], rtol=1e-5, atol=1e-6)
    assert "not divisible by the 4 local devices" in runs["error"]
