"""Tests for FAB (jaxrobust.attacks.fab): the hyperplane ∩ box projections, known answers
on linear models, FAB-T on a small MLP trained on digits, determinism and input errors.

Every jitted function is defined once at module level with fixed shapes, so repeated
calls (and hypothesis examples) reuse one compilation.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from linear_problems import norm_of
from scipy.optimize import linprog

from jaxrobust.attacks.fab import fab, fab_targeted, projection_l2, projection_linf
from jaxrobust.attacks.pgd import pgd
from jaxrobust.errors import InputError
from jaxrobust.losses import margin
from jaxrobust.threat import l1, l2, linf, spatial

FAST = settings(max_examples=20, deadline=None)
PROJ = {"linf": projection_linf, "l2": projection_l2}
NORMS = {"linf": linf, "l2": l2}
KEY = jax.random.key(0)


# ----------------------------------------------------------------------------- projections


@partial(jax.jit, static_argnames="norm")
def _project(z, w, b, *, norm):
    """A batch of independent problems: z, w (N, d), b (N,), box [0, 1]."""
    return jax.vmap(lambda zz, ww, bb: PROJ[norm](zz, ww, bb))(z, w, b)


def _problems(seed, n, d, *, inner):
    """Random hyperplanes; `inner` keeps z and the projection far from the box faces."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n, d)).astype(np.float32)
    w[rng.uniform(size=(n, d)) < 0.15] = 0.0  # some coordinates the hyperplane ignores
    w[:, 0] = np.where(w[:, 0] == 0, 1.0, w[:, 0])
    z = rng.uniform(0.4, 0.6, (n, d)) if inner else rng.uniform(0.0, 1.0, (n, d))
    z = z.astype(np.float32)
    scale = 0.05 if inner else 0.8
    dual = np.abs(w).sum(1)  # |w·z + b| <= scale · ‖w‖₁ keeps the ℓ∞ and ℓ2 steps <= scale
    b = (-(w * z).sum(1) + rng.uniform(-1, 1, n) * scale * dual * 0.9).astype(np.float32)
    return z, w, b


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_matches_closed_form_when_box_is_inactive(norm):
    z, w, b = _problems(1, 64, 7, inner=True)
    d = np.asarray(_project(z, w, b, norm=norm), np.float64)
    w64, c = w.astype(np.float64), (w.astype(np.float64) * z).sum(1) + b
    if norm == "l2":
        want = -(c / (w64**2).sum(1))[:, None] * w64
    else:
        want = -(c / np.abs(w64).sum(1))[:, None] * np.sign(w64)
    np.testing.assert_allclose(d, want, atol=2e-6)
    np.testing.assert_allclose(((z + d) * w64).sum(1) + b, 0.0, atol=1e-5)


@FAST
@given(seed=st.integers(0, 2**31 - 1))
def test_linf_projection_is_feasible_and_optimal_against_linprog(seed):
    # Box active: z anywhere in [0, 1]^d and hyperplanes up to 0.8 away.
    z, w, b = _problems(seed, 8, 5, inner=False)
    d = np.asarray(_project(z, w, b, norm="linf"), np.float64)
    for i in range(len(z)):
        zi, wi, bi = z[i].astype(np.float64), w[i].astype(np.float64), float(b[i])
        # Variables (delta, t): min t s.t. w·delta = −(w·z + b), |delta_j| <= t, box.
        n = len(zi)
        a_ub = np.block([[np.eye(n), -np.ones((n, 1))], [-np.eye(n), -np.ones((n, 1))]])
        lp = linprog(
            c=np.r_[np.zeros(n), 1.0],
            A_ub=a_ub,
            b_ub=np.zeros(2 * n),
            A_eq=np.r_[wi, 0.0][None],
            b_eq=[-(wi @ zi + bi)],
            bounds=[(-zj, 1 - zj) for zj in zi] + [(0, None)],
        )
        assert np.all(zi + d[i] >= -1e-6) and np.all(zi + d[i] <= 1 + 1e-6)
        if lp.status == 2:  # the hyperplane misses the box: the closest box corner
            corner = np.where(wi * np.sign(wi @ zi + bi) > 0, 0.0, 1.0)
            corner = np.where(wi == 0, zi, corner)
            np.testing.assert_allclose(zi + d[i], corner, atol=1e-6)
            continue
        assert lp.status == 0
        assert abs(wi @ (zi + d[i]) + bi) <= 1e-5 * max(1.0, np.abs(wi).sum())
        assert np.abs(d[i]).max() == pytest.approx(lp.fun, rel=1e-5, abs=1e-6)


