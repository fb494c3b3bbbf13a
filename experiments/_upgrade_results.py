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
import robust_gaussian as RG
import robust_overfitting as RO
import spatial as SP
import tradeoff as T

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


def upgrade_robust_overfitting(old: dict, source_commit: str) -> dict:
    """robust_overfitting.json from before the schema: the analysis (window means, measured
    records) recomputed by `robust_overfitting.analyse` from the stored per-epoch history
    and final evaluation."""
    s = dict(old["settings"])
    fe = old["final_evaluation"]
    metrics = {
        "num_test": s["num_test"],
        "early_stopping": {
            "selected_epoch": old["selected_epoch"],
            "selected": fe["selected"],
            "last": fe["last"],
        },
    }
    result = RO.analyse(old["history"], s, metrics, old["lr_decay_epochs"])
    new = {
        "experiment": "robust_overfitting",
        "smoke": old["smoke"],
        "seed": s["seed"],
        "settings": s,
        "lr_decay_epochs": old["lr_decay_epochs"],
        **result,
        "train_time_s": round(float(old["train_seconds"]), 2),
        "history": old["history"],
        "wall_time_s": old["wall_time_s"],
        "jaxrobust_version": None,
        "git_commit": None,
        "provenance": _provenance(
            source_commit,
            "everything but history, final evaluation and times recomputed by "
            "robust_overfitting.analyse from the stored history",
        ),
    }
    return C.jsonable(new)


def upgrade_tradeoff(old: dict, source_commit: str) -> dict:
    """tradeoff.json (synthetic part) from before the schema: closed-form and measured
    records (binomial SE at the stored test size), the bound checked on the measured numbers
    and the acceptance recomputed by `tradeoff.acceptance`."""
    cfg = dict(old["settings"])
    p, eta, m = cfg["p"], cfg["eta"], int(cfg["test"])
    cfg.setdefault("switch_over_eta", 1.0)
    cfg.update(train_size=cfg["train"], test_size=m)
    formula = "Φ-formula of the linear model (module _tradeoff_model.accuracy)"
    meas = lambda x, how: C.measured(x, n=m, se=float(C.mc_se(x, m)), how=how)  # noqa: E731
    models = []
    for r in old["models"]:
        st = meas(r["standard_accuracy_test"], "clean accuracy on fresh test samples")
        rb = meas(
            r["robust_accuracy_pgd"],
            f"accuracy under the library's PGD-{cfg['eval_pgd_steps']} (ℓ∞, ε = 2η) on "
            "fresh test samples",
        )
        models.append(
            {
                "name": r["name"],
                "eps_train": r["eps_train"],
                "eps_train_over_eta": round(r["eps_train"] / eta, 6),
                "standard_accuracy": C.closed_form(r["standard_accuracy"], how=formula + ", ε = 0"),
                "robust_accuracy": C.closed_form(r["robust_accuracy"], how=formula + ", ε = 2η"),
                "standard_accuracy_test": st,
                "robust_accuracy_pgd": rb,
                "pgd_agrees": r["pgd_agrees"],
                "bound_closed_form": C.closed_form(
                    r["bound"], how="p(1 − A)/(1 − p), A closed form"
                ),
                "bound_check": T.bound_check(st, rb, p),
                **{k: r[k] for k in ("v1", "weak_l1", "weak_mean", "x1_share_of_l1", "bias")},
            }
        )
    bl = old["blend"]
    new = {
        "experiment": "tradeoff",
        "seed": old["seed"],
        "settings": cfg,
        "models": models,
        "references": {
            k: {a: C.closed_form(b, how=formula) for a, b in ref.items()}
            for k, ref in old["references"].items()
        },
        "blend": {
            "alpha": bl["alpha"],
            "standard_accuracy": C.closed_form(bl["standard_accuracy"], how=formula),
            "robust_accuracy": C.closed_form(bl["robust_accuracy"], how=formula),
        },
        "accuracy_vs_eps": {
            **old["accuracy_vs_eps"],
            "accuracy": C.closed_form(old["accuracy_vs_eps"]["accuracy"], how=formula),
        },
        "final_train_loss": old["final_train_loss"],
        "train_time_s": old["train_time_s"],
        "acceptance": T.acceptance(
            models, bl["standard_accuracy"], bl["robust_accuracy"], p, cfg["switch_over_eta"]
        ),
        "smoke": old["smoke"],
        "wall_time_s": old["wall_time_s"],
        "jaxrobust_version": None,
        "git_commit": None,
        "provenance": _provenance(
            source_commit,
            "method records; binomial SEs from the stored accuracies and test size; the bound "
            "check on the measured numbers (tradeoff.bound_check); acceptance recomputed",
        ),
    }
    return C.jsonable(new)


