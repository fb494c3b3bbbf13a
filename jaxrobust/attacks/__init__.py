"""Attacks: thin wrappers of the `jaxrobust.optimize` engine."""

from jaxrobust.attacks.pgd import classifier_objective, default_step_size, fgsm, pgd
from jaxrobust.attacks.spatial import grid, transform_grid, worst_of_k

__all__ = [
    "classifier_objective",
    "default_step_size",
    "fgsm",
    "grid",
    "pgd",
    "transform_grid",
    "worst_of_k",
]
