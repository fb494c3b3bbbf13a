"""Transfer attacks from an extracted substitute, and random noise of the same norm.

The attacker runs a white-box attack (the library's PGD or APGD) on the substitute and
submits the result to the victim; no victim gradient and no victim query is used to craft
it. The baseline is random noise in the same ball (`noise_like`): what a perturbation of
that size does without any knowledge of the model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.attacks.apgd import apgd
from jaxrobust.attacks.pgd import pgd
from jaxrobust.errors import InputError, check_array, check_callable, check_int, check_key
from jaxrobust.threat import ThreatModel, l2, linf

Array = jax.Array
ATTACKS = ("pgd", "apgd")


def transfer_attack(
    substitute: Callable[[Array], Array],
    x: Any,
    y: Any,
    key: Array,
    *,
    threat: ThreatModel,
    attack: str = "pgd",
    steps: int = 100,
    batch_size: int = 512,
) -> np.ndarray:
    """Adversarial examples crafted on the substitute only: x (N, ...) -> x_adv (N, ...).

    Args:
      substitute: the substitute's logits_fn (white-box to the attacker).
      x: (N, ...) inputs in `threat.box`; y: (N,) the labels to move away from.
      key: PRNG key (random starts), folded in per batch.
      threat: the ball, e.g. `jaxrobust.l2(1.0)` or `jaxrobust.linf(0.1)`.
      attack: "pgd" (cross-entropy, one random start, step 2.5ε/steps, per-example best
        iterate) or "apgd" (APGD-CE).
      steps: iterations.

    Returns:
      x_adv (N, ...) float32, inside the ball around x and the box.
    """
    check_callable(substitute, "substitute")
    check_array(x)
    check_key(key)
    check_int(steps, "steps", 1)
    check_int(batch_size, "batch_size", 1)
    if attack not in ATTACKS:
        raise InputError(f"attack must be one of {list(ATTACKS)}, got {attack!r}")
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    if y.shape != (len(x),):
        raise InputError(f"y must be ({len(x)},) labels, got shape {y.shape}")
    out = []
    for i in range(0, len(x), batch_size):
        xb, yb = jnp.asarray(x[i : i + batch_size]), jnp.asarray(y[i : i + batch_size])
        k = jax.random.fold_in(key, i)
        if attack == "pgd":
            r = pgd(substitute, xb, yb, k, threat=threat, steps=steps)
        else:
            r = apgd(substitute, xb, yb, k, threat=threat, steps=steps)
        out.append(np.asarray(r.x_adv))
    return np.concatenate(out) if out else np.zeros_like(x)


def noise_like(x: Any, key: Array, threat: ThreatModel) -> np.ndarray:
    """x + δ with δ random noise of the threat's size: ℓ∞, a uniformly random sign per pixel
    times ε (a corner of the ball), then clipped to the box; ℓ2, a uniformly random direction
    scaled so that after the box ‖δ‖₂ = ε (the ℓ2 projection of a far-out point, which keeps
    the largest scale that fits). x (N, ...) -> (N, ...) float32."""
    check_array(x)
    check_key(key)
    if threat.name not in ("linf", "l2"):
        raise InputError(f"noise_like supports linf and l2 threat models, got {threat.name!r}")
    return np.asarray(_noise(jnp.asarray(x, jnp.float32), key, threat))


@functools.partial(jax.jit, static_argnums=2)
def _noise_program(x: Array, key: Array, kind: tuple) -> Array:
    name, eps, lo, hi = kind
    threat = linf(eps, lo=lo, hi=hi) if name == "linf" else l2(eps, lo=lo, hi=hi)
    if name == "linf":
        sign = jnp.where(jax.random.bernoulli(key, 0.5, x.shape), 1.0, -1.0)
        return x + threat.project(sign * jnp.asarray(eps, x.dtype), x)
    g = jax.random.normal(key, x.shape, x.dtype)
    g = g / jnp.sqrt(jnp.sum(g**2, axis=tuple(range(1, x.ndim)), keepdims=True))
    return x + threat.project(g * (100.0 * eps + 100.0), x)


def _noise(x: Array, key: Array, threat: ThreatModel) -> Array:
    """One compiled program per (norm, ε, box); a per-example ε array is not supported."""
    if np.ndim(threat.eps) != 0:
        raise InputError("noise_like needs a scalar eps")
    kind = (threat.name, float(threat.eps), float(threat.box[0]), float(threat.box[1]))
    return _noise_program(x, key, kind)
