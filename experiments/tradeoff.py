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

    jaxrobust experiment tradeoff [--smoke] [--out DIR] [--seed S]

Writes DIR/tradeoff.json and DIR/tradeoff_{bound,weights,accuracy_vs_eps}.png.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.stats import norm

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


def main(argv: list[str] | None = None) -> int:
    args = C.parse_args(NAME, argv, __doc__)
    cfg = SETTINGS["smoke" if args.smoke else "full"]
    out = Path(args.out)
    t0 = time.perf_counter()
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
