"""Spatial attacks (Engstrom et al. 2019): exhaustive grid and worst-of-k random search over
rotations and translations. The first-order attack is `pgd(..., threat=spatial())`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrobust.attacks.pgd import (
    LogitsFn,
    check_classifier_args,
    classifier_objective,
    label_input_checks,
)
from jaxrobust.errors import InputError, check_int, check_threat
from jaxrobust.losses import Loss, cross_entropy
from jaxrobust.optimize import Result, best_of
from jaxrobust.threat import ThreatModel, example_keys, spatial

Array = jax.Array


def transform_grid(threat: ThreatModel, angles: int = 31, translations: int = 5) -> Array:
    """All (angle, dx, dy) combinations on an even grid over the threat's ranges, (T, 3).

    The default 31 × 5 × 5 = 775 grid is the paper's.
    """
    check_threat(threat)
    if threat.name != "spatial":
        raise InputError(f"grid attacks need a spatial threat model, got {threat.name!r}")
    check_int(angles, "grid sizes: angles", 1)
    check_int(translations, "grid sizes: translations", 1)
    max_angle, max_dx, max_dy = threat.eps
    a = jnp.linspace(-max_angle, max_angle, angles) if angles > 1 else jnp.zeros(1)
    dx = jnp.linspace(-max_dx, max_dx, translations) if translations > 1 else jnp.zeros(1)
    dy = jnp.linspace(-max_dy, max_dy, translations) if translations > 1 else jnp.zeros(1)
    grid = jnp.stack(jnp.meshgrid(a, dx, dy, indexing="ij"), axis=-1)
    return grid.reshape(-1, 3).astype(jnp.float32)


def grid(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    *,
    threat: ThreatModel | None = None,
    angles: int = 31,
    translations: int = 5,
    loss: Loss = cross_entropy,
) -> Result:
    """Try every transform on the grid; per example keep a misclassifying one, else the
    highest-loss one. x: (B, H, W, C) images, y: (B,) labels."""
    threat = spatial() if threat is None else threat
    transforms = transform_grid(threat, angles, translations)
    check_classifier_args(logits_fn, x, y, threat, loss=loss, names=("spatial",), who="grid")
    checks = label_input_checks(logits_fn, x, y)
    batch = x.shape[0]
    return best_of(
        classifier_objective(logits_fn, y, loss=loss),
        x,
        lambda i: jnp.broadcast_to(transforms[i], (batch, 3)),
        transforms.shape[0],
        threat=threat,
        has_aux=True,
        checks=checks,
    )


def worst_of_k(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    key: Array,
    *,
    threat: ThreatModel | None = None,
    k: int = 10,
    loss: Loss = cross_entropy,
) -> Result:
    """k uniformly random transforms per example; keep the worst (the paper's training
    adversary). x: (B, H, W, C), y: (B,)."""
    threat = spatial() if threat is None else threat
    check_threat(threat)
    if threat.name != "spatial":
        raise InputError(f"worst_of_k needs a spatial threat model, got {threat.name!r}")
    check_classifier_args(logits_fn, x, y, threat, key, loss=loss, who="worst_of_k")
    check_int(k, "k", 1)
    checks = label_input_checks(logits_fn, x, y)
    keys = example_keys(key, k)
    return best_of(
        classifier_objective(logits_fn, y, loss=loss),
        x,
        lambda i: threat.init(keys[i], x),
        k,
        threat=threat,
        has_aux=True,
        checks=checks,
    )


def vote(
    logits_fn: LogitsFn,
    threat: ThreatModel | None = None,
    *,
    samples: int = 10,
    soft: bool = False,
):
    """The voting defense of Engstrom et al. (2019) as a randomised model `f(x, key)`.

    Hard (default): the majority over `samples` uniformly random transforms of the input;
    returns log vote frequencies (B, C) (a class without votes gets log 1e-9, finite, so
    `evaluate` accepts the output), so argmax is the majority with ties to the lowest class.
    Its gradient is zero almost everywhere: attack it with gradient-free or grid attacks
    (`evaluate` flags the zero gradients). Soft: the mean log-softmax over the transforms,
    differentiable, for EOT gradient attacks (`evaluate` detects the key argument).
    """
    threat = spatial() if threat is None else threat
    if threat.name != "spatial":
        raise InputError(f"vote needs a spatial threat model, got {threat.name!r}")
    if samples < 1:
        raise InputError(f"vote needs samples >= 1, got {samples}")

    def voted(x: Array, key: Array) -> Array:
        keys = jax.random.split(key, samples)
        logits = jax.vmap(lambda k: logits_fn(threat.apply(x, threat.init(k, x))))(keys)
        if soft:
            return jnp.mean(jax.nn.log_softmax(logits), axis=0)
        num_classes = logits.shape[-1]
        counts = jnp.sum(jax.nn.one_hot(jnp.argmax(logits, -1), num_classes), axis=0)
        return jnp.log(jnp.maximum(counts, 1e-9) / samples)

    return voted
