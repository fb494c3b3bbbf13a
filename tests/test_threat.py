"""Tests for jaxrobust.threat: projections, random starts, ascent directions, spatial warps.

Every jitted helper is defined once at module level with fixed shapes, so hypothesis
examples reuse one compilation per threat model.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxrobust import threat as T
from jaxrobust.errors import InputError

FAST = settings(max_examples=25, deadline=None)

B = 3
SHAPE = (B, 2, 3)  # pixel inputs: a batch of 3 "images" with 6 coordinates each
D = 6
MASK = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], np.float32)  # broadcasts over the batch
IMG = (2, 5, 5, 1)  # spatial inputs

PIXEL = {
    "linf": T.linf,
    "l2": T.l2,
    "l1": T.l1,
    "masked_linf": lambda e: T.masked(T.linf(e), MASK),
    "masked_l2": lambda e: T.masked(T.l2(e), MASK),
    "unconstrained": lambda e: T.unconstrained(),
}


def _norm(name: str, d: np.ndarray) -> np.ndarray:
    flat = np.asarray(d, np.float64).reshape(d.shape[0], -1)
    if name.endswith("linf"):
        return np.abs(flat).max(axis=1)
    if name.endswith("l2"):
        return np.sqrt((flat**2).sum(axis=1))
    if name.endswith("l1"):
        return np.abs(flat).sum(axis=1)
    return np.zeros(flat.shape[0])  # unconstrained: only the box


def _assert_in_ball_and_box(name, d, x, eps, lo=0.0, hi=1.0):
    d = np.asarray(d, np.float64)
    assert np.all(np.isfinite(d))
    eps = np.broadcast_to(np.asarray(eps, np.float64), (d.shape[0],))
    norms = _norm(name, d)
    assert np.all(norms <= eps * (1 + 1e-5) + 1e-6), (norms, eps)
    xa = np.asarray(x, np.float64) + d
    assert xa.min() >= lo - 1e-6 and xa.max() <= hi + 1e-6, (xa.min(), xa.max())
    if name.startswith("masked"):
        assert np.all(d[:, MASK == 0] == 0)


@partial(jax.jit, static_argnums=0)
def _project_init(name, eps, delta, x, key):
    t = PIXEL[name](eps)
    p = t.project(delta, x)
    return p, t.project(p, x), t.init(key, x)


@partial(jax.jit, static_argnums=0)
def _init(name, eps, key, x):
    return PIXEL[name](eps).init(key, x)


@partial(jax.jit, static_argnums=0)
def _project(name, eps, delta, x):
    return PIXEL[name](eps).project(delta, x)


unit = st.floats(0.0, 1.0, width=32)  # includes exactly 0 and 1
any_delta = st.one_of(
    st.floats(-2.0, 2.0, width=32), st.floats(-(2.0**100), 2.0**100, width=32, allow_infinity=False)
)
x_st = hnp.arrays(np.float32, SHAPE, elements=unit)
delta_st = hnp.arrays(np.float32, SHAPE, elements=any_delta)
eps_st = st.one_of(
    st.floats(0.0, 2.0, width=32).map(np.float32),
    hnp.arrays(np.float32, (B,), elements=st.floats(0.0, 2.0, width=32)),
)


# ----------------------------------------------------------------------------- projection


@pytest.mark.parametrize("name", sorted(PIXEL))
@FAST
@given(x=x_st, delta=delta_st, eps=eps_st, seed=st.integers(0, 2**31 - 1))
def test_project_and_init_feasible_idempotent(name, x, delta, eps, seed):
    p, pp, init = _project_init(name, eps, delta, x, jax.random.key(seed))
    _assert_in_ball_and_box(name, p, x, eps)
    _assert_in_ball_and_box(name, init, x, eps)
    np.testing.assert_allclose(np.asarray(pp), np.asarray(p), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(PIXEL))
def test_feasible_delta_is_a_fixed_point(name):
    # A delta already inside ball and box must not move (linf and l1 corners included).
    x = np.full(SHAPE, 0.5, np.float32)
    d = np.zeros(SHAPE, np.float32)
    d[:, 0, 0] = 0.1
    d[:, 1, 2] = -0.05
    p = np.asarray(_project(name, np.float32(0.2), d, x))
    np.testing.assert_allclose(p, d * (MASK if name.startswith("masked") else 1.0), atol=1e-7)


@pytest.mark.parametrize("name", sorted(PIXEL))
def test_keys_jit_and_per_example_independence(name):
    rng = np.random.default_rng(1)
    x = rng.uniform(size=SHAPE).astype(np.float32)
    x[0, 0, 0], x[1, 1, 1] = 0.0, 1.0
    delta = rng.normal(scale=0.5, size=SHAPE).astype(np.float32)
    eps = np.array([0.1, 0.3, 0.2], np.float32)
    key, other = jax.random.key(3), jax.random.key(4)

    p, _, i1 = (np.asarray(a) for a in _project_init(name, eps, delta, x, key))
    i2 = np.asarray(_project_init(name, eps, delta, x, key)[2])
    i3 = np.asarray(_project_init(name, eps, delta, x, other)[2])
    np.testing.assert_array_equal(i1, i2)  # same key, identical start
    assert not np.allclose(i1, i3)  # different key, different start
    # Every example gets its own start (per-example keys).
    assert not np.allclose(i1[0], i1[1])

    # jit equals eager.
    t = PIXEL[name](eps)
    np.testing.assert_allclose(
        np.asarray(t.project(jnp.asarray(delta), jnp.asarray(x))), p, atol=1e-6
    )
    np.testing.assert_allclose(np.asarray(t.init(key, jnp.asarray(x))), i1, atol=1e-6)

    # The first k examples of a batch behave as the batch of just those k.
    k = 2
    pk, _, ik = _project_init(name, eps[:k], delta[:k], x[:k], key)
    np.testing.assert_allclose(np.asarray(pk), p[:k], atol=1e-6)
    np.testing.assert_allclose(np.asarray(ik), i1[:k], atol=1e-6)


def _duchi_l1(v: np.ndarray, z: float) -> np.ndarray:
    """Euclidean projection onto the ℓ1 ball of radius z (Duchi et al. 2008, sort-based)."""
    if np.abs(v).sum() <= z:
        return v
    u = np.sort(np.abs(v))[::-1]
    css = np.cumsum(u)
    rho = np.nonzero(u * np.arange(1, v.size + 1) > css - z)[0][-1]
    theta = (css[rho] - z) / (rho + 1.0)
    return np.sign(v) * np.maximum(np.abs(v) - theta, 0.0)


@pytest.mark.parametrize("name", ["l2", "l1"])
@FAST
@given(
    x=x_st,
    v=hnp.arrays(np.float32, SHAPE, elements=st.floats(-2.0, 2.0, width=32)),
    eps=st.floats(0.05, 1.5).map(np.float32),
    seed=st.integers(0, 2**31 - 1),
)
def test_projection_is_the_closest_feasible_point(name, x, v, eps, seed):
    p = np.asarray(_project(name, np.float32(eps), v, x), np.float64)
    _assert_in_ball_and_box(name, p, x, eps)
    rng = np.random.default_rng(seed)
    lo, hi = -x.astype(np.float64), 1.0 - x.astype(np.float64)
    v64 = v.astype(np.float64)
    for i in range(B):
        # Random feasible points: uniform in the box of deltas, shrunk into the ball
        # (0 lies in the box, so shrinking keeps the box constraint).
        z = rng.uniform(lo[i], hi[i], size=(2000, *lo[i].shape)).reshape(2000, -1)
        n = _norm(name, z)
        z *= np.minimum(1.0, eps / np.maximum(n, 1e-30))[:, None]
        # ...and points on segments from p towards them (feasible by convexity), which probe
        # the neighbourhood of p where a suboptimal projection would show first.
        pi, vi = p[i].reshape(-1), v64[i].reshape(-1)
        ts = np.array([1.0, 0.1, 1e-2, 1e-3])[:, None, None]
        q = ((1 - ts) * pi + ts * z).reshape(-1, pi.size)
        dist_p = np.sum((vi - pi) ** 2)
        dist_q = np.sum((vi - q) ** 2, axis=1)
        assert dist_q.min() >= dist_p - 1e-5, (dist_q.min(), dist_p)
        # Variational inequality of the projection onto a convex set.
        assert np.max((z - pi) @ (vi - pi)) <= 1e-4


@FAST
@given(
    # |v| <= 0.5 around x = 0.5: x + v stays in the box, which is then never active.
    v=hnp.arrays(np.float32, SHAPE, elements=st.floats(-0.5, 0.5, width=32)),
    eps=st.floats(0.01, 0.5).map(np.float32),
)
def test_projection_closed_forms_when_box_inactive(v, eps):
    x = np.full(SHAPE, 0.5, np.float32)
    v64 = v.astype(np.float64).reshape(B, -1)
    e = np.float32(eps)

    got2 = np.asarray(_project("l2", e, v, x), np.float64).reshape(B, -1)
    n = np.sqrt((v64**2).sum(axis=1))
    want2 = v64 * np.minimum(1.0, float(e) / np.maximum(n, 1e-30))[:, None]
    np.testing.assert_allclose(got2, want2, rtol=1e-5, atol=1e-6)

    got1 = np.asarray(_project("l1", e, v, x), np.float64).reshape(B, -1)
    want1 = np.stack([_duchi_l1(row, float(e)) for row in v64])
    np.testing.assert_allclose(got1, want1, rtol=1e-5, atol=1e-6)

    gotinf = np.asarray(_project("linf", e, v, x), np.float64).reshape(B, -1)
    np.testing.assert_allclose(gotinf, np.clip(v64, -float(e), float(e)), atol=1e-7)


# ----------------------------------------------------------------------------- random starts

N = 4000
X2 = np.full((N, 2), 0.5, np.float32)


@pytest.mark.parametrize("name", ["l2", "l1"])
def test_random_start_uniform_in_2d_ball(name):
    eps = 0.2
    d = np.asarray(_init(name, np.float32(eps), jax.random.key(0), X2), np.float64)
    r = _norm(name, d) / eps
    assert r.max() <= 1 + 1e-5
    for frac in (0.3, 0.5, 0.8):
        # Area of the radius-(r·eps) ball over the area of the eps ball is r² in d = 2.
        assert abs(np.mean(r <= frac) - frac**2) < 0.03, (frac, np.mean(r <= frac))
    # Directions are uniform too: each quadrant holds a quarter.
    quadrant = (d[:, 0] > 0).astype(int) * 2 + (d[:, 1] > 0)
    assert np.all(np.abs(np.bincount(quadrant, minlength=4) / N - 0.25) < 0.03)


def test_random_start_linf_coordinates_uniform():
    eps = 0.2
    d = np.asarray(_init("linf", np.float32(eps), jax.random.key(0), X2), np.float64)
    assert np.abs(d).max() <= eps * (1 + 1e-6)
    for j in range(2):
        assert abs(d[:, j].mean()) < 0.04 * eps
        assert abs(np.mean(np.abs(d[:, j]) < eps / 2) - 0.5) < 0.03
        assert abs(np.mean(d[:, j] > 0) - 0.5) < 0.03
    # The coordinates are independent: a quarter of the samples lie in each quadrant.
    assert abs(np.mean((d[:, 0] > 0) & (d[:, 1] > 0)) - 0.25) < 0.03


def test_unconstrained_start_uniform_in_box():
    x = np.random.default_rng(0).uniform(size=(N, 2)).astype(np.float32)
    xa = x + np.asarray(_init("unconstrained", np.float32(0), jax.random.key(0), x))
    assert xa.min() >= 0 and xa.max() <= 1 + 1e-6
    assert abs(np.mean(xa < 0.25) - 0.25) < 0.03
    # The start does not depend on x: the input is a uniform point of the box.
    assert abs(np.corrcoef(x[:, 0], xa[:, 0])[0, 1]) < 0.05


# ----------------------------------------------------------------------------- ascent

G = (2, 300)  # l1 default sparsity keeps max(1, round(0.01 * 300)) = 3 coordinates
K_L1 = max(1, round(0.01 * G[1]))

_ascent = {
    "linf": jax.jit(T.linf(0.1).ascent),
    "l2": jax.jit(T.l2(0.1).ascent),
    "l1": jax.jit(T.l1(0.1).ascent),
}

grad_st = st.one_of(
    hnp.arrays(np.float32, G, elements=st.floats(-10, 10, width=32, allow_subnormal=False)),
    # few distinct values: many ties at the top-k threshold
    hnp.arrays(np.float32, G, elements=st.integers(-3, 3).map(float)),
    st.integers(0, 2**31 - 1).map(
        lambda s: np.random.default_rng(s).normal(size=G).astype(np.float32)
    ),
)


@FAST
@given(g=grad_st)
def test_ascent_directions(g):
    nonzero = np.abs(g).sum(axis=1) > 0

    np.testing.assert_array_equal(np.asarray(_ascent["linf"](g)), np.sign(g))

    a2 = np.asarray(_ascent["l2"](g), np.float64)
    n2 = np.sqrt((a2**2).sum(axis=1))
    np.testing.assert_allclose(n2[nonzero], 1.0, rtol=1e-5)
    gn = np.sqrt((g.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(
        (a2 * gn)[nonzero], g[nonzero], rtol=1e-4, atol=1e-5 * max(1.0, np.abs(g).max())
    )
    assert np.all(a2[~nonzero] == 0)

    a1 = np.asarray(_ascent["l1"](g), np.float64)
    np.testing.assert_allclose(np.abs(a1).sum(axis=1)[nonzero], 1.0, rtol=1e-5)
    assert np.all(a1[~nonzero] == 0)
    for row, grow in zip(a1, g, strict=True):
        picked = row != 0
        assert picked.sum() <= K_L1
        assert np.all(np.sign(row[picked]) == np.sign(grow[picked]))
        if picked.any() and not picked.all():
            # The kept coordinates are the largest by |grad|.
            assert np.abs(grow[picked]).min() >= np.abs(grow[~picked]).max()


def test_l1_ascent_sparsity_parameter():
    g = np.random.default_rng(0).normal(size=(2, 40)).astype(np.float32)
    a = np.asarray(T.l1(0.1, sparsity=0.9).ascent(jnp.asarray(g)))
    assert np.all((a != 0).sum(axis=1) == 4)
    a = np.asarray(T.l1(0.1, sparsity=0.0).ascent(jnp.asarray(g)))
    np.testing.assert_allclose(a, np.sign(g) / 40, rtol=1e-6)


def test_masked_ascent_is_zero_off_the_mask():
    g = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    for base in (T.linf(0.1), T.l2(0.1)):
        a = np.asarray(T.masked(base, MASK).ascent(jnp.asarray(g)))
        assert np.all(a[:, MASK == 0] == 0)
        assert np.all(a[:, MASK == 1] != 0)


# ----------------------------------------------------------------------------- spatial


@jax.jit
def _spatial_ops(ranges, delta, x, key):
    t = T.spatial(ranges[0], ranges[1], ranges[2])
    p = t.project(delta, x)
    init = t.init(key, x)
    return p, t.project(p, x), init, t.apply(x, p), t.apply(x, init)


@FAST
@given(
    ranges=hnp.arrays(np.float32, (3,), elements=st.floats(0.0, 45.0, width=32)),
    delta=hnp.arrays(np.float32, (IMG[0], 3), elements=any_delta),
    x=hnp.arrays(np.float32, IMG, elements=unit),
    seed=st.integers(0, 2**31 - 1),
)
def test_spatial_project_and_init(ranges, delta, x, seed):
    p, pp, init, xp, xi = (
        np.asarray(a) for a in _spatial_ops(ranges, delta, x, jax.random.key(seed))
    )
    for d in (p, init):
        assert d.shape == (IMG[0], 3)
        assert np.all(np.abs(d) <= ranges * (1 + 1e-6) + 1e-6)
    np.testing.assert_array_equal(pp, p)
    for xa in (xp, xi):
        assert xa.shape == IMG
        assert xa.min() >= -1e-6 and xa.max() <= 1 + 1e-6


def test_spatial_keys_and_per_example_independence():
    t = T.spatial()
    x = jnp.zeros((4, 5, 5, 1))
    a, b, c = (np.asarray(t.init(k, x)) for k in (jax.random.key(0),) * 2 + (jax.random.key(1),))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(np.asarray(t.init(jax.random.key(0), x[:2])), a[:2])
    assert np.all(np.abs(a) <= np.array([30.0, 3.0, 3.0]))
    np.testing.assert_array_equal(np.asarray(t.zeros(x)), np.zeros((4, 3)))
    g = jnp.array([[1.0, -2.0, 0.0]])
    np.testing.assert_array_equal(np.asarray(t.ascent(g)), [[30.0, -3.0, 0.0]])


_warp = jax.jit(T.rotate_translate)


def test_rotate_translate_identity_rotation_and_translation():
    img = np.random.default_rng(0).uniform(size=(5, 5)).astype(np.float32)
    x = np.broadcast_to(img[None, :, :, None], (6, 5, 5, 1))
    params = np.array(
        [[0, 0, 0], [90, 0, 0], [-90, 0, 0], [180, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32
    )
    out = np.asarray(_warp(x, params))[..., 0]
    np.testing.assert_allclose(out[0], img, atol=1e-6)
    # Rows index y downwards, so +90° is clockwise on screen: np.rot90 with k=-1.
    np.testing.assert_allclose(out[1], np.rot90(img, k=-1), atol=1e-5)
    np.testing.assert_allclose(out[2], np.rot90(img, k=1), atol=1e-5)
    np.testing.assert_allclose(out[3], np.rot90(img, k=2), atol=1e-5)
    # dx = 1 moves content one pixel right, zero fill on the left.
    np.testing.assert_allclose(out[4][:, 1:], img[:, :-1], atol=1e-6)
    np.testing.assert_array_equal(out[4][:, 0], 0.0)
    # dy = 1 moves content one pixel down, zero fill on top.
    np.testing.assert_allclose(out[5][1:], img[:-1], atol=1e-6)
    np.testing.assert_array_equal(out[5][0], 0.0)


def test_rotate_translate_half_pixel_is_bilinear():
    img = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)
    out = np.asarray(T.rotate_translate(jnp.asarray(img), jnp.array([[0.0, 0.5, 0.0]])))[0, :, :, 0]
    np.testing.assert_allclose(out[:, 1:], 0.5 * (img[0, :, 1:, 0] + img[0, :, :-1, 0]))
    np.testing.assert_allclose(out[:, 0], 0.5 * img[0, :, 0, 0])


# ----------------------------------------------------------------------------- bad input


@FAST
@given(
    eps=st.one_of(
        st.floats(max_value=0.0, exclude_max=True, allow_nan=False),
        st.just(float("nan")),
    ),
    which=st.sampled_from(["linf", "l2", "l1", "spatial_angle", "spatial_dx"]),
)
def test_bad_eps_raises(eps, which):
    build = {
        "linf": lambda: T.linf(eps),
        "l2": lambda: T.l2(eps),
        "l1": lambda: T.l1(eps),
        "spatial_angle": lambda: T.spatial(max_angle=eps),
        "spatial_dx": lambda: T.spatial(max_dx=eps),
    }[which]
    pattern = "NaN" if math.isnan(eps) else ">= 0"
    with pytest.raises(InputError, match=pattern):
        build()


def test_bad_construction_raises():
    with pytest.raises(InputError, match="eps must be >= 0"):
        T.linf(-0.1)
    with pytest.raises(InputError, match="eps must be a number, got NaN"):
        T.l2(float("nan"))
    with pytest.raises(InputError, match="eps must be >= 0"):
        T.l1(np.array([0.1, -0.2]))
    with pytest.raises(InputError, match="lo < hi"):
        T.linf(0.1, lo=1.0, hi=0.0)
    with pytest.raises(InputError, match="sparsity"):
        T.l1(0.1, sparsity=1.0)
    with pytest.raises(InputError, match="step_norm"):
        T.unconstrained(step_norm="l1")
    with pytest.raises(InputError, match="not spatial"):
        T.masked(T.spatial(), MASK)
    with pytest.raises(InputError, match="unknown threat model 'l3'"):
        T.get_threat("l3", 0.1)
    assert T.get_threat("l2", 0.5).name == "l2"


@pytest.mark.parametrize("big", [1.0, 1e8, 1e12, 1e30, 3e38])
def test_l2_projection_is_exact_for_huge_deltas(big):
    """The answer does not depend on how far out v lies along a saturated coordinate."""
    x = jnp.full((1, 3), 0.5)
    got = T.l2(0.6).project(jnp.array([[big, 0.3, -0.2]]), x)
    # Closed form: the first coordinate saturates at 0.5; the rest share 0.6² − 0.5².
    rest = math.sqrt(0.6**2 - 0.5**2)
    want = np.array([[0.5, rest * 0.3 / math.hypot(0.3, 0.2), -rest * 0.2 / math.hypot(0.3, 0.2)]])
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


@pytest.mark.parametrize("make", [T.linf, T.l2, T.l1])
def test_free_drops_gradient_blocked_by_the_box(make):
    threat = make(0.5)
    x = jnp.array([[1.0, 0.0, 0.5]])
    grad = jnp.array([[3.0, -2.0, 1.0]])  # the first two push out of [0, 1]
    np.testing.assert_array_equal(
        np.asarray(threat.free(grad, jnp.zeros_like(x), x)), [[0.0, 0.0, 1.0]]
    )
    assert T.spatial().free is None
