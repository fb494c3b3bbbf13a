"""The trade-off on real data: MLPs on the UCI digits (not an experiment: the leading `_`
keeps it out of `jaxrobust experiment`'s list; `tradeoff.py --part digits` runs it).

Digits (8x8, 1437 train / 360 test), MLPs trained with the library's `standard()` /
`pgd_at(linf(ε))`, all runs in one vmapped program per objective (`_digits.py`):
(i) clean and PGD accuracy vs ε_train on the full training set at the same budget;
(ii) the low-data regime: standard vs small-ε PGD-AT clean accuracy on nested,
class-balanced subsets (paired: same subsets and seeds); (iii) input-gradient saliency
−∇ₓ CE(f(x), y) of standard vs robust models, with two alignment measures: corr(|∇|, x)
and corr(−∇, μ_y − μ) (class template: class mean minus the mean of class means).

Every accuracy is measured: on the 360 test images per model, averaged over training seeds;
the JSON's headline numbers are `_common.measured` with n = the number of seeds and the
standard error over seeds (the per-seed numbers are kept beside them).
"""

from __future__ import annotations

import time
from pathlib import Path

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import _digits as D
import _tradeoff_plots as P
import jax
import jax.numpy as jnp
import numpy as np

NAME = "tradeoff"
Array = jax.Array

# MLPs on the UCI digits (8x8, pixels in [0, 1]): (i) the full training set for several
# ε_train at the same budget, (ii) small nested subsets, standard vs small-ε PGD-AT, (iii)
# input-gradient saliency of standard vs robust models. All runs share one vmapped program
# per objective.
SETTINGS = {
    "smoke": {
        **D.MLP_SMOKE,
        "steps": 150,
        # 4 x 1 + 2 x 2 x 2 = 12 configurations in one compiled trainer.
        "eps_train": [0.0, 0.1, 0.2, 0.3],
        "seeds": 1,
        "low_n": [20, 50],
        "low_eps": [0.0, 0.05],
        "low_seeds": 2,
        "pgd_steps": 3,
        "eval_steps": 5,
        "eval_restarts": 1,
        "saliency_eps": [0.0, 0.3],
        "separate_standard": False,  # one compiled trainer: compiling dominates at this size
    },
    "full": {
        **D.MLP_FULL,
        "eps_train": [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3],
        "seeds": 3,
        "low_n": [25, 50, 100, 200],
        "low_eps": [0.0, 0.05, 0.1],
        "low_seeds": 5,
        "pgd_steps": 7,
        "eval_steps": 20,
        "eval_restarts": 2,
        "saliency_eps": [0.0, 0.1, 0.2, 0.3],
        "separate_standard": True,  # standard() without PGD passes: less training time
    },
}


def measured_over_seeds(a, what: str, seeds: int, n_test: int) -> dict:
    """A seed-mean of per-seed test numbers (trailing axis: seeds) with its SE over seeds."""
    return C.measured(
        D.seed_mean(a),
        n=seeds,
        se=D.seed_se(a),
        how=f"{what}, on the {n_test} test images, mean over {seeds} training seeds; SE over seeds",
    )


