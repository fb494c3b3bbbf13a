"""Tests for the engine (jaxrobust.optimize) and the attacks built on it (pgd, fgsm, spatial).

Known answers come from linear models, where the worst case in a norm ball has a closed
form. Every jitted attack is defined once at module level with fixed shapes, so hypothesis
examples reuse one compilation.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from linear_problems import (
    NORMS,
    B,
    D,
    assert_in_ball_and_box,
    binary_expected,
    binary_logits,
    binary_problem,
    f32,
)

from jaxrobust.attacks.pgd import fgsm, pgd
from jaxrobust.attacks.spatial import grid, transform_grid, worst_of_k
from jaxrobust.errors import InputError
from jaxrobust.losses import cross_entropy, margin
from jaxrobust.optimize import best_of, optimize
from jaxrobust.threat import example_keys, l1, l2, linf, rotate_translate, spatial, unconstrained

FAST = settings(max_examples=25, deadline=None)


@partial(jax.jit, static_argnames=("norm", "random_start", "steps", "step_is_eps"))
def _pgd_binary(w, b, x, y, key, eps, *, norm, random_start, steps, step_is_eps):
    """PGD's default result (keep-best) and its last iterate, from the same start."""
    attack = partial(
        pgd,
        binary_logits(w, b),
        x,
        y,
        key,
        threat=NORMS[norm](eps),
        steps=steps,
        step_size=eps if step_is_eps else None,
        loss=margin,
        random_start=random_start,
    )
    return attack(), attack(keep_best=False)


@pytest.mark.parametrize(
    "norm,random_start,steps,step_is_eps",
    [("linf", True, 10, False), ("l2", False, 50, True), ("l2", True, 50, True)],
)
@FAST
@given(problem=binary_problem())
def test_pgd_finds_closed_form_worst_case_of_linear_model(
    norm, random_start, steps, step_is_eps, problem
):
    w, b, x, y, eps, key = problem
    res, last = _pgd_binary(
        w, b, x, y, key, eps,
        norm=norm, random_start=random_start, steps=steps, step_is_eps=step_is_eps,
    )  # fmt: skip
    delta, value = binary_expected(w, b, x, y, eps, norm)
    # The iteration converges to the unique maximiser (geometrically in ℓ2).
    np.testing.assert_allclose(np.asarray(last.delta), delta, atol=1e-5)
    np.testing.assert_allclose(np.asarray(res.value), value, atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(res.success), value > 0)
    # Keep-best picks the iterate of highest float32 loss. On the ℓ2 sphere the objective is
    # flat to second order at the maximiser: an iterate a distance r away loses only
    # ‖w‖r²/(2ε), below the loss's float32 resolution (~1e-5 here) for r up to
    # sqrt(2ε·1e-5/‖w‖), so such an iterate may tie with the limit and be kept.
    flat = 0.0 if norm == "linf" else math.sqrt(2 * float(eps) * 1e-5 / np.linalg.norm(w))
    np.testing.assert_allclose(np.asarray(res.delta), delta, atol=1e-5 + flat)
    assert_in_ball_and_box(norm, res, x, eps)
    assert_in_ball_and_box(norm, last, x, eps)


@jax.jit
def _pgd_targeted3(W, c, x, y, t, key, eps):
    return pgd(lambda z: z @ W + c, x, y, key, threat=linf(eps), steps=10, loss=margin, target=t)


