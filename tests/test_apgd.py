"""Tests for APGD (Croce & Hein 2020): the checkpoint schedule, the step rule, the attacks.

Known answers come from linear models (closed-form worst case in a norm ball) and from
driving `apgd_rule` by hand on a concave objective or on a scripted sequence of scores.
Jitted functions are defined once at module level with fixed shapes, so hypothesis
examples reuse one compilation.
"""

from __future__ import annotations

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import assume, given, settings
from linear_problems import (
    NORMS,
    D,
    assert_in_ball_and_box,
    binary_expected,
    binary_logits,
    binary_problem,
)

from jaxrobust.attacks.apgd import (
    apgd,
    apgd_l1_rule,
    apgd_rule,
    apgd_targeted,
    checkpoints,
    largereps_schedule,
    precise_cross_entropy,
    sparse_ascent,
)
from jaxrobust.attacks.pgd import classifier_objective, pgd
from jaxrobust.errors import InputError
from jaxrobust.losses import cross_entropy, dlr, margin
from jaxrobust.optimize import optimize
from jaxrobust.threat import l1, l2, linf, unconstrained

FAST = settings(max_examples=10, deadline=None)
# ----------------------------------------------------------------------------- checkpoints


def test_checkpoints_match_the_published_schedule():
    # Derivation by hand, in exact hundredths: p_0 = 0, p_1 = .22, and the increments
    # max(p_j − p_{j−1} − .03, .06) are .19, .16, .13, .10, .07, .06, .06, giving
    # p = .41, .57, .70, .80, .87, .93, .99; the next, 1.05, exceeds 1 and stops the list.
    # ⌈100·p_j⌉ is then 100·p_j. (Naive float64 gets p_3 = 0.5700000000000001 and w_3 = 58.)
    assert checkpoints(100) == (0, 22, 41, 57, 70, 80, 87, 93, 99)
    assert checkpoints(200) == (0, 44, 82, 114, 140, 160, 174, 186, 198)
    assert checkpoints(0) == (0,)
    for steps in (1, 5, 10, 37):
        cps = checkpoints(steps)
        assert cps[0] == 0 and cps[-1] <= steps
        assert all(a < b for a, b in itertools.pairwise(cps))  # merged, increasing


# ----------------------------------------------------------------------------- the rule


def _concave(c):
    """−‖x_adv − c‖² per example: a concave objective maximised at the projection of c."""

    def fn(x_adv):
        return -jnp.sum((x_adv - c) ** 2, axis=1)

    return fn


@partial(jax.jit, static_argnames=("steps",))
def _drive_concave(x, c, eps_rule, *, steps):
    """Run apgd_rule by hand on the concave objective; record η, the next δ and the score."""
    threat = linf(0.4)
    rule = apgd_rule(threat, steps, eps=eps_rule)
    fn = _concave(c)
    delta = jnp.zeros_like(x)

    def body(carry, i):
        delta, state = carry
        score, grad = fn(x + delta), jax.grad(lambda d: jnp.sum(fn(x + d)))(delta)
        delta, state = rule.update(state, delta, grad, score, i, threat, x)
        return (delta, state), (state.eta, delta, score)

    (_, state), trace = jax.lax.scan(body, (delta, rule.init(delta, x)), jnp.arange(steps))
    return state, trace


def test_rule_halves_step_size_exactly_at_checkpoints_when_progress_stops():
    # Two examples at x = 0.5 with the target c = 1.5 outside the ℓ∞ ball of radius 0.4:
    # the maximiser is δ = 0.4. Example 0 starts with η = 2·0.005, so it climbs 0.01 per
    # step until it reaches δ = 0.4 around step 40: the loss rises at every step of the
    # first two windows (η kept at 22 and 41), then stays flat (η halved at 57, 70, ...).
    # Example 1 starts with η = 2·0.4 and reaches the corner in one step: flat from step
    # 1 on, so η is halved at every checkpoint.
    steps = 100
    x = jnp.full((2, 3), 0.5)
    c = jnp.full((3,), 1.5)
    state, (etas, deltas, scores) = _drive_concave(x, c, jnp.asarray([0.005, 0.4]), steps=steps)
    etas = np.asarray(etas)  # (steps, 2): η after the update at step i
    cps = [w for w in checkpoints(steps) if 0 < w < steps]
    halved = {0: [57, 70, 80, 87, 93, 99], 1: cps}
    for ex, start in ((0, 0.01), (1, 0.8)):
        want = np.full(steps, start, np.float32)
        for w in halved[ex]:
            want[w:] *= 0.5
        np.testing.assert_allclose(etas[:, ex], want, rtol=1e-6, err_msg=f"example {ex}")
    # η changes only at checkpoints.
    changed = np.nonzero(np.any(np.diff(etas, axis=0) != 0, axis=1))[0] + 1
    assert set(changed.tolist()) <= set(cps)
    # The iterate ends (and stays) at the maximiser; the rule's best is the maximiser.
    np.testing.assert_allclose(np.asarray(deltas)[-1], 0.4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.best_delta), 0.4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.best_score), -3 * 0.6**2, atol=1e-5)
    # Example 0's loss rose strictly in the first window (the premise of the test).
    s0 = np.asarray(scores)[:, 0]
    assert np.all(np.diff(s0[:23]) > 0)


