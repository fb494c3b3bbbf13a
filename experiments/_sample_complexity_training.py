"""Adversarial training of a linear model in the Gaussian model, through the library's own
training path (helper module of `jaxrobust experiment sample_complexity`).

The model is a Flax module (a weight vector w, no bias, zero initialisation) whose logits are
(−z/2, z/2) for z = ⟨w, x⟩, so cross-entropy is the logistic loss of y·z. It is trained by
exactly what `jaxrobust train` runs: `TrainState`, the `pgd_at` objective (the library's
ℓ∞ PGD inside, box wide enough never to bind) and `make_train_step`, full batch over the n
samples, optax SGD with momentum. Each training run is a `lax.scan` over train steps,
vmapped over (n, seed): one compiled program for the sweep.
"""

from __future__ import annotations

from functools import partial

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import _sample_complexity_gaussian as G
import _sample_complexity_measure as M
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrobust as jr
from jaxrobust.train import TrainState, make_train_step, pgd_at

Array = jax.Array


class LinearScore(nn.Module):
    """sign(⟨w, x⟩) as a two-class model: x (B, d) -> logits (B, 2) = (−z/2, z/2)."""

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        del train
        w = self.param("w", nn.initializers.zeros, (x.shape[-1],))
        return C.binary_logits(x @ w)


def at_objective(eps: float, pgd_steps: int):
    """The library's PGD-AT objective for the linear model: ℓ∞ ball (box never binds),
    steps of 2ε (the corner −y·ε·sign(w) in one step), margin loss (the cross-entropy
    gradient is exactly 0 once float32 logits saturate at large d)."""
    return pgd_at(C.wide_linf(eps), steps=pgd_steps, step_size=2.0 * eps, attack_loss=jr.margin)


@partial(jax.jit, static_argnames=("d", "n_max", "steps", "pgd_steps", "eps", "lr"))
def _sweep(keys, n_values, sigma, *, eps, lr, d, n_max, steps, pgd_steps):
    """vmapped over (n, seed): ŵ (mean of yx) and the adversarially trained w on the same
    n samples. Returns (N, S, 2, d)."""
    model = LinearScore()
    tx = optax.sgd(lr, momentum=0.9)
    step = make_train_step(at_objective(eps, pgd_steps))

    def one(k, n):
        kd, kt = jax.random.split(k)
        ky, kx = jax.random.split(kd)
        y = jax.random.rademacher(ky, (n_max,)).astype(jnp.float32)
        x = y[:, None] + sigma * jax.random.normal(kx, (n_max, d))
        # Full batch over the first n samples: n divides n_max, so tiling them n_max / n
        # times gives every sample the same weight in the objective's mean.
        idx = jnp.arange(n_max) % n
        batch = {"image": x[idx], "label": C.to_class(y[idx])}
        w_mean = jnp.mean(y[idx][:, None] * x[idx], 0)
        state = TrainState.create(model, tx, kt, (d,))
        state, _ = jax.lax.scan(lambda s, _: step(s, batch), state, None, length=steps)
        return jnp.stack([w_mean, state.params["w"]])

    return jax.vmap(jax.vmap(one, (0, None)), (None, 0))(keys, n_values)


