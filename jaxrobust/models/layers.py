"""Shared building blocks: in-model normalisation and a fast 2x2 max-pool.

Layout is NHWC throughout (batch, height, width, channels).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxrobust.errors import ConfigError

Stat = float | Sequence[float]


def normalize(x: Array, mean: Stat = 0.0, std: Stat = 1.0) -> Array:
    """Return `(x - mean) / std`, broadcasting a per-channel tuple over the last axis.

    Normalisation lives inside the model so that ε is always measured in input units.

    Args:
      x: inputs (..., C).
      mean, std: a scalar or one value per channel (length C).
    Returns:
      array of the same shape and dtype as `x`.
    """
    mean_a = jnp.asarray(mean, dtype=x.dtype)
    std_a = jnp.asarray(std, dtype=x.dtype)
    return (x - mean_a) / std_a


def check_stats(mean: Stat, std: Stat) -> None:
    """Raise `ConfigError` for a malformed mean/std (wrong rank, or std <= 0)."""
    arrays = {}
    for name, v in (("mean", mean), ("std", std)):
        try:
            arrays[name] = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            arrays[name] = None
        if arrays[name] is None or arrays[name].ndim > 1:
            raise ConfigError(f"{name} must be a number or one value per channel, got {v!r}")
    if not np.all(arrays["std"] > 0):
        raise ConfigError(f"std must be > 0 (per channel), got {std!r}")


def max_pool_2x2(x: Array) -> Array:
    """2x2 max-pool with stride 2, written as reshape + max.

    Equal to `nn.max_pool(x, (2, 2), strides=(2, 2))` on even sizes, but its gradient is a
    cheap compare-and-broadcast instead of XLA's select-and-scatter (several times slower on
    XLA:CPU). Odd H or W are padded at the bottom/right with -inf, so the output has
    ceil(H/2) x ceil(W/2) positions (like 'SAME' padding) and no border pixel is dropped.

    On exact ties inside a window the gradient is split evenly between the tied inputs
    (select-and-scatter gives it all to the first); ties have measure zero for real-valued
    activations, and tied ReLU zeros have zero gradient anyway.

    Args:
      x: (..., H, W, C).
    Returns:
      (..., ceil(H/2), ceil(W/2), C).
    """
    if x.ndim < 3:
        raise ValueError(f"max_pool_2x2 expects (..., H, W, C), got shape {x.shape}")
    *lead, h, w, c = x.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        pad = [(0, 0)] * len(lead) + [(0, ph), (0, pw), (0, 0)]
        x = jnp.pad(x, pad, constant_values=-jnp.inf)
        h, w = h + ph, w + pw
    x = x.reshape(*lead, h // 2, 2, w // 2, 2, c)
    nd = len(lead)
    return jnp.max(x, axis=(nd + 1, nd + 3))
