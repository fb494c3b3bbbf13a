"""Auto-PGD (Croce & Hein 2020): PGD with momentum and a step size that adapts itself.

"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks" (ICML 2020). APGD is a `StepRule` of the `jaxrobust.optimize` engine:

- initial step size η = 2ε (per example), first step plain projected steepest ascent;
- then heavy-ball momentum: z = P(x_k + η·ascent(g_k)),
  x_{k+1} = P(x_k + α(z − x_k) + (1 − α)(x_k − x_{k−1})), α = 0.75;
- at checkpoints w_j (`checkpoints`) η is halved, per example, when the loss rose in fewer
  than a fraction ρ of the steps since w_{j−1}, or when η was not halved at w_{j−1} and the
  best loss has not improved since; a halving restarts the iterate from the best point.

`apgd` is APGD-CE / APGD-DLR, `apgd_targeted` is APGD-T (targeted DLR over the top-k
classes), the two gradient attacks of AutoAttack. ℓ∞ and ℓ2 follow the paper.

ℓ1 runs ℓ1-APGD (Croce & Hein 2021, "Mind the box", ICML), `apgd_l1_rule`, as AutoAttack's
reference does for norm='L1':

- the step moves only the k coordinates with the largest |gradient| among those the box
  still lets move in the ascent direction, each by η/k (a unit-ℓ1 sign step, times η); the
  iterate is then projected exactly onto the ℓ1 ball ∩ box;
- k starts at ⌈0.2·d⌉ (`topk_fraction`, d the input dimension) and η at ε; every
  max(⌊0.04·n⌋, 1) steps, k becomes the sparsity of the best point so far divided by 1.5,
  and η is reset to ε (restarting from the best point) when that sparsity dropped by more
  than 5% since the last check, else divided by 1.5, never below ε/10;
- no momentum (the reference computes none for ℓ1); ρ and the checkpoints w_j are unused;
- `use_largereps` (AutoAttack's standard ℓ1 version, on by default for ℓ1): the n steps
  are split into stages at radius 3ε (⌈0.3n⌉ steps), 2ε (⌈0.3n⌉) and ε (the rest); each
  stage starts from the previous stage's result projected onto its own ball, with k from
  that start's sparsity. Only the last stage, at ε, makes the result.

Relation to the ℓ1 reference (pyautoattack's autopgd_base.py):

- the sparse step moves exactly k coordinates by index (the reference keeps every |g|
  tied with the k-th), among those free to move inside the box (the paper's steepest
  ascent over ball ∩ box; the reference leaves that to the projection);
- k = max(⌊s/1.5⌋, 1) with s the smaller of the sparsities of the best point and of the
  point the step starts from. The reference takes s from the best point only, and its
  quantile index rounds up, ⌈s/1.5⌉. Both let the iteration stall for good: a sign step
  of η/k on k coordinates that cover the iterate's support is undone exactly by the
  projection, which subtracts λ = η/k from every nonzero coordinate, and then neither the
  iterate nor the best point nor k ever changes (⌈s/1.5⌉ = s at s = 2; an iterate sparser
  than the best point). Seen on a linear model: a run stuck for 90 of 100 steps at 7.7%
  of ε·max|w| below the optimum; and with ⌈·⌉, an iterate on an edge of the ball (2
  nonzeros) never moves on to the optimal vertex;
- sparsity counts the coordinates holding more than 1e-6 of ‖δ‖₁ (the bisection
  projection leaves float32 crumbs on coordinates it should zero);
- stages after the first start from the engine's best iterate (misclassified first, then
  by loss; the reference, by loss only); the first stage starts uniformly in the 3ε ball
  ∩ box with k = ⌈0.2·d⌉ (the reference: Gaussian noise projected onto it, with k from its
  sparsity).

Relation to the reference implementation (fra31/auto-attack), ℓ∞ and ℓ2:

- checkpoints are computed in exact decimal arithmetic from the published recursion (the
  code's integer windows, ⌊0.22n⌋ shrinking by ⌊0.03n⌋ to ⌊0.06n⌋, agree for n = 100
  and differ slightly for other step counts);
- condition 1 halves when the fraction of increases is < ρ, as in the paper (the code
  uses <= ρ); condition 2 may fire at the first checkpoint, as in the paper (the code
  disables it there);
- the indexing follows the code: the check at w_j sees the objective up to x_{w_j}, and a
  halving makes x_{w_j+1} a step from the best point, with the gradient stored there and
  momentum x_best − x_{w_j−1}; the first window compares f(x_1) with f(x_0) (the code,
  by wrap-around, with 0);
- the ℓ2 projection is the exact projection onto ball ∩ box (the code rescales, then clips);
- the ℓ∞ random start is the code's, δ = ε·t/‖t‖∞ with t uniform in [−1, 1]^d, then
  clipped to the box (`linf`'s own start is uniform in the ball);
- loss="ce" is computed as log1p of the other classes' mass (`precise_cross_entropy`),
  which resolves the losses of confidently classified points that logsumexp(z) − z_y
  rounds to 0 or to a few flat levels in float32 (the code's log-softmax resolves them
  better than that, but not fully); the step rule compares losses, so flat losses stall it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.attacks.pgd import (
    check_attack_inputs,
    check_classifier_args,
    classifier_objective,
    clip_labels,
    guard,
    label_input_checks,
)
from jaxrobust.errors import (
    InputError,
    check_bool,
    check_eps,
    check_int,
    check_number,
    finite_checks,
    is_concrete,
    screen,
)
from jaxrobust.losses import Loss, dlr, dlr_targeted
from jaxrobust.optimize import Result, StepRule, merge_results, optimize
from jaxrobust.threat import ThreatModel, example_keys, l1

Array = jax.Array
LogitsFn = Callable[[Array], Array]


# ----------------------------------------------------------------------------- schedule


def checkpoints(steps: int) -> tuple[int, ...]:
    """The iterations w_j = ⌈p_j · steps⌉ at which APGD may halve its step size.

    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06) while p_j <= 1.
    The p_j are exact multiples of 0.01, so they are computed as fractions: in float64 the
    recursion gives p_3 = 0.5700000000000001 and ⌈57.00000000000001⌉ = 58 for 100 steps.
    Repeated values (few steps) are merged. checkpoints(100) = (0, 22, 41, 57, 70, 80, 87,
    93, 99).
    """
    if steps < 0:
        raise InputError(f"steps must be >= 0, got {steps}")
    p_prev, p = Fraction(0), Fraction(22, 100)
    ps = [p_prev]
    while p <= 1:
        ps.append(p)
        p_prev, p = p, p + max(p - p_prev - Fraction(3, 100), Fraction(6, 100))
    return tuple(sorted({math.ceil(q * steps) for q in ps}))


def _checkpoint_tables(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Static tables indexed by the step index i in [0, steps] (the last entry is padding).

    is_check[i]: i is a checkpoint w_j, j >= 1, that still has a step after it;
    span[i]: w_j − w_{j−1} there (the number of loss comparisons in the window).
    """
    is_check = np.zeros(steps + 1, bool)
    span = np.ones(steps + 1, np.int32)
    ws = checkpoints(steps)
    for prev, w in itertools.pairwise(ws):
        if w < steps:
            is_check[w] = True
            span[w] = w - prev
    return is_check, span


