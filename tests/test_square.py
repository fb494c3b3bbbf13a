"""Tests for the Square attack (jaxrobust.attacks.square).

The attacked model is a linear softmax classifier trained for 300 Adam steps on the digits
(8×8×1), where the ℓ∞ worst case is known in closed form. One jitted attack per norm
serves most tests: the weights, ε (per example), the key and the query budget are traced
arguments (the p schedule is pinned to 2000 queries), so budget sweeps and batch edits
reuse one compilation.
"""

from __future__ import annotations

import itertools
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrobust.attacks.pgd import pgd
from jaxrobust.attacks.square import (
    P_SCHEDULE,
    SquareResult,
    _bump,
    halving_starts,
    square,
    square_sides,
)
from jaxrobust.errors import InputError
from jaxrobust.losses import margin
from jaxrobust.optimize import Result
from jaxrobust.threat import l1, l2, linf

NORMS = {"linf": linf, "l2": l2}
BATCH = 64
BUDGET = 2000  # queries; also the budget the p schedule is rescaled to in `_attack`
# Radii at which the model (62/64 clean) is easy (the acceptance bar) and hard (long
# trajectories, for the invariants). Robust points out of 64, measured as exact worst case
# (linf only) / 100-step PGD (margin loss, 3 restarts) / Square (2000 queries, seed 0) /
# Square's random start alone: linf 0.3: 0 / 0 / 0 / 49; l2 3.0: - / 0 / 0 / 37;
# linf 0.1: 13 / 15 / 15 / 61; l2 1.0: - / 0 / 1 / 59.
EASY = {"linf": 0.3, "l2": 3.0}
HARD = {"linf": 0.1, "l2": 1.0}


def linear(params, x):
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"]


@jax.jit
def _train(x, y):
    params = {"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)}
    opt = optax.adam(3e-2)

    def step(carry, _):
        params, state = carry
        grads = jax.grad(
            lambda p: optax.softmax_cross_entropy_with_integer_labels(linear(p, x), y).mean()
        )(params)
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=300)
    return params


@pytest.fixture(scope="module")
def model(digits_test):
    from jaxrobust.data import load_split

    x_train, y_train = load_split("digits", "train")
    params = _train(jnp.asarray(x_train), jnp.asarray(y_train))
    x, y = jnp.asarray(digits_test[0][:BATCH]), jnp.asarray(digits_test[1][:BATCH])
    assert float(jnp.mean(jnp.argmax(linear(params, x), -1) == y)) >= 0.9
    return params, x, y


def gradient_free(fn):
    """The model with a backward pass that raises: any gradient-based attack fails."""

    @jax.custom_vjp
    def wrapped(x):
        return fn(x)

    def fwd(x):
        return fn(x), None

    def bwd(res, g):
        raise RuntimeError("a gradient was requested from a black-box model")

    wrapped.defvjp(fwd, bwd)
    return wrapped


@partial(jax.jit, static_argnames="norm")
def _attack(params, x, y, key, eps, queries, *, norm):
    # Every test attacks the model through a backward pass that raises: Square never
    # differentiates it.
    return square(
        gradient_free(partial(linear, params)),
        x,
        y,
        key,
        threat=NORMS[norm](eps),
        queries=queries,
        schedule_queries=BUDGET,
    )


def run(model, norm, eps, queries, seed=0, x=None):
    params, x0, y = model
    x = x0 if x is None else x
    eps = jnp.broadcast_to(jnp.asarray(eps, jnp.float32), (BATCH,))
    return _attack(params, x, y, jax.random.key(seed), eps, jnp.int32(queries), norm=norm)


def robust_accuracy(model, res):
    params, x, y = model
    clean = np.asarray(jnp.argmax(linear(params, x), -1) == y)
    return float(np.mean(clean & ~np.asarray(res.success)))


def norms(norm, delta):
    flat = np.asarray(delta, np.float64).reshape(delta.shape[0], -1)
    return np.abs(flat).max(1) if norm == "linf" else np.sqrt((flat**2).sum(1))


# ----------------------------------------------------------------------------- strength


def exact_linf_robust(model, eps):
    """Per example: correctly classified at every point of the ℓ∞ ball ∩ [0, 1] box.

    For a linear model each margin z_j − z_y is linear in x, maximised coordinate-wise at
    the ball's face the weight difference points to, clipped to the box.
    """
    params, x, y = model
    w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)
    flat, y = np.asarray(x, np.float64).reshape(x.shape[0], -1), np.asarray(y)
    d = w[None, :, :] - w[:, y].T[:, :, None]  # (B, D, K): w_j − w_y
    x_worst = np.clip(flat[:, :, None] + eps * np.sign(d), 0.0, 1.0)
    margins = np.einsum("bdk,bdk->bk", x_worst, d) + (b[None, :] - b[y][:, None])
    margins[np.arange(len(y)), y] = -np.inf
    return margins.max(axis=1) < 0


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_breaks_undefended_linear(model, norm):
    res = run(model, norm, EASY[norm], BUDGET)
    start = run(model, norm, EASY[norm], 1)
    # Measured: 0/64 robust for both norms within 2000 queries (mean 7.9 queries per point
    # for linf, 2.5 for l2), while the random start alone leaves 49/64 (linf), 37/64 (l2).
    assert robust_accuracy(model, res) <= 0.05
    assert robust_accuracy(model, start) >= 0.3  # the search, not the start, does it


