"""Representation inversion (`jaxrobust.represent.invert`): a closed-form linear case,
convergence on a trained digits MLP, constraints, determinism, jit/vmap, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from feature_models import digits_features_fn

from jaxrobust.data import load_split
from jaxrobust.errors import InputError, is_poisoned
from jaxrobust.represent import feature_error, invert, layer_features

KEY = jax.random.key(0)


def _linear(d_out: int = 16, d_in: int = 64, seed: int = 0):
    w = jax.random.normal(jax.random.key(seed), (d_in, d_out)) / np.sqrt(d_in)
    return lambda x: x.reshape(x.shape[0], -1) @ w


@pytest.fixture(scope="module")
def mlp():
    x, _ = load_split("digits", "train", limit=64)
    return digits_features_fn(), jnp.asarray(x)


def _noise(shape, seed=1):
    return jax.random.uniform(jax.random.key(seed), shape)


def test_linear_map_reaches_a_reachable_target():
    # φ(x) = Wx with W of rank 16 < 64 inputs: every target W x_true with x_true in the box
    # is reached exactly; the affine set {x : Wx = t} meets the box, so the minimum is 0.
    f = _linear()
    x_true = _noise((8, 8, 8, 1), seed=2)
    target = f(x_true)
    start = _noise((8, 8, 8, 1), seed=3)
    r = invert(f, target, start, KEY, steps=300, step_size=lambda i: 0.5 * (1 - i / 300))
    assert float(jnp.max(r.value)) < 1e-3
    np.testing.assert_allclose(r.value, feature_error(f, r.x_adv, target), rtol=1e-4, atol=1e-6)
    assert float(jnp.min(r.x_adv)) >= 0.0 and float(jnp.max(r.x_adv)) <= 1.0
    np.testing.assert_allclose(r.delta, r.x_adv - start, atol=1e-6)


def test_orthogonal_map_recovers_the_input():
    # φ(x) = Qx with Q orthogonal: the unique preimage is x_true, and the absolute feature
    # error is exactly the input distance ‖x − x_true‖₂.
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(4), (64, 64)))
    f = lambda x: x.reshape(x.shape[0], -1) @ q  # noqa: E731
    x_true = _noise((4, 8, 8, 1), seed=5) * 0.8 + 0.1
    r = invert(
        f,
        f(x_true),
        _noise((4, 8, 8, 1), seed=6),
        KEY,
        steps=200,
        step_size=lambda i: 1.0 * (1 - i / 200),
        relative=False,
    )
    dist = np.linalg.norm(np.asarray(r.x_adv - x_true).reshape(4, -1), axis=1)
    np.testing.assert_allclose(r.value, dist, rtol=1e-3, atol=1e-5)
    assert float(jnp.max(r.value)) < 0.01


def test_l2_ball_around_the_start_is_respected():
    f = _linear()
    target = f(_noise((8, 8, 8, 1), seed=2))
    start = _noise((8, 8, 8, 1), seed=3)
    for eps in (0.1, 0.5):
        r = invert(f, target, start, KEY, steps=30, step_size=0.1, eps=eps)
        dist = np.linalg.norm(np.asarray(r.x_adv - start).reshape(8, -1), axis=1)
        assert np.all(dist <= eps + 1e-5)
        assert float(jnp.min(r.x_adv)) >= 0.0 and float(jnp.max(r.x_adv)) <= 1.0
    # A ball that cannot reach the target leaves a larger error than no ball.
    free = invert(f, target, start, KEY, steps=30, step_size=0.1)
    assert float(jnp.mean(free.value)) < float(jnp.mean(r.value))


def test_mlp_penultimate_features_error_decreases_with_steps_and_meets_tol(mlp):
    f, x = mlp
    target = layer_features(f, x)
    start = _noise(x.shape)
    errors = []
    for steps in (0, 20, 100, 400):
        r = invert(
            f,
            target,
            start,
            KEY,
            steps=steps,
            step_size=lambda i, s=steps: 1.0 * (1 - i / s),
            tol=0.05,
        )
        errors.append(float(jnp.mean(r.value)))
    assert errors[0] > 0.3  # noise has other features
    assert errors[0] > errors[1] > errors[2] > errors[3]
    assert errors[3] < 0.02
    assert float(jnp.mean(r.success)) >= 0.95
    np.testing.assert_array_equal(r.success, r.value <= 0.05)


def test_other_layer_and_array_valued_features_fn(mlp):
    f, x = mlp
    target = f(x)["logits"]
    r = invert(f, target, _noise(x.shape), KEY, steps=100, step_size=0.3, layer="logits")
    assert float(jnp.median(r.value)) < 0.05
    with pytest.raises(InputError, match="no layer 'nope'"):
        invert(f, target, _noise(x.shape), KEY, steps=1, step_size=0.1, layer="nope")


def test_same_key_same_result_jit_equals_eager_and_vmap(mlp):
    f, x = mlp
    x = x[:16]
    target = layer_features(f, x)
    start = _noise(x.shape)

    def run(t, s, key):
        return invert(f, t, s, key, steps=10, step_size=0.5, random_start=True)

    jrun = jax.jit(run)
    a, b = jrun(target, start, KEY), jrun(target, start, KEY)
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    c = jrun(target, start, jax.random.key(7))
    assert not np.array_equal(a.x_adv, c.x_adv)  # the random start uses the key
    e = run(target, start, KEY)  # eager
    np.testing.assert_allclose(e.x_adv, a.x_adv, atol=1e-5)
    np.testing.assert_allclose(e.value, a.value, rtol=1e-4, atol=1e-6)
    # vmap over a leading axis of independent problems = one call per problem.
    t2 = jnp.stack([target[:8], target[8:]])
    s2 = jnp.stack([start[:8], start[8:]])
    v = jax.jit(jax.vmap(lambda t, s: run(t, s, KEY)))(t2, s2)
    for k in range(2):
        one = jrun(t2[k], s2[k], KEY)
        np.testing.assert_allclose(v.x_adv[k], one.x_adv, atol=1e-5)


def test_bad_input_raises_input_error(mlp):
    f, x = mlp
    x = x[:4]
    target = layer_features(f, x)
    start = _noise(x.shape)
    with pytest.raises(InputError, match="eps"):
        invert(f, target, start, KEY, steps=2, step_size=0.1, eps=-1.0)
    with pytest.raises(InputError, match="target"):
        invert(f, target[:, :3], start, KEY, steps=2, step_size=0.1)
    with pytest.raises(InputError, match="target"):
        invert(f, target[:2], start, KEY, steps=2, step_size=0.1)
    with pytest.raises(InputError, match="NaN"):
        invert(f, target, start.at[0, 0, 0, 0].set(jnp.nan), KEY, steps=2, step_size=0.1)
    with pytest.raises(InputError, match="range"):
        invert(f, target, start + 2.0, KEY, steps=2, step_size=0.1)
    with pytest.raises(InputError, match="target features"):
        invert(f, target.at[0, 0].set(jnp.inf), start, KEY, steps=2, step_size=0.1)
    with pytest.raises(InputError, match="steps"):
        invert(f, target, start, KEY, steps=-1, step_size=0.1)
    with pytest.raises(InputError, match="step_size"):
        invert(f, target, start, KEY, steps=2, step_size=-0.1)
    with pytest.raises(InputError, match="tol"):
        invert(f, target, start, KEY, steps=2, step_size=0.1, tol=-1.0)
    # Traced bad input cannot raise: it poisons the result.
    bad = jax.jit(lambda s: invert(f, target, s, KEY, steps=2, step_size=0.1))(
        start.at[0, 0, 0, 0].set(jnp.nan)
    )
    assert is_poisoned(bad.value)
