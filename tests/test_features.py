"""The Ilyas et al. 2019 constructions (`jaxrobust.features`): target rules, the invariants
of each construction on a trained digits MLP, determinism, sharding, bad input, and the
resumable writer whose result loads and trains like any dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from feature_models import digits_features_fn, digits_logits_fn

from jaxrobust import features as F
from jaxrobust.data import get_info, load_split, make_loader
from jaxrobust.errors import ConfigError, DatasetError, InputError
from jaxrobust.represent import feature_error

KEY = jax.random.key(0)
EPS = 2.0  # ℓ2, pixels in [0, 1] on 8×8 digits: enough for ~100% targeted success here
WORKER = Path(__file__).with_name("features_worker.py")


@pytest.fixture(scope="module")
def data():
    x, y = load_split("digits", "train", limit=128)
    return jnp.asarray(x), jnp.asarray(y)


@pytest.fixture(scope="module")
def model():
    return digits_logits_fn()


def _l2(d) -> np.ndarray:
    d = np.asarray(d, np.float64)
    return np.linalg.norm(d.reshape(d.shape[0], -1), axis=1)


# ------------------------------------------------------------------------------ targets


def test_deterministic_targets_never_equal_the_label():
    for c in (2, 3, 10, 100):
        y = jnp.arange(5 * c) % c
        t = F.deterministic_targets(y, c)
        assert t.dtype == jnp.int32
        np.testing.assert_array_equal(t, (np.asarray(y) + 1) % c)
        assert np.all(np.asarray(t) != np.asarray(y))
        assert np.all((np.asarray(t) >= 0) & (np.asarray(t) < c))


def test_random_targets_are_uniform_and_independent_of_y():
    # n = 20000 draws over C = 10 classes: expected 2000 per class. Pearson's χ² with 9
    # degrees of freedom exceeds 27.88 with probability 0.001 under uniformity; the draw
    # is a fixed function of the key, so the test is deterministic.
    n, c = 20000, 10
    y = jnp.asarray(np.arange(n) % c)
    t = np.asarray(F.random_targets(KEY, y, c))
    counts = np.bincount(t, minlength=c)
    assert counts.shape == (c,) and t.min() >= 0 and t.max() < c
    chi2 = float(np.sum((counts - n / c) ** 2 / (n / c)))
    assert chi2 < 27.88, counts
    # Agreement with y at chance: Binomial(n, 1/C), sd = sqrt(n p (1-p)) = 42.4 counts;
    # 4 sd is 0.0085 of n.
    assert abs(np.mean(t == np.asarray(y)) - 1 / c) < 0.0085
    # Per-example keys: a prefix of the batch draws the same targets.
    np.testing.assert_array_equal(F.random_targets(KEY, y[:100], c), t[:100])
    assert not np.array_equal(F.random_targets(jax.random.key(1), y, c), t)


def test_other_indices_never_pick_the_example_itself():
    j = np.asarray(F.other_indices(KEY, 500))
    assert np.all(j != np.arange(500)) and j.min() >= 0 and j.max() < 500
    assert len(np.unique(j)) > 250  # spread, not a fixed shift
    with pytest.raises(InputError):
        F.other_indices(KEY, 1)


# ------------------------------------------------------------------------ D_rand / D_det


@pytest.mark.parametrize("rule", ["random", "deterministic"])
def test_relabelled_adversarial_invariants(model, data, rule):
    x, y = data
    c = F.relabelled_adversarial(model, x, y, KEY, eps=EPS, steps=50, rule=rule)
    x_adv = np.asarray(c.x)
    # In the ℓ2 ball around x and in the box.
    assert np.all(_l2(x_adv - np.asarray(x)) <= EPS + 1e-5)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    # Targets follow the rule.
    if rule == "deterministic":
        np.testing.assert_array_equal(c.label, (np.asarray(y) + 1) % 10)
        assert np.all(np.asarray(c.label) != np.asarray(y))
    else:
        np.testing.assert_array_equal(c.label, F.random_targets(jax.random.split(KEY)[0], y, 10))
    # success is the source model's prediction of the target, and it is high.
    pred = np.asarray(model(c.x)).argmax(-1)
    np.testing.assert_array_equal(c.success, pred == np.asarray(c.label))
    assert float(np.mean(c.success)) >= 0.95
    assert np.all(np.isfinite(c.value)) and np.all(np.asarray(c.value) >= 0)


def test_d_rand_and_d_det_wrappers_and_determinism(model, data):
    x, y = data[0][:32], data[1][:32]
    a = F.d_rand_batch(model, x, y, KEY, eps=1.0, steps=10)
    b = F.d_rand_batch(model, x, y, KEY, eps=1.0, steps=10)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.label, b.label)
    ref = F.relabelled_adversarial(model, x, y, KEY, eps=1.0, steps=10, rule="random")
    np.testing.assert_array_equal(a.x, ref.x)
    d = F.d_det_batch(model, x, y, KEY, eps=1.0, steps=10)
    np.testing.assert_array_equal(d.label, (np.asarray(y) + 1) % 10)
    # A smaller ball succeeds less often (and never leaves its ball).
    small = F.d_det_batch(model, x, y, KEY, eps=0.25, steps=10)
    assert np.all(_l2(np.asarray(small.x) - np.asarray(x)) <= 0.25 + 1e-5)
    assert np.mean(small.success) <= np.mean(d.success)


def test_jit_equals_eager(model, data):
    x, y = data[0][:8], data[1][:8]
    jitted = F.d_det_batch(model, x, y, KEY, eps=1.0, steps=5)
    with jax.disable_jit():
        eager = F.d_det_batch(model, x, y, KEY, eps=1.0, steps=5)
    np.testing.assert_allclose(jitted.x, eager.x, atol=1e-5)
    np.testing.assert_array_equal(jitted.label, eager.label)
    # And the whole construction inside a user's jit.
    outer = jax.jit(lambda xx: F.d_det_batch(model, xx, y, KEY, eps=1.0, steps=5).x)(x)
    np.testing.assert_allclose(outer, jitted.x, atol=1e-6)


def test_relabelled_bad_input(model, data):
    x, y = data[0][:4], data[1][:4]
    with pytest.raises(InputError, match="eps"):
        F.d_rand_batch(model, x, y, KEY, eps=-1.0, steps=2)
    with pytest.raises(InputError, match="eps"):
        F.d_rand_batch(model, x, y, KEY, eps=float("nan"), steps=2)
    with pytest.raises(InputError, match="shapes"):
        F.d_rand_batch(model, x, y[:3], KEY, eps=1.0, steps=2)
    with pytest.raises(InputError, match="NaN"):
        F.d_det_batch(model, x.at[0, 0, 0, 0].set(jnp.nan), y, KEY, eps=1.0, steps=2)
    with pytest.raises(InputError, match="range"):
        F.d_det_batch(model, x + 2.0, y, KEY, eps=1.0, steps=2)
    with pytest.raises(InputError, match="labels"):
        F.d_det_batch(model, x, y + 10, KEY, eps=1.0, steps=2)
    with pytest.raises(InputError, match="rule"):
        F.relabelled_adversarial(model, x, y, KEY, eps=1.0, steps=2, rule="nope")
    with pytest.raises(InputError, match="steps"):
        F.d_det_batch(model, x, y, KEY, eps=1.0, steps=-1)
    with pytest.raises(InputError, match="step_size"):
        F.d_det_batch(model, x, y, KEY, eps=1.0, steps=2, step_size=-0.1)


# --------------------------------------------------------------------------- D_R / D_NR


def test_d_robust_batch_features_within_tolerance(data):
    f = digits_features_fn()
    x, y = data[0][:64], data[1][:64]
    tol = 0.05
    c = F.d_robust_batch(f, x, y, KEY, steps=300, step_size=1.0, tol=tol)
    np.testing.assert_array_equal(c.label, y)
    assert np.asarray(c.x).min() >= 0.0 and np.asarray(c.x).max() <= 1.0
    np.testing.assert_allclose(
        c.value, feature_error(f, c.x, f(x)["features"]), rtol=1e-3, atol=1e-5
    )
    np.testing.assert_array_equal(c.success, np.asarray(c.value) <= tol)
    assert float(np.mean(c.success)) >= 0.95
    assert float(np.median(c.value)) < 0.01
    # Started from uniform noise (ℓ2 distance ~4.6 from x), they end near x but not on it:
    # 64 ReLU features of 64 pixels nearly determine the input.
    dist = _l2(np.asarray(c.x) - np.asarray(x))
    assert 0.01 < float(np.mean(dist)) < 2.0
    # Fewer steps: larger errors.
    short = F.d_robust_batch(f, x, y, KEY, steps=20, step_size=1.0, tol=tol)
    assert float(np.mean(short.value)) > float(np.mean(c.value))


def test_d_robust_batch_from_other_images_and_determinism(data):
    f = digits_features_fn()
    x, y = data[0][:32], data[1][:32]
    j = F.other_indices(KEY, 32)
    starts = x[j]
    a = F.d_robust_batch(f, x, y, KEY, steps=100, step_size=1.0, x_start=starts)
    b = F.d_robust_batch(f, x, y, jax.random.key(9), steps=100, step_size=1.0, x_start=starts)
    # The key only draws noise starts: with given starts the result does not depend on it.
    np.testing.assert_array_equal(a.x, b.x)
    assert float(np.median(a.value)) < 0.02
    assert not np.any(a.success)  # no tol: no success flags
    n1 = F.d_robust_batch(f, x, y, KEY, steps=5, step_size=1.0)
    n2 = F.d_robust_batch(f, x, y, KEY, steps=5, step_size=1.0)
    n3 = F.d_robust_batch(f, x, y, jax.random.key(5), steps=5, step_size=1.0)
    np.testing.assert_array_equal(n1.x, n2.x)
    assert not np.array_equal(n1.x, n3.x)


def test_d_robust_batch_bad_input(data):
    f = digits_features_fn()
    x, y = data[0][:4], data[1][:4]
    with pytest.raises(InputError, match="x_start"):
        F.d_robust_batch(f, x, y, KEY, steps=2, step_size=0.1, x_start=x[:2])
    with pytest.raises(InputError, match="NaN"):
        F.d_robust_batch(f, x.at[0, 0, 0, 0].set(jnp.nan), y, KEY, steps=2, step_size=0.1)
    with pytest.raises(InputError, match="step_size"):
        F.d_robust_batch(f, x, y, KEY, steps=2, step_size=-1.0)
    with pytest.raises(InputError, match="tol"):
        F.d_robust_batch(f, x, y, KEY, steps=2, step_size=0.1, tol=-1.0)
    with pytest.raises(InputError, match="no layer"):
        F.d_robust_batch(f, x, y, KEY, steps=2, step_size=0.1, layer="nope")
    with pytest.raises(InputError, match="shapes"):
        F.d_robust_batch(f, x, y[:3], KEY, steps=2, step_size=0.1)


# ------------------------------------------------------------------------------ sharding


@pytest.mark.slow
def test_two_devices_give_the_one_device_results(tmp_path):
    sys.path.insert(0, str(WORKER.parent))
    try:
        from features_worker import model as worker_model
    finally:
        sys.path.pop(0)
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    out = tmp_path / "two.npz"
    subprocess.run(
        [sys.executable, str(WORKER), str(out), str(tmp_path / "built2")],
        env=env,
        check=True,
        timeout=600,
    )
    two = dict(np.load(out))
    assert int(two["devices"]) == 2 and int(two["input_devices"]) == 2
    logits_fn, features_fn = worker_model()
    x, y = load_split("digits", "train", limit=32)
    key = jax.random.key(3)
    rand = F.d_rand_batch(logits_fn, x, y, key, eps=1.0, steps=10)
    det = F.d_det_batch(logits_fn, x, y, key, eps=1.0, steps=10)
    rob = F.d_robust_batch(features_fn, x, y, key, steps=20, step_size=0.5)
    np.testing.assert_array_equal(two["rand_label"], rand.label)
    np.testing.assert_array_equal(two["det_label"], det.label)
    np.testing.assert_allclose(two["rand_x"], rand.x, atol=1e-5)
    np.testing.assert_allclose(two["det_x"], det.x, atol=1e-5)
    np.testing.assert_allclose(two["robust_x"], rob.x, atol=1e-4)
    np.testing.assert_allclose(two["robust_value"], rob.value, rtol=1e-3, atol=1e-5)
    # The writer shards its chunks over the two devices: same dataset as on one.
    built = F.build_dataset(
        "d_det", logits_fn, tmp_path / "built1", eps=1.0, steps=10, chunk_size=16, limit=48
    )
    bx, by = load_split(built["name"], "train")
    np.testing.assert_array_equal(two["built_y"], by)
    np.testing.assert_allclose(two["built_x"], bx, atol=1e-5)


# ------------------------------------------------------------------------------- writer


def _build(kind, source, out, **kw):
    args = dict(eps=EPS, steps=20, chunk_size=32, limit=96, seed=1)
    if kind in ("d_robust", "d_nonrobust"):
        args.update(step_size=1.0, tol=0.05)
    args.update(kw)
    return F.build_dataset(kind, source, out, **args)


def test_writer_resumes_after_interruption_and_equals_an_uninterrupted_build(model, tmp_path):
    full = _build("d_rand", model, tmp_path / "full")
    assert full["complete"] and full["num_chunks"] == 3
    out = tmp_path / "interrupted"
    first = _build("d_rand", model, out, max_chunks=1)
    assert first == {"complete": False, "chunks_done": 1, "num_chunks": 3}
    with pytest.raises(DatasetError, match="no finished derived dataset"):
        load_split(f"derived:{out}", "train")
    # A crash while writing leaves a temporary file behind: it is not a chunk.
    (out / "chunks" / "chunk_00001.npz.tmp").write_bytes(b"partial")
    second = _build("d_rand", model, out, max_chunks=1)
    assert second["chunks_done"] == 2 and not second["complete"]
    done = _build("d_rand", model, out)
    assert done["complete"] and done["name"] == f"derived:{out}"
    xa, ya = load_split(full["name"], "train")
    xb, yb = load_split(done["name"], "train")
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    batch = next(iter(make_loader(done["name"], "train", batch_size=32, seed=0)))
    assert batch["image"].shape == (32, 8, 8, 1) and batch["label"].shape == (32,)
    # A damaged chunk (e.g. a disk error) is computed again, to the same values.
    (out / "chunks" / "chunk_00002.npz").write_bytes(b"garbage")
    (out / "dataset.json").unlink()
    redone = _build("d_rand", model, out)
    np.testing.assert_array_equal(load_split(redone["name"], "train")[0], xa)
    # Calling it again on a finished build rebuilds nothing and gives the same data.
    again = _build("d_rand", model, out)
    assert again["complete"] and again["summary"] == done["summary"]
    # Other parameters on the same folder: refused, never mixed.
    with pytest.raises(ConfigError, match="eps"):
        _build("d_rand", model, out, eps=1.0)
    with pytest.raises(ConfigError, match="kind"):
        _build("d_det", model, out)
    # A chunk from another build, copied in: refused too.
    other = tmp_path / "other"
    _build("d_rand", model, other, seed=2, max_chunks=1)
    (out / "dataset.json").unlink()
    (other / "chunks" / "chunk_00000.npz").replace(out / "chunks" / "chunk_00000.npz")
    with pytest.raises(ConfigError, match="other parameters"):
        _build("d_rand", model, out)


def test_built_d_det_and_d_rand_datasets_report_their_invariants(model, tmp_path):
    x, y = load_split("digits", "train", limit=96)
    det = _build("d_det", model, tmp_path / "det", source_name="digits mlp (test)")
    xd, td = load_split(det["name"], "train")
    assert np.all(td != y)  # every D_det label differs from the true class
    np.testing.assert_array_equal(td, (y + 1) % 10)
    assert np.all(_l2(xd - x) <= EPS + 1e-5) and xd.min() >= 0 and xd.max() <= 1
    s = det["summary"]
    assert s["label_agreement_with_true_class"] == 0.0 and s["num_examples"] == 96
    assert s["targeted_success_rate"] >= 0.9 and s["max_l2_perturbation"] <= EPS + 1e-5
    meta = json.loads((tmp_path / "det" / "dataset.json").read_text())
    prov = meta["provenance"]
    assert prov["source"] == "digits mlp (test)"
    assert prov["params"]["kind"] == "d_det" and prov["params"]["eps"] == EPS
    assert prov["params"]["steps"] == 20 and prov["params"]["seed"] == 1
    assert len(prov["params"]["source_digest"]) == 16
    # The test split is the source dataset's own.
    xt, yt = load_split(det["name"], "test")
    xo, yo = load_split("digits", "test")
    np.testing.assert_array_equal(xt, xo)
    np.testing.assert_array_equal(yt, yo)
    info = get_info(det["name"])
    assert info.image_shape == (8, 8, 1) and info.num_classes == 10
    assert info.mean == get_info("digits").mean
    # D_rand: labels agree with y about 1/C of the time (n = 96: Binomial sd 0.031).
    rand = _build("d_rand", model, tmp_path / "rand")
    _, tr = load_split(rand["name"], "train")
    assert abs(np.mean(tr == y) - 0.1) < 4 * 0.031
    assert rand["summary"]["chance_agreement"] == 0.1
    assert rand["summary"]["label_agreement_count"] == int(np.sum(tr == y))


def test_built_d_nonrobust_dataset_meets_tolerance(tmp_path):
    f = digits_features_fn()
    for start in ("noise", "image"):
        out = tmp_path / start
        built = _build("d_nonrobust", f, out, steps=200, start=start)
        s = built["summary"]
        assert s["fraction_within_tol"] >= 0.95 and s["tol"] == 0.05
        assert s["relative_feature_error_median"] < 0.02
        xb, yb = load_split(built["name"], "train")
        x, y = load_split("digits", "train", limit=96)
        np.testing.assert_array_equal(yb, y)  # D_R / D_NR keep the labels
        err = np.asarray(feature_error(f, xb, f(x)["features"]))
        np.testing.assert_allclose(np.median(err), s["relative_feature_error_median"], rtol=1e-3)


def test_writer_bad_arguments(model, tmp_path):
    with pytest.raises(ConfigError, match="kind"):
        F.build_dataset("d_nope", model, tmp_path / "a")
    with pytest.raises(ConfigError, match="start"):
        F.build_dataset("d_robust", model, tmp_path / "a", step_size=1.0, start="nope")
    with pytest.raises(ConfigError, match="step_size"):
        F.build_dataset("d_robust", model, tmp_path / "a")
    with pytest.raises(InputError, match="eps"):
        F.build_dataset("d_det", model, tmp_path / "a", eps=-1.0)
    with pytest.raises(InputError, match="source"):
        F.build_dataset("d_det", 3, tmp_path / "a")
    with pytest.raises(DatasetError, match="no finished derived dataset"):
        get_info(f"derived:{tmp_path / 'missing'}")


@pytest.mark.slow
def test_built_dataset_trains_with_the_training_loop(model, tmp_path):
    from jaxrobust.config import smoke_config
    from jaxrobust.train.loop import train

    built = _build("d_det", model, tmp_path / "det", limit=128)
    cfg = smoke_config()
    cfg.dataset = built["name"]
    cfg.objective = "standard"
    cfg.epochs = 1
    cfg.batch_size = 32
    cfg.eval.eps_list = (0.0,)
    cfg.eval.during_examples = 64
    metrics = train(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    assert metrics["epochs"] == 1 or metrics.get("history")
    assert 0.0 <= metrics["clean_accuracy"] <= 1.0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["dataset"] == built["name"]


@pytest.mark.slow
def test_build_from_a_run_directory(smoke_run, tmp_path):
    # The smoke run is PGD-trained (robust): inverting its features is D_R.
    built = F.build_dataset(
        "d_robust", smoke_run, tmp_path / "dr", steps=100, step_size=1.0, tol=0.1, limit=64
    )
    prov = built["provenance"]
    assert str(Path(smoke_run).absolute()) in prov["source"] and "step" in prov["source"]
    assert built["summary"]["num_examples"] == 64
    _, y = load_split(built["name"], "train")
    np.testing.assert_array_equal(y, load_split("digits", "train", limit=64)[1])


@pytest.mark.slow  # compile-heavy: runs with the slow tests, keeping the default suite < 15 min
def test_build_passes_dataset_kwargs_to_the_source_dataset(tmp_path):
    """dataset_kwargs reach the source dataset (train and test splits) and the recorded
    build parameters; other kwargs are another build (ConfigError on resume)."""
    kw = {"planted": True, "num_train": 24, "num_test": 16}
    w = jax.random.normal(jax.random.key(0), (32 * 32 * 3, 10)) * 0.05
    f = lambda z: z.reshape(z.shape[0], -1) @ w  # noqa: E731
    built = F.build_dataset(
        "d_det", f, tmp_path / "det", dataset="shapes", dataset_kwargs=kw, eps=0.5, steps=2,
        chunk_size=16, source_name="linear (test)",
    )  # fmt: skip
    assert built["provenance"]["params"]["dataset_kwargs"] == kw
    x, y = load_split("shapes", "train", dataset_kwargs=kw)
    xd, td = load_split(built["name"], "train")
    assert xd.shape == x.shape == (24, 32, 32, 3)
    assert np.all(_l2(xd - x) <= 0.5 + 1e-5) and np.all(td == (y + 1) % 10)
    xt, _ = load_split(built["name"], "test")
    np.testing.assert_array_equal(xt, load_split("shapes", "test", dataset_kwargs=kw)[0])
    plain, _ = load_split("shapes", "test", dataset_kwargs={"num_train": 24, "num_test": 16})
    assert not np.array_equal(xt, plain)  # the planted variant, not the plain one
    with pytest.raises(ConfigError, match="dataset_kwargs"):
        F.build_dataset(
            "d_det", f, tmp_path / "det", dataset="shapes", eps=0.5, steps=2, chunk_size=16,
            source_name="linear (test)",
        )  # fmt: skip
