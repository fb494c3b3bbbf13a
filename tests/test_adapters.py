"""Model adapters: every kind of model becomes a `logits_fn` that attacks run under jit, and a
jitted function taking an adapted model compiles once for all checkpoints of an architecture."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compile_log import lowerings
from flax import nnx

import jaxrobust as jr
from jaxrobust.models import MLP
from jaxrobust.train import TrainState

SHAPE = (8, 8, 1)
EPS = 0.1


def attack(f, x, y, key):
    return jr.pgd(f, x, y, key, threat=jr.linf(EPS), steps=3)


attack_jit = jax.jit(attack)


class Net(nn.Module):  # the README's model: no `train` argument
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(16)(x.reshape(len(x), -1))))


class TinyNNX(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(64, 16, rngs=rngs)
        self.fc2 = nnx.Linear(16, 10, rngs=rngs)

    def __call__(self, x):
        return self.fc2(nnx.relu(self.fc1(x.reshape((x.shape[0], -1)))))


def _haiku_style_apply(params, x):
    return x.reshape(len(x), -1) @ params["w"] + params["b"]


def _haiku_params(key):
    return {"w": jax.random.normal(key, (64, 10)) / 8, "b": jnp.zeros(10)}


def _plain(x):  # a plain batched function with no weights
    h = x.reshape(len(x), -1)
    return jnp.stack([h[:, :6].sum(-1), h[:, 6:].mean(-1) * 9, jnp.sin(h).sum(-1)], -1)


def _per_example(xi):  # one example (8, 8, 1) -> (3,)
    return _plain(xi[None])[0]


def _equinox_mlp(key):
    eqx = pytest.importorskip("equinox")
    # Per-example, as Equinox layers are: (8, 8, 1) -> (64,) -> (10,).
    return eqx.nn.Sequential([eqx.nn.Lambda(jnp.ravel), eqx.nn.MLP(64, 10, 16, 1, key=key)])


def _x_y(n=8):
    x = jax.random.uniform(jax.random.key(0), (n, *SHAPE))
    return x, jnp.arange(n) % 3


# One builder per kind of model: key -> (logits_fn, reference logits function).
def _linen_no_train(key):
    model = Net()
    variables = model.init(key, jnp.zeros((1, *SHAPE)))
    return jr.as_logits_fn(model, variables), lambda x: model.apply(variables, x)


def _linen_with_train(key):
    model = MLP(hidden=(16,))
    variables = model.init(key, jnp.zeros((1, *SHAPE)))
    return jr.as_logits_fn(MLP(hidden=(16,)), variables), (
        lambda x: model.apply(variables, x, train=False)
    )


def _train_state(key):
    state = TrainState.create(MLP(hidden=(16,)), optax.sgd(0.1), key, SHAPE)
    return state.logits_fn(), lambda x: state.apply_fn(state.variables(), x, train=False)


def _nnx(key):
    module = TinyNNX(nnx.Rngs(key))
    return jr.as_logits_fn(module), lambda x: module(x)


def _equinox(key):
    model = _equinox_mlp(key)
    return jr.as_logits_fn(model), jax.vmap(model)


def _haiku(key):
    params = _haiku_params(key)
    return jr.as_logits_fn(_haiku_style_apply, params), lambda x: _haiku_style_apply(params, x)


def _plain_batched(key):
    return jr.as_logits_fn(_plain), _plain


def _plain_per_example(key):
    return jr.as_logits_fn(_per_example, batched=False), jax.vmap(_per_example)


KINDS = {
    "linen_without_train": _linen_no_train,
    "linen": _linen_with_train,
    "train_state": _train_state,
    "nnx": _nnx,
    "equinox_mlp": _equinox,
    "haiku_style": _haiku,
    "plain": _plain_batched,
    "plain_per_example": _plain_per_example,
}
WITH_WEIGHTS = ["linen_without_train", "train_state", "nnx", "equinox_mlp", "haiku_style"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_adapted_models_are_attacked_under_jit(kind):
    f, reference = KINDS[kind](jax.random.key(1))
    x, y = _x_y()
    np.testing.assert_allclose(f(x), reference(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(f)(x), reference(x), rtol=1e-5, atol=1e-5)
    result = attack_jit(f, x, y, jax.random.key(2))
    delta = np.asarray(result.x_adv - x)
    assert np.abs(delta).max() <= EPS + 1e-6 and np.abs(delta).max() > 0
    # The attack raised the loss over the clean inputs (it used the model's gradients).
    clean = np.asarray(jr.cross_entropy(reference(x), y))
    assert np.all(np.asarray(result.value) >= clean - 1e-5)
    assert np.any(np.asarray(result.value) > clean + 1e-3)


@pytest.mark.parametrize("kind", WITH_WEIGHTS)
def test_jitted_function_compiles_once_over_four_checkpoints(kind):
    """Four checkpoints (new weights, new module objects) through one jitted attack: one
    compilation, and each result is that checkpoint's own (the weights are inputs)."""
    x, y = _x_y()
    key = jax.random.key(3)

    @jax.jit
    def attack_fresh(f, x, y, key):  # a new function: nothing compiled by other tests
        return attack(f, x, y, key)

    with lowerings("attack_fresh") as count:
        results = []
        for seed in range(4):
            f, reference = KINDS[kind](jax.random.key(10 + seed))
            results.append(np.asarray(attack_fresh(f, x, y, key).x_adv))
            np.testing.assert_allclose(f(x), reference(x), rtol=1e-5, atol=1e-5)
    assert count == [1]
    # Each checkpoint's own weights were used (they are inputs, not stale constants).
    assert all(not np.allclose(results[0], r) for r in results[1:])


