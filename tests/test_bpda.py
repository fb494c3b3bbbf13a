"""BPDA: straight-through models keep the forward pass and see through masking operations;
transfer attacks count success on the target only."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.tree_util import Partial

import jaxrobust as jr
from jaxrobust.attacks.bpda import bpda, distill, masking_operations, straight_through, transfer
from jaxrobust.data import load_split


def _mlp(w, x):
    """A tiny MLP carrying its weights: (B, 64) -> (B, 10)."""
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ w["w1"] + w["b1"])
    return h @ w["w2"] + w["b2"]


def _quantise(x):
    return jnp.round(x * 255) / 255


def _masked_by_stop_gradient(w, x):
    return _mlp(w, jax.lax.stop_gradient(x))


def _masked_by_rounding(w, x):
    return _mlp(w, jnp.round(x * 4) / 4)  # coarse: 2 bits, a strong masking defence


def _masked_by_uint8(w, x):
    return _mlp(w, (x * 255).astype(jnp.uint8).astype(jnp.float32) / 255)


@pytest.fixture(scope="module")
def digits_mlp():
    """An MLP trained briefly on digits (~95% test accuracy) and 64 test examples."""
    x, y = load_split("digits", "train")
    x = x.reshape(len(x), -1)
    k1, k2 = jax.random.split(jax.random.key(0))
    w = {
        "w1": jax.random.normal(k1, (64, 32)) / 8,
        "b1": jnp.zeros(32),
        "w2": jax.random.normal(k2, (32, 10)) / 6,
        "b2": jnp.zeros(10),
    }
    tx = optax.adam(1e-2)

    @jax.jit
    def step(w, s):
        g = jax.grad(
            lambda w: optax.softmax_cross_entropy_with_integer_labels(_mlp(w, x), y).mean()
        )(w)
        u, s = tx.update(g, s, w)
        return optax.apply_updates(w, u), s

    s = tx.init(w)
    for _ in range(150):
        w, s = step(w, s)
    xt, yt = load_split("digits", "test", limit=64)
    return w, jnp.asarray(xt.reshape(len(xt), -1)), jnp.asarray(yt)


def _g(x):
    """A smooth scalar function with a gradient that differs per coordinate."""
    return jnp.sum(jnp.sin(3 * x) * jnp.arange(1.0, x.shape[-1] + 1))


X = jnp.linspace(0.03, 0.97, 7)


@pytest.mark.parametrize(
    "name, quantiser",
    [
        ("stop_gradient", jax.lax.stop_gradient),
        ("round", _quantise),
        ("round_decimals", lambda x: jnp.round(x, 1)),
        ("floor_in_jit", jax.jit(lambda x: jnp.floor(x * 8) / 8)),
        ("ceil", lambda x: jnp.ceil(x * 8) / 8),
        ("trunc", lambda x: jnp.trunc(x * 8) / 8),
        ("sign", lambda x: jnp.sign(x - 0.5)),
        ("uint8_cast", lambda x: (x * 255).astype(jnp.uint8).astype(jnp.float32) / 255),
        ("in_scan", lambda x: jax.lax.scan(lambda c, z: (c, jnp.round(z * 4) / 4), 0.0, x)[1]),
        ("in_cond", lambda x: jax.lax.cond(x[0] < 2, lambda z: jnp.floor(z * 4) / 4, jnp.abs, x)),
        ("in_fori_loop", lambda x: jax.lax.fori_loop(0, 2, lambda i, z: jnp.round(z * 4) / 4, x)),
        ("in_checkpoint", jax.checkpoint(lambda x: jnp.round(x * 4) / 4)),
        ("cast_in_jit", lambda x: jax.jit(lambda z: (z * 255).astype(jnp.uint8))(x) / 255.0),
    ],
)
def test_straight_through_sees_through_a_quantiser(name, quantiser):
    """f = g ∘ q: same values, and the gradient is g's gradient at q(x) (q's is identity)."""
    f = lambda x: _g(quantiser(x))  # noqa: E731
    st = straight_through(f)
    assert masking_operations(f, X)  # there is something to see through
    assert np.asarray(f(X)) == np.asarray(st(X))  # bit-identical forward
    assert not np.any(jax.grad(f)(X))  # the original gradient is masked
    want = jax.grad(_g)(quantiser(X))
    np.testing.assert_allclose(jax.grad(st)(X), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.grad(st))(X), want, rtol=1e-6, atol=1e-6)
    # Forward mode sees through as well.
    _, tangent = jax.jvp(st, (X,), (jnp.ones_like(X),))
    np.testing.assert_allclose(tangent, want.sum(), rtol=1e-5)


_QUANTISERS = {"round": jnp.round, "floor": jnp.floor, "ceil": jnp.ceil, "sign": jnp.sign}


@settings(max_examples=25, deadline=None)
@given(
    x=hnp.arrays(np.float32, (7,), elements=st.floats(-2, 2, width=32)),
    op=st.sampled_from(sorted(_QUANTISERS)),
    levels=st.integers(1, 255),
)
def test_straight_through_of_any_quantiser_is_exact_forward_and_identity_backward(x, op, levels):
    """Any input, any quantisation step: bit-identical values; the gradient is g's at the
    quantised point (tiny vectors, jitted once per quantiser; levels and x are traced)."""
    st_grad, plain, want = _quantiser_checks(op)(jnp.asarray(x), jnp.float32(levels))
    assert np.asarray(plain[0]) == np.asarray(plain[1])
    np.testing.assert_allclose(st_grad, want, rtol=1e-5, atol=1e-5)


@functools.cache
def _quantiser_checks(op):
    q = _QUANTISERS[op]

    @jax.jit
    def checks(x, levels):
        f = lambda z: _g(q(z * levels) / levels)  # noqa: E731
        st = straight_through(f)
        return jax.grad(st)(x), (f(x), st(x)), jax.grad(_g)(q(x * levels) / levels)

    return checks


def test_straight_through_in_a_while_loop_forward_mode():
    """lax.while_loop has no reverse mode; forward mode sees through its body."""

    def f(x):
        body = lambda c: (c[0] + 1, jnp.round(c[1] * 4) / 4)  # noqa: E731
        return _g(jax.lax.while_loop(lambda c: c[0] < 2, body, (0, x))[1])

    st = straight_through(f)
    assert np.asarray(f(X)) == np.asarray(st(X))
    _, tangent = jax.jvp(st, (X,), (jnp.ones_like(X),))
    np.testing.assert_allclose(tangent, jax.grad(_g)(jnp.round(X * 4) / 4).sum(), rtol=1e-5)


def test_a_model_without_masking_is_unchanged(digits_mlp):
    """No masking operation: values and gradients are the original model's, bit for bit,
    also for a model that calls log_softmax (whose stabilising stop_gradient is JAX's)."""
    w, x, y = digits_mlp
    model = Partial(lambda w, z: jax.nn.log_softmax(_mlp(w, z)), w)
    st = straight_through(model)
    assert masking_operations(model, x) == {}
    loss = lambda m: lambda z: optax.softmax_cross_entropy_with_integer_labels(m(z), y).sum()  # noqa: E731
    assert np.array_equal(st(x), model(x))
    assert np.array_equal(jax.grad(loss(st))(x), jax.grad(loss(model))(x))
    assert np.array_equal(jax.jit(jax.grad(loss(st)))(x), jax.jit(jax.grad(loss(model)))(x))


def test_custom_derivatives_and_callbacks_are_left_alone():
    """A function with its own derivative rule keeps it (here: relu's rule and a zero-gradient
    custom_vjp); callbacks are counted as what BPDA cannot see through."""

    @jax.custom_vjp
    def opaque(x):
        return jnp.round(x * 4) / 4

    opaque.defvjp(lambda x: (opaque(x), None), lambda _, ct: (jnp.zeros_like(ct),))
    f = lambda x: _g(jax.nn.relu(x - 0.5) + opaque(x))  # noqa: E731
    assert masking_operations(f, X) == {}
    st = straight_through(f)
    assert np.array_equal(jax.grad(st)(X), jax.grad(f)(X))
    cb = lambda x: jax.pure_callback(np.round, jax.ShapeDtypeStruct(x.shape, x.dtype), x)  # noqa: E731
    assert masking_operations(cb, X) == {"callback": 1}


def test_gradient_of_a_masked_mlp_is_the_unmasked_gradient(digits_mlp):
    """stop_gradient on the input: the straight-through gradient equals the unmasked
    model's; input rounding: the unmasked gradient at the rounded input."""
    w, x, y = digits_mlp
    ce = lambda f: lambda z: optax.softmax_cross_entropy_with_integer_labels(f(z), y).sum()  # noqa: E731
    st = straight_through(Partial(_masked_by_stop_gradient, w))
    np.testing.assert_allclose(jax.grad(ce(st))(x), jax.grad(ce(Partial(_mlp, w)))(x), atol=1e-6)
    st = straight_through(Partial(_masked_by_uint8, w))
    xq = (x * 255).astype(jnp.uint8).astype(jnp.float32) / 255
    np.testing.assert_allclose(jax.grad(ce(st))(x), jax.grad(ce(Partial(_mlp, w)))(xq), atol=1e-6)


@pytest.mark.parametrize("masked", [_masked_by_stop_gradient, _masked_by_rounding])
def test_pgd_through_straight_through_breaks_as_many_points(digits_mlp, masked):
    """PGD on the masked model is blind; BPDA (PGD on straight_through, success judged on
    the masked model) breaks as many points as PGD on the unmasked model."""
    w, x, y = digits_mlp
    threat, key = jr.linf(0.2), jax.random.key(3)
    attack = lambda f, x, y, k, t: jr.pgd(f, x, y, k, threat=t, steps=20)  # noqa: E731
    target = Partial(masked, w)
    clean = np.asarray(jnp.argmax(target(x), -1) == y)
    unmasked = attack(Partial(_mlp, w), x, y, key, threat)
    blind = attack(target, x, y, key, threat)
    seen = bpda(attack)(target, x, y, key, threat)
    # Success is the masked model's verdict on the returned examples.
    assert np.array_equal(seen.success, jnp.argmax(target(seen.x_adv), -1) != y)
    n_unmasked, n_blind, n_bpda = (int(np.sum(r.success & clean)) for r in (unmasked, blind, seen))
    assert n_blind < n_unmasked / 2
    assert n_bpda >= n_unmasked - 1
    if masked is _masked_by_stop_gradient:  # the very same optimisation
        assert np.array_equal(seen.x_adv, unmasked.x_adv)


def test_works_under_jit_and_vmap(digits_mlp):
    w, x, y = digits_mlp
    st = straight_through(Partial(_masked_by_rounding, w))

    def per_example(m, z, t):
        return optax.softmax_cross_entropy_with_integer_labels(m(z[None]), t[None])[0]

    grads = jax.vmap(jax.grad(per_example, argnums=1), (None, 0, 0))(st, x[:8], y[:8])
    batch = jax.grad(lambda z: optax.softmax_cross_entropy_with_integer_labels(st(z), y[:8]).sum())(
        x[:8]
    )
    np.testing.assert_allclose(grads, batch, rtol=1e-5, atol=1e-6)
    jitted = jax.jit(jax.vmap(jax.grad(per_example, argnums=1), (None, 0, 0)))(st, x[:8], y[:8])
    np.testing.assert_allclose(jitted, batch, rtol=1e-5, atol=1e-6)
    assert np.abs(batch).sum() > 0


def test_a_carried_model_compiles_once_for_two_weight_sets(digits_mlp):
    """straight_through(Partial) is a Partial over the same leaves: new weights reuse the
    compiled program; a plain callable wrapped twice gives equal tree structures."""
    w, x, _ = digits_mlp
    traces = []

    @jax.jit
    def grad_of(model, z):
        traces.append(1)
        return jax.grad(lambda z: model(z).sum())(z)

    for scale in (1.0, 0.5):
        ws = jax.tree.map(lambda a: a * scale, w)  # noqa: B023
        st = straight_through(Partial(_masked_by_rounding, ws))
        assert len(jax.tree.leaves(st)) == len(jax.tree.leaves(ws))
        want = jax.grad(lambda z: _mlp(ws, z).sum())(jnp.round(x * 4) / 4)  # noqa: B023
        np.testing.assert_allclose(grad_of(st, x), want, rtol=1e-5, atol=1e-6)
    assert len(traces) == 1
    f = lambda z: _g(jnp.round(z))  # noqa: E731
    assert jax.tree.structure(straight_through(f)) == jax.tree.structure(straight_through(f))


def test_straight_through_of_a_flax_module():
    class Quantised(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = jnp.round(x * 16) / 16
            return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))

    x = jax.random.uniform(jax.random.key(0), (4, 5))
    variables = Quantised().init(jax.random.key(1), x)
    model = jr.as_logits_fn(Quantised(), variables)
    st = straight_through(model)
    assert np.array_equal(st(x), model(x))
    g = jax.grad(lambda z: st(z).sum())(x)
    assert np.abs(g).sum() > 0 and not np.any(jax.grad(lambda z: model(z).sum())(x))