def test_square_nearly_reaches_the_exact_linf_worst_case(model):
    # Measured at linf eps=0.1: exact 13/64 robust, Square 15/64 after 2000 queries (as
    # 100-step PGD with the margin loss and 3 restarts), the random start alone 61/64.
    exact = float(np.mean(exact_linf_robust(model, HARD["linf"])))
    res = run(model, "linf", HARD["linf"], BUDGET)
    assert exact <= robust_accuracy(model, res) <= exact + 4 / BATCH


# ----------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_result_invariants_and_monotone_budget(model, norm):
    params, x, y = model
    # Per-example radii from 0 (nothing to search) to HARD, so some points never break.
    eps = np.linspace(0.0, HARD[norm], BATCH).astype(np.float32)
    budgets = [1, 10, 100, BUDGET]
    results = [run(model, norm, eps, q) for q in budgets]
    for q, res in zip(budgets, results, strict=True):
        assert isinstance(res, SquareResult) and isinstance(res.result, Result)
        d, xa = np.asarray(res.delta, np.float64), np.asarray(res.x_adv, np.float64)
        assert np.all(norms(norm, d) <= eps * (1 + 1e-5) + 1e-7)
        assert xa.min() >= -1e-6 and xa.max() <= 1 + 1e-6
        np.testing.assert_allclose(xa, np.asarray(x) + d, atol=1e-6)
        pred = np.asarray(jnp.argmax(linear(params, res.x_adv), -1))
        np.testing.assert_array_equal(np.asarray(res.success), pred != np.asarray(y))
        np.testing.assert_allclose(res.value, margin(linear(params, res.x_adv), y), atol=1e-5)
        qs = np.asarray(res.queries)
        assert qs.min() >= 1 and qs.max() <= q
        # Broken at the start: one query, and nothing else was tried.
        start = results[0]
        assert np.all(qs[np.asarray(start.success)] == 1)
        # Unbroken points used the whole budget; broken ones stopped being queried.
        assert np.all(qs[~np.asarray(res.success)] == q)
    assert np.any(np.asarray(results[-1].queries) > 100)  # the sweep is not trivial
    # Same key, same schedule: a larger budget extends the same trajectory.
    for fewer, more in itertools.pairwise(results):
        assert np.all(np.asarray(more.value) >= np.asarray(fewer.value))
        assert np.all(np.asarray(more.success) >= np.asarray(fewer.success))
        assert np.all(np.asarray(more.queries) >= np.asarray(fewer.queries))
        # Broken within the smaller budget: no longer queried, so nothing changes after.
        done = np.asarray(fewer.success)
        for u, v in zip(fewer, more, strict=True):
            np.testing.assert_array_equal(np.asarray(u)[done], np.asarray(v)[done])
    assert np.any(np.asarray(results[-1].value) > np.asarray(results[0].value))
    # eps = 0: the zero perturbation, never broken unless misclassified clean.
    assert np.all(np.asarray(results[-1].delta[0]) == 0)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_deterministic_and_independent_of_the_batch(model, norm):
    _, x, _ = model
    a = run(model, norm, HARD[norm], 300, seed=3)
    b = run(model, norm, HARD[norm], 300, seed=3)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    c = run(model, norm, HARD[norm], 300, seed=4)
    assert not np.array_equal(np.asarray(a.delta), np.asarray(c.delta))
    # Replace the second half of the batch: the first half's results do not move.
    other = jnp.concatenate([x[: BATCH // 2], jnp.flip(x[BATCH // 2 :], axis=(1, 2))])
    d = run(model, norm, HARD[norm], 300, seed=3, x=other)
    for u, v in zip(a, d, strict=True):
        np.testing.assert_array_equal(np.asarray(u)[: BATCH // 2], np.asarray(v)[: BATCH // 2])


def test_jit_matches_eager(model):
    # ℓ2, where fused and unfused float reductions could differ; the ℓ∞ path runs eagerly
    # in `test_square_needs_no_gradients`.
    params, x, y = model
    eps = jnp.full((BATCH,), HARD["l2"], jnp.float32)
    eager = square(
        partial(linear, params),
        x,
        y,
        jax.random.key(3),
        threat=l2(eps),
        queries=60,
        schedule_queries=BUDGET,
    )
    jitted = run(model, "l2", eps, 60, seed=3)
    np.testing.assert_array_equal(eager.success, jitted.success)
    np.testing.assert_array_equal(eager.queries, jitted.queries)
    np.testing.assert_allclose(eager.delta, jitted.delta, atol=1e-6)
    np.testing.assert_allclose(eager.value, jitted.value, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- black box


def test_restarts_extend_the_first_run_without_gradients(model):
    params, x, y = model
    f = gradient_free(partial(linear, params))
    with pytest.raises(RuntimeError, match="gradient was requested"):  # raised while tracing
        jax.jit(lambda x: pgd(f, x, y, jax.random.key(0), threat=linf(0.1), steps=1))(x)
    eps = jnp.full((BATCH,), HARD["linf"], jnp.float32)
    one = run(model, "linf", eps, 300)
    # Eagerly (the ℓ∞ path's eager run), with a second restart.
    two = square(
        f,
        x,
        y,
        jax.random.key(0),
        threat=linf(eps),
        queries=300,
        restarts=2,
        schedule_queries=BUDGET,
    )
    first = np.asarray(one.success)
    for u, v in zip(one, two, strict=True):  # broken by the first run: not attacked again
        np.testing.assert_array_equal(np.asarray(u)[first], np.asarray(v)[first])
    qs, broken = np.asarray(two.queries), np.asarray(two.success)
    assert np.all(qs[~first] > 300) and np.all(qs[~broken] == 600)
    assert np.all(np.asarray(two.value)[~broken] >= np.asarray(one.value)[~broken])
    # Measured: 19/64 robust after the first run, 16/64 after the restart.
    assert np.any(broken & ~first)  # the restart broke points the first run did not
    pred = np.asarray(jnp.argmax(linear(params, two.x_adv), -1))
    np.testing.assert_array_equal(broken, pred != np.asarray(y))
    assert np.all(np.abs(np.asarray(two.delta)) <= HARD["linf"] + 1e-7)


# ----------------------------------------------------------------------------- schedule


def test_p_schedule_follows_the_rescaled_reference():
    assert halving_starts(10000) == tuple(b + 1 for b in P_SCHEDULE)
    for budget in (1, 7, 100, 2000, 5000, 10000, 12345):
        starts = halving_starts(budget)
        for i in range(0, budget, max(budget // 500, 1)):
            rescaled = int(i * 10000 / budget)  # the reference's float rescaling
            assert sum(i >= s for s in starts) == sum(rescaled > b for b in P_SCHEDULE)
    assert square_sides(0.8, 8, 8, "linf") == (7, 5, 4, 3, 2, 1, 1, 1, 1, 1)
    assert square_sides(0.8, 8, 8, "l2") == (7, 5, 5, 3, 3, 3, 3, 3, 3, 3)
    assert square_sides(0.05, 32, 32, "linf")[0] == round(math.sqrt(0.05 * 1024))


_bump_jit = jax.jit(partial(_bump, height=10, width=9))  # traced side and position


@pytest.mark.parametrize("s", [1, 2, 3, 4, 5, 7])
def test_l2_bump_is_the_papers_pattern(s):
    def pyramid(rows, cols):  # nested rectangles, weight 1/(k+1)² for the k-th ring
        out = np.zeros((rows, cols))
        for k in range(max(rows // 2 + 1, cols // 2 + 1)):
            r0, c0 = rows // 2 - k, cols // 2 - k
            out[max(r0, 0) : r0 + 2 * k + 1, max(c0, 0) : c0 + 2 * k + 1] += 1 / (k + 1) ** 2
        return out / max(np.sqrt((out**2).sum()), 1e-12)

    ref = np.concatenate([pyramid(s // 2, s), -pyramid(s - s // 2, s)])
    ref /= np.sqrt((ref**2).sum())
    for transpose in (False, True):
        got = np.asarray(_bump_jit(jnp.int32(2), jnp.int32(1), jnp.int32(s), transpose))
        want = np.zeros((10, 9))
        want[2 : 2 + s, 1 : 1 + s] = ref.T if transpose else ref
        np.testing.assert_allclose(got, want, atol=1e-6)


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_raise(model):
    params, x, y = model
    f, key = partial(linear, params), jax.random.key(0)
    with pytest.raises(InputError, match="linf' and 'l2"):
        square(f, x, y, key, threat=l1(1.0))
    with pytest.raises(InputError, match="queries must be >= 1"):
        square(f, x, y, key, threat=linf(0.1), queries=0)
    with pytest.raises(InputError, match="NHWC"):
        square(f, x.reshape(BATCH, -1), y, key, threat=linf(0.1))
    with pytest.raises(InputError, match="p_init"):
        square(f, x, y, key, threat=linf(0.1), p_init=0.0)
    with pytest.raises(InputError, match="shapes of x"):
        square(f, x, y[:3], key, threat=linf(0.1))
    with pytest.raises(InputError, match="schedule_queries"):
        jax.jit(lambda q: square(f, x, y, key, threat=linf(0.1), queries=q))(jnp.int32(5))
