"""README claims about the experiments, checked against the committed result JSON.

Each claim is a check on one JSON file under experiments/results/ (the README's sentence
and numbers, with their rounding as tolerance) and a falsification: a perturbation of the
JSON under which the check must fail, so no claim here holds by construction. The README
snippets each claim rests on must appear in the README verbatim, so the prose and these
checks change together. Sections covered: "Spatial robustness", "Robustness may be at odds
with accuracy", "Robust Gaussian MLE", the trade-off half of "Real data (UCI digits...)",
"Robust overfitting and early stopping".
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
README = (ROOT / "README.md").read_text()
README_WORDS = " ".join(README.split())  # line breaks as spaces: snippets may span lines


def load(rel: str) -> dict:
    return json.loads((RESULTS / rel).read_text())


def v(x):
    """The value of a `_common.measured` / `closed_form` entry (or a plain number)."""
    return x["value"] if isinstance(x, dict) and "value" in x else x


def rounds_to(x: float, shown: float, decimals: int) -> bool:
    """x shown with `decimals` decimals is `shown` (half a unit of the last digit)."""
    return abs(float(x) - shown) <= 0.5 * 10.0**-decimals + 1e-12


class Claim:
    def __init__(self, name, rel, check, falsify, snippets=()):
        self.name, self.rel, self.check, self.falsify = name, rel, check, falsify
        self.snippets = tuple(snippets)


CLAIMS: list[Claim] = []


def claim(rel: str, falsify: Callable[[dict], None], snippets=()):
    def register(check):
        CLAIMS.append(Claim(check.__name__, rel, check, falsify, snippets))
        return check

    return register


# ------------------------------------------------------------------------------ spatial

SPATIAL = "spatial/spatial.json"
SPATIAL_ROWS = {
    "standard": "standard",
    "random augmentation": "random",
    "worst-of-10": "worst-of-10",
}
SPATIAL_COLS = ("natural", "random", "worst-of-10", "first-order", "grid", "grid + vote")


def _spatial_readme_table() -> dict[str, list[float]]:
    rows = {}
    for label in SPATIAL_ROWS:
        m = re.search(rf"^\| {re.escape(label)} \|(.*)\|\s*$", README, re.M)
        assert m, f"README spatial table lacks the row {label!r}"
        rows[label] = [float(c) for c in m.group(1).split("|")]
    return rows


def _cell(d, model, ev):
    return d["table"][model][ev]


def _paired_diff(a: dict, b: dict) -> tuple[float, float]:
    """Difference a − b of two accuracies on the same test images and its SE: paired (per
    image) where the JSON keeps the outcomes, else from the two binomial SEs."""
    if "per_example" in a and "per_example" in b:
        x = np.array([int(c) for c in a["per_example"]], float)
        y = np.array([int(c) for c in b["per_example"]], float)
        diff = x - y
        return diff.mean(), diff.std(ddof=1) / np.sqrt(diff.size)
    return a["value"] - b["value"], float(np.hypot(a["se"], b["se"]))


def _bump(d, model, ev, by):
    c = d["table"][model][ev]
    c["value"] = c["value"] + by


@claim(SPATIAL, lambda d: _bump(d, "random", "grid", 0.01), ["(binomial SE ≤ 0.027)"])
def spatial_table_matches_readme(d):
    for label, shown in _spatial_readme_table().items():
        row = d["table"][SPATIAL_ROWS[label]]
        for ev, s in zip(SPATIAL_COLS, shown, strict=True):
            assert rounds_to(row[ev]["value"], s, 3), (label, ev, row[ev]["value"], s)
            assert row[ev]["method"] == "measured" and row[ev]["n"] == 360
            assert row[ev]["se"] <= 0.027


def _spatial_settings_break(d):
    d["settings"]["epochs"] = 20


@claim(
    SPATIAL,
    _spatial_settings_break,
    ["test set (360 images), SmallCNN, 30 epochs, rotations ±30°, translations ±0.8 px"],
)
def spatial_settings_as_stated(d):
    s = d["settings"]
    assert s["test_size"] == 360 and s["epochs"] == 30 and s["model"].startswith("small_cnn")
    assert s["max_angle"] == 30 and abs(s["max_shift_px"] - 0.8) < 1e-6
    assert s["grid"] == {"angles": 31, "translations": 5}
    assert s["first_order_steps"] == 200 and s["vote_samples"] == 10
    assert d["seed"] == 0 and "wall_time_s" in d and "git_commit" in d


@claim(
    SPATIAL,
    lambda d: _bump(d, "standard", "grid", 0.2),
    ["Grid ≤ worst-of-10 ≤ random ≤ natural for every model"],
)
def spatial_evaluation_ordering(d):
    for model, row in d["table"].items():
        chain = [row[e]["value"] for e in ("grid", "worst-of-10", "random", "natural")]
        assert all(a <= b for a, b in itertools.pairwise(chain)), (model, chain)


def _spatial_wo10_grid_break(d):
    d["table"]["random"]["grid"] = copy.deepcopy(d["table"]["worst-of-10"]["grid"])


@claim(SPATIAL, _spatial_wo10_grid_break, ["worst-of-10 training raises grid accuracy"])
def spatial_worst_of_10_training_best_on_grid(d):
    best = d["table"]["worst-of-10"]["grid"]
    for other in ("standard", "random"):
        mean, se = _paired_diff(best, d["table"][other]["grid"])
        assert mean > 2 * se, (other, mean, se)


def _spatial_first_order_break(d):
    for row in d["table"].values():
        row["first-order"] = copy.deepcopy(row["grid"])


@claim(SPATIAL, _spatial_first_order_break, ["first-order attack is much weaker than the grid"])
def spatial_first_order_weaker_than_grid(d):
    for model, row in d["table"].items():
        mean, se = _paired_diff(row["first-order"], row["grid"])
        assert mean > 2 * se, (model, mean, se)


def _spatial_vote_break(d):
    d["table"]["random"]["grid + vote"] = copy.deepcopy(d["table"]["random"]["grid"])


@claim(SPATIAL, _spatial_vote_break, ["*lowers* grid accuracy of the two augmented models"])
def spatial_vote_lowers_grid_accuracy(d):
    for model in ("random", "worst-of-10"):
        mean, se = _paired_diff(d["table"][model]["grid"], d["table"][model]["grid + vote"])
        assert mean > 2 * se, (model, mean, se)


# ----------------------------------------------------------------- trade-off (synthetic)

TRADEOFF = "tradeoff/tradeoff.json"


def _models(d):
    return {r["name"]: r for r in d["models"]}


def _set_std_robust(d, value):
    d["models"][0]["robust_accuracy"]["value"] = value


@claim(
    TRADEOFF,
    lambda d: _set_std_robust(d, 0.05),
    ["standard training reaches 0.998 standard and 0.003 robust accuracy at ε = 2η"],
)
def tradeoff_standard_model(d):
    s = d["settings"]
    assert s["d"] == 400 and s["p"] == 0.95 and abs(s["eta"] - 3 / 20) < 1e-9
    r = d["models"][0]
    assert r["name"] == "standard" and r["standard_accuracy"]["method"] == "closed_form"
    assert rounds_to(v(r["standard_accuracy"]), 0.998, 3)
    assert rounds_to(v(r["robust_accuracy"]), 0.003, 3)
    # ... and its measured twins (clean; PGD at 2η) agree within 3 SE.
    for cf, me in (
        ("standard_accuracy", "standard_accuracy_test"),
        ("robust_accuracy", "robust_accuracy_pgd"),
    ):
        m = r[me]
        assert m["method"] == "measured" and m["n"] == s["test_size"]
        assert abs(m["value"] - v(r[cf])) <= max(3 * m["se"], 1e-3), (cf, m, r[cf])


def _break_eta_model(d):
    r = next(r for r in d["models"] if r["eps_train_over_eta"] == 1.0)
    r["robust_accuracy_pgd"]["value"] = 0.5


@claim(
    TRADEOFF,
    _break_eta_model,
    ["PGD-AT with ε_train ≥ η reaches 0.950 / 0.950", "20 000 fresh test samples", "(SE ≤ 0.0016)"],
)
def tradeoff_at_eps_ge_eta_reaches_p(d):
    p = d["settings"]["p"]
    at = [r for r in d["models"][1:] if r["eps_train_over_eta"] >= 1.0]
    assert min(r["eps_train_over_eta"] for r in at) == 1.0
    x1_std = d["models"][0]["x1_share_of_l1"]
    for r in at:
        for k in ("standard_accuracy", "robust_accuracy"):
            assert rounds_to(v(r[k]), 0.950, 3), (r["name"], k, v(r[k]))
        for k in ("standard_accuracy_test", "robust_accuracy_pgd"):
            assert abs(v(r[k]) - p) <= max(0.01, 3 * r[k]["se"]), (r["name"], k, r[k])
            assert r[k]["n"] == 20_000 and r[k]["se"] <= 0.0016
        assert r["x1_share_of_l1"] > 10 * x1_std  # the weight moved onto x₁
    acc = d["acceptance"]
    assert acc["at_switch_over_eta"] == 1.0 and acc["at_eps_ge_switch_within_1pp_of_p"]


def _beat_bound(d):
    r = d["models"][0]
    r["robust_accuracy_pgd"]["value"] = 0.5
    b = r["bound_check"]
    b["robust_minus_bound"]["value"] = 0.5 - b["bound"]["value"]


@claim(TRADEOFF, _beat_bound, ["no model's measured robust accuracy exceeds the bound"])
def tradeoff_no_model_beats_bound_measured(d):
    p = d["settings"]["p"]
    for r in d["models"]:
        st, rb = r["standard_accuracy_test"], r["robust_accuracy_pgd"]
        bound = min(1.0, p * (1 - st["value"]) / (1 - p))
        se = np.hypot(rb["se"], p / (1 - p) * st["se"])
        assert rb["value"] - bound <= 2 * se, (r["name"], rb["value"], bound, se)


# --------------------------------------------------------------------- robust Gaussian

GAUSS = "robust_gaussian/robust_gaussian.json"


def _gauss_break_fit(d):
    d["covariance"]["max_relative_error"]["value"] = 0.02


@claim(GAUSS, _gauss_break_fit, ["within 0.46% of the closed form per eigenvalue"])
def gaussian_fit_within_stated_error(d):
    cov = d["covariance"]
    rel = np.abs(np.asarray(cov["relative_error"]))
    assert rounds_to(100 * v(cov["max_relative_error"]), 0.46, 2)
    assert rounds_to(100 * rel.max(), 0.46, 2)


def _gauss_break_acc(d):
    d["classifiers"]["robust_fitted"]["robust_accuracy_pgd"]["value"] = 0.02


@claim(
    GAUSS,
    _gauss_break_acc,
    [
        "accuracy 0.9992 vs 0.9982, robust accuracy 0.0135 vs 0.127, cosine with μ* 0.650 vs 0.795",
        "0.9992 vs 0.9983 and 0.0139 vs 0.1268",
        "measured on 50 000 fresh samples",
        "(SE ≤ 0.0015;",
    ],
)
def gaussian_standard_vs_robust(d):
    c = d["classifiers"]
    st, rb = c["standard"], c["robust_fitted"]
    # closed form
    assert rounds_to(v(st["accuracy"]), 0.9992, 4) and rounds_to(v(rb["accuracy"]), 0.9982, 4)
    assert rounds_to(v(st["robust_accuracy"]), 0.0135, 4)
    assert rounds_to(v(rb["robust_accuracy"]), 0.127, 3)
    assert rounds_to(v(st["cosine_grad_mu"]), 0.650, 3)
    assert rounds_to(v(rb["cosine_grad_mu"]), 0.795, 3)
    # measured on fresh samples (PGD for robust), and the orderings beyond 2 SE (paired)
    assert rounds_to(v(st["accuracy_test"]), 0.9992, 4)
    assert rounds_to(v(rb["accuracy_test"]), 0.9983, 4)
    assert rounds_to(v(st["robust_accuracy_pgd"]), 0.0139, 4)
    assert rounds_to(v(rb["robust_accuracy_pgd"]), 0.1268, 4)
    for c in (st, rb):
        for k in ("accuracy_test", "robust_accuracy_pgd"):
            assert c[k]["n"] == 50_000 and c[k]["se"] <= 0.0015
    for k, sign in (("robust_accuracy_pgd", 1), ("accuracy_test", -1)):
        diff = sign * (rb[k]["value"] - st[k]["value"])
        assert diff > 2 * np.hypot(rb[k]["se"], st[k]["se"]), k


# ------------------------------------------------------------------- trade-off (digits)

DIGITS = "tradeoff/tradeoff_digits.json"
CLEAN_SHOWN = [0.980, 0.987, 0.989, 0.990, 0.987, 0.971, 0.927]


def _digits_break_small_eps(d):
    # clean accuracy falling from the start (what the old claim said): the claim must fail
    vals = d["eps_sweep"]["clean_test"]["value"]
    vals[1] = vals[0] - 0.01


@claim(
    DIGITS,
    _digits_break_small_eps,
    [
        "0.980 / 0.987 / 0.989 / 0.990 / 0.987 / 0.971 / 0.927",
        "clean accuracy does *not* fall for small ε_train",
    ],
)
def digits_clean_rises_then_falls(d):
    sw = d["eps_sweep"]
    assert sw["eps_train"] == [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    clean = np.asarray(sw["clean_test"]["value"])
    assert sw["clean_test"]["n"] == 3
    for x, shown in zip(clean, CLEAN_SHOWN, strict=True):
        assert rounds_to(x, shown, 3), (x, shown)
    per_seed = np.asarray(sw["per_seed_clean"])
    change = per_seed - per_seed[:1]
    mean, se = change.mean(1), change.std(1, ddof=1) / np.sqrt(per_seed.shape[1])
    peak = int(np.argmax(clean))
    assert sw["eps_train"][peak] == 0.15
    # small ε_train (up to the peak) raises clean accuracy by more than 2 SE (paired) ...
    assert np.all(mean[1 : peak + 1] > 2 * se[1 : peak + 1]), (mean, se)
    assert np.all((mean[1 : peak + 1] >= 0.0065) & (mean[1 : peak + 1] < 0.0105))
    # ... it falls only beyond the peak, −5.3 pp at 0.3 (beyond 2 SE).
    assert np.all(np.diff(clean[peak:]) <= 0)
    assert rounds_to(100 * mean[-1], -5.3, 1) and mean[-1] < -2 * se[-1]
    # the JSON's own flags say the same
    acc = d["acceptance"]
    assert acc["clean_above_standard_up_to_peak"] and acc["clean_nonincreasing_beyond_peak"]
    assert not acc["clean_monotone_nonincreasing"] and acc["clean_at_max_eps_below_standard"]


def _digits_break_robust(d):
    d["eps_sweep"]["robust_test_at_eps_train"]["value"][-1] = 0.5


@claim(
    DIGITS,
    _digits_break_robust,
    ["robust accuracy at ε_train falls 0.95 → 0.32 (standard model 0.87 → 0)"],
)
def digits_robust_accuracy_at_eps_train(d):
    sw = d["eps_sweep"]
    own = np.asarray(sw["robust_test_at_eps_train"]["value"])
    assert rounds_to(own[1], 0.95, 2) and rounds_to(own[-1], 0.32, 2)
    assert np.all(np.diff(own) < 0)
    std = np.asarray(sw["accuracy_vs_attack_eps"]["value"])[0]
    assert rounds_to(std[1], 0.87, 2) and rounds_to(std[-1], 0.0, 2)
    assert np.all(own[1:] > std[1:])


def _digits_break_low(d):
    d["acceptance"]["low_data_pooled_at_minus_standard_pp"]["0.1"]["value"] = 0.3


@claim(
    DIGITS,
    _digits_break_low,
    ["+2.1 ± 0.5 pp (ε = 0.05: +1.4 ± 0.3)", "+0.9 ± 0.1 pp (ε = 0.05: +0.7 ± 0.2)"],
)
def digits_low_data_gain(d):
    acc = d["acceptance"]
    pooled = acc["low_data_pooled_at_minus_standard_pp"]
    for eps, (m, s) in {"0.1": (2.1, 0.5), "0.05": (1.4, 0.3)}.items():
        e = pooled[eps]
        assert e["n"] == 5 and rounds_to(e["value"], m, 1) and rounds_to(e["se"], s, 1)
        assert e["value"] > 2 * e["se"] and acc["low_data_at_helps"][eps]
    # the same ε_train on the full set (3 seeds): also a gain beyond 2 SE
    full = acc["clean_minus_standard_pp"]
    eps_train = d["eps_sweep"]["eps_train"]
    for eps, (m, s) in {0.1: (0.9, 0.1), 0.05: (0.7, 0.2)}.items():
        i = eps_train.index(eps)
        assert rounds_to(full["value"][i], m, 1) and rounds_to(full["se"][i], s, 1)
        assert acc["full_set_at_helps"][f"{eps:g}"]
    assert d["low_data"]["n"] == [25, 50, 100, 200]


def _digits_break_saliency(d):
    d["saliency"]["measures"]["effective_pixels"]["value"][-1] = 40.0


@claim(
    DIGITS,
    _digits_break_saliency,
    ["(‖∇‖₁/‖∇‖₂)² 37 → 12 from ε_train 0 to 0.3", "corr(|∇|, x) 0.20 → 0.22–0.25"],
)
def digits_saliency(d):
    m = d["saliency"]["measures"]
    eff = np.asarray(m["effective_pixels"]["value"])
    assert rounds_to(eff[0], 37, 0) and rounds_to(eff[-1], 12, 0)
    assert np.all(eff[1:] < eff[0])
    corr = np.asarray(m["abs_grad_vs_image"]["value"])
    assert rounds_to(corr[0], 0.20, 2)
    assert np.all((corr[1:] >= 0.215) & (corr[1:] < 0.255))


# ------------------------------------------------------------------ robust overfitting

OVERFIT = "robust_overfitting/robust_overfitting.json"


def _overfit_break_drop(d):
    d["history"][-1]["test_robust_accuracy"] = 0.55
    d["last_test_robust_accuracy"]["value"] = 0.55


@claim(
    OVERFIT,
    _overfit_break_drop,
    [
        "peaks at 0.694 (epoch 153) and ends at 0.681",
        "mean of the last 20 epochs 0.675), a 0.019 drop inside the standard error",
        "**no robust overfitting on digits**",
    ],
)
def overfitting_absent(d):
    test = np.array([r["test_robust_accuracy"] for r in d["history"]])
    assert len(test) == 200 and d["settings"]["num_test"] == 360
    assert int(np.argmax(test)) + 1 == 153 == d["best_test_epoch"]
    assert rounds_to(test.max(), 0.694, 3) and rounds_to(test[-1], 0.681, 3)
    assert rounds_to(v(d["last_test_robust_accuracy"]), 0.681, 3)
    assert rounds_to(test[-20:].mean(), 0.675, 3)
    se = np.sqrt(test.max() * (1 - test.max()) / 360)
    drop = test.max() - test[-20:].mean()
    assert rounds_to(drop, 0.019, 3) and rounds_to(se, 0.024, 3) and drop <= se
    assert not d["overfitting"]["drop_exceeds_2se"]


def _overfit_break_gap(d):
    for r in d["history"][100:120]:
        r["train_subset_robust_accuracy"] = r["test_robust_accuracy"] + 0.23


@claim(
    OVERFIT,
    _overfit_break_gap,
    ["0.232 ± 0.004 in epochs 81–100 to 0.273 ± 0.002 in epochs 101–120 and stay at 0.27–0.29"],
)
def overfitting_gap_widens_at_first_decay(d):
    assert d["lr_decay_epochs"][0] == 100
    h = d["history"]
    gap = np.array([r["train_subset_robust_accuracy"] - r["test_robust_accuracy"] for r in h])
    before, after = gap[80:100], gap[100:120]
    sb, sa = before.std(ddof=1) / np.sqrt(20), after.std(ddof=1) / np.sqrt(20)
    assert rounds_to(before.mean(), 0.232, 3) and rounds_to(sb, 0.004, 3)
    assert rounds_to(after.mean(), 0.273, 3) and rounds_to(sa, 0.002, 3)
    assert after.mean() - before.mean() > 2 * np.hypot(sa, sb)
    later = [gap[a : a + 20].mean() for a in range(120, 200, 20)]
    assert all(0.265 <= g < 0.295 for g in later), later  # "stay at 0.27–0.29"
    around = d["train_test_robust_gap"]["around_first_decay"]
    assert around["before_epochs"] == [81, 100] and around["after_epochs"] == [101, 120]
    assert abs(v(around["before"]) - before.mean()) < 1e-9
    assert abs(v(around["after"]) - after.mean()) < 1e-9
    assert around["rise_exceeds_2se"]


def _overfit_break_selection(d):
    d["final_evaluation"]["selected"]["robust_accuracy"]["value"] = 0.7


@claim(
    OVERFIT,
    _overfit_break_selection,
    [
        "Early stopping selects epoch 138; under PGD-50 × 5 it is no better than the last epoch",
        "(robust 0.614 vs 0.622, clean 0.992 vs 0.994; SE ±0.026)",
    ],
)
def overfitting_early_stopping(d):
    val = [r["validation_robust_accuracy"] for r in d["history"]]
    assert d["selected_epoch"] == 138 == 1 + int(np.argmax(val))
    fe = d["final_evaluation"]
    assert fe["attack"] == "PGD-50x5"
    sel, last = fe["selected"], fe["last"]
    assert rounds_to(v(sel["robust_accuracy"]), 0.614, 3)
    assert rounds_to(v(last["robust_accuracy"]), 0.622, 3)
    assert rounds_to(v(sel["clean_accuracy"]), 0.992, 3)
    assert rounds_to(v(last["clean_accuracy"]), 0.994, 3)
    assert max(sel["robust_accuracy"]["se"], last["robust_accuracy"]["se"]) <= 0.026
    # "no better": the selected model's robust accuracy does not exceed the last's
    assert v(sel["robust_accuracy"]) <= v(last["robust_accuracy"])


# ---------------------------------------------------------------------------- the tests

IDS = [c.name for c in CLAIMS]


@pytest.mark.parametrize("c", CLAIMS, ids=IDS)
def test_claim_holds_on_committed_results(c):
    c.check(load(c.rel))


@pytest.mark.parametrize("c", CLAIMS, ids=IDS)
def test_claim_fails_when_falsified(c):
    data = load(c.rel)
    c.falsify(data)
    with pytest.raises(AssertionError):
        c.check(data)


@pytest.mark.parametrize("c", CLAIMS, ids=IDS)
def test_readme_states_the_claim(c):
    for s in c.snippets:
        assert " ".join(s.split()) in README_WORDS, f"README no longer says {s!r} ({c.name})"


@pytest.mark.parametrize("rel", sorted({c.rel for c in CLAIMS}), ids=lambda r: r.split("/")[-1])
def test_results_carry_provenance(rel):
    """Every result JSON says which code made it and how long it took."""
    d = load(rel)
    assert d["wall_time_s"] > 0 and "jaxrobust_version" in d and "git_commit" in d
    assert "seed" in d and d["smoke"] is False