@pytest.mark.parametrize("name", ["mlp"])
def test_registry_models_and_losses_have_nothing_to_see_through(name):
    x, y = jnp.zeros((2, 8, 8, 1)), jnp.zeros(2, jnp.int32)
    model = jr.create_model(name, 10)
    f = jr.as_logits_fn(model, jr.init_model(model, jax.random.key(0), x.shape[1:]))
    assert masking_operations(lambda z: jr.cross_entropy(f(z), y) + jr.dlr(f(z), y), x) == {}


def _noisy_quantised(w, x, key):
    """A randomised, quantising model: logits of round(8 (x + noise)) / 8 under a linear map."""
    return jnp.round((x + 0.05 * jax.random.normal(key, x.shape)) * 8) / 8 @ w


def test_straight_through_of_an_eot_model():
    """EOT then straight-through (randomness and quantisation, the classic combination): the
    gradient is the mean over the draws of the unquantised model's at the quantised input."""
    w = jax.random.normal(jax.random.key(0), (4, 3))
    x = jax.random.uniform(jax.random.key(1), (5, 4))
    key = jax.random.key(2)
    eot = jr.attacks.expectation_over_transformation(Partial(_noisy_quantised, w), key, 4)
    st = straight_through(eot)
    assert masking_operations(eot, x) == {"round": 1}
    assert np.array_equal(st(x), eot(x))

    def first_log_prob(z):
        return jax.nn.log_softmax(z @ w)[:, 0].sum()

    def quantised(k):
        return jnp.round((x + 0.05 * jax.random.normal(k, x.shape)) * 8) / 8

    want = np.mean([jax.grad(first_log_prob)(quantised(k)) for k in jax.random.split(key, 4)], 0)
    got = jax.jit(lambda m, z: jax.grad(lambda u: m(u)[:, 0].sum())(z))(st, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_transfer_counts_success_on_the_target_only(digits_mlp):
    """Examples crafted on a surrogate count only where the target is fooled: a target that
    always answers the label is never broken, whatever the surrogate's success."""
    w, x, y = digits_mlp
    attack = lambda f, x, y, k, t: jr.pgd(f, x, y, k, threat=t, steps=10)  # noqa: E731
    oracle = lambda z: jax.nn.one_hot(y, 10) * 100.0  # noqa: E731
    threat, key = jr.linf(0.3), jax.random.key(0)
    on_surrogate = attack(Partial(_mlp, w), x, y, key, threat)
    assert on_surrogate.success.mean() > 0.5
    r = transfer(attack, Partial(_mlp, w))(oracle, x, y, key, threat)
    assert not np.any(r.success)
    assert np.array_equal(r.x_adv, on_surrogate.x_adv)
    np.testing.assert_allclose(
        r.value, optax.softmax_cross_entropy_with_integer_labels(oracle(x), y)
    )
    # From a surrogate to the masked copy of itself, the transfer is perfect.
    target = Partial(_masked_by_stop_gradient, w)
    run = jax.jit(lambda m, x, y, k: transfer(attack, Partial(_mlp, w))(m, x, y, k, threat))
    r = run(target, x, y, key)
    assert np.array_equal(r.success, on_surrogate.success)


def test_a_distilled_surrogate_attacks_a_host_callback_model(digits_mlp):
    """A model behind a host callback has no gradient at all (and nothing to see through):
    a surrogate distilled from its outputs transfers nearly all of a white-box attack."""
    w, x, y = digits_mlp
    wn = jax.tree.map(np.asarray, w)

    def host(z):
        h = np.tanh(z.reshape(len(z), -1) @ wn["w1"] + wn["b1"])
        return (h @ wn["w2"] + wn["b2"]).astype(np.float32)

    def target(z):
        return jax.pure_callback(host, jax.ShapeDtypeStruct((z.shape[0], 10), jnp.float32), z)

    assert masking_operations(target, x) == {"callback": 1}
    threat, key = jr.linf(0.2), jax.random.key(3)
    attack = lambda f, x, y, k, t: jr.pgd(f, x, y, k, threat=t, steps=10)  # noqa: E731
    train = load_split("digits", "train")[0]
    distilled = distill(
        target, train.reshape(len(train), -1), jax.random.key(1), threat=threat,
        model=jr.models.MLP(hidden=(64,)), steps=200,
    )  # fmt: skip
    assert isinstance(distilled.logits_fn, Partial) and distilled.agreement > 0.85
    clean = np.asarray(jnp.argmax(target(x), -1) == y)
    white = attack(Partial(_mlp, w), x, y, key, threat)
    r = transfer(attack, distilled.logits_fn)(target, x, y, key, threat)
    assert np.array_equal(r.success, jnp.argmax(target(r.x_adv), -1) != y)
    assert np.sum(r.success & clean) >= 0.75 * np.sum(white.success & clean) > 0


def test_bad_arguments(digits_mlp):
    w, x, _ = digits_mlp
    model = Partial(_mlp, w)
    with pytest.raises(jr.InputError, match="needs a model"):
        straight_through(w)
    with pytest.raises(jr.InputError, match="batch of inputs"):
        distill(model, x[:0], jax.random.key(0))
    with pytest.raises(jr.InputError, match="steps and batch_size"):
        distill(model, x, jax.random.key(0), steps=0)


def test_bpda_in_the_evaluate_cascade(digits_mlp):
    """`bpda(attack)` is a cascade AttackFn: on the stop_gradient-masked model it reports the
    unmasked model's robust accuracy, where the plain attack reports (almost) clean accuracy."""
    from jaxrobust.attacks.suites import ATTACKS

    w, x, y = digits_mlp
    kw = dict(eps=0.2, batch_size=32, checks=False)
    pgd10 = ATTACKS["pgd-10"]
    masked = Partial(lambda w, z: jax.lax.stop_gradient(_mlp(w, z)), w)
    unmasked = jr.evaluate(Partial(_mlp, w), x, y, jax.random.key(0), attacks=[("p", pgd10)], **kw)
    blind = jr.evaluate(masked, x, y, jax.random.key(0), attacks=[("p", pgd10)], **kw)
    seen = jr.evaluate(masked, x, y, jax.random.key(0), attacks=[("b", bpda(pgd10))], **kw)
    assert seen.robust_accuracy == unmasked.robust_accuracy
    assert blind.robust_accuracy[0] > unmasked.robust_accuracy[0] + 0.2
