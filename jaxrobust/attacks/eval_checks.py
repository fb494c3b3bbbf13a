"""The sanity checks `evaluate` runs after its cascade: the classic signs of an unreliable
evaluation (Carlini et al. 2019; Athalye et al. 2018), reported as `Flag`s with what they
mean. Each check is a small function of measured numbers; the numbers come from one
compiled program (four check attacks) and one gradient program, both kept across calls.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.attacks.eval_plan import Placement, compiled_program
from jaxrobust.attacks.eval_report import EvalReport, Flag
from jaxrobust.attacks.pgd import pgd
from jaxrobust.attacks.suites import ATTACKS, BLACK_BOX
from jaxrobust.losses import cross_entropy
from jaxrobust.parallel import local_copy
from jaxrobust.threat import get_threat

MASKING_FLAGS = (
    "large_eps_not_broken",
    "zero_gradients",
    "black_box_stronger",
    "single_step_stronger",
)
"""Flags that mean the gradients are masked: the white-box cascade's number is not to be
trusted and `evaluate` escalates."""


def large_eps(name: str, dim: int, lo: float, hi: float) -> float:
    """An ε at which every input can reach every other: accuracy must be ~0 there."""
    return {"linf": hi - lo, "l2": math.sqrt(dim) * (hi - lo), "l1": dim * (hi - lo)}[name]


def _check_attacks_program(
    static_model: Any, threat: str, lo: float, hi: float, big: float, e0: float
):
    """(x, y, key, carried) -> accuracies under [PGD-50 at `big`, PGD-10, PGD-100×2, FGSM at
    `e0`]. The four check attacks as one program, their step loops rolled: on a few
    examples their run time is small, and a small program traces, lowers and loads from the
    compilation cache faster (what a warm `jaxrobust eval` spends its time on)."""
    check_attacks = (
        (lambda f, a, b, k, t: pgd(f, a, b, k, threat=t, steps=50, unroll=1), big),
        (lambda f, a, b, k, t: pgd(f, a, b, k, threat=t, steps=10, unroll=1), e0),
        (ATTACKS["pgd-100x2"], e0),
        (ATTACKS["fgsm"], e0),
    )

    def robust_accuracies(a, b, key, carried_model):
        f = static_model if carried_model is None else carried_model
        clean_ok = jnp.argmax(f(a), -1) == b

        def accuracy(fn, e):
            r = fn(f, a, b, key, get_threat(threat, e, lo=lo, hi=hi))
            return jnp.mean(clean_ok & (jnp.argmax(f(r.x_adv), -1) == b))

        return jnp.stack([accuracy(fn, e) for fn, e in check_attacks])

    return robust_accuracies


def _gradient_program(static_model: Any):
    def grad(a, b, carried_model):
        def loss(z):
            f = static_model if carried_model is None else carried_model
            return jnp.sum(cross_entropy(f(z), b))

        return jax.grad(loss)(a)

    return grad


def measure(
    placement: Placement,
    x: np.ndarray,
    y: np.ndarray,
    key: jax.Array,
    threat: str,
    lo: float,
    hi: float,
    eps: list[float],
) -> tuple[dict[str, float], np.ndarray, float]:
    """The check attacks' accuracies and per-example input-gradient norms on (x, y).
    Returns (numbers, gradient norms (n,), compile seconds)."""
    xs, ys = placement.whole(x), placement.whole(y)
    dim = int(np.prod(x.shape[1:]))
    big, e0 = large_eps(threat, dim, lo, hi), min(eps)
    static = placement.static_model
    args: tuple[Any, ...] = (xs, ys, key, placement.carried)
    program, seconds = compiled_program(
        placement.key("checks", threat, lo, hi, big, e0),
        lambda: _check_attacks_program(static, threat, lo, hi, big, e0),
        {},
        args,
    )
    large, pgd10, pgd100, single = (float(v) for v in np.asarray(program(*args)))
    args = (xs, ys, placement.carried)
    program, more = compiled_program(
        placement.key("input_gradient"), lambda: _gradient_program(static), {}, args
    )
    grads = np.asarray(program(*args), np.float64)
    gnorm = np.sqrt((grads.reshape(len(y), -1) ** 2).sum(1))
    numbers = {
        "large_eps": big,
        "large_eps_accuracy": large,
        "pgd10_accuracy": pgd10,
        "pgd100x2_accuracy": pgd100,
        "fgsm_accuracy": single,
        "check_eps": e0,
        "check_examples": len(y),
    }
    return numbers, gnorm, seconds + more


# ----------------------------------------------------------------------------- the checks
# Each takes measured numbers and returns the flags it raises.


def check_monotone(eps: list[float], robust_accuracy: list[float]) -> list[Flag]:
    """Accuracy must not rise with ε."""
    accs = [a for _, a in sorted(zip(eps, robust_accuracy, strict=True))]
    if any(b > a + 1e-9 for a, b in itertools.pairwise(accs)):
        return [
            Flag(
                "non_monotone",
                "robust accuracy rises with ε somewhere: the attacks "
                "are failing to find adversarial examples they should find",
            )
        ]
    return []


def check_large_eps(c: dict[str, float]) -> list[Flag]:
    """At an ε that covers the whole input box accuracy must be ~0."""
    if c["large_eps_accuracy"] > 0.01:
        return [
            Flag(
                "large_eps_not_broken",
                f"PGD leaves {c['large_eps_accuracy']:.1%} "
                f"accuracy at ε = {c['large_eps']:g}, where any input can be turned into any "
                "other: gradients are masked or obfuscated",
            )
        ]
    return []


def check_iterative(c: dict[str, float]) -> list[Flag]:
    """Iterative attacks must be at least as strong as a single step, and more steps and
    restarts must not raise accuracy."""
    single, pgd10, pgd100, e0 = (
        c["fgsm_accuracy"],
        c["pgd10_accuracy"],
        c["pgd100x2_accuracy"],
        c["check_eps"],
    )
    flags = []
    if single < min(pgd10, pgd100) - 0.005:
        flags.append(
            Flag(
                "single_step_stronger",
                f"FGSM ({single:.1%}) beats iterative PGD "
                f"({min(pgd10, pgd100):.1%}) at ε = {e0:g}: the loss surface is "
                "masked (e.g. gradient shattering)",
            )
        )
    if pgd100 > pgd10 + 0.005:
        flags.append(
            Flag(
                "more_steps_weaker",
                f"PGD-100×2 ({pgd100:.1%}) is weaker than PGD-10 "
                f"({pgd10:.1%}): the optimisation is unstable",
            )
        )
    return flags


def check_black_box(
    attacks: list[str], per_attack: dict[str, list[float]], checks: dict[str, Any]
) -> list[Flag]:
    """A black-box attack must not beat the white-box ones before it."""
    flags = []
    for i, name in enumerate(attacks):
        if name in BLACK_BOX and i > 0:
            drop = max(
                before - after
                for before, after in zip(per_attack[attacks[i - 1]], per_attack[name], strict=True)
            )
            checks[f"{name}_extra_breaks"] = drop
            if drop > 0.005:
                flags.append(
                    Flag(
                        "black_box_stronger",
                        f"{name} broke {drop:.1%} of the examples "
                        "that every white-box attack missed: gradients are masked",
                    )
                )
    return flags


def check_gradients(gnorm: np.ndarray, checks: dict[str, Any]) -> list[Flag]:
    """Zero or vanishing input gradients."""
    checks["zero_gradient_fraction"] = float(np.mean(gnorm < 1e-12))
    if checks["zero_gradient_fraction"] > 0.05:
        return [
            Flag(
                "zero_gradients",
                f"the loss gradient is zero for "
                f"{checks['zero_gradient_fraction']:.0%} of the inputs (stop_gradient, "
                "a saturated softmax or a non-differentiable layer): gradient attacks "
                "are blind there; trust only the gradient-free results",
            )
        ]
    return []


def check_outputs(raw_fn: Any, x: np.ndarray) -> list[Flag]:
    """A deterministic model must return the same logits twice, and logits, not
    probabilities."""
    # Eagerly, on this process's copy of the weights: op-by-op programs on arrays that
    # span processes would each be a collective. (With one process local_copy changes
    # nothing.)
    local_fn, xl = local_copy(raw_fn), jnp.asarray(x)
    a, b = np.asarray(local_fn(xl)), np.asarray(local_fn(xl))
    flags = []
    if not np.array_equal(a, b):
        flags.append(
            Flag(
                "nondeterministic",
                "the model returns different logits for the "
                "same input: it is randomised; pass it as logits_fn(x, key) so "
                "evaluate attacks it with EOT (suite 'rand')",
            )
        )
    if a.min() >= 0 and a.max() <= 1 and np.allclose(a.sum(1), 1, atol=1e-3):
        flags.append(
            Flag(
                "softmax_outputs",
                "the model's outputs are probabilities, not logits: "
                "cross-entropy on them has tiny gradients; return the logits",
            )
        )
    return flags


def sanity_checks(
    report: EvalReport,
    raw_fn: Any,
    placement: Placement,
    x: np.ndarray,
    y: np.ndarray,
    key: jax.Array,
    threat: str,
    lo: float,
    hi: float,
    randomised: bool,
) -> None:
    """Run every check on `report` (from the cascade on x, y, whose first examples are
    checked here) and append the flags and numbers to it."""
    flags, checks = report.flags, report.checks
    flags += check_monotone(report.eps, report.robust_accuracy)
    numbers, gnorm, seconds = measure(placement, x, y, key, threat, lo, hi, report.eps)
    checks.update(numbers)
    report.compile_seconds += seconds  # timings stay out of `checks` (model numbers only)
    flags += check_large_eps(numbers)
    flags += check_iterative(numbers)
    flags += check_black_box(report.attacks, report.per_attack, checks)
    flags += check_gradients(gnorm, checks)
    if not randomised:
        flags += check_outputs(raw_fn, x)
