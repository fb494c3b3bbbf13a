"""FAB: the Fast Adaptive Boundary attack (Croce & Hein 2020), untargeted and targeted,
for ℓ∞ and ℓ2, and FAB-T as AutoAttack runs it.

FAB looks for the adversarial point of minimal norm. Each step linearises the decision
boundary between the true class y and one other class at the current iterate, projects
both the iterate and the clean point onto that hyperplane (intersected with the input
box), moves to a convex combination of the two projections (biased towards the clean
point, weight alpha) extrapolated by eta, and after every success steps back towards the
clean point by beta. The smallest adversarial point seen is kept per example.

Result contract (`fab`, `fab_targeted`), per example i:
  * value[i] = −‖x_best[i] − x[i]‖ in the threat's norm, for the smallest misclassified
    point x_best[i] found (0 if x[i] is already misclassified, −inf if none was found).
    It is reported even when the norm exceeds ε, so −value is the attack's estimate of
    the minimal adversarial norm.
  * x_adv[i] = x_best[i] if that norm is <= ε (threat.eps, scalar or (B,)), else x[i].
  * delta = x_adv − x; success[i] = found, within ε and argmax logits_fn(x_adv)[i] != y[i].

Targeted FAB succeeds when the label changes (to any class, as in AutoAttack); the
target only chooses which boundary is linearised.

The projections `projection_l2` and `projection_linf` are exact, per-example and of fixed
shape (a float-exhaustive bisection, then the exact solve of the bracketed linear piece),
so they vmap and jit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.attacks.pgd import check_attack_inputs, check_classifier_args, guard
from jaxrobust.errors import (
    InputError,
    check_int,
    check_labels,
    check_logits,
    check_number,
    finite_checks,
    is_concrete,
    label_checks,
    screen,
)
from jaxrobust.optimize import Result
from jaxrobust.threat import ThreatModel, example_keys

Array = jax.Array
LogitsFn = Callable[[Array], Array]

_NORMS = ("linf", "l2")


# ----------------------------------------------------------------------------- projections


# Bisection passes on λ: float32 brackets collapse to adjacent floats well before 40.
_BISECTION_STEPS = 40


def _hyperplane_box(z: Array, w: Array, b: Array, lo: float, hi: float, norm: str) -> Array:
    """Minimal-norm delta with w·(z + delta) + b = 0 and lo <= z + delta <= hi.

    With σ = −sign(w·z + b) the constraint reads Σ σw_i δ_i = r := |w·z + b| >= 0, and the
    KKT conditions give δ_i = sign(σw_i) · min(λ a_i, room_i) for one λ >= 0, where
    room_i is how far the box lets coordinate i move in the helpful direction and
    a_i = |w_i| (ℓ2) or 1 (ℓ∞, where λ is the ℓ∞ norm itself). The progress
    g(λ) = Σ |w_i| min(λ a_i, room_i) is piecewise linear and nondecreasing, with kinks at
    λ_i = room_i / a_i. Bisection brackets the λ with g(λ) = r to adjacent floats; the
    coordinates saturated at the bracket's lower end fix the linear piece, which is then
    solved exactly. (A sort of the kinks with cumulative sums gives the same answer, but
    XLA:CPU's sort made it 5x slower; this is elementwise work and reductions only.) If
    even λ = ∞ falls short, the hyperplane misses the box and the box corner that gets
    closest is returned.
    """
    shape, dtype = z.shape, z.dtype
    z, w = z.reshape(-1), w.reshape(-1).astype(dtype)
    c = jnp.vdot(w, z) + b
    sw = jnp.where(c > 0, -w, w)  # σw: now we need Σ sw_i δ_i = r
    r = jnp.abs(c)
    aw = jnp.abs(sw)
    # Room to move in the helpful direction; max(., 0) guards points a rounding error
    # outside the box.
    room = jnp.maximum(jnp.where(sw > 0, hi - z, z - lo), 0.0)
    a = aw if norm == "l2" else (aw > 0).astype(dtype)
    kink = jnp.where(a > 0, room / jnp.where(a > 0, a, 1.0), 0.0)
    lam_lo, lam_hi = jnp.zeros((), dtype), jnp.max(kink)
    for _ in range(_BISECTION_STEPS):  # unrolled: a loop would cost more than its body
        mid = 0.5 * (lam_lo + lam_hi)
        below = jnp.sum(aw * jnp.minimum(mid * a, room)) < r
        lam_lo = jnp.where(below, mid, lam_lo)
        lam_hi = jnp.where(below, lam_hi, mid)
    saturated = (kink <= lam_lo) & (a > 0)
    sat = jnp.sum(jnp.where(saturated, aw * room, 0.0))
    slope = jnp.sum(jnp.where(saturated, 0.0, aw * a))
    feasible = (jnp.sum(aw * room) >= r) & (slope > 0)
    lam = (r - sat) / jnp.where(slope > 0, slope, 1.0)
    step = jnp.where(feasible, jnp.minimum(lam * a, room), room)
    return (jnp.sign(sw) * step).reshape(shape)


def projection_l2(z: Array, w: Array, b: Array, *, lo: float = 0.0, hi: float = 1.0) -> Array:
    """ℓ2 projection of one point onto the hyperplane {w·v + b = 0} ∩ box [lo, hi]^d.

    Args:
      z: the point, any shape (one example), inside the box; w: normal, same shape as z;
      b: scalar offset; lo, hi: the box.

    Returns:
      delta (shape of z), the minimal-ℓ2 step with w·(z + delta) + b = 0 and z + delta in
      the box; with the box inactive delta = −(w·z + b)/‖w‖₂² · w. If the hyperplane
      misses the box, the box point that gets closest to it along w.
    """
    return _hyperplane_box(z, w, jnp.asarray(b, z.dtype), lo, hi, "l2")


def projection_linf(z: Array, w: Array, b: Array, *, lo: float = 0.0, hi: float = 1.0) -> Array:
    """ℓ∞ projection of one point onto the hyperplane {w·v + b = 0} ∩ box [lo, hi]^d.

    Same arguments as `projection_l2`. Returns delta of minimal ℓ∞ norm t, namely
    delta_i = sign(σw_i) · min(t, room_i) (0 where w_i = 0); with the box inactive
    delta = −(w·z + b)/‖w‖₁ · sign(w). The ℓ∞ minimiser is not unique; this is the one
    that uses every coordinate equally (the reference code's choice).
    """
    return _hyperplane_box(z, w, jnp.asarray(b, z.dtype), lo, hi, "linf")


# ----------------------------------------------------------------------------- helpers


def _norm(v: Array, norm: str) -> Array:
    """Per-example norm of v (B, D) -> (B,)."""
    return jnp.max(jnp.abs(v), axis=1) if norm == "linf" else jnp.sqrt(jnp.sum(v * v, axis=1))


def _dual_norm(v: Array, norm: str) -> Array:
    """The dual norm over the last axis: ℓ1 for ℓ∞, ℓ2 for ℓ2."""
    return jnp.sum(jnp.abs(v), axis=-1) if norm == "linf" else jnp.sqrt(jnp.sum(v * v, axis=-1))


def _predict(logits_fn: LogitsFn, xf: Array, shape: tuple) -> Array:
    return logits_fn(xf.reshape(shape))


def _margin(logits: Array, y: Array) -> Array:
    """z_y − max_{j≠y} z_j: positive while classified as y."""
    zy = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    other = jnp.where(jax.nn.one_hot(y, logits.shape[1], dtype=bool), -jnp.inf, logits)
    return zy - jnp.max(other, axis=1)


def _linearize(
    logits_fn: LogitsFn, xf: Array, shape: tuple, y: Array, target: Array | None, norm: str
) -> tuple[Array, Array]:
    """Value df (B,) and gradient dg (B, D) of f_t − f_y at xf (B, D).

    Targeted: t is given, one vjp with cotangent onehot(t) − onehot(y). Untargeted: t is
    the class whose linearised boundary is closest, |df_j| / ‖dg_j‖_dual, which needs
    every class's gradient: one forward pass and a vmap of the vjp over the C one-hots.
    """
    logits, vjp_fn = jax.vjp(lambda v: _predict(logits_fn, v, shape), xf)
    batch, num_classes = logits.shape
    rows = jnp.arange(batch)
    if target is not None:
        cot = jax.nn.one_hot(target, num_classes, dtype=logits.dtype) - jax.nn.one_hot(
            y, num_classes, dtype=logits.dtype
        )
        (dg,) = vjp_fn(cot)
        return logits[rows, target] - logits[rows, y], dg
    eye = jnp.eye(num_classes, dtype=logits.dtype)
    cots = jnp.broadcast_to(eye[:, None, :], (num_classes, batch, num_classes))
    (grads,) = jax.vmap(vjp_fn)(cots)  # (C, B, D)
    grads = jnp.swapaxes(grads, 0, 1)  # (B, C, D)
    df = logits - logits[rows, y][:, None]
    dg = grads - grads[rows, y][:, None, :]
    dist = jnp.abs(df) / (_dual_norm(dg, norm) + 1e-12)
    dist = jnp.where(jax.nn.one_hot(y, num_classes, dtype=bool), jnp.inf, dist)
    t = jnp.argmin(dist, axis=1)
    return df[rows, t], dg[rows, t]


def _start_directions(key: Array, x0: Array, restarts: int, norm: str) -> Array:
    """(restarts, B, D) unit-norm random directions, zero for the first run (which starts
    at x0). Drawn up front, outside the attack's loops: sampling inside them multiplies
    the compile time. Example i's direction in run r comes from fold_in(fold_in(key, r), i).
    """

    def one(r):
        keys = example_keys(jax.random.fold_in(key, r), x0.shape[0])
        if norm == "linf":
            sample = lambda k: jax.random.uniform(k, x0.shape[1:], x0.dtype, -1.0, 1.0)  # noqa: E731
        else:
            sample = lambda k: jax.random.normal(k, x0.shape[1:], x0.dtype)  # noqa: E731
        u = jax.vmap(sample)(keys)
        return u / jnp.maximum(_norm(u, norm), 1e-12)[:, None]

    first = jnp.zeros((1, *x0.shape), x0.dtype)
    if restarts == 1:
        return first
    return jnp.concatenate([first, jax.vmap(one)(jnp.arange(1, restarts))])


def _fab_runs(
    logits_fn: LogitsFn,
    x0: Array,
    shape: tuple,
    y: Array,
    target: Array | None,
    directions: Array,
    eps: Array,
    best: Array,
    best_norm: Array,
    *,
    norm: str,
    steps: int,
    alpha_max: float,
    eta: float,
    beta: float,
    lo: float,
    hi: float,
) -> tuple[Array, Array]:
    """FAB runs of `steps` steps on flat inputs x0 (B, D), one per start direction
    (`_start_directions`); returns the updated per-example (best point (B, D), best norm
    (B,))."""

    def project_both(x1, w, b):
        pts = jnp.concatenate([x1, x0])
        ws = jnp.concatenate([w, w])
        bs = jnp.concatenate([b, b])
        proj = projection_linf if norm == "linf" else projection_l2
        d = jax.vmap(lambda p, ww, bb: proj(p, ww, bb, lo=lo, hi=hi))(pts, ws, bs)
        return d[: x0.shape[0]], d[x0.shape[0] :]

    def step(carry, _):
        x1, best, best_norm = carry
        df, dg = _linearize(logits_fn, x1, shape, y, target, norm)
        # Boundary f_t − f_y ≈ df + dg·(v − x1) = 0, i.e. w·v + b = 0.
        b = df - jnp.sum(dg * x1, axis=1)
        d1, d2 = project_both(x1, dg, b)
        a1 = jnp.maximum(_norm(d1, norm), 1e-8)
        a2 = jnp.maximum(_norm(d2, norm), 1e-8)
        # Far from the boundary the step leans on x1's projection; close to it, towards
        # x0's, which pulls the iterate along the boundary to a smaller norm.
        alpha = jnp.clip(a1 / (a1 + a2), 0.0, alpha_max)[:, None]
        x1 = jnp.clip((x1 + eta * d1) * (1 - alpha) + (x0 + eta * d2) * alpha, lo, hi)
        adv = jnp.argmax(_predict(logits_fn, x1, shape), axis=1) != y
        dist = _norm(x1 - x0, norm)
        better = adv & (dist < best_norm)
        best = jnp.where(better[:, None], x1, best)
        best_norm = jnp.where(better, dist, best_norm)
        # Backward step: restart the search from inside the adversarial region's edge.
        x1 = jnp.where(adv[:, None], x0 + beta * (x1 - x0), x1)
        return (x1, best, best_norm), None

    def run(carry, u):
        best, best_norm = carry
        # The first run starts at x0 (u = 0); later runs at a random point at half the
        # smaller of ε and the best norm so far, as in the authors' original code
        # (AutoAttack restarts from scratch, so its radius is always ε/2).
        radius = 0.5 * jnp.minimum(best_norm, eps)
        radius = jnp.where(jnp.isfinite(radius), radius, 0.0)
        x1 = jnp.clip(x0 + radius[:, None] * u, lo, hi)
        (_, best, best_norm), _ = jax.lax.scan(step, (x1, best, best_norm), None, length=steps)
        return (best, best_norm), None

    (best, best_norm), _ = jax.lax.scan(run, (best, best_norm), directions)
    return best, best_norm


def _final_search(
    logits_fn: LogitsFn,
    x0: Array,
    shape: tuple,
    y: Array,
    best: Array,
    best_norm: Array,
    iters: int,
    norm: str,
    lo: float,
    hi: float,
) -> tuple[Array, Array]:
    """Shrink each found point along the segment [x0, best]: the optional final search of
    the authors' original FAB code (fab-attack, `--las`; AutoAttack runs without it).

    Regula falsi on the margin z_y − max_{j≠y} z_j, with the candidate nudged 1e-4
    (relative) past the interpolated root so that on a locally linear model it lands on the
    adversarial side; the adversarial end of the bracket only moves to verified
    misclassified points, so the norm never grows.
    """
    direction = best - x0
    m0 = _margin(_predict(logits_fn, x0, shape), y)
    m1 = _margin(_predict(logits_fn, best, shape), y)
    one = jnp.ones_like(best_norm)

    def body(carry, _):
        s_lo, m_lo, s_hi, m_hi, x_hi = carry
        denom = m_lo - m_hi
        root = s_lo + (s_hi - s_lo) * m_lo / jnp.where(denom > 0, denom, 1.0)
        cand = root * (1 + 1e-4)
        ok = (denom > 0) & (cand > s_lo) & (cand < s_hi)
        cand = jnp.where(ok, cand, 0.5 * (s_lo + s_hi))
        xc = jnp.clip(x0 + cand[:, None] * direction, lo, hi)
        logits = _predict(logits_fn, xc, shape)
        mc = _margin(logits, y)
        adv = jnp.argmax(logits, axis=1) != y
        s_lo, m_lo = jnp.where(adv, s_lo, cand), jnp.where(adv, m_lo, mc)
        s_hi, m_hi = jnp.where(adv, cand, s_hi), jnp.where(adv, mc, m_hi)
        x_hi = jnp.where(adv[:, None], xc, x_hi)
        return (s_lo, m_lo, s_hi, m_hi, x_hi), None

    init = (jnp.zeros_like(best_norm), m0, one, m1, best)
    (_, _, _, _, x_hi), _ = jax.lax.scan(body, init, None, length=iters)
    refine = jnp.isfinite(best_norm) & (best_norm > 0)
    new_norm = _norm(x_hi - x0, norm)
    take = refine & (new_norm < best_norm)
    return jnp.where(take[:, None], x_hi, best), jnp.where(take, new_norm, best_norm)


def _check(threat: ThreatModel, x: Any, steps: int, restarts: int, **params: float) -> None:
    if threat.name not in _NORMS:
        raise InputError(
            f"FAB supports the ℓ∞ and ℓ2 threat models ('linf', 'l2'), got {threat.name!r}"
        )
    check_number(params["alpha_max"], "alpha_max", 0.0, 1.0)
    check_number(params["eta"], "eta", 0.0, lo_open=True)
    check_number(params["beta"], "beta", 0.0, 1.0, lo_open=True)
    check_int(params["final_search"], "final_search", 0)
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps <= 0:
        raise InputError(f"FAB needs steps >= 1 (an int), got {steps!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int | np.integer) or restarts < 1:
        raise InputError(f"FAB needs restarts >= 1 (an int), got {restarts!r}")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise InputError(f"x must be a floating-point array, got dtype {jnp.result_type(x)}")
    alpha_max, eta, beta = params["alpha_max"], params["eta"], params["beta"]
    if not 0.0 <= alpha_max <= 1.0:
        raise InputError(f"alpha_max must be in [0, 1], got {alpha_max}")
    if not eta > 0.0:
        raise InputError(f"eta must be > 0, got {eta}")
    if not 0.0 < beta <= 1.0:
        raise InputError(f"beta must be in (0, 1], got {beta}")


def _setup(logits_fn: LogitsFn, x: Array, y: Array) -> tuple[Array, Array, Array, int]:
    """Clean logits, flat inputs and the number of classes; checks the model's output."""
    logits0 = logits_fn(x)
    # Shape always; non-finite values only when concrete (fail before the attack runs).
    check_logits(logits0, x.shape[0])
    num_classes = logits0.shape[1]
    if num_classes < 2:
        raise InputError(f"FAB needs at least 2 classes, the model returns {num_classes}")
    check_labels(y, num_classes)
    return logits0, x.reshape(x.shape[0], -1), jnp.asarray(y), num_classes


def _result(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    logits0: Array,
    best: Array,
    best_norm: Array,
    eps: Array,
) -> Result:
    within = best_norm <= eps
    x_adv = jnp.where(within[:, None], best, x.reshape(x.shape[0], -1)).reshape(x.shape)
    success = within & (jnp.argmax(logits_fn(x_adv), axis=1) != y)
    # NaN where the clean logits are not finite, so `guard` names the problem.
    finite = jnp.all(jnp.isfinite(logits0), axis=1)
    value = jnp.where(finite, -best_norm, jnp.nan)
    return Result(x_adv, x_adv - x, value, success)


def _initial_best(xf: Array, logits0: Array, y: Array) -> tuple[Array, Array]:
    """Already misclassified examples have found their minimum: x itself, norm 0."""
    mis = jnp.argmax(logits0, axis=1) != y
    return xf, jnp.where(mis, 0.0, jnp.inf).astype(xf.dtype)


def fab(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    key: Array,
    *,
    threat: ThreatModel,
    steps: int = 100,
    restarts: int = 1,
    target: Array | None = None,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    final_search: int = 3,
) -> Result:
    """Fast Adaptive Boundary attack (Croce & Hein 2020): minimum-norm adversarial points.

    Args:
      logits_fn: the model, x (B, ...) -> logits (B, C); examples must not interact.
      x: (B, ...) clean inputs (images or flat) inside `threat.box`.
      y: (B,) int labels.
      key: PRNG key for the random starts of restarts 2, 3, ...; the same key gives the
        same result.
      threat: `linf(eps)` or `l2(eps)`; the norm FAB minimises, ε (scalar or (B,)) the
        budget that decides success and the radius of the random starts, and the box.
      steps: FAB iterations per restart (each: one forward and one backward pass (C
        backward passes untargeted) plus one forward pass to check the new point).
      restarts: runs per example; the first starts at x, the others at a random point at
        distance ½·min(ε, best norm so far) in the threat's norm.
      target: optional (B,) target classes (!= y); then the boundary y|target is
        linearised at every step, else the closest boundary by linearised distance.
      alpha_max: the paper's maximal bias towards x (default as in the paper and
        AutoAttack).
      eta: the paper's extrapolation factor (default as in the paper and AutoAttack).
      beta: the paper's backward-step factor (default as in the paper and AutoAttack).
      final_search: regula-falsi steps on the segment from x to the best point found
        (the original FAB code's optional final search; 0 disables it, as in AutoAttack).
        It costs one forward pass per step and removes the ~0.5% excess norm at which
        FAB's overshoot/backward-step cycle settles on a locally linear boundary.

    Returns:
      `Result(x_adv, delta, value, success)` per the module docstring: value = −(norm of
      the smallest adversarial perturbation found) (−inf if none, 0 if x is already
      misclassified); x_adv is that point if its norm is <= ε, else x.
    """
    check_classifier_args(logits_fn, x, y, threat, key, who="FAB")
    _check(
        threat,
        x,
        steps,
        restarts,
        alpha_max=alpha_max,
        eta=eta,
        beta=beta,
        final_search=final_search,
    )
    checks = check_attack_inputs(x, y, threat, target, logits_fn=logits_fn)
    if final_search < 0:
        raise InputError(f"final_search must be >= 0, got {final_search}")
    logits0, xf, y, num_classes = _setup(logits_fn, x, y)
    checks += _model_checks(logits0, y, num_classes)
    if target is not None:
        target = jnp.asarray(target)
        check_labels(target, num_classes, name="target")
        checks += screen(label_checks(target, num_classes, name="target"))
        if is_concrete(target) and is_concrete(y) and np.any(np.asarray(target) == np.asarray(y)):
            raise InputError("target must differ from y for every example")
    lo, hi = threat.box
    eps = jnp.broadcast_to(jnp.asarray(threat.eps, xf.dtype), (x.shape[0],))
    best, best_norm = _initial_best(xf, logits0, y)
    directions = _start_directions(key, xf, restarts, threat.name)
    best, best_norm = _fab_runs(
        logits_fn, xf, x.shape, y, target, directions, eps, best, best_norm,
        norm=threat.name, steps=steps, alpha_max=alpha_max, eta=eta, beta=beta, lo=lo, hi=hi,
    )  # fmt: skip
    if final_search:
        best, best_norm = _final_search(
            logits_fn, xf, x.shape, y, best, best_norm, final_search, threat.name, lo, hi
        )
    return guard(_result(logits_fn, x, y, logits0, best, best_norm, eps), checks)


def _model_checks(logits0: Array, y: Array, num_classes: int) -> list:
    """Labels in [0, C) and finite clean logits: traced checks (concrete ones raised in
    `_setup`)."""
    return screen([*label_checks(y, num_classes), *finite_checks(logits0)])


def fab_targeted(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    key: Array,
    *,
    threat: ThreatModel,
    steps: int = 100,
    n_target_classes: int = 9,
    restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    final_search: int = 3,
) -> Result:
    """FAB-T as in AutoAttack: targeted FAB against each of the top-k classes.

    The targets are the k = min(n_target_classes, C − 1) classes other than y with the
    largest clean logits; targeted FAB runs `restarts` times against each (target j with
    key fold_in(key, j)), and per example the smallest adversarial point over all targets
    is kept. Unlike AutoAttack's cascade, every target runs on every example (fixed
    shapes), so the result is the minimum-norm point, not just the first within ε.
    Arguments and `Result` as in `fab`.
    """
    check_classifier_args(logits_fn, x, y, threat, key, who="FAB-T")
    _check(
        threat,
        x,
        steps,
        restarts,
        alpha_max=alpha_max,
        eta=eta,
        beta=beta,
        final_search=final_search,
    )
    checks = check_attack_inputs(x, y, threat, logits_fn=logits_fn)
    check_int(n_target_classes, "n_target_classes", 1)
    if isinstance(n_target_classes, bool) or n_target_classes < 1:
        raise InputError(f"n_target_classes must be >= 1, got {n_target_classes!r}")
    if final_search < 0:
        raise InputError(f"final_search must be >= 0, got {final_search}")
    logits0, xf, y, num_classes = _setup(logits_fn, x, y)
    checks += _model_checks(logits0, y, num_classes)
    k = min(int(n_target_classes), num_classes - 1)
    others = jnp.where(jax.nn.one_hot(y, num_classes, dtype=bool), -jnp.inf, logits0)
    targets = jax.lax.top_k(others, k)[1]  # (B, k), highest clean logit first
    lo, hi = threat.box
    eps = jnp.broadcast_to(jnp.asarray(threat.eps, xf.dtype), (x.shape[0],))

    directions = jax.vmap(
        lambda j: _start_directions(jax.random.fold_in(key, j), xf, restarts, threat.name)
    )(jnp.arange(k))  # (k, restarts, B, D)

    def one_target(carry, inputs):
        target, dirs = inputs
        best, best_norm = _fab_runs(
            logits_fn, xf, x.shape, y, target, dirs, eps, *carry,
            norm=threat.name, steps=steps, alpha_max=alpha_max, eta=eta, beta=beta, lo=lo,
            hi=hi,
        )  # fmt: skip
        return (best, best_norm), None

    best, best_norm = _initial_best(xf, logits0, y)
    (best, best_norm), _ = jax.lax.scan(one_target, (best, best_norm), (targets.T, directions))
    if final_search:
        best, best_norm = _final_search(
            logits_fn, xf, x.shape, y, best, best_norm, final_search, threat.name, lo, hi
        )
    return guard(_result(logits_fn, x, y, logits0, best, best_norm, eps), checks)
