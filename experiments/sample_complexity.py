"""Robust generalization needs more data (Schmidt et al. 2018): the Gaussian and Bernoulli
models, and the same question on real data (UCI digits).

Each part lives in its own module; this file holds the settings, the acceptance checks and
the command line:

- `_sample_complexity_gaussian`: the Gaussian model in closed form: error curves of the
  mean estimator ŵ against n, the sample complexity n* (smallest integer n with expected
  robust error <= 10%) against ε²√d, and a check that ŵ from actual samples has the exact
  law N(θ*, σ²/n·I) used for the draws;
- `_sample_complexity_measure`: the measured twins: the library's PGD attacks ŵ on held-out
  samples at the points where the robust error is informative (2–98%), over several draws
  of ŵ, with confidence intervals; at the headline point (d = 10⁵, n = 1); and at n*;
- `_sample_complexity_training`: a linear model trained with the library's `pgd_at`
  objective, `make_train_step` and `TrainState` (what `jaxrobust train` runs), compared with
  ŵ and attacked on held-out samples for every n and seed;
- `_sample_complexity_bernoulli`: ŵ as a linear classifier versus ŵ on sign-thresholded
  inputs, both attacked (PGD, straight-through gradients through sign, exact search);
- `_sample_complexity_digits`: MLPs trained with `standard()` and `pgd_at(linf(ε))` on nested
  class-balanced subsets of the digits, clean and PGD accuracy vs n, saturation n;
- `_sample_complexity_figures`: the figures.

Every headline number in the JSON says how it was obtained (`_common.measured` with its
sample size and standard error, `closed_form`, or `by_argument`).

    jaxrobust experiment sample_complexity [--smoke] [--out DIR] [--seed S]
                                           [--part all|synthetic|digits]

Writes DIR/sample_complexity.json and DIR/sample_complexity_{gaussian,nstar,
adversarial_training,bernoulli,distribution}.png (synthetic), and
DIR/sample_complexity_digits.{json,png} (digits; with --part all, the digits results are
also under "digits" in sample_complexity.json).
"""

from __future__ import annotations

import time
from pathlib import Path

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import _digits as D
import _sample_complexity_bernoulli as B
import _sample_complexity_digits as SD
import _sample_complexity_figures as F
import _sample_complexity_gaussian as G
import _sample_complexity_measure as M
import _sample_complexity_training as T
import jax
import numpy as np

NAME = "sample_complexity"

# The thresholded Bernoulli model's attack grid (ε in units of τ; 1.05τ is the control that
# must break it) and its PGD steps, the same at both sizes.
BERNOULLI = {"tau_mult": 1.0, "eps_over_tau": [0.5, 1.5], "eps_control": [1.05], "steps": 3}

SETTINGS = {
    "smoke": {
        "sigma_mult": 0.5,
        "target": 0.10,
        "d_curves": [100, 100_000],
        "eps_curves": [0.1, 0.25, 0.5],
        "n_curves": [1, 2, 4, 8, 16, 32, 64, 128],
        "d_nstar": [1000, 3000, 10_000, 30_000],
        "d_theory_min": 1000,
        "eps_nstar": [0.1, 0.25, 0.5],
        "sigma_mults": [0.5, 1.0],
        "slope_min_n": 10,
        "draw_budget": 2**18,
        "draws_range": [8, 64],
        "verify": {"d": [10], "n": [10], "reps": 400, "eps": 0.25},
        "measure": {
            "range": [0.02, 0.98],
            "per_curve": 1,
            "draws": 4,
            "budget": 2 * 10**7,
            "max_test": 500,
            "chunk_elems": 2 * 10**6,
            "steps": 5,
        },
        # The curve measurements' sizes (one compiled program serves both).
        "headline": {"d": 100_000, "eps": 0.25},
        "nstar_headline": {"eps": 0.5, "c": 0.5, "measure": {}},
        "at": {
            "d": 100,
            "n": [1, 4, 16],
            "seeds": 3,
            "eps": 0.25,
            "steps": 30,
            "lr_scale": 1.0,
            "pgd_steps": 2,
            "measure": {"max_test": 500},
        },
        "bernoulli": {**BERNOULLI, "d": 200, "n": [1, 4, 16, 64], "draws": 4, "test": 500},
    },
    "full": {
        "sigma_mult": 0.5,
        "target": 0.10,
        "d_curves": [100, 1000, 10_000, 100_000],
        "eps_curves": [0.1, 0.25, 0.5],
        "n_curves": sorted({round(v) for v in np.logspace(0, 3, 31)}),
        "d_nstar": [10, 30, 100, 300, 1000, 3000, 10_000, 30_000, 100_000, 300_000, 1_000_000],
        # Below this the n = ∞ floor Φ(−d^¼(1 − ε)/c) is within ~10× of the target (and
        # above it for c = 1, ε >= 0.3, d = 10): n* is set by the floor, not by ε²√d.
        "d_theory_min": 1000,
        "eps_nstar": [0.05, 0.1, 0.2, 0.3, 0.4, 0.5],
        "sigma_mults": [0.25, 0.5, 1.0],
        # Slopes of log n* vs log d only on rows with integer n* >= 10 at every d >= 1000.
        "slope_min_n": 10,
        "draw_budget": 2**24,
        "draws_range": [16, 4096],
        "verify": {"d": [10, 100], "n": [1, 10, 100], "reps": 2000, "eps": 0.25},
        "measure": {
            "range": [0.02, 0.98],
            "per_curve": 3,
            "draws": 8,
            "budget": 4 * 10**7,  # d × held-out samples × draws, per point
            "max_test": 2000,
            "chunk_elems": 4 * 10**6,
            "steps": 5,
        },
        "headline": {"d": 100_000, "eps": 0.25, "draws": 8, "budget": 10**8},
        "nstar_headline": {"eps": 0.5, "c": 0.5, "measure": {"draws": 8, "budget": 2 * 10**8}},
        "at": {
            "d": 10_000,
            "n": [1, 2, 4, 8, 16, 32, 64],
            "seeds": 3,
            "eps": 0.25,
            "steps": 200,
            "lr_scale": 1.0,
            "pgd_steps": 2,
            "measure": {"max_test": 2000},
        },
        "bernoulli": {
            **BERNOULLI,
            "d": 1000,
            "n": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
            "draws": 8,
            "test": 2000,
        },
    },
}