@FAST
@given(
    W0=hnp.arrays(np.float32, (D,), elements=f32(-2.0, 2.0)),
    W1=hnp.arrays(np.float32, (D,), elements=f32(-2.0, 2.0)),
    mags=hnp.arrays(np.float32, (D,), elements=f32(0.2, 2.0)),
    signs=hnp.arrays(np.float32, (D,), elements=st.sampled_from([-1.0, 1.0])),
    c2=f32(-1.0, 1.0),
    x=hnp.arrays(np.float32, (B, D), elements=f32(0.3, 0.7)),
    eps=f32(0.01, 0.25),
    seed=st.integers(0, 2**31 - 1),
)
def test_targeted_pgd_on_three_class_linear_model(W0, W1, mags, signs, c2, x, eps, seed):
    # Class 1 sits 50 logits below: the targeted margin z_2 − max(z_0, z_1) is z_2 − z_0, a
    # linear function of x whose maximiser over the ℓ∞ ball is ε·sign(w_2 − w_0).
    diff = mags * signs
    W = np.stack([W0, W1, W0 + diff], axis=1)
    c = np.array([0.0, -50.0, c2], np.float32)
    y = np.zeros(B, np.int32)
    t = np.full(B, 2, np.int32)
    res = _pgd_targeted3(W, c, x, y, t, jax.random.key(seed), eps)
    d_true = (W[:, 2] - W[:, 0]).astype(np.float64)  # float32 rounding of W0 + diff
    want = float(eps) * np.sign(d_true)
    np.testing.assert_allclose(np.asarray(res.delta), np.broadcast_to(want, (B, D)), atol=1e-4)
    value = x.astype(np.float64) @ d_true + float(c2) + float(eps) * np.abs(d_true).sum()
    np.testing.assert_allclose(np.asarray(res.value), value, atol=1e-4, rtol=1e-4)
    logits = np.asarray(res.x_adv) @ W + c
    np.testing.assert_array_equal(np.asarray(res.success), logits.argmax(axis=1) == 2)


# ----------------------------------------------------------------------------- a small MLP

_rng = np.random.default_rng(0)
W1 = jnp.asarray(_rng.normal(size=(D, 8)) * 2, jnp.float32)
B1 = jnp.asarray(_rng.normal(size=8), jnp.float32)
W2 = jnp.asarray(_rng.normal(size=(8, 3)), jnp.float32)


def mlp(x):
    return jnp.tanh(x @ W1 + B1) @ W2


@partial(jax.jit, static_argnames=("norm", "restarts", "keep_best", "steps"))
def _pgd_mlp(x, y, key, eps, *, norm="linf", restarts=1, keep_best=True, steps=5):
    return pgd(
        mlp, x, y, key, threat=NORMS[norm](eps), steps=steps, loss=margin,
        restarts=restarts, keep_best=keep_best,
    )  # fmt: skip


_mlp_logits = jax.jit(mlp)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@FAST
@given(
    x=hnp.arrays(np.float32, (B, D), elements=st.floats(0.0, 1.0, width=32)),
    y=hnp.arrays(np.int32, (B,), elements=st.integers(0, 2)),
    eps=f32(0.01, 0.5),
    seed=st.integers(0, 2**31 - 1),
)
def test_restarts_and_keep_best_never_hurt(norm, x, y, eps, seed):
    key = jax.random.key(seed)
    one = _pgd_mlp(x, y, key, eps, norm=norm)
    three = _pgd_mlp(x, y, key, eps, norm=norm, restarts=3)
    last = _pgd_mlp(x, y, key, eps, norm=norm, keep_best=False)
    # With the margin loss, success (margin > 0) is monotone in the value, so the value
    # order is the engine's order: more restarts and the best iterate can only raise it.
    assert np.all(np.asarray(three.value) >= np.asarray(one.value) - 1e-6)
    assert np.all(np.asarray(one.value) >= np.asarray(last.value) - 1e-6)
    for res in (one, three, last):
        assert_in_ball_and_box(norm, res, x, eps)
        logits = np.asarray(_mlp_logits(res.x_adv))
        np.testing.assert_array_equal(np.asarray(res.success), logits.argmax(axis=1) != y)
        np.testing.assert_allclose(
            np.asarray(res.value), np.asarray(margin(logits, y)), rtol=1e-5, atol=1e-5
        )


@jax.jit
def _pgd_mlp_from_clean(x, y, key, eps):
    return pgd(mlp, x, y, key, threat=l1(eps), steps=5, loss=margin, random_start=False)


@FAST
@given(
    x=hnp.arrays(np.float32, (B, D), elements=st.floats(0.0, 1.0, width=32)),
    y=hnp.arrays(np.int32, (B,), elements=st.integers(0, 2)),
    eps=f32(0.0, 2.0),
)
def test_pgd_from_clean_start_never_worse_than_clean(x, y, eps):
    res = _pgd_mlp_from_clean(x, y, jax.random.key(0), eps)
    clean = np.asarray(margin(_mlp_logits(x), y))
    assert np.all(np.asarray(res.value) >= clean - 1e-6)
    assert_in_ball_and_box("l1", res, x, eps)


# ----------------------------------------------------------------------------- engine

