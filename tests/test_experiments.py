"""The synthetic paper reproductions: `jaxrobust experiment NAME --smoke` end to end (JSON,
PNGs, the acceptance properties that already hold at smoke size), plus the closed forms
they rest on, checked against direct computation."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.cli import experiments_dir, main


def _module(name: str):
    """Load experiments/NAME.py by path, as `jaxrobust experiment` does."""
    key = f"test_experiment_{name}"
    if str(experiments_dir()) not in sys.path:
        sys.path.insert(0, str(experiments_dir()))  # for their shared `_common`
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, experiments_dir() / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def _run(name: str, out: Path) -> dict:
    assert main(["experiment", name, "--smoke", "--out", str(out)]) == 0
    data = json.loads((out / f"{name}.json").read_text())
    assert data["smoke"] is True and data["wall_time_s"] > 0
    return data


def _pngs(out: Path, names: list[str]) -> None:
    for n in names:
        path = out / f"{n}.png"
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


# ---------------------------------------------------------------- sample complexity


@pytest.mark.slow
def test_sample_complexity_smoke(tmp_path):
    data = _run("sample_complexity", tmp_path)
    for key in (
        "settings",
        "curves",
        "n_star",
        "distribution_check",
        "pgd_measurements",
        "headline",
        "n_star_twins",
        "adversarial_training",
        "bernoulli",
        "acceptance",
    ):
        assert key in data
    assert data["jaxrobust_version"] and "git_commit" in data
    _pngs(
        tmp_path,
        [
            f"sample_complexity_{n}"
            for n in ("gaussian", "nstar", "adversarial_training", "bernoulli", "distribution")
        ],
    )
    # d = 1e5, σ = 0.5·d^¼, ε = 0.25, n = 1: accurate but not robust, closed form and measured.
    h = data["headline"]
    assert h["standard_closed_form"]["method"] == "closed_form"
    assert h["standard_closed_form"]["value"] < 0.01 and h["robust_closed_form"]["value"] > 0.9
    assert h["robust_measured"]["method"] == "measured" and h["robust_measured"]["value"] > 0.9
    assert h["robust_agreement"]["agrees"]
    assert h["standard_measured_upper95"] >= h["standard_closed_form"]["value"]
    # PGD measured where the robust error is informative, agreeing with the closed form.
    pts = data["pgd_measurements"]["points"]
    assert pts and all(0.02 <= p["robust_closed_form"]["value"] <= 0.98 for p in pts)
    for p in pts:
        assert p["robust"]["method"] == "measured" and p["robust"]["n"] >= 2
        assert p["draws"] >= 2 and p["robust"]["se"] > 0
        assert p["agreement"]["agrees"], p
        # paired with each draw's own closed form, PGD is the exact worst case up to noise
        assert abs(p["paired_difference"]["value"]) <= 4 * p["paired_difference"]["se"] + 1e-3
    # n* is an integer number of samples >= 1, grows with d and ε; the slope rises.
    nst = np.asarray(data["n_star"]["n_star"], float)
    assert np.all(nst >= 1) and np.all(nst == np.round(nst))
    acc = data["acceptance"]["n_star"]
    assert acc["nondecreasing_in_d"] and acc["nondecreasing_in_eps"]
    assert acc["grows_over_d_range"]
    assert acc["slope_rows"] >= 1 and acc["slope_increases_with_d"]
    assert data["n_star_twins"] and acc["twins_agree"]
    # The closed-form error at n* is <= target, at n* − 1 above it.
    target = data["n_star"]["target_robust_error"]
    at_n = np.asarray(data["n_star"]["robust_error_at_n_star"], float)
    below = np.asarray(data["n_star"]["robust_error_at_n_star_minus_1"], float)
    assert np.all(at_n <= target) and np.all(below[np.isfinite(below)] > target)
    # ŵ from actual samples has the exact N(θ*, σ²/n·I) law.
    for v in data["distribution_check"]:
        assert abs(v["coord_mean"] - 1) < 0.05 and abs(v["coord_var_over_sigma2_n"] - 1) < 0.1
        assert v["coord_ks_pvalue"] > 1e-3 and v["robust_error_ks_pvalue"] > 1e-3
    # Linear PGD-AT through the library's objective/step: PGD checks every n and seed.
    at = data["adversarial_training"]
    assert at["seeds"] >= 2 and at["pgd_checks"]["models_checked"] == at["seeds"] * len(at["n"])
    assert at["pgd_checks"]["all_agree"]
    # Bernoulli: the thresholded model is attacked; for ε < 1 the attacks find nothing
    # beyond its clean errors, for the control ε > 1 they break it.
    b = data["bernoulli"]
    assert (
        b["checks"]["thresholded_pgd_equals_exact_search"]
        and b["checks"]["linear_pgd_equals_exact"]
    )
    std = np.asarray(b["standard"]["value"])
    for k, e in enumerate(b["eps"]):
        thr = np.asarray(b["thresholded_robust"]["value"][k])
        if e < 1:
            np.testing.assert_allclose(thr, b["thresholded_robust_by_argument"]["value"][k])
            np.testing.assert_allclose(thr, std)  # the attacks find no error beyond clean ones
        else:
            assert b["eps_is_control"][k] and np.all(thr > 0.9)
    assert max(b["linear_robust"]["value"][1]) > 0.5  # ε = 1.5τ breaks the linear model


def test_sufficient_statistics_match_direct_computation():
    g = _module("_sample_complexity_gaussian")
    d, r, s = 1000, 3, 2.5
    key = jax.random.key(0)
    draws = g.make_draws(key, d, r)
    z = jax.random.normal(key, (r, d))  # make_draws' own draws
    inner, l2, l1 = g.draw_stats(draws, jnp.float32(s))
    di, d2, d1 = g.w_stats(1.0 + s * z)
    np.testing.assert_allclose(inner, di, rtol=1e-4)
    np.testing.assert_allclose(l2, d2, rtol=1e-4)
    np.testing.assert_allclose(l1, d1, rtol=1e-4)


def test_closed_form_robust_error_matches_monte_carlo():
    g = _module("_sample_complexity_gaussian")
    d, sigma, eps, m = 50, 1.3, 0.2, 200_000
    kw, kx, ky = jax.random.split(jax.random.key(1), 3)
    w = 1.0 + jax.random.normal(kw, (d,))
    y = jax.random.rademacher(ky, (m,)).astype(jnp.float32)
    x = y[:, None] + sigma * jax.random.normal(kx, (m, d))
    margin = y * (x @ w)
    std, rob = g.linear_errors(*g.w_stats(w), eps, sigma)
    assert abs(float(jnp.mean(margin <= 0)) - float(std)) < 4e-3
    assert abs(float(jnp.mean(margin - eps * jnp.sum(jnp.abs(w)) <= 0)) - float(rob)) < 4e-3


def test_integer_n_star_is_the_first_integer_below_target():
    g = _module("_sample_complexity_gaussian")
    d, c, target = 1000, 0.5, 0.10
    draws = g.make_draws(jax.random.key(2), d, 32)
    eps = np.asarray([0.05, 0.3, 0.5], np.float32)
    sig = np.full(3, g.sigma_of(d, c), np.float32)
    real, _ = g.n_star(draws, jnp.asarray(eps), jnp.asarray(sig), target)
    n = g.integer_n_star(draws, real, eps, sig, target)
    assert n[0] == 1  # ε = 0.05: one sample is enough
    assert np.all(n == np.round(n)) and np.all(n >= np.maximum(np.floor(real), 1))
    err = lambda v: np.asarray(g.mean_robust_error(draws, jnp.asarray(v, jnp.float32), eps, sig))  # noqa: E731
    assert np.all(err(n) <= target)
    assert np.all(err(np.maximum(n - 1, 1))[n > 1] > target)


def test_thresholded_attacks_find_the_exact_worst_case():
    """PGD with a straight-through gradient through sign(x) and the exact per-coordinate
    search agree with brute force over all corners of the ball (d = 6); for ε < 1 nothing
    changes the prediction, for ε > 1 the worst corner is found."""
    bern = _module("_sample_complexity_bernoulli")
    common = _module("_common")
    d = 6
    kw, kx, ky, ka = jax.random.split(jax.random.key(3), 4)
    w = jax.random.normal(kw, (d,))
    y = jax.random.rademacher(ky, (40,)).astype(jnp.float32)
    x = 2.0 * jax.random.bernoulli(kx, 0.6, (40, d)).astype(jnp.float32) - 1.0
    corners = (
        2.0 * np.asarray(np.unpackbits(np.arange(2**d, dtype=np.uint8)[:, None], 1))[:, -d:] - 1.0
    )
    for eps in (0.5, 1.5):
        # brute force: every corner δ ∈ {±ε}^d (the score is monotone per coordinate)
        z = np.sign(np.asarray(x)[:, None, :] + eps * corners[None]) @ np.asarray(w)
        worst = (np.asarray(y)[:, None] * z).min(1)
        brute = np.mean(worst <= 0)  # a tie (score 0) counts as broken for either class
        x_adv = bern.exact_thresholded_attack(w, x, y, eps)
        exact = float(jnp.mean(bern._wrong(jnp.sign(x_adv) @ w, y)))
        f = bern.thresholded_logits_fn(w)
        pgd = float(common.pgd_error(f, x, y, ka, common.wide_linf(eps), 3))
        clean = float(jnp.mean(bern._wrong(jnp.sign(x) @ w, y)))
        assert exact == pgd
        assert abs(exact - brute) < 1e-6
        if eps < 1:
            assert exact == clean
        else:
            assert exact > clean


# --------------------------------------------------------------------------- trade-off


@pytest.mark.slow
def test_tradeoff_smoke(tmp_path):
    data = _run("tradeoff", tmp_path)
    for key in ("settings", "models", "references", "blend", "accuracy_vs_eps", "acceptance"):
        assert key in data
    _pngs(tmp_path, ["tradeoff_bound", "tradeoff_weights", "tradeoff_accuracy_vs_eps"])
    s = data["settings"]
    p, m = s["p"], s["test_size"]
    acc = data["acceptance"]
    # At smoke size (64 steps) the switch to x₁ is expected from 2η on (the full run: η).
    assert acc["at_switch_over_eta"] == 2.0
    assert all(acc.values()), acc
    std = data["models"][0]
    assert std["name"] == "standard"
    assert std["standard_accuracy"]["value"] >= 0.99 and std["robust_accuracy"]["value"] <= 0.02
    for r in data["models"]:
        for k in ("standard_accuracy", "robust_accuracy", "bound_closed_form"):
            assert r[k]["method"] == "closed_form"
        for k in ("standard_accuracy_test", "robust_accuracy_pgd"):
            assert r[k]["method"] == "measured" and r[k]["n"] == m and r[k]["se"] > 0
        # the bound check uses the measured numbers
        b = r["bound_check"]
        bound = min(1.0, p * (1 - r["standard_accuracy_test"]["value"]) / (1 - p))
        assert b["bound"]["value"] == pytest.approx(bound, abs=1e-6)
        if r["eps_train_over_eta"] >= 2.0:
            for k in ("standard_accuracy", "robust_accuracy"):
                assert abs(r[k]["value"] - p) <= 0.01
            assert r["x1_share_of_l1"] > 10 * std["x1_share_of_l1"]


def test_tradeoff_bound_check_flags_a_model_above_the_bound():
    to = _module("tradeoff")
    C = _module("_common")
    p, n = 0.95, 20_000
    std = C.measured(0.99, n=n, se=float(C.mc_se(0.99, n)), how="t")
    # bound at A = 0.99 is 0.19 ± 19·0.0007: 0.2 is within 2 SE, 0.5 is not
    ok = to.bound_check(std, C.measured(0.2, n=n, se=float(C.mc_se(0.2, n)), how="t"), p)
    bad = to.bound_check(std, C.measured(0.5, n=n, se=float(C.mc_se(0.5, n)), how="t"), p)
    assert ok["within"] and not bad["within"]
    assert ok["bound"]["value"] == pytest.approx(0.19)
    assert bad["robust_minus_bound"]["value"] == pytest.approx(0.31)


def test_tradeoff_closed_form_matches_monte_carlo():
    to = _module("_tradeoff_model")
    d, p = 100, 0.9
    eta = 3 / np.sqrt(d)
    x, y = to.sample(jax.random.key(2), 200_000, d, p, eta)
    v = jax.random.normal(jax.random.key(3), (d + 1,)) * 0.2 + jnp.concatenate(
        [jnp.array([1.0]), jnp.full((d,), 0.3)]
    )
    b = jnp.float32(0.4)
    for eps in (0.0, 2 * eta):
        z = x @ v + b - y * eps * jnp.sum(jnp.abs(v))
        mc = float(jnp.mean(z * y > 0))
        assert abs(mc - float(to.accuracy(v, b, eps, p, eta))) < 4e-3
    # The theorem's bound holds for the closed form of the Bayes-optimal classifier.
    bayes = to.bayes_direction(d, p, eta)
    std_acc = to.accuracy(bayes, 0.0, 0.0, p, eta)
    assert float(to.accuracy(bayes, 0.0, 2 * eta, p, eta)) <= float(to.bound(std_acc, p))


# ------------------------------------------------------------------- real data: digits


def _run_digits(name: str, out: Path) -> dict:
    """`jaxrobust experiment NAME --smoke --part digits`: only NAME_digits.json is written."""
    assert main(["experiment", name, "--smoke", "--part", "digits", "--out", str(out)]) == 0
    assert not (out / f"{name}.json").exists()  # the synthetic results are left alone
    data = json.loads((out / f"{name}_digits.json").read_text())
    assert data["smoke"] is True and data["part"] == "digits" and data["wall_time_s"] > 0
    return data


def _fractions(*values) -> None:
    """Every entry of every (nested) list is an accuracy in [0, 1]."""
    for v in values:
        arr = np.asarray(v, dtype=float).ravel()
        assert arr.size and np.all((arr >= 0) & (arr <= 1)), arr


def test_digits_balanced_order_nested_and_class_balanced():
    dg = _module("_digits")
    y = jnp.asarray(np.repeat(np.arange(10), [142, 146, 142, 146, 145, 145, 145, 143, 139, 144]))
    orders = jax.vmap(dg.balanced_order, (0, None))(jax.random.split(jax.random.key(0), 2), y)
    assert not np.array_equal(orders[0], orders[1])  # each seed draws its own subsets
    ns = [10, 25, 50, 137, 1000, 1390]  # up to 10 x the smallest class count (139)
    for order in orders:
        assert sorted(np.asarray(order).tolist()) == list(range(y.shape[0]))  # a permutation
        masks = [np.asarray(dg.in_subset(order, n, y.shape[0])) for n in ns]
        for n, m, counts in zip(ns, masks, (dg.class_counts(order, y, n) for n in ns), strict=True):
            assert m.sum() == n and counts.sum() == n
            assert counts.max() - counts.min() <= 1  # ⌊n/10⌋ or ⌈n/10⌉ of every class
        for i in range(len(ns) - 1):
            assert np.all(masks[i] <= masks[i + 1])  # nested: each contains the smaller ones
    assert dg.saturation_n([10, 20, 40, 80], [0.5, 0.90, 0.915, 0.92]) == 20
    assert dg.saturation_n([10, 20, 40, 80], [0.5, 0.6, 0.8, 0.9]) == 80


@pytest.mark.slow
def test_digits_vmapped_trainer_matches_single_runs():
    """One vmapped program over (ε_train, subset, n, seed) = each configuration trained alone;
    and PGD-AT at ε = 0 is exactly the library's standard() training."""
    dg = _module("_digits")
    x, y, _, _ = dg.load()
    x, y = x[:200], y[:200]
    model = dg.make_model([16])
    cfg = dg.grid_configs(jax.random.key(3), y, [0.0, 0.2], [40], 1)
    cfg["ns"] = jnp.asarray([40, 120], jnp.int32)  # two different subset sizes as well
    kw = dict(steps=12, batch=16, lr=3e-3, pgd_steps=2)
    # Both configurations in one PGD-AT program (ε = 0: a zero-radius ball) ...
    together, loss_t = dg.train_sweep(model, x, y, cfg, separate_standard=False, **kw)
    # ... and each alone: ε = 0 with standard(), ε = 0.2 with PGD-AT, a batch of one each.
    alone, loss_a = dg.train_sweep(model, x, y, cfg, separate_standard=True, **kw)
    assert loss_t.shape == (2, 12) and np.all(np.isfinite(loss_t))
    np.testing.assert_allclose(loss_t, loss_a, rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(alone), strict=True):
        assert a.shape[0] == 2
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # The two configurations really differ (ε_train and n enter).
    w = jax.tree.leaves(together)[0]
    assert not np.allclose(w[0], w[1])


