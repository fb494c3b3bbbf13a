"""Errors that name the problem, and the eager input checks that raise them.

Checks run only on concrete values: under `jax.jit` the arrays are tracers and the
checks that need values are skipped (shapes are still checked, since they are static).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class JaxRobustError(ValueError):
    """Base class of every error jaxrobust raises on bad input."""


class InputError(JaxRobustError):
    """Inputs with the wrong shape, range, dtype or value."""


class ConfigError(JaxRobustError):
    """An unknown or malformed configuration key or value."""


class DatasetError(JaxRobustError):
    """An unknown dataset, or one that cannot be prepared here (e.g. offline)."""


class CheckpointError(JaxRobustError):
    """A missing, corrupt or foreign checkpoint."""


def is_concrete(x: Any) -> bool:
    """True when `x` holds values (not a tracer inside jit/vmap/grad)."""
    import jax  # here, not at the top: the command line raises these errors without JAX

    return not isinstance(x, jax.core.Tracer)


def check_eps(eps: Any, name: str = "eps", *, allow_zero: bool = True) -> None:
    """Raise `InputError` if a concrete ε is negative, NaN (or zero when not allowed)."""
    if not is_concrete(eps):
        return
    arr = np.asarray(eps, dtype=np.float64)
    if np.any(np.isnan(arr)):
        raise InputError(f"{name} must be a number, got NaN")
    if np.any(arr < 0) or (not allow_zero and np.any(arr == 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise InputError(f"{name} must be {bound}, got {eps!r}")


def check_range(x: Any, lo: float, hi: float, name: str = "x") -> None:
    """Raise `InputError` if concrete inputs fall outside the declared box [lo, hi]."""
    if not is_concrete(x):
        return
    arr = np.asarray(x)
    if arr.size == 0:
        return
    if np.isnan(arr).any():
        raise InputError(f"{name} contains NaN")
    mn, mx = float(arr.min()), float(arr.max())
    # A tolerance of one float32 ulp-ish step: clipping upstream can land at hi + 1e-7.
    tol = 1e-6 * max(1.0, abs(hi - lo))
    if mn < lo - tol or mx > hi + tol:
        raise InputError(
            f"{name} must lie in the declared input range [{lo}, {hi}], "
            f"but its values span [{mn:.4g}, {mx:.4g}]; scale inputs to the range "
            "(normalisation belongs inside the model) or declare the range of the threat model"
        )


def check_batch(x: Any, y: Any, name_x: str = "x", name_y: str = "y") -> None:
    """Raise `InputError` unless x is (B, ...) and y is integer labels of shape (B,)."""
    xs, ys = np.shape(x), np.shape(y)
    if len(xs) < 1:
        raise InputError(f"{name_x} must have a leading batch axis, got shape {xs}")
    if len(ys) != 1 or ys[0] != xs[0]:
        raise InputError(
            f"shapes of {name_x} {xs} and {name_y} {ys} do not match: expected {name_y} of "
            f"shape ({xs[0]},) with one integer label per example"
        )
    dtype = y.dtype if hasattr(y, "dtype") else np.asarray(y).dtype
    if not np.issubdtype(dtype, np.integer):
        raise InputError(f"{name_y} must hold integer class labels, got dtype {dtype}")


def check_labels(y: Any, num_classes: int, name: str = "y") -> None:
    """Raise `InputError` if concrete labels fall outside [0, num_classes)."""
    if not is_concrete(y):
        return
    arr = np.asarray(y)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise InputError(
            f"{name} holds labels in [{arr.min()}, {arr.max()}] but the model has "
            f"{num_classes} classes"
        )


def check_logits(logits: Any, batch: int | None = None, name: str = "logits") -> None:
    """Raise `InputError` for logits of the wrong shape, or concrete logits with NaN/inf."""
    shape = np.shape(logits)
    if len(shape) != 2 or (batch is not None and shape[0] != batch):
        want = f"({batch}, num_classes)" if batch is not None else "(batch, num_classes)"
        raise InputError(f"the model must return {name} of shape {want}, got {shape}")
    if is_concrete(logits) and not np.isfinite(np.asarray(logits)).all():
        raise InputError(
            f"the model returned non-finite {name} (NaN or inf); check the model's "
            "weights and inputs"
        )
