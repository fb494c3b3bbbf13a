"""The README's numbers on robust representations and synthesis (section "Representations
and synthesis with one robust classifier") are tests: each fragment is checked against the
committed full digits runs (experiments/results/{representations,synthesis}/digits.json),
the acceptance flags are recomputed from the numbers, and a perturbed copy of a JSON makes
a check fail."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from claims_helpers import perturb_numbers

ROOT = Path(__file__).resolve().parent.parent
RESULTS = {
    "representations": ROOT / "experiments" / "results" / "representations" / "digits.json",
    "synthesis": ROOT / "experiments" / "results" / "synthesis" / "digits.json",
}


def _readme() -> str:
    return re.sub(r"\s+", " ", (ROOT / "README.md").read_text())


def _load() -> dict:
    return {k: json.loads(p.read_text()) for k, p in RESULTS.items()}


def _pct(e: dict) -> str:
    return f"{100 * e['value']:.1f}%"


def _v(e: dict, digits: int = 2) -> str:
    return f"{e['value']:.{digits}f}"


def _z(e: dict) -> str:
    return f"{-e['value'] / e['se']:.1f}"


def _count(e: dict) -> tuple:
    """A proportion as (percent, successes, n, where it is against 95%, SE in points)."""
    k = round(e["value"] * e["n"])
    where = "exactly" if 100 * k == 95 * e["n"] else ("above" if e["value"] > 0.95 else "below")
    return _pct(e), k, e["n"], where, f"{100 * e['se']:.1f}"


def _yes(flag: bool) -> str:
    return "met" if flag else "not met"


# (README fragment with {} placeholders, the values from the JSONs as printed)
CLAIMS: dict[str, tuple[str, Callable[[dict], tuple]]] = {
    "models": (
        "standard: {} clean, {} under ℓ2 PGD at ε = {}; robust: {} clean, {}",
        lambda r: (
            _pct(r["representations"]["models"]["standard"]["clean_accuracy"]),
            _pct(r["representations"]["models"]["standard"]["robust_accuracy"]),
            r["representations"]["settings"]["eps_train"],
            _pct(r["representations"]["models"]["robust"]["clean_accuracy"]),
            _pct(r["representations"]["models"]["robust"]["robust_accuracy"]),
        ),
    ),
    "generation": (
        "judged as the target: robust {} (n = {}), standard {}; the seeds alone {} "
        "(≥ 95% and above standard: {})",
        lambda r: (
            _pct(r["synthesis"]["generation"]["robust"]["from_other_class_judged_as_target"]),
            r["synthesis"]["generation"]["robust"]["from_other_class_judged_as_target"]["n"],
            _pct(r["synthesis"]["generation"]["standard"]["from_other_class_judged_as_target"]),
            _pct(r["synthesis"]["generation"]["seeds_other_class_judged_as_target"]),
            _yes(
                r["synthesis"]["acceptance"]["generation_other_class_robust_at_least_0.95"]
                and r["synthesis"]["acceptance"]["generation_other_class_robust_above_standard"]
            ),
        ),
    ),
    "inversion": (
        "mean pixel ℓ2 distance to the source: robust {}, standard {} (ratio {}; the noise "
        "starts {}); judged as the source's class: robust {}, standard {} (ratio ≤ 0.8: {}; "
        "≥ 95%: {})",
        lambda r: (
            _v(r["representations"]["inversion"]["robust"]["mean_l2_to_source"]),
            _v(r["representations"]["inversion"]["standard"]["mean_l2_to_source"]),
            f"{r['representations']['inversion']['distance_ratio_robust_over_standard']:.2f}",
            _v(r["representations"]["inversion"]["start_mean_l2_to_source"]),
            _pct(r["representations"]["inversion"]["robust"]["judged_as_source_class"]),
            _pct(r["representations"]["inversion"]["standard"]["judged_as_source_class"]),
            _yes(r["representations"]["acceptance"]["inversion_distance_ratio_at_most_0.8"]),
            _yes(
                r["representations"]["acceptance"][
                    "robust_inversions_judged_as_source_at_least_0.95"
                ]
            ),
        ),
    ),
    "inversion_budget": (
        "{} normalised ℓ2 steps of {} decaying to 0",
        lambda r: tuple(
            f"{r['representations']['settings'][k]:g}" for k in ("invert_steps", "invert_step_size")
        ),
    ),
    "inversion_count": (
        "The robust {} is {} of {}, {} the bar (SE {} points)",
        lambda r: _count(r["representations"]["inversion"]["robust"]["judged_as_source_class"]),
    ),
    "inpainting": (
        "masked-region MSE: robust {}, standard {}, per-pixel training-mean fill {} "
        "(robust lowest: {})",
        lambda r: (
            _v(r["synthesis"]["inpainting"]["robust"]["masked_mse"], 4),
            _v(r["synthesis"]["inpainting"]["standard"]["masked_mse"], 4),
            _v(r["synthesis"]["inpainting"]["mean_fill"], 4),
            _yes(
                r["synthesis"]["acceptance"]["inpainting_robust_below_standard"]
                and r["synthesis"]["acceptance"]["inpainting_robust_below_mean_fill"]
            ),
        ),
    ),
    "judge": (
        "training images ({} test accuracy)",
        lambda r: (_pct(r["synthesis"]["settings"]["judge_test_accuracy"]),),
    ),
    "generation_budget": (
        "{} steps of {} in an ℓ2 ball of {} around the seed",
        lambda r: tuple(
            f"{r['synthesis']['settings'][k]:g}" for k in ("gen_steps", "gen_step_size", "gen_eps")
        ),
    ),
    "inpainting_paired": (
        "difference is {} SE below 0",
        lambda r: (_z(r["synthesis"]["inpainting"]["paired_robust_minus_standard"]),),
    ),
    "wall": (
        "full runs took {} s (representations) and {} s (synthesis)",
        lambda r: (
            f"{r['representations']['wall_time_s']:.0f}",
            f"{r['synthesis']['wall_time_s']:.0f}",
        ),
    ),
}


def _fragment(name: str, r: dict) -> str:
    template, values = CLAIMS[name]
    return template.format(*values(r))


def _acceptance_consistent(r: dict) -> bool:
    """The JSON's acceptance flags follow from its numbers."""
    rep, syn = r["representations"], r["synthesis"]
    inv = rep["inversion"]
    ratio = (
        inv["robust"]["mean_l2_to_source"]["value"] / inv["standard"]["mean_l2_to_source"]["value"]
    )
    g = syn["generation"]
    gr = g["robust"]["from_other_class_judged_as_target"]["value"]
    gs = g["standard"]["from_other_class_judged_as_target"]["value"]
    ip = syn["inpainting"]
    mr = ip["robust"]["masked_mse"]["value"]
    want = {
        "representations": {
            "inversion_distance_ratio_at_most_0.8": ratio <= 0.8,
            "robust_inversions_judged_as_source_at_least_0.95": inv["robust"][
                "judged_as_source_class"
            ]["value"]
            >= 0.95,
        },
        "synthesis": {
            "generation_other_class_robust_at_least_0.95": gr >= 0.95,
            "generation_other_class_robust_above_standard": gr > gs,
            "inpainting_robust_below_standard": mr < ip["standard"]["masked_mse"]["value"],
            "inpainting_robust_below_mean_fill": mr < ip["mean_fill"]["value"],
        },
    }
    return (
        abs(ratio - inv["distance_ratio_robust_over_standard"]) < 1e-9
        and rep["acceptance"] == want["representations"]
        and syn["acceptance"] == want["synthesis"]
    )