@pytest.mark.slow
def test_sample_complexity_digits_smoke(tmp_path):
    data = _run_digits("sample_complexity", tmp_path)
    _pngs(tmp_path, ["sample_complexity_digits"])
    for key in ("settings", "n", "class_counts_seed0", "results", "per_seed", "acceptance"):
        assert key in data
    s = data["settings"]
    n = data["n"]
    counts = np.asarray(data["class_counts_seed0"])
    assert counts.shape == (len(n), 10) and counts.sum(1).tolist() == n
    # class-balanced while every class has examples left (n <= 10 x the smallest class)
    cap = 10 * np.bincount(np.asarray(_module("_digits").load()[1])).min()
    balanced = np.asarray(n) <= cap
    assert balanced.any() and np.all((counts.max(1) - counts.min(1))[balanced] <= 1)
    res = data["results"]
    assert set(res) == {"standard", *(f"pgd_at_{e:g}" for e in s["eps"])}
    std = res["standard"]
    _fractions(std["clean_test"], std["clean_train"], *std["robust_test"].values())
    assert std["saturation_n_clean"] in n
    for e in s["eps"]:
        r = res[f"pgd_at_{e:g}"]
        _fractions(r["clean_test"], r["robust_test"], r["robust_train"])
        assert len(r["robust_test"]) == len(r["robust_gap"]) == len(n)
        assert r["saturation_n_robust"] in n and r["saturation_n_clean"] in n
        # more data helps robust accuracy, and the robust train − test gap closes with n
        assert r["robust_test"][-1] > r["robust_test"][0] + 0.1
        assert r["robust_gap"][-1] < r["robust_gap"][0] - 0.1
    assert std["clean_test"][-1] > std["clean_test"][0]
    per_seed = data["per_seed"]
    assert np.asarray(per_seed["clean_test"]).shape == (1 + len(s["eps"]), len(n), s["seeds"])
    # The paper's qualitative claim, at smoke size (smoke n chosen where it holds, see
    # DIGITS_SETTINGS): standard accuracy saturates at a smaller n than robust accuracy.
    acc = data["acceptance"]
    sat_std = acc["standard_saturation_n"]["value"]
    sat_rob = [v["value"] for v in acc["robust_saturation_n"].values()]
    assert acc["standard_saturation_n"]["method"] == "measured"
    assert all(sat_std < v for v in sat_rob) and sat_std < n[-1]
    assert acc["standard_saturates_before_robust"]["value"] is True
    assert acc["robust_gap_shrinks_with_n"]["value"] is True


