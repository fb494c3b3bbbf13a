"""The Gaussian model of Schmidt et al. (2018) in closed form: errors of linear classifiers,
exact draws of the mean estimator ŵ, error curves against n and the sample complexity n*
(helper module of `jaxrobust experiment sample_complexity`; the leading `_` keeps it out of
the experiment list).

y uniform in {±1}, x ~ N(y·θ*, σ²I_d) with θ* = 1 (so ‖θ*‖₂ = √d) and σ = c·d^{1/4}. The
learner ŵ = mean of yᵢxᵢ over n samples is distributed exactly as N(θ*, σ²/n·I), so it is
sampled that way (`verify_distribution` checks this law against ŵ from actual samples). For
any linear classifier sign(⟨w, x⟩):

    standard error  Φ(−⟨w, θ*⟩ / (σ‖w‖₂)),
    ℓ∞-robust error Φ((ε‖w‖₁ − ⟨w, θ*⟩) / (σ‖w‖₂)).

Everything here is closed form (`_sample_complexity_measure` measures the same quantities
by attacking samples).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm
from scipy import stats as sps

Array = jax.Array

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


@jax.jit
def mean_robust_error(draws: Draws, n: Array, eps: Array, sigma: Array) -> Array:
    """Mean over draws of the closed-form robust error of ŵ, elementwise over (K,) arrays
    n (sample counts), eps and sigma -> (K,)."""

    def one(nn, e, sg):
        inner, l2, l1 = draw_stats(draws, sg / jnp.sqrt(nn))
        return jnp.mean(linear_errors(inner, l2, l1, e, sg)[1])

    return jax.vmap(one)(n, eps, sigma)


def integer_n_star(draws: Draws, n_real, eps, sigma, target: float) -> np.ndarray:
    """The smallest integer n >= 1 whose mean robust error is <= target, (K,) (inf where the
    real bisection found none). Starts from ceil(n*_real) and steps to the integer boundary
    on the same draws (the mean error is monotone in n up to the bisection's precision)."""
    n_real = np.asarray(n_real, float)
    finite = np.isfinite(n_real)
    n = np.where(finite, np.maximum(1.0, np.ceil(np.where(finite, n_real, 1.0) - 1e-6)), 1.0)
    eps, sigma = jnp.asarray(eps, jnp.float32), jnp.asarray(sigma, jnp.float32)
    err = lambda v: np.asarray(mean_robust_error(draws, jnp.asarray(v, jnp.float32), eps, sigma))  # noqa: E731
    for _ in range(64):  # a step or two in practice
        up = finite & (err(n) > target)
        down = finite & (n > 1) & (err(np.maximum(n - 1, 1)) <= target)
        if not (up.any() or down.any()):
            break
        n = n + up - down
    return np.where(finite, n, np.inf)


def _mean_err(draws: Draws, n: Array, eps, sigma) -> Array:
    """`mean_robust_error` on host arrays (float32)."""
    return mean_robust_error(
        draws,
        jnp.asarray(n, jnp.float32),
        jnp.asarray(eps, jnp.float32),
        jnp.asarray(sigma, jnp.float32),
    )


def nstar_sweep(key: Array, cfg: dict) -> dict:
    """n*(ε, d, σ-multiplier): the smallest integer number of samples n >= 1 whose expected
    robust error (closed form, mean over exact draws of ŵ) is <= the target; the real-valued
    crossing of the same curve (`n_star_real`, the formula extends to real n > 0) is kept
    for reference. Local slopes of log n* vs log d are taken on the integer n*, on rows
    where n* >= slope_min_n at every d of the theory regime (rounding to an integer moves
    log n* by < 1/slope_min_n there)."""
    eps_grid, mult_grid = np.meshgrid(cfg["eps_nstar"], cfg["sigma_mults"], indexing="ij")
    shape = (*eps_grid.shape, len(cfg["d_nstar"]))
    real, table = np.full(shape, np.nan), np.full(shape, np.nan)
    at_n, below_n = np.full(shape, np.nan), np.full(shape, np.nan)
    flags = np.zeros(shape, dtype=int)
    for j, d in enumerate(cfg["d_nstar"]):
        draws = make_draws(jax.random.fold_in(key, d), d, num_draws(d, cfg))
        sig = np.asarray([sigma_of(d, m) for m in mult_grid.ravel()], np.float32)
        e = np.asarray(eps_grid.ravel(), np.float32)
        v, f = n_star(draws, jnp.asarray(e), jnp.asarray(sig), cfg["target"])
        real[..., j] = np.asarray(v).reshape(eps_grid.shape)
        flags[..., j] = np.asarray(f).reshape(eps_grid.shape)
        ns = integer_n_star(draws, v, e, sig, cfg["target"])
        table[..., j] = ns.reshape(eps_grid.shape)
        # The closed-form mean robust error at n* and at n* − 1 (NaN where n* = 1 or inf).
        fin = np.isfinite(ns)
        n_eval = jnp.asarray(np.where(fin, ns, 1.0), jnp.float32)
        err = partial(_mean_err, draws, eps=e, sigma=sig)
        at_n[..., j] = np.where(fin, np.asarray(err(n_eval)), np.nan).reshape(eps_grid.shape)
        prev = np.where(fin & (ns > 1), np.asarray(err(jnp.maximum(n_eval - 1, 1.0))), np.nan)
        below_n[..., j] = prev.reshape(eps_grid.shape)
    # Slopes and the acceptance checks use the theory's regime d >= d_theory_min.
    theory = np.asarray(cfg["d_nstar"]) >= cfg["d_theory_min"]
    d_theory = [d for d, t in zip(cfg["d_nstar"], theory, strict=True) if t]
    slopes = {}
    for a, e in enumerate(cfg["eps_nstar"]):
        for b, m in enumerate(cfg["sigma_mults"]):
            row = table[a, b, theory]
            if np.all(np.isfinite(row)) and row.min() >= cfg["slope_min_n"]:
                slopes[f"eps={e:g},c={m:g}"] = local_slopes(d_theory, row)
    return {
        "eps": cfg["eps_nstar"],
        "sigma_mults": cfg["sigma_mults"],
        "d": cfg["d_nstar"],
        "d_theory_min": cfg["d_theory_min"],
        "target_robust_error": cfg["target"],
        "n_star": table,
        "n_star_real": real,
        "robust_error_at_n_star": at_n,
        "robust_error_at_n_star_minus_1": below_n,
        "flag": flags,
        "slope_min_n": cfg["slope_min_n"],
        "local_slopes": slopes,
        "slope_window_centres": d_theory[1:-1],
        "draws": [num_draws(d, cfg) for d in cfg["d_nstar"]],
    }
