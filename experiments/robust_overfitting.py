"""Robust overfitting (Rice, Wong & Kolter 2020) on the offline digits, with early stopping.

Rice et al. found that in PGD adversarial training the robust *test* accuracy peaks shortly
after the first learning-rate decay and then falls while the robust *training* accuracy
keeps rising, and that early stopping on a held-out validation set recovers the peak. Here
one long PGD-AT run (`jaxrobust.train.loop.train`, ℓ∞, piecewise learning rate ×0.1 at 50%
and 75% of the epochs as in the paper, no weight decay, no augmentation) holds out the last
`validation` training records and evaluates every epoch, clean and under the
during-training PGD: a fixed subset of the training records (train robust accuracy), the
validation set and the test split. Early stopping (patience 0: train to the end, select the
best epoch by robust validation accuracy) picks the model of the final evaluation; the last
epoch is evaluated with the same attack beside it. The JSON also reports what a patience of
a few epochs would have done (replayed on the history with the loop's rule).

    jaxrobust experiment robust_overfitting [--smoke] [--out DIR] [--seed S]

Writes DIR/robust_overfitting.json and DIR/robust_overfitting.png; the training run itself
(checkpoints, metrics.json, its own figures) is DIR/run/ and resumes if interrupted.
Whether robust overfitting appears is measured, not assumed: `overfitting` in the JSON
compares the peak with the last epochs against the test set's binomial standard error, and
`windows` gives 10 consecutive windows of means (test robust, train robust, their gap) with
standard errors over epochs, so a change at a learning-rate decay is read from window
means, not from single epochs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import numpy as np

from jaxrobust.config import load_config
from jaxrobust.train.loop import train

NAME = "robust_overfitting"

SETTINGS = {
    "smoke": {
        "model": "mlp",
        "model_kwargs": {"hidden": (32,)},
        "epochs": 3,
        "eps": 0.2,
        "batch_size": 128,
        "optimizer": "sgd",
        "learning_rate": 0.1,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "train_steps": 3,
        "validation": 128,
        "train_subset": 128,
        "test_subset": 128,
        "during_steps": 3,
        "eval_steps": 5,
        "eval_restarts": 1,
        "eval_batch_size": 128,
        "patience_replay": [1, 2],
    },
    "full": {
        "model": "mlp",
        "model_kwargs": {"hidden": (512, 512)},
        "epochs": 200,
        "eps": 0.2,
        "batch_size": 64,
        "optimizer": "sgd",
        "learning_rate": 0.1,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "train_steps": 10,
        "validation": 200,
        "train_subset": 500,
        "test_subset": 0,  # 0 = the whole test split
        "during_steps": 10,
        "eval_steps": 50,
        "eval_restarts": 5,
        "eval_batch_size": 512,
        "patience_replay": [5, 10, 20, 40],
    },
}


def overrides(s: dict, seed: int) -> list[str]:
    """`--set` style overrides of the default job for settings `s`."""
    return [
        f"seed={seed}",
        f"model.name={s['model']}",
        f"model.kwargs={s['model_kwargs']!r}",
        "objective=pgd_at",
        "threat=linf",
        f"eps={s['eps']}",
        f"adversary.steps={s['train_steps']}",
        f"epochs={s['epochs']}",
        f"batch_size={s['batch_size']}",
        f"optimizer.name={s['optimizer']}",
        f"optimizer.learning_rate={s['learning_rate']}",
        f"optimizer.momentum={s['momentum']}",
        f"optimizer.weight_decay={s['weight_decay']}",
        "optimizer.schedule=piecewise",
        "optimizer.warmup_epochs=0.0",
        "eval.every_epochs=1",
        f"eval.during_steps={s['during_steps']}",
        f"eval.during_examples={s['test_subset']}",
        f"eval.during_train_examples={s['train_subset']}",
        f"eval.steps={s['eval_steps']}",
        f"eval.restarts={s['eval_restarts']}",
        f"eval.batch_size={s['eval_batch_size']}",
        f"eval.eps_list=(0.0, {s['eps']})",
        "checkpoint.keep=1",
        f"validation.examples={s['validation']}",
        "early_stopping.enabled=True",
        "early_stopping.metric=validation_robust_accuracy",
        "early_stopping.patience=0",
    ]


def replay_patience(epochs: np.ndarray, value: np.ndarray, patience: int) -> dict:
    """The loop's early-stopping rule replayed on a history: the first epoch with `patience`
    epochs since the best (strict improvements only) stops; returns the stop and best epoch."""
    best_i = 0
    for i in range(len(epochs)):
        if value[i] > value[best_i]:
            best_i = i
        if epochs[i] - epochs[best_i] >= patience and i < len(epochs) - 1:
            return {"stopped_epoch": int(epochs[i]), "selected_epoch": int(epochs[best_i])}
    return {"stopped_epoch": None, "selected_epoch": int(epochs[best_i])}


def windows(epochs: np.ndarray, series: dict[str, np.ndarray], width: int) -> list[dict]:
    """Means of per-epoch series over consecutive windows of `width` epochs.

    Each window: its first and last epoch and, per series, the mean and its standard error
    over the window's epochs (std/√width: the epoch-to-epoch variation; the test-set
    sampling error is common to every window and cancels in comparisons between windows).
    """
    out = []
    for a in range(0, len(epochs) - width + 1, width):
        sl = slice(a, a + width)
        row = {"first_epoch": int(epochs[sl][0]), "last_epoch": int(epochs[sl][-1])}
        for name, v in series.items():
            w = np.asarray(v[sl], float)
            se = w.std(ddof=1) / np.sqrt(width) if width > 1 else 0.0
            row[name] = {"mean": float(w.mean()), "se": float(se)}
        out.append(row)
    return out


def analyse(history: list[dict], s: dict, metrics: dict, decays: list[float]) -> dict:
    """The robust-overfitting numbers from the per-epoch history and the final evaluation.

    Headline numbers carry their method (`_common.measured`): per-epoch accuracies are
    PGD-`during_steps` on the test split (n = its size, binomial SE); window means are over
    `window` consecutive epochs (SE over epochs).
    """
    h = {k: np.array([r[k] for r in history]) for k in history[0] if k != "epoch"}
    epochs = np.array([r["epoch"] for r in history])
    test_rob, train_rob = h["test_robust_accuracy"], h["train_subset_robust_accuracy"]
    n_test = metrics["num_test"] if not s["test_subset"] else s["test_subset"]
    n_train_sub = s["train_subset"]
    during = f"PGD-{s['during_steps']} during training"
    i_best = int(np.argmax(test_rob))  # first maximum
    es = metrics["early_stopping"]
    i_sel = int(np.flatnonzero(epochs == es["selected_epoch"])[0])
    width = max(1, len(epochs) // 10)
    se = float(C.mc_se(test_rob[i_best], n_test))
    drop = float(test_rob[i_best] - test_rob[-width:].mean())
    gap = train_rob - test_rob
    before_decay = epochs <= decays[0]
    i_decay = int(np.flatnonzero(before_decay)[-1]) if before_decay.any() else 0
    wins = windows(epochs, {"test_robust": test_rob, "train_robust": train_rob, "gap": gap}, width)
    # The windows either side of the first decay: the last one ending at or before it and
    # the next one (both exist when the decay is at least one window in).
    i_before = max((i for i, w in enumerate(wins) if w["last_epoch"] <= decays[0]), default=None)
    around = None
    if i_before is not None and i_before + 1 < len(wins):
        b, a = wins[i_before]["gap"], wins[i_before + 1]["gap"]
        rise_se = float(np.hypot(b["se"], a["se"]))
        how = (
            f"mean over {width} epochs of train-subset robust minus test robust accuracy "
            f"({during}); SE over epochs"
        )
        around = {
            "window": width,
            "before": C.measured(b["mean"], n=width, se=b["se"], how=how),
            "after": C.measured(a["mean"], n=width, se=a["se"], how=how),
            "before_epochs": [wins[i_before]["first_epoch"], wins[i_before]["last_epoch"]],
            "after_epochs": [wins[i_before + 1]["first_epoch"], wins[i_before + 1]["last_epoch"]],
            "rise": C.measured(a["mean"] - b["mean"], n=width, se=rise_se, how="after − before"),
            "rise_exceeds_2se": bool(a["mean"] - b["mean"] > 2 * rise_se),
        }
    replay = {
        str(p): replay_patience(epochs, h["validation_robust_accuracy"], p)
        for p in s["patience_replay"]
    }
    for r in replay.values():
        r["test_robust_accuracy"] = float(test_rob[epochs == r["selected_epoch"]][0])

    def test_acc(value: float, what: str) -> dict:
        return C.measured(
            value,
            n=n_test,
            se=float(C.mc_se(value, n_test)),
            how=f"{what}: {during} on the test split",
        )

    def final(model: str, key: str) -> dict:
        v = float(es[model][key])
        how = (
            f"PGD-{s['eval_steps']}x{s['eval_restarts']} on the test split"
            if key == "robust_accuracy"
            else "clean test accuracy"
        )
        return C.measured(v, n=n_test, se=float(C.mc_se(v, n_test)), how=how)

    return {
        "best_test_epoch": int(epochs[i_best]),
        "best_test_robust_accuracy": test_acc(
            float(test_rob[i_best]), "maximum over epochs (biased upwards by the epoch noise)"
        ),
        "last_epoch": int(epochs[-1]),
        "last_test_robust_accuracy": test_acc(float(test_rob[-1]), "last epoch"),
        "last_window_mean_test_robust_accuracy": test_acc(
            float(test_rob[-width:].mean()), f"mean of the last {width} epochs"
        ),
        "selected_epoch": int(es["selected_epoch"]),
        "selected_test_robust_accuracy": test_acc(
            float(test_rob[i_sel]), "epoch selected by validation robust accuracy"
        ),
        "train_robust_accuracy": {
            k: C.measured(
                float(train_rob[i]),
                n=n_train_sub,
                se=float(C.mc_se(train_rob[i], n_train_sub)),
                how=f"{during} on the first {n_train_sub} training records",
            )
            for k, i in (("at_best_test_epoch", i_best), ("at_selected_epoch", i_sel), ("last", -1))
        },
        "train_test_robust_gap": {
            "single_epochs": {
                "at_first_decay": float(gap[i_decay]),
                "at_best_test_epoch": float(gap[i_best]),
                "at_selected_epoch": float(gap[i_sel]),
                "last": float(gap[-1]),
                "max": float(gap.max()),
            },
            "around_first_decay": around,
        },
        "windows": wins,
        "overfitting": {
            "drop_best_to_last_window": C.measured(
                drop,
                n=n_test,
                se=se,
                how=f"peak minus the mean of the last {width} epochs ({during}, test split); "
                "SE: binomial at the peak",
            ),
            "drop_exceeds_2se": bool(drop > 2 * se),
            "note": "during-training PGD on the test split; the peak is a maximum over "
            "epochs, so it is biased upwards by about the per-epoch noise",
        },
        "final_evaluation": {
            "attack": f"PGD-{s['eval_steps']}x{s['eval_restarts']}",
            "selected": {k: final("selected", k) for k in ("clean_accuracy", "robust_accuracy")},
            "last": {k: final("last", k) for k in ("clean_accuracy", "robust_accuracy")},
        },
        "patience_replay": replay,
    }


def lr_decay_epochs(epochs: int, steps_per_epoch: int) -> list[float]:
    """Epochs (fractional) at which the piecewise schedule multiplies the rate by 0.1."""
    total = epochs * steps_per_epoch
    return [int(f * total) / steps_per_epoch for f in (0.5, 0.75)]


def plot(history: list[dict], result: dict, decays: list[float], path: Path) -> Path:
    """Accuracies per epoch (left) and the train-test robust gap (right)."""
    fig, axes = C.figure(1, 2, size=(6.0, 4.2))
    ax, ax_gap = axes[0]
    epochs = [r["epoch"] for r in history]
    lines = [
        ("train_subset_robust_accuracy", "train robust", "C0", "-"),
        ("test_robust_accuracy", "test robust", "C3", "-"),
        ("validation_robust_accuracy", "validation robust", "C2", ":"),
        ("train_subset_clean_accuracy", "train clean", "C0", "--"),
        ("test_clean_accuracy", "test clean", "C3", "--"),
    ]
    for key, label, color, style in lines:
        ax.plot(epochs, [r[key] for r in history], style, color=color, label=label, lw=1.2)
    for i, d in enumerate(decays):
        for a in (ax, ax_gap):
            a.axvline(d, color="0.5", ls="--", lw=0.8, label="LR ×0.1" if i == 0 else None)
    sel = result["selected_epoch"]
    best = result["best_test_epoch"]
    ax.axvline(sel, color="C2", lw=1.0, label=f"early stopping (epoch {sel})")
    peak = result["best_test_robust_accuracy"]["value"]
    ax.plot([best], [peak], "k*", ms=9, label=f"best test robust (epoch {best})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.01)
    ax.set_title("PGD-AT on digits: robust overfitting?")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, alpha=0.3)
    gap = [r["train_subset_robust_accuracy"] - r["test_robust_accuracy"] for r in history]
    ax_gap.plot(epochs, gap, color="C1", lw=0.8, alpha=0.6, label="per epoch")
    wins = result["windows"]
    ax_gap.errorbar(
        [(w["first_epoch"] + w["last_epoch"]) / 2 for w in wins],
        [w["gap"]["mean"] for w in wins],
        [w["gap"]["se"] for w in wins],
        xerr=[(w["last_epoch"] - w["first_epoch"]) / 2 for w in wins],
        fmt="ko",
        ms=3,
        capsize=2,
        label="window mean ± SE over epochs",
    )
    ax_gap.axvline(sel, color="C2", lw=1.0)
    ax_gap.legend(fontsize=7, loc="lower right")
    ax_gap.set_xlabel("epoch")
    ax_gap.set_ylabel("train robust − test robust accuracy")
    ax_gap.set_title("generalisation gap (robust)")
    ax_gap.grid(True, alpha=0.3)
    return C.save(fig, path)


def main(argv: list[str] | None = None) -> int:
    args = C.parse_args(NAME, argv, __doc__)
    s = SETTINGS["smoke" if args.smoke else "full"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = load_config(None, overrides(s, args.seed))
    metrics = train(cfg, out / "run", progress=False, log=lambda line: None)
    history = metrics["history"]
    steps_per_epoch = metrics["num_train"] // cfg.batch_size
    decays = lr_decay_epochs(cfg.epochs, steps_per_epoch)
    result = analyse(history, s, metrics, decays)
    data = C.jsonable(
        {
            **C.header(
                NAME,
                args.smoke,
                args.seed,
                {
                    **s,
                    "seed": args.seed,
                    "objective": "pgd_at",
                    "threat": "linf",
                    "schedule": "piecewise (x0.1 at 50% and 75% of the steps)",
                    "train_step_size": s["eps"] / 4,
                    "during_attack": f"PGD-{s['during_steps']}, 1 restart, step 2.5*eps/steps",
                    "num_train": metrics["num_train"],
                    "num_validation": metrics["num_validation"],
                    "num_test": metrics["num_test"],
                    "smoke": args.smoke,
                },
            ),
            "lr_decay_epochs": decays,
            **result,
            "train_time_s": round(metrics["train_seconds"], 2),
            "history": history,
        }
    )
    plot(history, result, decays, out / f"{NAME}.png")
    r, fe = result, result["final_evaluation"]
    C.finish(
        out,
        NAME,
        data,
        t0,
        [
            f"test robust accuracy (PGD-{s['during_steps']}): best "
            f"{r['best_test_robust_accuracy']['value']:.3f} at epoch {r['best_test_epoch']}, "
            f"last {r['last_test_robust_accuracy']['value']:.3f} (epoch {r['last_epoch']})",
            f"early stopping on validation selects epoch {r['selected_epoch']}: "
            f"{fe['attack']} robust {fe['selected']['robust_accuracy']['value']:.3f} vs last "
            f"{fe['last']['robust_accuracy']['value']:.3f}",
            "train-test robust gap, window means: "
            + ", ".join(
                f"{w['first_epoch']}-{w['last_epoch']} {w['gap']['mean']:.3f}" for w in r["windows"]
            ),
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