@jax.jit
def _scripted_update(state, delta, grad, score, i, x):
    threat = linf(1.0)
    rule = apgd_rule(threat, 100, eps=0.25)
    return rule.update(state, delta, grad, score, i, threat, x)


def _grad(i):
    """A scripted gradient whose sign pattern changes with i: sign (+, −) or (−, +)."""
    s = 1.0 if i % 2 == 0 else -1.0
    return np.array([[s, -s]], np.float32) * (1 + i)


def _run_script(scores):
    """Feed the rule scripted objectives, gradients and iterates δ_i = 0.001·i − 0.05.

    x = 0.5 and ε = 1 in the box [0, 1]: δ is clipped to [−0.5, 0.5]; η starts at 2·0.25.
    """
    x = jnp.full((1, 2), 0.5)
    state = apgd_rule(linf(1.0), 100, eps=0.25).init(jnp.zeros_like(x), x)
    deltas = [np.full((1, 2), 0.001 * i - 0.05, np.float32) for i in range(100)]
    etas, nexts = [], []
    for i in range(100):
        score = jnp.asarray([scores[i]], jnp.float32)
        nxt, state = _scripted_update(
            state, jnp.asarray(deltas[i]), jnp.asarray(_grad(i)), score, jnp.asarray(i), x
        )
        etas.append(float(state.eta[0]))
        nexts.append(np.asarray(nxt))
    return np.asarray(etas), nexts, deltas


def _apgd_step(base, prev, grad, eta, alpha=0.75):
    """The published update in the setting of `_run_script` (ℓ∞, δ ∈ [−0.5, 0.5])."""
    z = np.clip(base + eta * np.sign(grad), -0.5, 0.5)
    return np.clip(base + alpha * (z - base) + (1 - alpha) * (base - prev), -0.5, 0.5)


def _halved_at(*checkpoints_hit):
    want = np.full(100, 0.5)
    for w in checkpoints_hit:
        want[w:] *= 0.5
    return want


def test_rule_condition_two_halves_when_stuck_and_restarts_from_the_best():
    # Rises 0..22 over the first window, then drops by 100 and rises by 1 per step, never
    # again reaching the best (22). The rises are >= ρ of every window, so condition 1 never
    # fires; condition 2 (η not halved at the last checkpoint, best not improved since)
    # fires at 41, is blocked at 57 (halved at 41), fires at 70, and so on.
    scores = [float(i) if i <= 22 else float(i) - 100.0 for i in range(100)]
    etas, nexts, d = _run_script(scores)
    np.testing.assert_allclose(etas, _halved_at(41, 70, 87, 99))
    # A halving restarts from the best point δ_22 with the gradient stored there and the
    # momentum δ_22 − δ_40 (as in the paper); the next step's momentum starts from δ_22.
    g, best = _grad, d[22]
    np.testing.assert_allclose(nexts[41], _apgd_step(best, d[40], g(22), 0.25), atol=1e-6)
    np.testing.assert_allclose(nexts[42], _apgd_step(d[42], best, g(42), 0.25), atol=1e-6)
    np.testing.assert_allclose(nexts[30], _apgd_step(d[30], d[29], g(30), 0.5), atol=1e-6)
    # The first step has no momentum.
    np.testing.assert_allclose(nexts[0], _apgd_step(d[0], d[0], g(0), 0.5, 1.0), atol=1e-6)


def test_rule_condition_two_applies_at_the_first_checkpoint():
    # The start is the best point (100); then the objective drops and rises at every step
    # without reaching it again. Condition 1 holds off (21 rises in 22 steps) but condition
    # 2 fires at 22 already, as in the paper (the reference code only allows it from 41 on).
    scores = [100.0] + [float(i) - 200.0 for i in range(1, 100)]
    etas, _, _ = _run_script(scores)
    np.testing.assert_allclose(etas, _halved_at(22, 57, 80, 93))


@pytest.mark.parametrize("rises,halved", [(12, False), (11, True)])
def test_rule_condition_one_threshold_is_strict(rises, halved):
    # A new best at every step up to 41 (no halving at 22, 41); in the window (41, 57] of
    # 16 steps the objective rises `rises` times, each a new best, and otherwise dips.
    # ρ·16 = 12 exactly: the paper halves when the count is < ρ·16 (the reference code, <=).
    scores, level = [], 0.0
    for i in range(100):
        if i <= 41 or (42 <= i < 42 + rises) or i > 57:
            level += 1.0
            scores.append(level)
        else:
            scores.append(level - 50.0)
    etas, _, _ = _run_script(scores)
    assert (etas[57] < etas[56]) == halved
    assert etas[56] == 0.5  # kept through 22 and 41


# ----------------------------------------------------------------------------- the loss


