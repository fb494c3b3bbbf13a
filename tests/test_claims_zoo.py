"""The README's model-zoo section is a test: its table, commits and sizes are recomputed from
the committed zoo index (jaxrobust/zoo/index.json) and the shipped files, and a perturbed
copy of the index makes the check fail."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from jaxrobust import zoo

ROOT = Path(__file__).resolve().parent.parent

TRAINING = {
    "digits-mlp-pgd-at-linf0.1": "PGD-AT, ℓ∞ ε = 0.1 (the main job)",
    "digits-mlp-standard": "standard (`--set objective=standard`)",
}


def _readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Model zoo")
    end = text.index("\n## ", start + 1)
    return re.sub(r"\s+", " ", text[start:end])


def _cell(m: zoo.Measurement) -> str:
    return f"{m.value:.4f} ± {m.se:.4f}"


def _pick(entry: dict, kind: str, eps: float) -> zoo.Measurement:
    (m,) = [
        zoo.Measurement.from_dict(d)
        for d in entry["metrics"]
        if d["kind"] == kind and abs(d["eps"] - eps) < 1e-9
    ]
    return m


def _expected(models: dict) -> list[str]:
    """The claims the README section must contain, from an index's models."""
    claims = []
    for name, entry in sorted(models.items()):
        row = [
            f"`{name}`",
            TRAINING[name],
            _cell(_pick(entry, "clean", 0.0)),
            _cell(_pick(entry, "standard", 0.1)),
            _cell(_pick(entry, "pgd-50x5", 0.1)),
            _cell(_pick(entry, "standard", 0.2)),
        ]
        claims.append("| " + " | ".join(row) + " |")
    n = {zoo.Measurement.from_dict(d).n for e in models.values() for d in e["metrics"]}
    assert len(n) == 1
    claims.append(f"on the {n.pop()} digits test images")
    train_commits = {e["training"]["git_commit"][:7] for e in models.values()}
    eval_commits = {e["evaluated_by"]["git_commit"][:7] for e in models.values()}
    assert len(train_commits) == len(eval_commits) == 1
    claims.append(f"trained by `jaxrobust train` at commit {train_commits.pop()}")
    claims.append(f"evaluated by `python -m jaxrobust.zoo.build` at commit {eval_commits.pop()}")
    return claims


def _entry_megabytes(name: str) -> str:
    entry = zoo.index()[name]
    folder = zoo.INDEX_PATH.parent / entry["path"]
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return f"{size / 1e6:.1f} MB"


def test_readme_zoo_table_matches_the_index():
    section = _readme_section()
    for claim in _expected(zoo.index()):
        assert claim in section, claim
    sizes = {_entry_megabytes(name) for name in zoo.list_models()}
    assert len(sizes) == 1
    assert f"{sizes.pop()} each" in section


def test_readme_pgd_number_is_the_main_jobs():
    """The robust model is the main job's: its PGD-50×5 numbers are the README's headline."""
    m = _pick(zoo.index()["digits-mlp-pgd-at-linf0.1"], "pgd-50x5", 0.1)
    head = re.sub(r"\s+", " ", (ROOT / "README.md").read_text()[:4000])
    assert f"| `pgd_at` (default) | {_pick_clean()} | {m.value:.3f} |" in head


def _pick_clean() -> str:
    return f"{_pick(zoo.index()['digits-mlp-pgd-at-linf0.1'], 'clean', 0.0).value:.3f}"


@pytest.mark.parametrize("field", ["value", "se"])
def test_a_perturbed_index_fails_the_check(field):
    models = copy.deepcopy(zoo.index())
    entry = models["digits-mlp-pgd-at-linf0.1"]
    for d in entry["metrics"]:
        if d["kind"] == "standard" and abs(d["eps"] - 0.1) < 1e-9:
            d[field] += 0.001
    section = _readme_section()
    assert not all(claim in section for claim in _expected(models))
    json.dumps(models)  # still a valid index