@pytest.mark.slow  # compile-heavy: runs with the slow tests, keeping the default suite < 15 min
def test_tradeoff_digits_smoke(tmp_path):
    data = _run_digits("tradeoff", tmp_path)
    _pngs(tmp_path, ["tradeoff_digits", "tradeoff_saliency"])
    for key in ("settings", "eps_sweep", "low_data", "saliency", "acceptance"):
        assert key in data
    s = data["settings"]
    sw, low, sal = data["eps_sweep"], data["low_data"], data["saliency"]
    e = len(s["eps_train"])
    for entry, seeds in (
        (sw["clean_test"], s["seeds"]),
        (sw["robust_test_at_eps_train"], s["seeds"]),
        (sw["accuracy_vs_attack_eps"], s["seeds"]),
        (low["clean_test"], s["low_seeds"]),
        (low["robust_test_at_eps_train"], s["low_seeds"]),
    ):
        assert entry["method"] == "measured" and entry["n"] == seeds
        _fractions(entry["value"])
    clean, own = sw["clean_test"]["value"], sw["robust_test_at_eps_train"]["value"]
    assert len(clean) == e and np.asarray(sw["accuracy_vs_attack_eps"]["value"]).shape == (e, e)
    assert own[0] == pytest.approx(clean[0])  # ε = 0
    assert np.asarray(low["clean_test"]["value"]).shape == (len(s["low_eps"]), len(s["low_n"]))
    diff = np.asarray(low["at_minus_standard"]["value"])
    assert diff.shape == (len(s["low_eps"]) - 1, len(s["low_n"]))
    ex = sal["examples"]
    k = len(s["saliency_eps"])
    assert np.asarray(ex["images"]).shape == (10, 8, 8)
    assert np.asarray(ex["gradients"]).shape == (k, 10, 8, 8)
    assert sorted(ex["labels"]) == list(range(10))
    assert np.all(np.isfinite(ex["gradients"])) and np.abs(ex["gradients"]).max() > 0
    m = sal["measures"]
    assert set(m) == {"abs_grad_vs_image", "descent_vs_template", "effective_pixels"}
    for k, v in m.items():
        lo, hi = (1, 64) if k == "effective_pixels" else (-1, 1)
        v = np.asarray(v["value"])
        assert len(v) == e and np.all((v >= lo - 1e-4) & (v <= hi + 1e-4))
    # Properties that hold at smoke size (MLP-64, 150 steps, seed 0), and at full size:
    acc = data["acceptance"]
    assert acc["at_more_robust_than_standard_at_own_eps"]  # PGD-AT resists its own ε
    assert acc["robust_at_own_eps_decreasing"]  # larger ε_train: lower robust accuracy
    assert acc["clean_at_max_eps_below_standard"]  # ε_train = 0.3 costs clean accuracy
    assert acc["robust_gradients_sparser"]  # fewer effective pixels than standard's
    assert acc["clean_peak_eps_train"] in s["eps_train"]