def acceptance(curves, nstar, meas, head, twins, at, bern, ver) -> dict:
    """The experiment's claims as checked properties (each with how it was obtained)."""
    acc = {}
    if head is not None:
        acc["headline"] = {
            "d": head["d"],
            "n": 1,
            "eps": head["eps"],
            "standard_error": head["standard_closed_form"],
            "standard_error_measured": head["standard_measured"],
            "standard_error_measured_upper95": head["standard_measured_upper95"],
            "robust_error": head["robust_closed_form"],
            "robust_error_measured": head["robust_measured"],
            "robust_agrees": head["robust_agreement"]["agrees"],
        }
    pts = meas["points"]
    acc["pgd_points"] = {
        "count": len(pts),
        "agree_within_3se": meas["agree"],
        "within_ci95": meas["within_ci95"],
        "closed_form_range": [
            min((_cf(r) for r in pts), default=None),
            max((_cf(r) for r in pts), default=None),
        ],
        "draws_per_point": meas["draws"],
        "max_abs_paired_difference": max(
            (abs(r["paired_difference"]["value"]) for r in pts), default=None
        ),
    }
    theory = np.asarray(nstar["d"]) >= nstar["d_theory_min"]
    table = np.asarray(nstar["n_star"], float)[..., theory]  # (eps, c, d), d >= d_theory_min
    finite = bool(np.isfinite(table).all())
    acc["n_star"] = {
        "d_range": [int(min(np.asarray(nstar["d"])[theory])), int(max(nstar["d"]))],
        "finite_everywhere": finite,
        "integer_at_least_1": finite and bool(np.all((table >= 1) & (table == np.round(table)))),
        "nondecreasing_in_d": bool(np.all(np.diff(table, axis=2) >= 0)),
        "nondecreasing_in_eps": bool(np.all(np.diff(table, axis=0) >= 0)),
        # Integer n* is flat over some steps of d (rounding), but wherever more than one
        # sample is needed at the largest d, more are needed there than at the smallest.
        "grows_over_d_range": bool(np.all((table[..., -1] > table[..., 0])[table[..., -1] >= 2])),
        "slope_rows": len(nstar["local_slopes"]),
        "slope_increases_with_d": bool(nstar["local_slopes"])
        and all(np.all(np.diff(s) > 0) for s in nstar["local_slopes"].values()),
        "twins_agree": bool(twins) and all(r["agreement"]["agrees"] for r in twins),
    }
    acc["adversarial_training"] = {
        "pgd_agrees_with_closed_form": at["pgd_checks"]["all_agree"],
        "models_checked": at["pgd_checks"]["models_checked"],
    }
    acc["bernoulli"] = dict(bern["checks"])
    acc["distribution_ks_pvalues_min"] = min(
        min(v["coord_ks_pvalue"], v["robust_error_ks_pvalue"]) for v in ver
    )
    return acc


