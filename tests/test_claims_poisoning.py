"""The README's numbers on data poisoning (section "Data poisoning: backdoors, spectral
signatures, feature collision") are tests: the acceptance bars of the issue and every
number the paragraph prints are checked against the committed results
(experiments/results/poisoning/digits.json, written by experiments/poisoning.py), and a
perturbed copy of the JSON makes the checks fail."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from claims_helpers import perturb_numbers

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "poisoning" / "digits.json"
RATE2 = ROOT / "experiments" / "results" / "poisoning" / "digits_rate_0.02.json"


def _r() -> dict:
    return json.loads(RESULTS.read_text())


def _r2() -> dict:
    return json.loads(RATE2.read_text())


def _readme() -> str:
    return re.sub(r"\s+", " ", (ROOT / "README.md").read_text())


def _p(e: dict) -> str:
    return f"{100 * e['value']:.1f}%"


def _pse(e: dict) -> str:
    return f"{100 * e['value']:.1f}% ± {100 * e['se']:.1f}"


def _above(a: dict, b: dict, k: float = 3.0) -> bool:
    """a exceeds b by more than k standard errors of the difference."""
    return a["value"] - b["value"] > k * (a["se"] ** 2 + b["se"] ** 2) ** 0.5


def acceptance(r: dict) -> list[str]:
    """The issue's bars on digits; returns the ones that fail."""
    b, s = r["backdoor"], r["spectral"]
    lc = b["label_consistent"]
    clean = b["clean_model_accuracy"]["value"]
    bars = {
        "full size": r["smoke"] is False and r["settings"]["dataset"] == "digits",
        "committed code": bool(r["git_commit"]) and not r["git_commit"].endswith("+dirty"),
        "poison rate <= 5%": b["rate"] <= 0.05 and b["count"] == round(b["rate"] * b["train_size"]),
        "attack success >= 95%": b["attack_success"]["value"] >= 0.95,
        "clean accuracy within 2 pp": clean - b["clean_accuracy"]["value"] <= 0.02,
        "clean model ignores the trigger": b["clean_model_attack_success"]["value"] < 0.05,
        "LC (robust source) above trigger only": _above(
            lc["robust_source"]["attack_success"], lc["trigger_only"]["attack_success"]
        ),
        "LC (standard source) above trigger only": _above(
            lc["standard_source"]["attack_success"], lc["trigger_only"]["attack_success"]
        ),
        "spectral recall >= 95%": s["recall"]["value"] >= 0.95,
        "success after removal < 5%": s["attack_success_after"]["value"] < 0.05,
        "clean accuracy after within 5 pp": clean - s["clean_accuracy_after"]["value"] <= 0.05,
        "full run under 20 minutes": r["wall_time_s"] < 20 * 60,
        "datasets read back": r["datasets"]["train_split_roundtrip"] is True,
    }
    return [k for k, ok in bars.items() if not ok]


def fragments(r: dict) -> list[str]:
    """The README's numbers, formatted from the JSON as the paragraph prints them."""
    b, s, t = r["backdoor"], r["spectral"], r["targeted"]
    lc = b["label_consistent"]
    k = str(max(int(v) for v in t["by_poisons"]))
    return [
        f"{b['count']} of {b['train_size']} training images",
        f"attack success {_pse(b['attack_success'])}",
        f"clean accuracy {_pse(b['clean_accuracy'])} against {_pse(b['clean_model_accuracy'])}",
        f"{lc['count']} target-class images",
        f"trigger only: {_pse(lc['trigger_only']['attack_success'])}",
        f"standard source: {_pse(lc['standard_source']['attack_success'])}",
        f"robust source: {_pse(lc['robust_source']['attack_success'])}",
        f"recall {_p(s['recall'])}",
        f"precision {_p(s['precision'])}",
        f"attack success {_pse(s['attack_success_after'])} and clean accuracy "
        f"{_pse(s['clean_accuracy_after'])}",
        f"{len(s['rounds'])} rounds",
        "(per seed: attack success "
        + ", ".join(f"{100 * v:.1f}%" for v in s["attack_success_after"]["per_seed"]),
        f"{_p(t['by_poisons'][k]['success'])} of {t['targets']} targets",
        f"control {_p(t['by_poisons'][k]['control_success'])}",
        f"{_p(t['by_poisons']['1']['success'])} with one poison",
        f"{r['wall_time_s'] / 60:.1f} minutes",
    ]


