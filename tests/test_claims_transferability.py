"""The README's numbers on the transfer matrix (section "Datasets built from a model's features",
the `transferability` paragraph) are tests: each fragment is checked against the committed
results (experiments/results/transferability/digits.json, written by
experiments/transferability.py), with the property the sentence states, and a perturbed copy
of the JSON makes the check fail."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from claims_helpers import perturb_numbers

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "transferability" / "digits.json"
STANDARD = ("standard_a", "standard_b", "standard_wide")
FEATURES = ("d_rand", "d_det")


def _readme() -> str:
    return re.sub(r"\s+", " ", (ROOT / "README.md").read_text())


def _e(r: dict, eps: str, source: str, target: str) -> dict:
    return r["matrices"][f"eps_{eps}"]["transfer"][source][target]


def _pse(e: dict) -> str:
    """A measured rate as the README prints it: '91.2% ± 1.5'."""
    return f"{100 * e['value']:.1f}% ± {100 * e['se']:.1f}"


def _above(a: dict, b: dict, k: float = 3.0) -> bool:
    """a's rate exceeds b's by more than k standard errors of the difference."""
    return a["value"] - b["value"] > k * (a["se"] ** 2 + b["se"] ** 2) ** 0.5


def _range(entries: list[dict]) -> str:
    """'88.4–91.2%' over the entries' values."""
    v = sorted(100 * e["value"] for e in entries)
    return f"{v[0]:.1f}–{v[-1]:.1f}%"


def _standard_pairs(r: dict, eps: str) -> list[dict]:
    return [_e(r, eps, s, t) for s in STANDARD for t in STANDARD if s != t]


def _to(r: dict, eps: str, target: str) -> list[dict]:
    return [_e(r, eps, s, target) for s in STANDARD]


def _noise(r: dict, eps: str) -> list[dict]:
    return list(r["matrices"][f"eps_{eps}"]["noise"].values())


CLAIMS: dict[str, tuple[str, Callable[[dict], tuple], Callable[[dict], bool]]] = {}


def _gap_holds(r: dict, eps: str, robust: tuple[str, ...]) -> bool:
    """Every standard-source entry to a standard (other) or D_rand / D_det target exceeds every
    standard-source entry to the `robust` targets by more than 3 SE of the difference."""
    high = _standard_pairs(r, eps) + [e for t in FEATURES for e in _to(r, eps, t)]
    low = [e for t in robust for e in _to(r, eps, t)]
    return all(_above(a, b) for a in high for b in low)


def _above_noise(r: dict, eps: str) -> bool:
    """Every standard-source entry exceeds the noise baseline of its target by 3 SE."""
    noise = r["matrices"][f"eps_{eps}"]["noise"]
    return all(_above(_e(r, eps, s, t), noise[t]) for s in STANDARD for t in noise)


def _min_gap(r: dict) -> str:
    """The smallest gap, in points, between a standard-source entry to a standard / D target
    and one to the ℓ2 PGD-AT model, over ε = 0.5 and 1."""
    gaps = []
    for eps in ("0.5", "1"):
        high = _standard_pairs(r, eps) + [e for t in FEATURES for e in _to(r, eps, t)]
        low = _to(r, eps, "robust_l2")
        gaps.append(min(a["value"] for a in high) - max(b["value"] for b in low))
    return f"{100 * min(gaps):.1f}"


def _entries(r: dict, eps: str) -> list[dict]:
    return [e for row in r["matrices"][f"eps_{eps}"]["transfer"].values() for e in row.values()]


def _all_n(r: dict) -> list[int]:
    return [
        e["n"]
        for m in r["matrices"].values()
        for row in m["transfer"].values()
        for e in row.values()
    ]


def _row(r: dict, eps: str, source: str) -> list[dict]:
    return [e for t, e in r["matrices"][f"eps_{eps}"]["transfer"][source].items() if t != source]


