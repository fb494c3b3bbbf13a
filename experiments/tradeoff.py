"""Robustness may be at odds with accuracy (Tsipras et al. 2019): the synthetic model.

y uniform in {±1}; x₁ = y with probability p, else −y (one robust, moderately predictive
feature); x₂..x_{d+1} ~ N(ηy, 1) with η = 3/√d (many weak, non-robust features: their
average alone is > 99% accurate). An ℓ∞ adversary with ε = 2η shifts every weak feature to
N(−ηy, 1), so it flips their meaning, while x₁ still carries its sign. Theorem (Tsipras et
al.): any classifier with standard accuracy 1 − δ has robust accuracy at ε ≥ 2η at most
p·δ/(1 − p).

A linear model (`jaxrobust.models.MLP` with no hidden layer, two logits) is trained with the
library's `TrainState` / `make_train_step` and the objectives `standard()` and
`pgd_at(linf(ε_train))` (box ±1e6: the inputs are unbounded) for several ε_train; the
adversarially trained models share one compiled, vmapped training run over ε_train.
For a linear score z = ⟨v, x⟩ + b (v = difference of the two logit rows) accuracy is
closed form: with s = y·x₁ ∈ {±1} (P(+1) = p) and y·Σ vᵢxᵢ ~ N(η·Σvᵢ, ‖v_weak‖₂²),

    acc(ε) = ½ Σ_y Σ_s P(s) · Φ((v₁·s + η·Σv_weak + y·b − ε·‖v‖₁) / ‖v_weak‖₂),

(ε = 0: standard accuracy; the ℓ∞ worst case of a linear model lowers y·z by ε‖v‖₁), and
the library's PGD on held-out samples checks it.

Real data (UCI digits, 8x8, 1437 train / 360 test), MLPs trained with the library's
`standard()` / `pgd_at(linf(ε))`, all runs in one vmapped program per objective:
(i) clean and PGD accuracy vs ε_train on the full training set at the same budget;
(ii) the low-data regime: standard vs small-ε PGD-AT clean accuracy on nested,
class-balanced subsets (paired: same subsets and seeds); (iii) input-gradient saliency
−∇ₓ CE(f(x), y) of standard vs robust models, with two alignment measures: corr(|∇|, x)
and corr(−∇, μ_y − μ) (class template: class mean minus the mean of class means).

    jaxrobust experiment tradeoff [--smoke] [--out DIR] [--seed S] [--part all|synthetic|digits]

Writes DIR/tradeoff.json and DIR/tradeoff_{bound,weights,accuracy_vs_eps}.png (synthetic),
and DIR/tradeoff_digits.{json,png}, DIR/tradeoff_saliency.png (digits; with --part all the
digits results are also under "digits" in tradeoff.json).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import _digits as D
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.stats import norm
from scipy import stats as sps

import jaxrobust as jr
from jaxrobust import report
from jaxrobust.models import MLP
from jaxrobust.train import TrainState, make_train_step, pgd_at, standard

NAME = "tradeoff"
Array = jax.Array

SETTINGS = {
    "smoke": {
        "d": 400,
        "p": 0.95,
        "eta_mult": 3.0,
        "train": 4000,
        "test": 2000,
        "batch": 500,
        "epochs": 8,
        "lr": 0.02,
        "eps_train_over_eta": [1.0, 2.0, 3.0],
        "pgd_steps": 5,
        "eval_pgd_steps": 5,
        "eps_curve_over_eta": np.linspace(0, 4, 9).tolist(),
    },
    "full": {
        "d": 400,
        "p": 0.95,
        "eta_mult": 3.0,
        "train": 20_000,
        "test": 20_000,
        "batch": 500,
        "epochs": 40,
        "lr": 0.02,
        "eps_train_over_eta": [0.25, 0.5, 1.0, 1.5, 2.0, 3.0],
        "pgd_steps": 10,
        "eval_pgd_steps": 10,
        "eps_curve_over_eta": np.linspace(0, 4, 33).tolist(),
    },
}


def sample(key: Array, m: int, d: int, p: float, eta: float) -> tuple[Array, Array]:
    """m samples of the model: x (m, d+1) float32, y (m,) in {±1}."""
    ky, k1, k2 = jax.random.split(key, 3)
    y = jax.random.rademacher(ky, (m,)).astype(jnp.float32)
    agree = jax.random.bernoulli(k1, p, (m,))
    x1 = jnp.where(agree, y, -y)
    weak = eta * y[:, None] + jax.random.normal(k2, (m, d))
    return jnp.concatenate([x1[:, None], weak], axis=1), y


def linear_view(params) -> tuple[Array, Array]:
    """(v (d+1,), b): the score z = ⟨v, x⟩ + b whose sign is the MLP(hidden=())'s decision."""
    k, b = params["head"]["kernel"], params["head"]["bias"]
    return k[:, 1] - k[:, 0], b[1] - b[0]


