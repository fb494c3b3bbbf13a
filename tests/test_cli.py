"""The `jaxrobust` command end to end on the smoke config: train, eval, attack, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from jaxrobust.cli import main

FAST = ["--config", "smoke", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "smoke"
    assert main(["train", *FAST, "--out", str(out)]) == 0
    return out


def test_train_writes_report(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    for key in (
        "dataset",
        "threat",
        "eps",
        "objective",
        "clean_accuracy",
        "robust_accuracy",
        "attack",
        "train_seconds",
        "curve",
    ):
        assert key in m, key
    assert m["dataset"] == "digits" and m["threat"] == "linf" and m["objective"] == "pgd_at"
    assert set(m["attack"]) >= {"name", "steps", "restarts"}
    assert m["curve"]["eps"] == [0.0, 0.1]
    assert m["curve"]["robust_accuracy"][0] == pytest.approx(m["clean_accuracy"])
    assert m["robust_accuracy"] <= m["clean_accuracy"]
    assert len(m["history"]) == 2
    for png in ("accuracy_vs_eps.png", "training_curves.png", "adversarial_examples.png"):
        with Image.open(run_dir / png) as im:
            assert im.size[0] > 100


def test_rerun_of_a_finished_run_resumes_without_training(run_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(run_dir, out)
    before = json.loads((out / "metrics.json").read_text())
    assert main(["train", *FAST, "--out", str(out)]) == 0
    after = json.loads((out / "metrics.json").read_text())
    assert after["steps"] == before["steps"]
    assert after["clean_accuracy"] == before["clean_accuracy"]


def test_resume_with_another_config_is_refused(run_dir, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(run_dir, out)
    assert main(["train", *FAST, "--set", "eps=0.2", "--out", str(out)]) == 2
    assert "different config" in capsys.readouterr().err


def test_eval(run_dir, tmp_path):
    out = tmp_path / "eval"
    args = ["eval", str(run_dir), "--eps", "0", "0.1", "0.3", "--no-checks"]
    assert main([*args, "--attacks", "fgsm", "pgd-10", "pgd-margin", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    worst = m["robust_accuracy"]
    assert len(worst) == 3 and worst[0] == pytest.approx(m["clean_accuracy"])
    cascade = m["per_attack_cascade"]
    assert list(cascade) == ["fgsm", "pgd-10", "pgd-margin"] == m["attacks"]
    for i in range(3):
        after = [cascade[a][i] for a in m["attacks"]]
        assert m["clean_accuracy"] >= after[0] >= after[1] >= after[2] == worst[i]
    assert worst == sorted(worst, reverse=True)
    assert set(m["timings"]) == set(m["attacks"])
    assert (out / "accuracy_vs_eps.png").is_file()


def test_eval_bad_attack(run_dir, tmp_path, capsys):
    assert main(["eval", str(run_dir), "--attacks", "magic", "--out", str(tmp_path)]) == 2
    assert "unknown attack 'magic'" in capsys.readouterr().err


def test_attack(run_dir, tmp_path):
    out = tmp_path / "attack"
    assert main(["attack", str(run_dir), "--num", "8", "--steps", "5", "--out", str(out)]) == 0
    data = np.load(out / "adversarial_examples.npz")
    assert data["x_adv"].shape == (8, 8, 8, 1)
    assert np.abs(data["x_adv"] - data["x"]).max() <= 0.1 + 1e-6
    assert (out / "adversarial_examples.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "bogus=1"], "unknown config key 'bogus'"),
        (["--set", "dataset=imagenet"], "unknown dataset 'imagenet'"),
        (["--set", "eps=-0.1"], ">= 0"),
        (["--set", "model.name=resnet9000"], "unknown model 'resnet9000'"),
        (["--set", "model.kwargs.depthh=3"], "depthh"),
        (["--config", "nonexistent.json"], "neither a file"),
    ],
)
def test_train_bad_input(args, message, tmp_path, capsys):
    assert main(["train", "--quiet", *args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_download_only_dataset_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JAXROBUST_DATA_DIR", str(tmp_path / "empty"))
    assert main(["train", "--quiet", "--set", "dataset=mnist", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "mnist" in err and "digits" in err


def test_eval_of_missing_or_corrupt_run(run_dir, tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "checkpoint" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    for f in (broken / "checkpoints").rglob("*"):
        if f.is_file() and "state" in str(f) and f.stat().st_size > 0:
            f.write_bytes(b"\x00garbage" * 10)
    assert main(["eval", str(broken), "--attacks", "fgsm", "--no-checks"]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and "Traceback" not in err


@pytest.mark.parametrize("objective", ["fast_at", "trades", "spatial_worst_of_k"])
def test_train_other_objectives(objective, tmp_path):
    out = tmp_path / objective
    sets = ["--set", f"objective={objective}", "--set", "epochs=1", "--set", "eval.eps_list=(0,)"]
    assert main(["train", *FAST, *sets, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["objective"] == objective
    assert 0.0 <= m["robust_accuracy"] <= m["clean_accuracy"]
    if objective == "fast_at":
        # The catastrophic-overfitting check ran (a PGD accuracy on a training batch).
        assert 0.0 <= m["history"][0]["co_check_robust_accuracy"] <= 1.0
        assert m["catastrophic_overfitting"] is None


def test_eval_splits_respect_the_validation_hold_out(tmp_path, capsys):
    run = tmp_path / "run"
    hold = ["--set", "validation.examples=100", "--set", "epochs=1"]
    assert main(["train", *FAST, *hold, "--out", str(run)]) == 0
    args = ["eval", str(run), "--eps", "0.1", "--attacks", "fgsm", "--no-checks"]
    sizes = {}
    for split in ("train", "validation", "test"):
        out = tmp_path / split
        assert main([*args, "--split", split, "--out", str(out)]) == 0
        sizes[split] = json.loads((out / "metrics.json").read_text())["num_examples"]
    assert sizes == {"train": 1437 - 100, "validation": 100, "test": 360}
    # A run without a hold-out has no validation split.
    bare = tmp_path / "bare"
    assert main(["train", *FAST, "--set", "epochs=1", "--out", str(bare)]) == 0
    assert main(["eval", str(bare), "--split", "validation", "--attacks", "fgsm"]) == 2
    assert "held out no validation examples" in capsys.readouterr().err
