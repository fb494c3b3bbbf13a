"""The README's numbers on model extraction (section "Model extraction and query-only
attacks") are tests: each fragment is checked against the committed results
(experiments/results/extraction/digits.json, written by experiments/extraction.py), with the
property the sentence states (the acceptance thresholds of issue 17 among them), and a
perturbed copy of the JSON makes the check fail."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from claims_helpers import perturb_numbers

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "extraction" / "digits.json"


def _readme() -> str:
    return re.sub(r"\s+", " ", (ROOT / "README.md").read_text())


def _pse(e: dict) -> str:
    """A measured rate as the README prints it: '98.3% ± 0.7'."""
    return f"{100 * e['value']:.1f}% ± {100 * e['se']:.1f}"


def _curve(r: dict, output: str) -> str:
    return " / ".join(
        f"{100 * p['agreement']['value']:.1f}%" for p in r["extraction"]["curves"]["pool"][output]
    )


def _budgets(r: dict) -> str:
    return " / ".join(str(p["budget"]) for p in r["extraction"]["curves"]["pool"]["probs"])


def _e(r: dict) -> dict:
    return r["extraction"]


def _sq(r: dict) -> float:
    return r["extraction"]["blackbox"]["square_per_example_budget"]["value"]


def _point(r: dict, curve: str, output: str, budget: int) -> dict:
    return next(p for p in _e(r)["curves"][curve][output] if p["budget"] == budget)["agreement"]


def _not_above(a: dict, b: dict, k: float = 2.0) -> bool:
    """a's rate does not exceed b's by more than k standard errors of the difference."""
    return a["value"] - b["value"] <= k * (a["se"] ** 2 + b["se"] ** 2) ** 0.5


def _jacobian(r: dict) -> tuple:
    seed, top = r["settings"]["seed_size"], _e(r)["budget"]
    return tuple(
        (_point(r, "jacobian_only", o, top), _point(r, "pool", o, seed))
        for o in ("probs", "labels")
    )


CLAIMS: dict[str, tuple[str, Callable[[dict], tuple], Callable[[dict], bool]]] = {
    "setup": (
        "The victim, an MLP trained on the first {} digits training images, is {} accurate on "
        "the {} test images; the attacker's query pool is the other {} training images (none "
        "equal to a test image). The full run took {} minutes on the shared 2-core CPU",
        lambda r: (
            r["settings"]["victim_train"],
            _pse(r["victim"]["clean_accuracy"]),
            r["settings"]["test_size"],
            r["settings"]["pool_size"],
            f"{r['wall_time_s'] / 60:.1f}",
        ),
        lambda r: (
            r["wall_time_s"] < 20 * 60
            and r["smoke"] is False
            and not str(r["git_commit"]).endswith("+dirty")
            and r["settings"]["pool_dropped_as_test_duplicates"] == 0
            and r["settings"]["victim_train"] + r["settings"]["pool_size"] == 1437
        ),
    ),
    "agreement": (
        "With {} queries ({} pool images, the rest synthesised by Jacobian augmentation) the "
        "substitute agrees with the victim on {} of the test images from probabilities (mean "
        "over {} extraction seeds {}) and on {} from labels only (mean {})",
        lambda r: (
            _e(r)["queries"],
            _e(r)["curves"]["pool"]["probs"][-1]["pool_queries"],
            _pse(_e(r)["agreement_probs"]),
            _e(r)["agreement_probs_over_seeds"]["n"],
            f"{100 * _e(r)['agreement_probs_over_seeds']['value']:.1f}%",
            _pse(_e(r)["agreement_labels"]),
            f"{100 * _e(r)['agreement_labels_over_seeds']['value']:.1f}%",
        ),
        lambda r: (
            _e(r)["queries"] <= 1000
            and _e(r)["budget"] <= 1000
            and min(_e(r)["agreement_probs_over_seeds"]["per_seed"]) >= 0.95
            and min(_e(r)["agreement_labels_over_seeds"]["per_seed"]) >= 0.93
            and _e(r)["agreement_probs"]["value"] >= 0.95
            and _e(r)["agreement_labels"]["value"] >= 0.93
        ),
    ),
    "curve": (
        "At {} queries: {} from probabilities, {} from labels",
        lambda r: (_budgets(r), _curve(r, "probs"), _curve(r, "labels")),
        lambda r: all(
            p["queries"] <= p["budget"]
            for c in _e(r)["curves"].values()
            for pts in c.values()
            for p in pts
        ),
    ),
    "jacobian_only": (
        "Starting instead from {} pool images and synthesising the rest by Jacobian augmentation "
        "gives {} at {} queries from probabilities and {} from labels, no more than those {} pool "
        "images alone ({} / {})",
        lambda r: (
            r["settings"]["seed_size"],
            _pse(_jacobian(r)[0][0]),
            _e(r)["budget"],
            _pse(_jacobian(r)[1][0]),
            r["settings"]["seed_size"],
            _pse(_jacobian(r)[0][1]),
            _pse(_jacobian(r)[1][1]),
        ),
        lambda r: all(_not_above(a, b) for a, b in _jacobian(r)),
    ),
    "transfer": (
        "ℓ2 PGD-{} at ε = {} on the probability substitute, without a single victim query, "
        "fools the victim on {} of the {} test images it classifies correctly; random noise of "
        "the same norm on {}",
        lambda r: (
            r["settings"]["attack_steps"],
            f"{_e(r)['eps']:g}",
            _pse(_e(r)["transfer_success"]),
            _e(r)["transfer_success"]["n"],
            _pse(_e(r)["noise_success"]),
        ),
        lambda r: (
            _e(r)["norm"] == "l2"
            and _e(r)["transfer_success"]["value"] >= 5 * _e(r)["noise_success"]["value"]
            and _e(r)["transfer_success"]["n"] == _e(r)["noise_success"]["n"]
        ),
    ),
    "blackbox": (
        "Query-based attacks on the victim reach {} (Square) and {} (Bandits-TD) with {} queries "
        "per image ({} in all), and {} with Square at the same {} queries in total ({} per image): "
        "for the queries of one extraction, the transfer attack comes within {} points of Square "
        "given that budget for every image",
        lambda r: (
            _pse(_e(r)["blackbox"]["square_per_example_budget"]),
            _pse(_e(r)["blackbox"]["bandits_per_example_budget"]),
            _e(r)["budget"],
            f"{_e(r)['budget'] * _e(r)['blackbox']['square_per_example_budget']['n']:,}",
            _pse(_e(r)["blackbox"]["square_equal_total_budget"]),
            f"{_e(r)['budget']:,}",
            _e(r)["blackbox"]["square_equal_total_budget"]["queries_per_example"],
            f"{100 * (_sq(r) - _e(r)['transfer_success']['value']):.1f}",
        ),
        lambda r: (
            _sq(r) - _e(r)["transfer_success"]["value"] < 0.05
            and _e(r)["blackbox"]["square_equal_total_budget"]["queries_total"] <= _e(r)["budget"]
            and _e(r)["transfer_success"]["value"]
            > _e(r)["blackbox"]["square_equal_total_budget"]["value"]
        ),
    ),
}


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


def test_results_have_the_issue_keys():
    e = _results()["extraction"]
    for k in ("agreement_probs", "agreement_labels", "transfer_success", "noise_success"):
        assert e[k]["method"] == "measured" and e[k]["n"] > 0 and e[k]["se"] is not None
    assert e["budgets"] == [100, 250, 500, 1000] and e["eps"] == 1.0 and e["norm"] == "l2"


# --- shapes: the README paragraph "On `shapes` ..." -------------------------------------------

SHAPES = ROOT / "experiments" / "results" / "extraction" / "shapes.json"


def shapes_fragments(r: dict) -> list[str]:
    """The shapes paragraph's numbers, formatted from the JSON as the README prints them."""
    s, e = r["settings"], r["extraction"]
    return [
        f"trained on the first {s['victim_train']} of the {s['victim_train'] + s['pool_size']} "
        f"training images, the other {s['pool_size']} as the pool, {s['test_size']} test images",
        f"the run took {r['wall_time_s'] / 60:.1f} minutes",
        f"the victim is {_pse(r['victim']['clean_accuracy'])} accurate",
        f"Agreement at {e['queries']} queries is {_pse(e['agreement_probs'])} from "
        f"probabilities and {_pse(e['agreement_labels'])} from labels",
        f"fools the victim on {_pse(e['transfer_success'])} of the {e['transfer_success']['n']} "
        f"test images it classifies correctly, random noise of the same norm on "
        f"{_pse(e['noise_success'])}",
    ]