def accuracy(v: Array, b: Array, eps: Array, p: float, eta: float) -> Array:
    """Closed-form ℓ∞-robust accuracy at eps (scalar or (E,)) of sign(⟨v, x⟩ + b)."""
    eps = jnp.asarray(eps)[..., None, None]  # (..., y, s)
    weak = v[1:]
    scale = jnp.maximum(jnp.linalg.norm(weak), 1e-30)  # v_weak = 0: a step function
    yb = jnp.array([1.0, -1.0])[:, None] * b
    s = jnp.array([1.0, -1.0])[None, :]
    ps = jnp.array([p, 1 - p])[None, :]
    mean = v[0] * s + eta * jnp.sum(weak) + yb - eps * jnp.sum(jnp.abs(v))
    return jnp.sum(0.5 * ps * norm.cdf(mean / scale), axis=(-2, -1))


def bound(std_acc: Array, p: float) -> Array:
    """Tsipras et al.'s upper bound on robust accuracy (ε >= 2η) given standard accuracy."""
    return jnp.minimum(1.0, p * (1.0 - std_acc) / (1.0 - p))


def _batches(key: Array, n: int, batch: int, epochs: int) -> Array:
    """Index array (epochs·n//batch, batch): a fresh permutation every epoch."""
    per = n // batch
    perms = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, epochs))
    return perms[:, : per * batch].reshape(epochs * per, batch)


def make_trainer(objective_for_eps, x, y, idx):
    """train(eps, state0) -> params: the library's train step driven by lax.scan.

    `objective_for_eps(eps)` builds the objective; eps may be traced, so vmapping `train`
    over eps gives one compiled program for every ε_train.
    """
    cls = C.to_class(y)

    def train(eps, state0):
        step = make_train_step(objective_for_eps(eps))

        def body(state, ib):
            state, metrics = step(state, {"image": x[ib], "label": cls[ib]})
            return state, metrics["loss"]

        state, losses = jax.lax.scan(body, state0, idx)
        return state.params, losses

    return train


@partial(jax.jit, static_argnames=("steps",))
def pgd_accuracy(params, x, y, key, eps, *, steps):
    """The library's PGD ℓ∞ robust accuracy of the MLP(hidden=()) at eps on (x, y)."""
    model = MLP(hidden=(), num_classes=2)
    f = jr.as_logits_fn(model, {"params": params})
    return 1.0 - C.pgd_error(f, x, y, key, C.wide_linf(eps), steps)


# -------------------------------------------------------------------- real data: digits