# --------------------------------------------------------------------- robust Gaussian


@pytest.mark.slow
def test_robust_gaussian_smoke(tmp_path):
    data = _run("robust_gaussian", tmp_path)
    for key in ("settings", "covariance", "multipliers", "classifiers", "lambda", "acceptance"):
        assert key in data
    _pngs(tmp_path, ["robust_gaussian_covariance", "robust_gaussian_accuracy"])
    acc = data["acceptance"]
    assert acc["max_relative_error"] <= 0.01  # fitted Σ_r vs the closed form, per eigenvalue
    assert acc["robust_has_higher_robust_accuracy"]
    assert acc["robust_has_lower_standard_accuracy"]
    assert acc["robust_has_higher_cosine"]
    assert acc["pgd_agrees_with_closed_form"]
    # λ from the ε budget reproduces ε; robustness only inflates the covariance.
    assert data["eps_implied_by_lambda"] == pytest.approx(data["settings"]["eps"], rel=1e-3)
    cov = data["covariance"]
    assert cov["fitted"]["method"] == "measured" and cov["closed_form"]["method"] == "closed_form"
    assert all(f > s for f, s in zip(cov["fitted"]["value"], data["sigma_star"], strict=True))
    # the closed-form comparisons have measured twins on fresh samples (paired, 2 SE)
    assert acc["robust_has_higher_robust_accuracy_measured"]
    for c in data["classifiers"].values():
        assert c["accuracy"]["method"] == "closed_form"
        assert c["robust_accuracy_pgd"]["method"] == "measured"
        assert c["robust_accuracy_pgd"]["n"] == data["settings"]["test"]


