"""Steering a representation: interpolation, feature visualisation and manipulation, and
feature sensitivity (Engstrom et al. 2019, "Adversarial robustness as a prior for learned
representations").

All take `features_fn(x) -> {name: (B, ...)}` (`jaxrobust.models.as_features_fn`) or a plain
`features_fn(x) -> (B, ...)` and a `layer` name ("features" is the penultimate layer of every
jaxrobust model), and run on the `jaxrobust.optimize` engine with normalised ℓ2 steps (each
step moves the whole example by `step_size`, input units). Pure, jittable and vmappable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.errors import (
    Check,
    InputError,
    check_array,
    check_callable,
    check_eps,
    check_int,
    check_key,
    eval_shape_or_name,
    index_checks,
)
from jaxrobust.optimize import Result, StepSize, optimize
from jaxrobust.represent.inversion import FeaturesFn, invert, layer_features
from jaxrobust.threat import l2, unconstrained

Array = jax.Array


def interpolate(
    features_fn: FeaturesFn,
    x_a: Array,
    x_b: Array,
    key: Array,
    *,
    num: int,
    steps: int,
    step_size: StepSize,
    layer: str = "features",
    lo: float = 0.0,
    hi: float = 1.0,
) -> Result:
    """Interpolate between inputs x_a and x_b (B, ...) through the representation.

    For α_j = j/(num − 1), j = 0..num−1, invert the features (1 − α)·φ(x_a) + α·φ(x_b) of
    `layer` (`invert`, relative error, no ball) starting from the pixel interpolation
    (1 − α)·x_a + α·x_b. The endpoints are x_a and x_b exactly (their start already matches
    the target: feature error 0, which no step improves on).

    Returns:
      `Result` whose fields have a leading axis of size `num`: x_adv (num, B, ...) the
      interpolants, delta their change from the pixel interpolation, value (num, B) the
      relative feature error, success all False.
    Raises:
      InputError: x_a and x_b of different shapes, num < 2, a missing layer.
    """
    check_callable(features_fn, "features_fn")
    check_array(x_a, "x_a")
    check_array(x_b, "x_b")
    check_int(num, "num", 2)
    if np.shape(x_a) != np.shape(x_b):
        raise InputError(f"x_a {np.shape(x_a)} and x_b {np.shape(x_b)} must have the same shape")
    b = x_a.shape[0]
    alpha = jnp.linspace(0.0, 1.0, num)
    fa = layer_features(features_fn, x_a, layer)
    fb = layer_features(features_fn, x_b, layer)
    a_feat = alpha[:, None, None]
    target = ((1 - a_feat) * fa[None] + a_feat * fb[None]).reshape(num * b, -1)
    a_img = alpha.reshape((num,) + (1,) * x_a.ndim)
    start = ((1 - a_img) * x_a[None] + a_img * x_b[None]).reshape((num * b, *x_a.shape[1:]))
    # Exact endpoints: the pixel mix at α = 0, 1 is x_a / x_b up to float rounding.
    start = start.at[:b].set(x_a).at[-b:].set(x_b)
    r = invert(
        features_fn, target, start, key, steps=steps, step_size=step_size, layer=layer, lo=lo, hi=hi
    )
    return jax.tree.map(lambda v: v.reshape((num, b, *v.shape[1:])), r)


def _component_checks(component: Array, dim: int, batch: int) -> list[Check]:
    return index_checks(component, dim, batch, "component", "the layer's size")


def visualize_feature(
    features_fn: FeaturesFn,
    x_start: Array,
    component: Array,
    key: Array,
    *,
    steps: int,
    step_size: StepSize,
    eps: float | Array | None = None,
    layer: str = "features",
    lo: float = 0.0,
    hi: float = 1.0,
) -> Result:
    """Feature visualisation: maximise one component φ_k(x) of `layer`, per example.

    From `x_start` (noise, or an image), `steps` normalised ℓ2 ascent steps on
    φ_{component[i]}(x_i), inside the box [lo, hi] and (with eps) the ℓ2 ball of radius eps
    around x_start. With an image and a small eps this is *feature manipulation*
    (`add_feature`).

    Args:
      component: (B,) int, the unit of the flattened layer to maximise for each example.
    Returns:
      `Result`: x_adv (B, ...) the best iterate (highest activation), value (B,) the
      activation there (feature units), success all False.
    Raises:
      InputError: a component outside [0, D), eps < 0, a missing layer, x_start outside
        the box or non-finite.
    """
    check_callable(features_fn, "features_fn")
    check_array(x_start, "x_start")
    check_key(key)
    check_int(steps, "steps", 0)
    if x_start.ndim < 1 or x_start.shape[0] == 0:
        raise InputError(f"x_start must be a non-empty batch, got shape {x_start.shape}")
    if eps is None:
        threat = unconstrained(lo=lo, hi=hi, step_norm="l2")
    else:
        check_eps(eps)
        threat = l2(eps, lo=lo, hi=hi)
    shape = eval_shape_or_name(
        lambda: layer_features(features_fn, x_start, layer),
        f"the features function failed on x_start of shape {tuple(x_start.shape)}",
    )
    checks = _component_checks(component, shape.shape[1], x_start.shape[0])
    idx = jnp.asarray(component)[:, None]

    def objective(x):
        phi = layer_features(features_fn, x, layer)
        return jnp.take_along_axis(phi, idx, axis=1)[:, 0]

    return optimize(
        objective,
        x_start,
        key,
        threat=threat,
        steps=steps,
        step_size=step_size,
        random_start=False,
        keep_best=True,
        maximize=True,
        checks=checks,
    )


def add_feature(
    features_fn: FeaturesFn,
    x: Array,
    component: Array,
    key: Array,
    *,
    eps: float | Array,
    steps: int,
    step_size: StepSize,
    layer: str = "features",
) -> Result:
    """Feature manipulation: add feature `component` (B,) to images x, i.e. maximise it in
    the ℓ2 ball of radius eps around x (`visualize_feature` from the image, with a ball)."""
    check_eps(eps)
    return visualize_feature(
        features_fn, x, component, key, steps=steps, step_size=step_size, eps=eps, layer=layer
    )


def sensitivity(
    features_fn: FeaturesFn, x: Array, component: Array, *, layer: str = "features"
) -> Array:
    """Which input changes move a feature: ∇ₓ φ_{component[i]}(x_i), per example, (B, ...)
    in feature units per input unit. (The features of one example depend on that example
    only, so one gradient of the sum gives every per-example gradient.)"""
    check_callable(features_fn, "features_fn")
    check_array(x)
    shape = eval_shape_or_name(
        lambda: layer_features(features_fn, x, layer),
        f"the features function failed on x of shape {tuple(x.shape)}",
    )
    bad = _component_checks(component, shape.shape[1], x.shape[0])
    idx = jnp.asarray(component)[:, None]

    def total(z):
        phi = layer_features(features_fn, z, layer)
        return jnp.sum(jnp.take_along_axis(phi, idx, axis=1))

    g = jax.grad(total)(x)
    if bad:  # traced out-of-range components poison the gradients
        g = g * jnp.where(jnp.any(jnp.stack([jnp.any(c.bad) for c in bad])), jnp.nan, 1.0)
    return g


__all__ = ["add_feature", "interpolate", "sensitivity", "visualize_feature"]