def _cf(row: dict) -> float:
    return row["robust_closed_form"]["value"]


def main(argv: list[str] | None = None) -> int:
    args = D.parse_args(NAME, argv, __doc__)
    cfg = SETTINGS["smoke" if args.smoke else "full"]
    out = Path(args.out)
    t0 = time.perf_counter()
    key = jax.random.key(args.seed)
    # Its own stream (not one of the split below), so --part digits draws the same numbers.
    k_digits = jax.random.fold_in(key, 2018)
    cfg_digits = SD.DIGITS_SETTINGS["smoke" if args.smoke else "full"]
    if args.part == "digits":
        SD.digits_experiment(k_digits, cfg_digits, out, args.smoke, args.seed)
        return 0
    k_curves, k_nstar, k_ver, k_check, k_at, k_bern = jax.random.split(key, 6)
    k_meas, k_head, k_twin = jax.random.split(k_check, 3)
    timings = {}

    def timed(name, fn, *a):
        t = time.perf_counter()
        res = fn(*a)
        timings[name] = round(time.perf_counter() - t, 2)
        return res

    curves = timed("curves", G.error_curves, k_curves, cfg)
    nstar = timed("n_star", G.nstar_sweep, k_nstar, cfg)
    ver = timed("verify", G.verify_distribution, k_ver, cfg)
    meas = timed("pgd_measurements", M.measure_curves, k_meas, curves, cfg)
    head = timed("headline", M.headline, k_head, curves, cfg)
    twins = timed("n_star_twins", M.nstar_twins, k_twin, nstar, cfg)
    at = timed("adversarial_training", T.adversarial_training, k_at, cfg)
    bern = timed("bernoulli", B.bernoulli_experiment, k_bern, cfg)
    digits = None
    if args.part == "all":
        digits = timed(
            "digits", SD.digits_experiment, k_digits, cfg_digits, out, args.smoke, args.seed
        )
    acc = acceptance(curves, nstar, meas, head, twins, at, bern, ver)

    F.plot_curves(curves, meas, head, out / f"{NAME}_gaussian.png")
    F.plot_nstar(nstar, twins, out / f"{NAME}_nstar.png")
    F.plot_at(at, out / f"{NAME}_adversarial_training.png")
    F.plot_bernoulli(bern, out / f"{NAME}_bernoulli.png")
    F.plot_distribution(ver, out / f"{NAME}_distribution.png")

    data = C.jsonable(
        {
            **C.header(NAME, args.smoke, args.seed, cfg),
            "model": "y ~ U{±1}, x ~ N(y·θ*, σ²I_d), θ* = 1, σ = c·d^(1/4)",
            "curves": curves,
            "curves_method": "closed form, mean over exact draws of ŵ ~ N(θ*, σ²/n·I)",
            "n_star": nstar,
            "n_star_method": "closed form: smallest integer n whose mean closed-form robust "
            "error over exact draws of ŵ is <= target",
            "distribution_check": ver,
            "pgd_measurements": meas,
            "headline": head,
            "n_star_twins": twins,
            "adversarial_training": at,
            "bernoulli": bern,
            "acceptance": acc,
            "timings_s": timings,
            **({"digits": digits} if digits is not None else {}),
        }
    )
    p = acc["pgd_points"]
    lines = [
        f"PGD vs closed form at {p['count']} informative points: {p['agree_within_3se']} within "
        f"3 SE, {p['within_ci95']} within the 95% CI",
        f"n* (integer) nondecreasing in d: {acc['n_star']['nondecreasing_in_d']}, in ε: "
        f"{acc['n_star']['nondecreasing_in_eps']}, slope rising on "
        f"{acc['n_star']['slope_rows']} rows: {acc['n_star']['slope_increases_with_d']}",
        f"linear PGD-AT: PGD agrees on {acc['adversarial_training']['models_checked']} models: "
        f"{acc['adversarial_training']['pgd_agrees_with_closed_form']}",
        f"Bernoulli: {acc['bernoulli']}",
    ]
    if head is not None:
        lines.insert(
            0,
            f"d={head['d']}, n=1, ε={head['eps']}: standard "
            f"{_v(head['standard_closed_form']):.2e} (measured "
            f"{head['standard_measured']['value']:.2e}), robust "
            f"{_v(head['robust_closed_form']):.4f} (measured "
            f"{head['robust_measured']['value']:.4f})",
        )
    C.finish(out, NAME, data, t0, lines)
    return 0


def _v(x):
    return x["value"]


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
