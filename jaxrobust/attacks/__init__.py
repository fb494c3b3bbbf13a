"""Attacks: thin wrappers of the `jaxrobust.optimize` engine, gradient-free searches, and
the `evaluate` cascade (`jaxrobust.attacks.cascade`; the function `evaluate` has no
module of the same name to shadow)."""

from jaxrobust.attacks.apgd import apgd, apgd_rule, apgd_targeted, checkpoints
from jaxrobust.attacks.blackbox import BlackBoxResult, nes_gradient, query_limited_attack
from jaxrobust.attacks.cascade import evaluate
from jaxrobust.attacks.eval_report import Escalation, EvalReport, Flag
from jaxrobust.attacks.fab import fab, fab_targeted, projection_l2, projection_linf
from jaxrobust.attacks.pgd import classifier_objective, default_step_size, fgsm, pgd
from jaxrobust.attacks.spatial import grid, transform_grid, vote, worst_of_k
from jaxrobust.attacks.square import SquareResult, square
from jaxrobust.attacks.suites import ATTACKS, SUITES, expectation_over_transformation

__all__ = [
    "ATTACKS",
    "SUITES",
    "BlackBoxResult",
    "Escalation",
    "EvalReport",
    "Flag",
    "SquareResult",
    "apgd",
    "apgd_rule",
    "apgd_targeted",
    "checkpoints",
    "classifier_objective",
    "default_step_size",
    "evaluate",
    "expectation_over_transformation",
    "fab",
    "fab_targeted",
    "fgsm",
    "grid",
    "nes_gradient",
    "pgd",
    "projection_l2",
    "projection_linf",
    "query_limited_attack",
    "square",
    "transform_grid",
    "vote",
    "worst_of_k",
]