def test_robust_covariance_closed_form_is_the_stationary_point():
    rg = _module("robust_gaussian")
    s = jnp.logspace(-2, 0, 16)
    lam = rg.lambda_for_eps(s, 0.5)
    c = rg.robust_cov(s, lam)
    # (c − κ)² = s·c: the derivative of ½ s/(c − κ) + ½ log c vanishes.
    np.testing.assert_allclose((c - 1 / lam) ** 2, s * c, rtol=1e-4)
    np.testing.assert_allclose(jnp.sum(1 / c) / lam**2, 0.25, rtol=1e-4)


# ------------------------------------------------------------------ robust overfitting


@pytest.mark.slow
def test_robust_overfitting_smoke(tmp_path):
    data = _run("robust_overfitting", tmp_path)
    _pngs(tmp_path, ["robust_overfitting"])
    epochs = data["settings"]["epochs"]
    history = data["history"]
    assert [r["epoch"] for r in history] == list(range(1, epochs + 1))
    val = [r["validation_robust_accuracy"] for r in history]
    assert data["selected_epoch"] == 1 + int(np.argmax(val))  # early stopping: first maximum
    test = [r["test_robust_accuracy"] for r in history]
    best, last = data["best_test_robust_accuracy"], data["last_test_robust_accuracy"]
    assert best["value"] == max(test) and last["value"] == test[-1]
    assert best["method"] == "measured" and best["n"] == data["settings"]["test_subset"]
    assert data["lr_decay_epochs"] == pytest.approx([0.5 * epochs, 0.75 * epochs], abs=0.2)
    # the window means are the history's (width max(1, epochs // 10))
    gap = [r["train_subset_robust_accuracy"] - r["test_robust_accuracy"] for r in history]
    assert [w["gap"]["mean"] for w in data["windows"]] == pytest.approx(gap)
    for model in ("selected", "last"):
        assert 0 <= data["final_evaluation"][model]["robust_accuracy"]["value"] <= 1
    assert data["settings"]["num_train"] + data["settings"]["num_validation"] == 1437
    assert data["seed"] == 0 and data["train_time_s"] > 0 and "git_commit" in data


