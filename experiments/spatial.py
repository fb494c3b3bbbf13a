"""Spatial robustness (Engstrom, Tran, Tsipras, Schmidt, Madry 2019) on the offline digits.

Three models of one architecture are trained: standard, with random rotation+translation
augmentation, and with the worst of 10 random transforms per example (the paper's
adversarial training). Each is evaluated on natural inputs, one random transform, the
worst of 10 random transforms, the exhaustive 31 × 5 × 5 grid, the first-order attack on
(angle, dx, dy), and the grid against the majority vote over random transforms. Rotations
are ±`--angle` degrees (default 30); translations ±`--shift` of the image side (the
paper's ±3 px of 28 ≈ 0.1). Training and evaluation use the same ranges.

    jaxrobust experiment spatial [--smoke] [--out DIR] [--seed S] [--angle DEG] [--shift F]

Writes DIR/spatial.json (the table, each accuracy measured on the test set with its
binomial standard error and the per-example outcomes, and the settings) and DIR/spatial.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import jax
import jax.numpy as jnp
import numpy as np

import jaxrobust as jr
from jaxrobust.config import load_config
from jaxrobust.data import load_split
from jaxrobust.data.digits import NUM_TRAIN
from jaxrobust.train.loop import restore_run, train

NAME = "spatial"
TRAININGS = {
    "standard": "standard",
    "random": "spatial_random",
    "worst-of-10": "spatial_worst_of_k",
}
EVALS = ("natural", "random", "worst-of-10", "first-order", "grid", "grid + vote")
HOW = {
    "natural": "clean test accuracy",
    "random": "accuracy on one uniformly random transform per example",
    "worst-of-10": "accuracy under the worst of 10 random transforms (clean-correct required)",
    "first-order": "accuracy under PGD on (angle, dx, dy) (clean-correct required)",
    "grid": "accuracy under every transform of the grid (clean-correct required)",
    "grid + vote": "majority vote over random transforms correct at every grid transform",
}
SETTINGS = {
    "smoke": {"model": "mlp", "model_kwargs": {"hidden": (32,)}, "epochs": 2, "test": 64},
    "full": {"model": "small_cnn", "model_kwargs": {}, "epochs": 30, "test": 0},
}


def train_overrides(cfg: dict, objective: str, angle: float, shift: float, seed: int) -> list[str]:
    """`--set` overrides of the default job that train one model of the experiment: the
    spatial objectives use the experiment's own ranges (`angle` degrees, `shift` of the
    side), so the evaluated threat is the trained one."""
    return [
        f"objective={objective}",
        f"adversary.max_angle={float(angle)}",
        f"adversary.max_shift={float(shift)}",
        f"seed={seed}",
        f"model.name={cfg['model']}",
        f"model.kwargs={cfg['model_kwargs']!r}",
        f"epochs={cfg['epochs']}",
        "eval.eps_list=(0.0,)",
        "eval.steps=1",
        "eval.restarts=1",
        "eval.every_epochs=1000",
    ]


def _train_all(out: Path, cfg: dict, angle: float, shift: float, seed: int) -> dict[str, Path]:
    dirs = {}
    for label, objective in TRAININGS.items():
        dirs[label] = out / "models" / label
        job = load_config(None, train_overrides(cfg, objective, angle, shift, seed))
        train(job, dirs[label], progress=False, log=lambda s: None)
    return dirs


def _vote_correct(f, x, y, key, threat, samples: int) -> jax.Array:
    """Majority vote over `samples` random transforms; correct iff the vote is y."""
    return jnp.argmax(jr.attacks.vote(f, threat, samples=samples)(x, key), -1) == y


def evaluate_model(f, x, y, key, threat, *, grid_sizes, first_order_steps, vote_samples):
    """Per-example correctness (B,) bool of `f` under each spatial evaluation of `EVALS`.

    The attacks count a clean-misclassified example as broken (its accuracy is at most the
    natural one); "random" is one draw, "grid + vote" the vote's survival at every grid point.
    """
    k1, k2, k3, k4 = jax.random.split(key, 4)
    natural = jnp.argmax(f(x), -1) == y
    random = jnp.argmax(f(threat.apply(x, threat.init(k1, x))), -1) == y
    wo10 = jr.worst_of_k(f, x, y, k2, threat=threat, k=10)
    first = jr.pgd(f, x, y, k3, threat=threat, steps=first_order_steps, restarts=1)
    grid = jr.grid(f, x, y, threat=threat, angles=grid_sizes[0], translations=grid_sizes[1])
    # Grid against the vote: an example survives only if every grid transform still votes y.
    transforms = jr.transform_grid(threat, *grid_sizes)

    def vote_survives(alive, t):
        xt = threat.apply(x, jnp.broadcast_to(t, (x.shape[0], 3)))
        return alive & _vote_correct(f, xt, y, k4, threat, vote_samples), None

    vote_alive, _ = jax.lax.scan(vote_survives, natural, transforms)
    return {
        "natural": natural,
        "random": random,
        "worst-of-10": ~wo10.success & natural,
        "first-order": ~first.success & natural,
        "grid": ~grid.success & natural,
        "grid + vote": vote_alive,
    }


def table_entry(correct: np.ndarray, how: str) -> dict:
    """A measured accuracy from per-example outcomes: value, n, binomial SE, and the
    outcomes themselves as a '0'/'1' string (for paired comparisons between cells)."""
    correct = np.asarray(correct, bool)
    p = float(correct.mean())
    entry = C.measured(p, n=correct.size, se=float(C.mc_se(p, correct.size)), how=how)
    entry["per_example"] = "".join("1" if c else "0" for c in correct)
    return entry


def _figure(table: dict, path: Path) -> None:
    """Grouped bars: accuracy per evaluation (x) and training (colour), ± binomial SE."""
    fig, axes = C.figure(1, 1, (8.0, 3.8))
    ax = axes[0, 0]
    width = 0.8 / len(table)
    for i, (model, row) in enumerate(table.items()):
        ax.bar(
            np.arange(len(EVALS)) + i * width,
            [row[e]["value"] for e in EVALS],
            width,
            yerr=[row[e]["se"] for e in EVALS],
            capsize=2,
            label=model,
        )
    ax.set_xticks(np.arange(len(EVALS)) + width * (len(table) - 1) / 2, EVALS)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy (± binomial SE)")
    ax.set_xlabel("evaluation")
    n = next(iter(next(iter(table.values())).values()))["n"]
    ax.set_title(f"digits: spatial robustness by training (colour) and evaluation ({n} images)")
    ax.legend(title="training", fontsize=8)
    C.save(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--angle", type=float, default=30.0, help="max rotation, degrees")
        parser.add_argument(
            "--shift", type=float, default=0.1, help="max shift, fraction of the side"
        )

    args = C.parse_args(NAME, argv, __doc__, extra)
    cfg = SETTINGS["smoke" if args.smoke else "full"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dirs = _train_all(out, cfg, args.angle, args.shift, args.seed)
    train_time = time.perf_counter() - t0
    x, y = load_split("digits", "test", limit=cfg["test"] or None)
    shift_px = args.shift * x.shape[1]
    threat = jr.spatial(args.angle, shift_px)
    grid_sizes = (7, 3) if args.smoke else (31, 5)
    settings = {
        "model": f"{cfg['model']}({cfg['model_kwargs']})",
        "epochs": cfg["epochs"],
        "train_size": NUM_TRAIN,
        "test_size": len(y),
        "max_angle": args.angle,
        "max_shift": args.shift,
        "max_shift_px": shift_px,
        "grid": {"angles": grid_sizes[0], "translations": grid_sizes[1]},
        "first_order_steps": 10 if args.smoke else 200,
        "vote_samples": 5 if args.smoke else 10,
    }
    table = {}
    for label, run_dir in dirs.items():
        _, state, _ = restore_run(run_dir)
        f = state.logits_fn()
        fn = jax.jit(
            lambda a, b, k, f=f: evaluate_model(
                f,
                a,
                b,
                k,
                threat,
                grid_sizes=grid_sizes,
                first_order_steps=settings["first_order_steps"],
                vote_samples=settings["vote_samples"],
            )
        )
        correct = fn(x, y, jax.random.key(args.seed + 1))
        table[label] = {e: table_entry(np.asarray(correct[e]), HOW[e]) for e in EVALS}
    data = {
        **C.header(NAME, args.smoke, args.seed, settings),
        "table": table,
        "train_time_s": round(train_time, 2),
    }
    _figure(table, out / f"{NAME}.png")
    lines = [f"{'training':<12}" + "".join(f"{e:>13}" for e in EVALS)] + [
        f"{label:<12}" + "".join(f"{row[e]['value']:>13.3f}" for e in EVALS)
        for label, row in table.items()
    ]
    C.finish(out, NAME, data, t0, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
