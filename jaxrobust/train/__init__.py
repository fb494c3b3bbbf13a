"""Robust training: `TrainState`, objectives (standard, PGD-AT, fast-AT, TRADES, spatial,
Gaussian noise for randomized smoothing),
optax optimizers and schedules, the jitted step and the checkpointed training loop."""

from jaxrobust.train.objectives import (
    bound_training,
    fast_at,
    gaussian_noise,
    make_train_step,
    pgd_at,
    ramp,
    smooth_adv,
    spatial_random,
    spatial_worst_of_k,
    standard,
    trades,
)
from jaxrobust.train.optim import make_optimizer, make_schedule
from jaxrobust.train.state import TrainState

__all__ = [
    "TrainState",
    "bound_training",
    "fast_at",
    "gaussian_noise",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "pgd_at",
    "ramp",
    "smooth_adv",
    "spatial_random",
    "spatial_worst_of_k",
    "standard",
    "trades",
]
