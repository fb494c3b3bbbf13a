"""Robust generalization needs more data (Schmidt et al. 2018): the Gaussian and Bernoulli models.

Gaussian model: y uniform in {±1}, x ~ N(y·θ*, σ²I_d) with θ* = 1 (so ‖θ*‖₂ = √d) and
σ = c·d^{1/4}. The learner ŵ = mean of yᵢxᵢ is distributed exactly as N(θ*, σ²/n·I), so it
is sampled that way (and, for small d, from actual samples to check the distribution). For
any linear classifier sign(⟨w, x⟩):

    standard error  Φ(−⟨w, θ*⟩ / (σ‖w‖₂)),
    ℓ∞-robust error Φ((ε‖w‖₁ − ⟨w, θ*⟩) / (σ‖w‖₂)),

and the library's PGD on held-out samples measures the same quantity (for a linear model
the worst case is the corner −y·ε·sign(w), which PGD reaches exactly). The experiment

- plots standard and robust error of ŵ against n for several d and ε;
- estimates n*(ε, d, σ), the smallest n with expected robust error <= a target (10%), and
  plots it against ε²√d (the paper's upper bound scale; the d → ∞ limit is
  n* ≈ (2/π)·c²·ε²·√d for small ε, drawn as a reference);
- trains a linear model adversarially with the library's PGD (ℓ∞, box ±1e6) on the same
  n samples and compares it with ŵ;
- Bernoulli model: x ∈ {±1}^d with P(xᵢ = y·θ*ᵢ) = (1+τ)/2: ŵ as a linear classifier
  versus the same ŵ on inputs thresholded to sign(x) (for ε < 1 an ℓ∞ perturbation cannot
  flip a sign, so the thresholded classifier's robust error equals its standard error).

Real data (UCI digits, 8x8, 1437 train / 360 test): MLPs trained with the library's
`standard()` and `pgd_at(linf(ε))` on nested, class-balanced subsets of n training images,
several seeds, one vmapped training program per objective. Measured: clean and PGD test
accuracy vs n, the robust train − test gap (PGD accuracy on the model's own subset minus on
the test set), and the saturation n (smallest n within 2 pp of the curve's maximum) of
standard and of robust accuracy.

    jaxrobust experiment sample_complexity [--smoke] [--out DIR] [--seed S]
                                           [--part all|synthetic|digits]

Writes DIR/sample_complexity.json and DIR/sample_complexity_{gaussian,nstar,
adversarial_training,bernoulli,distribution}.png (synthetic), and
DIR/sample_complexity_digits.{json,png} (digits; with --part all, the digits results are
also under "digits" in sample_complexity.json).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import NamedTuple

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import _digits as D
import _sample_complexity_digits as SD
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.stats import norm
from scipy import stats as sps

import jaxrobust as jr

NAME = "sample_complexity"
Array = jax.Array

SETTINGS = {
    "smoke": {
        "sigma_mult": 0.5,
        "target": 0.10,
        "d_curves": [100, 100_000],
        "eps_curves": [0.1, 0.25, 0.5],
        "n_curves": [1, 2, 4, 8, 16, 32, 64, 128],
        "d_nstar": [1000, 10_000, 100_000, 1_000_000],
        "d_theory_min": 1000,
        "eps_nstar": [0.1, 0.25, 0.5],
        "sigma_mults": [0.5],
        "draw_budget": 2**20,
        "draws_range": [8, 256],
        "verify": {"d": [10], "n": [10], "reps": 400, "eps": 0.25},
        "check": {
            "d": [100_000],
            "n": [1, 10],
            "eps": [0.25, 0.5],
            "budget": 5 * 10**7,
            "max_test": 2000,
            "chunk_elems": 2 * 10**6,
            "steps": 5,
        },
        "at": {
            "d": 100,
            "n": [1, 4, 16],
            "seeds": 2,
            "eps": 0.25,
            "steps": 30,
            "lr_scale": 1.0,
            "pgd_steps": 5,
        },
        "bernoulli": {
            "d": 200,
            "tau_mult": 2.0,
            "eps_over_tau": [0.5, 1.5],
            "n": [1, 4, 16, 64],
            "draws": 4,
            "test": 1000,
            "steps": 5,
        },
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
        "draw_budget": 2**24,
        "draws_range": [16, 4096],
        "verify": {"d": [10, 100], "n": [1, 10, 100], "reps": 2000, "eps": 0.25},
        "check": {
            "d": [100, 1000, 10_000, 100_000],
            "n": [1, 3, 10, 30, 100],
            "eps": [0.1, 0.25, 0.5],
            "budget": 2 * 10**8,
            "max_test": 20_000,
            "chunk_elems": 4 * 10**6,
            "steps": 5,
        },
        "at": {
            "d": 10_000,
            "n": [1, 2, 4, 8, 16, 32, 64],
            "seeds": 3,
            "eps": 0.25,
            "steps": 200,
            "lr_scale": 1.0,
            "pgd_steps": 5,
        },
        "bernoulli": {
            "d": 1000,
            "tau_mult": 2.0,
            "eps_over_tau": [0.5, 1.5],
            "n": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
            "draws": 8,
            "test": 4000,
            "steps": 5,
        },
    },
}

# ------------------------------------------------------------------------ Gaussian, closed form


def sigma_of(d: int, mult: float) -> float:
    """σ = mult·d^{1/4}: one sample gives a good standard classifier (Schmidt et al.)."""
    return float(mult * d**0.25)


def linear_errors(inner, l2, l1, eps, sigma):
    """Closed-form (standard, ℓ∞-robust) error of sign(⟨w, x⟩) in the Gaussian model.

    inner = ⟨w, θ*⟩, l2 = ‖w‖₂, l1 = ‖w‖₁ (any broadcastable shapes); eps, sigma scalars.
    """
    scale = sigma * l2
    return norm.cdf(-inner / scale), norm.cdf((eps * l1 - inner) / scale)


def w_stats(w: Array) -> tuple[Array, Array, Array]:
    """(⟨w, θ*⟩, ‖w‖₂, ‖w‖₁) of w (..., d) with θ* = 1."""
    return jnp.sum(w, -1), jnp.linalg.norm(w, axis=-1), jnp.sum(jnp.abs(w), -1)


@jax.jit
def closed_form(w: Array, eps: Array, sigma: Array) -> tuple[Array, Array]:
    """(standard (...), robust (..., E)) closed-form errors of linear models w (..., d)."""
    inner, l2, l1 = (v[..., None] for v in w_stats(w))
    std, rob = linear_errors(inner, l2, l1, eps, sigma)
    return std[..., 0], rob


class Draws(NamedTuple):
    """R draws z ~ N(0, I_d), kept as the sufficient statistics of ŵ = θ* + s·z for all s.

    With θ* = 1, ⟨ŵ, θ*⟩ = d + sΣz and ‖ŵ‖₂² = d + 2sΣz + s²Σz² need only Σz, Σz²;
    ‖ŵ‖₁ = Σ(1 + s zᵢ) − 2·Σ_{zᵢ < −1/s}(1 + s zᵢ) needs the sorted z and their prefix sums.
    So the same draws (common random numbers, smooth curves in n) give every n in O(log d).
    """

    sum_z: Array  # (R,)
    sum_z2: Array  # (R,)
    z_sorted: Array  # (R, d)
    prefix: Array  # (R, d + 1): 0, z₍₁₎, z₍₁₎ + z₍₂₎, ...


@partial(jax.jit, static_argnums=(1, 2))
def make_draws(key: Array, d: int, r: int) -> Draws:
    z = jax.random.normal(key, (r, d))
    zs = jnp.sort(z, axis=1)
    prefix = jnp.concatenate([jnp.zeros((r, 1)), jnp.cumsum(zs, axis=1)], axis=1)
    return Draws(z.sum(1), (z * z).sum(1), zs, prefix)


def draw_stats(draws: Draws, s: Array) -> tuple[Array, Array, Array]:
    """(⟨ŵ, θ*⟩, ‖ŵ‖₂, ‖ŵ‖₁) for ŵ = θ* + s·z, each (R,); s > 0 a scalar (σ/√n)."""
    d = draws.z_sorted.shape[1]
    inner = d + s * draws.sum_z
    l2 = jnp.sqrt(jnp.maximum(d + 2 * s * draws.sum_z + s * s * draws.sum_z2, 0.0))
    k = jax.vmap(lambda zs: jnp.searchsorted(zs, -1.0 / s, side="left"))(draws.z_sorted)
    negative = k + s * jnp.take_along_axis(draws.prefix, k[:, None], axis=1)[:, 0]
    return inner, l2, inner - 2.0 * negative


@jax.jit
def curve_errors(draws: Draws, n: Array, eps: Array, sigma: Array):
    """Mean and standard error over draws of (standard, robust) error of ŵ.

    n (N,) sample sizes, eps (E,) radii -> standard (N,), its SE (N,), robust (E, N), SE (E, N).
    """

    def at_n(nn):
        inner, l2, l1 = draw_stats(draws, sigma / jnp.sqrt(nn))
        std, rob = linear_errors(inner, l2, l1, eps[:, None], sigma)
        return std, rob

    std, rob = jax.lax.map(at_n, n)  # (N, R), (N, E, R)
    r = std.shape[-1]
    se = lambda v: jnp.std(v, axis=-1) / jnp.sqrt(r)  # noqa: E731
    return std.mean(-1), se(std), rob.mean(-1).T, se(rob).T


@partial(jax.jit, static_argnames=("iters",))
def n_star(draws: Draws, eps: Array, sigma: Array, target: float, iters: int = 48):
    """Smallest (real) n with mean robust error of ŵ <= target, by bisection on log10 n.

    vmapped over eps and sigma (same shape, (K,)); n is real because ŵ ~ N(θ*, σ²/n·I) is
    defined for any n > 0. Returns (n*, flag) with flag 0 = found in [1e-3, 1e9],
    −1 = already below target at 1e-3, +1 = above target even at 1e9 (n* = inf).
    """

    def one(e, sg):
        def err(log_n):
            inner, l2, l1 = draw_stats(draws, sg * 10.0 ** (-0.5 * log_n))
            return jnp.mean(linear_errors(inner, l2, l1, e, sg)[1])

        def body(_, b):
            lo, hi = b
            mid = 0.5 * (lo + hi)
            ok = err(mid) <= target
            return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

        lo, hi = jnp.float32(-3.0), jnp.float32(9.0)
        _, hi_out = jax.lax.fori_loop(0, iters, body, (lo, hi))
        flag = jnp.where(err(lo) <= target, -1, jnp.where(err(hi) > target, 1, 0))
        value = jnp.where(flag == 1, jnp.inf, 10.0**hi_out)
        return value, flag

    return jax.vmap(one)(eps, sigma)


def num_draws(d: int, cfg: dict) -> int:
    lo, hi = cfg["draws_range"]
    return int(np.clip(cfg["draw_budget"] // d, lo, hi))


# ------------------------------------------------------------------ ŵ from actual samples


@partial(jax.jit, static_argnums=(1, 2, 4))
def w_hat_from_samples(key: Array, d: int, n: int, sigma: float, reps: int) -> Array:
    """ŵ = mean of yᵢxᵢ over n actual samples, for `reps` independent data sets: (reps, d)."""

    def one(k):
        ky, kx = jax.random.split(k)
        y = jax.random.rademacher(ky, (n,)).astype(jnp.float32)
        x = y[:, None] + sigma * jax.random.normal(kx, (n, d))
        return jnp.mean(y[:, None] * x, axis=0)

    return jax.vmap(one)(jax.random.split(key, reps))


@partial(jax.jit, static_argnames=("d", "n", "reps"))
def _verify_draws(key, sigma, eps, *, d, n, reps):
    """ŵ from samples and exact draws: (coordinates of the former, robust errors of both)."""
    k1, k2 = jax.random.split(key)
    ws = w_hat_from_samples(k1, d, n, sigma, reps)
    we = 1.0 + sigma / jnp.sqrt(n) * jax.random.normal(k2, (reps, d))
    return ws, closed_form(ws, eps, sigma)[1][:, 0], closed_form(we, eps, sigma)[1][:, 0]


def verify_distribution(key: Array, cfg: dict) -> list[dict]:
    """Compare ŵ from samples with exact draws N(θ*, σ²/n·I): moments and KS tests."""
    out = []
    v = cfg["verify"]
    for d in v["d"]:
        sigma = sigma_of(d, cfg["sigma_mult"])
        for n in v["n"]:
            key, sub = jax.random.split(key)
            reps, eps = v["reps"], v["eps"]
            ws, rs, re = map(
                np.asarray, _verify_draws(sub, sigma, jnp.asarray([eps]), d=d, n=n, reps=reps)
            )
            thin = max(1, reps // 200)
            out.append(
                {
                    "d": d,
                    "n": n,
                    "sigma": sigma,
                    "reps": reps,
                    "eps": eps,
                    "coord_mean": float(ws.mean()),
                    "coord_var_over_sigma2_n": float(ws.var() * n / sigma**2),
                    # one coordinate per data set: independent draws of the marginal law
                    "coord_ks_pvalue": float(
                        sps.kstest((ws[:, 0] - 1.0) / (sigma / np.sqrt(n)), "norm").pvalue
                    ),
                    "robust_error_mean_samples": float(rs.mean()),
                    "robust_error_mean_exact": float(re.mean()),
                    "robust_error_ks_pvalue": float(sps.ks_2samp(rs, re).pvalue),
                    "robust_error_samples": np.sort(rs)[::thin].tolist(),
                    "robust_error_exact": np.sort(re)[::thin].tolist(),
                }
            )
    return out


# --------------------------------------------------------------------- PGD on held-out samples


@partial(jax.jit, static_argnames=("d", "chunk", "chunks", "steps"))
def pgd_gaussian_errors(w, key, eps, sigma, *, d, chunk, chunks, steps):
    """Standard and PGD-ℓ∞-robust error of the linear model w on held-out Gaussian samples.

    w (d,); eps (E,). Samples are drawn and attacked `chunk` at a time (bounded memory).
    Returns (standard error, robust error (E,)) over chunk·chunks samples.
    """
    f = C.linear_logits_fn(w)

    def one_chunk(i):
        ky, kx, ka = jax.random.split(jax.random.fold_in(key, i), 3)
        y = jax.random.rademacher(ky, (chunk,)).astype(jnp.float32)
        x = y[:, None] + sigma * jax.random.normal(kx, (chunk, d))
        wrong = jnp.mean((jnp.argmax(f(x), -1) != C.to_class(y)).astype(jnp.float32))
        rob = jax.lax.map(lambda e: C.pgd_error(f, x, y, ka, C.wide_linf(e), steps), eps)
        return wrong, rob

    wrong, rob = jax.lax.map(one_chunk, jnp.arange(chunks))
    return wrong.mean(), rob.mean(0)


@partial(jax.jit, static_argnames=("d", "chunk", "chunks", "steps"))
def _check_point(key, n, eps, sigma, *, d, chunk, chunks, steps):
    """One exact draw ŵ ~ N(θ*, σ²/n·I): closed-form and measured (standard, robust (E,))."""
    kw, kt = jax.random.split(key)
    w = 1.0 + sigma / jnp.sqrt(n) * jax.random.normal(kw, (d,))
    std_cf, rob_cf = closed_form(w, eps, sigma)
    std_m, rob_m = pgd_gaussian_errors(
        w, kt, eps, sigma, d=d, chunk=chunk, chunks=chunks, steps=steps
    )
    return std_cf, rob_cf, std_m, rob_m


def pgd_checks(key: Array, cfg: dict) -> list[dict]:
    """For each (d, n): one exact draw of ŵ; closed form vs PGD for every ε."""
    ch = cfg["check"]
    eps = jnp.asarray(ch["eps"], jnp.float32)
    rows = []
    for d in ch["d"]:
        sigma = sigma_of(d, cfg["sigma_mult"])
        chunk = max(1, min(ch["chunk_elems"] // d, ch["max_test"]))
        chunks = max(1, min(ch["max_test"], ch["budget"] // d) // chunk)
        m = chunk * chunks
        for n in ch["n"]:
            key, sub = jax.random.split(key)
            std_cf, rob_cf, std_m, rob_m = map(
                np.asarray,
                _check_point(
                    sub,
                    jnp.float32(n),
                    eps,
                    sigma,
                    d=d,
                    chunk=chunk,
                    chunks=chunks,
                    steps=ch["steps"],
                ),
            )
            for j, e in enumerate(ch["eps"]):
                rows.append(
                    {
                        "d": d,
                        "n": n,
                        "eps": e,
                        "sigma": sigma,
                        "test_samples": m,
                        "standard_closed_form": float(std_cf),
                        "standard_measured": float(std_m),
                        "robust_closed_form": float(rob_cf[j]),
                        "robust_pgd": float(rob_m[j]),
                        "robust_se": float(C.mc_se(rob_cf[j], m)),
                        "agrees": bool(C.agrees(rob_m[j], rob_cf[j], m)),
                    }
                )
    return rows


# ------------------------------------------------------------------- adversarial training


def adversarial_train(key, x, y, mask, eps, *, steps, lr, pgd_steps):
    """Linear model trained on the library's ℓ∞ PGD examples (logistic loss, SGD + momentum).

    x (n_max, d), y (n_max,) ±1, mask (n_max,) marks the n real samples (padding keeps one
    shape for every n, so the sweep over n is a vmap). Returns w (d,).
    """
    d = x.shape[1]
    # Not Adam: its sign-like per-coordinate steps rotate w away from the data's direction
    # (cos(w, ŵ) ≈ 0.8 at d = 1e4) and cost far more robust error than the training does.
    tx = optax.sgd(lr, momentum=0.9)
    threat = C.wide_linf(eps)
    cls = C.to_class(y)

    def loss(w, k):
        attack_fn = C.linear_logits_fn(jax.lax.stop_gradient(w))
        # Margin loss: cross-entropy gradients vanish once the logits saturate (large d).
        x_adv = jr.pgd(attack_fn, x, cls, k, threat=threat, steps=pgd_steps, loss=jr.margin).x_adv
        ce = jr.cross_entropy(C.linear_logits_fn(w)(jax.lax.stop_gradient(x_adv)), cls)
        return jnp.sum(ce * mask) / jnp.sum(mask)

    def step(carry, k):
        w, opt = carry
        g = jax.grad(loss)(w, k)
        upd, opt = tx.update(g, opt, w)
        return (optax.apply_updates(w, upd), opt), None

    w0 = jnp.zeros((d,))
    (w, _), _ = jax.lax.scan(step, (w0, tx.init(w0)), jax.random.split(key, steps))
    return w


@partial(jax.jit, static_argnames=("d", "n_max", "steps", "pgd_steps"))
def _at_sweep(keys, n_values, sigma, eps, lr, *, d, n_max, steps, pgd_steps):
    """vmapped over (n, seed): ŵ and the adversarially trained w on the same samples."""

    def one(k, n):
        kd, kt = jax.random.split(k)
        ky, kx = jax.random.split(kd)
        y = jax.random.rademacher(ky, (n_max,)).astype(jnp.float32)
        x = y[:, None] + sigma * jax.random.normal(kx, (n_max, d))
        mask = (jnp.arange(n_max) < n).astype(jnp.float32)
        w_mean = jnp.sum(mask[:, None] * y[:, None] * x, 0) / n
        w_at = adversarial_train(kt, x, y, mask, eps, steps=steps, lr=lr, pgd_steps=pgd_steps)
        return jnp.stack([w_mean, w_at])

    return jax.vmap(jax.vmap(one, (0, None)), (None, 0))(keys, n_values)


def adversarial_training(key: Array, cfg: dict) -> dict:
    at = cfg["at"]
    d, eps = at["d"], at["eps"]
    sigma = sigma_of(d, cfg["sigma_mult"])
    n_values = jnp.asarray(at["n"], jnp.int32)
    keys = jax.random.split(key, at["seeds"])
    ws = _at_sweep(
        keys,
        n_values,
        sigma,
        eps,
        # lr normalised by E‖x‖² = d(1 + σ²): the first step gives logits of order one.
        at["lr_scale"] / (d * (1 + sigma**2)),
        d=d,
        n_max=max(at["n"]),
        steps=at["steps"],
        pgd_steps=at["pgd_steps"],
    )  # (N, S, 2, d)
    std, rob = closed_form(ws, jnp.asarray([eps]), sigma)  # (N, S, 2), (N, S, 2, 1)
    rob = rob[..., 0]
    # PGD check of the trained models on held-out data (one seed, every n).
    kt = jax.random.fold_in(key, 1)
    chunk = max(1, min(cfg["check"]["chunk_elems"] // d, 1000))
    checks = []
    for i, n in enumerate(at["n"]):
        _, r_pgd = pgd_gaussian_errors(
            ws[i, 0, 1],
            kt,
            jnp.asarray([eps]),
            sigma,
            d=d,
            chunk=chunk,
            chunks=2,
            steps=cfg["check"]["steps"],
        )
        m = 2 * chunk
        checks.append(
            {
                "n": n,
                "robust_closed_form": float(rob[i, 0, 1]),
                "robust_pgd": float(r_pgd[0]),
                "test_samples": m,
                "agrees": bool(C.agrees(r_pgd[0], rob[i, 0, 1], m)),
            }
        )
    return {
        "d": d,
        "sigma": sigma,
        "eps": eps,
        "n": at["n"],
        "seeds": at["seeds"],
        "train_steps": at["steps"],
        "lr": at["lr_scale"] / (d * (1 + sigma**2)),
        "pgd_steps": at["pgd_steps"],
        "mean_estimator": {"standard": std[:, :, 0].mean(1), "robust": rob[:, :, 0].mean(1)},
        "adversarial_training": {"standard": std[:, :, 1].mean(1), "robust": rob[:, :, 1].mean(1)},
        "pgd_checks": checks,
    }


# ------------------------------------------------------------------------------ Bernoulli


@partial(jax.jit, static_argnames=("d", "n_list", "draws", "test", "steps"))
def _bernoulli_core(key, tau, eps, *, d, n_list, draws, test, steps):
    """Errors of ŵ (linear) and of ŵ on sign-thresholded inputs in the Bernoulli model.

    θ* = 1, so yᵢxᵢ = bᵢ ∈ {±1}^d with P(+1) = (1+τ)/2 and ŵ(n) is the mean of the first n
    rows of each draw's data. Errors are exact worst cases on `test` held-out samples,
    averaged over draws: standard (N,), robust (E, N); plus, for draw 0, the exact and the
    library's PGD robust error of the linear model (E, N).
    """
    kd, kt, ky, ka = jax.random.split(key, 4)
    p = (1 + tau) / 2
    n_arr = jnp.asarray(n_list)
    rows = 2.0 * jax.random.bernoulli(kd, p, (draws, max(n_list), d)).astype(jnp.float32) - 1.0
    w = jnp.cumsum(rows, axis=1)[:, n_arr - 1, :] / n_arr[None, :, None]  # (R, N, d)
    y = jax.random.rademacher(ky, (test,)).astype(jnp.float32)
    x = y[:, None] * (2.0 * jax.random.bernoulli(kt, p, (test, d)).astype(jnp.float32) - 1.0)
    cls = C.to_class(y)[:, None, None]

    def wrong(z):  # scores (M, R, N) -> error per (R, N); ties go to class 0 like argmax
        return jnp.mean(((z > 0).astype(jnp.int32) != cls).astype(jnp.float32), 0)

    z_lin = jnp.einsum("md,rnd->mrn", x, w)
    z_thr = jnp.einsum("md,rnd->mrn", jnp.sign(x), w)
    l1 = jnp.sum(jnp.abs(w), -1)
    # Exact ℓ∞ worst case of a linear model: the corner −y·ε·sign(w) lowers y·z by ε‖w‖₁.
    rob_lin = jax.vmap(lambda e: wrong(z_lin - y[:, None, None] * e * l1[None]))(eps)
    std_thr = wrong(z_thr).mean(0)
    # ε < 1 cannot change sign(xᵢ) for xᵢ ∈ {±1}: the thresholded model is unaffected.
    rob_thr = jnp.where((eps < 1)[:, None], std_thr[None], jnp.nan)

    def pgd_one(e):
        return jax.lax.map(
            lambda wj: C.pgd_error(C.linear_logits_fn(wj), x, y, ka, C.wide_linf(e), steps), w[0]
        )

    return {
        "linear_standard": wrong(z_lin).mean(0),
        "linear_robust": rob_lin.mean(1),
        "thresholded_standard": std_thr,
        "thresholded_robust": rob_thr,
        "draw0_robust_exact": rob_lin[:, 0],
        "draw0_robust_pgd": jax.lax.map(pgd_one, eps),
    }


def bernoulli_experiment(key: Array, cfg: dict) -> dict:
    b = cfg["bernoulli"]
    d = b["d"]
    tau = float(b["tau_mult"] * d**-0.25)
    eps_list = [float(r * tau) for r in b["eps_over_tau"]]
    res = {
        k: np.asarray(v)
        for k, v in _bernoulli_core(
            key,
            jnp.float32(tau),
            jnp.asarray(eps_list, jnp.float32),
            d=d,
            n_list=tuple(b["n"]),
            draws=b["draws"],
            test=b["test"],
            steps=b["steps"],
        ).items()
    }
    checks = [
        {
            "eps": e,
            "n": n,
            "robust_exact": float(res["draw0_robust_exact"][i, j]),
            "robust_pgd": float(res["draw0_robust_pgd"][i, j]),
            "agrees": bool(
                C.agrees(res["draw0_robust_pgd"][i, j], res["draw0_robust_exact"][i, j], b["test"])
            ),
        }
        for i, e in enumerate(eps_list)
        for j, n in enumerate(b["n"])
    ]
    return {
        "d": d,
        "tau": tau,
        "eps": eps_list,
        "n": b["n"],
        "draws": b["draws"],
        "test_samples": b["test"],
        "linear": {"standard": res["linear_standard"], "robust": res["linear_robust"]},
        "thresholded": {
            "standard": res["thresholded_standard"],
            "robust": res["thresholded_robust"],
        },
        "pgd_checks": checks,
    }


# ----------------------------------------------------------------------------- sweeps


def error_curves(key: Array, cfg: dict) -> list[dict]:
    """Standard and robust error of ŵ vs n (mean over exact draws) for each d in d_curves."""
    n = jnp.asarray(cfg["n_curves"], jnp.float32)
    eps = jnp.asarray(cfg["eps_curves"], jnp.float32)
    out = []
    for d in cfg["d_curves"]:
        sigma = sigma_of(d, cfg["sigma_mult"])
        r = num_draws(d, cfg)
        std, std_se, rob, rob_se = curve_errors(
            make_draws(jax.random.fold_in(key, d), d, r), n, eps, sigma
        )
        out.append(
            {
                "d": d,
                "sigma": sigma,
                "draws": r,
                "n": cfg["n_curves"],
                "eps": cfg["eps_curves"],
                "standard": std,
                "standard_se": std_se,
                "robust": rob,
                "robust_se": rob_se,
            }
        )
    return out


def local_slopes(d: list[int], n: np.ndarray) -> list[float]:
    """Least-squares slope of log n* vs log d over each window of three consecutive d."""
    ld, ln = np.log(np.asarray(d, float)), np.log(np.asarray(n, float))
    return [float(np.polyfit(ld[i : i + 3], ln[i : i + 3], 1)[0]) for i in range(len(d) - 2)]


def nstar_sweep(key: Array, cfg: dict) -> dict:
    """n*(ε, d, σ-multiplier) for the target robust error; slopes of log n* vs log d."""
    eps_grid, mult_grid = np.meshgrid(cfg["eps_nstar"], cfg["sigma_mults"], indexing="ij")
    table = np.full((*eps_grid.shape, len(cfg["d_nstar"])), np.nan)
    flags = np.zeros_like(table, dtype=int)
    for j, d in enumerate(cfg["d_nstar"]):
        draws = make_draws(jax.random.fold_in(key, d), d, num_draws(d, cfg))
        sig = jnp.asarray([sigma_of(d, m) for m in mult_grid.ravel()], jnp.float32)
        v, f = n_star(draws, jnp.asarray(eps_grid.ravel(), jnp.float32), sig, cfg["target"])
        table[..., j] = np.asarray(v).reshape(eps_grid.shape)
        flags[..., j] = np.asarray(f).reshape(eps_grid.shape)
    # Slopes and the acceptance checks use the theory's regime d >= d_theory_min.
    theory = np.asarray(cfg["d_nstar"]) >= cfg["d_theory_min"]
    d_theory = [d for d, t in zip(cfg["d_nstar"], theory, strict=True) if t]
    slopes = {}
    for a, e in enumerate(cfg["eps_nstar"]):
        for b, m in enumerate(cfg["sigma_mults"]):
            row = table[a, b, theory]
            slopes[f"eps={e:g},c={m:g}"] = (
                local_slopes(d_theory, row) if np.all(np.isfinite(row)) else None
            )
    return {
        "eps": cfg["eps_nstar"],
        "sigma_mults": cfg["sigma_mults"],
        "d": cfg["d_nstar"],
        "d_theory_min": cfg["d_theory_min"],
        "target_robust_error": cfg["target"],
        "n_star": table,
        "n_star_samples": np.where(np.isfinite(table), np.ceil(np.maximum(table, 1.0)), np.inf),
        "flag": flags,
        "local_slopes": slopes,
        "slope_window_centres": d_theory[1:-1],
        "draws": [num_draws(d, cfg) for d in cfg["d_nstar"]],
    }


# ------------------------------------------------------------------------------ acceptance


def acceptance(curves, nstar, checks, cfg) -> dict:
    acc = {}
    big = [c for c in curves if c["d"] == 100_000]
    if big and 1 in cfg["n_curves"] and 0.25 in cfg["eps_curves"] and cfg["sigma_mult"] == 0.5:
        c = big[0]
        i, e = cfg["n_curves"].index(1), cfg["eps_curves"].index(0.25)
        acc["d1e5_n1_standard_error"] = float(c["standard"][i])
        acc["d1e5_n1_robust_error"] = float(np.asarray(c["robust"])[e, i])
        acc["d1e5_n1_standard_below_1pct"] = acc["d1e5_n1_standard_error"] < 0.01
        acc["d1e5_n1_robust_above_90pct"] = acc["d1e5_n1_robust_error"] > 0.90
    acc["pgd_matches_closed_form_everywhere"] = all(r["agrees"] for r in checks)
    acc["pgd_points_checked"] = len(checks)
    theory = np.asarray(nstar["d"]) >= nstar["d_theory_min"]
    table = np.asarray(nstar["n_star"])[..., theory]  # (eps, c, d), d >= d_theory_min
    acc["n_star_d_range"] = [min(np.asarray(nstar["d"])[theory]), max(nstar["d"])]
    acc["n_star_finite_everywhere"] = bool(np.isfinite(table).all())
    acc["n_star_increases_with_d"] = bool(np.all(np.diff(table, axis=2) > 0))
    acc["n_star_increases_with_eps"] = bool(np.all(np.diff(table, axis=0) > 0))
    slopes = [s for s in nstar["local_slopes"].values() if s is not None]
    acc["slope_increases_with_d"] = (
        bool(slopes)
        and len(slopes) == len(nstar["local_slopes"])
        and all(np.all(np.diff(s) > 0) for s in slopes)
    )
    return acc


# ------------------------------------------------------------------------------- figures


def plot_curves(curves, checks, path: Path) -> None:
    fig, axes = C.figure(1, len(curves), (4.6, 3.8))
    for ax, c in zip(axes[0], curves, strict=True):
        n = np.asarray(c["n"])
        ax.plot(n, c["standard"], "k-", label="standard (closed form)")
        for k, e in enumerate(c["eps"]):
            line = ax.plot(n, np.asarray(c["robust"])[k], "-", label=f"robust ε={e:g}")[0]
            pts = [r for r in checks if r["d"] == c["d"] and r["eps"] == e]
            if pts:
                ax.plot(
                    [r["n"] for r in pts],
                    [r["robust_pgd"] for r in pts],
                    "o",
                    mfc="none",
                    color=line.get_color(),
                    label=f"PGD ε={e:g} (one ŵ)",
                )
        pts = [r for r in checks if r["d"] == c["d"] and r["eps"] == c["eps"][0]]
        if pts:
            ax.plot(
                [r["n"] for r in pts],
                [r["standard_measured"] for r in pts],
                "kx",
                label="measured standard (one ŵ)",
            )
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("training samples n")
        ax.set_ylabel("error")
        ax.set_title(f"d={c['d']:,}, σ={c['sigma']:.2f}")
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    C.save(fig, path)


def plot_nstar(nstar, path: Path) -> None:
    fig, axes = C.figure(1, 2, (5.2, 4.2))
    table = np.asarray(nstar["n_star"], float)
    d = np.asarray(nstar["d"], float)
    theory = d >= nstar["d_theory_min"]
    ax = axes[0, 0]
    markers = "os^D"
    for b, m in enumerate(nstar["sigma_mults"]):
        for a, e in enumerate(nstar["eps"]):
            x = e**2 * np.sqrt(d)
            ax.plot(
                x[theory],
                table[a, b, theory],
                markers[b % 4],
                ms=4,
                color=f"C{a}",
                label=f"ε={e:g}" if b == 0 else None,
            )
            ax.plot(
                x[~theory],
                table[a, b, ~theory],
                markers[b % 4],
                ms=4,
                color=f"C{a}",
                mfc="none",
                alpha=0.5,
            )
        scale = np.outer(np.asarray(nstar["eps"]) ** 2, np.sqrt(d))
        xs = np.logspace(np.log10(scale.min()), np.log10(scale.max()), 50)
        ax.plot(xs, 2 / np.pi * m**2 * xs, "--", color="gray", lw=0.8)
        ax.text(xs[-1], 2 / np.pi * m**2 * xs[-1], f" c={m:g}", fontsize=7, va="center")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("ε²√d")
    ax.set_ylabel(f"n* (robust error ≤ {nstar['target_robust_error']:.0%})")
    ax.set_title("n* vs ε²√d (σ = c·d^¼; dashed: (2/π)c²ε²√d)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, title=f"hollow: d < {nstar['d_theory_min']}", title_fontsize=7)
    ax = axes[0, 1]
    b = nstar["sigma_mults"].index(0.5) if 0.5 in nstar["sigma_mults"] else 0
    for a, e in enumerate(nstar["eps"]):
        ax.plot(d, table[a, b], "o-", ms=3, color=f"C{a}", label=f"ε={e:g}")
    ax.plot(d, np.sqrt(d) * table[-1, b, -1] / np.sqrt(d[-1]), "k:", label="∝ √d")
    if (~theory).any():
        ax.axvspan(
            d.min(), nstar["d_theory_min"], color="0.92", zorder=0, label="n = ∞ floor near target"
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("dimension d")
    ax.set_ylabel("n*")
    ax.set_title(f"n* vs d (c={nstar['sigma_mults'][b]:g})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    C.save(fig, path)


def plot_at(at, path: Path) -> None:
    fig, axes = C.figure(1, 1, (5.5, 4.0))
    ax = axes[0, 0]
    n = np.asarray(at["n"])
    for key, style in (("mean_estimator", "-"), ("adversarial_training", "--")):
        label = "ŵ = mean yx" if key == "mean_estimator" else f"PGD-AT (ε={at['eps']:g})"
        ax.plot(n, at[key]["standard"], "k" + style, marker="o", ms=3, label=f"{label}: standard")
        ax.plot(n, at[key]["robust"], "C3" + style, marker="o", ms=3, label=f"{label}: robust")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training samples n")
    ax.set_ylabel("error (closed form)")
    ax.set_title(f"linear models, d={at['d']:,}, ε={at['eps']:g}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    C.save(fig, path)


def plot_bernoulli(bern, path: Path) -> None:
    fig, axes = C.figure(1, len(bern["eps"]), (4.8, 3.8))
    n = np.asarray(bern["n"])
    for k, (ax, e) in enumerate(zip(axes[0], bern["eps"], strict=True)):
        for key, color in (("linear", "C0"), ("thresholded", "C2")):
            ax.plot(
                n,
                bern[key]["standard"],
                "-",
                color=color,
                marker="o",
                ms=3,
                label=f"{key}: standard",
            )
            ax.plot(
                n,
                np.asarray(bern[key]["robust"])[k],
                "--",
                color=color,
                marker="s",
                ms=3,
                label=f"{key}: robust",
            )
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("training samples n")
        ax.set_ylabel("error")
        ax.set_title(f"Bernoulli d={bern['d']}, τ={bern['tau']:.3f}, ε={e:.3f}")
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    C.save(fig, path)


def plot_distribution(ver, path: Path) -> None:
    fig, axes = C.figure(1, 1, (5.5, 4.0))
    ax = axes[0, 0]
    for i, v in enumerate(ver):
        for key, style in (("robust_error_exact", "-"), ("robust_error_samples", ":")):
            vals = np.asarray(v[key])
            ax.plot(
                vals,
                np.linspace(0, 1, len(vals)),
                style,
                color=f"C{i}",
                label=f"d={v['d']}, n={v['n']} ({'exact' if 'exact' in key else 'samples'})",
            )
    ax.set_xlabel(f"robust error of ŵ (ε={ver[0]['eps']:g})")
    ax.set_ylabel("empirical CDF over draws")
    ax.set_title("ŵ from samples vs exact N(θ*, σ²/n·I)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6)
    C.save(fig, path)


# ----------------------------------------------------------------------------------- main


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
    timings = {}

    def timed(name, fn, *a):
        t = time.perf_counter()
        res = fn(*a)
        timings[name] = round(time.perf_counter() - t, 2)
        return res

    curves = timed("curves", error_curves, k_curves, cfg)
    nstar = timed("n_star", nstar_sweep, k_nstar, cfg)
    ver = timed("verify", verify_distribution, k_ver, cfg)
    checks = timed("pgd_checks", pgd_checks, k_check, cfg)
    at = timed("adversarial_training", adversarial_training, k_at, cfg)
    bern = timed("bernoulli", bernoulli_experiment, k_bern, cfg)
    digits = None
    if args.part == "all":
        digits = timed(
            "digits", SD.digits_experiment, k_digits, cfg_digits, out, args.smoke, args.seed
        )
    acc = acceptance(curves, nstar, checks, cfg)
    acc["distribution_ks_pvalues_min"] = min(
        min(v["coord_ks_pvalue"], v["robust_error_ks_pvalue"]) for v in ver
    )

    plot_curves(curves, checks, out / f"{NAME}_gaussian.png")
    plot_nstar(nstar, out / f"{NAME}_nstar.png")
    plot_at(at, out / f"{NAME}_adversarial_training.png")
    plot_bernoulli(bern, out / f"{NAME}_bernoulli.png")
    plot_distribution(ver, out / f"{NAME}_distribution.png")

    data = C.jsonable(
        {
            "experiment": NAME,
            "smoke": args.smoke,
            "seed": args.seed,
            "settings": cfg,
            "model": "y ~ U{±1}, x ~ N(y·θ*, σ²I_d), θ* = 1, σ = c·d^(1/4)",
            "curves": curves,
            "n_star": nstar,
            "distribution_check": ver,
            "pgd_checks": checks,
            "adversarial_training": at,
            "bernoulli": bern,
            "acceptance": acc,
            "timings_s": timings,
            **({"digits": digits} if digits is not None else {}),
        }
    )
    worst = max(checks, key=lambda r: abs(r["robust_pgd"] - r["robust_closed_form"]))
    lines = [
        f"d=1e5, n=1, ε=0.25: standard error {acc.get('d1e5_n1_standard_error', float('nan')):.4f}"
        f", robust error {acc.get('d1e5_n1_robust_error', float('nan')):.4f}",
        f"PGD vs closed form: {sum(r['agrees'] for r in checks)}/{len(checks)} agree (worst "
        f"|Δ| = {abs(worst['robust_pgd'] - worst['robust_closed_form']):.4f})",
        f"n* monotone in d: {acc['n_star_increases_with_d']}, in ε: "
        f"{acc['n_star_increases_with_eps']}, slope increasing: {acc['slope_increases_with_d']}",
    ]
    C.finish(out, NAME, data, t0, lines)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
