"""Representation inversion: find inputs whose features match a target.

Given `features_fn(x) -> {name: (B, ...)}` (`jaxrobust.models.as_features_fn`; the
penultimate representation of every jaxrobust model is "features") or a plain
`features_fn(x) -> (B, ...)`, `invert` minimises, per example,

    ‖φ(x) − target‖₂ / ‖target‖₂      (relative; `relative=False`: ‖φ(x) − target‖₂)

over inputs x in the box [lo, hi] (by default [0, 1]), optionally within an ℓ2 ball of
radius `eps` around the start, with normalised ℓ2 gradient steps of the
`jaxrobust.optimize` engine: each step moves x by `step_size` (input units, ℓ2 norm over
the whole example) along the normalised negative gradient, then projects onto the box
(and the ball). Everything is per example, pure, jittable and vmappable.

This is the inversion that Ilyas et al. 2019's D_R / D_NR datasets (`jaxrobust.features`)
and the representation experiments (Engstrom et al. 2019) use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.errors import (
    Check,
    InputError,
    check_array,
    check_bool,
    check_callable,
    check_eps,
    check_int,
    check_key,
    check_number,
    eval_shape_or_name,
    finite_checks,
    screen,
)
from jaxrobust.optimize import Result, StepSize, optimize
from jaxrobust.threat import l2, unconstrained

Array = jax.Array
FeaturesFn = Callable[[Array], Any]

# Added under the square root of ‖target‖² so an all-zero target (a dead ReLU layer) gives
# a finite relative error (then ≈ the absolute error / 1e-6) instead of a division by 0.
_TINY = 1e-12


def layer_features(features_fn: FeaturesFn, x: Array, layer: str = "features") -> Array:
    """The features of `layer` for inputs x (B, ...), flattened to (B, D).

    `features_fn(x)` may return a dict (then `layer` picks the entry, e.g. "features" for
    the penultimate layer, "logits", "hidden0") or an array (used as it is, `layer`
    ignored).

    Raises:
      InputError: `layer` is not among the dict's keys, or the features do not have the
        batch size of x.
    """
    out = features_fn(x)
    if isinstance(out, dict):
        if layer not in out:
            raise InputError(
                f"the features function has no layer {layer!r}; its layers: {sorted(out)}"
            )
        out = out[layer]
    out = jnp.asarray(out)
    if out.ndim < 1 or out.shape[0] != x.shape[0]:
        raise InputError(
            f"the features of layer {layer!r} must have a leading batch axis of size "
            f"{x.shape[0]}, got shape {out.shape}"
        )
    return out.reshape(out.shape[0], -1)


def _squared_error(phi: Array, target: Array, relative: bool) -> Array:
    """Per-example ‖φ − t‖² (divided by ‖t‖² + tiny when relative), shape (B,)."""
    sq = jnp.sum((phi - target) ** 2, axis=1)
    if relative:
        sq = sq / (jnp.sum(target**2, axis=1) + _TINY)
    return sq


def feature_error(
    features_fn: FeaturesFn,
    x: Array,
    target: Array,
    *,
    layer: str = "features",
    relative: bool = True,
) -> Array:
    """Per-example feature distance ‖φ(x) − target‖₂ (/ ‖target‖₂ when `relative`).

    Args:
      features_fn: x (B, ...) -> dict of features, or features (B, ...).
      x: (B, ...) inputs.
      target: (B, ...) target features of `layer` (any shape that flattens to (B, D)).
      layer: which entry of the features dict.
      relative: divide by ‖target‖₂ (a unitless fraction) or not (feature units).

    Returns:
      (B,) float errors; 0 means an exact match.
    """
    check_callable(features_fn, "features_fn")
    check_array(x)
    check_array(target, "target")
    phi = layer_features(features_fn, x, layer)
    target = jnp.asarray(target, phi.dtype).reshape(target.shape[0], -1)
    if target.shape != phi.shape:
        raise InputError(
            f"target must have the shape of the features of layer {layer!r}, flattened "
            f"{phi.shape}, got {target.shape}"
        )
    return jnp.sqrt(_squared_error(phi, target, relative))


def invert(
    features_fn: FeaturesFn,
    target: Array,
    x_start: Array,
    key: Array,
    *,
    steps: int,
    step_size: StepSize,
    eps: float | Array | None = None,
    layer: str = "features",
    relative: bool = True,
    tol: float | None = None,
    random_start: bool = False,
    lo: float = 0.0,
    hi: float = 1.0,
    unroll: int | None = None,
) -> Result:
    """Invert a representation: inputs whose `layer` features match `target`, per example.

    Minimises the feature error ‖φ(x) − target‖₂ (relative to ‖target‖₂ by default) from
    `x_start` with `steps` normalised ℓ2 gradient steps of `optimize` (each of ℓ2 length
    `step_size` in input units before projection), keeping each example's best iterate.
    The inputs stay in [lo, hi]; with `eps` they also stay within ℓ2 distance eps of
    `x_start` (the `l2(eps)` threat model around it), without, anywhere in the box
    (`unconstrained(step_norm="l2")`).

    The objective minimised is the squared error (its gradient is defined at a perfect
    match, where the norm's is not); the reported value is its square root.

    Args:
      features_fn: x (B, ...) -> dict of features (`as_features_fn`) or features (B, ...).
      target: (B, ...) target features of `layer` (flattened to (B, D)).
      x_start: (B, ...) starting inputs in [lo, hi], e.g. noise or unrelated images.
      key: PRNG key; used only with `random_start` (a random start in the ball / box
        instead of x_start); the same key gives the same result.
      steps: gradient steps (0 returns the start).
      step_size: ℓ2 length of each step in input units: a float, a (B,) array, or a
        schedule `i -> size` (e.g. a decaying one for a precise match).
      eps: None (no ball: any input in the box) or the ℓ2 radius around x_start.
      layer: the entry of the features dict to match ("features" is the penultimate).
      relative: measure (and minimise) the error relative to ‖target‖₂.
      tol: optional success threshold on the error: an iterate with error <= tol counts
        as a success (`Result.success`); without it, success is all False.
      random_start: start from a random point of the ball (eps) or box (no eps).
      lo: lower end of the input box.
      hi: upper end of the input box.
      unroll: the engine's loop unroll factor (None: the backend's default).

    Returns:
      `Result(x_adv, delta, value, success)`: x_adv (B, ...) the inverted inputs,
      delta = x_adv − x_start, value (B,) the feature error at x_adv (relative or in
      feature units), success (B,) error <= tol.

    Raises:
      InputError: on bad input (concrete values): eps < 0 / NaN, non-finite or
        out-of-box x_start, a target of the wrong shape or non-finite, steps < 0, a
        missing layer. Traced bad values poison the result (NaN), as in `optimize`.
    """
    check_callable(features_fn, "features_fn")
    check_array(x_start, "x_start")
    check_array(target, "target")
    check_key(key)
    check_int(steps, "steps", 0)
    check_bool(relative, "relative")
    check_bool(random_start, "random_start")
    if not isinstance(layer, str):
        raise InputError(f"layer must be a string, got {layer!r}")
    if tol is not None:
        check_number(tol, "tol", 0.0)
    if eps is not None:
        check_eps(eps)
        threat = l2(eps, lo=lo, hi=hi)
    else:
        threat = unconstrained(lo=lo, hi=hi, step_norm="l2")
    if x_start.ndim < 1 or x_start.shape[0] == 0:
        raise InputError(f"x_start must be a non-empty batch, got shape {x_start.shape}")
    phi_shape = eval_shape_or_name(
        lambda: layer_features(features_fn, x_start, layer),
        f"the features function failed on x_start of shape {tuple(x_start.shape)}",
    )
    target = jnp.asarray(target)
    if (
        target.ndim < 1
        or target.shape[0] != x_start.shape[0]
        or int(np.prod(target.shape[1:])) != phi_shape.shape[1]
    ):
        raise InputError(
            f"target must hold the features of layer {layer!r} for each of the "
            f"{x_start.shape[0]} starts, (B, D) = {phi_shape.shape}, got {target.shape}"
        )
    target = target.reshape(phi_shape.shape).astype(phi_shape.dtype)
    checks: list[Check] = screen(finite_checks(target, "target features"))

    def objective(x):
        sq = _squared_error(layer_features(features_fn, x, layer), target, relative)
        if tol is None:
            return sq
        return sq, sq <= tol**2

    result = optimize(
        objective,
        x_start,
        key,
        threat=threat,
        steps=steps,
        step_size=step_size,
        random_start=random_start,
        keep_best=True,
        maximize=False,
        has_aux=tol is not None,
        unroll=unroll,
        checks=checks,
    )
    # The engine poisons value with NaN on failed traced checks; sqrt keeps NaN.
    return result._replace(value=jnp.sqrt(jnp.maximum(result.value, 0.0)))


__all__ = ["feature_error", "invert", "layer_features"]
