"""Measured twins of the Gaussian model's closed forms: the library's PGD attacks the linear
classifier ŵ on held-out samples (helper module of `jaxrobust experiment sample_complexity`).

A point is (d, n, ε). At each point R independent exact draws ŵ ~ N(θ*, σ²/n·I) are
attacked on M fresh held-out samples each; the measured robust error is the mean over draws,
its standard error the spread over draws / √R (it holds both the draw-to-draw variation of ŵ
and the binomial noise of M samples), so it estimates the same expected error the closed-form
curves show. Per draw, the PGD error is also compared with that draw's own closed form (a
paired check of PGD against the exact worst case, binomial noise only).

For a linear model the ℓ∞ worst case is the corner −y·ε·sign(w), which PGD reaches in one
step: a measurement can only disagree with the closed form through a bug or sampling noise.
The measurement is therefore only informative where the error is neither ≈0 nor ≈1: the
points are chosen where the closed-form robust error lies in [2%, 98%] (`informative_points`).
"""

from __future__ import annotations

from functools import partial

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import _sample_complexity_gaussian as G
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Z95 = 1.959964


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


@partial(jax.jit, static_argnames=("d", "draws", "chunk", "chunks", "steps"))
def _measure(key, n, eps, sigma, *, d, draws, chunk, chunks, steps):
    """R exact draws of ŵ at sample size n, each attacked on its own held-out samples.

    Returns per draw (R,): closed-form standard, closed-form robust (R, E), measured
    standard, PGD robust (R, E)."""

    def one(k):
        kw, kt = jax.random.split(k)
        w = 1.0 + sigma / jnp.sqrt(n) * jax.random.normal(kw, (d,))
        std_cf, rob_cf = G.closed_form(w, eps, sigma)
        std_m, rob_m = pgd_gaussian_errors(
            w, kt, eps, sigma, d=d, chunk=chunk, chunks=chunks, steps=steps
        )
        return std_cf, rob_cf, std_m, rob_m

    return jax.lax.map(one, jax.random.split(key, draws))


