"""The README's paragraph "Certified robustness by interval bound propagation" is a test:
each fragment is formatted from the committed measurement
(the `ibp` part of experiments/results/certified/digits.json, written by
`jaxrobust experiment certified`, experiments/certified.py)
and must appear in the README verbatim, the issue's acceptance bars (verified >= 80%,
clean >= 95%, verified <= PGD <= clean) are checked on the JSON, and a perturbed copy of
the JSON makes the check fail.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "certified" / "digits.json"


def _readme() -> str:
    return re.sub(r"\s+", " ", (ROOT / "README.md").read_text())


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _se(x: float) -> str:
    return f"{100 * x:.1f}"


def _i(r: dict) -> dict:
    """The measured numbers of the IBP part by name."""
    return {k: v["value"] for k, v in r["ibp"].items() if isinstance(v, dict) and "value" in v}


def _s(r: dict) -> dict:
    return r["ibp"]["settings"]


# (README fragment with {} placeholders, the values from the JSON as printed, the property)
CLAIMS: dict[str, tuple[str, Callable[[dict], tuple], Callable[[dict], bool]]] = {
    "recipe": (
        "A {}-{} MLP trained with the `ibp` objective on the 1437 digits training images ({} "
        "epochs, Adam, ε_train {} ramped linearly after {} natural epochs over {} epochs, κ "
        "from 1 to {}; {} s of training",
        lambda r: (
            *map(str, _s(r)["model_kwargs"]["hidden"]),
            str(_s(r)["epochs"]),
            str(_s(r)["eps_train"]),
            str(_s(r)["warmup_epochs"]),
            str(_s(r)["ramp_epochs"]),
            str(_s(r)["kappa"]),
            f"{r['ibp']['train_seconds']:.0f}",
        ),
        lambda r: (
            r["settings"]["dataset"] == "digits" and r["smoke"] is False and _s(r)["model"] == "mlp"
        ),
    ),
    "numbers": (
        "on the {} test images at ℓ∞ ε = {} within [0, 1], verified accuracy {} (SE {} "
        "points) by IBP and {} by CROWN-IBP, PGD-{}×{} robust accuracy {} (SE {}; "
        "cross-entropy and margin losses, an image counts as robust when neither breaks it) "
        "and clean accuracy {} (SE {})",
        lambda r: (
            str(r["ibp"]["verified_accuracy"]["n"]),
            str(_s(r)["eps"]),
            _pct(_i(r)["verified_accuracy"]),
            _se(r["ibp"]["verified_accuracy"]["se"]),
            _pct(_i(r)["crown_ibp_verified_accuracy"]),
            str(_s(r)["pgd_steps"]),
            str(_s(r)["pgd_restarts"]),
            _pct(_i(r)["pgd_accuracy"]),
            _se(r["ibp"]["pgd_accuracy"]["se"]),
            _pct(_i(r)["clean_accuracy"]),
            _se(r["ibp"]["clean_accuracy"]["se"]),
        ),
        # the acceptance bars
        lambda r: (
            _i(r)["verified_accuracy"] >= 0.8
            and _i(r)["clean_accuracy"] >= 0.95
            and _s(r)["eps"] == 0.1
            and r["ibp"]["verified_accuracy"]["n"] == 360
        ),
    ),
    "order": (
        "verified ≤ PGD robust ≤ clean, and no test image is both certified and broken by PGD",
        lambda r: (),
        lambda r: (
            _i(r)["verified_accuracy"]
            <= _i(r)["crown_ibp_verified_accuracy"]
            <= _i(r)["pgd_accuracy"]
            <= _i(r)["clean_accuracy"]
            and _i(r)["verified_and_broken_examples"] == 0
            and all(r["ibp"]["checks"].values())
        ),
    ),
}


def check(r: dict, name: str) -> None:
    text, values, prop = CLAIMS[name]
    fragment = text.format(*values(r))
    assert fragment in _readme(), f"README does not say: {fragment!r}"
    assert prop(r), f"the property behind {name!r} does not hold"


def _load() -> dict:
    return json.loads(RESULTS.read_text())


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_readme_claim_matches_committed_results(name):
    check(_load(), name)


def test_results_carry_provenance():
    r = _load()
    assert r["wall_time_s"] > 0 and r["git_commit"] and "+dirty" not in r["git_commit"]
    assert r["experiment"] == "certified" and r["smoke"] is False


def _set(path: str, value) -> Callable[[dict], None]:
    def f(r: dict) -> None:
        node = r
        *head, last = path.split(".")
        for k in head:
            node = node[k]
        node[last] = value(node[last]) if callable(value) else value

    return f


# Perturbations of the JSON and the claim each must break.
PERTURBED = [
    ("recipe", _set("ibp.settings.epochs", 100)),
    ("recipe", _set("ibp.train_seconds", lambda t: t + 5)),
    ("recipe", _set("ibp.settings.model", "small_cnn")),
    ("numbers", _set("ibp.verified_accuracy.value", lambda v: v + 0.01)),
    ("numbers", _set("ibp.verified_accuracy.se", lambda v: v + 0.002)),
    ("numbers", _set("ibp.crown_ibp_verified_accuracy.value", lambda v: v - 0.01)),
    ("numbers", _set("ibp.pgd_accuracy.value", lambda v: v + 0.01)),
    ("numbers", _set("ibp.clean_accuracy.value", lambda v: v - 0.01)),
    ("numbers", _set("ibp.settings.pgd_steps", 10)),
    ("order", _set("ibp.pgd_accuracy.value", 0.8)),
    ("order", _set("ibp.verified_and_broken_examples.value", 1)),
    ("order", _set("ibp.crown_ibp_verified_accuracy.value", 0.5)),
]


@pytest.mark.parametrize(
    "name,perturb", PERTURBED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(PERTURBED)]
)
def test_perturbed_results_fail_the_claim(name, perturb):
    r = copy.deepcopy(_load())
    perturb(r)
    with pytest.raises(AssertionError):
        check(r, name)


def test_acceptance_bars_fail_below_threshold():
    """The bars themselves (not just the printed values) are checked."""
    r = copy.deepcopy(_load())
    r["ibp"]["verified_accuracy"]["value"] = 0.79
    assert not CLAIMS["numbers"][2](r)
    r = copy.deepcopy(_load())
    r["ibp"]["clean_accuracy"]["value"] = 0.94
    assert not CLAIMS["numbers"][2](r)