def _plane_points(w, b, center, radius, n):
    """Points of the plane w·v + b = 0 (d = 3): a global n×n grid over two coordinates in
    [0, 1]² (the third solved from the plane, using the largest |w_k|), and a local n×n
    grid of the given radius about `center` in an orthonormal basis of the plane."""
    k = np.argmax(np.abs(w))
    i, j = [m for m in range(3) if m != k]
    s = np.linspace(0.0, 1.0, n)
    vi, vj = np.meshgrid(s, s)
    glob = np.zeros((n * n, 3))
    glob[:, i], glob[:, j] = vi.ravel(), vj.ravel()
    glob[:, k] = -(b + w[i] * glob[:, i] + w[j] * glob[:, j]) / w[k]
    u = np.linalg.svd(w[None])[2][1:]  # (2, 3), orthogonal to w
    t = np.linspace(-radius, radius, n)
    local = center + t[:, None, None] * u[0] + t[None, :, None] * u[1]
    return np.concatenate([glob, local.reshape(-1, 3)])


@FAST
@given(seed=st.integers(0, 2**31 - 1))
def test_l2_projection_is_feasible_and_optimal_against_a_fine_search(seed):
    # d = 3: the problem is convex, so no feasible point of a global grid, nor of fine
    # local grids about the answer, may be closer to z than the answer.
    z, w, b = _problems(seed, 6, 3, inner=False)
    d = np.asarray(_project(z, w, b, norm="l2"), np.float64)
    checked = 0
    for i in range(len(z)):
        zi, wi, bi = z[i].astype(np.float64), w[i].astype(np.float64), float(b[i])
        vi = zi + d[i]
        assert np.all(vi >= -1e-6) and np.all(vi <= 1 + 1e-6)
        lo = np.where(wi > 0, 0.0, 1.0) @ wi + bi  # range of w·v + b over the box
        hi = np.where(wi > 0, 1.0, 0.0) @ wi + bi
        if not lo <= 0 <= hi:
            continue  # the hyperplane misses the box (covered by the ℓ∞ test's corner check)
        assert abs(wi @ vi + bi) <= 1e-5 * max(1.0, np.linalg.norm(wi))
        ours = np.linalg.norm(d[i])
        for radius in (1e-1, 1e-3):
            pts = _plane_points(wi, bi, vi, radius, 101)
            pts = pts[np.all((pts >= 0) & (pts <= 1), axis=1)]
            assert np.linalg.norm(pts - zi, axis=1).min(initial=np.inf) >= ours - 1e-6
        checked += 1
    assert checked >= 1


def test_projection_of_a_point_on_the_hyperplane_and_with_zero_weights():
    z = np.array([[0.2, 0.5, 0.9]], np.float32)
    w = np.array([[1.0, -2.0, 0.0]], np.float32)
    b = -(w * z).sum(1)
    for norm in PROJ:
        np.testing.assert_array_equal(np.asarray(_project(z, w, b, norm=norm)), 0.0)
        # w = 0: nothing can move the point (and nothing is NaN).
        d = np.asarray(_project(z, np.zeros_like(w), np.ones(1, np.float32), norm=norm))
        np.testing.assert_array_equal(d, 0.0)


# ----------------------------------------------------------------------------- linear models

