"""Randomized smoothing (jaxrobust.certify.smoothing): statistics against closed forms on a
linear base classifier, determinism, abstention, jit/vmap, resumption, input checks, the
Gaussian-noise objective and the `jaxrobust certify` command."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import beta, norm

from jaxrobust.certify import smoothing as sm
from jaxrobust.errors import ConfigError, InputError

W = np.array([1.0, -0.5, 0.25, 0.0], np.float32)
B = -0.3
# Every test shares one model function, one input shape (batch 4 of 4 features, 3 classes)
# and two sample counts, so that the whole file compiles a handful of programs.
N0, N, CHUNK, BATCH = 64, 20_000, 2000, 4


def _affine(w, b, x):
    return x.reshape(x.shape[0], -1) @ w + b


def affine(w, b):
    """The model x -> x·w + b, w (4, 3), as a Partial carrying its weights."""
    return jax.tree_util.Partial(_affine, jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32))


# Two classes (a third that never wins), class 1 iff w·x + b > 0: P(correct under N(0, σ²I))
# = Φ(|w·x + b| / (σ‖w‖)). Logits (−z/2, z/2, −100).
linear = affine(np.stack([-W / 2, W / 2, 0 * W], 1), np.array([-B / 2, B / 2, -100.0]))
# A tie: classes 0 and 1 each win on half of the noise (the sign of x0 − 1/2 + noise).
tied = affine(np.stack([np.eye(4)[0], -np.eye(4)[0], np.zeros(4)], 1), np.array([-0.5, 0.5, 0]))
# A constant: class 1 everywhere.
constant = affine(np.zeros((4, 3)), np.array([0.0, 1.0, 0.0]))
KW = {"n0": N0, "n": N, "chunk": CHUNK, "batch_size": BATCH}


def _points():
    """Six inputs whose p_A under `linear` is 0.5 (a tie), 0.6, 0.75, 0.9, 0.99, 0.999 at
    σ = 0.15: (x (6, 4), p_A, true class, σ)."""
    sigma, wn = 0.15, float(np.linalg.norm(W))
    p = np.array([0.5, 0.6, 0.75, 0.9, 0.99, 0.999])
    z = norm.ppf(p) * sigma * wn * np.array([1, 1, -1, 1, -1, 1])
    # Move x along w from a base point so that w·x + b = z, staying inside [0, 1].
    base = np.full(4, 0.5, np.float32)
    x = base + np.outer((z - (base @ W + B)) / (W @ W), W)
    assert np.all((x >= 0) & (x <= 1))
    return x.astype(np.float32), p, (z > 0).astype(np.int64), sigma


def test_linear_radius_matches_closed_form_within_clopper_pearson_slack():
    x, p_true, label, sigma = _points()
    alpha = 0.001
    cert = sm.certify(linear, x, jax.random.key(0), sigma=sigma, alpha=alpha, **KW)
    certified = p_true > 0.5
    # The tie (p_A = 1/2) abstains; every other point returns its true class.
    assert cert.prediction[0] == sm.ABSTAIN and cert.radius[0] == 0
    np.testing.assert_array_equal(cert.prediction[certified], label[certified])
    # The bound is the Clopper-Pearson bound of the count, and the radius σ·Φ⁻¹ of it.
    c = cert.count[certified]
    np.testing.assert_allclose(cert.p_a_lower[certified], beta.ppf(alpha, c, N - c + 1))
    np.testing.assert_allclose(cert.radius[certified], sigma * norm.ppf(cert.p_a_lower[certified]))
    # Sound: below the true p_A and radius (a 1 - alpha event; the key is fixed) ...
    true_radius = sigma * norm.ppf(p_true[certified])
    assert np.all(cert.p_a_lower[certified] <= p_true[certified])
    assert np.all(cert.radius[certified] <= true_radius)
    # ... and within the slack: no lower than the bound of a count 4.5 SD below its mean.
    pc = p_true[certified]
    low_count = np.floor(N * pc - 4.5 * np.sqrt(N * pc * (1 - pc)))
    slack_bound = sigma * norm.ppf(beta.ppf(alpha, low_count, N - low_count + 1))
    assert np.all(cert.radius[certified] >= slack_bound)
    assert np.all(true_radius - cert.radius[certified] < 0.03)


def test_certify_is_deterministic_and_independent_of_batching():
    x, _, _, sigma = _points()
    a = sm.certify(linear, x, jax.random.key(1), sigma=sigma, **KW)
    b = sm.certify(linear, x, jax.random.key(1), sigma=sigma, **KW)
    c = sm.certify(
        linear, x, jax.random.key(1), sigma=sigma, **{**KW, "batch_size": 3, "chunk": 1500}
    )
    for f in ("prediction", "radius", "p_a_lower", "count"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        np.testing.assert_array_equal(getattr(a, f), getattr(c, f))
    other = sm.certify(linear, x, jax.random.key(2), sigma=sigma, **KW)
    assert not np.array_equal(a.count, other.count)


_SHARDED = """
import json, sys
sys.path.insert(0, sys.argv[1])
import jax
from test_smoothing import KW, _points, linear
from jaxrobust.certify import smoothing as sm
x, _, _, sigma = _points()
c = sm.certify(linear, x, jax.random.key(1), sigma=sigma, **KW)
print(json.dumps({"devices": jax.device_count(), "count": c.count.tolist()}))
"""


@pytest.mark.slow  # compiles several programs: the default suite keeps under 15 minutes
def test_certify_sharded_over_two_devices_gives_the_same_certificates():
    """The batches are sharded over 2 (simulated CPU) devices in a subprocess: the counts
    are those of one device, bit for bit."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    x, _, _, sigma = _points()
    one = sm.certify(linear, x, jax.random.key(1), sigma=sigma, **KW)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    env["JAX_PLATFORMS"] = "cpu"
    tests = str(Path(__file__).parent)
    proc = subprocess.run(
        [sys.executable, "-c", _SHARDED, tests],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    two = json.loads(proc.stdout.strip().splitlines()[-1])
    assert two["devices"] == 2
    assert two["count"] == one.count.tolist()


def test_predict_abstains_on_a_tie_and_not_on_a_clear_winner():
    from scipy.stats import binomtest

    x, _, label, sigma = _points()
    pred = sm.predict(linear, x, jax.random.key(3), sigma=sigma, n=N, chunk=CHUNK, batch_size=BATCH)
    assert pred.prediction[0] == sm.ABSTAIN  # p_A = 1/2: the test cannot reject a tie
    assert pred.p_value[0] > 0.001
    np.testing.assert_array_equal(pred.prediction[1:], label[1:])
    assert np.all(pred.count_a + pred.count_b == N)  # the third class never wins
    # The two-sided p-value of the exact binomial test.
    for a, b, p in zip(pred.count_a, pred.count_b, pred.p_value, strict=True):
        assert p == pytest.approx(binomtest(int(a), int(a + b), 0.5).pvalue, rel=1e-9)


def test_a_tie_abstains_and_a_constant_model_reaches_the_largest_radius():
    x = np.full((4, 4), 0.5, np.float32)
    cert = sm.certify(tied, x, jax.random.key(0), sigma=1.0, **KW)
    assert np.all(cert.prediction == sm.ABSTAIN) and np.all(cert.radius == 0)
    assert np.all(np.abs(cert.count / N - 0.5) < 0.02)
    pred = sm.predict(tied, x, jax.random.key(0), sigma=1.0, n=N, chunk=CHUNK, batch_size=BATCH)
    assert np.all(pred.prediction == sm.ABSTAIN)
    cert = sm.certify(constant, x, jax.random.key(0), sigma=0.5, alpha=0.01, **KW)
    assert np.all(cert.prediction == 1)
    np.testing.assert_allclose(cert.radius, sm.max_radius(N, 0.01, 0.5))
    np.testing.assert_allclose(cert.radius, 0.5 * norm.ppf(0.01 ** (1 / N)), rtol=1e-6)


def test_sample_counts_jits_and_vmaps():
    x = jnp.asarray(_points()[0][:BATCH])

    @jax.jit
    def counts(key):
        return sm.sample_counts(linear, x, key, sigma=0.15, num=N0, num_classes=3, chunk=N0)

    first = counts(jax.random.key(0))
    assert first.shape == (BATCH, 3) and np.all(np.asarray(first).sum(1) == N0)
    np.testing.assert_array_equal(counts(jax.random.key(0)), first)
    keys = jax.random.split(jax.random.key(5), 2)
    batched = jax.vmap(counts)(keys)
    for i in range(2):
        np.testing.assert_array_equal(batched[i], counts(keys[i]))
    # (That example i's noise is keyed by offset + i, whatever the batch, is checked
    # through `certify` in test_certify_is_deterministic_and_independent_of_batching.)


def test_certified_accuracy_counts_correct_and_large_enough_radii():
    cert = sm.Certificate(
        prediction=np.array([0, 1, sm.ABSTAIN, 2]),
        radius=np.array([0.3, 0.6, 0.0, 1.0]),
        p_a_lower=np.zeros(4),
        count=np.zeros(4),
        sigma=0.25,
        n0=1,
        n=1,
        alpha=0.1,
    )
    y = np.array([0, 1, 1, 0])  # the last is certified, but wrong
    np.testing.assert_allclose(
        sm.certified_accuracy(cert, y, [0, 0.3, 0.5, 0.7]), [0.5, 0.5, 0.25, 0]
    )
    assert sm.certified_accuracy(cert, y, 0.6).shape == ()
    r, acc = sm.certified_accuracy_curve(cert, y)
    assert r[0] == 0 and acc[0] == 0.5 and np.all(np.diff(acc) <= 0)
    with pytest.raises(InputError, match="one label per"):
        sm.certified_accuracy(cert, y[:3], 0.1)
    with pytest.raises(InputError, match="radii"):
        sm.certified_accuracy(cert, y, -0.1)


def test_interrupted_certification_resumes_to_the_same_result(tmp_path):
    x, _, _, sigma = _points()
    full = sm.certify(linear, x, jax.random.key(0), sigma=sigma, **KW)
    state = tmp_path / "state.json"

    def stop(done, total):
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sm.certify(linear, x, jax.random.key(0), sigma=sigma, state_file=state, progress=stop, **KW)
    assert json.loads(state.read_text())["done"] == 4
    seen = []

    def record(done, total):
        seen.append(done)

    resumed = sm.certify(
        linear, x, jax.random.key(0), sigma=sigma, state_file=state, progress=record, **KW
    )
    assert seen == [6]  # only the last batch was computed
    for f in ("prediction", "radius", "count"):
        np.testing.assert_array_equal(getattr(resumed, f), getattr(full, f))
    # Other settings ignore the saved state.
    seen.clear()
    sm.certify(linear, x, jax.random.key(1), sigma=sigma, state_file=state, progress=record, **KW)
    assert seen == [4, 6]


_BAD_SIGMA = st.sampled_from([0, 0.0, -0.25, float("nan"), float("inf"), "0.25", None, True])
_BAD_COUNT = st.one_of(st.integers(max_value=0), st.sampled_from([1.5, "10", None, True]))
_BAD_ALPHA = st.one_of(
    st.sampled_from([0, 1, 0.0, 1.0, float("nan"), "0.01", None]),
    st.floats(max_value=0, allow_nan=False),
    st.floats(min_value=1, allow_nan=False),
)


@settings(max_examples=25, deadline=None)
@given(sigma=_BAD_SIGMA, n0=_BAD_COUNT, n=_BAD_COUNT, alpha=_BAD_ALPHA, which=st.integers(0, 3))
def test_bad_settings_raise_named_errors(sigma, n0, n, alpha, which):
    good = {"sigma": 0.5, "n0": 10, "n": 10, "alpha": 0.01}
    name = ("sigma", "n0", "n", "alpha")[which]
    bad = {**good, name: (sigma, n0, n, alpha)[which]}
    x = _points()[0]
    with pytest.raises(InputError, match=rf"^{name}\b"):
        sm.certify(linear, x, jax.random.key(0), **bad)
    if name != "n0":
        kw = {k: v for k, v in bad.items() if k != "n0"}
        with pytest.raises(InputError, match=rf"^{name}\b"):
            sm.predict(linear, x, jax.random.key(0), **kw)


@pytest.mark.parametrize(
    ("x", "model", "match"),
    [
        (np.zeros((0, 4), np.float32), linear, "empty"),
        (np.float32(0.5), linear, "leading batch axis"),
        (np.full((2, 4), 1.5, np.float32), linear, "input range"),
        (np.full((2, 4), np.nan, np.float32), linear, "NaN"),
        (np.zeros((2, 4), np.int32), linear, "floating"),
        (np.zeros((2, 4), np.float32), lambda v: v[:, 0], "logits of shape"),
        (np.zeros((2, 4), np.float32), lambda v: v[:, :1], "at least 2 classes"),
        (np.zeros((2, 5), np.float32), linear, "logits_fn"),
    ],
)
def test_bad_inputs_and_models_raise_named_errors(x, model, match):
    with pytest.raises(InputError, match=match):
        sm.certify(model, x, jax.random.key(0), sigma=0.5, n0=2, n=2)
    with pytest.raises(InputError, match="key"):
        sm.certify(linear, np.zeros((2, 4), np.float32), 0, sigma=0.5, n0=2, n=2)
    with pytest.raises(InputError, match="chunk"):
        sm.certify(linear, np.zeros((2, 4), np.float32), jax.random.key(0), sigma=0.5, chunk=0)


def test_smoothed_logits_fn_is_a_fixed_differentiable_average():
    x = jnp.asarray(_points()[0])
    f = sm.smoothed_logits_fn(linear, jax.random.key(0), sigma=0.15, samples=2000)
    value_and_grad = jax.jit(jax.value_and_grad(lambda v: (f(v)[:, 1].sum(), f(v)), has_aux=True))
    (_, logp), grad = value_and_grad(x)
    np.testing.assert_array_equal(value_and_grad(x)[0][1], logp)  # the same draws each call
    assert logp.shape == (6, 3)
    np.testing.assert_allclose(jnp.exp(logp).sum(-1), 1, rtol=1e-5)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)
    # The mean softmax ranks the classes like p_A does.
    _, p_true, label, _ = _points()
    top = np.asarray(jnp.argmax(logp, -1))
    np.testing.assert_array_equal(top[p_true >= 0.75], label[p_true >= 0.75])
    with pytest.raises(InputError, match="sigma"):
        sm.smoothed_logits_fn(linear, jax.random.key(0), sigma=0)