def test_robust_overfitting_windows_and_patience_replay():
    ro = _module("robust_overfitting")
    epochs = np.arange(1, 9)
    series = {"a": np.array([1.0, 3.0, 2.0, 2.0, 5.0, 7.0, 0.0, 0.0])}
    w = ro.windows(epochs, series, 4)
    assert [(x["first_epoch"], x["last_epoch"]) for x in w] == [(1, 4), (5, 8)]
    assert [x["a"]["mean"] for x in w] == [2.0, 3.0]
    assert w[0]["a"]["se"] == pytest.approx(np.std([1, 3, 2, 2], ddof=1) / 2)
    assert len(ro.windows(epochs, series, 3)) == 2  # incomplete windows are dropped
    val = np.array([0.1, 0.5, 0.4, 0.45, 0.6, 0.3, 0.2, 0.1])
    assert ro.replay_patience(epochs, val, 2) == {"stopped_epoch": 4, "selected_epoch": 2}
    # patience 3 would stop at epoch 8, the last: a run that ends is not "stopped"
    assert ro.replay_patience(epochs, val, 3) == {"stopped_epoch": None, "selected_epoch": 5}
    assert ro.replay_patience(epochs, val, 10) == {"stopped_epoch": None, "selected_epoch": 5}


# ---------------------------------------------------------------- certified robustness