def _exact_cross_entropy(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """−log p_y in float64 as log1p of the other classes' mass (exact near 0)."""
    z = z.astype(np.float64)
    d = z - z[np.arange(len(y)), y][:, None]
    m = np.maximum(d.max(axis=1), 0.0)
    e = np.exp(d - m[:, None])
    e[np.arange(len(y)), y] = 0.0
    return m + np.log1p(np.expm1(-m) + e.sum(axis=1))


def test_apgd_cross_entropy_is_accurate_for_confident_points():
    # Logits of size 16 with margins 10..60: −log p_y is 2e-27..5e-5, far below the float32
    # resolution of logsumexp(z) − z_y (~2e-6 here), where APGD would see a flat loss.
    rng = np.random.default_rng(0)
    n = 64
    y = rng.integers(0, 10, n)
    z = rng.normal(size=(n, 10)).astype(np.float32)
    margins = np.linspace(10.0, 60.0, n).astype(np.float32)
    z[np.arange(n), y] = 16.0
    z += np.where(np.arange(10) == y[:, None], 0.0, 16.0 - margins[:, None] - 3.0)
    want = _exact_cross_entropy(z, y)
    got = np.asarray(precise_cross_entropy(jnp.asarray(z), jnp.asarray(y)), np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.all(got > 0) and len(np.unique(got)) == n  # no zeros, no ties


def test_apgd_cross_entropy_equals_cross_entropy_and_its_gradient():
    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.normal(size=(256, 10)) * rng.choice([0.1, 1.0, 10.0, 50.0], (256, 1)))
    z = z.astype(jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 256))
    want = _exact_cross_entropy(np.asarray(z), np.asarray(y))
    np.testing.assert_allclose(np.asarray(precise_cross_entropy(z, y)), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(precise_cross_entropy(z, y), cross_entropy(z, y), atol=1e-4)
    grad = jax.grad(lambda z: jnp.sum(precise_cross_entropy(z, y)))(z)
    np.testing.assert_allclose(grad, jax.nn.softmax(z) - jax.nn.one_hot(y, 10), atol=1e-6)


# ----------------------------------------------------------------------------- linear models


@partial(jax.jit, static_argnames=("norm",))
def _apgd_binary(w, b, x, y, key, eps, *, norm):
    return apgd(binary_logits(w, b), x, y, key, threat=NORMS[norm](eps), steps=50, loss=margin)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@FAST
# eps <= 0.1 keeps the ℓ2 answer resolvable at 1e-4: near the optimum the margin changes by
# ‖w‖ε·θ²/2 for an angular error θ, and once that is below one float32 ulp of the margin,
# iterates tie and the engine keeps the first (the error floor grows like √ε; at ε = 0.25 it
# reaches ~1.4e-4, see test_attacks.py's PGD known answer).
@given(problem=binary_problem(max_eps=0.1))
def test_apgd_finds_closed_form_worst_case_of_linear_model(norm, problem):
    # Maximising the margin −ỹ(w·x + b) over the ball: δ = −ε·ỹ·u with u = sign(w) (ℓ∞),
    # w/‖w‖₂ (ℓ2), or sign(w_j)·e_j at j = argmax |w_j| (ℓ1, a vertex: the sparse ascent
    # and exact ℓ1 projection find it); the value rises by ε times the dual norm of w.
    w, b, x, y, eps, key = problem
    w64 = np.abs(w.astype(np.float64)) * np.sign(w)
    top2 = np.sort(np.abs(w64))[-2:]
    if norm == "l1":
        assume(top2[1] - top2[0] > 0.05)  # a unique vertex
    res = _apgd_binary(w, b, x, y, key, eps, norm=norm)
    delta, value = binary_expected(w, b, x, y, eps, norm)
    np.testing.assert_allclose(np.asarray(res.delta), delta, atol=1e-4)
    np.testing.assert_allclose(np.asarray(res.value), value, atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(res.success), value > 0)
    assert_in_ball_and_box(norm, res, x, eps)


# ----------------------------------------------------------------------------- a small MLP

_rng = np.random.default_rng(0)
W1 = jnp.asarray(_rng.normal(size=(D, 8)) * 2, jnp.float32)
B1 = jnp.asarray(_rng.normal(size=8), jnp.float32)
W2 = jnp.asarray(_rng.normal(size=(8, 4)), jnp.float32)


def mlp(x):
    return jnp.tanh(x @ W1 + B1) @ W2


@jax.jit
def _apgd_mlp(x, y, key, eps):
    return apgd(mlp, x, y, key, threat=linf(eps), steps=10, loss="dlr")


@jax.jit
def _apgd_t_mlp(x, y, key, eps):
    return apgd_targeted(mlp, x, y, key, threat=linf(eps), steps=10)


X6 = jnp.asarray(np.random.default_rng(1).uniform(size=(6, D)), jnp.float32)
Y6 = jnp.asarray([0, 1, 2, 3, 1, 2], jnp.int32)
EPS6 = jnp.asarray([0.02, 0.05, 0.1, 0.3, 0.6, 1.0], jnp.float32)  # per-example radii
KEY = jax.random.key(7)


def test_apgd_stays_in_ball_and_reports_its_own_value():
    res = _apgd_mlp(X6, Y6, KEY, EPS6)
    assert_in_ball_and_box("linf", res, X6, EPS6)
    logits = mlp(res.x_adv)
    np.testing.assert_array_equal(np.asarray(res.success), np.asarray(logits.argmax(1) != Y6))
    np.testing.assert_allclose(
        np.asarray(res.value), np.asarray(dlr(logits, Y6)), rtol=1e-5, atol=1e-5
    )


def test_jit_equals_eager_and_same_key_is_identical():
    eager = apgd(mlp, X6, Y6, KEY, threat=linf(EPS6), steps=10, loss="dlr")
    jitted = _apgd_mlp(X6, Y6, KEY, EPS6)
    again = _apgd_mlp(X6, Y6, KEY, EPS6)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    for a, b in zip(jitted, again, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = _apgd_mlp(X6, Y6, jax.random.key(8), EPS6)
    assert not np.allclose(np.asarray(other.delta), np.asarray(jitted.delta))
    t1, t2 = _apgd_t_mlp(X6, Y6, KEY, EPS6), _apgd_t_mlp(X6, Y6, KEY, EPS6)
    for a, b in zip(t1, t2, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("attack", [_apgd_mlp, _apgd_t_mlp])
def test_vmap_and_per_example_independence(attack):
    # Two batches of the same shape: one compilation for the plain calls, one for vmap.
    other_x = jnp.asarray(np.random.default_rng(2).uniform(size=(6, D)), jnp.float32)
    other_y = jnp.asarray([3, 2, 1, 0, 3, 0], jnp.int32)
    xs, ys = jnp.stack([X6, other_x]), jnp.stack([Y6, other_y])
    keys = jax.random.split(KEY, 2)
    batched = jax.vmap(lambda x, y, k: attack(x, y, k, EPS6))(xs, ys, keys)
    for i in range(2):
        single = attack(xs[i], ys[i], keys[i], EPS6)
        for a, b in zip(batched, single, strict=True):
            np.testing.assert_allclose(np.asarray(a)[i], np.asarray(b), atol=1e-6)
    # Example i's result does not depend on the rest of the batch: replace examples 3..5.
    full = attack(X6, Y6, KEY, EPS6)
    mixed = attack(X6.at[3:].set(other_x[3:]), Y6.at[3:].set(other_y[3:]), KEY, EPS6)
    for a, b in zip(full, mixed, strict=True):
        np.testing.assert_allclose(np.asarray(a)[:3], np.asarray(b)[:3], atol=1e-6)
    assert not np.allclose(np.asarray(full.delta)[3:], np.asarray(mixed.delta)[3:])


# ----------------------------------------------------------------------------- C < 4 classes


# Three classes, y = 0 right at clean inputs (x ≈ 0.5): z = (0, s − 0.6, 3s − 1.7) with
# s = mean(x) ≈ 0.5, so the most likely wrong class is 1 (z ≈ −0.1 against −0.2 for 2).
# Pushing towards class 1 raises z_2 three times faster, so class 2 wins first.
W3 = jnp.stack([jnp.zeros(D), jnp.full(D, 1.0 / D), jnp.full(D, 3.0 / D)], axis=1)
C3 = jnp.asarray([0.0, -0.6, -1.7])


def _linear3(x):
    return x @ W3 + C3


@jax.jit
def _apgd_t_three(x, y, key):
    return apgd_targeted(_linear3, x, y, key, threat=linf(0.3), steps=10, n_target_classes=1)


def test_apgd_targeted_three_classes_margin_and_success_is_misclassification():
    # No targeted DLR for C = 3 (it needs z_π4): the fallback maximises z_t − z_y, here
    # z_1 − z_0 = s − 0.6, linear with maximiser δ = +ε. At x + δ, s ≈ 0.8: z ≈ (0, 0.2,
    # 0.7), so the prediction is class 2, not the target 1, and that counts as success.
    x = 0.5 + 0.01 * jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (6, D)), jnp.float32)
    y = jnp.zeros(6, jnp.int32)
    assert np.all(np.argsort(-np.asarray(_linear3(x)), axis=1)[:, :2] == [0, 1])
    res = _apgd_t_three(x, y, KEY)
    np.testing.assert_allclose(np.asarray(res.delta), 0.3, atol=1e-6)
    logits = np.asarray(_linear3(res.x_adv))
    np.testing.assert_allclose(np.asarray(res.value), logits[:, 1] - logits[:, 0], atol=1e-5)
    np.testing.assert_array_equal(logits.argmax(axis=1), 2)
    assert np.all(np.asarray(res.success))


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises_clear_errors():
    x, y = X6[:4], Y6[:4] % 2
    binary = binary_logits(jnp.ones(D), 0.0)
    with pytest.raises(InputError, match="at least 3 classes"):
        apgd(binary, x, y, KEY, threat=linf(0.1), steps=2, loss="dlr")
    with pytest.raises(InputError, match="eps must be >= 0"):
        apgd(mlp, x, y, KEY, threat=linf(-0.1), steps=2)
    with pytest.raises(InputError, match="eps must be >= 0"):
        apgd_rule(linf(0.1), 10, eps=jnp.asarray([0.1, -0.2]))
    with pytest.raises(InputError, match="do not match"):
        apgd(mlp, x, y[:3], KEY, threat=linf(0.1), steps=2)
    with pytest.raises(InputError, match="do not match"):
        apgd_targeted(mlp, x, y[:3], KEY, threat=linf(0.1), steps=2)
    with pytest.raises(InputError, match="unknown APGD loss"):
        apgd(mlp, x, y, KEY, threat=linf(0.1), steps=2, loss="hinge")
    with pytest.raises(InputError, match="eps must be finite"):
        apgd(mlp, x, y, KEY, threat=unconstrained(), steps=2)
    with pytest.raises(InputError, match="momentum"):
        apgd(mlp, x, y, KEY, threat=linf(0.1), steps=2, momentum=1.5)
    with pytest.raises(InputError, match="n_target_classes"):
        apgd_targeted(mlp, x, y, KEY, threat=linf(0.1), steps=2, n_target_classes=0)
    with pytest.raises(InputError, match="declared input range"):
        apgd(mlp, x + 2.0, y, KEY, threat=linf(0.1), steps=2)


# ----------------------------------------------------------------------------- digits MLP

EPS = 0.1
HIDDEN = 64


def _mlp_init(key):
    sizes = (64, HIDDEN, 10)
    params = []
    for d_in, d_out in itertools.pairwise(sizes):
        key, sub = jax.random.split(key)
        w = jax.random.normal(sub, (d_in, d_out)) * jnp.sqrt(2.0 / d_in)
        params.append((w, jnp.zeros(d_out)))
    return params


def _mlp_apply(params, x):
    h = x.reshape(x.shape[0], -1)
    for w, b in params[:-1]:
        h = jax.nn.relu(h @ w + b)
    w, b = params[-1]
    return h @ w + b


@jax.jit
def _train_digits(x, y, key):
    """Full-batch Adam, 300 steps: ~97% clean test accuracy, far from robust at ε = 0.1."""
    opt = optax.adam(3e-3)
    params = _mlp_init(key)

    def step(carry, _):
        params, opt_state = carry
        grads = jax.grad(lambda p: cross_entropy(_mlp_apply(p, x), y).mean())(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=300)
    return params


@jax.jit
def _digits_attacks(params, x, y, key):
    def fn(z):
        return _mlp_apply(params, z)

    threat = linf(EPS)
    # The engine's first random start (restart 0 uses fold_in(key, 0)), for the start value.
    start = threat.init(jax.random.fold_in(key, 0), x)
    return (
        apgd(fn, x, y, key, threat=threat, steps=100, loss="ce"),
        pgd(fn, x, y, key, threat=threat, steps=100),
        apgd_targeted(fn, x, y, key, threat=threat, steps=100),
        start,
    )


def _np_logits(params, x):
    """The MLP in float64 numpy: checks without more JAX dispatch or compilation."""
    h = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    for w, b in params[:-1]:
        h = np.maximum(h @ np.asarray(w, np.float64) + np.asarray(b, np.float64), 0.0)
    w, b = params[-1]
    return h @ np.asarray(w, np.float64) + np.asarray(b, np.float64)


def _np_ce(logits, y):
    z = logits - logits.max(axis=1, keepdims=True)
    return np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]


