"""`jaxrobust experiment poisoning --smoke` end to end: the JSON's keys and provenance, the
PNGs, and the properties that hold even at smoke size."""

from __future__ import annotations

import json

import pytest

from jaxrobust.cli import main


@pytest.mark.slow
def test_poisoning_smoke(tmp_path):
    assert main(["experiment", "poisoning", "--smoke", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "digits_smoke.json").read_text())
    assert data["smoke"] is True and data["wall_time_s"] > 0 and data["git_commit"]
    for path in ("digits_smoke.png", "digits_smoke_scores.png"):
        assert (tmp_path / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    b, s = data["backdoor"], data["spectral"]
    for e in (b["attack_success"], b["clean_accuracy"], s["recall"], s["attack_success_after"],
              b["clean_model_accuracy"], s["precision"]):  # fmt: skip
        assert e["method"] == "measured" and e["n"] > 0 and 0.0 <= e["value"] <= 1.0
    assert b["count"] == round(b["rate"] * b["train_size"])
    lc = b["label_consistent"]
    assert set(lc) >= {"trigger_only", "standard_source", "robust_source"}
    assert len(s["rounds"]) == data["settings"]["rounds"]
    assert data["datasets"]["train_split_roundtrip"] is True
    assert (
        data["loop_check"]["attack_success"]["n"] * data["settings"]["seeds"]
        == b["attack_success"]["n"]
    )
    assert data["targeted"]["by_poisons"]["1"]["control_success"]["value"] <= 1.0
    # at smoke size the dirty-label trigger is already learned, a clean model ignores it
    assert b["attack_success"]["value"] > 0.5 > b["clean_model_attack_success"]["value"]