def test_shapes_paragraph_quotes_the_poisoning_clean_model():
    p = json.loads((SHAPES.parent.parent / "poisoning" / "shapes.json").read_text())
    clean = p["backdoor"]["clean_model_accuracy"]["value"]
    assert f"the poisoning experiment's clean MLP: {100 * clean:.1f}%)" in _readme()


def test_shapes_run_and_readme_paragraph():
    r = json.loads(SHAPES.read_text())
    e = r["extraction"]
    assert r["smoke"] is False and r["settings"]["dataset"] == "shapes"
    assert r["git_commit"] and not r["git_commit"].endswith("+dirty")
    assert r["settings"]["pool_dropped_as_test_duplicates"] == 0
    # what the paragraph says of them: a victim near chance, agreement far below the bars,
    # transfer >= 5x noise
    assert r["victim"]["clean_accuracy"]["value"] < 0.15
    assert e["agreement_probs"]["value"] < 0.95 and e["agreement_labels"]["value"] < 0.93
    assert e["transfer_success"]["value"] >= 5 * e["noise_success"]["value"]
    text = _readme()
    assert [f for f in shapes_fragments(r) if f not in text] == []
    assert all(f not in text for f in shapes_fragments(perturb_numbers(r)))


# --- shapes with the CNN: the README paragraph "With a CNN victim on `shapes` ..." --------