# ----------------------------------------------------------------------------- step rule


class APGDState(NamedTuple):
    """Per-example state of the APGD rule; B is the batch size, delta-shaped fields (B, ...).

    eta: (B,) current step size (the threat's norm units);
    prev: the perturbation the last step started from (x_{k−1}, or the best point after a
      restart), for the momentum term;
    prev_score: (B,) signed objective at the previous iterate (+inf before the first step);
    count: (B,) int32 steps since the last checkpoint where the objective increased;
    best_delta, best_score, best_grad: best iterate by objective (not by success), its
    signed objective and its gradient (to step from it after a restart);
    check_best: (B,) best_score at the last checkpoint;
    reduced: (B,) bool, η was halved at the last checkpoint (w_0 = 0 never halves).
    """

    eta: Array
    prev: Array
    prev_score: Array
    count: Array  # type: ignore[assignment]  # field shadows tuple.count (works at runtime)
    best_delta: Array
    best_score: Array
    best_grad: Array
    check_best: Array
    reduced: Array


def _rows(v: Array, like: Array) -> Array:
    """(B,) -> (B, 1, ..., 1) to broadcast against `like`."""
    return v.reshape((-1,) + (1,) * (like.ndim - 1))


def _where(cond: Array, a: Array, b: Array) -> Array:
    return jnp.where(_rows(cond, a), a, b)


def _check_unit(name: str, v: float) -> None:
    if not 0.0 <= v <= 1.0:
        raise InputError(f"{name} must be in [0, 1], got {v}")


def _rule_eps(threat: ThreatModel, eps: Any) -> Any:
    """The radius that sets APGD's step size: `eps`, else the threat's; finite, >= 0."""
    if eps is None:
        eps = 1.0 if threat.name == "spatial" else threat.eps
    check_eps(eps)
    if is_concrete(eps) and not np.all(np.isfinite(np.asarray(eps, np.float64))):
        raise InputError(
            f"APGD's step size is proportional to eps, so eps must be finite, got {eps!r}; "
            "give apgd_rule(..., eps=...) for an unbounded threat model"
        )
    return eps


