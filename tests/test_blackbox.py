"""Score-based gradient estimation (NES, Bandits-TD) inside query-limited PGD."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.attacks.blackbox import nes_gradient, query_limited_attack
from jaxrobust.attacks.pgd import pgd
from jaxrobust.errors import InputError
from jaxrobust.losses import margin
from jaxrobust.threat import l1, l2, linf

W = jax.random.normal(jax.random.key(0), (64, 10))


def linear(x):
    return x.reshape(x.shape[0], -1) @ W


@pytest.fixture(scope="module")
def data():
    x = jax.random.uniform(jax.random.key(1), (16, 8, 8, 1))
    y = jnp.argmax(linear(x), -1).astype(jnp.int32)  # correctly classified by construction
    return x, y


def test_nes_estimates_the_gradient(data):
    x, y = data

    def loss(z):
        return jnp.sum(linear(z) * jax.nn.one_hot(y, 10), -1)

    est = nes_gradient(loss, x, jax.random.key(2), samples=400, sigma=1e-3)
    true = jax.grad(lambda z: loss(z).sum())(x)
    cos = jnp.sum((est * true).reshape(16, -1), 1) / (
        jnp.linalg.norm(est.reshape(16, -1), axis=1) * jnp.linalg.norm(true.reshape(16, -1), axis=1)
    )
    # 200 antithetic pairs in 64 dimensions: the estimate is well aligned with the truth.
    assert float(cos.min()) > 0.8


@pytest.mark.parametrize("estimator", ["nes", "bandits"])
@pytest.mark.parametrize("make", [linf, l2])
def test_query_limited_attack_breaks_a_linear_model(data, estimator, make):
    x, y = data
    threat = make(0.3 if make is linf else 3.0)
    out = jax.jit(
        lambda a, b: query_limited_attack(
            linear,
            a,
            b,
            jax.random.key(3),
            threat=threat,
            estimator=estimator,
            max_queries=2000,
            nes_samples=20,
        )
    )(x, y)
    # Not every point is breakable at this ε: compare with white-box PGD's failures.
    white = pgd(linear, x, y, jax.random.key(4), threat=threat, steps=100, loss=margin)
    assert float(out.failure_rate) <= float(1 - white.success.mean()) + 1 / 16
    assert np.all(np.asarray(out.queries) <= 2000)
    assert 1 <= float(out.mean_queries) <= 2000
    delta = np.asarray(out.result.x_adv - x).reshape(16, -1)
    bound = np.abs(delta).max(1) if make is linf else np.sqrt((delta**2).sum(1))
    assert bound.max() <= threat.eps * (1 + 1e-5)
    assert float(out.result.x_adv.min()) >= 0 and float(out.result.x_adv.max()) <= 1
    pred = jnp.argmax(linear(out.result.x_adv), -1)
    np.testing.assert_array_equal(np.asarray(out.result.success), np.asarray(pred != y))


def test_budget_stops_the_attack(data):
    x, y = data
    out = query_limited_attack(
        linear, x, y, jax.random.key(3), threat=linf(0.01), estimator="bandits", max_queries=10
    )
    assert np.all(np.asarray(out.queries) <= 10)
    assert float(out.failure_rate) > 0.5  # a tiny budget at a tiny ε breaks little


def test_no_gradients_used(data):
    x, y = data

    @jax.custom_vjp
    def blind(z):
        return linear(z)

    blind.defvjp(lambda z: (linear(z), None), lambda _, g: (jnp.full((16, 8, 8, 1), jnp.nan),))
    out = query_limited_attack(
        blind,
        x,
        y,
        jax.random.key(3),
        threat=linf(0.3),
        estimator="nes",
        max_queries=500,
        nes_samples=10,
    )
    assert float(out.failure_rate) <= 0.2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_queries": 0}, "max_queries must be a positive"),
        ({"max_queries": -5}, "max_queries must be a positive"),
        ({"estimator": "magic"}, "unknown estimator"),
        ({"threat": l1(1.0)}, "support linf and l2"),
    ],
)
def test_bad_input(data, kwargs, match):
    x, y = data
    args = {"threat": linf(0.1), **kwargs}
    with pytest.raises(InputError, match=match):
        query_limited_attack(linear, x, y, jax.random.key(0), **args)