def _np_dlr_targeted(logits, y, t):
    rows, top = np.arange(len(y)), -np.sort(-logits, axis=1)
    return -(logits[rows, y] - logits[rows, t]) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]))


def test_apgd_on_digits_mlp_is_at_least_as_strong_as_pgd(digits_test):
    from jaxrobust.data import load_split

    x_train, y_train = load_split("digits", "train")
    params = _train_digits(jnp.asarray(x_train), jnp.asarray(y_train), jax.random.key(0))
    x, y = digits_test
    res_apgd, res_pgd, res_t, start = _digits_attacks(params, x, y, jax.random.key(1))
    clean_logits = _np_logits(params, x)
    clean = float(np.mean(clean_logits.argmax(1) == y))
    acc = {n: 1.0 - float(np.mean(np.asarray(r.success))) for n, r in
           (("apgd", res_apgd), ("pgd", res_pgd), ("apgd_t", res_t))}  # fmt: skip
    print(f"clean {clean:.4f}, robust at linf {EPS}: {acc}")
    assert clean > 0.9
    assert acc["apgd"] <= acc["pgd"] + 0.01
    assert acc["apgd_t"] <= clean
    for res in (res_apgd, res_t):
        assert_in_ball_and_box("linf", res, x, EPS)
        # Success is misclassification (APGD-T: any wrong class, not only the target).
        adv = _np_logits(params, res.x_adv).argmax(1)
        np.testing.assert_array_equal(np.asarray(res.success), adv != y)
    # The best value is no worse than the start, except where a successful iterate with a
    # lower loss won (success dominates the choice of the best iterate).
    start_logits = _np_logits(params, x + np.asarray(start))
    start_value, start_success = _np_ce(start_logits, y), start_logits.argmax(1) != y
    value, success = np.asarray(res_apgd.value), np.asarray(res_apgd.success)
    assert np.all(success >= start_success)
    assert np.all((value >= start_value - 1e-5) | (success & ~start_success))
    np.testing.assert_allclose(value, _np_ce(_np_logits(params, res_apgd.x_adv), y), atol=1e-4)
    # APGD-T's value is the targeted DLR towards one of the top-9 wrong clean classes.
    others = np.where(np.eye(10, dtype=bool)[y], -np.inf, clean_logits)
    top9 = np.argsort(-others, axis=1)[:, :9]
    adv_logits = _np_logits(params, res_t.x_adv)
    dlrs = np.stack([_np_dlr_targeted(adv_logits, y, top9[:, j]) for j in range(9)], 1)
    # (relative tolerance: the DLR ratio amplifies float32 rounding when the top logits tie)
    close = np.isclose(dlrs, np.asarray(res_t.value)[:, None], rtol=1e-3, atol=1e-4)
    assert np.all(close.any(axis=1))


