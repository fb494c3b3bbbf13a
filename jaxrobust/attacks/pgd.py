"""Gradient attacks on a classifier: PGD (Madry et al. 2018) and FGSM, thin wrappers of
`jaxrobust.optimize`.

A model is any `logits_fn(x) -> logits (B, C)`; use `jaxrobust.models.as_logits_fn` for Flax
modules. Inputs x (B, ...) lie in the threat model's box; labels y (B,) are integers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrobust.errors import (
    Check,
    InputError,
    JaxRobustError,
    check_array,
    check_batch,
    check_callable,
    check_int,
    check_key,
    check_threat,
    enforce,
    label_checks,
    screen,
)
from jaxrobust.losses import Loss, cross_entropy
from jaxrobust.optimize import Result, StepSize, invalidate, optimize
from jaxrobust.threat import ThreatModel, input_checks

Array = jax.Array
LogitsFn = Callable[[Array], Array]


def classifier_objective(
    logits_fn: LogitsFn, y: Array, *, loss: Loss = cross_entropy, target: Array | None = None
) -> Callable[[Array], tuple[Array, Array]]:
    """The attack objective with a success flag, for `optimize(..., has_aux=True)`.

    Untargeted: maximise loss(logits, y); success = misclassified.
    Targeted: maximise −loss(logits, target); success = predicted as target.
    Non-finite logits give a NaN or infinite value, which the engine reports.
    """

    def objective(x_adv: Array) -> tuple[Array, Array]:
        logits = logits_fn(x_adv)
        if logits.ndim != 2 or logits.shape[0] != y.shape[0]:
            raise InputError(
                f"the model must return logits of shape ({y.shape[0]}, num_classes), "
                f"got {logits.shape}"
            )
        pred = jnp.argmax(logits, axis=-1)
        if target is None:
            return loss(logits, y), pred != y
        return -loss(logits, target), pred == target

    return objective


_NO_KEY = object()


def check_classifier_args(
    logits_fn: Any,
    x: Any,
    y: Any,
    threat: Any,
    key: Any = _NO_KEY,
    *,
    loss: Any = _NO_KEY,
    names: tuple[str, ...] | None = None,
    who: str = "this attack",
) -> None:
    """The arguments every classifier attack shares, by type (static; raises now)."""
    check_callable(logits_fn, "logits_fn")
    check_array(x)
    check_array(y, "y")
    if key is not _NO_KEY:
        check_key(key)
    check_threat(threat, names, who)
    if loss is not _NO_KEY:
        check_callable(loss, "loss")


def label_input_checks(
    logits_fn: LogitsFn, x: Array, y: Array, target: Array | None = None
) -> list[Check]:
    """Shapes of x, y (and target) and of the model's logits (static, raise now); labels
    (and targets) in [0, C), raised now when concrete, else returned as traced `Check`s.
    The number of classes C comes from the model's output shape (`jax.eval_shape`: a
    trace, no computation)."""
    check_batch(x, y)
    if target is not None:
        check_array(target, "target")
        check_batch(x, target, name_y="target")
    if np.shape(x)[0] == 0:
        raise InputError(f"x is an empty batch (shape {np.shape(x)}): nothing to attack")
    try:
        logits = jax.eval_shape(logits_fn, x)
    except JaxRobustError:
        raise
    except Exception as e:  # the model's own error, e.g. x of a shape it does not take
        raise InputError(
            f"the model failed on x of shape {np.shape(x)} and dtype {np.result_type(x)}: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    shape = getattr(logits, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != np.shape(x)[0]:
        raise InputError(
            f"the model must return logits of shape ({np.shape(x)[0]}, num_classes), got "
            f"{shape if shape is not None else type(logits).__name__}"
        )
    checks = label_checks(y, shape[1])
    if target is not None:
        checks += label_checks(target, shape[1], name="target")
    return checks


def clip_labels(y: Array, num_classes: int) -> Array:
    """Labels clipped into [0, C) for the objective of an attack whose label check is
    fused at its end (`guard`): a label >= C would make the loss NaN, and an engine run
    inside the attack would report that as non-finite logits before the label check names
    the real problem. The check still fails and poisons the result."""
    return jnp.clip(jnp.asarray(y), 0, num_classes - 1)


def check_attack_inputs(
    x: Array,
    y: Array,
    threat: ThreatModel,
    target: Array | None = None,
    logits_fn: LogitsFn | None = None,
) -> list[Check]:
    """Checks shared by every attack: shapes, a non-empty batch, x finite and inside the
    threat's box, ε finite and >= 0, and with `logits_fn` labels in [0, C). Failures on
    concrete values raise `InputError` now; the traced checks come back, for `guard`."""
    if logits_fn is not None:
        checks = label_input_checks(logits_fn, x, y, target)
    else:
        check_batch(x, y)
        if target is not None:
            check_batch(x, target, name_y="target")
        checks = []
    return screen([*checks, *input_checks(threat, x)])


def _nan_value_check(value: Array) -> Check:
    nan = jnp.isnan(value)
    return Check(
        jnp.any(nan),
        "the attack objective is NaN for {} of {} examples: the model returned non-finite "
        "logits (NaN or inf) for some inputs; check its weights and inputs",
        (jnp.sum(nan), value.shape[0]),
    )


def guard(result: Result, checks: Sequence[Check] = ()) -> Result:
    """Enforce `checks` and a NaN-free `result.value`: raise now when concrete, else
    through one host callback, with `result` poisoned (`optimize.invalidate`)."""
    return invalidate(result, enforce([*checks, _nan_value_check(result.value)]))


def check_result(result: Result) -> Result:
    """`guard` without further checks: a NaN value means non-finite logits."""
    return guard(result)


def default_step_size(threat: ThreatModel, steps: int):
    """Madry et al.'s rule: 2.5·ε/steps, enough to cross the ball from any start."""
    eps = threat.eps if threat.name != "spatial" else 1.0
    return 2.5 * jnp.asarray(eps) / max(steps, 1)


