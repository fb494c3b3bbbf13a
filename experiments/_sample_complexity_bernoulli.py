"""The Bernoulli model of Schmidt et al. (2018): a linear classifier against the same
classifier on sign-thresholded inputs (helper module of `jaxrobust experiment
sample_complexity`).

y uniform in {±1}, x ∈ {±1}^d with P(xᵢ = y·θ*ᵢ) = (1+τ)/2 (θ* = 1, τ = tau_mult·d^{−1/4}).
The learner ŵ is the mean of yᵢxᵢ over n samples; the two classifiers are sign(⟨ŵ, x⟩) and
sign(⟨ŵ, sign(x)⟩). On clean inputs sign(x) = x, so their standard errors are identical.

Robust errors (ℓ∞ ball of radius ε, measured on held-out samples, fresh ones per draw of ŵ):
- linear: the exact worst case (the corner −y·ε·sign(ŵ) lowers y·⟨ŵ, x⟩ by ε‖ŵ‖₁),
  checked against the library's PGD;
- thresholded: attacked two ways on the composed model x -> sign(x) -> ŵ. (1) The library's
  PGD with a straight-through (BPDA) gradient through sign: the backward pass treats sign as
  the identity. (2) An exact search: the score is separable, so coordinate i's worst sign is
  one of sign(xᵢ ± ε) (the ends of the reachable interval), picked per coordinate; the
  resulting x_adv is evaluated by the model. For ε < 1 no xᵢ ∈ {±1} changes sign, so by
  argument the robust error equals the standard error (recorded as a `by_argument` twin);
  the control radius ε > 1 shows that the same attacks do break the thresholded model
  when signs can flip.
"""

from __future__ import annotations

from functools import partial

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def sign_ste(x: Array) -> Array:
    """sign(x) forward, identity backward (straight-through / BPDA)."""
    return x + jax.lax.stop_gradient(jnp.sign(x) - x)


def thresholded_logits_fn(w: Array):
    """The composed model x (B, d) -> sign(x) -> logits of ⟨w, sign(x)⟩, with BPDA gradients."""
    return lambda x: C.binary_logits(sign_ste(x) @ w)


def exact_thresholded_attack(w: Array, x: Array, y_pm: Array, eps: Array) -> Array:
    """The worst-case x_adv (B, d) of sign(⟨w, sign(x)⟩) in the ℓ∞ ball of radius eps.

    y·⟨w, sign(x + δ)⟩ = Σᵢ y·wᵢ·sign(xᵢ + δᵢ) is separable and each term is monotone in δᵢ,
    so its minimum over |δᵢ| ≤ ε is at δᵢ = −ε or +ε: take the smaller per coordinate.
    """
    lo, hi = x - eps, x + eps
    t = y_pm[:, None] * w[None, :]
    return jnp.where(t * jnp.sign(lo) <= t * jnp.sign(hi), lo, hi)


def _wrong(z: Array, y_pm: Array) -> Array:
    """Misclassified (float) for scores z (B,); ties go to class 0 like argmax."""
    return ((z > 0).astype(jnp.int32) != C.to_class(y_pm)).astype(jnp.float32)


@partial(jax.jit, static_argnames=("d", "n_list", "draws", "test", "steps"))
def _core(key, tau, eps, *, d, n_list, draws, test, steps):
    """Per draw r, sample size n and radius ε: error rates on `test` fresh held-out samples.

    Returns a dict of (R, N) standard errors and (E, R, N) robust errors: linear exact,
    linear PGD, thresholded PGD-BPDA, thresholded exact search.
    """
    p = (1 + tau) / 2
    n_arr = jnp.asarray(n_list)

    def one_draw(k):
        kd, kt, ky, ka = jax.random.split(k, 4)
        rows = 2.0 * jax.random.bernoulli(kd, p, (max(n_list), d)).astype(jnp.float32) - 1.0
        w = jnp.cumsum(rows, axis=0)[n_arr - 1] / n_arr[:, None]  # (N, d)
        y = jax.random.rademacher(ky, (test,)).astype(jnp.float32)
        x = y[:, None] * (2.0 * jax.random.bernoulli(kt, p, (test, d)).astype(jnp.float32) - 1.0)

        def at_n(wn):
            z = x @ wn
            std = _wrong(z, y).mean()
            std_thr = _wrong(jnp.sign(x) @ wn, y).mean()

            def at_eps(e):
                threat = C.wide_linf(e)
                lin_exact = _wrong(z - y * e * jnp.sum(jnp.abs(wn)), y).mean()
                lin_pgd = C.pgd_error(C.linear_logits_fn(wn), x, y, ka, threat, steps)
                thr_pgd = C.pgd_error(thresholded_logits_fn(wn), x, y, ka, threat, steps)
                x_adv = exact_thresholded_attack(wn, x, y, e)
                thr_exact = _wrong(jnp.sign(x_adv) @ wn, y).mean()
                return lin_exact, lin_pgd, thr_pgd, thr_exact

            return std, std_thr, jax.lax.map(at_eps, eps)

        return jax.lax.map(at_n, w)

    std, std_thr, (lin_exact, lin_pgd, thr_pgd, thr_exact) = jax.lax.map(
        one_draw, jax.random.split(key, draws)
    )  # (R, N), (R, N), each (R, N, E)
    tr = lambda a: jnp.transpose(a, (2, 0, 1))  # noqa: E731  (R, N, E) -> (E, R, N)
    return {
        "linear_standard": std,
        "thresholded_standard": std_thr,
        "linear_robust_exact": tr(lin_exact),
        "linear_robust_pgd": tr(lin_pgd),
        "thresholded_robust_pgd": tr(thr_pgd),
        "thresholded_robust_exact": tr(thr_exact),
    }