def _track_best(state, delta: Array, grad: Array, score: Array):
    """Per-example best point by objective, including the current iterate: (best_delta,
    best_grad, best_score (B,)) from a state with best_delta/best_grad/best_score."""
    better = score > state.best_score
    best_delta = _where(better, delta, state.best_delta)
    best_grad = _where(better, grad, state.best_grad)
    return best_delta, best_grad, jnp.where(better, score, state.best_score)


def apgd_rule(
    threat: ThreatModel,
    steps: int,
    *,
    eps: Any = None,
    momentum: float = 0.75,
    rho: float = 0.75,
) -> StepRule:
    """The APGD update as a `StepRule` for `optimize(..., steps=steps, rule=...)`.

    Args:
      threat: the threat model the engine runs over (for its radius only).
      steps: the engine's number of steps; fixes the checkpoint table (static).
      eps: radius that sets the initial step size η = 2·eps, in the threat's norm units; a
        float, scalar or (B,) array. Default `threat.eps` (1.0 for `spatial`, whose ascent
        is already scaled to each parameter's range).
      momentum: α, the weight of the new gradient step (1 − α on the previous move).
      rho: halve η when the objective rose in fewer than a fraction rho of the steps of a
        checkpoint window.

    The state is an `APGDState`; everything is per example with fixed shapes, so the rule
    jits, vmaps and serves any batch.
    """
    if steps < 0:
        raise InputError(f"steps must be >= 0, got {steps}")
    _check_unit("momentum", momentum)
    _check_unit("rho", rho)
    eps = _rule_eps(threat, eps)
    is_check, span = _checkpoint_tables(steps)

    def init(delta: Array, x: Array) -> APGDState:
        del x
        batch, dtype = delta.shape[0], delta.dtype
        eta = jnp.broadcast_to(2.0 * jnp.asarray(eps, dtype), (batch,))
        return APGDState(
            eta=eta,
            prev=delta,
            prev_score=jnp.full((batch,), jnp.inf, dtype),  # no increase at step 0
            count=jnp.zeros((batch,), jnp.int32),
            best_delta=delta,
            best_score=jnp.full((batch,), -jnp.inf, dtype),
            best_grad=jnp.zeros_like(delta),
            check_best=jnp.full((batch,), -jnp.inf, dtype),
            reduced=jnp.zeros((batch,), bool),
        )

    def update(
        state: APGDState,
        delta: Array,
        grad: Array,
        score: Array,
        i: Array,
        threat: ThreatModel,
        x: Array,
    ) -> tuple[Array, APGDState]:
        # Best point so far by objective, including the current iterate x_i.
        best_delta, best_grad, best_score = _track_best(state, delta, grad, score)
        count = state.count + (score > state.prev_score).astype(jnp.int32)

        idx = jnp.minimum(i, steps)
        at_check = jnp.asarray(is_check)[idx]
        window = jnp.asarray(span)[idx].astype(score.dtype)
        # Condition 1: the objective rose in too few steps of the window (oscillation or
        # a step too large to make progress). Condition 2: η did not change at the last
        # checkpoint and nothing improved since: stuck.
        few_increases = count.astype(score.dtype) < rho * window
        stuck = ~state.reduced & (best_score <= state.check_best)
        halve = at_check & (few_increases | stuck)
        # w_0 = 0 is a checkpoint too: it records the reference best, but never halves.
        new_window = at_check | (i == 0)

        eta = jnp.where(halve, 0.5 * state.eta, state.eta)
        # A halving restarts from the best point, stepping with the gradient stored there.
        base = _where(halve, best_delta, delta)
        g = _where(halve, best_grad, grad)
        z = threat.project(base + _rows(eta, base) * threat.ascent(g), x)
        alpha = jnp.where(i == 0, 1.0, momentum).astype(delta.dtype)  # no momentum at first
        nxt = threat.project(base + alpha * (z - base) + (1 - alpha) * (base - state.prev), x)

        return nxt, APGDState(
            eta=eta,
            prev=base,
            prev_score=score,
            count=jnp.where(new_window, 0, count),
            best_delta=best_delta,
            best_score=best_score,
            best_grad=best_grad,
            check_best=jnp.where(new_window, best_score, state.check_best),
            reduced=jnp.where(new_window, halve, state.reduced),
        )

    return StepRule(init=init, update=update)


# ----------------------------------------------------------------------------- ℓ1-APGD


class APGDL1State(NamedTuple):
    """Per-example state of the ℓ1-APGD rule; B is the batch size, delta-shaped fields (B, ...).

    eta: (B,) current step size (ℓ1 length of the step, input units);
    k: (B,) int32, how many coordinates the next step moves (1 <= k <= d);
    sparsity: (B,) int32, ‖δ_best‖₀ at the last check (d, or ‖δ_0‖₀ for a warm start,
      before the first);
    prev: the perturbation the last step started from, for the (optional) momentum term;
    best_delta, best_score, best_grad: best iterate by objective (not by success), its
    signed objective and its gradient (to step from it after a restart).
    """

    eta: Array
    k: Array
    sparsity: Array
    prev: Array
    best_delta: Array
    best_score: Array
    best_grad: Array


