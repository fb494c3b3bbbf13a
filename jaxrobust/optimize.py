"""The engine: optimise a per-example objective over a threat model's perturbation set.

Attacks (PGD, FGSM, first-order spatial), training adversaries, representation inversion
and synthesis are all `optimize` with a different objective, threat model and step rule.
Everything here is a pure function of its inputs and key: jittable and vmappable.

An objective maps perturbed inputs x_adv (B, ...) to per-example values (B,), or with
`has_aux=True` to `(values, success)` where `success` (B,) bool marks iterates that reached
the goal (e.g. misclassified). The engine keeps, per example, the best iterate seen: a
successful one beats an unsuccessful one, then the higher value (lower when minimising).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrobust.errors import (
    Check,
    InputError,
    check_array,
    check_bool,
    check_callable,
    check_int,
    check_key,
    check_threat,
    enforce,
    eps_checks,
    eval_shape_or_name,
    screen,
)
from jaxrobust.threat import ThreatModel, input_checks

Array = jax.Array
Objective = Callable[[Array], Any]
StepSize = float | Array | Callable[[Array], Array]


class Result(NamedTuple):
    """Outcome of an optimisation, per example.

    x_adv: (B, ...) perturbed inputs; delta: the perturbation (threat-model shape);
    value: (B,) objective at x_adv; success: (B,) bool, the objective's success flag.
    """

    x_adv: Array
    delta: Array
    value: Array
    success: Array


class StepRule(NamedTuple):
    """How the engine turns a gradient into the next iterate (a pure pair of functions).

    init(delta0, x) -> state
    update(state, delta, grad, score, i, threat, x) -> (next delta, already projected; state)

    `grad` is the gradient of the signed objective (ascent improves it), with the
    coordinates the input box blocks already zeroed; `score` (B,) is the signed objective
    at `delta`; `i` the step index. Fixed steps, optax transformations and APGD's adaptive
    schedule are all step rules.
    """

    init: Callable[[Array, Array], Any]
    update: Callable[..., tuple[Array, Any]]


def fixed_step(step_size: StepSize) -> StepRule:
    """delta ← project(delta + step_size(i) · ascent(grad)); a float, (B,) array or schedule."""

    def update(state, delta, grad, score, i, threat, x):
        del score
        size = _step_size_at(step_size, i)
        # A (B,) step size is per example; a scalar broadcasts as is.
        size = _broadcast(size, delta) if size.ndim else size
        return threat.project(delta + size * threat.ascent(grad), x), state

    return StepRule(init=lambda delta, x: (), update=update)


def optax_step(optimizer: optax.GradientTransformation) -> StepRule:
    """Any optax transformation, fed the negated ascent direction (optax minimises)."""

    def update(state, delta, grad, score, i, threat, x):
        del score, i
        updates, state = optimizer.update(-threat.ascent(grad), state, delta)
        return threat.project(delta + updates, x), state

    return StepRule(init=lambda delta, x: optimizer.init(delta), update=update)


class _Best(NamedTuple):
    delta: Array
    score: Array  # value with the sign that makes larger better
    value: Array
    success: Array


def _broadcast(v: Array, like: Array) -> Array:
    return v.reshape((-1,) + (1,) * (like.ndim - 1))


def _improves(score: Array, success: Array, best: _Best) -> Array:
    """Per example: does (score, success) beat the best so far? Success dominates."""
    return (success & ~best.success) | ((success == best.success) & (score > best.score))


def _merge(best: _Best, delta: Array, score: Array, value: Array, success: Array) -> _Best:
    take = _improves(score, success, best)
    return _Best(
        delta=jnp.where(_broadcast(take, delta), delta, best.delta),
        score=jnp.where(take, score, best.score),
        value=jnp.where(take, value, best.value),
        success=jnp.where(take, success, best.success),
    )


def invalidate(result: Result, bad: Array | None) -> Result:
    """Poison a result that a failed traced check (`errors.enforce`) makes meaningless:
    x_adv, delta and value NaN and every example counted as broken, so that no robust
    accuracy can be read off it even where the check's host callback cannot raise."""
    if bad is None:
        return result
    # A factor rather than a select: NaN also reaches every derivative taken through the
    # result (a select would give a derivative of 0 through its constant NaN branch).
    poison = jnp.where(bad, jnp.nan, 1.0)
    return Result(
        x_adv=result.x_adv * poison.astype(result.x_adv.dtype),
        delta=result.delta * poison.astype(result.delta.dtype),
        value=result.value * poison.astype(result.value.dtype),
        success=result.success | bad,
    )


