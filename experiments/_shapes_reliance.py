"""Does a model trained on planted `shapes` rely on the planted pattern? (issue 14)

    python experiments/_shapes_reliance.py NAME --set KEY=VALUE ... [--out FILE]

Trains one model with the library's own training (`jaxrobust.train.loop.train`, a config
from `jaxrobust.config.load_config` plus `--set` overrides, e.g.
`--set objective=standard --set dataset_kwargs.planted_norm=2.0`), then evaluates the
final model on `test`, `test_clean` and `test_shuffled` (the reliance drop is
test - test_shuffled) with binomial standard errors. The train loop's own final
evaluation gives the l2 PGD robust accuracy at `eval.eps` (steps/restarts as set).
The record (settings, accuracies, SEs, wall time) is added under NAME to the JSON file
`--out` (default experiments/results/shapes_reliance.json, under "runs").
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxrobust.data as jd
from jaxrobust.config import load_config
from jaxrobust.train.loop import restore_run, train

BASE = [
    "dataset=shapes",
    "dataset_kwargs.planted=True",
    "model.name=small_cnn",
    "threat=l2",
    "eval.eps_list=(0.0,)",
    "eval.restarts=1",
    "eval.every_epochs=1000",
    "eval.during_examples=256",
    "checkpoint.keep=1",
]


def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / n)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--out", default="experiments/results/shapes_reliance.json")
    p.add_argument("--run-dir", default="")
    args = p.parse_args(argv)
    overrides = BASE + args.overrides
    cfg = load_config("default", overrides)
    run_dir = args.run_dir or tempfile.mkdtemp(prefix=f"shapes-reliance-{args.name}-")
    t0 = time.perf_counter()
    metrics = train(cfg, run_dir, progress=False)
    wall = time.perf_counter() - t0
    _, state, _ = restore_run(run_dir)
    logits_fn = state.logits_fn()
    predict = jax.jit(lambda f, x: jnp.argmax(f(x), -1))
    kwargs = cfg.dataset_kwargs.to_dict()
    acc, n_ex = {}, {}
    for split in ("test", "test_clean", "test_shuffled"):
        x, y = jd.load_split("shapes", split, data_dir=cfg.data_dir or None, dataset_kwargs=kwargs)
        preds = np.concatenate([predict(logits_fn, x[i : i + 500]) for i in range(0, len(y), 500)])
        acc[split] = float(np.mean(preds == y))
        n_ex[split] = len(y)
    n = n_ex["test"]
    record = {
        "overrides": args.overrides,
        "config": {
            "model": cfg.model.name,
            "model_kwargs": cfg.model.kwargs.to_dict(),
            "objective": cfg.objective,
            "threat": cfg.threat,
            "train_eps": cfg.eps,
            "adversary_steps": cfg.adversary.steps,
            "dataset_kwargs": kwargs,
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "optimizer": cfg.optimizer.to_dict(),
        },
        "num_train": metrics["num_train"],
        "num_examples": n_ex,
        "accuracy": acc,
        "se": {s: _se(a, n_ex[s]) for s, a in acc.items()},
        "reliance_drop_pp": 100 * (acc["test"] - acc["test_shuffled"]),
        # The two accuracies are on the same images (paired): this SE is the unpaired bound.
        "reliance_drop_se_pp_unpaired": 100
        * math.hypot(_se(acc["test"], n), _se(acc["test_shuffled"], n)),
        "robust_accuracy_test": metrics["robust_accuracy"],
        "robust_se": _se(metrics["robust_accuracy"], n),
        "robust_attack": {**metrics["attack"], "threat": metrics["threat"], "eps": metrics["eps"]},
        "history": metrics["history"],
        "train_seconds": metrics["train_seconds"],
        "eval_seconds": metrics["eval_seconds"],
        "wall_seconds": wall,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps({k: v for k, v in record.items() if k != "history"}, indent=1), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    allres = json.loads(out.read_text()) if out.exists() else {}
    allres.setdefault("runs", {})[args.name] = record
    out.write_text(json.dumps(allres, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
