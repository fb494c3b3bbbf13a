"""Re-package committed full-run results in the current JSON schema without re-running them
(not an experiment: the leading `_` keeps it out of `jaxrobust experiment`'s list).

For runs too long to repeat on a shared 2-core machine (spatial: ~28 min quiet; the digits
trade-off: ~16 min), this adds what the schema now asks for (how each number was obtained,
sample sizes, standard errors where the run kept what they need, seed/model/epochs fields)
and leaves every number as the run measured it. `provenance` in the upgraded JSON names the
commit that added the original results and what was derived here; `git_commit` and
`jaxrobust_version` are null (the producing run did not record them). Re-running the
experiment replaces the file with a fully recorded one.

    python experiments/_upgrade_results.py experiments/results
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import _tradeoff_digits as TD
import _tradeoff_plots as P
import numpy as np
import spatial as SP

from jaxrobust import report


def _provenance(source_commit: str, derived: str) -> dict:
    return {
        "numbers_from_run_committed_in": source_commit,
        "schema_upgraded_by": "experiments/_upgrade_results.py",
        "derived_here": derived,
    }


def upgrade_spatial(old: dict, source_commit: str) -> dict:
    """spatial.json from before the schema: plain accuracies -> measured (n, binomial SE)."""
    s = old["settings"]
    n = int(s["num_test"])
    table = {
        model: {
            e: C.measured(
                row[e],
                n=n,
                se=float(C.mc_se(row[e], n)),
                how=SP.HOW[e] + " (per-example outcomes not kept by this run)",
            )
            for e in SP.EVALS
        }
        for model, row in old["table"].items()
    }
    full = SP.SETTINGS["full"]
    return {
        "experiment": "spatial",
        "smoke": bool(s["smoke"]),
        "seed": 0,  # the command's default; the run passed no --seed
        "settings": {
            "model": f"{full['model']}({full['model_kwargs']})",
            "epochs": full["epochs"],
            "train_size": 1437,
            "test_size": n,
            "max_angle": s["max_angle"],
            "max_shift": 0.1,
            "max_shift_px": s["max_shift_px"],
            "grid": s["grid"],
            "first_order_steps": s["first_order_steps"],
            "vote_samples": s["vote_samples"],
        },
        "table": table,
        "wall_time_s": round(float(old["seconds"]), 2),
        "jaxrobust_version": None,
        "git_commit": None,
        "provenance": _provenance(
            source_commit,
            "standard errors sqrt(p(1-p)/n) from each accuracy; seed/model/epochs from the "
            "run's command (defaults). Training used --angle's value: the config default "
            "(30°) equalled --angle's default, so the bug fixed since did not affect this run.",
        ),
    }


def upgrade_tradeoff_digits(old: dict, source_commit: str) -> dict:
    """tradeoff_digits.json from before the schema: seed means -> measured (n = seeds, SE
    over seeds), and the acceptance recomputed from the stored per-seed numbers."""
    cfg = old["settings"]
    n_test, S, S_low = int(cfg["test_size"]), int(cfg["seeds"]), int(cfg["low_seeds"])
    sw, low, sal = old["eps_sweep"], old["low_data"], old["saliency"]
    attack = f"PGD-{cfg['eval_steps']}x{cfg['eval_restarts']}"
    clean_eps = np.asarray(sw["per_seed_clean"], float)
    own = np.asarray(sw["per_seed_robust_at_eps_train"], float)
    low_clean = np.asarray(low["per_seed_clean"], float)
    diff = low_clean[1:] - low_clean[:1]
    ms = lambda a, what, seeds: TD.measured_over_seeds(a, what, seeds, n_test)  # noqa: E731

    def means_only(value, what, seeds, se=None):
        return C.measured(
            value,
            n=seeds,
            se=se,
            how=f"{what}, on the {n_test} test images, mean over {seeds} training seeds"
            + ("; SE over seeds" if se is not None else "; per-seed values not kept by this run"),
        )

    curves = np.asarray(sw["accuracy_vs_attack_eps"], float)
    new = {k: old[k] for k in ("experiment", "part", "smoke", "seed", "settings")}
    new["eps_sweep"] = {
        "eps_train": sw["eps_train"],
        "clean_test": ms(clean_eps, "clean accuracy", S),
        "robust_test_at_eps_train": ms(own, f"accuracy under {attack} at ε_train", S),
        "attack_eps": sw["attack_eps"],
        "accuracy_vs_attack_eps": means_only(
            curves, f"accuracy under {attack} (rows: model, cols: ε)", S
        ),
        "per_seed_clean": clean_eps,
        "per_seed_robust_at_eps_train": own,
    }
    new["low_data"] = {
        "n": low["n"],
        "eps_train": low["eps_train"],
        "clean_test": ms(low_clean, "clean accuracy (rows: ε_train, cols: n)", S_low),
        "at_minus_standard": ms(diff, "AT minus standard clean accuracy", S_low),
        "robust_test_at_eps_train": means_only(
            low["robust_test_at_eps_train"], f"accuracy under {attack} at ε_train", S_low
        ),
        "per_seed_clean": low_clean,
    }
    new["saliency"] = {
        "eps_train": sal["eps_train"],
        "measures": {
            k: means_only(v, f"test-set mean of the per-example {k}", S, se=sal["measures_se"][k])
            for k, v in sal["measures"].items()
        },
        "examples": sal["examples"],
    }
    new["final_train_loss"] = old["final_train_loss"]
    new["acceptance"] = TD.acceptance(
        cfg, n_test, clean_eps, C.jsonable(own.mean(1)), curves[0], low_clean, sal["measures"]
    )
    for k in ("train_time_s", "eval_time_s", "saliency_time_s", "wall_time_s"):
        new[k] = old[k]
    new["jaxrobust_version"] = None
    new["git_commit"] = None
    new["provenance"] = _provenance(
        source_commit,
        "measured-number records (n, SE over seeds) from the stored per-seed values; the "
        "acceptance flags recomputed from them by _tradeoff_digits.acceptance",
    )
    return C.jsonable(new)


def main(results: str) -> int:
    root = Path(results)
    # (JSON, upgrade, commit that added the run's numbers, figures redrawn from the result)
    jobs = [
        (
            "spatial/spatial.json",
            upgrade_spatial,
            "f266f4b",
            [lambda d, out: SP._figure(d["table"], out / "spatial.png")],
        ),
        (
            "tradeoff/tradeoff_digits.json",
            upgrade_tradeoff_digits,
            "a5039b7",
            [
                lambda d, out: P.plot_digits(d, out / "tradeoff_digits.png"),
                lambda d, out: P.plot_saliency(d, out / "tradeoff_saliency.png"),
            ],
        ),
    ]
    for rel, fn, commit, figures in jobs:
        path = root / rel
        if not path.exists():
            continue
        old = json.loads(path.read_text())
        if "provenance" in old or "git_commit" in old:
            print(f"{rel}: already in the current schema")
            continue
        new = fn(old, commit)
        report.write_json(path, new)
        for fig in figures:
            fig(new, path.parent)
        print(f"{rel}: upgraded, figures redrawn")
    return 0


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    raise SystemExit(main(args[0] if args else "experiments/results"))
