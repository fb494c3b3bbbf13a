"""One training run on `shapes` and what it learned (not an experiment: the leading `_`
keeps it out of `jaxrobust experiment`'s list). Shared by `_shapes_reliance.py` and the
shapes part of `tradeoff.py`.

`train_and_measure` trains with the library's own loop (`jaxrobust.train.loop.train`, a
config from `load_config("default", BASE + overrides)`), then measures the final model's
accuracy on every split of the (planted) test set with binomial standard errors; the train
loop's own final evaluation gives the ℓ2 PGD robust accuracy at `eval.eps`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import jax
import jax.numpy as jnp
import numpy as np

import jaxrobust.data as jd
from jaxrobust.config import load_config
from jaxrobust.train.loop import restore_run, train

# Every shapes run: small_cnn, ℓ2, no evaluation during training, one final PGD evaluation
# at eval.eps (the training ε unless overridden) and no ε sweep.
BASE = [
    "dataset=shapes",
    "model.name=small_cnn",
    "threat=l2",
    "eval.eps_list=(0.0,)",
    "eval.restarts=1",
    "eval.every_epochs=1000",
    "eval.during_examples=256",
    "checkpoint.keep=1",
]
PLANTED_SPLITS = ("test", "test_clean", "test_shuffled")


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n independent examples."""
    return math.sqrt(max(p * (1 - p), 1e-12) / n)


def split_accuracies(
    logits_fn: Any, splits: tuple[str, ...], data_dir: str | None, dataset_kwargs: dict
) -> tuple[dict[str, float], dict[str, int]]:
    """Accuracy of `logits_fn` on each named shapes split (batches of 500) and the split sizes."""
    predict = jax.jit(lambda f, x: jnp.argmax(f(x), -1))
    acc, sizes = {}, {}
    for split in splits:
        x, y = jd.load_split("shapes", split, data_dir=data_dir, dataset_kwargs=dataset_kwargs)
        preds = np.concatenate([predict(logits_fn, x[i : i + 500]) for i in range(0, len(y), 500)])
        acc[split] = float(np.mean(preds == y))
        sizes[split] = len(y)
    return acc, sizes


def train_and_measure(overrides: list[str], run_dir: str | Path) -> dict[str, Any]:
    """Train one model on shapes (config BASE + `overrides`) into `run_dir` and measure it.

    Returns a JSON-ready record: the overrides and the config's main fields, the accuracy
    on each test split with its binomial SE (planted: `test`, `test_clean`, `test_shuffled`,
    the same images; plain: `test`), the reliance drop test − test_shuffled in pp (planted),
    the final ℓ2 PGD robust accuracy with its attack, the training history and wall times.
    """
    cfg = load_config("default", BASE + list(overrides))
    t0 = time.perf_counter()
    metrics = train(cfg, str(run_dir), progress=False)
    wall = time.perf_counter() - t0
    _, state, _ = restore_run(str(run_dir))
    kwargs = cfg.dataset_kwargs.to_dict()
    splits = PLANTED_SPLITS if kwargs.get("planted") else ("test",)
    acc, sizes = split_accuracies(state.logits_fn(), splits, cfg.data_dir or None, kwargs)
    n = sizes["test"]
    record: dict[str, Any] = {
        "overrides": list(overrides),
        "config": {
            "model": cfg.model.name,
            "model_kwargs": cfg.model.kwargs.to_dict(),
            "objective": cfg.objective,
            "threat": cfg.threat,
            "train_eps": cfg.eps,
            "adversary_steps": cfg.adversary.steps,
            "eps_warmup_epochs": cfg.adversary.eps_warmup_epochs,
            "dataset_kwargs": kwargs,
            "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            "optimizer": cfg.optimizer.to_dict(),
        },
        "num_train": metrics["num_train"],
        "num_examples": sizes,
        "accuracy": acc,
        "se": {s: binomial_se(a, sizes[s]) for s, a in acc.items()},
    }
    if "test_shuffled" in acc:
        record["reliance_drop_pp"] = 100 * (acc["test"] - acc["test_shuffled"])
        # The two accuracies are on the same images (paired): this SE is the unpaired bound.
        record["reliance_drop_se_pp_unpaired"] = 100 * math.hypot(
            binomial_se(acc["test"], n), binomial_se(acc["test_shuffled"], n)
        )
    record.update(
        {
            "robust_accuracy_test": metrics["robust_accuracy"],
            "robust_se": binomial_se(metrics["robust_accuracy"], n),
            "robust_attack": {
                **metrics["attack"],
                "threat": metrics["threat"],
                "eps": metrics["eps"],
            },
            "history": metrics["history"],
            "train_seconds": metrics["train_seconds"],
            "eval_seconds": metrics["eval_seconds"],
            "wall_seconds": wall,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            **C.run_info(),
        }
    )
    return record