def rate2_fragments(q: dict) -> list[str]:
    """The README's sentence on the 2% run: the backdoor works, the removal leaves poisons
    and the backdoor survives it."""
    b, s = q["backdoor"], q["spectral"]
    left = sum(b["count"] - v for v in s["rounds"][0]["removed_poison"])
    return [
        f"({b['count']} poisons, `digits_rate_0.02.json`",
        f"(attack success {_pse(b['attack_success'])})",
        f"keeps {left} of {q['settings']['seeds'] * b['count']} poisons",
        f"(recall {_p(s['recall'])})",
        f"attack success after retraining {_pse(s['attack_success_after'])}",
        f"(up to {100 * max(s['attack_success_after']['per_seed']):.1f}% on one seed)",
    ]


def test_the_two_percent_run_is_printed_and_says_what_the_readme_says():
    q = _r2()
    assert q["smoke"] is False and q["settings"]["dirty_rate"] == 0.02
    assert not q["git_commit"].endswith("+dirty")
    assert q["backdoor"]["attack_success"]["value"] >= 0.95  # the backdoor works
    assert q["spectral"]["recall"]["value"] < 1.0  # poisons left
    assert q["spectral"]["attack_success_after"]["value"] > 0.05  # and they suffice
    text = _readme()
    assert [f for f in rate2_fragments(q) if f not in text] == []


def test_acceptance_bars_hold_on_the_committed_results():
    assert acceptance(_r()) == []


def test_readme_prints_the_committed_numbers():
    text = _readme()
    missing = [f for f in fragments(_r()) if f not in text]
    assert missing == []


@pytest.mark.parametrize(
    "path, value",
    [
        (("backdoor", "attack_success", "value"), 0.9),
        (("backdoor", "clean_accuracy", "value"), 0.5),
        (("spectral", "recall", "value"), 0.8),
        (("spectral", "attack_success_after", "value"), 0.2),
        (("backdoor", "label_consistent", "robust_source", "attack_success", "value"), 0.01),
    ],
)
def test_a_perturbed_result_fails(path, value):
    r = copy.deepcopy(_r())
    before = fragments(r)
    node = r
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    assert acceptance(r) != [] or fragments(r) != before
    assert acceptance(r) != []


# --- shapes: the README paragraph "On `shapes` ..." -------------------------------------------

SHAPES = ROOT / "experiments" / "results" / "poisoning" / "shapes.json"


def shapes_fragments(r: dict) -> list[str]:
    """The shapes paragraph's numbers, formatted from the JSON as the README prints them."""
    b, s, t = r["backdoor"], r["spectral"], r["targeted"]
    lc, rounds = b["label_consistent"], s["rounds"]
    left = [b["count"] - v for v in rounds[0]["removed_poison"]]
    seconds = r["seconds"]
    return [
        f"all {b['train_size']} training and {r['settings']['test_size']} test images",
        f"Dirty label ({b['count']} of {b['train_size']} training images)",
        f"attack success {_pse(b['attack_success'])} with clean accuracy "
        f"{_pse(b['clean_accuracy'])} against {_pse(b['clean_model_accuracy'])}",
        f"Label-consistent ({lc['count']} target-class images): trigger only "
        f"{_pse(lc['trigger_only']['attack_success'])}, standard source "
        f"{_pse(lc['standard_source']['attack_success'])}, robust source "
        f"{_pse(lc['robust_source']['attack_success'])}",
        f"round 1 recall {_p(rounds[0]['recall'])}, precision {_p(rounds[0]['precision'])}",
        f"attack success is {_pse(s['attack_success_after'])} (per seed "
        + ", ".join(f"{100 * v:.1f}%" for v in s["attack_success_after"]["per_seed"]),
        f"one seed kept {max(left)} poisons) with clean accuracy {_pse(s['clean_accuracy_after'])}",
        f"sends {_pse(b['clean_model_attack_success'])} of triggered images",
        f"({_p(t['success'])} of {t['targets']} targets with "
        f"{max(int(k) for k in t['by_poisons'])} poisons, control "
        f"{_p(t['by_poisons'][str(max(int(k) for k in t['by_poisons']))]['control_success'])})",
        f"The run took {r['wall_time_s'] / 60:.1f} minutes",
        f"took {(seconds['feature_collision'] + seconds['datasets_and_loop']) / 60:.0f} of them",
    ]