def acceptance(
    cfg: dict,
    n_test: int,
    clean_eps,
    own_mean,
    std_curve,
    low_clean,
    saliency: dict,
) -> dict:
    """The digits claims, from per-seed numbers: clean_eps (E, S) clean accuracy per ε_train
    and seed; own_mean (E,) robust accuracy at each model's own ε_train; std_curve (E,) the
    standard model's accuracy at each attack ε (= the ε_train grid); low_clean
    (E_low, N, S) low-data clean accuracy; saliency: measure -> (E,) seed means."""
    mean, se = D.seed_mean, D.seed_se
    eps_train, low_eps = list(cfg["eps_train"]), list(cfg["low_eps"])
    S_low = cfg["low_seeds"]
    clean_eps, low_clean = np.asarray(clean_eps, float), np.asarray(low_clean, float)
    own_mean, std_curve = np.asarray(own_mean, float), np.asarray(std_curve, float)
    clean_mean = mean(clean_eps)
    change = clean_eps - clean_eps[:1]  # (E, S): clean accuracy minus standard's, paired
    peak = int(np.argmax(clean_mean))
    diff = low_clean[1:] - low_clean[:1]  # (E_low − 1, N, S): AT − standard, paired
    pooled = diff.mean(1)  # (E_low − 1, S): averaged over n, per seed
    sal = {k: np.asarray(v, float) for k, v in saliency.items()}
    at_rows = range(1, len(eps_train))
    by_eps = lambda f: {f"{e:g}": f(k) for k, e in enumerate(low_eps[1:])}  # noqa: E731
    full_change = {f"{e:g}": change[eps_train.index(e)] for e in low_eps[1:] if e in eps_train}
    over_seeds = lambda a, what, seeds: measured_over_seeds(a, what, seeds, n_test)  # noqa: E731
    acc = {
        "clean_minus_standard_pp": over_seeds(
            100 * change,
            "clean accuracy minus the standard model's (pp, paired by seed)",
            cfg["seeds"],
        ),
        "clean_peak_eps_train": eps_train[peak],
        "clean_peak_interior": bool(0 < peak < len(eps_train) - 1),
        # Small ε_train raises clean accuracy (by > 2 SE, paired) up to the peak ...
        "clean_above_standard_up_to_peak": bool(
            peak > 0 and np.all(mean(change)[1 : peak + 1] > 2 * se(change)[1 : peak + 1])
        ),
        # ... and it falls only beyond it.
        "clean_nonincreasing_beyond_peak": bool(np.all(np.diff(clean_mean[peak:]) <= 0)),
        "clean_monotone_nonincreasing": bool(np.all(np.diff(clean_mean) <= 0)),
        "clean_at_max_eps_below_standard": bool(mean(change)[-1] < -2 * se(change)[-1]),
        "at_more_robust_than_standard_at_own_eps": bool(np.all(own_mean[1:] > std_curve[1:])),
        "robust_at_own_eps_decreasing": bool(np.all(np.diff(own_mean) < 0)),
        "low_data_at_minus_standard_pp": by_eps(
            lambda k: over_seeds(
                100 * diff[k], "AT minus standard clean accuracy (pp), per n", S_low
            )
        ),
        "low_data_at_better_by_2se": by_eps(lambda k: (mean(diff[k]) > 2 * se(diff[k])).tolist()),
        "low_data_at_worse_by_2se": by_eps(lambda k: (mean(diff[k]) < -2 * se(diff[k])).tolist()),
        "low_data_pooled_at_minus_standard_pp": by_eps(
            lambda k: over_seeds(
                100 * pooled[k], "AT minus standard clean accuracy (pp), averaged over n", S_low
            )
        ),
        "low_data_at_helps": by_eps(lambda k: bool(mean(pooled[k]) > 2 * se(pooled[k]))),
        # The same ε_train on the full training set: is the gain specific to low data?
        "full_set_at_helps": {e: bool(mean(c) > 2 * se(c)) for e, c in full_change.items()},
        "robust_abs_grad_more_on_strokes": bool(
            all(sal["abs_grad_vs_image"][i] > sal["abs_grad_vs_image"][0] for i in at_rows)
        ),
        "robust_descent_more_like_template": bool(
            all(sal["descent_vs_template"][i] > sal["descent_vs_template"][0] for i in at_rows)
        ),
        "robust_gradients_sparser": bool(
            all(sal["effective_pixels"][i] < sal["effective_pixels"][0] for i in at_rows)
        ),
    }
    return acc


