"""Linear binary problems with a closed-form worst case, and the ball/box checks, shared by
the attack tests (test_attacks.py, test_apgd.py, test_fab.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxrobust.threat import l1, l2, linf

NORMS = {"linf": linf, "l2": l2, "l1": l1}
B, D = 4, 6  # batch and input size of the linear problems


def f32(lo: float, hi: float) -> st.SearchStrategy:
    """float32 values in [lo, hi]."""
    return st.floats(lo, hi).map(np.float32)


def norm_of(name: str, d) -> np.ndarray:
    """Per-example ℓ∞ / ℓ2 / ℓ1 norm of a batch (B, ...), in float64."""
    flat = np.asarray(d, np.float64).reshape(d.shape[0], -1)
    return {
        "linf": np.abs(flat).max(axis=1),
        "l2": np.sqrt((flat**2).sum(axis=1)),
        "l1": np.abs(flat).sum(axis=1),
    }[name]


def assert_in_ball_and_box(name: str, res, x, eps) -> None:
    """An attack result's delta lies in the eps-ball (scalar or per-example eps), x_adv is
    x + delta, and x_adv lies in the [0, 1] box."""
    d = np.asarray(res.delta, np.float64)
    assert np.all(norm_of(name, d) <= np.asarray(eps, np.float64) * (1 + 1e-5) + 1e-6)
    xa = np.asarray(res.x_adv, np.float64)
    np.testing.assert_allclose(xa, np.asarray(x, np.float64) + d, atol=1e-6)
    assert xa.min() >= -1e-6 and xa.max() <= 1 + 1e-6


def binary_logits(w, b):
    """f(x) = w·x + b as the two logits (−s/2, s/2)."""

    def fn(x):
        s = x @ w + b
        return jnp.stack([-s / 2, s / 2], axis=-1)

    return fn


@st.composite
def binary_problem(draw, max_eps: float = 0.25):
    """(w, b, x, y, eps, key): a linear binary classifier, correctly classified inputs far
    from the box edges, and eps in [0.01, max_eps] (< 0.3: the box never binds)."""
    mags = draw(hnp.arrays(np.float32, (D,), elements=f32(0.2, 2.0)))
    signs = draw(hnp.arrays(np.float32, (D,), elements=st.sampled_from([-1.0, 1.0])))
    w = mags * signs
    b = np.float32(draw(st.floats(-1.0, 1.0)))
    x = draw(hnp.arrays(np.float32, (B, D), elements=f32(0.3, 0.7)))
    s = x @ w + b
    assume(np.all(np.abs(s) > 1e-3))
    y = (s > 0).astype(np.int32)  # the correct class
    eps = np.float32(draw(st.floats(0.01, max_eps)))
    seed = draw(st.integers(0, 2**31 - 1))
    return w, b, x, y, eps, jax.random.key(seed)


def binary_expected(w, b, x, y, eps, norm: str) -> tuple[np.ndarray, np.ndarray]:
    """The maximiser and maximum of the margin −ỹ(w·x + b) over the eps-ball (float64).

    δ = −ε·ỹ·u with u = sign(w) (ℓ∞), w/‖w‖₂ (ℓ2), or sign(w_j)·e_j at j = argmax |w_j|
    (ℓ1, a vertex); the value rises by ε times the dual norm of w.
    """
    ysgn = 2.0 * y.astype(np.float64) - 1.0  # ỹ = ±1
    w64 = w.astype(np.float64)
    if norm == "linf":
        direction, dual = np.sign(w64), np.abs(w64).sum()
    elif norm == "l2":
        direction, dual = w64 / np.linalg.norm(w64), np.linalg.norm(w64)
    else:
        j = int(np.argmax(np.abs(w64)))
        direction, dual = np.sign(w64) * (np.arange(w64.size) == j), np.abs(w64[j])
    delta = -float(eps) * ysgn[:, None] * direction[None]
    value = -ysgn * (x.astype(np.float64) @ w64 + b) + float(eps) * dual
    return delta, value