def test_results_are_full_runs_of_committed_code():
    for name, r in _load().items():
        assert r["smoke"] is False, name
        assert r["settings"]["dataset"] == "digits"
        assert r["git_commit"] and not r["git_commit"].endswith("+dirty"), name
        # Full experiments under 15 minutes each (measured on the 2-core CPU).
        assert r["wall_time_s"] < 15 * 60, name


def test_acceptance_flags_follow_from_the_numbers():
    assert _acceptance_consistent(_load())


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_readme_fragment_matches_the_results(name):
    assert _fragment(name, _load()) in _readme(), _fragment(name, _load())


def test_a_perturbed_result_breaks_the_claims():
    r = _load()
    readme = _readme()
    bad = copy.deepcopy(r)
    bad["synthesis"]["generation"]["robust"]["from_other_class_judged_as_target"]["value"] -= 0.05
    assert _fragment("generation", bad) not in readme or not _acceptance_consistent(bad)
    bad = copy.deepcopy(r)
    bad["representations"]["inversion"]["distance_ratio_robust_over_standard"] += 0.1
    assert not _acceptance_consistent(bad)
    bad = copy.deepcopy(r)
    bad["synthesis"]["inpainting"]["mean_fill"]["value"] += 0.01
    assert _fragment("inpainting", bad) not in readme


