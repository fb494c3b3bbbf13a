"""Spectral-signature detection of poisoned training data (Tran, Li & Madry 2018).

For every class c, take the learned representations R_c (n_c, D) of the training examples
labelled c (e.g. the penultimate layer, `as_features_fn(...)(x)["features"]`), centre them,
and score example i by its squared projection on the top right singular vector v_c of the
centred matrix: s_i = ⟨r_i − μ_c, v_c⟩². Poisoned examples that share a feature (the
trigger) pull the top direction towards them and score highest. Remove, per class, the
⌊multiplier·ε·n_c⌋ highest-scoring examples (ε: the assumed upper bound on the poisoned
fraction of a class; the paper's multiplier is 1.5), retrain on the rest, and repeat.

Everything works on fixed shapes with a `keep` mask (removed examples stay in the arrays,
masked out), so a round is one jittable function of arrays.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.errors import InputError, check_batch, check_int, check_number, is_concrete

Array = jax.Array


def _check(reps: Any, labels: Any, num_classes: int, keep: Any) -> None:
    if np.ndim(reps) != 2:
        raise InputError(f"representations must be (N, D), got shape {np.shape(reps)}")
    check_batch(reps, labels, "representations", "labels")
    check_int(num_classes, "num_classes", 1)
    if keep is not None and np.shape(keep) != np.shape(labels):
        raise InputError(f"keep must be (N,) like labels, got {np.shape(keep)}")
    if is_concrete(labels):
        arr = np.asarray(labels)
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise InputError(f"labels must lie in [0, {num_classes})")
    if is_concrete(reps) and not np.isfinite(np.asarray(reps)).all():
        raise InputError("representations contain NaN or inf")


@functools.partial(jax.jit, static_argnames=("num_classes", "rows"))
def _scores(
    reps: Array, labels: Array, keep: Array, num_classes: int, rows: int | None
) -> tuple[Array, Array]:
    reps = reps.astype(jnp.float32)

    def per_class(c):
        member = (labels == c) & keep
        m = member.astype(jnp.float32)[:, None]
        mu = (reps * m).sum(0) / jnp.maximum(m.sum(), 1.0)
        if rows is None:
            centred = (reps - mu) * m
            # Top right singular vector of the centred matrix = top eigenvector of its Gram.
            _, vecs = jnp.linalg.eigh(centred.T @ centred)
            return mu, vecs[:, -1]
        # Wide representations (D above the class size, e.g. a conv block's map): the
        # class's rows gathered into `rows` slots (padding zeroed), and the top
        # eigenvector u of their (rows, rows) Gram gives v = centredᵀu / |centredᵀu|, the
        # same vector as the (D, D) route at a fraction of its cost.
        idx = jnp.nonzero(member, size=rows, fill_value=0)[0]
        valid = (jnp.arange(rows) < member.sum())[:, None]
        centred = jnp.where(valid, reps[idx] - mu, 0.0)
        _, vecs = jnp.linalg.eigh(centred @ centred.T)
        v = centred.T @ vecs[:, -1]
        return mu, v / jnp.maximum(jnp.linalg.norm(v), 1e-30)

    mus, tops = jax.vmap(per_class)(jnp.arange(num_classes))
    proj = jnp.einsum("nd,nd->n", reps - mus[labels], tops[labels])
    return proj**2, tops


def _row_slots(labels: Any, keep: Any, num_classes: int, dim: int) -> int | None:
    """How many rows the largest class can hold (a multiple of 64, so that retraining
    rounds reuse one compiled program), or None where the (D, D) Gram is the smaller
    problem. Without concrete labels (under a user's jit) a class may hold every row."""
    n = int(np.shape(labels)[0])
    cap = n
    if is_concrete(labels) and is_concrete(keep):
        lab, kp = np.asarray(labels), np.asarray(keep, bool)
        biggest = int(np.bincount(lab[kp], minlength=num_classes).max(initial=0))
        cap = min(n, max(64, -(-biggest // 64) * 64))
    return cap if cap < dim else None


def spectral_scores(
    reps: Array, labels: Array, num_classes: int, keep: Array | None = None
) -> Array:
    """Outlier scores (N,) float32: the squared projection of each centred representation
    on the top singular vector of its class (centring and the vector use the kept
    examples of the class only; removed examples are scored too, against them).

    Each class costs an eigendecomposition of the smaller of its (D, D) and its
    (rows, rows) Gram matrix, so wide representations (a conv block's flattened map) stay
    cheap.

    Args:
      reps: (N, D) representations; labels: (N,) int in [0, num_classes).
      num_classes: number of classes.
      keep: (N,) bool, the examples still in the training set (default: all).
    """
    _check(reps, labels, num_classes, keep)
    keep = jnp.ones(np.shape(labels), bool) if keep is None else jnp.asarray(keep, bool)
    rows = _row_slots(labels, keep, num_classes, int(np.shape(reps)[1]))
    return _scores(jnp.asarray(reps), jnp.asarray(labels), keep, num_classes, rows)[0]


def removal_counts(
    labels: Array, keep: Array, num_classes: int, eps: Any, multiplier: Any
) -> Array:
    """⌊multiplier·ε·n_c⌋ per class (num_classes,), n_c the kept examples labelled c."""
    n_c = jnp.zeros(num_classes, jnp.int32).at[labels].add(keep.astype(jnp.int32))
    return jnp.floor(multiplier * eps * n_c + 1e-6).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames="num_classes")
def _remove(scores, labels, keep, num_classes, eps, multiplier):
    n = labels.shape[0]
    k = removal_counts(labels, keep, num_classes, eps, multiplier)
    group = jnp.where(keep, labels, num_classes)  # removed examples sort last
    order = jnp.lexsort((-scores, group))  # by class, then by decreasing score
    sorted_group = group[order]
    counts = jnp.zeros(num_classes + 1, jnp.int32).at[group].add(1)
    starts = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(counts)[:-1]])
    rank_sorted = jnp.arange(n) - starts[sorted_group]
    k_all = jnp.concatenate([k, jnp.zeros(1, jnp.int32)])
    drop_sorted = rank_sorted < k_all[sorted_group]
    drop = jnp.zeros(n, bool).at[order].set(drop_sorted)
    return keep & ~drop


def remove_top(
    scores: Array,
    labels: Array,
    keep: Array,
    *,
    num_classes: int,
    eps: float,
    multiplier: float = 1.5,
) -> Array:
    """The new keep mask (N,) bool: per class, the ⌊multiplier·ε·n_c⌋ kept examples with
    the highest scores removed (ties broken by position).

    Args:
      scores: (N,) outlier scores (`spectral_scores`).
      labels: (N,) labels; keep: (N,) bool, the examples still in the training set.
      num_classes: number of classes.
      eps: assumed upper bound on the poisoned fraction of a class, in [0, 1].
      multiplier: how many times ε·n_c to remove (Tran et al.: 1.5).
    """
    check_number(eps, "eps", 0.0, 1.0)
    check_number(multiplier, "multiplier", 0.0)
    if np.shape(scores) != np.shape(labels) or np.shape(keep) != np.shape(labels):
        raise InputError(
            f"scores, labels and keep must all be (N,), got {np.shape(scores)}, "
            f"{np.shape(labels)}, {np.shape(keep)}"
        )
    check_int(num_classes, "num_classes", 1)
    return _remove(
        jnp.asarray(scores, jnp.float32),
        jnp.asarray(labels),
        jnp.asarray(keep, bool),
        num_classes,
        jnp.float32(eps),
        jnp.float32(multiplier),
    )


class Detection(NamedTuple):
    """Detection quality of one round: recall (removed poison / all poison), precision
    (removed poison / removed), and the counts behind them."""

    recall: float
    precision: float
    removed: int
    removed_poison: int
    poison: int


def detection(removed: Any, poisoned: Any) -> Detection:
    """Recall and precision of a removal mask (N,) bool against the true poison mask (N,);
    NaN where a denominator is 0."""
    removed, poisoned = np.asarray(removed, bool), np.asarray(poisoned, bool)
    if removed.shape != poisoned.shape:
        raise InputError(f"removed {removed.shape} and poisoned {poisoned.shape} differ")
    tp, r, p = int((removed & poisoned).sum()), int(removed.sum()), int(poisoned.sum())
    return Detection(tp / p if p else float("nan"), tp / r if r else float("nan"), r, tp, p)
