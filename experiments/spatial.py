"""Spatial robustness (Engstrom, Tran, Tsipras, Schmidt, Madry 2019) on the offline digits.

Three models of one architecture are trained: standard, with random rotation+translation
augmentation, and with the worst of 10 random transforms per example (the paper's
adversarial training). Each is evaluated on natural inputs, one random transform, the
worst of 10 random transforms, the exhaustive 31 × 5 × 5 grid, the first-order attack on
(angle, dx, dy), and the grid against the majority vote over random transforms. Rotations
are ±30°; translations ±`--shift` of the image side (the paper's ±3 px of 28 ≈ 0.1).

    jaxrobust experiment spatial [--smoke] [--out DIR]

Writes DIR/spatial.json (the table and settings) and DIR/spatial.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import jaxrobust as jr
from jaxrobust import report
from jaxrobust.config import load_config
from jaxrobust.data import load_split
from jaxrobust.train.loop import restore_run, train

TRAININGS = {
    "standard": "standard",
    "random": "spatial_random",
    "worst-of-10": "spatial_worst_of_k",
}
EVALS = ("natural", "random", "worst-of-10", "first-order", "grid", "grid + vote")


def _train_all(out: Path, smoke: bool, shift: float, seed: int) -> dict[str, Path]:
    dirs = {}
    for label, objective in TRAININGS.items():
        overrides = [
            f"objective={objective}",
            f"adversary.max_shift={shift}",
            f"seed={seed}",
            "eval.eps_list=(0.0,)",
            "eval.steps=1",
            "eval.restarts=1",
            "eval.every_epochs=1000",
        ]
        if smoke:
            overrides += ["epochs=2", "model.kwargs.hidden=(32,)"]
        else:
            overrides += ["model.name=small_cnn", "model.kwargs={}", "epochs=30"]
        dirs[label] = out / "models" / label
        train(load_config(None, overrides), dirs[label], progress=False, log=lambda s: None)
    return dirs


def _vote_correct(f, x, y, key, threat, samples: int) -> jax.Array:
    """Majority vote over `samples` random transforms; correct iff the vote is y."""
    return jnp.argmax(jr.attacks.vote(f, threat, samples=samples)(x, key), -1) == y


def evaluate_model(f, x, y, key, threat, *, grid_sizes, first_order_steps, vote_samples):
    """Accuracy of `f` under each spatial evaluation of `EVALS` (fractions)."""
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
        "natural": natural.mean(),
        "random": random.mean(),
        "worst-of-10": (~wo10.success & natural).mean(),
        "first-order": (~first.success & natural).mean(),
        "grid": (~grid.success & natural).mean(),
        "grid + vote": vote_alive.mean(),
    }


def _figure(table: dict, path: Path) -> None:
    fig = Figure(figsize=(8, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(table)
    for i, (model, row) in enumerate(table.items()):
        ax.bar(np.arange(len(EVALS)) + i * width, [row[e] for e in EVALS], width, label=model)
    ax.set_xticks(np.arange(len(EVALS)) + width * (len(table) - 1) / 2, EVALS)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title("digits: spatial robustness by training (rows) and evaluation (x)")
    ax.legend(title="training")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxrobust experiment spatial", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run for tests")
    parser.add_argument("--out", default="runs/experiments/spatial")
    parser.add_argument("--angle", type=float, default=30.0, help="max rotation, degrees")
    parser.add_argument("--shift", type=float, default=0.1, help="max shift, fraction of side")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dirs = _train_all(out, args.smoke, args.shift, args.seed)
    x, y = load_split("digits", "test", limit=64 if args.smoke else None)
    shift_px = args.shift * x.shape[1]
    threat = jr.spatial(args.angle, shift_px)
    grid_sizes = (7, 3) if args.smoke else (31, 5)
    settings = {
        "max_angle": args.angle,
        "max_shift_px": shift_px,
        "grid": {"angles": grid_sizes[0], "translations": grid_sizes[1]},
        "first_order_steps": 10 if args.smoke else 200,
        "vote_samples": 5 if args.smoke else 10,
        "num_test": len(y),
        "smoke": args.smoke,
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
        table[label] = {k: float(v) for k, v in fn(x, y, jax.random.key(args.seed + 1)).items()}
    result = {"settings": settings, "table": table, "seconds": time.perf_counter() - t0}
    report.write_json(out / "spatial.json", result)
    _figure(table, out / "spatial.png")
    print(f"{'training':<12}" + "".join(f"{e:>13}" for e in EVALS))
    for label, row in table.items():
        print(f"{label:<12}" + "".join(f"{row[e]:>13.3f}" for e in EVALS))
    print(f"({result['seconds']:.0f} s) report in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