def shapes_verdicts(r: dict) -> dict[str, bool]:
    """The bars the paragraph says are met (True) and not met (False) on shapes."""
    b, s = r["backdoor"], r["spectral"]
    lc = b["label_consistent"]
    clean = b["clean_model_accuracy"]["value"]
    return {
        "dirty label >= 95%, clean within 2 pp": b["attack_success"]["value"] >= 0.95
        and clean - b["clean_accuracy"]["value"] <= 0.02,
        "recall >= 95%": s["recall"]["value"] >= 0.95,
        "LC above trigger only": _above(
            lc["robust_source"]["attack_success"], lc["trigger_only"]["attack_success"]
        ),
        "success after removal < 5%": s["attack_success_after"]["value"] < 0.05,
        "trigger only saturates": lc["trigger_only"]["attack_success"]["value"] >= 0.99,
        "under 20 minutes": r["wall_time_s"] < 20 * 60,
    }


def test_shapes_run_is_full_size_from_committed_code_and_the_verdicts_hold():
    r = json.loads(SHAPES.read_text())
    assert r["smoke"] is False and r["settings"]["dataset"] == "shapes"
    assert r["settings"]["train_size"] == 20000 and r["settings"]["dataset_kwargs"] == {}
    assert r["git_commit"] and not r["git_commit"].endswith("+dirty")
    assert shapes_verdicts(r) == {
        "dirty label >= 95%, clean within 2 pp": True,
        "recall >= 95%": True,
        "LC above trigger only": False,
        "success after removal < 5%": False,
        "trigger only saturates": True,
        "under 20 minutes": False,
    }


def test_readme_prints_the_shapes_numbers_and_they_move_with_the_json():
    r = json.loads(SHAPES.read_text())
    text = _readme()
    assert [f for f in shapes_fragments(r) if f not in text] == []
    moved = shapes_fragments(perturb_numbers(r))
    assert all(f not in text for f in moved)


# --- shapes with the CNN: the README paragraph "With a CNN on `shapes` ..." ------------------

SHAPES_CNN = ROOT / "experiments" / "results" / "poisoning" / "shapes_bn_cnn.json"