def test_gaussian_noise_objective_and_config():
    from jaxrobust.config import load_config
    from jaxrobust.train import gaussian_noise

    with pytest.raises(InputError, match="sigma"):
        gaussian_noise(0.0)
    cfg = load_config("smoke", ["objective=gaussian_noise", "smoothing.sigma=0.5"])
    assert cfg.smoothing.sigma == 0.5
    with pytest.raises(ConfigError, match=r"smoothing\.sigma"):
        load_config("smoke", ["objective=gaussian_noise", "smoothing.sigma=0"])
    with pytest.raises(ConfigError, match=r"smoothing\.samples"):
        load_config("smoke", ["objective=smooth_adv", "smoothing.samples=0"])
    # Both objectives are built from the config (the training steps: tests/test_train.py).
    from jaxrobust.data.datasets import get_info
    from jaxrobust.train.loop import build_objective

    info = get_info("digits")
    for name in ("gaussian_noise", "smooth_adv"):
        overrides = [f"objective={name}", "threat=l2", "eps=0.5", "smoothing.samples=2"]
        assert callable(build_objective(load_config("smoke", overrides), info))


def test_certify_method_table_names_what_is_available(monkeypatch):
    from jaxrobust.certify import METHODS, ibp, method_module

    assert method_module("smoothing") is sm
    assert method_module("ibp") is ibp and method_module("crown-ibp") is ibp
    with pytest.raises(ConfigError, match="unknown certification method"):
        method_module("lipschitz")
    # A method listed without its module (a build without it) names what is available.
    monkeypatch.setitem(METHODS, "crown-ibp", None)
    with pytest.raises(
        ConfigError, match=r"not available in this build; available: smoothing, ibp$"
    ):
        method_module("crown-ibp")