def _certified_smoke(out: Path, argv: list[str], stem: str) -> dict:
    assert main(["experiment", "certified", "--smoke", *argv, "--out", str(out)]) == 0
    data = json.loads((out / f"{stem}.json").read_text())
    assert data["smoke"] is True and data["wall_time_s"] > 0 and data["git_commit"]
    assert all(data["checks"].values()), data["checks"]
    _pngs(out, [stem])
    return data


def _check_smoothing(part: dict) -> None:
    """Certified and empirical accuracy per radius on the same images; the certified one
    falls with the radius; the attack bookkeeping matches the certificates."""
    cert, emp = part["certified_accuracy"], part["empirical_accuracy"]
    assert set(cert) == set(emp) == {"0", "0.25", "0.5", "0.75"}
    values = [cert[k]["value"] for k in ("0", "0.25", "0.5", "0.75")]
    assert values == sorted(values, reverse=True)
    n = part["settings"]["test_size"]
    assert all(m["n"] == n and m["se"] is not None for m in [*cert.values(), *emp.values()])
    ex = part["per_example"]
    certified_correct = sum(
        p == y and r > 0
        for p, y, r in zip(ex["prediction"], ex["label"], ex["radius"], strict=True)
    )
    assert part["eot_check"]["attacked"] == certified_correct
    assert part["eot_check"]["inputs_within_radius"] is True
    assert part["empirical_check"]["inputs_within_radius"] is True


