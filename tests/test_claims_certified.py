"""The README's randomized-smoothing numbers (section "Certified robustness") are tests:
each is checked against the committed result experiments/results/certified/digits.json
(written by `jaxrobust experiment certified`, experiments/certified.py, which holds the IBP
part too: tests/test_claims_certified_ibp.py), and a perturbed copy of the JSON makes the check
fail, so no claim holds by construction. The README sentences the claims rest on must
appear in it verbatim (with the JSON's numbers filled in)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from scipy.stats import binom

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "experiments" / "results" / "certified" / "digits.json"


def _readme() -> str:
    return re.sub(r"\s+", " ", (ROOT / "README.md").read_text())


def _acc(d: dict, r: str) -> float:
    return d["smoothing"]["certified_accuracy"][r]["value"]


def _emp(d: dict, r: str) -> float:
    return d["smoothing"]["empirical_accuracy"][r]["value"]


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _settings(d: dict) -> bool:
    s, sm = d["smoothing"]["settings"], d["smoothing"]
    return (
        d["smoke"] is False
        and d["settings"]["dataset"] == "digits"
        and s["test_size"] == 360
        and sm["sigma"] == 0.25
        and sm["n0"] == 100
        and sm["n"] == 10_000
        and sm["alpha"] == 0.001
        and all(c["n"] == 360 for c in sm["certified_accuracy"].values())
    )


def _eot_within_alpha(d: dict) -> bool:
    e = d["smoothing"]["eot_check"]
    p = binom.sf(e["violated"] - 1, e["attacked"], 2 * d["smoothing"]["alpha"])
    return e["inputs_within_radius"] is True and e["attacked"] > 0 and p > 0.001


# name -> (README fragment with {} placeholders, its values from the JSON as printed,
# the property the sentence states).
CLAIMS: dict[str, tuple[str, Callable[[dict], tuple], Callable[[dict], bool]]] = {
    "certified_accuracy": (
        "certifies {} of the 360 test images correct at ℓ2 radius 0.25 and {} at 0.5 "
        "(n0 = 100, n = 10,000, α = 0.001; clean smoothed accuracy {})",
        lambda d: (_pct(_acc(d, "0.25")), _pct(_acc(d, "0.5")), _pct(_acc(d, "0"))),
        lambda d: _settings(d) and _acc(d, "0.25") >= 0.85 and _acc(d, "0.5") >= 0.5,
    ),
    "wall_time": (
        "the whole test set in {} s on the 2 shared CPU cores",
        lambda d: (f"{d['smoothing']['certify_seconds']:.0f}",),
        lambda d: d["smoothing"]["certify_seconds"] < 120 and d["smoothing"]["devices"] == 2,
    ),
    "eot_check": (
        "{} of the {} certificates that were attacked were violated (sound certificates "
        "allow at most 2α per image, an expected {} here; the EOT surrogate itself was "
        "fooled on {})",
        lambda d: (
            str(d["smoothing"]["eot_check"]["violated"]),
            str(d["smoothing"]["eot_check"]["attacked"]),
            f"{2 * d['smoothing']['alpha'] * d['smoothing']['eot_check']['attacked']:.1f}",
            str(d["smoothing"]["eot_check"]["surrogate_fooled"]),
        ),
        _eot_within_alpha,
    ),
    "model": (
        "a {} MLP trained {} epochs on Gaussian noise at σ = {}",
        lambda d: (
            "-".join(re.findall(r"\d+", d["smoothing"]["settings"]["model"])),
            str(d["smoothing"]["settings"]["epochs"]),
            f"{d['smoothing']['sigma']:g}",
        ),
        lambda d: d["smoothing"]["settings"]["objective"] == "gaussian_noise",
    ),
    "empirical": (
        "the smoothed classifier's empirical robust accuracy on the same images, under "
        "APGD-CE and APGD-DLR through EOT with the smoothed prediction re-estimated at the "
        "attacks' inputs, is {} at ℓ2 radius 0.25, {} at 0.5 and {} at 0.75 (certified: {}, "
        "{}, {}; SE at most {} points); no image certified at a radius ≥ r was moved to "
        "another class within r",
        lambda d: (
            *(_pct(_emp(d, r)) for r in ("0.25", "0.5", "0.75")),
            *(_pct(_acc(d, r)) for r in ("0.25", "0.5", "0.75")),
            f"{100 * max(m['se'] for m in _measures(d)):.1f}",
        ),
        lambda d: (
            _settings(d)
            and all(d["smoothing"]["empirical_check"]["certified_le_empirical"].values())
            and all(_acc(d, r) <= _emp(d, r) for r in ("0", "0.25", "0.5", "0.75"))
            and all(m["n"] == 360 for m in d["smoothing"]["empirical_accuracy"].values())
            and not any(d["smoothing"]["empirical_check"]["certified_and_moved"].values())
            and d["smoothing"]["empirical_check"]["inputs_within_radius"] is True
        ),
    ),
    "max_radius": (
        "the largest radius n = 10,000 samples can certify is {}",
        lambda d: (f"{d['smoothing']['max_certifiable_radius']['value']:.2f}",),
        lambda d: (
            max(
                d["smoothing"]["curve"]["radius"][i]
                for i, a in enumerate(d["smoothing"]["curve"]["certified_accuracy"])
                if a > 0
            )
            <= d["smoothing"]["max_certifiable_radius"]["value"] + 1e-9
        ),
    ),
}


def _measures(d: dict) -> list[dict]:
    sm = d["smoothing"]
    return [sm[k][r] for k in ("certified_accuracy", "empirical_accuracy") for r in sm[k]]


def _holds(d: dict, name: str) -> None:
    text, values, prop = CLAIMS[name]
    assert prop(d), f"{name}: the property fails on the JSON"
    sentence = text.format(*values(d))
    assert sentence in _readme(), f"README does not say: {sentence!r}"


PERTURB: dict[str, Callable[[dict], None]] = {
    "certified_accuracy": lambda d: d["smoothing"]["certified_accuracy"]["0.25"].update(
        value=d["smoothing"]["certified_accuracy"]["0.25"]["value"] - 0.01
    ),
    "wall_time": lambda d: d["smoothing"].update(certify_seconds=121.0),
    "eot_check": lambda d: d["smoothing"]["eot_check"].update(
        violated=d["smoothing"]["eot_check"]["violated"] + 5
    ),
    "model": lambda d: d["smoothing"]["settings"].update(epochs=30),
    "empirical": lambda d: d["smoothing"]["empirical_check"]["certified_and_moved"].update(
        {"0.5": 1}
    ),
    "max_radius": lambda d: d["smoothing"]["max_certifiable_radius"].update(value=0.7),
}


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_readme_claim_holds_on_committed_result(name):
    _holds(json.loads(RESULT.read_text()), name)


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_readme_claim_fails_on_a_perturbed_copy(name):
    d = copy.deepcopy(json.loads(RESULT.read_text()))
    PERTURB[name](d)
    with pytest.raises(AssertionError):
        _holds(d, name)


def test_result_carries_provenance():
    d = json.loads(RESULT.read_text())
    assert d["git_commit"] and not d["git_commit"].endswith("+dirty")
    assert d["wall_time_s"] > 0 and d["seed"] == 0 and d["smoke"] is False
    assert d["experiment"] == "certified" and all(d["checks"].values())
