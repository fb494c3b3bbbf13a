"""The Square attack (Andriushchenko, Croce, Flammarion & Hein 2020): a score-based black-box
attack by random search over square-shaped updates, for ℓ∞ and ℓ2 balls.

It queries only the logits, never gradients, so it is the sanity check that catches
gradient masking: a model that resists PGD but not Square has obfuscated gradients.

Per example and per query it proposes a random square-shaped change of the current best
perturbation, projects it to the ball and the box, and keeps it if the loss (the margin
max_{i≠y} z_i − z_y by default) improves or the example becomes misclassified. The square's
side shrinks over the queries with the published schedule for p (the fraction of pixels a
square covers). Examples stop being queried once misclassified; shapes stay fixed (masks),
and the loop exits early once every example in the batch is broken.

Images are NHWC, (B, H, W, C), inside the threat model's box. The clean input is not
queried (callers count clean errors, as AutoAttack does); the random start is the first
query. All randomness is per example (`example_keys`): the i-th proposal of example b in
restart r depends only on (key, b, r, i), so results are independent of the rest of the
batch, the first restart is the same whatever the number of restarts, and a larger budget
extends the same trajectory when the p schedule is pinned (`schedule_queries`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.attacks.pgd import (
    LogitsFn,
    check_attack_inputs,
    check_classifier_args,
    classifier_objective,
    guard,
)
from jaxrobust.errors import InputError, check_number, finite_checks, is_concrete, screen
from jaxrobust.losses import Loss, get_loss
from jaxrobust.optimize import Result
from jaxrobust.threat import ThreatModel, example_keys

Array = jax.Array

# Iteration indices (for a 10000-query budget) after which p is halved once more.
P_SCHEDULE: tuple[int, ...] = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# Candidate sign vectors drawn per ℓ∞ proposal to find one that changes the square.
_SIGN_TRIES = 8


class SquareResult(NamedTuple):
    """Outcome of `square`, per example: the engine's `Result` fields plus the query count.

    x_adv: (B, H, W, C) adversarial images; delta: (B, H, W, C) = x_adv − x;
    value: (B,) loss at x_adv (the margin max_{i≠y} z_i − z_y by default; for a target,
    the negated loss towards it); success: (B,) bool, misclassified (or classified as the
    target); queries: (B,) int32, model evaluations spent on the example, the initial one
    included (at most `restarts · queries`).

    Attribute access matches `Result`; `.result` drops the query count.
    """

    x_adv: Array
    delta: Array
    value: Array
    success: Array
    queries: Array

    @property
    def result(self) -> Result:
        """The plain engine `Result(x_adv, delta, value, success)`."""
        return Result(self.x_adv, self.delta, self.value, self.success)


# ----------------------------------------------------------------------------- schedule


def halving_starts(schedule_queries: int) -> tuple[int, ...]:
    """First iteration index at which p has been halved 1, 2, ..., 9 times.

    The reference rescales iteration i to ⌊i · 10000 / budget⌋ and halves p after the
    boundaries of `P_SCHEDULE`; exactly, p is halved k times from iteration
    ⌈(b_k + 1) · budget / 10000⌉ on (integer arithmetic, no float boundary effects).
    """
    return tuple(-(-(b + 1) * schedule_queries // 10000) for b in P_SCHEDULE)


def square_sides(p_init: float, height: int, width: int, norm: str) -> tuple[int, ...]:
    """Square side after 0, 1, ..., 9 halvings of p: max(round(√(p·H·W)), 1).

    ℓ2 needs a side of at least 3 and odd, so that the two halves of its bump are
    nonempty (the paper's rule). Sides are capped at min(H, W) so a square always fits.
    """
    sides = []
    for k in range(len(P_SCHEDULE) + 1):
        s = max(round(math.sqrt(p_init / 2**k * height * width)), 1)
        if norm == "l2":
            s = max(s, 3)
            s += 1 - s % 2
        sides.append(min(s, height, width))
    return tuple(sides)


# ----------------------------------------------------------------------------- squares


def _window(r0: Array, c0: Array, s: Array, height: int, width: int) -> Array:
    """(H, W) bool mask of the s×s square with top-left corner (r0, c0); s may be traced."""
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    return (rows >= r0) & (rows < r0 + s) & (cols >= c0) & (cols < c0 + s)


def _bump(
    r0: Array | int,
    c0: Array | int,
    s: Array | int,
    transpose: Array | bool,
    height: int,
    width: int,
    xp=jnp,
) -> Array:
    """The paper's ℓ2 update pattern in an s×s square at (r0, c0), zero elsewhere, (H, W).

    Two halves of opposite sign (split across rows, or columns when `transpose`), each a
    pyramid of nested rectangles: a pixel at Chebyshev distance d from its half's centre
    gets Σ_{k=d}^{s//2} 1/(k+1)². Each half has unit ℓ2 norm; the whole is then unit norm.
    Written with iota comparisons so that s and the position can be traced; `xp=np`
    computes static patterns (the ℓ2 start) as constants instead of traced work.
    """
    rows = xp.arange(height)[:, None] - r0
    cols = xp.arange(width)[None, :] - c0
    inside = (rows >= 0) & (rows < s) & (cols >= 0) & (cols < s)
    i = xp.where(transpose, cols, rows)  # the axis split into halves
    j = xp.where(transpose, rows, cols)
    half = s // 2
    top = i < half
    centre = xp.where(top, half // 2, half + (s - half) // 2)
    dist = xp.maximum(xp.abs(i - centre), xp.abs(j - half))
    n = max(height, width) + 1
    # sums[k] = Σ_{m=1}^{k} 1/m², so a pixel's value is sums[s//2 + 1] − sums[dist].
    sums = xp.asarray(np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1) ** 2)]))
    val = sums[half + 1] - sums[xp.clip(dist, 0, n)]
    val = xp.where(inside, val, 0.0).astype(xp.float32)

    def unit(v):
        return v / xp.maximum(xp.sqrt(xp.sum(v**2)), 1e-12)

    val = unit(xp.where(top, val, 0.0)) - unit(xp.where(top, 0.0, val))
    return unit(val)


def _position(bits: Array, s: Array, size: int) -> Array:
    """Uniform top-left coordinate of a side-s square along an axis of `size` pixels, from
    32 random bits (modulo bias below size / 2³², negligible)."""
    return (bits % (size - s + 1).astype(jnp.uint32)).astype(jnp.int32)


def _coin(bits: Array) -> Array:
    """A fair coin (bool) from random bits."""
    return (bits & 1).astype(bool)


def _linf_init(key: Array, shape: tuple[int, ...]) -> Array:
    """Vertical stripes: one random sign per (column, channel), (H, W, C) bool (True = +ε)."""
    height, width, channels = shape
    up = _coin(jax.random.bits(key, (1, width, channels), jnp.uint32))
    return jnp.broadcast_to(up, (height, width, channels))


def _linf_propose(key: Array, delta: Array, plus: Array, minus: Array, s: Array) -> Array:
    """Set a random s×s square to ±ε per channel (one example, (H, W, C)).

    `plus`/`minus` are the projected +ε/−ε perturbations of every pixel (ball and box).
    Like the paper's code, the signs are redrawn until the square actually changes, so no
    query is spent on a no-op (a bounded number of draws, then the flipped first draw,
    which always changes it for ε > 0).
    """
    height, width, channels = delta.shape
    # One draw per proposal keeps the compiled loop small: 2 positions, then sign bits.
    bits = jax.random.bits(key, (2 + _SIGN_TRIES * channels,), jnp.uint32)
    inside = _window(_position(bits[0], s, height), _position(bits[1], s, width), s, height, width)
    inside = inside[..., None]
    # Per channel: does the square already hold the +ε (resp. −ε) value everywhere?
    same_plus = jnp.all(jnp.where(inside, delta == plus, True), axis=(0, 1))
    same_minus = jnp.all(jnp.where(inside, delta == minus, True), axis=(0, 1))
    signs = _coin(bits[2:]).reshape(_SIGN_TRIES, channels)
    noop = jnp.all(jnp.where(signs, same_plus, same_minus), axis=1)
    chosen = jnp.where(jnp.any(~noop), signs[jnp.argmax(~noop)], ~signs[0])
    return jnp.where(inside, jnp.where(chosen, plus, minus), delta)


def _l2_init(key: Array, shape: tuple[int, ...]) -> Array:
    """The paper's ℓ2 start: a grid of side-⌊min(H,W)/5⌋ bumps with random signs per
    channel (and random orientation), unnormalised, (H, W, C)."""
    height, width, channels = shape
    side = max(min(height, width) // 5, 1)
    starts_h = range(max((height - 5 * side) // 2, 0), height - side + 1, side)
    starts_w = range(max((width - 5 * side) // 2, 0), width - side + 1, side)
    tiles = [(r, c) for r in starts_h for c in starts_w]
    # Static positions and side: the two orientations of every tile are numpy constants.
    bumps = [
        np.stack([_bump(r, c, side, t, height, width, xp=np) for r, c in tiles])
        for t in (False, True)
    ]
    bits = jax.random.bits(key, (len(tiles), 1 + channels), jnp.uint32)
    patterns = jnp.where(_coin(bits[:, :1, None]), bumps[1], bumps[0])  # (T, H, W)
    signs = jnp.where(_coin(bits[:, 1:]), 1.0, -1.0)  # (T, C)
    return jnp.einsum("thw,tc->hwc", patterns, signs)


def _l2_propose(key: Array, delta: Array, eps: Array, s: Array) -> Array:
    """Move ℓ2 mass between two random s×s squares (one example, (H, W, C)).

    Per channel, window 1 gets a fresh bump (random sign) plus its current, normalised
    content, rescaled to carry all the mass the two windows held plus an equal share of
    the unused budget ε² − ‖δ‖²; window 2 (minus the overlap) is emptied. The result is
    rescaled to ‖δ‖₂ = ε (the caller clips it to the box, which only shrinks it).
    """
    height, width, channels = delta.shape
    # One draw per proposal: 4 positions, the bump's orientation, then the sign bits.
    bits = jax.random.bits(key, (5 + channels,), jnp.uint32)
    r1, c1 = _position(bits[0], s, height), _position(bits[1], s, width)
    w1 = _window(r1, c1, s, height, width)
    w2 = _window(_position(bits[2], s, height), _position(bits[3], s, width), s, height, width)
    w1, union = w1[..., None], (w1 | w2)[..., None]
    sq = delta**2
    norm_w1 = jnp.sqrt(jnp.sum(jnp.where(w1, sq, 0.0), axis=(0, 1)))  # (C,)
    mass_union = jnp.sum(jnp.where(union, sq, 0.0), axis=(0, 1))  # (C,)
    free = jnp.maximum(eps**2 - jnp.sum(sq), 0.0) / channels
    bump = _bump(r1, c1, s, _coin(bits[4]), height, width)[..., None]
    signs = jnp.where(_coin(bits[5:]), 1.0, -1.0).astype(delta.dtype)
    new = bump * signs + jnp.where(w1, delta, 0.0) / (1e-12 + norm_w1)
    new_norm = jnp.sqrt(jnp.sum(new**2, axis=(0, 1)))
    new = new / jnp.maximum(new_norm, 1e-12) * jnp.sqrt(free + mass_union)
    out = jnp.where(w1, new, jnp.where(union, 0.0, delta))
    return out * (eps / jnp.maximum(jnp.sqrt(jnp.sum(out**2)), 1e-12))


def _l2_to_box(delta: Array, x: Array, eps: Array, box: tuple[float, float]) -> Array:
    """Clip to the box, then shrink by float rounding's worth if ‖δ‖₂ ended above ε.

    Clipping to a box that contains x moves every coordinate of δ towards 0, so it stays
    in the ball; the exact ℓ2 projection (a bisection) would be wasted work per query.
    """
    delta = jnp.clip(x + delta, *box) - x
    norm = jnp.sqrt(jnp.sum(delta**2, axis=(1, 2, 3), keepdims=True))
    return delta * jnp.minimum(1.0, eps / jnp.maximum(norm, 1e-30))


# ----------------------------------------------------------------------------- attack


class _State(NamedTuple):
    i: Array  # iterations done (queries after the initial one)
    delta: Array  # (B, H, W, C) best perturbation so far
    value: Array  # (B,) loss at delta
    success: Array  # (B,) bool
    queries: Array  # (B,) int32
    done: Array  # (B,) bool: no longer queried (broken, or skipped by this restart)


def _check(x: Array, threat: ThreatModel, queries, p_init: float, restarts: int) -> None:
    if threat.name not in ("linf", "l2"):
        raise InputError(
            f"the Square attack supports 'linf' and 'l2' threat models, got {threat.name!r}"
        )
    if np.ndim(x) != 4:
        raise InputError(
            f"the Square attack needs NHWC images of shape (B, H, W, C), got shape {np.shape(x)}"
        )
    if is_concrete(queries):
        if np.ndim(queries) != 0 or not np.issubdtype(np.asarray(queries).dtype, np.integer):
            raise InputError(f"queries must be an integer, got {queries!r}")
        if queries < 1:
            raise InputError(f"queries must be >= 1 (the initial query counts), got {queries}")
    check_number(p_init, "p_init", 0.0, 1.0, lo_open=True)
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise InputError(f"restarts must be an integer >= 1, got {restarts!r}")


def square(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    key: Array,
    *,
    threat: ThreatModel,
    queries: int | Array = 5000,
    p_init: float = 0.8,
    loss: str | Loss = "margin",
    restarts: int = 1,
    target: Array | None = None,
    schedule_queries: int | None = None,
) -> SquareResult:
    """Square attack: random search over square-shaped updates, using logits only.

    Args:
      logits_fn: the model, images (B, H, W, C) -> logits (B, K). Only evaluated, never
        differentiated.
      x: (B, H, W, C) clean images inside `threat.box`.
      y: (B,) integer labels.
      key: PRNG key; the same key gives the same result.
      threat: `linf(eps)` or `l2(eps)`, eps a scalar or per example (B,), in input units.
      queries: model evaluations per example and restart, the initial one included (at
        most `queries − 1` proposals follow it). May be a traced integer under `jit` when
        `schedule_queries` is given, so one compiled attack serves every budget.
      p_init: initial fraction of the image a square covers (0.8 in AutoAttack; the paper
        tunes 0.05 for ℓ∞ and 0.1 for ℓ2 on ImageNet).
      loss: "margin" (default), "ce", "dlr", or any `loss(logits, y) -> (B,)` to maximise.
      restarts: independent runs, each re-initialising the examples still unbroken; the
        per-example best over runs is kept (success first, then the higher value).
      target: optional (B,) target labels: maximise −loss(logits, target), success when
        classified as the target.
      schedule_queries: the budget the p schedule is rescaled to (default `queries`, as
        the reference does; 10000 gives the paper's unrescaled schedule). With it fixed, a
        run with more queries extends the trajectory of one with fewer (same key).

    Returns:
      `SquareResult(x_adv, delta, value, success, queries)`, per example. An example is
      no longer queried once misclassified; one misclassified at the start costs a single
      query. `value` never falls below its value at the initial point.
    """
    check_classifier_args(logits_fn, x, y, threat, key, who="the Square attack")
    if not (callable(loss) or isinstance(loss, str)):
        raise InputError(f"loss must be a loss name or a callable, got {loss!r}")
    _check(x, threat, queries, p_init, restarts)
    checks = check_attack_inputs(x, y, threat, target, logits_fn=logits_fn)
    # Infinite logits can give a finite-looking margin of inf: check the clean ones.
    checks += screen(finite_checks(jax.lax.stop_gradient(logits_fn(jnp.asarray(x)))))
    if schedule_queries is None:
        if not is_concrete(queries):
            raise InputError("a traced `queries` needs a static `schedule_queries`")
        schedule_queries = int(queries)
    if (
        isinstance(schedule_queries, bool)
        or not isinstance(schedule_queries, int | np.integer)
        or schedule_queries < 1
    ):
        raise InputError(f"schedule_queries must be an integer >= 1, got {schedule_queries!r}")
    loss_fn = get_loss(loss) if isinstance(loss, str) else loss
    x = jnp.asarray(x)
    batch, height, width, _ = x.shape
    norm, (lo, hi) = threat.name, threat.box
    sides = jnp.asarray(square_sides(p_init, height, width, norm), jnp.int32)
    starts = jnp.asarray(halving_starts(int(schedule_queries)), jnp.int32)

    # One XLA computation: called eagerly, this compiles once instead of op by op; under
    # an outer jit it is inlined.
    @jax.jit
    def attack(x: Array, y: Array, key: Array, eps: Array, target, queries: Array) -> _State:
        objective = classifier_objective(logits_fn, y, loss=loss_fn, target=target)
        eps = jnp.broadcast_to(eps.astype(x.dtype), (batch,))
        eps4 = eps.reshape(batch, 1, 1, 1)
        # ℓ∞: every pixel's perturbation is one of these two values (ball, then box).
        plus = jnp.clip(x + eps4, lo, hi) - x
        minus = jnp.clip(x - eps4, lo, hi) - x
        ex_keys = example_keys(key, batch)

        def run_keys(run: Array) -> Array:
            """Per-example keys of restart `run`; run 0 uses the example keys themselves, so
            it does not depend on the number of restarts. Later runs fold in data from the
            top of the uint32 range, which query indices never reach."""
            tag = jnp.uint32(0xFFFFFFFF) - run.astype(jnp.uint32)
            other = jax.vmap(jax.random.fold_in, (0, None))(ex_keys, tag)
            return jnp.where(run == 0, ex_keys, other) if restarts > 1 else ex_keys

        def draw_keys(keys: Array, i: Array) -> Array:
            """Keys of query i (0 = the start), per example: they depend only on (key,
            example index, restart, i), never on the rest of the batch or the budget."""
            return jax.vmap(jax.random.fold_in, (0, None))(keys, i)

        def evaluate(delta: Array) -> tuple[Array, Array]:
            return objective(x + delta)

        def initial(keys: Array) -> Array:
            if norm == "linf":
                return jnp.where(jax.vmap(_linf_init, (0, None))(keys, x.shape[1:]), plus, minus)
            raw = jax.vmap(_l2_init, (0, None))(keys, x.shape[1:]).astype(x.dtype)
            raw_norm = jnp.sqrt(jnp.sum(raw**2, axis=(1, 2, 3), keepdims=True))
            return _l2_to_box(raw * eps4 / jnp.maximum(raw_norm, 1e-12), x, eps4, (lo, hi))

        def propose(keys: Array, delta: Array, s: Array) -> Array:
            if norm == "linf":
                return jax.vmap(_linf_propose, (0, 0, 0, 0, None))(keys, delta, plus, minus, s)
            new = jax.vmap(_l2_propose, (0, 0, 0, None))(keys, delta, eps, s)
            return _l2_to_box(new, x, eps4, (lo, hi))

        def one_run(run: Array, skip: Array) -> _State:
            """One Square run from a fresh start; `skip`ped examples are never queried."""
            keys = run_keys(run)
            delta = initial(draw_keys(keys, jnp.asarray(0)))
            value, success = evaluate(delta)
            state = _State(
                i=jnp.asarray(0, jnp.int32),
                delta=delta,
                value=value,
                success=success,
                queries=jnp.where(skip, 0, 1).astype(jnp.int32),
                done=skip | success,
            )

            def cond(st: _State) -> Array:
                return (st.i < queries - 1) & ~jnp.all(st.done)

            def body(st: _State) -> _State:
                s = sides[jnp.sum(st.i >= starts)]
                cand = propose(draw_keys(keys, st.i + 1), st.delta, s)
                value, success = evaluate(cand)
                # Success dominates; otherwise only a strict improvement is taken.
                take = ~st.done & (success | (value > st.value))
                return _State(
                    i=st.i + 1,
                    delta=jnp.where(take[:, None, None, None], cand, st.delta),
                    value=jnp.where(take, value, st.value),
                    success=jnp.where(take, success, st.success),
                    queries=st.queries + (~st.done).astype(jnp.int32),
                    done=st.done | (take & success),
                )

            return jax.lax.while_loop(cond, body, state)

        if restarts == 1:
            return one_run(jnp.asarray(0), jnp.zeros((batch,), bool))

        def restart(best: _State, run: Array) -> tuple[_State, None]:
            # All runs in one scan, so the compiled program holds one search loop.
            new = one_run(run, best.success)
            better = new.success | (new.value > best.value)
            take = ~best.success & ((run == 0) | better)

            def pick(a: Array, b: Array) -> Array:
                if a.ndim == 0:  # the iteration counter
                    return a
                return jnp.where(take.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

            merged = jax.tree.map(pick, new, best)
            return merged._replace(queries=best.queries + new.queries), None

        empty = _State(
            i=jnp.asarray(0, jnp.int32),
            delta=jnp.zeros_like(x),
            value=jnp.full((batch,), jnp.nan, x.dtype),
            success=jnp.zeros((batch,), bool),
            queries=jnp.zeros((batch,), jnp.int32),
            done=jnp.zeros((batch,), bool),
        )
        best, _ = jax.lax.scan(restart, empty, jnp.arange(restarts))
        return best

    eps = jnp.asarray(threat.eps)
    best = attack(x, jnp.asarray(y), key, eps, target, jnp.asarray(queries, jnp.int32))
    result = guard(Result(x + best.delta, best.delta, best.value, best.success), checks)
    return SquareResult(*result, best.queries)