def bernoulli_experiment(key: Array, cfg: dict) -> dict:
    b = cfg["bernoulli"]
    d, r, m = b["d"], b["draws"], b["test"]
    tau = float(b["tau_mult"] * d**-0.25)
    eps_list = [float(k * tau) for k in b["eps_over_tau"]] + [float(e) for e in b["eps_control"]]
    res = {
        k: np.asarray(v, float)
        for k, v in _core(
            key,
            jnp.float32(tau),
            jnp.asarray(eps_list, jnp.float32),
            d=d,
            n_list=tuple(b["n"]),
            draws=r,
            test=m,
            steps=b["steps"],
        ).items()
    }
    se = lambda a: a.std(-2, ddof=1) / np.sqrt(r)  # noqa: E731  over the draw axis
    per = f"mean over {r} draws of ŵ × {m} fresh held-out samples each, SE over draws"

    def meas(a, how):
        return C.measured(a.mean(-2), n=r * m, se=se(a), how=f"{how}; {per}")

    std = res["linear_standard"]
    thr_pgd, thr_exact = res["thresholded_robust_pgd"], res["thresholded_robust_exact"]
    lin_exact, lin_pgd = res["linear_robust_exact"], res["linear_robust_pgd"]
    steps = b["steps"]
    return {
        "d": d,
        "tau": tau,
        "eps": eps_list,
        "eps_is_control": [False] * len(b["eps_over_tau"]) + [True] * len(b["eps_control"]),
        "n": b["n"],
        "draws": r,
        "test_samples": m,
        "standard": meas(std, "clean error of sign(⟨ŵ, x⟩) (= thresholded: sign(x) = x)"),
        "standard_identical_for_both": bool(np.array_equal(std, res["thresholded_standard"])),
        "linear_robust": meas(
            lin_exact, "exact ℓ∞ worst case of the linear model (corner −y·ε·sign(ŵ))"
        ),
        "linear_robust_pgd": meas(lin_pgd, f"library PGD ({steps} steps, margin loss)"),
        "thresholded_robust": meas(
            thr_pgd,
            f"library PGD ({steps} steps, margin loss) with a straight-through (BPDA) gradient "
            "through sign(x)",
        ),
        "thresholded_robust_exact_search": meas(
            thr_exact, "exact per-coordinate worst sign (δᵢ = ±ε), evaluated by the model"
        ),
        "thresholded_robust_by_argument": C.by_argument(
            [std.mean(0).tolist() if e < 1 else None for e in eps_list],
            why="for ε < 1 no coordinate of x ∈ {±1}^d changes sign inside the ℓ∞ ball, so "
            "the thresholded classifier's robust error is its standard error (None: ε ≥ 1)",
        ),
        "checks": {
            "linear_pgd_equals_exact": bool(np.array_equal(lin_pgd, lin_exact)),
            "linear_pgd_max_abs_diff": float(np.abs(lin_pgd - lin_exact).max()),
            "thresholded_pgd_equals_exact_search": bool(np.array_equal(thr_pgd, thr_exact)),
            "thresholded_pgd_max_abs_diff": float(np.abs(thr_pgd - thr_exact).max()),
            "thresholded_equals_standard_below_1": bool(
                all(np.array_equal(thr_pgd[k], std) for k, e in enumerate(eps_list) if e < 1)
            ),
        },
    }