def _nan_check(nan: Array) -> Check:
    return Check(
        jnp.any(nan),
        "the attack objective is NaN or inf for {} of {} examples: the model returned "
        "non-finite logits (NaN or inf), or the objective is undefined there; check its "
        "weights and inputs",
        (jnp.sum(nan), nan.shape[0]),
    )


def merge_results(best: Result, new: Result, *, maximize: bool = True) -> Result:
    """Per example, keep `new` where it beats `best`: success dominates, then the higher
    value (lower when minimising). The rule `optimize` uses for restarts, public so that
    attacks looping over targets or configurations keep the same per-example worst case."""
    sign = 1.0 if maximize else -1.0
    take = _improves(
        sign * new.value,
        new.success,
        _Best(best.delta, sign * best.value, best.value, best.success),
    )
    return Result(
        x_adv=jnp.where(_broadcast(take, new.x_adv), new.x_adv, best.x_adv),
        delta=jnp.where(_broadcast(take, new.delta), new.delta, best.delta),
        value=jnp.where(take, new.value, best.value),
        success=jnp.where(take, new.success, best.success),
    )


def _empty_best(delta: Array, batch: int, dtype) -> _Best:
    return _Best(
        delta=delta,
        score=jnp.full((batch,), -jnp.inf, dtype),
        value=jnp.full((batch,), jnp.nan, dtype),
        success=jnp.zeros((batch,), bool),
    )


def _split_objective(objective: Objective, has_aux: bool, batch: int):
    def fn(x_adv):
        out = objective(x_adv)
        values, success = out if has_aux else (out, jnp.zeros((batch,), bool))
        if values.shape != (batch,):
            raise InputError(
                f"the objective must return per-example values of shape ({batch},), "
                f"got {values.shape}"
            )
        return values, success

    return fn


