"""The README's benchmark numbers measured on 2026-12-06/07 (APGD strength against the
reference, the standard evaluation's speed, convolutions inside loops) are tests: each is
recomputed from the committed results file the README names, and a perturbed copy of that
file makes the check fail."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from claims_helpers import perturb_numbers

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def _readme() -> str:
    return re.sub(r"\s+", " ", (ROOT / "README.md").read_text())


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _strength_text(d: dict) -> list[str]:
    rows = {(r["model"], a): v for r in d["results"] for a, v in r["attacks"].items()}
    diff = [rows[k]["difference"] for k in rows]
    se = [rows[k]["difference_se"] for k in rows]
    ce = rows[("pgd_at", "apgd-ce")]
    std_ce = rows[("standard", "apgd-ce")]
    first5 = std_ce["jaxrobust"]["counts"][:5]
    differing = ce["reference_same_starts"]["points_differing"]
    identical = [
        k for k, v in rows.items() if max(v["reference_same_starts"]["points_differing"]) == 0
    ]
    assert sorted(identical) == [
        ("pgd_at", "apgd-t"),
        ("standard", "apgd-ce"),
        ("standard", "apgd-t"),
    ]
    assert all(abs(a) < 2 * b or a == b == 0 for a, b in zip(diff, se, strict=True))
    assert ce["jaxrobust"]["mean"] <= ce["reference_same_starts"]["mean"]
    return [
        f"seeds 0–{len(d['seeds']) - 1}",
        f"differs in {min(differing)}–{max(differing)} points per seed",
        f"{ce['jaxrobust']['mean']:.1f} vs {ce['reference_same_starts']['mean']:.1f} on average",
        f"the means differ by {diff[0]:+.1f} ± {se[0]:.1f}, {diff[1]:+.1f} ± {se[1]:.1f} (PGD-AT: "
        f"APGD-CE, APGD-T), {diff[2]:+.1f} ± {se[2]:.1f} and {diff[3]:.1f} (standard)",
        f"seeds 0–4 ({sum(first5) / 5:.1f} vs 211.4) was the draw",
        f"leaves {std_ce['jaxrobust']['mean']:.2f} robust points against the reference's "
        f"{std_ce['reference']['mean']:.2f}",
    ]


def _eval_text(a: dict, b: dict) -> list[str]:
    lines = []
    for label, key in (
        ("reference AutoAttack", "pytorch_autoattack"),
        ("API, `use_cpu_cores_as_devices()` + `jr.evaluate`, warm cache", "warm"),
        ("CLI, `jaxrobust eval`, warm cache", "cli_warm"),
        ("API, cold cache", "cold"),
    ):
        ta, tb = a[key]["end_to_end_seconds"], b[key]["end_to_end_seconds"]
        cell = f"| {label} | {ta:.1f} | {tb:.1f} |"
        if key != "pytorch_autoattack":
            sa, sb = (x["speedup_vs_pytorch_autoattack"][key] for x in (a, b))
            cell += f" {sa:.2f}× / {sb:.2f}× |"
        lines.append(cell)
    for d in (a, b):
        assert all(d["same_robust_examples_as_reference"].values())
    robust = round(a["pytorch_autoattack"]["robust_accuracy"] * a["num_examples"])
    lines.append(f"the same {robust} of {a['num_examples']} examples robust as the reference")
    return lines


def _conv_loops_text(d: dict) -> list[str]:
    r = d["results"]
    b, m = r["bn_cnn"], r["madry_cnn"]
    x = {k: b["xla"][k] for k in b["xla"]}
    a = {k: b["auto"][k] for k in b["auto"]}
    sp = b["speedup_xla_over_auto"]
    mx, ma, msp = m["xla"], m["auto"], m["speedup_xla_over_auto"]
    # The fix must actually win where it was made for (inside loops, both models).
    assert min(sp["train_scan_s"], msp["train_scan_s"], sp["pgd_l2_scan_s"]) > 1.5
    return [
        f"batch {b['batch']}, {d['steps']} steps",
        f"training under `lax.scan` {x['train_scan_s']:.1f} s vs {a['train_scan_s']:.1f} s "
        f"({sp['train_scan_s']:.0f}×), ℓ2 PGD {x['pgd_l2_scan_s']:.1f} vs "
        f"{a['pgd_l2_scan_s']:.1f} s ({sp['pgd_l2_scan_s']:.1f}×)",
        f"called from Python {x['train_python_loop_s']:.1f} vs {a['train_python_loop_s']:.1f} s",
        f"unrolled ℓ∞ PGD {x['pgd_linf_unrolled_s']:.2f} vs {a['pgd_linf_unrolled_s']:.2f} s",
        f"madry_cnn {mx['train_scan_s']:.1f} vs {ma['train_scan_s']:.1f} s "
        f"({msp['train_scan_s']:.0f}×), {mx['pgd_l2_scan_s']:.1f} vs {ma['pgd_l2_scan_s']:.1f} s "
        f"({msp['pgd_l2_scan_s']:.1f}×), {mx['train_python_loop_s']:.1f} vs "
        f"{ma['train_python_loop_s']:.1f} s ({msp['train_python_loop_s']:.2f}×), "
        f"{mx['pgd_linf_unrolled_s']:.2f} vs {ma['pgd_linf_unrolled_s']:.2f} s "
        f"({msp['pgd_linf_unrolled_s']:.2f}×)",
    ]


CLAIMS = {
    "apgd_strength": (("2026-12-06-apgd_strength.json",), _strength_text),
    "conv_loops": (("2026-12-07-conv_loops.json",), _conv_loops_text),
    "eval_standard": (
        ("2026-12-06-eval_standard-a.json", "2026-12-06-eval_standard-b.json"),
        _eval_text,
    ),
}


def _holds(name: str, data: list[dict]) -> bool:
    try:
        fragments = CLAIMS[name][1](*data)
    except AssertionError:
        return False
    return all(f in _readme() for f in fragments)


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_readme_benchmark_claim_holds(name):
    data = [_load(f) for f in CLAIMS[name][0]]
    missing = [f for f in CLAIMS[name][1](*data) if f not in _readme()]
    assert not missing, missing


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_readme_benchmark_claim_fails_on_other_numbers(name):
    data = [perturb_numbers(_load(f), lambda v: v * 1.3 + 1) for f in CLAIMS[name][0]]
    assert not _holds(name, data)