def _check_ibp(part: dict, n: int) -> None:
    ibp = {k: part[k]["value"] for k in ("verified_accuracy", "pgd_accuracy", "clean_accuracy")}
    assert ibp["verified_accuracy"] <= ibp["pgd_accuracy"] <= ibp["clean_accuracy"]
    assert part["verified_accuracy"]["n"] == n == part["settings"]["test_size"]
    assert part["verified_and_broken_examples"]["value"] == 0 and all(part["checks"].values())
    assert len(part["curve"]["eps"]) == len(part["curve"]["ibp"]) >= 2


@pytest.mark.slow
def test_certified_smoke(tmp_path):
    """`jaxrobust experiment certified --smoke`: both methods on digits in one JSON with the
    issue's keys, and one PNG."""
    data = _certified_smoke(tmp_path, [], "digits")
    assert data["settings"] == {"dataset": "digits", "methods": ["smoothing", "ibp"]}
    _check_smoothing(data["smoothing"])
    assert data["smoothing"]["settings"]["test_size"] == 16
    _check_ibp(data["ibp"], 64)


@pytest.mark.slow
def test_certified_shapes_smoke(tmp_path):
    """`--dataset shapes` (32x32x3, SmallCNN for both methods) runs end to end."""
    data = _certified_smoke(tmp_path, ["--dataset", "shapes"], "shapes")
    assert data["settings"]["dataset"] == "shapes"
    assert data["smoothing"]["settings"]["model"].startswith("small_cnn(")
    assert data["ibp"]["settings"]["model"] == "small_cnn"
    _check_smoothing(data["smoothing"])
    _check_ibp(data["ibp"], 32)


@pytest.mark.slow
def test_certified_one_method_writes_its_own_file(tmp_path):
    """`--method ibp` runs only IBP, into DATASET_ibp.json (never over DATASET.json)."""
    data = _certified_smoke(tmp_path, ["--method", "ibp"], "digits_ibp")
    assert "smoothing" not in data and data["settings"]["methods"] == ["ibp"]
    _check_ibp(data["ibp"], 64)
    assert not (tmp_path / "digits.json").exists()


@pytest.mark.parametrize("name", ["nonrobust_features", "poisoning", "extraction"])
def test_bn_cnn_is_a_shapes_option(tmp_path, name):
    """`--model bn_cnn` (the CNN recipe on shapes) stops on digits before writing anything."""
    args = ["experiment", name, "--smoke", "--model", "bn_cnn", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == "--model bn_cnn is a shapes option"
    assert not (tmp_path / "out").exists()
