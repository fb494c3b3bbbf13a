"""Targeted clean-label poisoning of one test prediction: feature collision (Shafahi et al.
2018, "Poison Frogs!").

A poison p starts at a base image b of the base class (optionally watermarked with the
target: b + opacity·(t − b)) and is optimised so that its representation collides with
the target's while it stays close to b:

    minimise  ‖φ(p) − φ(t)‖² + β·‖p − b‖²   over p in [0, 1]^d,

with the library's engine (`jaxrobust.optimize`, minimising, Adam steps on the normalised
gradient over `unconstrained` inputs). Labelled with the base class (a correct-looking
label), the poison drags the decision boundary of a model retrained on the representation
(the transfer-learning setting of the paper: a frozen feature extractor, retrained last
layer) over the target, which is then classified as the base class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrobust.errors import (
    InputError,
    check_array,
    check_int,
    check_key,
    check_number,
    check_range,
)

Array = jax.Array


class Collision(NamedTuple):
    """Feature-collision poisons.

    Attributes:
      x: (P, H, W, C) poisons in [0, 1].
      feature_distance: (P,) ‖φ(p) − φ(t)‖₂ at the end.
      start_feature_distance: (P,) the same for the start (the watermarked base).
      input_distance: (P,) ‖p − b‖₂.
    """

    x: Array
    feature_distance: Array
    start_feature_distance: Array
    input_distance: Array


def feature_collision(
    features_fn: Callable[[Array], Array],
    target_x: Array,
    base_x: Array,
    key: Array,
    *,
    beta: float = 0.1,
    steps: int = 200,
    learning_rate: float = 0.01,
    opacity: float = 0.0,
) -> Collision:
    """Craft one poison per (target, base) pair.

    Args:
      features_fn: x (B, H, W, C) -> representations (B, D) (e.g. the penultimate layer,
        `lambda x: as_features_fn(model, variables)(x)["features"]`).
      target_x: (P, H, W, C) target images in [0, 1] (repeat a target to give it several
        poisons).
      base_x: (P, H, W, C) base images in [0, 1], one per row of `target_x`.
      key: PRNG key (the engine's; the start is deterministic).
      beta: weight of the input-space proximity term β ≥ 0.
      steps: optimisation steps.
      learning_rate: Adam's step size on the ℓ2-normalised gradient, in input units.
      opacity: watermark of the start, b + opacity·(t − b), in [0, 1).

    Returns:
      `Collision(x, feature_distance, start_feature_distance, input_distance)`.

    Raises:
      InputError: mismatched shapes, images outside [0, 1], β < 0, opacity outside
        [0, 1), a features_fn that does not return (B, D).
    """
    from jaxrobust.optimize import optimize
    from jaxrobust.threat import unconstrained

    check_array(target_x, "target_x")
    check_array(base_x, "base_x")
    if np.shape(target_x) != np.shape(base_x):
        raise InputError(
            f"target_x {np.shape(target_x)} and base_x {np.shape(base_x)} must have the "
            "same shape (one base per target row)"
        )
    check_key(key)
    check_number(beta, "beta", 0.0)
    check_number(opacity, "opacity", 0.0, 1.0, hi_open=True)
    check_number(learning_rate, "learning_rate", 0.0, lo_open=True)
    check_int(steps, "steps", 0)
    check_range(target_x, 0.0, 1.0, "target_x")
    check_range(base_x, 0.0, 1.0, "base_x")
    t, b = jnp.asarray(target_x, jnp.float32), jnp.asarray(base_x, jnp.float32)
    phi_t = jax.lax.stop_gradient(features_fn(t))
    if phi_t.ndim != 2 or phi_t.shape[0] != t.shape[0]:
        raise InputError(f"features_fn must return (B, D) representations, got {phi_t.shape}")
    axes = tuple(range(1, t.ndim))

    def feature_distance(p):
        return jnp.sqrt(jnp.sum((features_fn(p) - phi_t) ** 2, -1))

    def objective(p):
        return jnp.sum((features_fn(p) - phi_t) ** 2, -1) + beta * jnp.sum((p - b) ** 2, axes)

    start = b + opacity * (t - b)
    res = optimize(
        objective,
        start,
        key,
        threat=unconstrained(step_norm="l2"),
        steps=steps,
        optimizer=optax.adam(learning_rate),
        random_start=False,
        maximize=False,
    )
    p = res.x_adv
    return Collision(
        p,
        feature_distance(p),
        feature_distance(start),
        jnp.sqrt(jnp.sum((p - b) ** 2, axes)),
    )


def collision_targets(y: Any, num_classes: int, key: Array) -> Array:
    """A base class for each target label (P,): uniform over the other classes."""
    y = jnp.asarray(y)
    check_int(num_classes, "num_classes", 2)
    shift = jax.random.randint(key, y.shape, 1, num_classes)
    return (y + shift) % num_classes