# MLPs on the UCI digits (8x8, pixels in [0, 1]): (i) the full training set for several
# ε_train at the same budget, (ii) small nested subsets, standard vs small-ε PGD-AT, (iii)
# input-gradient saliency of standard vs robust models. All runs share one vmapped program
# per objective.
DIGITS_SETTINGS = {
    "smoke": {
        "hidden": [64],
        "steps": 150,
        "batch": 32,
        "lr": 3e-3,
        # 4 x 1 + 2 x 2 x 2 = 12 configurations, like sample_complexity's smoke grid: the
        # same compiled trainer, so a test session's compilation cache serves both.
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
        "hidden": [256, 256],
        "steps": 2000,
        "batch": 64,
        "lr": 2e-3,
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

    mean, se = D.seed_mean, D.seed_se
    clean_mean, own_mean = mean(clean_eps), mean(own)
    rho = float(sps.spearmanr(eps_train, clean_mean).statistic)
    change = clean_eps - clean_eps[:1]  # (E, S): clean accuracy minus standard's, paired
    peak = int(np.argmax(clean_mean))
    diff = low_clean[1:] - low_clean[:1]  # (E_low − 1, N, S): AT − standard, paired
    pooled = diff.mean(1)  # (E_low − 1, S): averaged over n, per seed
    sal = {k: mean(v) for k, v in measures.items()}
    at_rows = range(1, len(eps_train))
    pp = lambda a: (100 * np.asarray(a)).round(2).tolist()  # noqa: E731
    by_eps = lambda f: {f"{e:g}": f(k) for k, e in enumerate(low_eps[1:])}  # noqa: E731
    acc = {
        "clean_drop_pp_eps0_to_max": 100 * float(clean_mean[0] - clean_mean[-1]),
        "clean_minus_standard_pp": pp(mean(change)),
        "clean_minus_standard_se_pp": pp(se(change)),
        "clean_spearman_vs_eps_train": rho,
        "clean_falls_as_eps_train_grows": bool(clean_mean[-1] < clean_mean[0] and rho < 0),
        "clean_monotone_nonincreasing": bool(np.all(np.diff(clean_mean) <= 0)),
        "clean_peak_eps_train": eps_train[peak],
        "clean_nonincreasing_beyond_peak": bool(np.all(np.diff(clean_mean[peak:]) <= 0)),
        "clean_at_max_eps_below_standard": bool(mean(change)[-1] < -2 * se(change)[-1]),
        "at_more_robust_than_standard_at_own_eps": bool(
            np.all(own_mean[1:] > mean(curves[0, :, 1:].T))
        ),
        "low_data_at_minus_standard_pp": by_eps(lambda k: pp(mean(diff[k]))),
        "low_data_at_minus_standard_se_pp": by_eps(lambda k: pp(se(diff[k]))),
        "low_data_at_better_by_2se": by_eps(lambda k: (mean(diff[k]) > 2 * se(diff[k])).tolist()),
        "low_data_at_worse_by_2se": by_eps(lambda k: (mean(diff[k]) < -2 * se(diff[k])).tolist()),
        "low_data_pooled_at_minus_standard_pp": by_eps(
            lambda k: [pp(mean(pooled[k])), pp(se(pooled[k]))]
        ),
        "low_data_at_helps": by_eps(lambda k: bool(mean(pooled[k]) > 2 * se(pooled[k]))),
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
    data = {
        **D.report_header(NAME, smoke, seed, cfg, x, x_test),
        "eps_sweep": {
            "eps_train": eps_train,
            "clean_test": clean_mean,
            "clean_test_se": se(clean_eps),
            "robust_test_at_eps_train": own_mean,
            "robust_test_at_eps_train_se": se(own),
            "attack_eps": eps_train,
            "accuracy_vs_attack_eps": mean(np.moveaxis(curves, 1, -1)),  # (E, A)
            "per_seed_clean": clean_eps,
            "per_seed_robust_at_eps_train": own,
        },
        "low_data": {
            "n": low_n,
            "eps_train": low_eps,
            "clean_test": mean(low_clean),  # (E_low, N)
            "clean_test_se": se(low_clean),
            "at_minus_standard": mean(diff),  # (E_low − 1, N)
            "at_minus_standard_se": se(diff),
            "robust_test_at_eps_train": mean(low_rob),
            "per_seed_clean": low_clean,
        },
        "saliency": {
            "eps_train": eps_train,
            "measures": {k: mean(v) for k, v in measures.items()},
            "measures_se": {k: se(v) for k, v in measures.items()},
            "examples": examples,
        },
        "final_train_loss": np.asarray(losses[:, -50:].mean(1)),
        "acceptance": acc,
        "train_time_s": round(train_time, 2),
        "eval_time_s": round(eval_time, 2),
        "saliency_time_s": round(saliency_time, 2),
    }
    plot_digits(data, out / f"{NAME}_digits.png")
    plot_saliency(data, out / f"{NAME}_saliency.png")
    lines = [
        f"ε_train {eps_train}: clean {np.round(clean_mean, 3).tolist()}, robust at ε_train "
        f"{np.round(own_mean, 3).tolist()}",
        f"low data n={low_n}: AT − standard clean (pp) {acc['low_data_at_minus_standard_pp']}",
        "saliency "
        + ", ".join(f"{k} {np.round(mean(v), 3).tolist()}" for k, v in measures.items()),
        f"acceptance: {acc}",
    ]
    D.write(out, NAME, data, t0, lines)
    return data


def plot_digits(data: dict, path: Path) -> None:
    """2x2: clean accuracy vs ε_train (zoomed: the changes are a few pp), robust accuracy at
    ε_train, accuracy vs attack ε per model, low-data clean accuracy vs n; mean ± SE."""
    fig, axes = C.figure(2, 2, (5.2, 3.8))
    sw = data["eps_sweep"]
    e = np.asarray(sw["eps_train"])
    ax = axes[0, 0]
    ax.errorbar(e, sw["clean_test"], sw["clean_test_se"], fmt="k-o", ms=3, label="PGD-AT")
    ax.axhline(sw["clean_test"][0], color="0.5", ls=":", lw=1, label="standard (ε_train = 0)")
    ax.set_xlabel("ε_train (ℓ∞, pixels in [0, 1])")
    ax.set_ylabel("clean test accuracy")
    ax.set_title("clean accuracy, full training set, same budget", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    ax.errorbar(
        e,
        sw["robust_test_at_eps_train"],
        sw["robust_test_at_eps_train_se"],
        fmt="C3-s",
        ms=3,
        label="PGD-AT, attacked at ε = ε_train",
    )
    ax.plot(e, np.asarray(sw["accuracy_vs_attack_eps"])[0], "k:o", ms=3, label="standard")
    ax.set_xlabel("ε_train = attack ε")
    ax.set_ylabel("robust test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("robust accuracy at the training ε", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1, 0]
    curves = np.asarray(sw["accuracy_vs_attack_eps"])
    for i, et in enumerate(e):
        name = "standard" if et == 0 else f"PGD-AT ε={et:g}"
        ax.plot(sw["attack_eps"], curves[i], "-o", ms=3, color=f"C{i}", label=name)
    ax.set_xlabel("attack ε (PGD ℓ∞)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("accuracy vs attack ε", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1, 1]
    low = data["low_data"]
    for i, et in enumerate(low["eps_train"]):
        name = "standard" if et == 0 else f"PGD-AT ε={et:g}"
        ax.errorbar(
            low["n"],
            np.asarray(low["clean_test"])[i],
            np.asarray(low["clean_test_se"])[i],
            fmt="-o",
            ms=3,
            color="k" if et == 0 else f"C{i}",
            label=name,
        )
    ax.set_xscale("log")
    ax.set_xticks(low["n"], [str(n) for n in low["n"]])
    ax.minorticks_off()
    ax.set_xlabel("training samples n (class-balanced, nested)")
    ax.set_ylabel("clean test accuracy")
    ax.set_title("low-data regime (paired: same subsets and seeds)", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    C.save(fig, path)


def plot_saliency(data: dict, path: Path) -> None:
    """Test images (one per class) and −∇ₓ loss of models trained at each saliency ε."""
    ex = data["saliency"]["examples"]
    images, grads = np.asarray(ex["images"]), np.asarray(ex["gradients"])
    k = images.shape[0]
    fig, axes = C.figure(1 + grads.shape[0], k, (1.1, 1.2))
    for j in range(k):
        axes[0, j].imshow(images[j], cmap="gray_r", vmin=0, vmax=1)
        axes[0, j].set_title(f"y={int(ex['labels'][j])}", fontsize=8)
        for r in range(grads.shape[0]):
            g = -grads[r, j]  # the loss-decreasing direction: "more of the true class"
            m = max(float(np.abs(g).max()), 1e-30)
            axes[r + 1, j].imshow(g, cmap="RdBu_r", vmin=-m, vmax=m)
    sal = data["saliency"]
    eps_all = list(sal["eps_train"])
    for r, et in enumerate(ex["eps_train"]):
        i = eps_all.index(et)
        corr = np.asarray(sal["measures"]["abs_grad_vs_image"])[i]
        eff = np.asarray(sal["measures"]["effective_pixels"])[i]
        name = "standard" if et == 0 else f"AT ε={et:g}"
        axes[r + 1, 0].set_ylabel(f"{name}\nρ={corr:.2f}\n{eff:.0f} px", fontsize=7)
    axes[0, 0].set_ylabel("image", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "−∇ₓ CE(f(x), y), red +, blue − (ρ: corr(|∇|, x); px: effective pixels (‖∇‖₁/‖∇‖₂)²;"
        " test-set means)",
        fontsize=9,
    )
    C.save(fig, path)


def main(argv: list[str] | None = None) -> int:
    args = D.parse_args(NAME, argv, __doc__)
    cfg = SETTINGS["smoke" if args.smoke else "full"]
    out = Path(args.out)
    t0 = time.perf_counter()
    # Its own stream (not one of the split below), so --part digits draws the same numbers.
    k_digits = jax.random.fold_in(jax.random.key(args.seed), 2019)
    cfg_digits = DIGITS_SETTINGS["smoke" if args.smoke else "full"]
    if args.part == "digits":
        digits_experiment(k_digits, cfg_digits, out, args.smoke, args.seed)
        return 0
    d, p = cfg["d"], cfg["p"]
    eta = cfg["eta_mult"] / np.sqrt(d)
    eps_attack = 2 * eta
    k_data, k_test, k_init, k_order, k_pgd = jax.random.split(jax.random.key(args.seed), 5)
    x, y = sample(k_data, cfg["train"], d, p, eta)
    x_test, y_test = sample(k_test, cfg["test"], d, p, eta)

    model = MLP(hidden=(), num_classes=2)  # linear: Dense(2) on the raw inputs
    steps = cfg["epochs"] * (cfg["train"] // cfg["batch"])
    tx = optax.adam(optax.cosine_decay_schedule(cfg["lr"], steps))
    state0 = TrainState.create(model, tx, k_init, (d + 1,))
    idx = _batches(k_order, cfg["train"], cfg["batch"], cfg["epochs"])

    t_train = time.perf_counter()
    train_std = make_trainer(lambda e: standard(), x, y, idx)
    train_at = make_trainer(
        lambda e: pgd_at(C.wide_linf(e), steps=cfg["pgd_steps"]),
        x,
        y,
        idx,
    )
    params_std, loss_std = jax.jit(train_std)(0.0, state0)
    eps_train = jnp.asarray(cfg["eps_train_over_eta"], jnp.float32) * eta
    params_at, loss_at = jax.jit(jax.vmap(train_at, (0, None)))(eps_train, state0)
    train_time = time.perf_counter() - t_train

    # Every model as (v, b): standard, the adversarially trained ones, and two references.
    v_std, b_std = linear_view(params_std)
    v_at, b_at = jax.vmap(linear_view)(params_at)
    bayes = jnp.concatenate([jnp.array([np.log(p / (1 - p))]), jnp.full((d,), 2 * eta)])
    x1_only = jnp.zeros(d + 1).at[0].set(1.0)
    names = ["standard"] + [f"PGD-AT ε={r:g}η" for r in cfg["eps_train_over_eta"]]
    vs = jnp.concatenate([v_std[None], v_at])
    bs = jnp.concatenate([b_std[None], b_at])

    acc_fn = jax.jit(jax.vmap(accuracy, (0, 0, None, None, None)), static_argnums=(3, 4))
    std_acc = np.asarray(acc_fn(vs, bs, 0.0, p, eta))
    rob_acc = np.asarray(acc_fn(vs, bs, eps_attack, p, eta))
    eps_curve = np.asarray(cfg["eps_curve_over_eta"]) * eta
    curves = np.asarray(acc_fn(vs, bs, jnp.asarray(eps_curve), p, eta))  # (models, E)

    # Reference family: Bayes-optimal standard classifier blended towards x₁ only.
    alphas = jnp.linspace(0.0, 1.0, 41)
    blend_v = (1 - alphas)[:, None] * bayes / jnp.linalg.norm(bayes) + alphas[:, None] * x1_only
    blend_b = jnp.zeros_like(alphas)
    blend_std = np.asarray(acc_fn(blend_v, blend_b, 0.0, p, eta))
    blend_rob = np.asarray(acc_fn(blend_v, blend_b, eps_attack, p, eta))

    # PGD check on held-out samples (one compiled attack, parameters stacked).
    all_params = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), params_std, params_at)
    pgd_rob = np.asarray(
        jax.lax.map(
            lambda prm: pgd_accuracy(
                prm, x_test, y_test, k_pgd, eps_attack, steps=cfg["eval_pgd_steps"]
            ),
            all_params,
        )
    )
    test_std = np.asarray(
        jax.vmap(lambda v, b: jnp.mean(((x_test @ v + b) > 0) == (y_test > 0)))(vs, bs)
    )
    m = cfg["test"]

    bound_at_models = np.asarray(bound(jnp.asarray(std_acc), p))
    weights = {
        "v1": np.asarray(vs[:, 0]),
        "weak_l1": np.asarray(jnp.sum(jnp.abs(vs[:, 1:]), 1)),
        "weak_mean": np.asarray(jnp.mean(vs[:, 1:], 1)),
        "x1_share_of_l1": np.asarray(jnp.abs(vs[:, 0]) / jnp.sum(jnp.abs(vs), 1)),
        "bias": np.asarray(bs),
    }
    models = []
    for i, name in enumerate(names):
        models.append(
            {
                "name": name,
                "eps_train": 0.0 if i == 0 else float(eps_train[i - 1]),
                "standard_accuracy": float(std_acc[i]),
                "robust_accuracy": float(rob_acc[i]),
                "robust_accuracy_pgd": float(pgd_rob[i]),
                "standard_accuracy_test": float(test_std[i]),
                "pgd_agrees": bool(C.agrees(pgd_rob[i], rob_acc[i], m)),
                "bound": float(bound_at_models[i]),
                **{k: float(v[i]) for k, v in weights.items()},
            }
        )

    at_big = [r for r in models if r["eps_train"] >= 2 * eta - 1e-6]
    acc = {
        "standard_model_standard_ge_99": models[0]["standard_accuracy"] >= 0.99,
        "standard_model_robust_le_2": models[0]["robust_accuracy"] <= 0.02,
        "at_eps_ge_2eta_within_1pp_of_p": bool(at_big)
        and all(
            abs(r["standard_accuracy"] - p) <= 0.01 and abs(r["robust_accuracy"] - p) <= 0.01
            for r in at_big
        ),
        "no_model_beats_bound": all(r["robust_accuracy"] <= r["bound"] + 1e-6 for r in models)
        and bool(np.all(blend_rob <= np.asarray(bound(jnp.asarray(blend_std), p)) + 1e-6)),
        "pgd_agrees_with_closed_form": all(r["pgd_agrees"] for r in models),
    }

    digits = None
    if args.part == "all":
        digits = digits_experiment(k_digits, cfg_digits, out, args.smoke, args.seed)

    # ---- figures
    fig, axes = C.figure(1, 1, (6.0, 4.6))
    ax = axes[0, 0]
    grid = np.linspace(min(0.9, float(std_acc.min()) - 0.01), 1.0, 400)
    ax.plot(grid, np.asarray(bound(jnp.asarray(grid), p)), "k-", label="bound p·δ/(1−p)")
    ax.fill_between(
        grid,
        np.asarray(bound(jnp.asarray(grid), p)),
        1.0,
        color="0.9",
        label="impossible (Tsipras et al.)",
    )
    ax.plot(blend_std, blend_rob, "-", color="0.5", lw=1, label="Bayes → x₁-only blend")
    for i, r in enumerate(models):
        ax.plot(r["standard_accuracy"], r["robust_accuracy"], "o", color=f"C{i}", label=r["name"])
        ax.plot(r["standard_accuracy_test"], r["robust_accuracy_pgd"], "x", color=f"C{i}")
    ax.set_xlim(grid[0], 1.0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("standard accuracy")
    ax.set_ylabel(f"ℓ∞ robust accuracy at ε = 2η = {eps_attack:.3f}")
    ax.set_title(f"d={d}, p={p}, η=3/√d (o closed form, x PGD on test)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    C.save(fig, out / f"{NAME}_bound.png")

    fig, axes = C.figure(1, 2, (5.0, 3.8))
    xs = np.arange(len(models))
    axes[0, 0].bar(xs, weights["x1_share_of_l1"], color=[f"C{i}" for i in xs])
    axes[0, 0].set_ylabel("|v₁| / ‖v‖₁ (weight share of x₁)")
    axes[0, 1].bar(xs - 0.2, weights["v1"], 0.4, label="v₁ (robust feature)")
    axes[0, 1].bar(xs + 0.2, weights["weak_l1"], 0.4, label="Σ|vᵢ| (weak features)")
    axes[0, 1].set_ylabel("weight")
    axes[0, 1].legend(fontsize=7)
    for ax in axes[0]:
        ax.set_xticks(xs, [n.replace("PGD-AT ", "AT ") for n in names], rotation=30, fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    C.save(fig, out / f"{NAME}_weights.png")

    report.plot_accuracy_vs_eps(
        {name: (eps_curve / eta, curves[i]) for i, name in enumerate(names)},
        out / f"{NAME}_accuracy_vs_eps.png",
        title="closed-form ℓ∞ robust accuracy",
        xlabel="attack ε / η",
    )

    data = C.jsonable(
        {
            "experiment": NAME,
            "smoke": args.smoke,
            "seed": args.seed,
            "settings": {
                **cfg,
                "eta": eta,
                "eps_attack": eps_attack,
                "train_steps": steps,
                "model": "MLP(hidden=(), num_classes=2) (linear)",
            },
            "models": models,
            "references": {
                "bayes_standard": {
                    "standard_accuracy": float(blend_std[0]),
                    "robust_accuracy": float(blend_rob[0]),
                },
                "x1_only": {
                    "standard_accuracy": float(blend_std[-1]),
                    "robust_accuracy": float(blend_rob[-1]),
                },
            },
            "blend": {
                "alpha": np.asarray(alphas),
                "standard_accuracy": blend_std,
                "robust_accuracy": blend_rob,
            },
            "accuracy_vs_eps": {"eps": eps_curve, "accuracy": curves, "names": names},
            "final_train_loss": {
                "standard": float(loss_std[-1]),
                "adversarial": np.asarray(loss_at[:, -1]),
            },
            "train_time_s": round(train_time, 2),
            "acceptance": acc,
            **({"digits": digits} if digits is not None else {}),
        }
    )
    lines = [
        f"{r['name']:>16}: standard {r['standard_accuracy']:.4f}, robust@2η "
        f"{r['robust_accuracy']:.4f} (PGD {r['robust_accuracy_pgd']:.4f}), x₁ share "
        f"{r['x1_share_of_l1']:.3f}"
        for r in models
    ] + [f"acceptance: {acc}"]
    C.finish(out, NAME, data, t0, lines)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