C, D, BL = 4, 8, 6
_lr = np.random.default_rng(3)
W_LIN = _lr.normal(size=(D, C)).astype(np.float32)
C_LIN = _lr.normal(size=C).astype(np.float32)
X_LIN = _lr.uniform(0.45, 0.55, (BL, D)).astype(np.float32)
Y_LIN = (X_LIN @ W_LIN + C_LIN).argmax(1).astype(np.int32)


def _linear_fn(x):
    return x @ W_LIN + C_LIN


def _closed_form(norm):
    """Per example: distance to each class's halfspace {f_j >= f_y}, and the nearest."""
    w, x = W_LIN.astype(np.float64), X_LIN.astype(np.float64)
    logits = x @ w + C_LIN
    dw = w.T[None] - w.T[Y_LIN][:, None]  # (B, C, D)
    dual = np.abs(dw).sum(-1) if norm == "linf" else np.linalg.norm(dw, axis=-1)
    gap = logits[np.arange(BL), Y_LIN][:, None] - logits
    dist = np.where(dual > 0, gap / np.where(dual > 0, dual, 1.0), np.inf)
    dist[np.arange(BL), Y_LIN] = np.inf
    return dist.min(1), dist.argmin(1)


@partial(jax.jit, static_argnames=("norm", "mode", "final_search"))
def _fab_linear(x, y, key, eps, target, *, norm, mode, final_search=3):
    kw = dict(threat=NORMS[norm](eps), steps=100, final_search=final_search)
    if mode == "untargeted":
        return fab(_linear_fn, x, y, key, **kw)
    if mode == "targeted":
        return fab(_linear_fn, x, y, key, target=target, **kw)
    return fab_targeted(_linear_fn, x, y, key, **kw)  # k = min(9, C − 1) = 3


# Each norm with each mode would be 6 compilations; 4 cover both norms of every mode.
@pytest.mark.parametrize(
    "norm,mode",
    [("linf", "untargeted"), ("l2", "untargeted"), ("l2", "targeted"), ("linf", "fab_targeted")],
)
def test_fab_finds_the_closed_form_minimum_norm_on_a_linear_model(norm, mode):
    want, nearest = _closed_form(norm)
    # Inputs sit in [0.45, 0.55] and no coordinate moves more than the norm, so a norm
    # below 0.4 keeps the box inactive and the closed form exact.
    assert want.max() < 0.4
    res = _fab_linear(X_LIN, Y_LIN, KEY, 10.0, nearest.astype(np.int32), norm=norm, mode=mode)
    found = -np.asarray(res.value, np.float64)
    assert np.all(found >= want * (1 - 1e-5))  # cannot beat the minimum
    np.testing.assert_allclose(found, want, rtol=1e-3)
    np.testing.assert_allclose(norm_of(norm, res.delta), found, rtol=1e-6)
    assert np.asarray(res.success).all()
    assert np.all((np.asarray(res.x_adv) @ W_LIN + C_LIN).argmax(1) != Y_LIN)


def test_fab_without_final_search_is_within_a_percent_and_eps_gates_the_result():
    want, _ = _closed_form("l2")
    kw = dict(norm="l2", mode="untargeted", final_search=0)
    res = _fab_linear(X_LIN, Y_LIN, KEY, np.full(BL, 10.0, np.float32), Y_LIN, **kw)
    found = -np.asarray(res.value, np.float64)
    # FAB's own iterates settle ~0.5% above the minimum on a linear model (the backward
    # step and overshoot cycle); the final search removes that gap.
    assert np.all(found >= want * (1 - 1e-5)) and np.all(found <= want * 1.01)
    # Per-example ε between the two halves of the examples' minimal norms: only examples
    # with ε >= found succeed, the others come back clean, with their norm still reported.
    eps = np.where(np.arange(BL) % 2 == 0, want * 1.02, want * 0.98).astype(np.float32)
    res = _fab_linear(X_LIN, Y_LIN, KEY, eps, Y_LIN, **kw)
    ok = np.arange(BL) % 2 == 0
    np.testing.assert_array_equal(np.asarray(res.success), ok)
    np.testing.assert_array_equal(np.asarray(res.x_adv)[~ok], X_LIN[~ok])
    np.testing.assert_allclose(-np.asarray(res.value), found)


