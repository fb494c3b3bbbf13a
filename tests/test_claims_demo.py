"""The README's demo numbers (a step's latency, the default model's accuracy, the
screenshot) are tests: each is recomputed from experiments/results/demo/latency.json, which
benchmarks/demo_latency.py wrote, and a perturbed copy of that file makes the check fail."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "demo"


def _readme() -> str:
    return re.sub(r"\s+", " ", (ROOT / "README.md").read_text())


def _load() -> dict:
    return json.loads((RESULTS / "latency.json").read_text())


def _claims(d: dict) -> list[str]:
    """The README's sentences about the demo, from the JSON (asserting what they claim)."""
    http, model = d["http"], d["model_only"]
    assert d["experiment"] == "demo_latency" and not d["smoke"]
    assert d["git_commit"] and not d["git_commit"].endswith("+dirty")
    assert http["n"] == d["settings"]["requests"] >= 50
    assert http["median_ms"] <= http["p95_ms"] <= http["max_ms"]
    assert http["p95_ms"] < d["target_ms"] == 200.0
    acc = d["model_clean_accuracy"]
    assert acc["method"] == "measured" and acc["n"] == 360
    rob = d["model_robust_accuracy"]
    assert rob["n"] == acc["n"] and rob["eps"][0] == 0 and rob["accuracy"][0] == acc["value"]
    robust = rob["eps"][1:], rob["accuracy"][1:]
    shot = ROOT / d["screenshot"]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size < 200_000
    return [
        f"median {http['median_ms']:.1f} ms, 95th percentile {http['p95_ms']:.1f} ms over "
        f"{http['n']} step requests",
        f"the jitted step alone (no HTTP) a median {model['median_ms']:.1f} ms",
        f"load average {d['load_average_1min_at_start']:.1f}",
        f"{100 * acc['value']:.1f}% clean accuracy on the {acc['n']} digits test images, "
        + ", ".join(f"{100 * a:.1f}% at ε = {e:g}" for e, a in zip(*robust, strict=True))
        + f" under ℓ2 PGD-{rob['attack']['steps']}×{rob['attack']['restarts']}",
        f"]({d['screenshot']})",
        f"after {d['settings']['screenshot_steps']} steps toward {d['settings']['target']}",
    ]


def _holds(d: dict) -> bool:
    try:
        text = _readme()
        return all(claim in text for claim in _claims(d))
    except (AssertionError, KeyError, OSError):
        return False


def test_readme_demo_claims_match_the_results():
    d = _load()
    text = _readme()
    for claim in _claims(d):
        assert claim in text, claim


@pytest.mark.parametrize(
    ("key", "path", "value"),
    [
        ("http", "median_ms", 9999.0),
        ("http", "p95_ms", 250.0),
        ("model_only", "median_ms", 0.01),
        ("model_clean_accuracy", "value", 0.5),
        ("model_robust_accuracy", "accuracy", [0.8305555555555556, 0.7, 0.5, 0.1]),
        ("settings", "target", 3),
        (None, "load_average_1min_at_start", 0.0),
        (None, "git_commit", "abc+dirty"),
        (None, "screenshot", "experiments/results/demo/missing.png"),
    ],
)
def test_a_perturbed_result_breaks_the_claims(key, path, value):
    d = copy.deepcopy(_load())
    assert _holds(d)
    (d[key] if key else d)[path] = value
    assert not _holds(d)