def digits_experiment(key: Array, cfg: dict, out: Path, smoke: bool, seed: int) -> dict:
    """The real-data trade-off on digits; writes out/tradeoff_digits.{json,png} and
    out/tradeoff_saliency.png, returns the JSON dict."""
    t0 = time.perf_counter()
    x, y, x_test, y_test = D.load()
    model = D.make_model(cfg["hidden"])
    k_eps, k_low, k_eval = jax.random.split(key, 3)
    eps_train, low_eps, low_n = cfg["eps_train"], cfg["low_eps"], cfg["low_n"]
    g_eps = D.grid_configs(k_eps, y, eps_train, [int(x.shape[0])], cfg["seeds"])
    g_low = D.grid_configs(k_low, y, low_eps, low_n, cfg["low_seeds"])
    configs = D.concat_configs(g_eps, g_low)
    params, losses, train_time = D.timed_sweep(model, x, y, configs, cfg)

    # Evaluation jobs (one compiled attack): every full-data model at every ε in eps_train
    # (accuracy-vs-ε curves; the diagonal is each model's own ε_train), and every low-data
    # model at its own ε_train (ε = 0: clean).
    t = time.perf_counter()
    sl_eps, sl_low = configs["slices"]
    n_eps = sl_eps.stop
    n_attack = len(eps_train)
    job_idx = np.concatenate(
        [np.repeat(np.arange(n_eps), n_attack), np.arange(sl_low.start, sl_low.stop)]
    )
    job_eps = np.concatenate(
        [np.tile(np.asarray(eps_train, np.float32), n_eps), np.asarray(configs["eps"][sl_low])]
    )
    clean, rob = D.evaluate_jobs(
        model,
        params,
        x_test,
        y_test,
        k_eval,
        jnp.asarray(job_idx),
        jnp.asarray(job_eps),
        steps=cfg["eval_steps"],
        restarts=cfg["eval_restarts"],
    )
    clean, rob = np.asarray(clean.mean(1)), np.asarray(rob.mean(1))
    curves = rob[: n_eps * n_attack].reshape(len(eps_train), cfg["seeds"], n_attack)  # (E, S, A)
    clean_eps = clean[: n_eps * n_attack : n_attack].reshape(len(eps_train), cfg["seeds"])
    own = np.stack([curves[i, :, i] for i in range(len(eps_train))])  # (E, S)
    low_shape = g_low["shape"]  # (E_low, N_low, S_low)
    low_clean = clean[n_eps * n_attack :].reshape(low_shape)
    low_rob = rob[n_eps * n_attack :].reshape(low_shape)
    eval_time = time.perf_counter() - t

    # (iii) saliency: input gradients of every full-data model on the whole test set.
    t = time.perf_counter()
    p_eps = jax.tree.map(lambda a: a[sl_eps], params)
    grads, measures = D.saliency_many(model, p_eps, x_test, y_test, D.class_means(x, y))
    measures = {
        k: np.asarray(v.mean(-1)).reshape(len(eps_train), cfg["seeds"]) for k, v in measures.items()
    }
    show = D.pick_one_per_class(y_test)
    sal_rows = [eps_train.index(e) * cfg["seeds"] for e in cfg["saliency_eps"]]  # seed 0
    examples = {
        "test_index": show,
        "images": np.asarray(x_test[show, ..., 0]),
        "labels": np.asarray(y_test[show]),
        "eps_train": cfg["saliency_eps"],
        "gradients": np.asarray(grads)[np.asarray(sal_rows)][:, show][..., 0],  # (M, 10, 8, 8)
    }
    saliency_time = time.perf_counter() - t

    mean = D.seed_mean
    S, S_low, n_test = cfg["seeds"], cfg["low_seeds"], int(x_test.shape[0])
    clean_mean, own_mean = mean(clean_eps), mean(own)
    diff = low_clean[1:] - low_clean[:1]  # (E_low − 1, N, S): AT − standard, paired
    attack = f"PGD-{cfg['eval_steps']}x{cfg['eval_restarts']}"
    over_seeds = lambda a, what, seeds=S: measured_over_seeds(a, what, seeds, n_test)  # noqa: E731
    acc = acceptance(
        cfg,
        n_test,
        clean_eps,
        own_mean,
        mean(curves[0].T),
        low_clean,
        {k: mean(v) for k, v in measures.items()},
    )
    data = {
        **D.report_header(NAME, smoke, seed, cfg, x, x_test),
        "eps_sweep": {
            "eps_train": eps_train,
            "clean_test": over_seeds(clean_eps, "clean accuracy"),
            "robust_test_at_eps_train": over_seeds(own, f"accuracy under {attack} at ε_train"),
            "attack_eps": eps_train,
            "accuracy_vs_attack_eps": over_seeds(
                np.moveaxis(curves, 1, -1), f"accuracy under {attack} (rows: model, cols: ε)"
            ),
            "per_seed_clean": clean_eps,
            "per_seed_robust_at_eps_train": own,
        },
        "low_data": {
            "n": low_n,
            "eps_train": low_eps,
            "clean_test": over_seeds(low_clean, "clean accuracy (rows: ε_train, cols: n)", S_low),
            "at_minus_standard": over_seeds(diff, "AT minus standard clean accuracy", S_low),
            "robust_test_at_eps_train": over_seeds(
                low_rob, f"accuracy under {attack} at ε_train", S_low
            ),
            "per_seed_clean": low_clean,
        },
        "saliency": {
            "eps_train": eps_train,
            "measures": {
                k: over_seeds(v, f"test-set mean of the per-example {k}")
                for k, v in measures.items()
            },
            "examples": examples,
        },
        "final_train_loss": np.asarray(losses[:, -50:].mean(1)),
        "acceptance": acc,
        "train_time_s": round(train_time, 2),
        "eval_time_s": round(eval_time, 2),
        "saliency_time_s": round(saliency_time, 2),
    }
    P.plot_digits(data, out / f"{NAME}_digits.png")
    P.plot_saliency(data, out / f"{NAME}_saliency.png")
    lines = [
        f"ε_train {eps_train}: clean {np.round(clean_mean, 3).tolist()}, robust at ε_train "
        f"{np.round(own_mean, 3).tolist()}",
        f"low data n={low_n}: AT − standard clean (pp) "
        + str({k: v["value"] for k, v in acc["low_data_at_minus_standard_pp"].items()}),
        "saliency "
        + ", ".join(f"{k} {np.round(mean(v), 3).tolist()}" for k, v in measures.items()),
        "acceptance: "
        + str({k: v for k, v in acc.items() if not isinstance(v, dict) or "method" not in v}),
    ]
    D.write(out, NAME, data, t0, lines)
    return data
