"""Saliency: input gradients of a classifier's loss, the maps that look like the object for
robust models and like noise for standard ones (Tsipras et al. 2019, "Robustness may be at
odds with accuracy", Fig. 2; Santurkar et al. 2019)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrobust.errors import check_array, check_callable
from jaxrobust.losses import Loss, cross_entropy
from jaxrobust.represent.synthesis import LogitsFn, class_checks, num_classes_of

Array = jax.Array


def input_gradient(logits_fn: LogitsFn, x: Array, y: Array, *, loss: Loss = cross_entropy) -> Array:
    """∇ₓ loss(logits_fn(x), y) per example, (B, ...) (nats per input unit).

    The summed loss decouples over examples (for a model without cross-example layers, e.g.
    BatchNorm in inference mode), so one gradient gives every per-example gradient.
    Raises `InputError` for labels outside [0, C) (traced ones poison the result: NaN).
    """
    check_callable(logits_fn, "logits_fn")
    check_array(x)
    checks = class_checks(y, num_classes_of(logits_fn, x), x.shape[0], "y")
    g = jax.grad(lambda z: jnp.sum(loss(logits_fn(z), y)))(x)
    if checks:
        g = g * jnp.where(jnp.any(jnp.stack([jnp.any(c.bad) for c in checks])), jnp.nan, 1.0)
    return g


def saliency_map(logits_fn: LogitsFn, x: Array, y: Array, *, loss: Loss = cross_entropy) -> Array:
    """The loss-*decreasing* input direction −∇ₓ loss, scaled per example to [−1, 1] by its
    largest magnitude (B, ...): 0 is no effect; what an image grid shows."""
    g = -input_gradient(logits_fn, x, y, loss=loss)
    big = jnp.max(jnp.abs(g), axis=tuple(range(1, g.ndim)), keepdims=True)
    return g / jnp.where(big > 0, big, 1.0)


def alignment(grads: Array, images: Array) -> Array:
    """Pearson correlation over pixels between |∇ₓ| and the image, per example (B,) in
    [−1, 1]: does the gradient's magnitude sit on the object? (Flat inputs give 0.)"""
    a = jnp.abs(grads).reshape(grads.shape[0], -1)
    b = images.reshape(images.shape[0], -1)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = jnp.sqrt(jnp.sum(a * a, 1) * jnp.sum(b * b, 1))
    return jnp.sum(a * b, 1) / jnp.maximum(den, 1e-30)


__all__ = ["alignment", "input_gradient", "saliency_map"]
