"""`jaxrobust.represent` beyond inversion: interpolation, feature visualisation /
manipulation / sensitivity, synthesis (generation, inpainting, super-resolution,
translation, sketch-to-image) and saliency. Known answers on linear models, properties on
the shared trained digits MLP, determinism, jit/vmap, and named errors on bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from feature_models import digits_features_fn, digits_logits_fn

import jaxrobust.represent as R
from jaxrobust.data import load_split
from jaxrobust.errors import InputError

KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def digits():
    x, y = load_split("digits", "train", limit=64)
    return jnp.asarray(x), jnp.asarray(y)


def _linear_features(d_out: int = 64, seed: int = 0):
    w = jax.random.normal(jax.random.key(seed), (64, d_out)) / 8.0
    return (lambda x: x.reshape(x.shape[0], -1) @ w), w


def _linear_logits(seed: int = 5):
    w = jax.random.normal(jax.random.key(seed), (64, 10))
    return lambda z: z.reshape(z.shape[0], -1) @ w


def test_named_errors_on_bad_input(digits):
    # Raised before anything is compiled (shapes, concrete values): cheap.
    f = _linear_logits()
    x, y = digits
    x, y = x[:4], y[:4]
    mask = jnp.zeros((8, 8, 1)).at[2:6, 2:6].set(1.0)
    for bad in (jnp.zeros((8, 7, 1)), jnp.zeros((3, 8, 8, 1)), jnp.zeros((8, 8, 2)), jnp.zeros(8)):
        with pytest.raises(InputError, match="mask"):
            R.inpaint(f, x, bad, y, KEY, steps=1, step_size=0.1)
    with pytest.raises(InputError, match="mask values"):
        R.inpaint(f, x, mask * 2, y, KEY, steps=1, step_size=0.1)
    with pytest.raises(InputError, match="weight"):
        R.inpaint(f, x, mask, y, KEY, steps=1, step_size=0.1, weight=-1.0)
    with pytest.raises(InputError, match="class outside"):
        R.inpaint(f, x, mask, y.at[0].set(10), KEY, steps=1, step_size=0.1)
    with pytest.raises(InputError, match="class outside"):
        R.translate(f, x, y.at[0].set(-1), KEY, eps=1.0, steps=1, step_size=0.1)
    with pytest.raises(InputError, match="one class per example"):
        R.translate(f, x, y[:2], KEY, eps=1.0, steps=1, step_size=0.1)
    for fn in (R.translate, R.sketch_to_image):
        with pytest.raises(InputError, match="eps"):
            fn(f, x, y, KEY, eps=-0.5, steps=1, step_size=0.1)
    with pytest.raises(InputError, match="eps"):
        R.super_resolve(f, x[:, ::2, ::2], y, KEY, factor=2, eps=-0.1, steps=1, step_size=0.1)
    with pytest.raises(InputError, match="divisible"):
        R.downsample(x[:, :7], 2)
    with pytest.raises(InputError, match="class outside"):
        R.input_gradient(f, x, y.at[0].set(10))


# ------------------------------------------------------------------- interpolation


def test_interpolation_endpoints_are_the_inputs_and_the_middle_matches_the_mix(digits):
    x, _ = digits
    f, _ = _linear_features()  # invertible on the box: the mix of features is reachable
    xa, xb = x[:3], x[3:6]
    r = R.interpolate(f, xa, xb, KEY, num=5, steps=60, step_size=lambda i: 0.3 * (1 - i / 60))
    assert r.x_adv.shape == (5, 3, 8, 8, 1) and r.value.shape == (5, 3)
    np.testing.assert_array_equal(r.x_adv[0], xa)
    np.testing.assert_array_equal(r.x_adv[-1], xb)
    # A linear φ maps the pixel mix to the feature mix: every interpolant starts (and stays)
    # at feature error ~0.
    assert float(jnp.max(r.value)) < 1e-3
    with pytest.raises(InputError, match="same shape"):
        R.interpolate(f, xa, xb[:2], KEY, num=3, steps=1, step_size=0.1)
    with pytest.raises(InputError, match="num"):
        R.interpolate(f, xa, xb, KEY, num=1, steps=1, step_size=0.1)


# ----------------------------------------------- visualisation, manipulation, sensitivity


@pytest.mark.slow
def test_visualize_add_feature_and_sensitivity_on_a_linear_feature(digits):
    x, _ = digits
    f, w = _linear_features(d_out=4)
    units = jnp.asarray([0, 1, 2, 3], jnp.int32)
    x4 = x[:4]
    # Sensitivity of φ_k = ⟨w_k, x⟩ is w_k everywhere.
    g = R.sensitivity(f, x4, units)
    np.testing.assert_allclose(g.reshape(4, -1), w.T, rtol=1e-5, atol=1e-6)
    before = jnp.take_along_axis(f(x4), units[:, None], 1)[:, 0]
    # Unconstrained ascent of a linear unit goes to the box corner where x = [w_k > 0].
    corner = (w.T > 0).astype(jnp.float32).reshape(4, 8, 8, 1)
    r = R.visualize_feature(f, x4, units, KEY, steps=60, step_size=lambda i: 0.5 * (1 - i / 60))
    assert np.all(np.asarray(r.value) > np.asarray(before) + 0.1)
    assert float(jnp.mean(jnp.abs(r.x_adv - corner))) < 0.05
    m = R.add_feature(f, x4, units, KEY, eps=0.5, steps=20, step_size=0.1)
    dist = np.linalg.norm(np.asarray(m.x_adv - x4).reshape(4, -1), axis=1)
    assert np.all(dist <= 0.5 + 1e-5) and np.all(np.asarray(m.value) > np.asarray(before))
    with pytest.raises(InputError, match="component"):
        R.visualize_feature(f, x4, units + 1, KEY, steps=1, step_size=0.1)
    with pytest.raises(InputError, match="eps"):
        R.add_feature(f, x4, units, KEY, eps=-1.0, steps=1, step_size=0.1)


# ------------------------------------------------------------------- generation


@pytest.mark.slow
def test_fit_class_gaussian_recovers_known_means_and_covariances():
    k1, k2 = jax.random.split(jax.random.key(3))
    n, d = 4000, 4
    y = jnp.repeat(jnp.arange(2, dtype=jnp.int32), n // 2)
    mu = jnp.asarray([[0.2, 0.3, 0.4, 0.5], [0.6, 0.5, 0.4, 0.3]])
    a = jnp.asarray([[0.10, 0.0, 0.0, 0.0], [0.05, 0.05, 0.0, 0.0], [0.0, 0.0, 0.08, 0.0],
                     [0.0, 0.02, 0.0, 0.06]])  # fmt: skip
    x = mu[y] + jax.random.normal(k1, (n, d)) @ a.T
    g = R.fit_class_gaussian(x.reshape(n, 2, 2, 1), y, 2, ridge=0.0)
    np.testing.assert_allclose(g.mean, mu, atol=0.01)
    cov = jnp.einsum("cde,cfe->cdf", g.chol, g.chol)
    np.testing.assert_allclose(cov[0], a @ a.T, atol=1.5e-3)
    # Seeds of class c are draws of its Gaussian (clipped to the box, which these avoid).
    s = R.sample_seeds(g, jnp.ones(2000, jnp.int32), k2)
    assert s.shape == (2000, 2, 2, 1)
    np.testing.assert_allclose(s.reshape(2000, -1).mean(0), mu[1], atol=0.01)
    # Downscaled fit, upsampled seeds: blocks of factor x factor equal pixels.
    g2 = R.fit_class_gaussian(jnp.tile(x.reshape(n, 2, 2, 1), (1, 2, 2, 1)), y, 2, factor=2)
    s2 = R.sample_seeds(g2, jnp.zeros(3, jnp.int32), k2)
    assert s2.shape == (3, 4, 4, 1) and g2.mean.shape == (2, 4)
    np.testing.assert_array_equal(s2[:, 0, 0], s2[:, 1, 1])
    with pytest.raises(InputError, match="classes"):
        R.sample_seeds(g, jnp.asarray([0, 2], jnp.int32), k2)
    with pytest.raises(InputError, match="every class"):
        R.fit_class_gaussian(x.reshape(n, 2, 2, 1), y, 3)


@pytest.fixture(scope="module")
def model(digits):
    x, y = load_split("digits", "train")
    return digits_logits_fn(), R.fit_class_gaussian(jnp.asarray(x), jnp.asarray(y), 10)


@pytest.mark.slow
def test_generation_is_deterministic_by_key_reaches_the_target_and_jit_vmap(model):
    f, g = model
    target = jnp.asarray([3, 7, 1, 0], jnp.int32)
    seed_cls = (target + 1) % 10

    def run(t, key):
        return R.generate(f, g, t, key, steps=15, step_size=0.2, seed_classes=seed_cls)

    jrun = jax.jit(run)
    a, b = jrun(target, KEY), jrun(target, KEY)
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    c = jrun(target, jax.random.key(1))
    assert not np.array_equal(a.x_adv, c.x_adv)
    assert bool(jnp.all(a.success))  # 15 steps of 0.2 reach the target class
    np.testing.assert_array_equal(a.success, jnp.argmax(f(a.x_adv), -1) == target)
    seeds = R.sample_seeds(g, seed_cls, KEY)
    np.testing.assert_allclose(a.x_adv - a.delta, seeds, atol=1e-6)
    with pytest.raises(InputError, match="class outside"):
        R.generate(f, g, jnp.asarray([10, 0], jnp.int32), KEY, steps=1, step_size=0.1)
    with pytest.raises(InputError, match="class outside"):
        R.translate(f, seeds, target.at[0].set(-1), KEY, eps=1.0, steps=1, step_size=0.1)
    with pytest.raises(InputError, match="eps"):
        R.translate(f, seeds, target, KEY, eps=-0.5, steps=1, step_size=0.1)
    with pytest.raises(InputError, match="eps"):
        R.sketch_to_image(f, seeds, target, KEY, eps=-0.5, steps=1, step_size=0.1)


@pytest.mark.slow
def test_generation_eager_equals_jit_and_vmap_equals_single_calls(model):
    f, g = model
    target = jnp.asarray([3, 7, 1, 0], jnp.int32)

    def run(key):
        return R.generate(f, g, target, key, steps=5, step_size=0.2, eps=1.0)

    jrun = jax.jit(run)
    np.testing.assert_allclose(run(KEY).x_adv, jrun(KEY).x_adv, atol=1e-5)
    keys = jax.random.split(KEY, 2)
    v = jax.jit(jax.vmap(run))(keys)
    for i in range(2):
        np.testing.assert_allclose(v.x_adv[i], jrun(keys[i]).x_adv, atol=1e-5)
        d = np.linalg.norm(np.asarray(v.delta[i]).reshape(4, -1), axis=1)
        assert np.all(d <= 1.0 + 1e-4)  # eps: within the ball around the seed


# ------------------------------------------------ inpainting, super-resolution, sketches


@pytest.mark.slow
def test_inpainting_fills_the_hole_and_leaves_visible_pixels_close(model, digits):
    f, _ = model
    x, y = digits
    x, y = x[:16], y[:16]
    mask = jnp.zeros((8, 8, 1)).at[2:6, 2:6].set(1.0)
    corrupted = x * (1 - mask) + 0.5 * mask
    r = R.inpaint(f, corrupted, mask, y, KEY, steps=20, step_size=0.1, weight=10.0)
    change = np.asarray(r.x_adv - corrupted)
    hidden = np.linalg.norm((change * np.asarray(mask)).reshape(16, -1), axis=1)
    visible = np.linalg.norm((change * (1 - np.asarray(mask))).reshape(16, -1), axis=1)
    assert np.mean(hidden) > 0.3 and np.all(visible < 0.5 * hidden + 0.05)
    assert float(jnp.min(r.x_adv)) >= 0 and float(jnp.max(r.x_adv)) <= 1
    # weight 0: nothing holds the visible pixels; a larger weight holds them closer.
    r0 = R.inpaint(f, corrupted, mask, y, KEY, steps=20, step_size=0.1, weight=0.0)
    vis0 = np.linalg.norm(
        (np.asarray(r0.x_adv - corrupted) * (1 - np.asarray(mask))).reshape(16, -1), axis=1
    )
    assert np.mean(visible) < np.mean(vis0)
    for bad in (jnp.zeros((8, 7, 1)), jnp.zeros((4, 8, 8, 1)), jnp.zeros((8, 8, 2)), jnp.zeros(8)):
        with pytest.raises(InputError, match="mask"):
            R.inpaint(f, corrupted, bad, y, KEY, steps=1, step_size=0.1)
    with pytest.raises(InputError, match="mask values"):
        R.inpaint(f, corrupted, mask * 2, y, KEY, steps=1, step_size=0.1)
    with pytest.raises(InputError, match="weight"):
        R.inpaint(f, corrupted, mask, y, KEY, steps=1, step_size=0.1, weight=-1.0)


def test_super_resolution_stays_in_its_ball_and_downsamples_to_the_input(digits):
    f = _linear_logits()
    x, y = digits
    x, y = x[:16], y[:16]
    low = R.downsample(x, 2)
    assert low.shape == (16, 4, 4, 1)
    np.testing.assert_allclose(R.downsample(R.upsample(low, 2), 2), low, atol=1e-6)
    eps = 0.8
    r = R.super_resolve(f, low, y, KEY, factor=2, eps=eps, steps=20, step_size=0.1)
    up = R.upsample(low, 2)
    assert r.x_adv.shape == x.shape
    dist = np.linalg.norm(np.asarray(r.x_adv - up).reshape(16, -1), axis=1)
    assert np.all(dist <= eps + 1e-4) and dist.max() > 0.5 * eps  # it moved, inside the ball
    back = np.linalg.norm(np.asarray(R.downsample(r.x_adv, 2) - low).reshape(16, -1), axis=1)
    assert np.all(back <= eps / 2 + 1e-4)
    # The best iterate is classified as y wherever any iterate was (success dominates).
    assert float(jnp.mean(r.success)) >= float(jnp.mean(jnp.argmax(f(up), -1) == y))


# ---------------------------------------------------------------------- saliency


@pytest.mark.slow
def test_input_gradient_known_answer_and_alignment(digits):
    x, y = digits
    x, y = x[:8], y[:8]
    w = jax.random.normal(jax.random.key(5), (64, 10))

    def f(z):
        return z.reshape(z.shape[0], -1) @ w

    # ∇ₓ CE = W (softmax(Wᵀx) − onehot(y)).
    p = jax.nn.softmax(f(x))
    want = (p - jax.nn.one_hot(y, 10)) @ w.T
    g = R.input_gradient(f, x, y)
    np.testing.assert_allclose(g.reshape(8, -1), want, rtol=1e-4, atol=1e-6)
    s = R.saliency_map(f, x, y)
    np.testing.assert_allclose(jnp.max(jnp.abs(s), axis=(1, 2, 3)), 1.0, rtol=1e-6)
    a = R.alignment(g, x)
    assert a.shape == (8,) and bool(jnp.all(jnp.abs(a) <= 1.0 + 1e-6))
    np.testing.assert_allclose(R.alignment(x, x), 1.0, rtol=1e-5)  # |x| = x on [0, 1]
    with pytest.raises(InputError, match="class outside"):
        R.input_gradient(f, x, y.at[0].set(10))
    bad = jax.jit(R.input_gradient, static_argnums=0)(f, x, y.at[0].set(10))
    assert bool(jnp.all(jnp.isnan(bad)))  # traced: poisoned


@pytest.mark.slow
def test_penultimate_features_of_a_trained_model_drive_visualize(digits):
    x, _ = digits
    f = digits_features_fn()
    units = jnp.asarray([0, 5], jnp.int32)
    r = R.visualize_feature(f, x[:2], units, KEY, steps=10, step_size=0.3)
    before = jnp.take_along_axis(R.layer_features(f, x[:2]), units[:, None], 1)[:, 0]
    assert np.all(np.asarray(r.value) >= np.asarray(before))
    with pytest.raises(InputError, match="no layer"):
        R.sensitivity(f, x[:2], units, layer="nope")