def _check_traces(trace: Callable[[], Any], x: Array) -> None:
    """Trace the objective once on the input's shape (`jax.eval_shape`: no computation), so
    that an objective or model that cannot take x fails with an error naming the shapes."""
    eval_shape_or_name(
        trace,
        f"the objective (or the model in it) failed on x of shape {tuple(x.shape)} and "
        f"dtype {x.dtype}",
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _step_size_checks(step_size: StepSize | None) -> list[Check]:
    """A step size (a number or a per-example array; schedules are the caller's) must be
    finite and >= 0: the direction is `maximize`'s."""
    if step_size is None or callable(step_size):
        return []
    try:
        arr = jnp.asarray(step_size)
    except (TypeError, ValueError):
        raise InputError(
            f"step_size must be a number, an array or a schedule, got {step_size!r:.80}"
        ) from None
    if not jnp.issubdtype(arr.dtype, jnp.number) or arr.ndim > 1:
        raise InputError(f"step_size must be a scalar or a (B,) array, got {step_size!r:.80}")
    return eps_checks(step_size, "step_size")


def _step_size_at(step_size: StepSize, i: Array) -> Array:
    return step_size(i) if callable(step_size) else jnp.asarray(step_size)


# XLA:CPU runs a step markedly slower inside a while loop than as straight-line code
# (measured here: PGD-40 on the Madry CNN 25 -> 51 images/s; partial unrolling does not
# help), so on CPU a short single-restart loop of plain steps (a step size or an optax
# optimiser) in the ℓ∞ ball, whose projection is a clip, is unrolled completely. Not
# otherwise: bisection projections (ℓ2, ℓ1) and rules with control flow (APGD) compile 30x
# slower unrolled, and an unrolled loop inside the restart scan ran slower than the rolled
# one (PGD-50 × 5 on an MLP 512-512: 1.3 s vs 0.7 s, compile 8 s vs 1.4 s). For
# convolutional models most of the loop's cost was XLA:CPU's gradient convolutions, which
# it lays out fast only outside loops; `models.layers.Conv` now writes them so that they are
# fast inside loops too (benchmarks/conv_loops.py: ℓ2 PGD under scan 1.7-3.1x faster, the
# unrolled ℓ∞ loop unchanged). The Madry CNN figure above predates that change.
CPU_UNROLL_MAX_STEPS = 64


def loop_plan(steps: int, restarts: int, unroll: int | None, *, cheap_step: bool = True) -> int:
    """The scan unroll factor of the step loop: `unroll`, or for None the backend's best
    (a full unroll on CPU for a `cheap_step` loop of <= 64 steps and one restart, else 1)."""
    if unroll is not None:
        return unroll
    if not cheap_step or restarts != 1 or jax.default_backend() != "cpu":
        return 1
    return steps if 0 < steps <= CPU_UNROLL_MAX_STEPS else 1


def optimize(
    objective: Objective,
    x: Array,
    key: Array,
    *,
    threat: ThreatModel,
    steps: int,
    step_size: StepSize | None = None,
    optimizer: optax.GradientTransformation | None = None,
    rule: StepRule | None = None,
    restarts: int = 1,
    random_start: bool = True,
    keep_best: bool = True,
    maximize: bool = True,
    has_aux: bool = False,
    unroll: int | None = None,
    checks: Sequence[Check] = (),
) -> Result:
    """Projected steepest ascent (or descent) of `objective` over `threat`, per example.

    Args:
      objective: x_adv (B, ...) -> values (B,), or (values, success) with `has_aux`.
      x: (B, ...) clean inputs inside the threat model's box.
      key: PRNG key for the random starts; the same key gives the same result.
      threat: the perturbation set.
      steps: number of gradient steps per restart (0 evaluates the start only).
      step_size: a float, a per-example (B,) array, or a schedule `i -> size`, in units of
        the threat's norm: each step adds `step_size * threat.ascent(grad)`.
      optimizer: instead of `step_size`, any optax transformation, fed the negated ascent
        direction (optax minimises), e.g. `optax.sgd(0.01, momentum=0.9)`.
      rule: or any `StepRule` (e.g. APGD's adaptive step size with momentum).
      restarts: independent random starts; the per-example best over all is returned.
      random_start: start from `threat.init` (else from zero).
      keep_best: return the best iterate seen (else the last iterate of the last restart).
      maximize: maximise (attacks) or minimise (inversion) the objective.
      has_aux: the objective also returns a success flag, which dominates the best-iterate
        choice (a misclassified iterate beats a higher loss).
      unroll: unroll factor of the step loop (a backend tuning knob); None = the fastest
        plan for the backend (`loop_plan`: full unroll of short single-restart ℓ∞ step
        loops on CPU).
      checks: further validity `Check`s of the caller (e.g. labels in range), fused with
        the engine's own: x finite and in `threat.box`, ε finite and >= 0, a non-empty
        batch, an objective that is never NaN. Concrete failures raise `InputError`;
        traced ones raise through one host callback and poison the result
        (`jaxrobust.errors`).

    Returns:
      `Result(x_adv, delta, value, success)`.
    """
    check_callable(objective, "objective")
    check_array(x)
    check_key(key)
    check_threat(threat)
    if not all(_is_int(v) for v in (steps, restarts)):
        raise InputError(f"need steps >= 0 and restarts >= 1 (integers), got {steps=}, {restarts=}")
    for name, flag in (("random_start", random_start), ("keep_best", keep_best)):
        check_bool(flag, name)
    check_bool(maximize, "maximize")
    check_bool(has_aux, "has_aux")
    if unroll is not None:
        check_int(unroll, "unroll", 1)
    if optimizer is not None and not all(hasattr(optimizer, a) for a in ("init", "update")):
        raise InputError(f"optimizer must be an optax transformation, got {optimizer!r:.80}")
    if rule is not None and not isinstance(rule, StepRule):
        raise InputError(f"rule must be a StepRule, got {type(rule).__name__}")
    if sum(v is not None for v in (step_size, optimizer, rule)) != 1:
        raise InputError("give exactly one of step_size, optimizer or rule")
    cheap_step = rule is None and threat.name == "linf"
    if rule is None and optimizer is None:
        assert step_size is not None  # exactly one of the three, checked just above
        rule = fixed_step(step_size)
    elif rule is None:
        rule = optax_step(optimizer)
    if steps < 0 or restarts < 1:
        raise InputError(f"need steps >= 0 and restarts >= 1, got {steps=}, {restarts=}")
    pending = screen([*checks, *input_checks(threat, x), *_step_size_checks(step_size)])
    batch = x.shape[0]
    sign = 1.0 if maximize else -1.0
    split = _split_objective(objective, has_aux, batch)
    _check_traces(lambda: split(threat.apply(x, threat.zeros(x))), x)
    unroll = loop_plan(steps, restarts, unroll, cheap_step=cheap_step)

    def signed_total(delta):
        values, success = split(threat.apply(x, delta))
        return sign * jnp.sum(values), (values, success)

    value_and_grad = jax.value_and_grad(signed_total, has_aux=True)

    def evaluate(delta):
        return split(threat.apply(x, delta))

    def one_run(run_key: Array) -> tuple[_Best, Array, Array, Array]:
        delta0 = threat.init(run_key, x) if random_start else threat.zeros(x)
        opt_state0 = rule.init(delta0, x)
        best0 = _empty_best(delta0, batch, x.dtype)

        def body(carry, i):
            delta, opt_state, best = carry
            (_, (values, success)), grad = value_and_grad(delta)
            best = _merge(best, delta, sign * values, values, success)
            if threat.free is not None:
                grad = threat.free(grad, delta, x)
            delta, opt_state = rule.update(opt_state, delta, grad, sign * values, i, threat, x)
            return (delta, opt_state, best), None

        (delta, _, best), _ = jax.lax.scan(
            body, (delta0, opt_state0, best0), jnp.arange(steps), unroll=max(unroll, 1)
        )
        values, success = evaluate(delta)
        best = _merge(best, delta, sign * values, values, success)
        return best, delta, values, success

    run_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(restarts))
    best, last_delta, last_values, last_success = one_run(run_keys[0])
    if restarts > 1:

        def restart(best, run_key):
            b, d, v, s = one_run(run_key)
            return _merge(best, b.delta, b.score, b.value, b.success), (d, v, s)

        best, (ds, vs, ss) = jax.lax.scan(restart, best, run_keys[1:])
        last_delta, last_values, last_success = ds[-1], vs[-1], ss[-1]

    if keep_best:
        delta, values, success = best.delta, best.value, best.success
    else:
        delta, values, success = last_delta, last_values, last_success
    # A non-finite objective shows in the best value (a NaN score never improves on the
    # initial NaN value; a NaN/inf iterate that succeeds is taken) or in the last iterate's
    # (a NaN gradient makes every later iterate NaN); checked once here rather than per
    # step (per-step tracking cost 30% more XLA compile time on an unrolled PGD-40).
    # Without keep_best only the last iterate is read: reading best.value would keep the
    # per-step bookkeeping of the best iterate alive in the compiled program.
    nonfinite = ~jnp.isfinite(last_values)
    if keep_best:
        nonfinite = nonfinite | ~jnp.isfinite(best.value)
    bad = enforce([*pending, _nan_check(nonfinite)])
    return invalidate(Result(threat.apply(x, delta), delta, values, success), bad)


