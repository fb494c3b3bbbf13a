"""Optax optimizers and learning-rate schedules from a config."""

from __future__ import annotations

import ml_collections
import optax

from jaxrobust.errors import ConfigError


def make_schedule(
    name: str, learning_rate: float, total_steps: int, warmup_steps: int = 0
) -> optax.Schedule:
    """Learning rate per step.

    constant; piecewise (×0.1 at 50% and 75% of training, Madry et al.'s CIFAR recipe);
    cosine (decay to 0); cyclic (linear 0 → peak at 40% → 0, Wong et al.'s fast-AT recipe).
    An optional linear warm-up precedes constant, piecewise and cosine.
    """
    total_steps = max(int(total_steps), 1)
    main_steps = max(total_steps - warmup_steps, 1)
    if name == "constant":
        main = optax.constant_schedule(learning_rate)
    elif name == "piecewise":
        main = optax.piecewise_constant_schedule(
            learning_rate, {int(0.5 * main_steps): 0.1, int(0.75 * main_steps): 0.1}
        )
    elif name == "cosine":
        main = optax.cosine_decay_schedule(learning_rate, main_steps)
    elif name == "cyclic":
        peak = max(int(0.4 * total_steps), 1)
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, learning_rate, peak),
                optax.linear_schedule(learning_rate, 0.0, max(total_steps - peak, 1)),
            ],
            [peak],
        )
    else:
        raise ConfigError(f"unknown schedule {name!r}; known: constant, piecewise, cosine, cyclic")
    if warmup_steps <= 0:
        return main
    return optax.join_schedules(
        [optax.linear_schedule(0.0, learning_rate, warmup_steps), main], [warmup_steps]
    )


def make_optimizer(
    cfg: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int
) -> optax.GradientTransformation:
    """The optimizer described by `cfg.optimizer` (adam, adamw or sgd with momentum)."""
    o = cfg.optimizer
    schedule = make_schedule(
        o.schedule, o.learning_rate, total_steps, int(o.warmup_epochs * steps_per_epoch)
    )
    if o.name == "adam":
        tx = optax.adam(schedule)
        if o.weight_decay:
            tx = optax.chain(optax.add_decayed_weights(o.weight_decay), tx)
    elif o.name == "adamw":
        tx = optax.adamw(schedule, weight_decay=o.weight_decay)
    elif o.name == "sgd":
        # Coupled weight decay (added to the gradient), as in the PyTorch references.
        tx = optax.chain(
            optax.add_decayed_weights(o.weight_decay),
            optax.sgd(schedule, momentum=o.momentum or None, nesterov=False),
        )
    else:
        raise ConfigError(f"unknown optimizer {o.name!r}; known: adam, adamw, sgd")
    if o.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
    return tx
