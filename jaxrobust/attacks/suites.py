"""The attacks `evaluate` knows by name, its suites, and EOT for randomised models.

An attack here is `attack_fn(logits_fn, x, y, key, threat) -> Result`, a pure function
that `evaluate` compiles once per batch shape (ε lives in `threat` and is traced).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp

from jaxrobust.attacks.pgd import fgsm, pgd
from jaxrobust.errors import InputError
from jaxrobust.losses import margin
from jaxrobust.optimize import Result
from jaxrobust.threat import ThreatModel

Array = jax.Array
LogitsFn = Callable[[Array], Array]
AttackFn = Callable[[LogitsFn, Array, Array, Array, ThreatModel], Result]


def _apgd(loss: str, restarts: int = 1) -> AttackFn:
    from jaxrobust.attacks.apgd import apgd

    return lambda f, x, y, k, t: apgd(f, x, y, k, threat=t, steps=100, loss=loss, restarts=restarts)


def _apgd_t(f, x, y, k, t):
    from jaxrobust.attacks.apgd import apgd_targeted

    return apgd_targeted(f, x, y, k, threat=t, steps=100)


def _fab_t(f, x, y, k, t):
    from jaxrobust.attacks.fab import fab_targeted

    return fab_targeted(f, x, y, k, threat=t, steps=100)


def _fab(f, x, y, k, t):
    from jaxrobust.attacks.fab import fab

    return fab(f, x, y, k, threat=t, steps=100, restarts=5)


def _square(f, x, y, k, t):
    from jaxrobust.attacks.square import square

    return square(f, x, y, k, threat=t, queries=5000)


ATTACKS: dict[str, AttackFn] = {
    "apgd-ce": _apgd("ce"),
    "apgd-dlr": _apgd("dlr"),
    "apgd-ce-5": _apgd("ce", restarts=5),
    "apgd-t": _apgd_t,
    "fab": _fab,
    "fab-t": _fab_t,
    "square": _square,
    "pgd": lambda f, x, y, k, t: pgd(f, x, y, k, threat=t, steps=50),
    "pgd-10": lambda f, x, y, k, t: pgd(f, x, y, k, threat=t, steps=10),
    "pgd-margin": lambda f, x, y, k, t: pgd(f, x, y, k, threat=t, steps=50, loss=margin),
    "pgd-100x2": lambda f, x, y, k, t: pgd(f, x, y, k, threat=t, steps=100, restarts=2),
    "fgsm": lambda f, x, y, k, t: fgsm(f, x, y, threat=t),
}
"""Attack names `evaluate` accepts, each `(logits_fn, x, y, key, threat) -> Result`."""

BLACK_BOX = ("square",)
"""The gradient-free attacks of `ATTACKS` (the black-box-stronger check compares them)."""

SUITES: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce-5", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    # For randomised models: the model is wrapped with EOT (expectation over its randomness).
    "rand": ("apgd-ce", "apgd-dlr"),
    "fast": ("apgd-ce", "apgd-t"),
}
"""Named cascades of `ATTACKS` (`standard` is AutoAttack's)."""


def resolve_suite(
    attacks: str | Sequence[str | tuple[str, AttackFn]],
) -> list[tuple[str, AttackFn]]:
    """(name, attack_fn) pairs for a suite name or a list of names and/or pairs."""
    if isinstance(attacks, str):
        if attacks not in SUITES:
            raise InputError(f"unknown suite {attacks!r}; known suites: {', '.join(SUITES)}")
        attacks = SUITES[attacks]
    out = []
    for a in attacks:
        if isinstance(a, tuple):
            out.append(a)
        elif a in ATTACKS:
            out.append((a, ATTACKS[a]))
        else:
            raise InputError(
                f"unknown attack {a!r}; known attacks: {', '.join(ATTACKS)} "
                f"(or pass (name, attack_fn) pairs)"
            )
    if not out:
        raise InputError("give at least one attack")
    return out


def expectation_over_transformation(
    logits_fn: Callable[[Array, Array], Array], key: Array, samples: int = 20
) -> LogitsFn:
    """A deterministic model from a randomised one `logits_fn(x, key)`: the mean of the
    log-softmax over `samples` fixed draws. Cross-entropy is linear in log-probabilities,
    so attacking this model follows the EOT gradient E_k ∇CE(f(x, k), y).

    Returns a `jax.tree_util.Partial` carrying the draws' keys and, when `logits_fn` is a
    Partial itself, its weights: passed to a jitted function they are inputs, so a new
    checkpoint of the same architecture reuses the compiled programs (as in `evaluate`)."""
    keys = jax.random.split(key, samples)
    if isinstance(logits_fn, jax.tree_util.Partial):
        return jax.tree_util.Partial(_eot_logits, logits_fn, keys)
    return jax.tree_util.Partial(partial(_eot_logits, logits_fn), keys)


def _eot_logits(logits_fn: Callable[[Array, Array], Array], keys: Array, x: Array) -> Array:
    """Mean log-softmax of `logits_fn(x, k)` over the keys (samples, ...): (B, num_classes)."""
    return jnp.mean(jax.vmap(lambda k: jax.nn.log_softmax(logits_fn(x, k)))(keys), axis=0)


def is_randomised(logits_fn: Callable) -> bool:
    """True for a model that takes a key: `logits_fn(x, key)` (two required arguments)."""
    try:
        params = inspect.signature(logits_fn).parameters.values()
    except (TypeError, ValueError):
        return False
    required = [
        p
        for p in params
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(required) >= 2