def test_cli_certify_writes_json_and_png_and_resumes(smoke_run, tmp_path, capsys, monkeypatch):
    from jaxrobust.cli import main

    args = ["certify", str(smoke_run), "--method", "smoothing", "--sigma", "0.25"]
    args += ["--n0", "100", "--n", "100", "--limit", "8", "--batch-size", "4"]
    out = tmp_path / "certify"
    assert main([*args, "--out", str(out), "--radii", "0", "0.25"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    acc = m["smoothing"]["certified_accuracy"]
    assert set(acc) == {"0", "0.25"} and 0 <= acc["0.25"] <= acc["0"] <= 1
    assert m["num_examples"] == 8 and m["smoothing"]["n"] == 100
    assert (out / "certified_accuracy_vs_radius.png").stat().st_size > 0
    first = np.load(out / "certificates.npz")

    # Ctrl-C after the first batch: one line naming the state; --resume finishes the rest.
    real = sm.certify

    def interrupted(*a, progress, **kw):
        def stop(done, total):
            progress(done, total)
            raise KeyboardInterrupt

        return real(*a, progress=stop, **kw)

    monkeypatch.setattr(sm, "certify", interrupted)
    out2 = tmp_path / "again"
    capsys.readouterr()
    assert main([*args, "--out", str(out2), "--radii", "0", "0.25"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0] and "certify_state.json" in err[0]
    monkeypatch.setattr(sm, "certify", real)
    assert main([*args, "--out", str(out2), "--radii", "0", "0.25", "--resume"]) == 0
    again = np.load(out2 / "certificates.npz")
    np.testing.assert_array_equal(first["radius"], again["radius"])

    assert main(["certify", str(smoke_run), "--method", "lipschitz"]) == 2
    assert "unknown certification method 'lipschitz'" in capsys.readouterr().err