def adversarial_training(key: Array, cfg: dict) -> dict:
    """Train, then errors of ŵ and of the PGD-AT model: closed form for every (n, seed), and
    the trained models attacked by PGD on held-out samples (every n and seed)."""
    at = cfg["at"]
    d, eps, n_list = at["d"], at["eps"], at["n"]
    n_max = max(n_list)
    if any(n_max % n for n in n_list):
        raise ValueError(f"adversarial training sample sizes must divide {n_max}: {n_list}")
    sigma = G.sigma_of(d, cfg["sigma_mult"])
    # lr normalised by E‖x‖² = d(1 + σ²): the first step gives logits of order one.
    lr = at["lr_scale"] / (d * (1 + sigma**2))
    k_train, k_test = jax.random.split(key)
    ws = _sweep(
        jax.random.split(k_train, at["seeds"]),
        jnp.asarray(n_list, jnp.int32),
        jnp.float32(sigma),
        eps=float(eps),
        lr=float(lr),
        d=d,
        n_max=n_max,
        steps=at["steps"],
        pgd_steps=at["pgd_steps"],
    )  # (N, S, 2, d)
    std, rob = G.closed_form(ws, jnp.asarray([eps]), sigma)  # (N, S, 2), (N, S, 2, 1)
    std, rob = np.asarray(std), np.asarray(rob[..., 0])
    # PGD on held-out samples: every trained model (every n, every seed).
    m = {**cfg["measure"], **at["measure"]}
    chunk, chunks = M.held_out_size(d, {**m, "draws": 1})
    tests = chunk * chunks
    rob_pgd = np.zeros(rob.shape[:2])
    for i in range(len(n_list)):
        for s in range(at["seeds"]):
            _, r = M.pgd_gaussian_errors(
                ws[i, s, 1],
                jax.random.fold_in(k_test, i * at["seeds"] + s),
                jnp.asarray([eps], jnp.float32),
                jnp.float32(sigma),
                d=d,
                chunk=chunk,
                chunks=chunks,
                steps=m["steps"],
            )
            rob_pgd[i, s] = float(r[0])
    exact = rob[:, :, 1]
    seeds = at["seeds"]
    se_seeds = lambda v: v.std(-1, ddof=1) / np.sqrt(seeds)  # noqa: E731
    agree = C.agrees(rob_pgd, exact, tests)
    cos = np.asarray(
        jnp.sum(ws[:, :, 0] * ws[:, :, 1], -1)
        / (jnp.linalg.norm(ws[:, :, 0], axis=-1) * jnp.linalg.norm(ws[:, :, 1], axis=-1))
    )
    diff = rob[:, :, 1] - rob[:, :, 0]
    how_cf = f"closed form per trained model, mean over {seeds} seeds (data + init), SE over seeds"
    return {
        "d": d,
        "sigma": sigma,
        "eps": eps,
        "n": n_list,
        "seeds": seeds,
        "train_steps": at["steps"],
        "lr": lr,
        "optimizer": "optax.sgd(lr, momentum=0.9), full batch",
        "objective": f"jaxrobust.train.pgd_at(linf({eps:g}), steps={at['pgd_steps']}, step 2ε, "
        "margin attack loss) + make_train_step + TrainState (what `jaxrobust train` runs)",
        "mean_estimator": {
            "standard": C.closed_form(std[:, :, 0].mean(1), how=how_cf),
            "robust": C.closed_form(rob[:, :, 0].mean(1), how=how_cf),
            "robust_se": se_seeds(rob[:, :, 0]),
        },
        "adversarial_training": {
            "standard": C.closed_form(std[:, :, 1].mean(1), how=how_cf),
            "robust": C.closed_form(rob[:, :, 1].mean(1), how=how_cf),
            "robust_se": se_seeds(rob[:, :, 1]),
            "robust_pgd": C.measured(
                rob_pgd.mean(1),
                n=seeds * tests,
                se=se_seeds(rob_pgd),
                how=f"library PGD on {tests} held-out samples per trained model; mean over "
                f"{seeds} seeds, SE over seeds",
            ),
        },
        "robust_difference_at_minus_mean": C.closed_form(
            diff.mean(1), how="paired per seed (same samples), " + how_cf
        ),
        "robust_difference_se": se_seeds(diff),
        "cosine_at_vs_mean": cos.mean(1),
        "pgd_checks": {
            "test_samples": tests,
            "robust_pgd": rob_pgd,
            "robust_closed_form": exact,
            "agrees": agree,
            "all_agree": bool(agree.all()),
            "models_checked": int(agree.size),
        },
    }
