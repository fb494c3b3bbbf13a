"""The README's claims about `jaxrobust experiment sample_complexity` are tests.

Each claim names the sentences of README.md ("Measured results": "Robust generalization needs
more data" and the sample-complexity half of "Real data (UCI digits ...)") that state it, and
checks the committed result JSON (experiments/results/sample_complexity/) for every number and
property those sentences state: the number as the README prints it, how it was obtained
(closed form / measured with n and SE / by argument), and the property (monotone, ordering,
agreement within the confidence interval). A second test perturbs the JSON so that the claim
no longer holds and checks that the claim's test then fails: no claim test can pass vacuously.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "sample_complexity"
Z95 = 1.959964


@cache
def _json(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


@cache
def _readme() -> str:
    """README.md with whitespace collapsed (so claims may wrap across lines)."""
    return re.sub(r"\s+", " ", (ROOT / "README.md").read_text())


def _v(x):
    """The value of a provenance dict; fails if x is a bare number (its method is missing)."""
    assert isinstance(x, dict) and x.get("method") in ("measured", "closed_form", "by_argument"), x
    return x["value"]


def _measured(x, min_n: int = 2):
    """The value of a measured number, which must carry its sample size and standard error."""
    assert x["method"] == "measured" and x["n"] >= min_n and x["se"] is not None, x
    return x["value"]


def _se(measured: dict, exact: float) -> float:
    """The measured SE floored at the binomial SE at the closed-form value (as the
    experiment's `effective_se`: a spread of 0 over saturated draws is no exact answer)."""
    p = min(max(exact, 0.0), 1.0)
    return max(measured["se"] or 0.0, float(np.sqrt(p * (1 - p) / measured["n"])))


def _shown(value: float, text: str) -> None:
    """`value` prints as `text` at text's precision ("0.81", "3.7e-05", "54")."""
    if "e" in text:
        digits = len(text.split("e")[0].split(".")[1]) if "." in text else 0
        assert f"{value:.{digits}e}" == text, (value, text)
    else:
        digits = len(text.split(".")[1]) if "." in text else 0
        assert f"{value:.{digits}f}" == text, (value, text)


class Claim(NamedTuple):
    name: str
    source: str  # "synthetic" (sample_complexity.json) or "digits" (..._digits.json)
    readme: tuple[str, ...]  # the README's words for it (whitespace-normalised)
    check: Callable[[dict], None]
    falsify: Callable[[dict], None]  # edits a copy of the JSON so that the claim is false


# ----------------------------------------------------------------------------- synthetic


def _headline(s: dict) -> None:
    h = s["headline"]
    assert (h["d"], h["n"], h["eps"]) == (100_000, 1, 0.25)
    assert h["sigma"] == pytest.approx(0.5 * 100_000**0.25)
    _shown(_v(h["standard_closed_form"]), HEADLINE["standard"])
    _shown(_v(h["robust_closed_form"]), HEADLINE["robust"])
    assert h["standard_closed_form"]["method"] == h["robust_closed_form"]["method"] == "closed_form"
    # measured twins: PGD robust error within its CI of the closed form; standard error:
    # the measured count's 95% upper bound covers the closed form and is below 1%
    rob = h["robust_measured"]
    _shown(_measured(rob), HEADLINE["robust_measured"])
    assert rob["n"] == HEADLINE["samples"]
    assert abs(rob["value"] - _v(h["robust_closed_form"])) <= 3 * _se(
        rob, _v(h["robust_closed_form"])
    )
    assert _measured(h["standard_measured"]) <= h["standard_measured_upper95"] < 0.01
    assert (
        h["standard_measured"]["value"] == 0 and h["standard_measured"]["n"] == HEADLINE["samples"]
    )
    _shown(h["standard_measured_upper95"], HEADLINE["upper95"])
    assert h["standard_measured_upper95"] >= _v(h["standard_closed_form"])


def _falsify_headline(s: dict) -> None:
    s["headline"]["robust_measured"]["value"] = 0.5


def _pgd_points(s: dict) -> None:
    m = s["pgd_measurements"]
    pts = m["points"]
    assert len(pts) == PGD["points"] and m["draws"] == PGD["draws"]
    lo, hi = m["range"]
    assert (lo, hi) == (0.02, 0.98)
    for p in pts:
        cf = _v(p["robust_closed_form"])
        assert lo <= cf <= hi  # informative: neither ≈0 nor ≈1
        assert p["robust_closed_form"]["method"] == "closed_form"
        val = _measured(p["robust"])
        comb = float(np.hypot(_se(p["robust"], cf), p["robust_closed_form_se"]))
        assert abs(val - cf) <= 3 * comb, p  # every point within 3 combined SE
    inside = sum(
        abs(_v(p["robust"]) - _v(p["robust_closed_form"]))
        <= Z95 * np.hypot(_se(p["robust"], _v(p["robust_closed_form"])), p["robust_closed_form_se"])
        for p in pts
    )
    assert inside == PGD["within_ci95"]
    worst = max(abs(_v(p["robust"]) - _v(p["robust_closed_form"])) for p in pts)
    _shown(100 * worst, PGD["worst_pp"])


def _falsify_pgd_points(s: dict) -> None:
    p = s["pgd_measurements"]["points"][0]
    p["robust"]["value"] = min(1.0, _v(p["robust_closed_form"]) + 10 * p["robust"]["se"] + 0.05)


def _nstar_row(s: dict) -> np.ndarray:
    ns = s["n_star"]
    a, b = ns["eps"].index(0.5), ns["sigma_mults"].index(0.5)
    d = np.asarray(ns["d"])
    return np.asarray(ns["n_star"], float)[a, b, d >= 1000], d[d >= 1000]


def _nstar_values(s: dict) -> None:
    row, d = _nstar_row(s)
    sel = np.isin(d, [1000, 10_000, 100_000, 1_000_000])
    assert [int(v) for v in row[sel]] == NSTAR["values"]
    assert np.all(row == np.round(row)) and np.all(row >= 1)  # integer numbers of samples
    assert s["n_star"]["target_robust_error"] == 0.10
    # closed form at n* is <= the target, at n* − 1 above it
    ns = s["n_star"]
    at = np.asarray(ns["robust_error_at_n_star"], float)
    below = np.asarray(ns["robust_error_at_n_star_minus_1"], float)
    assert np.all(at[np.isfinite(at)] <= 0.10) and np.all(below[np.isfinite(below)] > 0.10)


def _falsify_nstar_values(s: dict) -> None:
    ns = s["n_star"]
    a, b = ns["eps"].index(0.5), ns["sigma_mults"].index(0.5)
    ns["n_star"][a][b][ns["d"].index(10_000)] += 1


def _nstar_monotone(s: dict) -> None:
    ns = s["n_star"]
    d = np.asarray(ns["d"])
    t = np.asarray(ns["n_star"], float)[..., d >= ns["d_theory_min"]]
    assert np.all(np.isfinite(t)) and np.all(t >= 1) and np.all(t == np.round(t))
    assert np.all(np.diff(t, axis=2) >= 0) and np.all(np.diff(t, axis=0) >= 0)
    grows = (t[..., -1] > t[..., 0])[t[..., -1] >= 2]
    assert grows.size and np.all(grows)  # more samples at d = 10⁶ than at 10³ where > 1
    assert t.min() == 1  # some rows sit at one sample: the claim is about integer n*


def _falsify_nstar_monotone(s: dict) -> None:
    ns = s["n_star"]
    row = ns["n_star"][-1][-1]
    row[-1] = row[ns["d"].index(ns["d_theory_min"])]  # flat over the whole d range


def _slopes(s: dict) -> None:
    ns = s["n_star"]
    assert ns["slope_min_n"] == 10
    rows = ns["local_slopes"]
    assert sorted(rows) == sorted(SLOPES["rows"])
    for name, sl in rows.items():
        assert np.all(np.diff(sl) > 0), (name, sl)  # rising with d
        assert 0 < sl[0] and sl[-1] < 0.5  # towards ½ from below
    first = min(r[0] for r in rows.values())
    last = max(r[-1] for r in rows.values())
    _shown(first, SLOPES["first"])
    _shown(last, SLOPES["last"])


def _falsify_slopes(s: dict) -> None:
    sl = next(iter(s["n_star"]["local_slopes"].values()))
    sl[-1] = sl[0] - 0.01


def _nstar_twins(s: dict) -> None:
    tw = s["n_star_twins"]
    row, d = _nstar_row(s)
    assert [t["d"] for t in tw] == d.tolist() and [t["n"] for t in tw] == row.astype(int).tolist()
    for t in tw:
        cf = _v(t["robust_closed_form"])
        assert abs(_measured(t["robust"]) - cf) <= 3 * _se(t["robust"], cf), t


def _falsify_nstar_twins(s: dict) -> None:
    t = s["n_star_twins"][0]
    t["robust"]["value"] = _v(t["robust_closed_form"]) + 4 * _se(t["robust"], 0.5) + 0.01


def _bernoulli(s: dict) -> None:
    b = s["bernoulli"]
    std = np.asarray(_measured(b["standard"]))
    arg = b["thresholded_robust_by_argument"]
    assert arg["method"] == "by_argument"
    thr = b["thresholded_robust"]
    assert "straight-through" in thr["how"]
    for k, e in enumerate(b["eps"]):
        meas = np.asarray(_measured(thr)[k])
        exact = np.asarray(_measured(b["thresholded_robust_exact_search"])[k])
        np.testing.assert_array_equal(meas, exact)  # the two attacks agree
        if e < 1:
            np.testing.assert_allclose(meas, arg["value"][k])  # measured = by argument
            np.testing.assert_allclose(meas, std)
        else:  # the control: the same attacks break the thresholded model
            assert b["eps_is_control"][k] and np.all(meas >= BERNOULLI["control_min"])
    lin_big = np.asarray(_v(b["linear_robust"])[1])  # ε = 1.5τ
    _shown(lin_big.min(), BERNOULLI["linear_1p5tau_min"])
    _shown(std[0], BERNOULLI["standard_n1"])


def _falsify_bernoulli(s: dict) -> None:
    b = s["bernoulli"]
    b["thresholded_robust"]["value"][0][0] += 0.05


def _adversarial_training(s: dict) -> None:
    at = s["adversarial_training"]
    assert "pgd_at" in at["objective"] and "make_train_step" in at["objective"]
    c = at["pgd_checks"]
    assert at["seeds"] >= 3 and c["models_checked"] == at["seeds"] * len(at["n"])
    assert np.all(c["agrees"]) and c["all_agree"]
    diff = np.asarray(_v(at["robust_difference_at_minus_mean"]))
    se = np.asarray(at["robust_difference_se"])
    assert at["n"][:2] == [1, 2]
    _shown(-100 * diff[0], AT["gain_pp_n1"])
    _shown(-100 * diff[1], AT["gain_pp_n2"])
    assert np.all(diff[:2] < -3 * se[:2])  # resolved: PGD-AT is a little more robust there
    assert np.all(np.abs(diff[2:]) <= 0.001)  # and not beyond n = 2
    mean_r = _v(at["mean_estimator"]["robust"])
    at_r = _v(at["adversarial_training"]["robust"])
    _shown(mean_r[0], AT["mean_n1"])
    _shown(at_r[0], AT["at_n1"])
    assert min(at["cosine_at_vs_mean"]) >= 0.99


def _falsify_at(s: dict) -> None:
    s["adversarial_training"]["pgd_checks"]["agrees"][0][0] = False


# -------------------------------------------------------------------------------- digits


def _digits_at(g: dict, n: int) -> int:
    return g["n"].index(n)


def _digits_standard(g: dict) -> None:
    acc = g["acceptance"]
    clean = acc["standard_clean_test"]
    vals = _measured(clean)
    assert clean["n"] == g["settings"]["seeds"] == 4
    for n, text in DIGITS["standard_clean"].items():
        _shown(vals[_digits_at(g, n)], text)
    assert acc["standard_saturation_n"]["method"] == "measured"
    assert acc["standard_saturation_n"]["value"] == 400 and acc["saturation_tol"] == 0.02
    assert acc["standard_saturates_before_robust"]["value"] is True
    ses = [clean["se"], *(v["se"] for v in acc["robust_test"].values())]
    assert max(np.max(s) for s in ses) <= DIGITS["max_se"]


def _falsify_digits_standard(g: dict) -> None:
    g["acceptance"]["standard_saturation_n"]["value"] = 1437
    g["acceptance"]["standard_saturates_before_robust"]["value"] = False


def _digits_robust(g: dict) -> None:
    acc = g["acceptance"]
    for eps, texts in DIGITS["robust"].items():
        vals = _measured(acc["robust_test"][eps])
        for n, text in texts.items():
            _shown(vals[_digits_at(g, n)], text)
        assert np.all(np.diff(vals) > 0)  # keeps rising to the full set
        assert acc["robust_saturation_n"][eps]["value"] == g["n"][-1]
        gain = acc["robust_accuracy_gain_last_doubling_pp"][eps]
        _shown(_measured(gain), DIGITS["gain_pp"][eps])
        _shown(gain["se"], DIGITS["gain_se_pp"][eps])
        assert gain["value"] > 2 * gain["se"]  # the last step's gain is resolved


def _falsify_digits_robust(g: dict) -> None:
    v = g["acceptance"]["robust_test"]["0.1"]["value"]
    v[-1] = v[-2] - 0.01


def _digits_gap(g: dict) -> None:
    acc = g["acceptance"]
    for eps, (first, last) in DIGITS["gap"].items():
        gap = _measured(acc["robust_gap"][eps])
        _shown(gap[0], first)
        _shown(gap[-1], last)
        assert np.all(np.diff(gap) < 0)  # falls at every n
    assert acc["robust_gap_shrinks_with_n"]["value"] is True


def _falsify_digits_gap(g: dict) -> None:
    g["acceptance"]["robust_gap"]["0.2"]["value"][-1] = 0.9


# ------------------------------------------------------------- the README's numbers

# fmt: off
HEADLINE = {"standard": "3.8e-05", "robust": "0.999", "robust_measured": "1.000", "samples": 960,
            "upper95": "0.0031"}
PGD = {"points": 20, "draws": 8, "within_ci95": 19, "worst_pp": "3.1"}
NSTAR = {"values": [3, 7, 19, 54]}
SLOPES = {"rows": ["eps=0.4,c=1", "eps=0.5,c=1"], "first": "0.26", "last": "0.42"}
BERNOULLI = {"control_min": 0.99, "linear_1p5tau_min": "0.995", "standard_n1": "0.139"}
AT = {"gain_pp_n1": "2.1", "gain_pp_n2": "0.9", "mean_n1": "0.480", "at_n1": "0.458"}
DIGITS = {
    "standard_clean": {25: "0.81", 100: "0.91", 400: "0.96", 1437: "0.98"},
    "robust": {
        "0.1": {25: "0.42", 100: "0.63", 400: "0.77", 1437: "0.86"},
        "0.2": {25: "0.15", 100: "0.27", 400: "0.45", 1437: "0.61"},
    },
    "gain_pp": {"0.1": "3.7", "0.2": "6.2"},
    "gain_se_pp": {"0.1": "1.3", "0.2": "0.7"},
    "max_se": 0.0235,
    "gap": {"0.1": ("0.58", "0.14"), "0.2": ("0.85", "0.16")},
}
# fmt: on

CLAIMS = [
    Claim(
        "headline",
        "synthetic",
        (
            "one sample: standard error 3.8e-05 but ℓ∞-robust error 0.999 (closed form",
            "measured on 960 held-out samples (8 draws of ŵ), no clean error (95% upper bound "
            "0.0031) and PGD robust error 1.000",
        ),
        _headline,
        _falsify_headline,
    ),
    Claim(
        "pgd_points",
        "synthetic",
        (
            "informative (closed form 2–98%), the library's PGD on held-out samples at 20 "
            "(d, n, ε) points, 8 draws of ŵ each, agrees with the closed-form curves within 3 SE "
            "at every point and within the 95% CI at 19 (worst gap 3.1 pp)",
        ),
        _pgd_points,
        _falsify_pgd_points,
    ),
    Claim(
        "n_star_values",
        "synthetic",
        (
            "smallest integer number of samples with expected robust error ≤ 10% (closed form)",
            "c = 0.5, ε = 0.5: 3, 7, 19, 54 samples at d = 10³, 10⁴, 10⁵, 10⁶",
        ),
        _nstar_values,
        _falsify_nstar_values,
    ),
    Claim(
        "n_star_monotone",
        "synthetic",
        (
            "never falls as d or ε grows and is larger at d = 10⁶ than at 10³ wherever it exceeds "
            "one sample",
        ),
        _nstar_monotone,
        _falsify_nstar_monotone,
    ),
    Claim(
        "n_star_slopes",
        "synthetic",
        ("on the rows with n* ≥ 10 its local log-log slope in d rises from 0.26 to 0.42",),
        _slopes,
        _falsify_slopes,
    ),
    Claim(
        "n_star_twins",
        "synthetic",
        ("PGD on ŵ(n*) measures robust errors within 3 SE of the closed form at every d",),
        _nstar_twins,
        _falsify_nstar_twins,
    ),
    Claim(
        "bernoulli",
        "synthetic",
        (
            "attacked by PGD with straight-through gradients through sign and by exact search",
            "has robust error equal to its standard error for ε < 1, as the argument says",
            "0.139 at n = 1, falling to 0, while the linear classifier's robust error at "
            "ε = 1.5τ stays ≥ 0.995; at the control ε = 1.05 both attacks break the thresholded "
            "model (robust error ≥ 0.99)",
        ),
        _bernoulli,
        _falsify_bernoulli,
    ),
    Claim(
        "adversarial_training",
        "synthetic",
        (
            "PGD on held-out samples matches its closed form for all 21 models",
            "2.1 pp lower robust error at n = 1 (0.480 → 0.458, closed form, paired over seeds) "
            "and 0.9 pp at n = 2, none beyond",
        ),
        _adversarial_training,
        _falsify_at,
    ),
    Claim(
        "digits_standard_saturates",
        "digits",
        (
            "mean over 4 seeds, standard errors over seeds at most 2.3 pp",
            "standard clean accuracy 0.81 / 0.91 / 0.96 / 0.98 at n = 25 / 100 / 400 / 1437",
            "saturates (within 2 pp of its maximum) at n = 400",
        ),
        _digits_standard,
        _falsify_digits_standard,
    ),
    Claim(
        "digits_robust_keeps_rising",
        "digits",
        (
            "0.42 / 0.63 / 0.77 / 0.86 (ε = 0.1) and 0.15 / 0.27 / 0.45 / 0.61 (ε = 0.2)",
            "+3.7 ± 1.3 / +6.2 ± 0.7 pp from 800 to 1437",
        ),
        _digits_robust,
        _falsify_digits_robust,
    ),
    Claim(
        "digits_gap_falls",
        "digits",
        ("falls from 0.58 to 0.14 (ε = 0.1) and from 0.85 to 0.16 (ε = 0.2), at every step",),
        _digits_gap,
        _falsify_digits_gap,
    ),
]
_FILES = {"synthetic": "sample_complexity", "digits": "sample_complexity_digits"}


@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: c.name)
def test_readme_states_the_claim(claim):
    for text in claim.readme:
        assert text in _readme(), f"README no longer says: {text!r}"


@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: c.name)
def test_claim_holds_in_committed_results(claim):
    claim.check(copy.deepcopy(_json(_FILES[claim.source])))


@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: c.name)
def test_claim_fails_when_falsified(claim):
    data = copy.deepcopy(_json(_FILES[claim.source]))
    claim.falsify(data)
    with pytest.raises(AssertionError):
        claim.check(data)


def test_every_headline_number_says_how_it_was_obtained():
    """Every number the claims read is a provenance dict (checked by `_v`/`_measured`), and
    both result files carry the run's version, commit and wall time."""
    for name in _FILES.values():
        data = _json(name)
        assert data["jaxrobust_version"] and data["git_commit"] and data["wall_time_s"] > 0