def test_train_state_logits_fn_is_the_same_pytree_each_call():
    state = TrainState.create(MLP(hidden=(16,)), optax.sgd(0.1), jax.random.key(0), SHAPE)
    a, b = state.logits_fn(), state.logits_fn()
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert hash(jax.tree.structure(a)) == hash(jax.tree.structure(b))


def test_features_fn_has_a_stable_structure():
    model = MLP(hidden=(16,))
    v1, v2 = (model.init(jax.random.key(i), jnp.zeros((1, *SHAPE))) for i in range(2))
    f1, f2 = jr.as_features_fn(MLP(hidden=(16,)), v1), jr.as_features_fn(model, v2)
    assert jax.tree.structure(f1) == jax.tree.structure(f2)
    x, _ = _x_y(2)
    assert jax.jit(lambda f, x: f(x))(f2, x)["features"].shape == (2, 16)
    # The README's Net has no `train` argument and sows nothing: the logits still come out.
    net_vars = Net().init(jax.random.key(0), x)
    out = jr.as_features_fn(Net(), net_vars)(x)
    np.testing.assert_allclose(out["logits"], Net().apply(net_vars, x), rtol=1e-6)


def test_mode_arguments_are_detected():
    class Drop(nn.Module):  # flax's convention for dropout: `deterministic`
        @nn.compact
        def __call__(self, x, deterministic: bool = False):
            h = nn.Dense(10)(x.reshape(len(x), -1))
            return nn.Dropout(0.5, deterministic=deterministic)(h)

    x, _ = _x_y(4)
    variables = Drop().init(jax.random.key(0), x, deterministic=True)
    f = jr.as_logits_fn(Drop(), variables)  # inference: no dropout, so no rng needed
    np.testing.assert_allclose(f(x), Drop().apply(variables, x, deterministic=True), rtol=1e-6)


def test_per_example_and_batched_are_declared_or_detected():
    eqx = pytest.importorskip("equinox")

    class BatchedLinear(eqx.Module):  # an Equinox module that takes whole batches
        w: jax.Array

        def __call__(self, x):
            return x.reshape(len(x), -1) @ self.w

    model = BatchedLinear(jnp.ones((64, 3)))
    x, _ = _x_y(5)
    f = jr.as_logits_fn(model, batched=True)
    np.testing.assert_allclose(jax.jit(f)(x), model(x), rtol=1e-6)
    # Left to detection, it is taken for per-example (Equinox's convention) and fails
    # with an error that says what to do, also under jit.
    with pytest.raises(jr.InputError, match="batched=True"):
        jax.jit(jr.as_logits_fn(model))(x)
    # A per-example function that does not return (num_classes,) per example.
    with pytest.raises(jr.InputError, match=r"returned shape \(\)"):
        jr.as_logits_fn(lambda xi: xi.sum(), batched=False)(x)


def test_adapter_errors_name_the_problem():
    model = _equinox_mlp(jax.random.key(0))
    with pytest.raises(jr.InputError, match="carries its own weights"):
        jr.as_logits_fn(model, {"params": {}})
    with pytest.raises(jr.InputError, match="cannot make a logits function"):
        jr.as_logits_fn("resnet")
    with pytest.raises(jr.InputError, match="variables"):
        jr.as_logits_fn(Net())


def test_unhashable_module_still_works_with_a_warning():
    class Scaled(nn.Module):
        scale: np.ndarray  # an array field: the module cannot be hashed

        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x.reshape(len(x), -1)) * self.scale

    x, _ = _x_y(2)
    scale = np.array([1.0, 2.0, 3.0], np.float32)
    variables = Scaled(scale).init(jax.random.key(0), x)
    with pytest.warns(UserWarning, match="cannot be hashed"):
        f = jr.as_logits_fn(Scaled(scale), variables)
    out = jax.jit(lambda f, x: f(x))(f, x)
    np.testing.assert_allclose(out, Scaled(scale).apply(variables, x), rtol=1e-6)


def test_already_adapted_models_are_returned_unchanged():
    f, _ = _linen_no_train(jax.random.key(0))
    assert jr.as_logits_fn(f) is f
    plain = jr.as_logits_fn(_plain)
    assert jr.as_logits_fn(plain) is plain