def upgrade_robust_gaussian(old: dict, source_commit: str) -> dict:
    """robust_gaussian.json from before the schema: method records for every number, the
    measured comparisons' flags recomputed (binomial SEs at the stored test size)."""
    cfg, eps, m_test = old["settings"], old["settings"]["eps"], old["settings"]["test"]
    new = {k: v for k, v in old.items() if k not in ("classifiers", "covariance", "wall_time_s")}
    cov = old["covariance"]
    rel = np.asarray(cov["relative_error"])
    new["covariance"] = {
        "fitted": C.measured(
            cov["fitted"],
            n=cfg["samples"],
            se=None,
            how="eigenvalues of Σ fitted by the library's optimize (inner ℓ2 max) and optax "
            "(outer) on the matched sample",
        ),
        "closed_form": C.closed_form(cov["closed_form"], how="½Σ* + I/λ + √(Σ*/λ + ¼Σ*²)"),
        "relative_error": cov["relative_error"],
        "max_relative_error": C.measured(
            float(np.max(np.abs(rel))),
            n=cfg["samples"],
            se=None,
            how="max over eigenvalues of |fitted / closed form − 1|",
        ),
        "closed_form_at_mean_multiplier": cov["closed_form_at_mean_multiplier"],
    }
    new["classifiers"] = {n: RG.with_methods(c, cfg, eps) for n, c in old["classifiers"].items()}
    st, rb = old["classifiers"]["standard"], old["classifiers"]["robust_fitted"]
    diff_se = lambda a, b: float(np.hypot(C.mc_se(a, m_test), C.mc_se(b, m_test)))  # noqa: E731
    new["acceptance"] = {
        **old["acceptance"],
        "robust_has_higher_robust_accuracy_measured": bool(
            rb["robust_accuracy_pgd"] - st["robust_accuracy_pgd"]
            > 2 * diff_se(rb["robust_accuracy_pgd"], st["robust_accuracy_pgd"])
        ),
        "robust_has_lower_standard_accuracy_measured": bool(
            st["accuracy_test"] - rb["accuracy_test"]
            > 2 * diff_se(rb["accuracy_test"], st["accuracy_test"])
        ),
    }
    new["wall_time_s"] = old["wall_time_s"]
    new["jaxrobust_version"] = None
    new["git_commit"] = None
    new["provenance"] = _provenance(
        source_commit,
        "method records; binomial SEs from the stored accuracies and test size; the measured "
        "comparison flags",
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
    if "--robust-overfitting" in sys.argv:
        jobs.append(
            (
                "robust_overfitting/robust_overfitting.json",
                upgrade_robust_overfitting,
                "dd6c6d9",
                [
                    lambda d, out: RO.plot(
                        d["history"], d, d["lr_decay_epochs"], out / "robust_overfitting.png"
                    )
                ],
            )
        )
    if "--tradeoff-synthetic" in sys.argv:
        jobs.append(
            (
                "tradeoff/tradeoff.json",
                upgrade_tradeoff,
                "f266f4b",
                [lambda d, out: P.plot_bound(d, out / "tradeoff_bound.png")],
            )
        )
    if "--robust-gaussian" in sys.argv:
        jobs.append(
            ("robust_gaussian/robust_gaussian.json", upgrade_robust_gaussian, "f266f4b", [])
        )
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
