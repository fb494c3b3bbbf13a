"""The issue's acceptance numbers for the main job (`jaxrobust train` with its defaults)."""

from __future__ import annotations

import json

import pytest

from jaxrobust.cli import main


@pytest.mark.slow
def test_main_job_is_robust_and_standard_training_is_not(tmp_path):
    robust_dir, standard_dir = tmp_path / "pgd_at", tmp_path / "standard"
    assert main(["train", "--quiet", "--out", str(robust_dir)]) == 0
    assert (
        main(["train", "--quiet", "--set", "objective=standard", "--out", str(standard_dir)]) == 0
    )
    robust = json.loads((robust_dir / "metrics.json").read_text())
    standard = json.loads((standard_dir / "metrics.json").read_text())

    assert robust["eps"] == 0.1 and robust["attack"]["steps"] == 50
    assert robust["attack"]["restarts"] == 5
    assert robust["wall_seconds"] < 300
    assert robust["clean_accuracy"] >= 0.97
    assert robust["robust_accuracy"] >= 0.80
    assert standard["robust_accuracy"] <= robust["robust_accuracy"] - 0.20
    curve = dict(zip(standard["curve"]["eps"], standard["curve"]["robust_accuracy"], strict=True))
    assert curve[0.3] <= 0.05