# ----------------------------------------------------------------------------- ℓ1-APGD


def test_largereps_schedule_splits_the_steps_as_autoattack():
    # AutoAttack: ⌈0.3n⌉ steps at 3ε, ⌈0.3n⌉ at 2ε, the rest (n − 2⌈0.3n⌉) at ε.
    assert largereps_schedule(100) == ((3, 30), (2, 30), (1, 40))
    assert largereps_schedule(50) == ((3, 15), (2, 15), (1, 20))
    assert largereps_schedule(10) == ((3, 3), (2, 3), (1, 4))
    for n in range(8):
        stages = largereps_schedule(n)
        assert [f for f, _ in stages] == [3, 2, 1]
        assert sum(s for _, s in stages) == n and all(s >= 0 for _, s in stages)


def test_sparse_ascent_moves_exactly_k_coordinates_with_unit_l1_norm():
    g = jnp.asarray(
        [
            [0.5, -3.0, 0.0, 2.0, -1.0, 0.1],
            [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # ties: the lowest indices win
            [0.0, 0.0, -2.0, 0.0, 0.0, 0.0],  # one nonzero: k = 3 moves only it
        ]
    )
    d = np.asarray(sparse_ascent(g, jnp.asarray([2, 4, 3])))
    np.testing.assert_allclose(d[0], [0, -0.5, 0, 0.5, 0, 0])
    np.testing.assert_allclose(d[1], [0.25, 0.25, 0.25, 0.25, 0, 0])
    np.testing.assert_allclose(d[2], [0, 0, -1, 0, 0, 0])


def _knapsack(c, room, eps):
    """max c·δ over ‖δ‖₁ <= eps, 0 <= δ_i sign(c_i) <= room_i: the fractional knapsack.

    Each unit of budget buys |c_i| on coordinate i, up to room_i, so the greedy fill in
    order of |c_i| is optimal. c, room: (D,) float64; returns (value gain, δ).
    """
    delta, budget = np.zeros_like(c), eps
    for j in np.argsort(-np.abs(c)):
        t = min(room[j], budget)
        delta[j], budget = np.sign(c[j]) * t, budget - t
    return float(np.abs(c) @ np.abs(delta)), delta


def _rowwise_linear(w, b):
    """Example i is the binary linear model s_i = w_i·x_i + b_i, as logits (−s/2, s/2)."""

    def fn(x):
        s = jnp.sum(x * w, axis=1) + b
        return jnp.stack([-s / 2, s / 2], axis=-1)

    return fn


@jax.jit
def _l1_linear(w, b, x, y, key, eps):
    """ℓ1-APGD with its defaults (stages 3ε, 2ε, ε) and the previous plain ℓ1 APGD: the
    generic APGD rule with the threat's 1%-sparse ascent, as `apgd` ran before."""
    fn = _rowwise_linear(w, b)
    threat = l1(eps)
    new = apgd(fn, x, y, key, threat=threat, steps=50, loss=margin)
    plain = optimize(
        classifier_objective(fn, y, loss=margin),
        x,
        key,
        threat=threat,
        steps=50,
        rule=apgd_rule(threat, 50),
        has_aux=True,
    )
    return new, plain


def _knapsack_problems(n=96, d=16, seed=5):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n, d)).astype(np.float32)
    b = (0.3 * rng.normal(size=n)).astype(np.float32)
    x = rng.uniform(size=(n, d)).astype(np.float32)
    eps = rng.uniform(0.2, 3.0, size=n).astype(np.float32)  # the box binds for most
    s = np.sum(x * w, axis=1) + b
    y = (s > 0).astype(np.int32)
    return w, b, x, y, eps


