"""A small trained digits model shared by the construction and inversion tests
(test_features.py, test_inversion.py): jaxrobust's MLP (which sows its penultimate
features), trained full-batch in a few seconds to ~97% test accuracy."""

from __future__ import annotations

import functools

import jax
import optax

from jaxrobust.data import get_info, load_split
from jaxrobust.models import MLP, as_features_fn, as_logits_fn


@functools.cache
def digits_mlp(hidden: tuple[int, ...] = (64,), steps: int = 300):
    """(module, variables) of an MLP trained with Adam on the whole digits training split."""
    x, y = load_split("digits", "train")
    info = get_info("digits")
    net = MLP(hidden=hidden, mean=info.mean, std=info.std)
    variables = net.init(jax.random.key(0), x[:1])
    tx = optax.adam(3e-3)

    @jax.jit
    def step(v, s):
        def loss(v):
            logits = net.apply(v, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        u, s = tx.update(jax.grad(loss)(v), s, v)
        return optax.apply_updates(v, u), s

    s = tx.init(variables)
    for _ in range(steps):
        variables, s = step(variables, s)
    return net, variables


def digits_logits_fn():
    net, variables = digits_mlp()
    return as_logits_fn(net, variables)


def digits_features_fn():
    net, variables = digits_mlp()
    return as_features_fn(net, variables)