def shapes_cnn_fragments(r: dict) -> list[str]:
    """The CNN paragraph's numbers, formatted from the JSON as the README prints them."""
    b, s, t = r["backdoor"], r["spectral"], r["targeted"]
    lc, rounds = b["label_consistent"], s["rounds"]
    k = max(int(k) for k in t["by_poisons"])
    layer, by_rep = s["representation"], s["round1_recall_by_representation"]
    after_seeds = " / ".join(
        f"{100 * v:.1f}%" for v in rounds[0]["attack_success_after"]["per_seed"]
    )
    return [
        f"1100 steps of batch 32 on {b['train_size']} training images, "
        f"{r['settings']['test_size']} test images, {r['settings']['seeds']} seeds",
        f"the robust source PGD-{r['settings']['robust_pgd_steps']}",
        f"the clean model is {_pse(b['clean_model_accuracy'])} accurate and sends "
        f"{_pse(b['clean_model_attack_success'])} of triggered images",
        f"Dirty label ({b['count']} of {b['train_size']} training images): attack success "
        f"{_pse(b['attack_success'])} with clean accuracy {_pse(b['clean_accuracy'])} against "
        f"{_pse(b['clean_model_accuracy'])}",
        f"Label-consistent ({lc['count']} target-class images): trigger only "
        f"{_pse(lc['trigger_only']['attack_success'])}, standard source "
        f"{_pse(lc['standard_source']['attack_success'])}, robust source "
        f"{_pse(lc['robust_source']['attack_success'])}",
        f"Spectral signatures on the last conv block's map ({by_rep[layer]['dim']} values per "
        f"image, before the global average pooling): round 1 recall {_p(rounds[0]['recall'])}, "
        f"precision {_p(rounds[0]['precision'])}",
        f"after retraining attack success is {_pse(rounds[0]['attack_success_after'])} (per "
        f"seed {after_seeds}) with clean accuracy {_pse(rounds[0]['clean_accuracy_after'])}",
        f"5 pp of the clean model ({s['clean_drop_pp_after']:.1f} pp below it)",
        f"is only {_pse(lc['source_accuracy']['robust'])} accurate on clean test images (the "
        f"standard source {_pse(lc['source_accuracy']['standard'])})",
        f"The same first round finds {_pse(by_rep['features'])} of the poison on the "
        f"{by_rep['features']['dim']} pooled features and {_pse(by_rep['pixels'])} on the pixels",
        f"{_p(t['success'])} of {t['targets']} targets with {k} poisons (control "
        f"{_p(t['by_poisons'][str(k)]['control_success'])})",
        f"check reads {_pse(r['loop_check']['attack_success'])} attack success",
        f"The run took {r['wall_time_s'] / 60:.1f} minutes ({r['cpu_time_s'] / 60:.0f} "
        "CPU-minutes)",
    ]


def test_shapes_cnn_run_is_full_size_from_committed_code_and_the_verdicts_hold():
    r = json.loads(SHAPES_CNN.read_text())
    st = r["settings"]
    assert r["smoke"] is False and st["dataset"] == "shapes" and st["architecture"] == "bn_cnn"
    assert st["dataset_kwargs"] == {"num_train": 5000, "num_test": 1000}
    assert st["steps"] == 1100 and st["batch"] == 32
    assert st["model_kwargs"]["channels"] == [8, 16, 32]
    assert r["git_commit"] and not r["git_commit"].endswith("+dirty")
    verdicts = shapes_verdicts(r)
    verdicts["clean model ignores the trigger"] = (
        r["backdoor"]["clean_model_attack_success"]["value"] < 0.05
    )
    verdicts["clean accuracy after removal within 5 pp"] = r["spectral"]["clean_drop_pp_after"] < 5
    verdicts["robust LC source weaker than the standard one"] = (
        r["backdoor"]["label_consistent"]["source_accuracy"]["robust"]["value"]
        < r["backdoor"]["label_consistent"]["source_accuracy"]["standard"]["value"]
    )
    assert st["spectral_layer"] == "block3" and st["rounds"] == 1
    assert verdicts == {
        "dirty label >= 95%, clean within 2 pp": True,
        "recall >= 95%": True,
        "LC above trigger only": False,
        "success after removal < 5%": True,
        "clean accuracy after removal within 5 pp": True,
        "trigger only saturates": False,
        "under 20 minutes": False,
        "clean model ignores the trigger": True,
        "robust LC source weaker than the standard one": True,
    }


def test_readme_prints_the_shapes_cnn_numbers_and_they_move_with_the_json():
    r = json.loads(SHAPES_CNN.read_text())
    text = _readme()
    assert [f for f in shapes_cnn_fragments(r) if f not in text] == []
    moved = shapes_cnn_fragments(perturb_numbers(r))
    assert all(f not in text for f in moved)