def test_l1_apgd_reaches_the_knapsack_worst_case_of_linear_models():
    # The margin −ỹ(w·x + b) of a linear model is maximised over ball ∩ box by the greedy
    # fill (`_knapsack`) with c = −ỹw and room_i = 1 − x_i (c_i > 0) or x_i (c_i < 0).
    # ℓ1-APGD's sign steps on k coordinates plus the projection's uniform shrinkage cannot
    # move budget between two coordinates without touching the others, so the knapsack
    # optimum, when it fills several coordinates, is not a fixed point: the iterates
    # circle it at the step-size floor ε/10 and the best one is close, not always exact.
    # Measured on these 96 problems (gap / gain): median 0.02%, 90% <= 0.75%, max 4.8%,
    # mean 0.32%; the previous plain ℓ1 APGD: median 0.06%, 90% 18%, max 43%, mean 5.7%.
    w, b, x, y, eps = _knapsack_problems()
    new, plain = _l1_linear(w, b, x, y, KEY, eps)
    ysgn = 2.0 * y - 1.0
    x64 = x.astype(np.float64)
    clean = -ysgn * (np.sum(x64 * w, axis=1) + b)
    gain = np.empty(len(y))
    for i in range(len(y)):
        c = -ysgn[i] * w[i].astype(np.float64)
        room = np.where(c > 0, 1 - x64[i], x64[i])
        gain[i], _ = _knapsack(c, room, float(eps[i]))
    opt = clean + gain
    gap = {name: (opt - np.asarray(r.value, np.float64)) / gain for name, r in
           (("new", new), ("plain", plain))}  # fmt: skip
    q = {k: np.round(np.quantile(v, [0.5, 0.9, 1.0]), 4) for k, v in gap.items()}
    print(f"gap / gain, quantiles 50/90/100%: {q}, mean", {k: v.mean() for k, v in gap.items()})
    # Feasible points cannot beat the optimum (float32 evaluation error only).
    assert np.all(gap["new"] * gain >= -1e-5)
    assert np.median(gap["new"]) <= 1e-3
    assert np.quantile(gap["new"], 0.9) <= 0.02
    assert np.max(gap["new"]) <= 0.1
    assert np.mean(gap["new"]) <= 0.01
    assert np.mean(gap["new"]) < 0.25 * np.mean(gap["plain"])
    assert_in_ball_and_box("l1", new, x, eps)
    np.testing.assert_array_equal(np.asarray(new.success), np.asarray(new.value) > 0)
    # Same key, same result (a second call of the compiled attack).
    again, _ = _l1_linear(w, b, x, y, KEY, eps)
    for a, c in zip(new, again, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


@jax.jit
def _drive_l1_rule(x, c, delta0):
    """Run apgd_l1_rule by hand on the linear objective c·δ (25 steps: a check every step)."""
    threat = l1(1.0)
    rule = apgd_l1_rule(threat, 25)

    def body(carry, i):
        delta, state = carry
        score = jnp.sum(c * delta, axis=1)
        grad = threat.free(jnp.broadcast_to(c, delta.shape), delta, x)
        delta, state = rule.update(state, delta, grad, score, i, threat, x)
        return (delta, state), (state.eta, state.k, state.sparsity)

    init = rule.init(delta0, x)
    (_, state), trace = jax.lax.scan(body, (delta0, init), jnp.arange(25))
    return init, state, trace


def test_l1_rule_adapts_k_and_step_size_from_the_sparsity_of_the_best_point():
    # x = 0.5 in [0, 1]^30, ε = 1: each coordinate has room 0.5, so the optimum of c·δ
    # puts 0.5 on the two largest c_i. Start dense (uniform in the ball).
    d = 30
    c = jnp.asarray(np.random.default_rng(4).permutation(np.arange(1.0, d + 1) / d))
    x = jnp.full((1, d), 0.5)
    delta0 = l1(1.0).init(KEY, x)
    init, state, (etas, ks, sps) = _drive_l1_rule(x, c, delta0)
    assert int(init.k[0]) == 6 and int(init.sparsity[0]) == d  # ⌈0.2·30⌉; d before a check
    assert float(init.eta[0]) == 1.0  # η_0 = ε
    etas, ks, sps = (np.asarray(v)[:, 0] for v in (etas, ks, sps))
    assert np.all((etas >= 0.1 - 1e-7) & (etas <= 1.0))
    prev = np.concatenate([[1.0], etas[:-1]])
    # At every check η is reset to ε (the best point got sparser) or divided by 1.5.
    assert np.all(np.isclose(etas, 1.0) | np.isclose(etas, np.maximum(prev / 1.5, 0.1)))
    # k never exceeds ⌊‖δ_best‖₀ / 1.5⌋ (at least 1) and shrinks as the best point does.
    assert np.all((ks >= 1) & (ks <= np.maximum(sps * 2 // 3, 1)))
    assert ks[-1] == 1 and sps[-1] == 2
    top2 = np.argsort(-np.asarray(c))[:2]
    want = np.zeros(d)
    want[top2] = 0.5
    np.testing.assert_allclose(np.asarray(state.best_delta)[0], want, atol=1e-6)
    # A warm start takes k from its own sparsity.
    warm = apgd_l1_rule(l1(1.0), 25, warm_start=True).init(jnp.asarray(want)[None] / 2, x)
    assert int(warm.k[0]) == 1 and int(warm.sparsity[0]) == 2


@jax.jit
def _l1_rule_two_updates(delta_a, delta_b, c, x):
    """Feed apgd_l1_rule δ_a (score 10, the best point) at step 0, then δ_b (score 0)."""
    threat = l1(1.0)
    rule = apgd_l1_rule(threat, 25)  # a check every step
    state = rule.init(delta_a, x)
    _, state = rule.update(state, delta_a, c, jnp.asarray([10.0]), jnp.asarray(0), threat, x)
    return rule.update(state, delta_b, c, jnp.asarray([0.0]), jnp.asarray(1), threat, x)


def test_l1_rule_does_not_stall_when_k_covers_the_support():
    # The best point δ_a is dense (‖δ_a‖₀ = 8); the current iterate δ_b spreads ε = 1 over
    # the 4 largest c_i, inside the box. The reference sets k = ⌈8/1.5⌉ = 6 from the best
    # point: the sign step adds η/6 to δ_b's 4 coordinates and 2 empty ones, and the
    # projection subtracts λ = η/6 from all six: δ_b comes back unchanged, for ever (its
    # gradient and the best point never change). k = ⌊min(8, 4)/1.5⌋ = 2 moves budget from
    # the two smaller coordinates to the two larger: η = 1/1.5, +η/4 and −η/4.
    c = jnp.asarray([[8.0, 7, 6, 5, 4, 3, 2, 1]]) / 8
    x = jnp.full((1, 8), 0.5)
    delta_a = jnp.full((1, 8), 1.0 / 8)
    delta_b = jnp.asarray([[0.25, 0.25, 0.25, 0.25, 0, 0, 0, 0]])
    stalled = l1(1.0).project(delta_b + (1 / 1.5) * sparse_ascent(c, jnp.asarray([6])), x)
    np.testing.assert_allclose(np.asarray(stalled), np.asarray(delta_b), atol=1e-6)
    nxt, state = _l1_rule_two_updates(delta_a, delta_b, c, x)
    assert int(state.k[0]) == 2
    eta = 1 / 1.5
    want = [0.25 + eta / 4, 0.25 + eta / 4, 0.25 - eta / 4, 0.25 - eta / 4, 0, 0, 0, 0]
    np.testing.assert_allclose(np.asarray(nxt)[0], want, atol=1e-6)


# A random MLP on random inputs in [0, 1]^400: the dimension at which the previous ℓ1 ascent
# (the threat's top 1% of coordinates, here 4) and ℓ1-APGD's adaptive k differ.
D_MLP = 400
_mlp_rng = np.random.default_rng(6)
W1_L1 = jnp.asarray(_mlp_rng.normal(size=(D_MLP, 32)) * np.sqrt(2.0 / D_MLP), jnp.float32)
W2_L1 = jnp.asarray(_mlp_rng.normal(size=(32, 10)) * np.sqrt(2.0 / 32), jnp.float32)
X_L1 = jnp.asarray(_mlp_rng.uniform(size=(100, D_MLP)), jnp.float32)


def _mlp_l1(x):
    return jax.nn.relu(x @ W1_L1) @ W2_L1


@jax.jit
def _l1_mlp_attacks(x, y, key):
    threat = l1(1.0)
    new = apgd(_mlp_l1, x, y, key, threat=threat, steps=20)
    plain = optimize(
        classifier_objective(_mlp_l1, y),
        x,
        key,
        threat=threat,
        steps=20,
        rule=apgd_rule(threat, 20),
        has_aux=True,
    )
    return new, plain


def test_l1_apgd_is_at_least_as_strong_as_plain_l1_apgd_and_sparse():
    # Labels are the clean predictions, so every example starts correctly classified.
    y = jnp.argmax(_mlp_l1(X_L1), axis=1)
    new, plain = _l1_mlp_attacks(X_L1, y, KEY)
    # Sparsity: ‖δ‖₀, the number of coordinates with δ_i != 0 (the exact projection onto
    # ball ∩ box sets the others to exactly 0), per example, out of d = 400.
    l0 = {n: np.asarray(r.delta != 0).sum(axis=1) for n, r in (("new", new), ("plain", plain))}
    rate = {n: float(np.mean(np.asarray(r.success))) for n, r in (("new", new), ("plain", plain))}
    loss = {n: float(np.mean(np.asarray(r.value))) for n, r in (("new", new), ("plain", plain))}
    print(f"success {rate}, mean CE {loss}, mean L0 { ({n: v.mean() for n, v in l0.items()}) }")
    # Measured: success 0.42 vs 0.42, mean CE 1.586 vs 1.581, mean L0 3.4 vs 5.1 (the
    # plain ascent moves round(1% · 400) = 4 coordinates per step).
    assert rate["new"] >= rate["plain"] - 0.02
    assert loss["new"] >= loss["plain"] - 0.005
    assert np.mean(l0["new"]) <= 0.05 * D_MLP and np.max(l0["new"]) <= 0.25 * D_MLP
    assert_in_ball_and_box("l1", new, X_L1, 1.0)
    logits = _mlp_l1(new.x_adv)
    np.testing.assert_array_equal(np.asarray(new.success), np.asarray(logits.argmax(1) != y))
    np.testing.assert_allclose(
        np.asarray(new.value), np.asarray(cross_entropy(logits, y)), rtol=1e-5, atol=1e-5
    )


@jax.jit
def _apgd_l1_small(x, y, key, eps):
    return apgd(mlp, x, y, key, threat=l1(eps), steps=10, loss="dlr")


def test_l1_apgd_jit_equals_eager_and_same_key_is_identical():
    eps = 3.0 * EPS6
    eager = apgd(mlp, X6, Y6, KEY, threat=l1(eps), steps=10, loss="dlr")
    jitted = _apgd_l1_small(X6, Y6, KEY, eps)
    again = _apgd_l1_small(X6, Y6, KEY, eps)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    for a, b in zip(jitted, again, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert_in_ball_and_box("l1", jitted, X6, eps)


def test_l1_apgd_bad_input_raises_clear_errors():
    x, y = X6[:4], Y6[:4]
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(InputError, match="topk_fraction"):
            apgd(mlp, x, y, KEY, threat=l1(0.5), steps=2, topk_fraction=bad)
    with pytest.raises(InputError, match="topk_fraction"):
        apgd_targeted(mlp, x, y, KEY, threat=l1(0.5), steps=2, topk_fraction=0.0)
    with pytest.raises(InputError, match="topk_fraction"):
        apgd_l1_rule(l1(0.5), 10, topk_fraction=2.0)
    with pytest.raises(InputError, match="use_largereps applies to the l1 threat model only"):
        apgd(mlp, x, y, KEY, threat=linf(0.1), steps=2, use_largereps=True)
    with pytest.raises(InputError, match="use_largereps applies to the l1 threat model only"):
        apgd_targeted(mlp, x, y, KEY, threat=l2(0.1), steps=2, use_largereps=True)
    with pytest.raises(InputError, match="needs an l1 threat model"):
        apgd_l1_rule(linf(0.1), 10)
    with pytest.raises(InputError, match="restarts"):
        apgd(mlp, x, y, KEY, threat=l1(0.5), steps=2, restarts=0)