def best_of(
    objective: Objective,
    x: Array,
    candidates: Callable[[Array], Array],
    num: int,
    *,
    threat: ThreatModel,
    maximize: bool = True,
    has_aux: bool = False,
    checks: Sequence[Check] = (),
) -> Result:
    """Evaluate `num` candidate perturbations and keep the per-example best (no gradients).

    `candidates(i)` returns the i-th perturbation for the whole batch (threat-model shape).
    Grid search and worst-of-k random search over spatial transforms are this function.
    `checks` and the engine's own validity checks as in `optimize`.
    """
    check_callable(objective, "objective")
    check_callable(candidates, "candidates")
    check_array(x)
    check_threat(threat)
    check_bool(maximize, "maximize")
    check_bool(has_aux, "has_aux")
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise InputError(f"need at least one candidate (an integer num >= 1), got {num!r}")
    pending = screen([*checks, *input_checks(threat, x)])
    batch = x.shape[0]
    sign = 1.0 if maximize else -1.0
    split = _split_objective(objective, has_aux, batch)
    _check_traces(lambda: split(x), x)
    first = candidates(jnp.asarray(0))
    best0 = _empty_best(first, batch, x.dtype)

    def body(best, i):
        delta = candidates(i)
        values, success = split(threat.apply(x, delta))
        return _merge(best, delta, sign * values, values, success), None

    best, _ = jax.lax.scan(body, best0, jnp.arange(num))
    bad = enforce([*pending, _nan_check(~jnp.isfinite(best.value))])
    return invalidate(
        Result(threat.apply(x, best.delta), best.delta, best.value, best.success), bad
    )