def held_out_size(d: int, m: dict) -> tuple[int, int]:
    """(chunk, chunks): held-out samples per draw, within the element budget."""
    chunk = max(1, min(m["chunk_elems"] // d, m["max_test"]))
    per_draw = max(1, min(m["max_test"], m["budget"] // (d * m["draws"])))
    return chunk if per_draw >= chunk else per_draw, max(1, per_draw // chunk)


def measure(key: Array, d: int, n: int, eps: list[float], sigma: float, m: dict) -> list[dict]:
    """Measured standard and robust error of ŵ(n) at (d, n) for every ε in eps, one row each."""
    chunk, chunks = held_out_size(d, m)
    per_draw = chunk * chunks
    _, rob_cf, std_m, rob_m = map(
        np.asarray,
        _measure(
            key,
            jnp.float32(n),
            jnp.asarray(eps, jnp.float32),
            jnp.float32(sigma),
            d=d,
            draws=m["draws"],
            chunk=chunk,
            chunks=chunks,
            steps=m["steps"],
        ),
    )
    r = m["draws"]
    se = lambda v: float(np.std(v, ddof=1) / np.sqrt(r)) if r > 1 else None  # noqa: E731
    rows = []
    for j, e in enumerate(eps):
        diff = rob_m[:, j] - rob_cf[:, j]
        rows.append(
            {
                "d": d,
                "n": int(n),
                "eps": float(e),
                "sigma": float(sigma),
                "draws": r,
                "test_samples_per_draw": per_draw,
                "standard": C.measured(
                    float(std_m.mean()),
                    n=r * per_draw,
                    se=se(std_m),
                    how=f"clean error of ŵ on held-out samples; mean over {r} draws of ŵ × "
                    f"{per_draw} samples each, SE over draws",
                ),
                "robust": C.measured(
                    float(rob_m[:, j].mean()),
                    n=r * per_draw,
                    se=se(rob_m[:, j]),
                    how=f"library PGD (ℓ∞, margin loss, {m['steps']} steps of 2ε) on held-out "
                    f"samples; mean over {r} draws of ŵ × {per_draw} samples each, SE over draws",
                ),
                "robust_closed_form_same_draws": float(rob_cf[:, j].mean()),
                "paired_difference": C.measured(
                    float(diff.mean()),
                    n=r * per_draw,
                    se=se(diff),
                    how="PGD robust error minus the same ŵ's closed form, mean over draws",
                ),
                "robust_per_draw": rob_m[:, j].tolist(),
                "robust_closed_form_per_draw": rob_cf[:, j].tolist(),
            }
        )
    return rows


def informative_points(curves: list[dict], lo: float, hi: float, per_curve: int) -> list[tuple]:
    """(d, n, ε, closed-form robust error, its SE) where the curve's expected robust error is
    in [lo, hi]: up to `per_curve` sample sizes per (d, ε), spread evenly in log n over the
    informative range (the first, the last, and evenly between)."""
    pts = []
    for c in curves:
        n = np.asarray(c["n"])
        rob, rob_se = np.asarray(c["robust"]), np.asarray(c["robust_se"])
        for k, e in enumerate(c["eps"]):
            idx = np.flatnonzero((rob[k] >= lo) & (rob[k] <= hi))
            if idx.size == 0:
                continue
            pick = np.unique(idx[np.round(np.linspace(0, idx.size - 1, per_curve)).astype(int)])
            pts += [
                (c["d"], int(n[i]), float(e), float(rob[k, i]), float(rob_se[k, i])) for i in pick
            ]
    return pts


def effective_se(measured: dict, exact: float) -> float:
    """The measurement's standard error, floored at the binomial SE √(p(1−p)/n) at the
    closed-form value p: with few draws whose errors all saturate (all 1 at the headline
    point), the spread over draws is 0 and would claim an exact measurement."""
    p = float(np.clip(exact, 0.0, 1.0))
    return max(measured["se"] or 0.0, float(np.sqrt(p * (1 - p) / measured["n"])))


def agreement(measured: dict, exact: float, exact_se: float, k: float = 3.0) -> dict:
    """Does a measured value agree with the closed form: |Δ| within k combined SEs (and the
    95% confidence interval, for the record)? The measured SE is `effective_se`."""
    se_m = effective_se(measured, exact)
    se = float(np.hypot(se_m, exact_se))
    value = measured["value"]
    delta = value - exact
    return {
        "delta": delta,
        "combined_se": se,
        "ci95": [value - Z95 * se_m, value + Z95 * se_m],
        "within_ci95": bool(abs(delta) <= Z95 * se),
        "agrees": bool(abs(delta) <= max(k * se, 1e-12)),
    }


def measure_curves(key: Array, curves: list[dict], cfg: dict) -> dict:
    """PGD measurements at the informative points of the curves, against the closed form."""
    m = cfg["measure"]
    lo, hi = m["range"]
    pts = informative_points(curves, lo, hi, m["per_curve"])
    rows = []
    # One point (one ε) per call: one compiled program per d, whatever the points.
    for d, n, e, cf, cf_se in pts:
        key, sub = jax.random.split(key)
        row = measure(sub, d, n, [e], G.sigma_of(d, cfg["sigma_mult"]), m)[0]
        row["robust_closed_form"] = C.closed_form(
            cf, how="Φ((ε‖ŵ‖₁ − ⟨ŵ,θ*⟩)/(σ‖ŵ‖₂)) averaged over the curve's exact draws of ŵ"
        )
        row["robust_closed_form_se"] = cf_se
        row["agreement"] = agreement(row["robust"], cf, cf_se)
        rows.append(row)
    return {
        "range": [lo, hi],
        "draws": m["draws"],
        "points": rows,
        "agree": sum(r["agreement"]["agrees"] for r in rows),
        "within_ci95": sum(r["agreement"]["within_ci95"] for r in rows),
        "count": len(rows),
    }


def rule_of_three(errors: int, m: int) -> float:
    """One-sided 95% upper bound on a proportion from `errors` out of m (exact for 0 errors:
    1 − 0.05^(1/m) ≈ 3/m; Clopper–Pearson otherwise)."""
    from scipy import stats as sps

    return float(sps.beta.ppf(0.95, errors + 1, max(m - errors, 1)))


def headline(key: Array, curves: list[dict], cfg: dict) -> dict | None:
    """The measured twin of the headline point (d, n = 1, ε): standard and robust error of ŵ
    from one sample, by clean evaluation and PGD on held-out samples."""
    h = cfg["headline"]
    c = [c for c in curves if c["d"] == h["d"]]
    if not c or 1 not in c[0]["n"] or h["eps"] not in c[0]["eps"]:
        return None
    c = c[0]
    i, k = c["n"].index(1), c["eps"].index(h["eps"])
    m = {**cfg["measure"], **h}
    row = measure(key, h["d"], 1, [h["eps"]], c["sigma"], m)[0]
    total = row["standard"]["n"]
    errors = round(row["standard"]["value"] * total)
    return {
        "d": h["d"],
        "n": 1,
        "eps": h["eps"],
        "sigma": c["sigma"],
        "standard_closed_form": C.closed_form(
            c["standard"][i], how=f"Φ(−⟨ŵ,θ*⟩/(σ‖ŵ‖₂)), mean over {c['draws']} exact draws of ŵ"
        ),
        "robust_closed_form": C.closed_form(
            np.asarray(c["robust"])[k, i],
            how=f"Φ((ε‖ŵ‖₁ − ⟨ŵ,θ*⟩)/(σ‖ŵ‖₂)), mean over {c['draws']} exact draws of ŵ",
        ),
        "standard_measured": row["standard"],
        "standard_measured_upper95": rule_of_three(errors, total),
        "robust_measured": row["robust"],
        "robust_agreement": agreement(
            row["robust"],
            float(np.asarray(c["robust"])[k, i]),
            float(np.asarray(c["robust_se"])[k, i]),
        ),
    }


def nstar_twins(key: Array, nstar: dict, cfg: dict) -> list[dict]:
    """The measured twin of the headline n* row (ε, c): PGD robust error of ŵ(n*) on
    held-out samples at every d of the theory regime, against the closed form at n*."""
    h = cfg["nstar_headline"]
    if h["eps"] not in nstar["eps"] or h["c"] not in nstar["sigma_mults"]:
        return []
    a, b = nstar["eps"].index(h["eps"]), nstar["sigma_mults"].index(h["c"])
    m = {**cfg["measure"], **h["measure"]}
    rows = []
    for j, d in enumerate(nstar["d"]):
        n = float(np.asarray(nstar["n_star"])[a, b, j])
        if d < nstar["d_theory_min"] or not np.isfinite(n):
            continue
        key, sub = jax.random.split(key)
        row = measure(sub, d, int(n), [h["eps"]], G.sigma_of(d, h["c"]), m)[0]
        cf = float(np.asarray(nstar["robust_error_at_n_star"])[a, b, j])
        row["robust_closed_form"] = C.closed_form(
            cf, how="mean closed-form robust error of ŵ(n*) over the n* sweep's exact draws"
        )
        row["agreement"] = agreement(row["robust"], cf, 0.0)
        rows.append(row)
    return rows