def test_one_fewer_judged_inversion_breaks_the_count():
    r = _load()
    bad = copy.deepcopy(r)
    e = bad["representations"]["inversion"]["robust"]["judged_as_source_class"]
    e["value"] -= 1 / e["n"]
    assert _fragment("inversion_count", bad) not in _readme()
    # The flag says met; the numbers now say not met.
    assert not _acceptance_consistent(bad)


# --- shapes with the CNNs: the README paragraph "With the CNNs on `shapes` ..." -----------

SHAPES_CNN = {k: p.with_name("shapes_bn_cnn.json") for k, p in RESULTS.items()}


def _pse(e: dict) -> str:
    return f"{100 * e['value']:.1f}% ± {100 * e['se']:.1f}"


def shapes_cnn_fragments(r: dict) -> list[str]:
    """The CNN paragraph's numbers, formatted from the two JSONs as the README prints them."""
    rep, syn = r["representations"], r["synthesis"]
    m, inv = rep["models"], rep["inversion"]
    gen, inp = syn["generation"], syn["inpainting"]
    g_s, g_r = (gen[k]["from_other_class_judged_as_target"] for k in ("standard", "robust"))
    return [
        f"standard {_pse(m['standard']['clean_accuracy'])} clean and "
        f"{_pse(m['standard']['robust_accuracy'])} under ℓ2 PGD-{rep['settings']['eval_steps']} "
        f"at ε = {rep['settings']['eps_train']}, robust {_pse(m['robust']['clean_accuracy'])} and "
        f"{_pse(m['robust']['robust_accuracy'])} (n = {m['robust']['clean_accuracy']['n']})",
        f"cannot tell the classes ({_pct(rep['settings']['judge_test_accuracy'])})",
        f"judged as the source's class {_pct(inv['standard']['judged_as_source_class'])} for both",
        f"judged as the target standard {_pct(g_s)}, robust {_pct(g_r)} (n = {g_r['n']}; "
        "the robust model itself "
        f"labels {_pct(gen['robust']['from_other_class_model_predicts_target'])} of them as the "
        f"target, the standard {_pct(gen['standard']['from_other_class_model_predicts_target'])})",
        f"standard {_v(inp['standard']['masked_mse'], 4)}, robust "
        f"{_v(inp['robust']['masked_mse'], 4)}, the per-pixel training-mean fill "
        f"{_v(inp['mean_fill'], 4)} (n = {inp['mean_fill']['n']})",
        f"(standard {_v(inv['standard']['mean_l2_to_source'])}, robust "
        f"{_v(inv['robust']['mean_l2_to_source'])}, starts {_v(inv['start_mean_l2_to_source'])})",
        f"The runs took {rep['wall_time_s'] / 60:.1f} minutes (representations) and "
        f"{syn['wall_time_s'] / 60:.1f} minutes (synthesis",
    ]


def test_shapes_cnn_runs_and_readme_paragraph():
    r = {k: json.loads(p.read_text()) for k, p in SHAPES_CNN.items()}
    for run in r.values():
        s = run["settings"]
        assert run["smoke"] is False and s["dataset"] == "shapes" and s["architecture"] == "bn_cnn"
        assert s["model"]["kwargs"]["channels"] == [8, 16, 32] and s["eps_train"] == 1.0
        assert run["git_commit"] and not run["git_commit"].endswith("+dirty")
        assert run["models"]["standard"]["reused_finished_run"] is False
    # What the paragraph says: the CNNs learn shapes, the judge is at chance, no bar is met.
    rep, syn = r["representations"], r["synthesis"]
    assert rep["models"]["standard"]["clean_accuracy"]["value"] > 0.5
    assert rep["settings"]["judge_test_accuracy"]["value"] < 0.15
    assert not rep["acceptance"]["robust_inversions_judged_as_source_at_least_0.95"]
    assert not syn["acceptance"]["generation_other_class_robust_at_least_0.95"]
    assert not syn["acceptance"]["inpainting_robust_below_mean_fill"]
    inv = rep["inversion"]
    assert inv["standard"]["judged_as_source_class"] == inv["robust"]["judged_as_source_class"]
    assert min(rep["wall_time_s"], syn["wall_time_s"]) > 15 * 60
    text = _readme()
    assert [f for f in shapes_cnn_fragments(r) if f not in text] == []
    assert all(f not in text for f in shapes_cnn_fragments(perturb_numbers(r)))