X6 = jnp.asarray(np.random.default_rng(1).uniform(size=(6, D)), jnp.float32)
Y6 = jnp.asarray([0, 1, 2, 0, 1, 2], jnp.int32)
KEY = jax.random.key(7)


def test_jit_equals_eager_and_same_key_is_identical():
    eager = pgd(mlp, X6, Y6, KEY, threat=linf(0.1), steps=5, loss=margin)
    jitted = _pgd_mlp(X6, Y6, KEY, 0.1)
    again = _pgd_mlp(X6, Y6, KEY, 0.1)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    for a, b in zip(jitted, again, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = _pgd_mlp(X6, Y6, jax.random.key(8), 0.1)
    assert not np.allclose(np.asarray(other.delta), np.asarray(jitted.delta))


def test_vmap_over_batches_and_per_example_independence():
    xs, ys = X6.reshape(2, 3, D), Y6.reshape(2, 3)
    keys = jax.random.split(KEY, 2)
    batched = jax.vmap(lambda x, y, k: _pgd_mlp(x, y, k, 0.1))(xs, ys, keys)
    for i in range(2):
        single = _pgd_mlp(xs[i], ys[i], keys[i], 0.1)
        for a, b in zip(batched, single, strict=True):
            np.testing.assert_allclose(np.asarray(a)[i], np.asarray(b), atol=1e-6)
    # Example i's result does not depend on the rest of the batch (keys fold in the index).
    full = _pgd_mlp(X6, Y6, KEY, 0.1)
    head = _pgd_mlp(X6[:3], Y6[:3], KEY, 0.1)
    for a, b in zip(full, head, strict=True):
        np.testing.assert_allclose(np.asarray(a)[:3], np.asarray(b), atol=1e-6)


@jax.jit
def _pgd_sgd(w, b, x, y, key, eps):
    return pgd(
        binary_logits(w, b), x, y, key, threat=linf(eps), steps=10,
        optimizer=optax.sgd(eps / 4, momentum=0.5), loss=margin,
    )  # fmt: skip


def test_optax_optimizer_reaches_the_worst_case_and_stays_in_ball():
    rng = np.random.default_rng(2)
    w = (rng.uniform(0.2, 2.0, D) * rng.choice([-1, 1], D)).astype(np.float32)
    x = rng.uniform(0.3, 0.7, (B, D)).astype(np.float32)
    b = np.float32(-(x @ w).mean())
    y = (x @ w + b > 0).astype(np.int32)
    eps = np.float32(0.1)
    res = _pgd_sgd(w, b, x, y, KEY, eps)
    assert_in_ball_and_box("linf", res, x, eps)
    delta, value = binary_expected(w, b, x, y, eps, "linf")
    np.testing.assert_allclose(np.asarray(res.delta), delta, atol=1e-4)
    np.testing.assert_allclose(np.asarray(res.value), value, atol=1e-4)


def test_minimize_quadratic_moves_to_target():
    x = jnp.asarray(np.random.default_rng(3).uniform(size=(3, 4)), jnp.float32)
    t = jnp.asarray([[0.2, 0.4, 0.6, 0.8], [0.9, 0.1, 0.5, 0.5], [1.5, -0.5, 0.3, 0.7]])

    def objective(x_adv):
        return jnp.sum((x_adv - t) ** 2, axis=1)

    res = optimize(
        objective, x, KEY, threat=unconstrained(step_norm="l2"), steps=60,
        step_size=lambda i: 0.5 * 0.9**i, random_start=False, maximize=False,
    )  # fmt: skip
    start = np.asarray(objective(x))
    assert np.all(np.asarray(res.value) < start)
    # The minimiser over the box [0, 1] is the clipped target.
    np.testing.assert_allclose(np.asarray(res.x_adv), np.clip(np.asarray(t), 0, 1), atol=2e-2)
    np.testing.assert_allclose(np.asarray(res.value), np.asarray(objective(res.x_adv)), atol=1e-6)


def test_steps_zero_returns_the_start():
    threat = l2(0.3)

    def objective(x_adv):
        return jnp.sum(x_adv, axis=1)

    res = optimize(objective, X6, KEY, threat=threat, steps=0, step_size=0.1)
    start = threat.init(jax.random.fold_in(KEY, 0), X6)
    np.testing.assert_array_equal(np.asarray(res.delta), np.asarray(start))
    np.testing.assert_allclose(np.asarray(res.value), np.asarray(objective(X6 + start)), atol=1e-6)
    res = optimize(objective, X6, KEY, threat=threat, steps=0, step_size=0.1, random_start=False)
    np.testing.assert_array_equal(np.asarray(res.delta), 0.0)
    np.testing.assert_array_equal(np.asarray(res.x_adv), np.asarray(X6))


def test_keep_best_returns_the_best_iterate_and_success_dominates():
    # Steps of 0.1 from 0.5 towards 0.53 overshoot: the iterates alternate 0.5, 0.6, 0.5, 0.6.
    x = jnp.full((1, 1), 0.5)

    def objective(z):
        return -((z[:, 0] - 0.53) ** 2)

    kw = dict(threat=linf(0.2), steps=3, step_size=0.1, random_start=False)
    best = optimize(objective, x, KEY, **kw)
    last = optimize(objective, x, KEY, keep_best=False, **kw)
    np.testing.assert_allclose(np.asarray(best.delta), [[0.0]], atol=1e-6)
    np.testing.assert_allclose(np.asarray(best.value), [-(0.03**2)], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(last.delta), [[0.1]], atol=1e-6)
    np.testing.assert_allclose(np.asarray(last.value), [-(0.07**2)], rtol=1e-4)

    # A successful iterate beats a higher-valued unsuccessful one.
    res = optimize(lambda z: (objective(z), z[:, 0] > 0.55), x, KEY, has_aux=True, **kw)
    np.testing.assert_allclose(np.asarray(res.delta), [[0.1]], atol=1e-6)
    assert bool(res.success[0])
    # Minimising descends away from 0.53 to the edge of the ball and keeps the lowest value.
    res = optimize(objective, x, KEY, maximize=False, **kw)
    np.testing.assert_allclose(np.asarray(res.delta), [[-0.2]], atol=1e-6)
    np.testing.assert_allclose(np.asarray(res.value), [-(0.23**2)], rtol=1e-4)


def test_per_example_step_size():
    # Step sizes of shape (B,) apply per example: a zero step leaves its example unmoved.
    res = optimize(
        lambda z: jnp.sum(z, axis=1), X6[:2], KEY, threat=linf(0.5), steps=1,
        step_size=jnp.array([0.0, 0.1]), random_start=False, keep_best=False,
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(res.delta[0]), 0.0)
    np.testing.assert_allclose(
        np.asarray(res.x_adv[1]), np.minimum(np.asarray(X6[1]) + 0.1, 1.0), atol=1e-6
    )


# ----------------------------------------------------------------------------- FGSM


def test_fgsm_known_answer_and_random_start():
    rng = np.random.default_rng(4)
    w = (rng.uniform(0.2, 2.0, D) * rng.choice([-1, 1], D)).astype(np.float32)
    x = rng.uniform(0.3, 0.7, (B, D)).astype(np.float32)
    b = np.float32(-(x @ w).mean())
    y = (x @ w + b > 0).astype(np.int32)
    ysgn = 2.0 * y - 1.0
    eps = 0.1
    threat = linf(eps)
    model = binary_logits(w, b)

    res = fgsm(model, x, y, threat=threat)
    want = -eps * ysgn[:, None] * np.sign(w)[None]
    np.testing.assert_allclose(np.asarray(res.delta), want, atol=1e-6)
    logits = np.asarray(model(res.x_adv))
    np.testing.assert_array_equal(np.asarray(res.success), logits.argmax(axis=1) != y)
    np.testing.assert_allclose(
        np.asarray(res.value), np.asarray(cross_entropy(logits, y)), rtol=1e-5
    )

    # With a key: uniform start, one step of 1.25·ε, then projection onto the ball.
    key = jax.random.key(5)
    res = fgsm(model, x, y, key, threat=threat)
    start = np.asarray(threat.init(jax.random.fold_in(key, 0), jnp.asarray(x)))
    want = np.clip(start - 1.25 * eps * ysgn[:, None] * np.sign(w)[None], -eps, eps)
    np.testing.assert_allclose(np.asarray(res.delta), want, atol=1e-6)
    # Some coordinates started far enough back that 1.25·ε does not reach the corner.
    assert np.any(np.abs(np.asarray(res.delta)) < eps - 1e-3)


# ----------------------------------------------------------------------------- spatial

IMG = 7


def _dot_image(batch):
    x = np.zeros((batch, IMG, IMG, 1), np.float32)
    x[:, 3, 3, 0] = 1.0  # a single bright pixel at the rotation centre
    return x


def pixel_model(x):
    # Class 1 wins exactly when the bright pixel lands on (3, 5): logits (0, 10·x[3,5] − 5).
    z1 = 10.0 * x[:, 3, 5, 0] - 5.0
    return jnp.stack([jnp.zeros_like(z1), z1], axis=-1)


def test_transform_grid_default_size_and_range():
    g = np.asarray(transform_grid(spatial()))
    assert g.shape == (775, 3)
    np.testing.assert_allclose(g.min(axis=0), [-30, -3, -3])
    np.testing.assert_allclose(g.max(axis=0), [30, 3, 3])
    assert len(np.unique(g[:, 0])) == 31 and len(np.unique(g[:, 1])) == 5
    assert any(np.all(row == 0) for row in g)
    assert len({tuple(r) for r in g.tolist()}) == 775


def test_grid_finds_the_worst_transform():
    x = _dot_image(2)
    y = np.zeros(2, np.int32)
    res = grid(pixel_model, x, y, angles=3, translations=7, loss=margin)
    np.testing.assert_allclose(np.asarray(res.value), 5.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(res.delta)[:, 1:], [[2.0, 0.0]] * 2, atol=1e-6)
    assert np.all(np.asarray(res.success))
    np.testing.assert_allclose(
        np.asarray(res.x_adv), np.asarray(rotate_translate(x, res.delta)), atol=1e-6
    )


_spatial_rng = np.random.default_rng(6)
SX = jnp.asarray(_spatial_rng.uniform(size=(3, IMG, IMG, 1)), jnp.float32)
SY = jnp.asarray([0, 1, 2], jnp.int32)
SW = jnp.asarray(_spatial_rng.normal(size=(IMG * IMG, 3)), jnp.float32)


def spatial_model(x):
    return x.reshape(x.shape[0], -1) @ SW


@jax.jit
def _margins_at_all(params):
    """Margins of the batch under T sets of per-example transforms: (T, B, 3) -> (T, B)."""

    def one(p):
        return margin(spatial_model(rotate_translate(SX, p)), SY)

    return jax.vmap(one)(params)


def _margins_at(params):
    """Margins at per-example transforms (B, 3)."""
    return np.asarray(_margins_at_all(jnp.asarray(params)[None]))[0]


def test_grid_and_worst_of_k_dominate_their_candidates():
    fine = grid(spatial_model, SX, SY, angles=7, translations=7, loss=margin)
    coarse = grid(spatial_model, SX, SY, angles=3, translations=3, loss=margin)
    # Brute force over the same candidates: with the margin loss the engine keeps the max.
    cands = np.asarray(transform_grid(spatial(), 7, 7))
    values = np.asarray(_margins_at_all(np.repeat(cands[:, None], 3, axis=1)))
    np.testing.assert_allclose(np.asarray(fine.value), values.max(axis=0), atol=1e-5)
    # The 3×3 grid is a subset of the 7×7 grid, and both contain the identity.
    assert np.all(np.asarray(fine.value) >= np.asarray(coarse.value) - 1e-6)
    identity = _margins_at(np.zeros((3, 3), np.float32))
    assert np.all(np.asarray(coarse.value) >= identity - 1e-6)

    k = 8
    key = jax.random.key(9)
    wok = worst_of_k(spatial_model, SX, SY, key, k=k, loss=margin)
    keys = example_keys(key, k)
    samples = np.stack([np.asarray(spatial().init(keys[i], SX)) for i in range(k)])
    sampled = np.asarray(_margins_at_all(samples))
    np.testing.assert_allclose(np.asarray(wok.value), sampled.max(axis=0), atol=1e-5)
    for i in range(3):
        assert any(np.allclose(np.asarray(wok.delta[i]), s[i], atol=1e-6) for s in samples)
    assert np.all(np.abs(np.asarray(wok.delta)) <= np.array([30, 3, 3]) + 1e-6)


def test_first_order_spatial_attack_stays_in_range():
    res = pgd(
        spatial_model, SX, SY, KEY, threat=spatial(), steps=3, loss=margin, random_start=False
    )
    assert res.delta.shape == (3, 3)
    assert np.all(np.abs(np.asarray(res.delta)) <= np.array([30, 3, 3]) + 1e-5)
    identity = _margins_at(np.zeros((3, 3), np.float32))
    assert np.all(np.asarray(res.value) >= identity - 1e-5)
    np.testing.assert_allclose(
        np.asarray(res.x_adv), np.asarray(rotate_translate(SX, res.delta)), atol=1e-6
    )


def test_best_of_keeps_the_best_candidate():
    cands = jnp.asarray([[0.0], [0.3], [-0.2]])
    res = best_of(
        lambda z: -jnp.abs(z[:, 0] - 0.25), jnp.zeros((2, 1)) + 0.5,
        lambda i: jnp.broadcast_to(cands[i], (2, 1)), 3, threat=linf(1.0),
    )  # fmt: skip
    # values at 0.5 + delta: -0.25, -0.55, -0.05
    np.testing.assert_allclose(np.asarray(res.delta), [[-0.2], [-0.2]])
    np.testing.assert_allclose(np.asarray(res.value), [-0.05, -0.05], atol=1e-6)
    res = best_of(
        lambda z: -jnp.abs(z[:, 0] - 0.25), jnp.zeros((2, 1)) + 0.5,
        lambda i: jnp.broadcast_to(cands[i], (2, 1)), 3, threat=linf(1.0), maximize=False,
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(res.delta), [[0.3], [0.3]])


# ----------------------------------------------------------------------------- bad input

XB = np.full((2, D), 0.5, np.float32)
YB = np.array([0, 1], np.int32)


def _lin3(x):
    return x @ jnp.ones((D, 3))


@FAST
@given(
    bad=st.one_of(
        st.floats(1.0, 1e6, exclude_min=True).filter(lambda v: v > 1 + 1e-5),
        st.floats(-1e6, 0.0, exclude_max=True).filter(lambda v: v < -1e-5),
        st.just(math.nan),
    ),
    pos=st.tuples(st.integers(0, 1), st.integers(0, D - 1)),
)
def test_pgd_rejects_inputs_outside_the_box(bad, pos):
    x = XB.copy()
    x[pos] = bad
    pattern = "NaN" if math.isnan(bad) else r"declared input range \[0.0, 1.0\]"
    with pytest.raises(InputError, match=pattern):
        pgd(_lin3, x, YB, KEY, threat=linf(0.1), steps=1)


@pytest.mark.parametrize("bad", [1.5, -0.2])
def test_pgd_rejects_known_out_of_range_values(bad):
    x = XB.copy()
    x[0, 0] = bad
    with pytest.raises(InputError, match="declared input range"):
        pgd(_lin3, x, YB, KEY, threat=l2(0.5), steps=1)
    with pytest.raises(InputError, match="declared input range"):
        fgsm(_lin3, x, YB, threat=linf(0.1))


def test_attack_input_errors():
    with pytest.raises(InputError, match="do not match"):
        pgd(_lin3, XB, np.array([0, 1, 2], np.int32), KEY, threat=linf(0.1), steps=1)
    with pytest.raises(InputError, match="integer class labels"):
        pgd(_lin3, XB, np.array([0.0, 1.0], np.float32), KEY, threat=linf(0.1), steps=1)
    with pytest.raises(InputError, match="target"):
        pgd(_lin3, XB, YB, KEY, threat=linf(0.1), steps=1, target=np.array([1], np.int32))
    with pytest.raises(InputError, match="non-finite logits"):
        pgd(lambda x: jnp.nan * _lin3(x), XB, YB, KEY, threat=linf(0.1), steps=1)
    with pytest.raises(InputError, match=r"logits of shape \(2, num_classes\)"):
        pgd(lambda x: x.sum(axis=1), XB, YB, KEY, threat=linf(0.1), steps=1)
    with pytest.raises(InputError, match=r"logits of shape \(2, num_classes\)"):
        pgd(lambda x: _lin3(x)[:1], XB, YB, KEY, threat=linf(0.1), steps=1)
    with pytest.raises(InputError, match="spatial threat model"):
        grid(_lin3, np.zeros((2, 5, 5, 1), np.float32), YB, threat=linf(0.1))
    with pytest.raises(InputError, match="spatial threat model"):
        worst_of_k(_lin3, np.zeros((2, 5, 5, 1), np.float32), YB, KEY, threat=linf(0.1))
    with pytest.raises(InputError, match="grid sizes"):
        transform_grid(spatial(), angles=0)


def test_optimize_input_errors():
    def objective(z):
        return jnp.sum(z, axis=1)

    with pytest.raises(InputError, match=r"shape \(6,\), got \(6, 6\)"):
        optimize(lambda z: z, X6, KEY, threat=linf(0.1), steps=1, step_size=0.1)
    with pytest.raises(InputError, match=r"shape \(6,\), got \(\)"):
        optimize(jnp.sum, X6, KEY, threat=linf(0.1), steps=1, step_size=0.1)
    with pytest.raises(InputError, match="exactly one of step_size, optimizer or rule"):
        optimize(
            objective, X6, KEY, threat=linf(0.1), steps=1, step_size=0.1, optimizer=optax.sgd(0.1)
        )
    with pytest.raises(InputError, match="exactly one of step_size, optimizer or rule"):
        optimize(objective, X6, KEY, threat=linf(0.1), steps=1)
    with pytest.raises(InputError, match="steps >= 0 and restarts >= 1"):
        optimize(objective, X6, KEY, threat=linf(0.1), steps=-1, step_size=0.1)
    with pytest.raises(InputError, match="steps >= 0 and restarts >= 1"):
        optimize(objective, X6, KEY, threat=linf(0.1), steps=1, step_size=0.1, restarts=0)
    with pytest.raises(InputError, match="at least one candidate"):
        best_of(objective, X6, lambda i: jnp.zeros_like(X6), 0, threat=linf(0.1))


def test_l1_pgd_moves_free_pixels_when_the_steepest_one_is_saturated():
    """Sparse ℓ1 ascent must not stall on a coordinate the box blocks: with the largest
    weight on a pixel already at 1, PGD spends the budget on the others."""
    w = jnp.array([10.0, 1.0, 1.0, 1.0])

    def f(x):
        s = x @ w
        return jnp.stack([jnp.zeros_like(s), s], -1)  # class 1 score grows with w·x

    x = jnp.array([[1.0, 0.2, 0.2, 0.2]])
    y = jnp.array([0])  # maximise the class-1 margin: push along +w
    result = pgd(
        f,
        x,
        y,
        jax.random.key(0),
        threat=l1(0.6, sparsity=0.7),
        steps=30,
        step_size=0.1,
        loss=margin,
        random_start=False,
    )
    np.testing.assert_allclose(float(jnp.abs(result.delta).sum()), 0.6, atol=1e-4)
    assert float(result.delta[0, 0]) == 0.0


@pytest.mark.slow  # compile-heavy: runs with the slow tests, keeping the default suite < 15 min
def test_vote_is_the_majority_over_random_transforms():
    from jaxrobust.attacks.spatial import vote

    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 1))

    def f(z):  # class 0 when the image's top half is brighter, else class 1
        top, bottom = z[:, :4].sum((1, 2, 3)), z[:, 4:].sum((1, 2, 3))
        return jnp.stack([top - bottom, bottom - top, jnp.zeros_like(top)], -1)

    threat = spatial(30.0, 1.0)
    voted = vote(f, threat, samples=7)(x, jax.random.key(1))
    keys = jax.random.split(jax.random.key(1), 7)
    preds = np.stack(
        [np.asarray(jnp.argmax(f(threat.apply(x, threat.init(k, x))), -1)) for k in keys]
    )
    counts = np.stack([np.bincount(p, minlength=3) for p in preds.T])
    np.testing.assert_array_equal(np.asarray(jnp.argmax(voted, -1)), counts.argmax(1))
    np.testing.assert_allclose(np.exp(np.asarray(voted)).sum(1), 1.0, rtol=1e-6)
    # The soft vote is differentiable (for EOT attacks); the hard one is piecewise constant.
    soft = jax.grad(lambda z: vote(f, threat, samples=7, soft=True)(z, jax.random.key(1)).sum())
    assert np.abs(np.asarray(soft(x))).sum() > 0
    with pytest.raises(InputError, match="spatial threat"):
        vote(f, linf(0.1))
