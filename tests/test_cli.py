"""The `jaxrobust` command end to end on the smoke config: train, eval, attack, errors."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxrobust.cli import main

FAST = ["--config", "smoke", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(smoke_run):
    return smoke_run


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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_help_and_config_errors_answer_without_jax(tmp_path):
    """`--help` and a bad config key never import JAX (they answer in well under a second)."""
    code = (
        "import sys\n"
        "from jaxrobust.cli import main\n"
        "codes = [main(['--help']), main(['train', '--help']),\n"
        "         main(['train', '--set', 'bogus=1', '--out', sys.argv[1]]),\n"
        "         main(['train', '--set', 'eps=1e999', '--out', sys.argv[1]]),\n"
        "         main(['eval', 'x', '--limit', '0'])]\n"
        "assert codes == [0, 0, 2, 2, 2], codes\n"
        "assert 'jax' not in sys.modules, 'jax was imported'\n"
    )
    out = tmp_path / "never"
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "model.kwargs.hidden=abc"], "'model.kwargs.hidden' expects a tuple"),
        (["--set", "eps=1e999"], "eps must be >= 0 and finite"),
        (["--set", "eval.eps_list=(0, 'a')"], "tuple of numbers"),
        (["--set", "eval.eps_list=abc"], "expects a tuple"),
        (["--set", "optimizer.learning_rate=-1"], "learning_rate must be >= 0"),
        (["--set", "seed=-1"], "seed must be"),
        (["--set", "model.kwargs.hidden=(0,)"], "cannot be built"),
        (["--step", "-1"], "must be >= 0"),
        (["--coordinator", "nohost"], "needs --num-processes"),
    ],
)
def test_train_bad_input_one_line_nothing_on_disk(args, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--quiet", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "--limit", "0"], "--limit: must be >= 1, got 0"),
        (["eval", "--limit", "-5"], "--limit: must be >= 1, got -5"),
        (["eval", "--eps", "0"], "give at least one eps > 0"),
        (["eval", "--eps", "inf"], "finite number"),
        (["eval", "--eps", "nan"], "finite number"),
        (["eval", "--batch-size", "0"], "--batch-size: must be >= 1"),
        (["eval", "--suite", "strong"], "unknown suite 'strong'"),
        (["eval", "--attacks", "fgsm", "magic"], "unknown attack 'magic'"),
        (["eval", "--best", "--step", "11"], "not allowed with argument"),
        (["eval", "--step", "5"], "no checkpoint for step 5"),
        (["eval", "--split", "nosuch", "--attacks", "fgsm"], "nosuch"),
        (["attack", "--num", "0"], "--num: must be >= 1, got 0"),
        (["attack", "--steps", "0"], "--steps: must be >= 1"),
        (["attack", "--eps", "0"], "--eps must be > 0"),
        (["attack", "--eps", "-1"], "finite number >= 0"),
        (["attack", "--eps", "1e999"], "finite number >= 0"),
    ],
)
def test_eval_attack_bad_input_one_line_nothing_on_disk(args, message, run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([args[0], str(run_dir), *args[1:], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.slow
def test_ctrl_c_during_training_says_where_to_resume(tmp_path, capsys, monkeypatch):
    """Ctrl-C after the first checkpoint: one line naming it; the same command resumes."""
    from jaxrobust.train import objectives

    make_step = objectives.make_train_step

    def interrupted_after(n):
        def make(objective):
            step, calls = make_step(objective), [0]

            def wrapped(state, batch):
                calls[0] += 1
                if calls[0] > n:
                    raise KeyboardInterrupt
                return step(state, batch)

            return wrapped

        return make

    out = tmp_path / "run"
    monkeypatch.setattr(objectives, "make_train_step", interrupted_after(13))
    assert main(["train", *FAST, "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"the last checkpoint is step 11 in {out / 'checkpoints'}" in err[0]
    assert "run the same command to resume" in err[0]
    monkeypatch.setattr(objectives, "make_train_step", make_step)
    assert main(["train", *FAST, "--out", str(out)]) == 0
    assert "resumed from step 11" in capsys.readouterr().out


def test_ctrl_c_during_eval_says_where_to_resume(run_dir, tmp_path, capsys, monkeypatch):
    # The module that defines `evaluate` (cli.py imports it from there at call time).
    evaluate_module = importlib.import_module("jaxrobust.attacks.cascade")
    real = evaluate_module.evaluate

    def interrupted(*args, progress, **kwargs):
        def stop(line):
            progress(line)
            raise KeyboardInterrupt  # after the first finished (eps, attack) step

        return real(*args, progress=stop, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate", interrupted)
    out = tmp_path / "eval"
    args = ["eval", str(run_dir), "--eps", "0.1", "--attacks", "fgsm", "pgd-10", "--no-checks"]
    assert main([*args, "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"kept in {out / 'eval_state.json'}" in err[0], err
    assert "--resume" in err[0]
    monkeypatch.setattr(evaluate_module, "evaluate", real)
    assert main([*args, "--out", str(out), "--resume"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["per_attack_cascade"]) == ["fgsm", "pgd-10"]


def _damage_newest_step(run: Path) -> int:
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    data = run / "checkpoints" / str(steps[-1]) / "state" / "ocdbt.process_0" / "d"
    for f in data.iterdir():
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return steps[-1]


@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back(run_dir, tmp_path, capsys):
    """eval/attack use the newest intact step with a warning; --step picks one by hand;
    train resumes from it, sets the damaged step aside and reaches the same model."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    newest = _damage_newest_step(run)
    args = ["attack", str(run), "--num", "4", "--steps", "2"]
    assert main([*args, "--out", str(tmp_path / "a1")]) == 0
    err = capsys.readouterr().err
    assert f"step {newest}" in err and "corrupt" in err and "trying step 11" in err, err
    assert main([*args, "--step", str(newest), "--out", str(tmp_path / "a2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupt" in err[0] and "--step" in err[0], err
    assert main([*args, "--step", "11", "--out", str(tmp_path / "a3")]) == 0
    assert capsys.readouterr().err == ""

    assert main(["train", *FAST, "--out", str(run)]) == 0
    captured = capsys.readouterr()
    assert "resumed from step 11" in captured.out
    assert f"checkpoint step {newest}" in captured.out + captured.err
    aside = run / "checkpoints.set-aside"
    assert [p.name.split("-")[0] for p in aside.iterdir()] == [str(newest)]
    before = json.loads((run_dir / "metrics.json").read_text())
    after = json.loads((run / "metrics.json").read_text())
    assert after["clean_accuracy"] == before["clean_accuracy"]
    assert after["robust_accuracy"] == before["robust_accuracy"]
    assert after["segments"] == [0, 11]


def test_attack_success_rate_counts_correct_examples_only(run_dir, tmp_path, capsys):
    out = tmp_path / "attack"
    assert main(["attack", str(run_dir), "--num", "32", "--steps", "5", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    data = np.load(out / "adversarial_examples.npz")
    correct = data["pred_clean"] == data["y"]
    fooled = correct & (data["pred_adv"] != data["y"])
    assert m["num_correct_before_attack"] == correct.sum() > 0
    assert m["attack_success_rate"] == pytest.approx(fooled.sum() / correct.sum())
    assert f"fooled {fooled.sum()} of the {correct.sum()} correctly classified" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("objective", "inputs"),
    [
        ("standard", "clean inputs"),
        ("pgd_at", "PGD adversarial inputs"),
        ("fast_at", "FGSM-RS adversarial inputs"),
        ("trades", "TRADES adversarial inputs"),
        ("spatial_worst_of_k", "rotated/shifted"),
        ("spatial_random", "rotated/shifted"),
        ("gaussian_noise", "Gaussian-noise inputs"),
        ("smooth_adv", "SmoothAdv adversarial inputs"),
    ],
)
def test_training_curve_legend_says_what_train_accuracy_measures(objective, inputs):
    from jaxrobust.config import OBJECTIVES
    from jaxrobust.train.loop import training_curve_labels

    assert objective in OBJECTIVES
    assert inputs in training_curve_labels(objective)["train_accuracy"]
