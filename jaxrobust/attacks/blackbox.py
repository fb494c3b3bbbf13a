"""Query-limited black-box attacks: gradient estimation from scores only.

NES (Ilyas, Engstrom, Athalye, Lin 2018) estimates ∇L by antithetic Gaussian finite
differences; Bandits-TD (Ilyas, Engstrom, Madry 2019) keeps a running *prior* over the
gradient with time (a bandit over iterations) and data (spatially tiled, so neighbouring
pixels share it) dependence. Either estimate drives projected steps exactly like PGD's
gradient. The query-limited threat model counts every model query per example, stops an
example once it is misclassified, and stops everything at the budget.

Inputs x: (B, H, W, C) images (NES also accepts any (B, ...)); labels y: (B,).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxrobust.attacks.pgd import LogitsFn, check_attack_inputs, check_classifier_args, guard
from jaxrobust.errors import InputError, check_int, check_number
from jaxrobust.losses import Loss, cross_entropy
from jaxrobust.optimize import Result
from jaxrobust.threat import ThreatModel, example_keys

Array = jax.Array


class BlackBoxResult(NamedTuple):
    """A query-limited attack's outcome.

    result: the usual `Result` (x_adv, delta, value, success);
    queries: (B,) model queries spent per example (up to and including its success);
    mean_queries: mean queries over successful examples (NaN if none);
    failure_rate: fraction of examples, correctly classified at the start, left unbroken.
    """

    result: Result
    queries: Array
    mean_queries: Array
    failure_rate: Array


def _flat_dot(a: Array, b: Array) -> Array:
    return jnp.sum((a * b).reshape(a.shape[0], -1), axis=1)


def _bcast(v: Array, like: Array) -> Array:
    return v.reshape((-1,) + (1,) * (like.ndim - 1))


def _unit(v: Array) -> Array:
    norm = jnp.sqrt(jnp.sum((v * v).reshape(v.shape[0], -1), axis=1))
    return v / _bcast(jnp.maximum(norm, 1e-12), v)


def nes_gradient(
    loss_fn: Callable[[Array], Array],
    x: Array,
    key: Array,
    *,
    sigma: float = 0.001,
    samples: int = 50,
) -> Array:
    """NES estimate of ∇ loss_fn at x per example from `samples` queries (antithetic pairs).

    loss_fn: x (B, ...) -> (B,); returns (B, ...) like x. Costs `samples` queries per example
    (`samples` must be even).
    """
    if samples < 2 or samples % 2:
        raise InputError(f"NES needs an even number of samples >= 2, got {samples}")
    keys = example_keys(key, x.shape[0])
    u = jax.vmap(lambda k: jax.random.normal(k, (samples // 2, *x.shape[1:]), x.dtype))(keys)
    u = jnp.swapaxes(u, 0, 1)  # (samples/2, B, ...)

    def pair(acc, ui):
        diff = loss_fn(x + sigma * ui) - loss_fn(x - sigma * ui)
        return acc + _bcast(diff, ui) * ui, None

    total, _ = jax.lax.scan(pair, jnp.zeros_like(x), u)
    return total / (sigma * samples)


def _tile_up(prior: Array, shape: tuple, tile: int) -> Array:
    """Upsample a (B, h, w, C) prior to the image size by repeating each tile."""
    up = jnp.repeat(jnp.repeat(prior, tile, axis=1), tile, axis=2)
    return up[:, : shape[1], : shape[2], :]


def query_limited_attack(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    key: Array,
    *,
    threat: ThreatModel,
    estimator: str = "bandits",
    max_queries: int = 10_000,
    step_size: float | None = None,
    loss: Loss = cross_entropy,
    nes_samples: int = 50,
    nes_sigma: float = 0.001,
    fd_eta: float = 0.1,
    exploration: float = 1.0,
    online_lr: float | None = None,
    tile: int = 2,
) -> BlackBoxResult:
    """PGD driven by a score-based gradient estimate, within a per-example query budget.

    Args:
      logits_fn: the model; only its outputs are used (never its gradients).
      x: (B, H, W, C) inputs in `threat.box`.
      y: (B,) labels.
      key: PRNG key for the estimators' noise.
      threat: `linf` or `l2` ball.
      estimator: "nes" or "bandits" (Bandits-TD).
      max_queries: per-example budget, > 0; an example stops at success or the budget.
      step_size: image step in the threat's norm (default ε/10 for ℓ∞... ε/5 for ℓ2).
      loss: per-example loss on logits to maximise (cross-entropy, as in the papers).
      nes_samples: NES queries per step.
      nes_sigma: NES smoothing radius.
      fd_eta: Bandits-TD finite-difference step.
      exploration: Bandits-TD prior exploration.
      online_lr: Bandits-TD prior learning rate (ℓ∞: exponentiated-gradient rate 100;
        ℓ2: 0.1).
      tile: the side of the pixel tiles that share a Bandits-TD prior entry (data
        dependence).

    Returns:
      `BlackBoxResult`.
    """
    check_classifier_args(logits_fn, x, y, threat, key, loss=loss, who="query-limited attacks")
    if threat.name not in ("linf", "l2"):
        raise InputError(f"query-limited attacks support linf and l2, got {threat.name!r}")
    if estimator not in ("nes", "bandits"):
        raise InputError(f"unknown estimator {estimator!r}; known: nes, bandits")
    if isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries <= 0:
        raise InputError(f"max_queries must be a positive integer, got {max_queries!r}")
    if step_size is not None:
        check_number(step_size, "step_size", 0.0, lo_open=True)
    check_int(nes_samples, "nes_samples", 2)
    if nes_samples % 2:
        raise InputError(f"NES needs an even number of samples >= 2, got {nes_samples}")
    check_number(nes_sigma, "nes_sigma", 0.0, lo_open=True)
    check_number(fd_eta, "fd_eta", 0.0, lo_open=True)
    check_number(exploration, "exploration", 0.0, lo_open=True)
    if online_lr is not None:
        check_number(online_lr, "online_lr", 0.0, lo_open=True)
    check_int(tile, "tile", 1)
    checks = check_attack_inputs(x, y, threat, logits_fn=logits_fn)
    if estimator == "bandits" and x.ndim != 4:
        raise InputError(f"Bandits-TD needs images (B, H, W, C), got shape {x.shape}")
    linf = threat.name == "linf"
    eps = jnp.asarray(threat.eps, x.dtype)
    step_len: float | jax.Array
    if step_size is None:
        step_len = eps / 10 if linf else eps / 5
    else:
        step_len = step_size
    if online_lr is None:
        online_lr = 100.0 if linf else 0.1
    per_iter = nes_samples + 1 if estimator == "nes" else 3  # +1: the success check
    iters = max(max_queries // per_iter, 1)

    def loss_fn(z):
        return loss(logits_fn(z), y)

    def correct(z):
        return jnp.argmax(logits_fn(z), -1) == y

    b = x.shape[0]
    latent: tuple[int, ...]
    if estimator == "bandits":
        latent = (b, -(-x.shape[1] // tile), -(-x.shape[2] // tile), x.shape[3])
    else:
        latent = (b, 1)
    alive0 = correct(x)
    queries0 = jnp.ones((b,), jnp.int32)  # the initial classification query

    def step(carry, i):
        delta, prior, alive, queries = carry
        k = jax.random.fold_in(key, i)
        z = x + delta
        if estimator == "nes":
            grad = nes_gradient(loss_fn, z, k, sigma=nes_sigma, samples=nes_samples)
            new_prior = prior
        else:
            # Exploration along a random unit direction of the latent (tiled) space.
            noise = jax.vmap(lambda kk: jax.random.normal(kk, latent[1:], x.dtype))(
                example_keys(k, b)
            )
            u = exploration * _unit(noise)
            q1 = _unit(_tile_up(prior + u, x.shape, tile))
            q2 = _unit(_tile_up(prior - u, x.shape, tile))
            d = (loss_fn(z + fd_eta * q1) - loss_fn(z + fd_eta * q2)) / (fd_eta * exploration)
            g = _bcast(d, u) * u
            if linf:  # exponentiated gradient on the prior, kept in [-1, 1]
                p = (prior + 1) / 2
                pos, neg = p * jnp.exp(online_lr * g), (1 - p) * jnp.exp(-online_lr * g)
                new_prior = 2 * pos / (pos + neg) - 1
            else:
                new_prior = prior + online_lr * g
            new_prior = jnp.nan_to_num(new_prior)
            grad = _tile_up(new_prior, x.shape, tile)
        direction = jnp.sign(grad) if linf else _unit(grad)
        moved = threat.project(delta + step_len * direction, x)
        # Finished examples (broken, never correct, or out of budget) neither move nor
        # spend queries.
        spend = alive & (queries + per_iter <= max_queries)
        delta = jnp.where(_bcast(spend, delta), moved, delta)
        prior = jnp.where(_bcast(spend, prior), new_prior, prior)
        queries = queries + jnp.where(spend, per_iter, 0)
        alive = spend & correct(x + delta)
        return (delta, prior, alive, queries), None

    init = (threat.zeros(x), jnp.zeros(latent, x.dtype), alive0, queries0)
    (delta, _, alive, queries), _ = jax.lax.scan(step, init, jnp.arange(iters))
    x_adv = x + delta
    success = alive0 & ~alive
    # Non-finite logits make the loss NaN: `guard` names that (and bad inputs) and
    # poisons the result, and with it the summaries.
    logits = logits_fn(x_adv)
    finite = jnp.all(jnp.isfinite(logits), axis=-1) & jnp.all(jnp.isfinite(logits_fn(x)), -1)
    value = jnp.where(finite, loss(logits, y), jnp.nan)
    result = guard(Result(x_adv, delta, value, jnp.argmax(logits, -1) != y), checks)
    invalid = jnp.any(jnp.isnan(result.value))
    n_success = jnp.sum(success)
    mean_queries = jnp.where(n_success > 0, jnp.sum(queries * success) / n_success, jnp.nan)
    failure = jnp.sum(alive0 & alive) / jnp.maximum(jnp.sum(alive0), 1)
    failure = jnp.where(invalid, jnp.nan, failure)
    return BlackBoxResult(result, queries, mean_queries, failure)