CLAIMS.update(
    {
        "setup": (
            "all {} test images, n = {} to {} per entry) it ran in {} minutes on the shared 2-core "
            "CPU",
            lambda r: (
                r["settings"]["test_size"],
                min(_all_n(r)),
                max(_all_n(r)),
                f"{r['wall_time_s'] / 60:.1f}",
            ),
            lambda r: (
                r["wall_time_s"] < 30 * 60
                and not str(r["git_commit"]).endswith("+dirty")
                and r["settings"]["attack_steps"] == 100
                and r["settings"]["l2_train_eps"] == 1.0
                and r["settings"]["eps"] == 0.1
                and r["settings"]["epochs"] == 30
                and r["smoke"] is False
            ),
        ),
        "eps1": (
            "At ℓ2 ε = 1, examples crafted on a standard model fool the other standard models "
            "on {} of the points, the D_rand / D_det models on {} / {}, the ℓ∞ PGD-AT model on {} "
            "and the ℓ2 PGD-AT model on only {} (random noise of the same norm: {})",
            lambda r: (
                _range(_standard_pairs(r, "1")),
                _range(_to(r, "1", "d_rand")),
                _range(_to(r, "1", "d_det")),
                _range(_to(r, "1", "robust_linf")),
                _range(_to(r, "1", "robust_l2")),
                _range(_noise(r, "1")),
            ),
            lambda r: _gap_holds(r, "1", ("robust_l2",)) and _above_noise(r, "1"),
        ),
        "eps05": (
            "At ε = 0.5: {} to the other standard models, {} / {} to the D_rand / D_det models, "
            "{} / {} to the ℓ∞ / ℓ2 PGD-AT models (noise: {})",
            lambda r: (
                _range(_standard_pairs(r, "0.5")),
                _range(_to(r, "0.5", "d_rand")),
                _range(_to(r, "0.5", "d_det")),
                _range(_to(r, "0.5", "robust_linf")),
                _range(_to(r, "0.5", "robust_l2")),
                _range(_noise(r, "0.5")),
            ),
            lambda r: _gap_holds(r, "0.5", ("robust_linf", "robust_l2")) and _above_noise(r, "0.5"),
        ),
        "features_view": (
            "far more than to the ℓ2-robust model (every such gap, at least {} points, is over 3 "
            "standard errors of the difference)",
            lambda r: (_min_gap(r),),
            lambda r: all(_gap_holds(r, eps, ("robust_l2",)) for eps in ("0.5", "1")),
        ),
        "robust_row": (
            "at ε = 1 they fool it on {} and every other model at about that rate ({})",
            lambda r: (
                _pse(_e(r, "1", "robust_l2", "robust_l2")),
                _range(_row(r, "1", "robust_l2")),
            ),
            # "about that rate": every entry within 2 SE of the difference from the white-box rate
            lambda r: all(
                not _above(e, _e(r, "1", "robust_l2", "robust_l2"), 2.0)
                and not _above(_e(r, "1", "robust_l2", "robust_l2"), e, 2.0)
                for e in _row(r, "1", "robust_l2")
            ),
        ),
        "d_rand": (
            "The D_rand model's examples fool its source on {} and the independent standard models "
            "on {} / {}; from the source to the D_rand model the advantage is within noise ({} vs "
            "{} / {})",
            lambda r: (
                _pse(_e(r, "1", "d_rand", "standard_a")),
                _pse(_e(r, "1", "d_rand", "standard_b")),
                _pse(_e(r, "1", "d_rand", "standard_wide")),
                _pse(_e(r, "1", "standard_a", "d_rand")),
                _pse(_e(r, "1", "standard_b", "d_rand")),
                _pse(_e(r, "1", "standard_wide", "d_rand")),
            ),
            lambda r: (
                r["models"]["d_rand"]["data"] == "d_rand"
                and r["constructions"]["d_rand"]["source"] == "standard_a"
                and all(
                    _above(_e(r, "1", "d_rand", "standard_a"), _e(r, "1", "d_rand", t), 2.0)
                    for t in ("standard_b", "standard_wide")
                )
                and all(
                    not _above(_e(r, "1", "standard_a", "d_rand"), _e(r, "1", s, "d_rand"), 2.0)
                    for s in ("standard_b", "standard_wide")
                )
            ),
        ),
        "eps2": (
            "At ε = 2 every entry is {} or more (noise {})",
            lambda r: (
                f"{100 * min(e['value'] for e in _entries(r, '2')):.1f}%",
                _range(_noise(r, "2")),
            ),
            lambda r: all(
                e["value"] > max(n["value"] for n in _noise(r, "2")) for e in _entries(r, "2")
            ),
        ),
    }
)


def _holds(name: str, results: dict) -> bool:
    template, values, prop = CLAIMS[name]
    return template.format(*values(results)) in _readme() and prop(results)


def _results() -> dict:
    return json.loads(RESULTS.read_text())


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_readme_claim_holds(name):
    template, values, _ = CLAIMS[name]
    results = _results()
    assert template.format(*values(results)) in _readme(), template.format(*values(results))
    assert _holds(name, results)


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_readme_claim_fails_on_other_numbers(name):
    """Scale every number of the JSON by 0.9 (or flip exact ones): the claim must stop holding."""

    assert not _holds(name, perturb_numbers(_results()))
