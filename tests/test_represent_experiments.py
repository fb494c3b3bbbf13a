"""`jaxrobust experiment representations|synthesis --smoke` end to end on digits and shapes
(slow: each trains a standard and a robust model): the JSON's fields, the PNG grids, and
the properties that hold at any size."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from jaxrobust.cli import experiments_dir, main

pytestmark = pytest.mark.slow


def _run(name: str, dataset: str, out: Path) -> dict:
    argv = ["experiment", name, "--smoke", "--dataset", dataset, "--out", str(out)]
    assert main(argv) == 0
    data = json.loads((out / f"{dataset}_smoke.json").read_text())
    assert data["smoke"] is True and data["wall_time_s"] > 0 and "git_commit" in data
    assert data["settings"]["dataset"] == dataset
    # The training step count survives beside the description of the tasks' steps.
    assert data["settings"]["steps"] == _smoke_settings(name, dataset)["steps"]
    assert "task_steps" in data["settings"]
    for m in ("standard", "robust"):
        assert data["models"][m]["clean_accuracy"]["method"] == "measured"
    return data


def _smoke_settings(name: str, dataset: str) -> dict:
    """SETTINGS[dataset]["smoke"] of experiments/NAME.py (its `_represent_common` import is
    already on sys.path after `main` ran it)."""
    path = experiments_dir() / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_settings_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SETTINGS[dataset]["smoke"]


def _pngs(out: Path, names: list[str]) -> None:
    for n in names:
        path = out / f"{n}.png"
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


@pytest.mark.parametrize("dataset", ["digits", "shapes"])
def test_representations_smoke(tmp_path, dataset):
    data = _run("representations", dataset, tmp_path)
    tag = f"{dataset}_smoke"
    _pngs(
        tmp_path,
        [f"{tag}_{t}" for t in ("inversion", "interpolation", "visualization", "saliency")],
    )
    for m in ("standard", "robust"):
        inv = data["inversion"][m]
        assert inv["mean_l2_to_source"]["n"] == data["settings"]["n_invert"]
        assert 0 <= inv["judged_as_source_class"]["value"] <= 1
        # The interpolation's ends are the inputs themselves.
        assert data["interpolation"][m]["endpoint_max_abs_error"]["value"] < 1e-5
        v = data["visualization"][m]
        assert v["activation_from_image"]["value"] >= v["activation_before"]["value"] - 1e-5
        assert -1 <= data["saliency"][m]["alignment_with_image"]["value"] <= 1
    assert set(data["acceptance"]) == {
        "inversion_distance_ratio_at_most_0.8",
        "robust_inversions_judged_as_source_at_least_0.95",
    }


@pytest.mark.parametrize("dataset", ["digits", "shapes"])
def test_synthesis_smoke(tmp_path, dataset):
    data = _run("synthesis", dataset, tmp_path)
    tag = f"{dataset}_smoke"
    _pngs(
        tmp_path,
        [
            f"{tag}_{t}"
            for t in ("generation", "inpainting", "super_resolution", "translation", "sketch")
        ],
    )
    s = data["settings"]
    for m in ("standard", "robust"):
        g = data["generation"][m]["from_other_class_judged_as_target"]
        assert g["n"] == s["gen_per_class"] * 10
        sr = data["super_resolution"][m]["max_l2_downsample_to_low"]["value"]
        assert sr <= s["sr_eps"] / s["sr_factor"] + 1e-4
        assert data["inpainting"][m]["masked_mse"]["value"] >= 0
    assert len(data["acceptance"]) == 4


def test_representations_and_synthesis_smoke_with_the_cnns_on_shapes(tmp_path):
    """`--model bn_cnn`: both models are the conv-BN CNN trained by the library's loop into
    run folders (standard, and l2 PGD-AT with the recipe's one-step adversary), every task
    runs on them; a second experiment in the same folder reuses the finished runs."""
    from jaxrobust.runs import load_run

    args = ["--smoke", "--dataset", "shapes", "--model", "bn_cnn", "--out", str(tmp_path)]
    assert main(["experiment", "representations", *args]) == 0
    assert main(["experiment", "synthesis", *args]) == 0
    tag = "shapes_bn_cnn_smoke"
    rep = json.loads((tmp_path / f"{tag}.json").read_text())  # synthesis's, written last
    assert rep["settings"]["models"].startswith("bn_cnn {'channels': (4, 8)}")
    for m in ("standard", "robust"):
        e = rep["models"][m]
        assert e["reused_finished_run"] is True and e["clean_accuracy"]["n"] == 64
        cfg = json.loads((tmp_path / "work" / tag / m / "config.json").read_text())
        assert cfg["model"]["name"] == "bn_cnn"
        assert cfg["objective"] == ("pgd_at" if m == "robust" else "standard")
    robust = json.loads((tmp_path / "work" / tag / "robust" / "config.json").read_text())
    assert robust["threat"] == "l2" and robust["adversary"]["steps"] == 1
    assert "batch_stats" in load_run(tmp_path / "work" / tag / "robust").state.variables()
    _pngs(tmp_path, [f"{tag}_{t}" for t in ("inversion", "saliency", "generation", "sketch")])
    assert len(rep["acceptance"]) == 4
    for m in ("standard", "robust"):
        g = rep["generation"][m]["from_other_class_judged_as_target"]
        assert g["n"] == rep["settings"]["gen_per_class"] * 10