# ----------------------------------------------------------------------------- digits MLP

N_EVAL = 48


def _mlp(params, x):
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


@pytest.fixture(scope="module")
def digits_model(digits_test):
    from jaxrobust.data import load_split

    x, y = load_split("digits", "train")
    rng = np.random.default_rng(1)  # numpy init: eager jax.random would compile threefry
    params = {
        "w1": jnp.asarray(rng.normal(size=(64, 32)) / 8.0, jnp.float32),
        "b1": jnp.zeros(32),
        "w2": jnp.asarray(rng.normal(size=(32, 10)) / np.sqrt(32.0), jnp.float32),
        "b2": jnp.zeros(10),
    }
    opt = optax.adam(1e-2)

    @jax.jit
    def train(params, x, y):  # data as arguments, not closure constants XLA would fold
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(_mlp(p, x), y).mean()

        def step(carry, _):
            params, state = carry
            updates, state = opt.update(jax.grad(loss)(params), state)
            return (optax.apply_updates(params, updates), state), None

        return jax.lax.scan(step, (params, opt.init(params)), None, length=200)[0][0]

    params = train(params, x, y)
    xt, yt = digits_test
    return params, xt[:N_EVAL], yt[:N_EVAL]


@jax.jit
def _fab_t_mlp(params, x, y, key, eps):
    return fab_targeted(partial(_mlp, params), x, y, key, threat=linf(eps), steps=50)


@jax.jit
def _pgd_mlp(params, x, y, key, eps):
    return pgd(partial(_mlp, params), x, y, key, threat=linf(eps), steps=50, loss=margin)


@pytest.mark.slow  # compile-heavy: runs with the slow tests, keeping the default suite < 15 min
def test_fab_t_on_a_digits_mlp_agrees_with_pgd(digits_model):
    params, x, y = digits_model
    clean = np.asarray(_mlp(params, x)).argmax(1) == y
    res = _fab_t_mlp(params, x, y, KEY, 0.1)
    xa, d = np.asarray(res.x_adv), np.asarray(res.delta)
    assert norm_of("linf", d).max() <= 0.1 + 1e-6
    assert xa.min() >= 0.0 and xa.max() <= 1.0
    pred = np.asarray(_mlp(params, xa)).argmax(1)
    np.testing.assert_array_equal(np.asarray(res.success), pred != y)
    robust = 1.0 - np.asarray(res.success).mean()
    assert robust <= clean.mean()
    # Measured: clean accuracy 47/48, FAB-T (50 steps, 9 targets) robust accuracy 11/48.
    assert robust < 0.5 * clean.mean()

    # Minimal ε at which PGD-50 (margin loss) succeeds, per example, by bisection
    # (resolution 0.5 / 2^12 ≈ 1.2e-4).
    lo, hi = np.zeros(N_EVAL, np.float32), np.full(N_EVAL, 0.5, np.float32)
    for _ in range(12):
        mid = 0.5 * (lo + hi)
        ok = np.asarray(_pgd_mlp(params, x, y, KEY, mid).success)
        lo, hi = np.where(ok, lo, mid), np.where(ok, mid, hi)
    fab_norm = -np.asarray(res.value)  # reported even where it exceeds ε
    both = clean & (hi < 0.5) & np.isfinite(fab_norm)
    # Measured over 47 examples: median FAB-T norm 0.0741 vs PGD-50 bisection 0.0780;
    # FAB-T <= PGD on 72% of them, and never more than 0.2% above PGD.
    assert both.sum() >= 40
    assert np.median(fab_norm[both]) <= 1.1 * np.median(hi[both])
    assert np.all(fab_norm[both] <= 1.5 * hi[both])


# ----------------------------------------------------------------------------- determinism