def l1_check_period(steps: int) -> int:
    """Steps between the sparsity checks of ℓ1-APGD: max(⌊0.04·steps⌋, 1).

    In integers (steps // 25), since 0.04·steps in float64 can land just below an integer.
    """
    return max(steps // 25, 1)


def largereps_schedule(steps: int) -> tuple[tuple[int, int], ...]:
    """The stages of `use_largereps` as (ε multiplier, steps): 3ε for ⌈0.3n⌉ steps, 2ε for
    ⌈0.3n⌉, then ε for the rest, n = steps in all (fewer stages get steps when n < 4).

    largereps_schedule(100) = ((3, 30), (2, 30), (1, 40)).
    """
    if steps < 0:
        raise InputError(f"steps must be >= 0, got {steps}")
    first = min(math.ceil(0.3 * steps), steps)
    second = min(math.ceil(0.3 * steps), steps - first)
    return ((3, first), (2, second), (1, steps - first - second))


def _nonzeros(delta: Array) -> Array:
    """(B, ...) -> (B,) int32: ‖δ‖₀ per example, the coordinates that hold more than 1e-6 of
    ‖δ‖₁. The projection's bisection on λ leaves float32 crumbs (~1e-7·ε) on coordinates
    it should zero; counted, they would keep k above the sparsity of the point."""
    mag = jnp.abs(delta.reshape(delta.shape[0], -1))
    tol = 1e-6 * jnp.sum(mag, axis=1, keepdims=True)
    return jnp.sum(mag > tol, axis=1, dtype=jnp.int32)


def sparse_ascent(grad: Array, k: Array) -> Array:
    """sign(g) on the k largest |g_i| of each example, scaled to unit ℓ1 norm.

    grad: (B, ...); k: (B,) int, may be traced. Exactly k coordinates by index (ties go to
    the lower index: keeping every |g_i| tied with the k-th would make a constant gradient
    dense), fewer where g has fewer nonzeros; zero where g is zero. Each moved coordinate
    gets 1/(number moved): a step of η moves the point by η in ℓ1.
    """
    batch = grad.shape[0]
    mag = jnp.abs(grad.reshape(batch, -1))
    order = jnp.argsort(-mag, axis=1, stable=True)  # by |g| descending, per example
    in_top = jnp.arange(mag.shape[1])[None, :] < k[:, None]  # rank < k, in sorted order
    rows = jnp.arange(batch)[:, None]
    keep = jnp.zeros_like(in_top).at[rows, order].set(in_top).reshape(grad.shape)
    d = jnp.where(keep & (grad != 0), jnp.sign(grad), 0.0).astype(grad.dtype)
    return d / jnp.maximum(_flat_sum(jnp.abs(d)), 1.0)


def _flat_sum(v: Array) -> Array:
    return jnp.sum(v, axis=tuple(range(1, v.ndim)), keepdims=True)


def _check_topk_fraction(topk_fraction: float) -> None:
    if not (isinstance(topk_fraction, int | float) and 0.0 < topk_fraction <= 1.0):
        raise InputError(
            f"topk_fraction (the initial fraction of coordinates an ℓ1-APGD step moves) must "
            f"be a number in (0, 1], got {topk_fraction!r}"
        )


def apgd_l1_rule(
    threat: ThreatModel,
    steps: int,
    *,
    eps: Any = None,
    topk_fraction: float = 0.2,
    warm_start: bool = False,
    momentum: float = 1.0,
) -> StepRule:
    """The ℓ1-APGD update (Croce & Hein 2021) as a `StepRule` for `optimize`.

    Args:
      threat: an `l1` threat model (its exact ball ∩ box projection and box test).
      steps: the engine's number of steps; fixes the check period max(⌊0.04·steps⌋, 1).
      eps: radius that sets the step size, η_max = eps (input units, ℓ1); a float, scalar or
        (B,) array. Default `threat.eps`. η stays in [eps/10, eps].
      topk_fraction: k_0 = ⌈topk_fraction·d⌉ coordinates move at first (d = the size of one
        example), in (0, 1]; AutoAttack uses 0.2.
      warm_start: the engine's start is a previous result (the stages of `use_largereps`):
        take k_0 = max(⌊‖δ_0‖₀ / 1.5⌋, 1) from its sparsity instead of `topk_fraction`.
      momentum: α, the weight of the new step (1 − α on the previous move, as `apgd_rule`);
        1 (default) is no momentum, as the reference computes for ℓ1.

    Each step: g ← the gradient with the coordinates the box blocks zeroed; the k_b largest
    |g_i| move by η_b/k_b in the direction sign(g_i); project onto ball ∩ box. At every
    check (steps i = p, 2p, ..., p the period), with s = ‖δ_best‖₀ of the best point so far:
    if s < 0.95 × (s at the previous check) the sparsity is still falling, a new phase:
    η ← eps, restart from the best point with its gradient; otherwise η ← max(η/1.5, eps/10);
    then k ← max(⌊min(s, ‖δ_b‖₀) / 1.5⌋, 1), δ_b the point the step starts from (see the
    module docstring for why not s alone). ‖·‖₀ counts coordinates above 1e-6·‖δ‖₁. The
    state is an `APGDL1State`; fixed shapes, per example, so the rule jits and vmaps.
    """
    if steps < 0:
        raise InputError(f"steps must be >= 0, got {steps}")
    if threat.name != "l1":
        raise InputError(
            f"apgd_l1_rule needs an l1 threat model (ball ∩ box), got {threat.name!r}; use "
            "apgd_rule for other threat models"
        )
    _check_topk_fraction(topk_fraction)
    _check_unit("momentum", momentum)
    eps = _rule_eps(threat, eps)
    period = l1_check_period(steps)

    def init(delta: Array, x: Array) -> APGDL1State:
        del x
        batch, dtype = delta.shape[0], delta.dtype
        d = math.prod(delta.shape[1:])
        if warm_start:
            sparsity = _nonzeros(delta)
            k = jnp.clip(sparsity * 2 // 3, 1, d)
        else:
            sparsity = jnp.full((batch,), d, jnp.int32)
            k = jnp.full((batch,), min(max(math.ceil(topk_fraction * d), 1), d), jnp.int32)
        return APGDL1State(
            eta=jnp.broadcast_to(jnp.asarray(eps, dtype), (batch,)),
            k=k,
            sparsity=sparsity,
            prev=delta,
            best_delta=delta,
            best_score=jnp.full((batch,), -jnp.inf, dtype),
            best_grad=jnp.zeros_like(delta),
        )

    def update(
        state: APGDL1State,
        delta: Array,
        grad: Array,
        score: Array,
        i: Array,
        threat: ThreatModel,
        x: Array,
    ) -> tuple[Array, APGDL1State]:
        best_delta, best_grad, best_score = _track_best(state, delta, grad, score)

        d = math.prod(delta.shape[1:])
        eta_max = jnp.broadcast_to(jnp.asarray(eps, delta.dtype), score.shape)
        at_check = (i > 0) & (i % period == 0)
        sparsity = _nonzeros(best_delta)
        # The best point got markedly sparser: a new sparsity phase starts with a full step
        # from the best point. Otherwise the step keeps shrinking (the search is local).
        sparser = at_check & (sparsity.astype(score.dtype) < 0.95 * state.sparsity)
        shrunk = jnp.clip(state.eta / 1.5, eta_max / 10, eta_max)
        eta = jnp.where(sparser, eta_max, jnp.where(at_check, shrunk, state.eta))
        base = _where(sparser, best_delta, delta)
        g = _where(sparser, best_grad, grad)
        # k follows the sparsity of the best point, a little sparser, and stays below that of
        # the point the step starts from: a sign step of η/k on k >= ‖δ‖₀ coordinates that
        # cover δ's support is undone exactly by the projection (it subtracts λ = η/k from
        # every nonzero coordinate), so δ, its gradient and the best point would never
        # change again. ⌊s/1.5⌋ < s for s >= 2 (⌈s/1.5⌉, the reference's rounding, is 2 at 2).
        s_min = jnp.minimum(sparsity, _nonzeros(base))
        k = jnp.where(at_check, jnp.clip(s_min * 2 // 3, 1, d), state.k)
        # Only coordinates that can still move in the ascent direction compete for the k
        # slots (the engine already zeroes the others; this keeps the rule exact by hand).
        if threat.free is not None:
            g = threat.free(g, base, x)
        nxt = threat.project(base + _rows(eta, base) * sparse_ascent(g, k), x)
        if momentum != 1.0:
            alpha = jnp.where(i == 0, 1.0, momentum).astype(delta.dtype)
            nxt = threat.project(base + alpha * (nxt - base) + (1 - alpha) * (base - state.prev), x)

        return nxt, APGDL1State(
            eta=eta,
            k=k,
            sparsity=jnp.where(at_check, sparsity, state.sparsity),
            prev=base,
            best_delta=best_delta,
            best_score=best_score,
            best_grad=best_grad,
        )

    return StepRule(init=init, update=update)


# ----------------------------------------------------------------------------- attacks


def precise_cross_entropy(logits: Array, y: Array) -> Array:
    """Softmax cross-entropy −log p_y, (B, C), (B,) -> (B,), accurate near 0 in float32.

    −log p_y = M + log1p(expm1(−M) + Σ_{j≠y} e^{d_j − M}) with d_j = z_j − z_y and
    M = max(0, max_j d_j): for a confidently classified point (M = 0) this is
    log1p(Σ_{j≠y} e^{d_j}), relative accuracy ~1e-7 down to e^{-87}. The usual
    logsumexp(z) − z_y subtracts two numbers of the size of the logits: with logits ~16
    its float32 resolution is ~2e-6, so a confident point's loss is exactly 0 or flat in
    steps (on a digits MLP 48 of 360 clean test points had loss 0, against 18 for
    PyTorch's log-softmax), and APGD, which compares losses to keep its best point and
    count increases, stalls there. Equal to `cross_entropy` up to float rounding, as are
    its gradients.
    """
    z_y = jnp.take_along_axis(logits, y[:, None], axis=1)
    d = logits - z_y  # d_y = 0 exactly
    m = jax.lax.stop_gradient(jnp.max(d, axis=1, keepdims=True))  # >= 0; any shift is exact
    is_y = jax.nn.one_hot(y, logits.shape[1], dtype=bool)
    rest = jnp.sum(jnp.where(is_y, 0.0, jnp.exp(d - m)), axis=1, keepdims=True)
    return (m + jnp.log1p(jnp.expm1(-m) + rest))[:, 0]


def _resolve_loss(loss: str | Loss) -> Loss:
    if callable(loss):
        return loss
    if loss == "ce":
        return precise_cross_entropy
    if loss == "dlr":

        def checked_dlr(logits: Array, y: Array) -> Array:
            if logits.shape[-1] < 3:
                raise InputError(
                    f"APGD with loss='dlr' needs at least 3 classes (DLR divides by "
                    f"z_π1 − z_π3), but the model returns {logits.shape[-1]}; use loss='ce' "
                    "or a margin loss"
                )
            return dlr(logits, y)

        return checked_dlr
    raise InputError(f"unknown APGD loss {loss!r}: use 'ce', 'dlr' or a callable (logits, y)")


def _use_largereps(threat: ThreatModel, use_largereps: bool | None) -> bool:
    if use_largereps is None:
        return threat.name == "l1"
    if use_largereps and threat.name != "l1":
        raise InputError(
            f"use_largereps applies to the l1 threat model only (ℓ1-APGD), got {threat.name!r}"
        )
    return bool(use_largereps)


def _reference_linf_start(threat: ThreatModel) -> ThreatModel:
    """`threat` (a plain `linf`) with AutoAttack's ℓ∞ random start instead of its own.

    Per example, t uniform in [−1, 1]^d (the draw `linf` makes from the same key) is
    rescaled to δ = ε·t/‖t‖∞ and projected onto the box: one coordinate sits at ±ε and
    the others are stretched by 1/‖t‖∞ (the reference's `x + eps * normalize(2u − 1)`).
    """

    def init(key: Array, x: Array) -> Array:
        keys = example_keys(key, x.shape[0])
        t = jax.vmap(lambda k: jax.random.uniform(k, x.shape[1:], minval=-1, maxval=1))(keys)
        t = t.astype(x.dtype)
        peak = jnp.max(jnp.abs(t.reshape(t.shape[0], -1)), axis=1)
        scale = jnp.asarray(threat.eps, x.dtype) / (peak + 1e-12)  # (B,)
        return threat.project(_rows(scale, t) * t, x)

    return threat._replace(init=init)


def _run(
    objective: Callable[[Array], tuple[Array, Array]],
    x: Array,
    key: Array,
    *,
    threat: ThreatModel,
    steps: int,
    restarts: int,
    random_start: bool,
    momentum: float | None,
    rho: float,
    topk_fraction: float,
    use_largereps: bool | None,
) -> Result:
    """APGD on `objective` (values, success) over `threat`: the engine with `apgd_rule`, or
    for `l1` with `apgd_l1_rule`, in stages of growing sparsity when `use_largereps`."""
    _check_topk_fraction(topk_fraction)
    largereps = _use_largereps(threat, use_largereps)

    def run(stage: ThreatModel, n: int, run_key: Array, runs: int, start: bool, warm: bool):
        if stage.name == "l1":
            rule = apgd_l1_rule(
                stage,
                n,
                topk_fraction=topk_fraction,
                warm_start=warm,
                momentum=1.0 if momentum is None else momentum,
            )
        else:
            rule = apgd_rule(stage, n, momentum=0.75 if momentum is None else momentum, rho=rho)
        return optimize(
            objective,
            x,
            run_key,
            threat=stage,
            steps=n,
            rule=rule,
            restarts=runs,
            random_start=start,
            has_aux=True,
        )

    if not largereps:
        # ℓ∞: the reference's random start (stretched to the ball's boundary), as AutoAttack.
        stage = _reference_linf_start(threat) if threat.name == "linf" else threat
        return run(stage, steps, key, restarts, random_start, False)
    if steps < 0 or restarts < 1:
        raise InputError(f"need steps >= 0 and restarts >= 1, got {steps=}, {restarts=}")

    lo, hi = threat.box
    eps = jnp.asarray(threat.eps, x.dtype)

    def staged(run_key: Array) -> Result:
        delta = None
        for factor, n in largereps_schedule(steps):
            stage = threat if factor == 1 else l1(factor * eps, lo=lo, hi=hi)
            if delta is None:
                result = run(stage, n, run_key, 1, random_start, False)
            else:
                # Warm start: the previous stage's result, projected onto this smaller ball.
                def warm_init(_key, x, delta=delta, project=stage.project):
                    return project(delta, x)

                warm = stage._replace(init=warm_init)
                result = run(warm, n, run_key, 1, True, True)
            delta = result.delta
        return result

    # Each restart runs every stage, from its own random start (restart r: fold_in(key, r)).
    run_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(restarts))
    best = staged(run_keys[0])
    if restarts > 1:

        def restart(best: Result, run_key: Array) -> tuple[Result, None]:
            return merge_results(best, staged(run_key)), None

        best, _ = jax.lax.scan(restart, best, run_keys[1:])
    return best


def _check_args(
    steps: Any,
    restarts: Any,
    loss: Any,
    random_start: Any,
    momentum: Any,
    rho: Any,
    topk_fraction: Any,
    use_largereps: Any,
) -> None:
    """The hyper-parameters of `apgd` / `apgd_targeted`, by type and range."""
    check_int(steps, "steps", 0)
    check_int(restarts, "restarts", 1)
    if not (callable(loss) or isinstance(loss, str)):
        raise InputError(f"loss must be 'ce', 'dlr' or a callable, got {loss!r}")
    check_bool(random_start, "random_start")
    if momentum is not None:
        check_number(momentum, "momentum", 0.0, 1.0)
    check_number(rho, "rho", 0.0, 1.0)
    check_number(topk_fraction, "topk_fraction", 0.0, 1.0, lo_open=True)
    if use_largereps is not None:
        check_bool(use_largereps, "use_largereps")


def apgd(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    key: Array,
    *,
    threat: ThreatModel,
    steps: int = 100,
    restarts: int = 1,
    loss: str | Loss = "ce",
    random_start: bool = True,
    momentum: float | None = None,
    rho: float = 0.75,
    topk_fraction: float = 0.2,
    use_largereps: bool | None = None,
) -> Result:
    """Untargeted APGD (APGD-CE, APGD-DLR of AutoAttack), per example.

    Args:
      logits_fn: the model, x (B, ...) -> logits (B, C).
      x: (B, ...) clean inputs inside `threat.box`.
      y: (B,) integer labels.
      key: PRNG key for the random starts.
      threat: `linf(eps)`, `l2(eps)` or `l1(eps)` (eps scalar or (B,), input units); `l1`
        runs ℓ1-APGD (`apgd_l1_rule`), any other threat model the APGD of `apgd_rule`.
      steps: gradient steps per restart (100 in AutoAttack), all stages included with
        `use_largereps`; restarts: random restarts.
      loss: "ce", "dlr" (needs C >= 3) or any per-example loss(logits, y) -> (B,).
      random_start: uniform start in the ball (else from x).
      momentum: α of `apgd_rule` / `apgd_l1_rule`; None: 0.75 (ℓ∞, ℓ2, as the paper) and 1,
        i.e. no momentum, for ℓ1 (as AutoAttack's ℓ1 reference).
      rho: see `apgd_rule` (unused by ℓ1-APGD).
      topk_fraction: ℓ1 only: the fraction of coordinates the first ℓ1 step moves, in
        (0, 1] (0.2 in AutoAttack); later k adapts to the sparsity of the best point.
      use_largereps: ℓ1 only: run the steps in stages at 3ε, 2ε, then ε, each warm-started
        from the last (`largereps_schedule`), as AutoAttack's ℓ1 version. None (default):
        on for `l1`, off otherwise; True with another threat model is an error.

    Returns:
      `Result(x_adv, delta, value, success)`: per example the best iterate over all steps
      and restarts, a misclassified one first (success[i] = misclassified), then the
      highest loss; value is the loss there.
    """
    check_classifier_args(logits_fn, x, y, threat, key, who="APGD")
    _check_args(steps, restarts, loss, random_start, momentum, rho, topk_fraction, use_largereps)
    checks = label_input_checks(logits_fn, x, y)
    y = clip_labels(y, jax.eval_shape(logits_fn, x).shape[1])
    result = _run(
        classifier_objective(logits_fn, y, loss=_resolve_loss(loss)),
        x,
        key,
        threat=threat,
        steps=steps,
        restarts=restarts,
        random_start=random_start,
        momentum=momentum,
        rho=rho,
        topk_fraction=topk_fraction,
        use_largereps=use_largereps,
    )
    return guard(result, checks)


def targeted_margin(logits: Array, y: Array, target: Array) -> Array:
    """z_t − z_y, (B, C), (B,), (B,) -> (B,): APGD-T's loss when C < 4 (no targeted DLR)."""
    true = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    tgt = jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]
    return tgt - true


def _check_logits_shape(logits: Array, batch: int) -> None:
    if logits.ndim != 2 or logits.shape[0] != batch:
        raise InputError(
            f"the model must return logits of shape ({batch}, num_classes), got {logits.shape}"
        )


def apgd_targeted(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    key: Array,
    *,
    threat: ThreatModel,
    steps: int = 100,
    restarts: int = 1,
    n_target_classes: int = 9,
    random_start: bool = True,
    momentum: float | None = None,
    rho: float = 0.75,
    topk_fraction: float = 0.2,
    use_largereps: bool | None = None,
) -> Result:
    """APGD-T: APGD on the targeted DLR loss towards each of the k most likely wrong classes.

    For each of the k = min(n_target_classes, C − 1) highest non-true clean logits t (a
    `lax.scan` over targets, fixed shapes), APGD maximises dlr_targeted(logits, y, t)
    (needs C >= 4; with C < 4 it maximises the targeted margin z_t − z_y instead, since the
    targeted DLR's denominator z_π1 − ½(z_π3 + z_π4) does not exist). Target j uses key
    fold_in(key, j).

    logits_fn, x, y, key, threat, steps, restarts, random_start, momentum, rho,
    topk_fraction and use_largereps are as in `apgd` (ℓ1-APGD, in stages by default, for `l1`).

    Args:
      n_target_classes: how many target classes to try (9 in AutoAttack).

    Returns:
      `Result(x_adv, delta, value, success)`, per example the worst case over targets:
      success (misclassified, argmax != y, whichever class wins) dominates, then the
      higher targeted loss; value is the targeted loss for the chosen target.
    """
    check_classifier_args(logits_fn, x, y, threat, key, who="APGD-T")
    _check_args(steps, restarts, "ce", random_start, momentum, rho, topk_fraction, use_largereps)
    check_int(n_target_classes, "n_target_classes", 1)
    # x and ε too (not only labels): the clean logits below are checked before the engine.
    checks = check_attack_inputs(x, y, threat, logits_fn=logits_fn)
    if n_target_classes < 1:
        raise InputError(f"n_target_classes must be >= 1, got {n_target_classes}")
    _check_topk_fraction(topk_fraction)
    _use_largereps(threat, use_largereps)
    batch = x.shape[0]
    clean = jax.lax.stop_gradient(logits_fn(x))
    _check_logits_shape(clean, batch)
    num_classes = clean.shape[1]
    if num_classes < 2:
        raise InputError(f"APGD-T needs at least 2 classes, got {num_classes}")
    # Eagerly, non-finite clean logits raise here: the engine runs inside a scan below.
    checks += screen(finite_checks(clean))
    y = clip_labels(y, num_classes)
    k = min(n_target_classes, num_classes - 1)
    others = jnp.where(jax.nn.one_hot(y, num_classes, dtype=bool), -jnp.inf, clean)
    targets = jax.lax.top_k(others, k)[1]  # (B, k), most likely wrong class first
    loss = dlr_targeted if num_classes >= 4 else targeted_margin

    def run(j: Array, target: Array) -> Result:
        def objective(x_adv: Array) -> tuple[Array, Array]:
            logits = logits_fn(x_adv)
            _check_logits_shape(logits, batch)
            return loss(logits, y, target), jnp.argmax(logits, axis=-1) != y

        return _run(
            objective,
            x,
            jax.random.fold_in(key, j),
            threat=threat,
            steps=steps,
            restarts=restarts,
            random_start=random_start,
            momentum=momentum,
            rho=rho,
            topk_fraction=topk_fraction,
            use_largereps=use_largereps,
        )

    def body(best: Result, jt: tuple[Array, Array]) -> tuple[Result, None]:
        j, target = jt
        res = run(j, target)
        # Success dominates, then the higher value; the first target always fills in.
        merged = jax.tree.map(
            lambda first, later: jnp.where(j == 0, first, later), res, merge_results(best, res)
        )
        return merged, None

    zeros = threat.zeros(x)
    empty = Result(
        x_adv=threat.apply(x, zeros),
        delta=zeros,
        value=jnp.full((batch,), -jnp.inf, x.dtype),
        success=jnp.zeros((batch,), bool),
    )
    best, _ = jax.lax.scan(body, empty, (jnp.arange(k), targets.T))
    return guard(best, checks)
