"""The trade-off on `shapes` (`tradeoff --dataset shapes`): the run grid it trains, the
acceptance rule it reports, and (slow) the smoke end to end with its resume."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from jaxrobust.cli import experiments_dir, main
from jaxrobust.config import load_config

if str(experiments_dir()) not in sys.path:
    sys.path.insert(0, str(experiments_dir()))

import _tradeoff_shapes as TS
from _shapes_runs import BASE


@pytest.mark.parametrize("planted", [True, False])
@pytest.mark.parametrize("eps", [0.0, 1.0])
def test_run_configs_are_valid_and_say_what_they_train(planted, eps):
    """ε_train = 0 is standard training evaluated clean; otherwise ℓ2 adversarial training
    (the settings' objective) at ε with the warm-up and Madry's step 2.5·ε/steps; the
    planted variant plants the configured norm."""
    cfg = TS.SETTINGS["full"]
    c = load_config("default", BASE + TS._overrides(cfg, planted, eps, seed=2))
    assert c.seed == 2 and c.dataset == "shapes" and c.threat == "l2"
    assert c.dataset_kwargs.num_train == cfg["num_train"]
    assert c.dataset_kwargs.to_dict().get("planted", False) is planted
    if planted:
        assert c.dataset_kwargs.planted_norm == cfg["planted_norm"]
    if eps == 0:
        assert c.objective == "standard" and c.eps == 0.0
    else:
        assert c.objective == cfg["objective"] and c.eps == eps
        assert c.adversary.step_size == pytest.approx(
            cfg["step_factor"] * eps / cfg["adversary_steps"]
        )
        assert c.model.name == cfg["model"]
        assert c.adversary.eps_warmup_epochs == cfg["eps_warmup_epochs"]


def _variant(eps, mean, se):
    return {"eps_train": eps, "accuracy": {"test": {"value": mean, "se": se}}}


def test_falls_past_norm_rule():
    """Every ε_train above the norm must be below every ε_train under it by > 2 SE."""
    eps = [0.0, 0.5, 1.0, 2.0]
    assert TS._falls_past(_variant(eps, [0.9, 0.9, 0.6, 0.4], [0.01] * 4), 1.0) is True
    # Within noise: 0.88 vs 0.9 with SEs 0.01 is 1.4 SE apart.
    assert TS._falls_past(_variant(eps, [0.9, 0.9, 0.6, 0.88], [0.01] * 4), 1.0) is False
    assert TS._falls_past(_variant(eps, [0.9, 0.45, 0.6, 0.46], [0.01] * 4), 1.0) is False
    assert TS._falls_past(_variant([0.0, 0.5], [0.9, 0.8], [0.01] * 2), 1.0) is None
    assert TS._falls_past(_variant(eps, [0.9, 0.9, 0.6, 0.4], None), 1.0) is True


@pytest.mark.slow
def test_tradeoff_shapes_smoke_writes_json_png_and_resumes(tmp_path: Path):
    out = tmp_path / "out"
    assert (
        main(["experiment", "tradeoff", "--smoke", "--dataset", "shapes", "--out", str(out)]) == 0
    )
    data = json.loads((out / "tradeoff_shapes.json").read_text())
    assert (out / "tradeoff_shapes.png").stat().st_size > 10_000
    assert not (out / "tradeoff.json").exists()  # only the shapes part ran
    cfg = TS.SETTINGS["smoke"]
    for label in ("planted", "plain"):
        v = data[label]
        assert v["eps_train"] == cfg["eps_train"]
        acc = v["accuracy"]["test"]
        assert acc["method"] == "measured" and acc["n"] == cfg["seeds"]
        assert all(0 <= a <= 1 for a in acc["value"])
    assert set(data["planted"]["accuracy"]) == {"test", "test_clean", "test_shuffled"}
    assert set(data["plain"]["accuracy"]) == {"test"}
    assert "reliance_drop_pp" in data["planted"]
    assert isinstance(data["acceptance"]["planted_clean_falls_past_pattern_norm"], bool)
    # A rerun reuses every stored run: same numbers, no training.
    t = time.perf_counter()
    assert (
        main(["experiment", "tradeoff", "--smoke", "--dataset", "shapes", "--out", str(out)]) == 0
    )
    again = json.loads((out / "tradeoff_shapes.json").read_text())
    assert again["planted"]["accuracy"] == data["planted"]["accuracy"]
    assert again["plain"]["train_seconds"] == data["plain"]["train_seconds"]
    assert time.perf_counter() - t < 60
