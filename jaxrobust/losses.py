"""Per-example losses on logits. Untargeted attacks maximise them.

Every loss maps logits (B, C) and integer labels (B,) to values (B,). A targeted attack
maximises `-loss(logits, target)` for `cross_entropy` and `margin`; `dlr_targeted` is the
targeted DLR of Croce & Hein (2020), which needs both the true label and the target.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxrobust.errors import InputError

Array = jax.Array
Loss = Callable[[Array, Array], Array]


def cross_entropy(logits: Array, y: Array) -> Array:
    """Softmax cross-entropy, (B, C), (B,) -> (B,)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def _true_and_best_other(logits: Array, y: Array) -> tuple[Array, Array]:
    true = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    others = jnp.where(jax.nn.one_hot(y, logits.shape[1], dtype=bool), -jnp.inf, logits)
    return true, jnp.max(others, axis=1)


def margin(logits: Array, y: Array) -> Array:
    """Carlini–Wagner margin max_{i≠y} z_i − z_y: positive exactly when misclassified."""
    true, other = _true_and_best_other(logits, y)
    return other - true


def dlr(logits: Array, y: Array) -> Array:
    """Difference of logits ratio −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3) (needs C >= 3).

    Shift- and scale-invariant in the logits, so saturated softmaxes do not hide gradients.
    """
    if logits.shape[1] < 3:
        raise InputError(f"DLR needs at least 3 classes, got {logits.shape[1]}")
    true, other = _true_and_best_other(logits, y)
    top = jnp.sort(logits, axis=1)[:, ::-1]
    return -(true - other) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted(logits: Array, y: Array, target: Array) -> Array:
    """Targeted DLR −(z_y − z_t) / (z_π1 − ½(z_π3 + z_π4)) (needs C >= 4); maximise it."""
    if logits.shape[1] < 4:
        raise InputError(f"targeted DLR needs at least 4 classes, got {logits.shape[1]}")
    true = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    tgt = jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]
    top = jnp.sort(logits, axis=1)[:, ::-1]
    return -(true - tgt) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def kl_divergence(logits_p: Array, logits_q: Array) -> Array:
    """KL(p ‖ q) between the softmax distributions of two logit batches, (B, C) -> (B,)."""
    logp = jax.nn.log_softmax(logits_p)
    logq = jax.nn.log_softmax(logits_q)
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def targeted(loss: Loss) -> Loss:
    """Turn an untargeted loss into one whose maximisation moves towards the target label."""

    def fn(logits: Array, target: Array) -> Array:
        return -loss(logits, target)

    return fn


LOSSES: dict[str, Loss] = {"ce": cross_entropy, "margin": margin, "dlr": dlr}


def get_loss(name: str) -> Loss:
    """Look a loss up by name ("ce", "margin", "dlr")."""
    if name not in LOSSES:
        raise InputError(f"unknown loss {name!r}; known: {sorted(LOSSES)}")
    return LOSSES[name]
