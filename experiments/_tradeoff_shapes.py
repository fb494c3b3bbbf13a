"""The trade-off on `shapes`, with and without the planted non-robust feature (not an
experiment: the leading `_` keeps it out of `jaxrobust experiment`'s list;
`tradeoff.py --dataset shapes` runs it).

Tsipras et al. (2019) explain the cost of robust training in clean accuracy by features that
are useful but not robust: a robust model may not use them. `shapes` with the planted
pattern makes one such feature explicit: a per-class texture of ℓ2 norm `planted_norm` that
names the label on every image (rate 1, correlation 1). An adversary with ε ≥ that norm can
erase it (subtract it), so PGD training at such ε must give it up: on the planted test set
(`test`, patterns drawn as in training) its clean accuracy falls to what the shapes alone
give. On plain shapes the same sweep shows the trade-off of a dataset without it.

For each variant (planted, plain), each ε_train and each training seed one model
(`model` of the settings: `bn_cnn` in the full run, `small_cnn` at smoke size) is trained
with the library's loop (`_shapes_runs.train_and_measure`: ε_train = 0 standard training,
else ℓ2 adversarial training with the settings' `objective`, PGD-AT with one step of ε
from a random start and ε ramped up over the first epochs in the full run; small_cnn
under PGD-AT collapsed to a constant prediction on planted shapes, bn_cnn trains, see
`_shapes_reliance.py`), then measured on the test splits (n = num_test each; the headline
numbers are seed means with the SE over seeds, per-seed numbers beside them). Every run is stored in
OUT/tradeoff_shapes_runs/NAME/ (record.json next to the checkpoints), and a rerun reuses a
run whose record has the same overrides: an interrupted sweep resumes.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import _plots as PL
import _tradeoff_digits as TD
import numpy as np
from _shapes_runs import train_and_measure

NAME = "tradeoff_shapes"

SETTINGS: dict[str, dict[str, Any]] = {
    "smoke": {
        "num_train": 200,
        "num_test": 100,
        "model": "small_cnn",
        "channels": (4, 8),
        "dense": 16,
        "epochs": 1,
        "batch_size": 50,
        "learning_rate": 1e-3,
        "eps_train": [0.0, 2.0],
        "seeds": 1,
        "objective": "trades",
        "trades_beta": 1.0,
        "adversary_steps": 1,
        "step_factor": 2.5,
        "eps_warmup_epochs": 0.0,
        "eval_steps": 2,
        "planted_norm": 1.0,
    },
    "full": {
        "num_train": 5000,
        "num_test": 1000,
        # bn_cnn: small_cnn learned neither shapes nor the pattern at this budget (23.9 %
        # clean after standard training on 2k x 12 epochs) and collapsed under PGD-AT.
        "model": "bn_cnn",
        "channels": (8, 16, 32),
        "epochs": 7,
        "batch_size": 32,
        "learning_rate": 2e-3,
        # Below the pattern's norm (0.5: the adversary can only half-erase it) and past it
        # (1.5); plain shapes (no pattern to give up) at the ends only, to fit 30 minutes.
        "eps_train": [0.0, 0.5, 1.5],
        "plain_eps_train": [0.0, 1.5],
        "seeds": 3,
        # One step of ε from a random start (fast adversarial training) with ε ramped up
        # over the first epochs: the recipe under which bn_cnn trained on planted shapes
        # (_shapes_reliance.py); the full pattern (norm 1.0) is erasable from ε = 1.0 on.
        "objective": "pgd_at",
        "adversary_steps": 1,
        "step_factor": 1.0,
        "eps_warmup_epochs": 4.0,
        "eval_steps": 10,
        "planted_norm": 1.0,
    },
}


def _overrides(cfg: dict, planted: bool, eps: float, seed: int) -> list[str]:
    data = [
        f"dataset_kwargs.num_train={cfg['num_train']}",
        f"dataset_kwargs.num_test={cfg['num_test']}",
    ]
    if planted:
        data += [
            "dataset_kwargs.planted=True",
            f"dataset_kwargs.planted_norm={cfg['planted_norm']}",
        ]
    channels = ",".join(str(c) for c in cfg["channels"])
    kwargs = f"'channels':({channels},)"
    if "dense" in cfg:  # small_cnn's hidden dense layer (bn_cnn pools into the head)
        kwargs += f",'dense':{cfg['dense']}"
    train = [
        f"model.name={cfg['model']}",
        f"model.kwargs={{{kwargs}}}",
        f"seed={seed}",
        f"epochs={cfg['epochs']}",
        f"batch_size={cfg['batch_size']}",
        f"optimizer.learning_rate={cfg['learning_rate']}",
        f"eval.steps={cfg['eval_steps']}",
    ]
    if eps == 0:
        return data + train + ["objective=standard", "eps=0.0"]
    # step_factor·ε/steps: Madry et al.'s 2.5 for multi-step PGD, 1.0 for one step.
    step = cfg["step_factor"] * eps / cfg["adversary_steps"]
    adversary = [
        f"objective={cfg['objective']}",
        f"eps={eps}",
        f"adversary.steps={cfg['adversary_steps']}",
        f"adversary.step_size={step}",
        f"adversary.eps_warmup_epochs={cfg['eps_warmup_epochs']}",
    ]
    if cfg["objective"] == "trades":
        adversary.append(f"adversary.trades_beta={cfg['trades_beta']}")
    return data + train + adversary


def _run(overrides: list[str], run_dir: Path) -> dict:
    """The record of one run: reused from run_dir/record.json when its overrides match."""
    saved = run_dir / "record.json"
    if saved.exists():
        record = json.loads(saved.read_text())
        if record.get("overrides") == overrides:
            return record
    if run_dir.exists():  # a run interrupted before its record, or other settings: redo
        shutil.rmtree(run_dir)
    record = train_and_measure(overrides, run_dir)
    saved.write_text(json.dumps(C.jsonable(record), indent=1) + "\n")
    return record


def _variant(cfg: dict, planted: bool, out: Path) -> dict:
    eps_train, seeds = cfg["eps_train"], cfg["seeds"]
    if not planted:
        eps_train = cfg.get("plain_eps_train", eps_train)
    label = "planted" if planted else "plain"
    records = [
        [
            _run(_overrides(cfg, planted, e, s), out / f"{label}_eps{e:g}_seed{s}")
            for s in range(seeds)
        ]
        for e in eps_train
    ]
    splits = list(records[0][0]["accuracy"])
    per_seed = {
        split: np.array([[r["accuracy"][split] for r in row] for row in records])
        for split in splits
    }
    robust = np.array([[r["robust_accuracy_test"] for r in row] for row in records])
    n_test = cfg["num_test"]
    result = {
        "dataset_kwargs": records[0][0]["config"]["dataset_kwargs"],
        "eps_train": eps_train,
        "accuracy": {
            split: TD.measured_over_seeds(a, f"accuracy on shapes '{split}'", seeds, n_test)
            for split, a in per_seed.items()
        },
        "accuracy_per_seed": {split: a for split, a in per_seed.items()},
        "robust_accuracy_own_eps": TD.measured_over_seeds(
            robust,
            f"accuracy under l2 PGD-{cfg['eval_steps']} at the model's own eps_train "
            "(eps_train = 0: clean)",
            seeds,
            n_test,
        ),
        "clean_minus_standard_pp": TD.measured_over_seeds(
            100 * (per_seed["test"] - per_seed["test"][:1]),
            "accuracy on 'test' minus the standard model's (pp, paired by seed)",
            seeds,
            n_test,
        ),
        "train_seconds": float(sum(r["train_seconds"] for row in records for r in row)),
    }
    if planted:
        result["reliance_drop_pp"] = TD.measured_over_seeds(
            100 * (per_seed["test"] - per_seed["test_shuffled"]),
            "accuracy on 'test' minus on 'test_shuffled' (pp, same images)",
            seeds,
            n_test,
        )
    return result


def _falls_past(variant: dict, norm: float) -> bool | None:
    """Is clean accuracy on `test` at every ε_train > norm below that at every ε_train < norm
    by more than 2 SE (unpaired, over seeds)? None when a side of the norm is empty."""
    eps = np.asarray(variant["eps_train"], float)
    mean = np.asarray(variant["accuracy"]["test"]["value"], float)
    se = variant["accuracy"]["test"]["se"]
    se = np.zeros_like(mean) if se is None else np.asarray(se, float)
    below, above = np.nonzero(eps < norm)[0], np.nonzero(eps > norm)[0]
    if not len(below) or not len(above):
        return None
    return bool(all(mean[i] < mean[j] - 2 * np.hypot(se[i], se[j]) for i in above for j in below))


def plot(data: dict, path: Path) -> Path:
    fig, axes = C.figure(1, 2, size=(5.5, 3.8))
    norm = data["settings"]["planted_norm"]
    for ax, label in zip(axes[0], ("planted", "plain"), strict=True):
        v = data[label]
        eps = v["eps_train"]
        names = {
            "test": "test (patterns as in training)" if label == "planted" else "test",
            "test_clean": "test_clean (no pattern)",
            "test_shuffled": "test_shuffled (patterns of random classes)",
        }
        for split, acc in v["accuracy"].items():
            PL.errorbars(ax, eps, acc["value"], acc["se"], "o-", names[split])
        r = v["robust_accuracy_own_eps"]
        PL.errorbars(ax, eps, r["value"], r["se"], "s--", "l2 PGD at own eps_train", "gray")
        if label == "planted":
            ax.axvline(norm, color="k", lw=0.8, ls=":", label=f"pattern norm {norm:g}")
        title = f"shapes, {label}: accuracy vs eps_train (seeds {data['settings']['seeds']})"
        PL.style(ax, "eps_train (l2)", "accuracy", title, ylim=PL.UNIT)
    return C.save(fig, path)


def shapes_experiment(cfg: dict, out: Path, smoke: bool, seed: int) -> dict:
    """Both variants; writes out/tradeoff_shapes.{json,png} and returns the JSON dict."""
    t0 = time.perf_counter()
    runs = out / f"{NAME}_runs"
    data = C.header(NAME, smoke, seed, cfg)
    data["planted"] = _variant(cfg, True, runs)
    data["plain"] = _variant(cfg, False, runs)
    norm = cfg["planted_norm"]
    data["acceptance"] = {
        "planted_clean_falls_past_pattern_norm": _falls_past(data["planted"], norm),
        "plain_clean_falls_past_pattern_norm": _falls_past(data["plain"], norm),
    }
    plot(data, out / f"{NAME}.png")
    lines = [
        f"{label}: eps_train {data[label]['eps_train']} -> test accuracy "
        f"{np.round(data[label]['accuracy']['test']['value'], 3).tolist()}"
        for label in ("planted", "plain")
    ] + [f"acceptance: {data['acceptance']}"]
    C.finish(out, NAME, C.jsonable(data), t0, lines)
    return data