@partial(jax.jit, static_argnames=("norm",))
def _fab_small(x, y, key, eps, *, norm):
    return fab(_linear_fn, x, y, key, threat=NORMS[norm](eps), steps=5, restarts=2)


def test_same_key_identical_and_jit_equals_eager():
    jitted = _fab_small(X_LIN, Y_LIN, KEY, 0.3, norm="linf")  # restarts=2: random starts
    again = _fab_small(X_LIN, Y_LIN, KEY, 0.3, norm="linf")
    for a, b in zip(jitted, again, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.asarray(jitted.success).any()
    # Eager against the known-answer test's compiled function (one restart: eager random
    # sampling compiles op by op and costs seconds).
    eager = fab(_linear_fn, X_LIN, Y_LIN, KEY, threat=linf(10.0), steps=100)
    jitted = _fab_linear(X_LIN, Y_LIN, KEY, 10.0, Y_LIN, norm="linf", mode="untargeted")
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_already_misclassified_examples_cost_nothing():
    y = Y_LIN.copy()
    y[0] = (y[0] + 1) % C  # the model disagrees with this label at x itself
    res = _fab_small(X_LIN, y, KEY, 0.3, norm="linf")
    assert float(res.value[0]) == 0.0 and bool(res.success[0])
    np.testing.assert_array_equal(np.asarray(res.x_adv[0]), X_LIN[0])
    assert np.all(np.asarray(res.value[1:]) < 0)


# ----------------------------------------------------------------------------- input errors

XB = np.full((2, D), 0.5, np.float32)
YB = np.array([0, 1], np.int32)


def test_fab_input_errors():
    with pytest.raises(InputError, match="ℓ∞ and ℓ2"):
        fab(_linear_fn, XB, YB, KEY, threat=l1(1.0))
    with pytest.raises(InputError, match="ℓ∞ and ℓ2"):
        fab_targeted(_linear_fn, XB, YB, KEY, threat=spatial())
    with pytest.raises(InputError, match="steps >= 1"):
        fab(_linear_fn, XB, YB, KEY, threat=linf(0.1), steps=0)
    with pytest.raises(InputError, match="steps >= 1"):
        fab_targeted(_linear_fn, XB, YB, KEY, threat=linf(0.1), steps=-3)
    with pytest.raises(InputError, match="restarts >= 1"):
        fab(_linear_fn, XB, YB, KEY, threat=linf(0.1), restarts=0)
    with pytest.raises(InputError, match="n_target_classes"):
        fab_targeted(_linear_fn, XB, YB, KEY, threat=linf(0.1), n_target_classes=0)
    with pytest.raises(InputError, match="target must differ"):
        fab(_linear_fn, XB, YB, KEY, threat=l2(0.1), target=YB)
    with pytest.raises(InputError, match="target"):
        fab(_linear_fn, XB, YB, KEY, threat=l2(0.1), target=np.array([1], np.int32))
    with pytest.raises(InputError, match="labels in"):
        fab(_linear_fn, XB, np.array([0, 7], np.int32), KEY, threat=l2(0.1))
    with pytest.raises(InputError, match="declared input range"):
        fab(_linear_fn, XB + 1.0, YB, KEY, threat=linf(0.1))
    with pytest.raises(InputError, match="do not match"):
        fab(_linear_fn, XB, YB[:1], KEY, threat=linf(0.1))
    with pytest.raises(InputError, match="beta"):
        fab(_linear_fn, XB, YB, KEY, threat=linf(0.1), beta=0.0)
    with pytest.raises(InputError, match="at least 2 classes"):
        fab(lambda x: x[:, :1], XB, np.zeros(2, np.int32), KEY, threat=linf(0.1))
    with pytest.raises(InputError, match="non-finite logits"):
        fab(lambda x: jnp.nan * _linear_fn(x), XB, YB, KEY, threat=linf(0.1))
    with pytest.raises(InputError, match=r"logits of shape \(2, num_classes\)"):
        fab_targeted(lambda x: x.sum(axis=1), XB, YB, KEY, threat=linf(0.1))
