"""Tests for jaxrobust.losses: numpy references, invariances and hand-computed values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxrobust import losses
from jaxrobust.errors import InputError

B, C = 4, 5
FAST = settings(max_examples=25, deadline=None)

logits_st = hnp.arrays(np.float32, (B, C), elements=st.floats(-20, 20, width=32))
labels_st = hnp.arrays(np.int32, (B,), elements=st.integers(0, C - 1))

# Jitted once at module level: every hypothesis example reuses the compiled function.
_ce = jax.jit(losses.cross_entropy)
_margin = jax.jit(losses.margin)
_dlr = jax.jit(losses.dlr)
_dlr_targeted = jax.jit(losses.dlr_targeted)
_kl = jax.jit(losses.kl_divergence)
_targeted = {
    "ce": jax.jit(losses.targeted(losses.cross_entropy)),
    "margin": jax.jit(losses.targeted(losses.margin)),
    "dlr": jax.jit(losses.targeted(losses.dlr)),
}


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def _rows(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    return z[np.arange(z.shape[0]), y]


@FAST
@given(logits_st, labels_st)
def test_cross_entropy_matches_numpy(z, y):
    z64 = z.astype(np.float64)
    want = _logsumexp(z64) - _rows(z64, y)
    got = np.asarray(_ce(z, y))
    assert got.shape == (B,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@FAST
@given(logits_st, labels_st)
def test_margin_matches_numpy_and_is_positive_iff_misclassified(z, y):
    got = np.asarray(_margin(z, y))
    others = np.where(np.eye(C, dtype=bool)[y], -np.inf, z)
    np.testing.assert_allclose(got, others.max(axis=1) - _rows(z, y), rtol=0, atol=1e-6)
    misclassified = z.argmax(axis=1) != y
    # margin > 0 => misclassified, and misclassified => margin >= 0 (ties give 0).
    assert np.all(misclassified[got > 0])
    assert np.all(got[misclassified] >= 0)
    # Without ties at the top, the equivalence is exact. A gap below the smallest normal
    # float32 is a tie: XLA:CPU flushes subnormals to zero (1e-44 - 0 computes as 0).
    top2 = np.sort(z, axis=1)[:, -2:]
    unique = top2[:, 1] - top2[:, 0] >= np.finfo(np.float32).tiny
    np.testing.assert_array_equal((got > 0)[unique], misclassified[unique])


def test_margin_known_values():
    z = jnp.array([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]])
    y = jnp.array([0, 2])
    np.testing.assert_allclose(np.asarray(losses.margin(z, y)), [-1.0, 6.0])


# The assume() below rejects near-ties; one CI run's generator hit the health check's
# rejection limit (9 kept of 59) though the fixed-seed profile passed before: not a failure
# of the property, so that health check alone is lifted here.
@settings(FAST, suppress_health_check=[HealthCheck.filter_too_much])
@given(
    hnp.arrays(np.float32, (B, C), elements=st.floats(-10, 10, width=32)),
    labels_st,
    st.floats(-10, 10, width=32),
    st.floats(0.25, 4.0, width=32),
)
def test_dlr_shift_and_scale_invariant(z, y, shift, scale):
    top = np.sort(z, axis=1)[:, ::-1]
    assume(np.all(top[:, 0] - top[:, 2] >= 0.5))
    base = np.asarray(_dlr(z, y))
    # numpy reference of the formula
    others = np.where(np.eye(C, dtype=bool)[y], -np.inf, z).max(axis=1)
    want = -(_rows(z, y) - others) / (top[:, 0] - top[:, 2])
    np.testing.assert_allclose(base, want, rtol=1e-5, atol=1e-5)
    shifted = np.asarray(_dlr(z + np.float32(shift), y))
    scaled = np.asarray(_dlr(z * np.float32(scale), y))
    np.testing.assert_allclose(shifted, base, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(scaled, base, rtol=1e-3, atol=1e-3)


def test_dlr_known_values():
    z = jnp.array([[1.0, 5.0, 3.0, 2.0], [1.0, 5.0, 3.0, 2.0]])
    y = jnp.array([0, 1])
    # y=0: -(1 - 5) / (5 - 2) = 4/3; y=1: -(5 - 3) / (5 - 2) = -2/3.
    np.testing.assert_allclose(np.asarray(losses.dlr(z, y)), [4 / 3, -2 / 3], rtol=1e-6)


def test_dlr_targeted_hand_computed():
    # sorted descending: 4, 3, 2, 1, 0 -> z_pi1 = 4, z_pi3 = 2, z_pi4 = 1; denominator 2.5.
    z = jnp.array([[4.0, 1.0, 3.0, 2.0, 0.0], [4.0, 1.0, 3.0, 2.0, 0.0]])
    y = jnp.array([0, 1])
    t = jnp.array([3, 0])
    got = np.asarray(_dlr_targeted(z, y, t))
    # -(4 - 2) / 2.5 = -0.8 ; -(1 - 4) / 2.5 = 1.2
    np.testing.assert_allclose(got, [-0.8, 1.2], rtol=1e-6)


def test_dlr_needs_enough_classes():
    with pytest.raises(InputError, match="at least 3 classes"):
        losses.dlr(jnp.zeros((2, 2)), jnp.array([0, 1]))
    with pytest.raises(InputError, match="at least 4 classes"):
        losses.dlr_targeted(jnp.zeros((2, 3)), jnp.array([0, 1]), jnp.array([1, 0]))


@FAST
@given(logits_st, logits_st)
def test_kl_divergence_zero_for_equal_and_nonnegative(p, q):
    np.testing.assert_allclose(np.asarray(_kl(p, p)), 0.0, atol=1e-6)
    got = np.asarray(_kl(p, q))
    assert np.all(got >= -1e-6)
    lp = p.astype(np.float64) - _logsumexp(p.astype(np.float64))[:, None]
    lq = q.astype(np.float64) - _logsumexp(q.astype(np.float64))[:, None]
    want = (np.exp(lp) * (lp - lq)).sum(axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@FAST
@given(logits_st, labels_st, st.sampled_from(sorted(_targeted)))
def test_targeted_is_negated_loss(z, t, name):
    base = {"ce": _ce, "margin": _margin, "dlr": _dlr}[name]
    top = np.sort(z, axis=1)[:, ::-1]
    assume(name != "dlr" or np.all(top[:, 0] - top[:, 2] > 1e-3))
    np.testing.assert_array_equal(np.asarray(_targeted[name](z, t)), -np.asarray(base(z, t)))


def test_get_loss():
    assert losses.get_loss("ce") is losses.cross_entropy
    assert losses.get_loss("margin") is losses.margin
    assert losses.get_loss("dlr") is losses.dlr
    with pytest.raises(InputError, match="unknown loss 'hinge'"):
        losses.get_loss("hinge")