def pgd(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    key: Array,
    *,
    threat: ThreatModel,
    steps: int = 40,
    step_size: StepSize | None = None,
    optimizer: optax.GradientTransformation | None = None,
    restarts: int = 1,
    loss: Loss = cross_entropy,
    target: Array | None = None,
    random_start: bool = True,
    keep_best: bool = True,
    unroll: int | None = None,
) -> Result:
    """Projected gradient descent attack (Madry et al. 2018), per example.

    Args:
      logits_fn: the model, x (B, ...) -> logits (B, C).
      x: (B, ...) clean inputs inside `threat.box`.
      y: (B,) integer labels.
      key: PRNG key for random starts.
      threat: the perturbation set, e.g. `linf(8/255)`, `l2(0.5)`, `spatial()`.
      steps: iterations per restart.
      restarts: number of random restarts.
      step_size: in the threat's norm units; default 2.5·ε/steps. Or give `optimizer`.
      loss: per-example loss to maximise (`cross_entropy`, `margin`, `dlr`, ...).
      target: optional (B,) target labels for a targeted attack.
      random_start: uniform start in the ball (else from x).
      keep_best: per-example best iterate (misclassified first, then highest loss).
      unroll: scan unroll factor of the step loop; None picks the backend's fastest
        (`optimize.loop_plan`); 1 keeps it rolled (a smaller program: compiles and loads
        from the compilation cache faster, for attacks on a few examples).

    Returns:
      `Result(x_adv, delta, value, success)`; success[i] means example i is misclassified
      (or, targeted, classified as target[i]).
    """
    check_classifier_args(logits_fn, x, y, threat, key, loss=loss, who="pgd")
    check_int(steps, "steps", 0)
    checks = label_input_checks(logits_fn, x, y, target)
    if step_size is None and optimizer is None:
        step_size = default_step_size(threat, steps)
    return optimize(
        classifier_objective(logits_fn, y, loss=loss, target=target),
        x,
        key,
        threat=threat,
        steps=steps,
        step_size=step_size,
        optimizer=optimizer,
        restarts=restarts,
        random_start=random_start,
        keep_best=keep_best,
        has_aux=True,
        unroll=unroll,
        checks=checks,
    )


def fgsm(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    key: Array | None = None,
    *,
    threat: ThreatModel,
    step_size: StepSize | None = None,
    loss: Loss = cross_entropy,
    target: Array | None = None,
) -> Result:
    """Fast gradient sign method: one step of size ε (Goodfellow et al. 2015).

    With a key it starts from a uniform random point in the ball and steps 1.25·ε, the
    FGSM-RS adversary of fast adversarial training (Wong, Rice & Kolter 2020).
    """
    check_classifier_args(logits_fn, x, y, threat, loss=loss, who="fgsm")
    if key is not None:
        check_key(key)
    checks = label_input_checks(logits_fn, x, y, target)
    random_start = key is not None
    if step_size is None:
        step_size = jnp.asarray(threat.eps) * (1.25 if random_start else 1.0)
    return optimize(
        classifier_objective(logits_fn, y, loss=loss, target=target),
        x,
        key if key is not None else jax.random.key(0),
        threat=threat,
        steps=1,
        step_size=step_size,
        random_start=random_start,
        keep_best=False,
        has_aux=True,
        checks=checks,
    )