SHAPES_CNN = SHAPES.with_name("shapes_bn_cnn.json")


def _seeds(e: dict) -> str:
    return f"{100 * e['value']:.1f}% ± {100 * e['se']:.1f}"


def shapes_cnn_fragments(r: dict) -> list[str]:
    """The CNN paragraph's numbers, formatted from the JSON as the README prints them."""
    s, e, sec = r["settings"], r["extraction"], r["seconds"]
    curve = lambda o: " / ".join(  # noqa: E731
        f"{100 * p['agreement']['value']:.1f}%" for p in e["curves"]["pool"][o]
    )
    jac = [e["curves"]["jacobian_only"][o][0]["agreement"]["value"] for o in ("probs", "labels")]
    bb = e["blackbox"]
    return [
        f"trained on {s['victim_train']} training images, {s['victim_steps']} steps of batch "
        f"{s['victim_batch']}; the pool the other {s['pool_size']}; {s['test_size']} test images",
        f"AdamW {s['substitute_lr']} for {s['substitute_steps']} steps of batch "
        f"{s['substitute_batch']} drawn from its queries",
        f"the victim is {_pse(r['victim']['clean_accuracy'])} accurate",
        f"agreement at {e['queries']} queries is {_pse(e['agreement_probs'])} from probabilities "
        f"(mean over {e['agreement_probs_over_seeds']['n']} extraction seeds "
        f"{_seeds(e['agreement_probs_over_seeds'])}) and {_pse(e['agreement_labels'])} from "
        f"labels (mean {_seeds(e['agreement_labels_over_seeds'])})",
        f"At {' / '.join(str(b) for b in e['budgets'])} queries (one seed): {curve('probs')} from "
        f"probabilities, {curve('labels')} from labels",
        f"{s['seed_size']} pool images with Jacobian augmentation up to {e['budget']} queries give "
        f"{100 * jac[0]:.1f}% / {100 * jac[1]:.1f}%",
        f"fools the victim on {_pse(e['transfer_success'])} of the {e['transfer_success']['n']} "
        f"test images it classifies correctly, random noise of the same norm on "
        f"{_pse(e['noise_success'])}: {e['transfer_over_noise']:.1f} times as often",
        f"On the first {bb['square_per_example_budget']['n']} of those images, Square reaches "
        f"{_pse(bb['square_per_example_budget'])} and Bandits-TD "
        f"{_pse(bb['bandits_per_example_budget'])} with {e['budget']} queries per image, Square "
        f"{_pse(bb['square_equal_total_budget'])} with the same {e['budget']} queries in total "
        f"({bb['square_equal_total_budget']['queries_per_example']} per image)",
        f"The run took {r['wall_time_s'] / 60:.1f} minutes",
        f"{sec['blackbox'] / 60:.1f} for the query-based attacks, {sec['transfer'] / 60:.1f} for "
        f"the transfer attacks, "
        f"{(sec['curve_pool'] + sec['curve_jacobian_only']) / 60:.1f} for the agreement curves",
    ]


def test_shapes_cnn_run_and_readme_paragraph():
    r = json.loads(SHAPES_CNN.read_text())
    e, s = r["extraction"], r["settings"]
    assert r["smoke"] is False and s["dataset"] == "shapes" and s["test_size"] == 1000
    assert s["victim"].startswith("bn_cnn(channels=(8, 16, 32))")
    assert s["substitute"].startswith("bn_cnn(channels=(8, 16, 32))")
    assert r["git_commit"] and not r["git_commit"].endswith("+dirty")
    assert s["pool_dropped_as_test_duplicates"] == 0
    # What the paragraph says of them: the bars missed (agreement, transfer 5x noise), the
    # curve rising with the budget, the run within the 20 minutes.
    assert e["agreement_probs"]["value"] < 0.95 and e["agreement_labels"]["value"] < 0.93
    assert 1 < e["transfer_over_noise"] < 5
    for o in ("probs", "labels"):
        v = [p["agreement"]["value"] for p in e["curves"]["pool"][o]]
        assert v == sorted(v)
        assert all(p["queries"] <= p["budget"] for p in e["curves"]["pool"][o])
    assert r["wall_time_s"] < 20 * 60
    assert e["blackbox"]["square_per_example_budget"]["n"] == s["blackbox_points"] == 300
    text = _readme()
    assert [f for f in shapes_cnn_fragments(r) if f not in text] == []
    assert all(f not in text for f in shapes_cnn_fragments(perturb_numbers(r)))
