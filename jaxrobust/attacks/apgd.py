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
classes), the two gradient attacks of AutoAttack. ℓ∞ and ℓ2 follow the paper. ℓ1 runs
through the same rule with the threat model's sparse (top-k) ascent and exact projection;
AutoAttack's APGD-ℓ1 (Croce & Hein 2021) additionally adapts the sparsity of the step, starts
from η = ε and uses its own step-size schedule, none of which this does.

Relation to the reference implementation (fra31/auto-attack):

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
- the ℓ2 projection is the exact projection onto ball ∩ box (the code rescales, then clips).
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

from jaxrobust.attacks.pgd import check_attack_inputs, check_result, classifier_objective
from jaxrobust.errors import InputError, check_eps, is_concrete
from jaxrobust.losses import Loss, cross_entropy, dlr, dlr_targeted
from jaxrobust.optimize import Result, StepRule, merge_results, optimize
from jaxrobust.threat import ThreatModel

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
    count: Array
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
    if eps is None:
        eps = 1.0 if threat.name == "spatial" else threat.eps
    check_eps(eps)
    if is_concrete(eps) and not np.all(np.isfinite(np.asarray(eps, np.float64))):
        raise InputError(
            f"APGD's initial step size is 2·eps, so eps must be finite, got {eps!r}; "
            "give apgd_rule(..., eps=...) for an unbounded threat model"
        )
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
        better = score > state.best_score
        best_delta = _where(better, delta, state.best_delta)
        best_grad = _where(better, grad, state.best_grad)
        best_score = jnp.where(better, score, state.best_score)
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


# ----------------------------------------------------------------------------- attacks


def _resolve_loss(loss: str | Loss) -> Loss:
    if callable(loss):
        return loss
    if loss == "ce":
        return cross_entropy
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
    momentum: float = 0.75,
    rho: float = 0.75,
) -> Result:
    """Untargeted APGD (APGD-CE, APGD-DLR of AutoAttack), per example.

    Args:
      logits_fn: the model, x (B, ...) -> logits (B, C).
      x: (B, ...) clean inputs inside `threat.box`; y: (B,) integer labels.
      key: PRNG key for the random starts.
      threat: `linf(eps)`, `l2(eps)` or `l1(eps)` (eps scalar or (B,), input units).
      steps: gradient steps per restart (100 in AutoAttack); restarts: random restarts.
      loss: "ce", "dlr" (needs C >= 3) or any per-example loss(logits, y) -> (B,).
      random_start: uniform start in the ball (else from x).
      momentum, rho: see `apgd_rule`.

    Returns:
      `Result(x_adv, delta, value, success)`: per example the best iterate over all steps
      and restarts, a misclassified one first (success[i] = misclassified), then the
      highest loss; value is the loss there.
    """
    check_attack_inputs(x, y, threat)
    result = optimize(
        classifier_objective(logits_fn, y, loss=_resolve_loss(loss)),
        x,
        key,
        threat=threat,
        steps=steps,
        rule=apgd_rule(threat, steps, momentum=momentum, rho=rho),
        restarts=restarts,
        random_start=random_start,
        has_aux=True,
    )
    return check_result(result)


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
    momentum: float = 0.75,
    rho: float = 0.75,
) -> Result:
    """APGD-T: APGD on the targeted DLR loss towards each of the k most likely wrong classes.

    For each of the k = min(n_target_classes, C − 1) highest non-true clean logits t (a
    `lax.scan` over targets, fixed shapes), APGD maximises dlr_targeted(logits, y, t)
    (needs C >= 4; with C < 4 it maximises the targeted margin z_t − z_y instead, since the
    targeted DLR's denominator z_π1 − ½(z_π3 + z_π4) does not exist). Target j uses key
    fold_in(key, j).

    Args:
      logits_fn, x, y, key, threat, steps, restarts, random_start, momentum, rho: as `apgd`.
      n_target_classes: how many target classes to try (9 in AutoAttack).

    Returns:
      `Result(x_adv, delta, value, success)`, per example the worst case over targets:
      success (misclassified, argmax != y, whichever class wins) dominates, then the
      higher targeted loss; value is the targeted loss for the chosen target.
    """
    check_attack_inputs(x, y, threat)
    if n_target_classes < 1:
        raise InputError(f"n_target_classes must be >= 1, got {n_target_classes}")
    batch = x.shape[0]
    clean = jax.lax.stop_gradient(logits_fn(x))
    _check_logits_shape(clean, batch)
    num_classes = clean.shape[1]
    if num_classes < 2:
        raise InputError(f"APGD-T needs at least 2 classes, got {num_classes}")
    k = min(n_target_classes, num_classes - 1)
    others = jnp.where(jax.nn.one_hot(y, num_classes, dtype=bool), -jnp.inf, clean)
    targets = jax.lax.top_k(others, k)[1]  # (B, k), most likely wrong class first
    loss = dlr_targeted if num_classes >= 4 else targeted_margin
    rule = apgd_rule(threat, steps, momentum=momentum, rho=rho)

    def run(j: Array, target: Array) -> Result:
        def objective(x_adv: Array) -> tuple[Array, Array]:
            logits = logits_fn(x_adv)
            _check_logits_shape(logits, batch)
            return loss(logits, y, target), jnp.argmax(logits, axis=-1) != y

        return optimize(
            objective,
            x,
            jax.random.fold_in(key, j),
            threat=threat,
            steps=steps,
            rule=rule,
            restarts=restarts,
            random_start=random_start,
            has_aux=True,
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
    return check_result(best)
