"""Backdoor poisoning of a training set, and how well a trained model carries the backdoor.

- `dirty_label` (Gu et al. 2017, "BadNets"): stamp the trigger on a random fraction
  `rate` of the training set, drawn from the images whose class is not the target, and
  relabel them as the target class.
- `label_consistent` (Turner, Tsipras & Madry 2019, "Label-Consistent Backdoor
  Attacks"): poison only images of the target class, labels unchanged: each is first made
  hard to classify by an untargeted PGD perturbation (`jaxrobust.pgd`, any pixel threat
  model, against a robust or a standard source model), then stamped. A model can fit a
  hard image only by leaning on the trigger; `logits_fn=None` gives the same poisoning
  without the perturbation (the trigger-only baseline).

The poison rate is a fraction of the whole training set in both: exactly round(rate·N)
images are poisoned (N the number of examples). Both are pure functions of an explicit
key, jittable (rate, target and the trigger's place are static Python values); concrete
bad input raises `InputError` at once.

`backdoor_metrics` measures the result on a test set: attack success (the fraction of
triggered test images of the non-target classes classified as the target) and clean
accuracy. `write_poisoned_dataset` stores a poisoned training set as a derived tfds dataset
(`jaxrobust.data.derived`) that `jaxrobust train --set dataset=derived:<folder>` reads.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.errors import (
    InputError,
    check_array,
    check_batch,
    check_int,
    check_key,
    check_number,
    check_range,
    is_concrete,
)
from jaxrobust.poison.triggers import Trigger, stamp
from jaxrobust.threat import ThreatModel

Array = jax.Array


class Poisoned(NamedTuple):
    """A poisoned training set.

    Attributes:
      x: (N, H, W, C) images in [0, 1], the poisoned ones replaced.
      y: (N,) labels (dirty-label: the poisoned ones set to the target).
      poisoned: (N,) bool, which examples were poisoned.
      indices: (round(rate·N),) int32, the poisoned examples' positions.
    """

    x: Array
    y: Array
    poisoned: Array
    indices: Array


def poison_count(rate: float, n: int) -> int:
    """The number of poisoned examples for a rate of the training set: round(rate·n)."""
    rate = check_number(rate, "rate", 0.0, 1.0)
    return round(rate * n)


def _check_common(key, x, y, target, rate, trigger, num_classes) -> int:
    check_key(key)
    check_array(x)
    check_batch(x, y)
    if np.ndim(x) != 4:
        raise InputError(f"x must be images (N, H, W, C), got shape {np.shape(x)}")
    num_classes = check_int(num_classes, "num_classes", 2)
    target = check_int(target, "target", 0)
    if target >= num_classes:
        raise InputError(f"target class {target} is not a class: need 0 <= target < {num_classes}")
    check_number(rate, "rate", 0.0, 1.0)
    if not isinstance(trigger, Trigger):
        raise InputError(f"trigger must be a Trigger (make_trigger), got {type(trigger).__name__}")
    h, w, c = np.shape(trigger.pattern)
    if h > x.shape[1] or w > x.shape[2] or c != x.shape[3]:
        raise InputError(
            f"the trigger ({h}x{w}x{c}) is larger than the images {tuple(x.shape[1:])}"
        )
    check_range(x, 0.0, 1.0)
    if is_concrete(y):
        arr = np.asarray(y)
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise InputError(f"y holds labels outside [0, {num_classes})")
    return target


def _choose(key: Array, eligible: Array, count: int) -> Array:
    """`count` random indices among the eligible examples (top-k of uniform scores)."""
    u = jax.random.uniform(key, eligible.shape)
    scores = jnp.where(eligible, u, -1.0)
    return jax.lax.top_k(scores, count)[1].astype(jnp.int32)


def _enough(eligible: Any, count: int, what: str) -> None:
    if is_concrete(eligible):
        have = int(np.sum(np.asarray(eligible)))
        if count > have:
            raise InputError(
                f"a poison count of {count} needs {count} {what} examples, but there are "
                f"only {have}: lower the rate"
            )


def dirty_label(
    key: Array,
    x: Array,
    y: Array,
    *,
    target: int,
    rate: float,
    trigger: Trigger,
    num_classes: int,
) -> Poisoned:
    """Dirty-label trigger backdoor (Gu et al. 2017).

    Args:
      key: PRNG key choosing the poisoned examples.
      x: (N, H, W, C) training images in [0, 1]; y: (N,) integer labels.
      target: the class the trigger should cause.
      rate: fraction of the training set to poison, in [0, 1]; round(rate·N) examples,
        drawn uniformly from those whose label is not `target`.
      trigger: what to stamp (`make_trigger`).
      num_classes: number of classes.

    Returns:
      `Poisoned(x, y, poisoned, indices)`: the chosen images stamped and relabelled
      `target`, every other example unchanged.

    Raises:
      InputError: rate outside [0, 1], a target outside [0, num_classes), a trigger that
        does not fit the images, images outside [0, 1], more poison than non-target
        examples.
    """
    target = _check_common(key, x, y, target, rate, trigger, num_classes)
    return _dirty_label(key, x, y, target, poison_count(rate, x.shape[0]), trigger)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _dirty_label_jit(key, x, y, target, count, trigger):
    idx = _choose(key, y != target, count)
    x = jnp.asarray(x).at[idx].set(stamp(x[idx], trigger))
    y = jnp.asarray(y).at[idx].set(jnp.asarray(target, jnp.asarray(y).dtype))
    poisoned = jnp.zeros(x.shape[0], bool).at[idx].set(True)
    return Poisoned(x, y, poisoned, idx)


def _dirty_label(key, x, y, target, count, trigger) -> Poisoned:
    _enough(np.asarray(y) != target if is_concrete(y) else y, count, "non-target")
    return _dirty_label_jit(key, x, y, target, count, trigger)


def label_consistent(
    key: Array,
    x: Array,
    y: Array,
    *,
    target: int,
    rate: float,
    trigger: Trigger,
    num_classes: int,
    logits_fn: Callable[[Array], Array] | None = None,
    threat: ThreatModel | None = None,
    steps: int = 20,
    step_size: float | None = None,
) -> Poisoned:
    """Label-consistent backdoor (Turner, Tsipras & Madry 2019).

    Args:
      key: PRNG key (the choice of images and PGD's random starts).
      x: (N, H, W, C) training images in [0, 1]; y: (N,) integer labels.
      target: the class the trigger should cause; only its images are poisoned.
      rate: fraction of the training set to poison; round(rate·N) target-class images.
      trigger: what to stamp after the perturbation (`make_trigger`).
      num_classes: number of classes.
      logits_fn: the source model the perturbation is computed against (robust or
        standard); None: no perturbation (the trigger-only baseline).
      threat: the perturbation's ball (e.g. `jaxrobust.linf(0.3)`, `jaxrobust.l2(2.0)`);
        required with `logits_fn`.
      steps: untargeted PGD (cross-entropy on the true label) steps.
      step_size: PGD's step size (default 2.5·ε/steps).

    Returns:
      `Poisoned(x, y, poisoned, indices)`: labels unchanged; only target-class images
      differ from x.

    Raises:
      InputError: as `dirty_label`, a missing threat, more poison than target images.
    """
    target = _check_common(key, x, y, target, rate, trigger, num_classes)
    if logits_fn is not None and threat is None:
        raise InputError("label_consistent with a source model needs a threat (e.g. linf(0.3))")
    check_int(steps, "steps", 0)
    count = poison_count(rate, x.shape[0])
    _enough(np.asarray(y) == target if is_concrete(y) else y, count, "target-class")
    k_choose, k_pgd = jax.random.split(key)
    idx = _choose(k_choose, jnp.asarray(y) == target, count)
    x = jnp.asarray(x)
    chosen = x[idx]
    if logits_fn is not None and count > 0:
        from jaxrobust.attacks.pgd import pgd

        assert threat is not None  # required with logits_fn, checked above
        res = pgd(
            logits_fn,
            chosen,
            jnp.asarray(y)[idx],
            k_pgd,
            threat=threat,
            steps=steps,
            step_size=step_size,
        )
        chosen = res.x_adv
    x = x.at[idx].set(stamp(chosen, trigger))
    poisoned = jnp.zeros(x.shape[0], bool).at[idx].set(True)
    return Poisoned(x, jnp.asarray(y), poisoned, idx)


class BackdoorMetrics(NamedTuple):
    """How a model trained on poisoned data behaves on a test set.

    Attributes:
      attack_success: fraction of triggered non-target test images classified as target.
      n_triggered: number of those images.
      clean_accuracy: accuracy on the clean test set.
      n_clean: its size.
      hits: (n_triggered,) bool per triggered image; correct: (n_clean,) bool per image.
    """

    attack_success: float
    n_triggered: int
    clean_accuracy: float
    n_clean: int
    hits: np.ndarray
    correct: np.ndarray


def backdoor_metrics(
    logits_fn: Callable[[Array], Array],
    x: Any,
    y: Any,
    *,
    trigger: Trigger,
    target: int,
    batch_size: int = 512,
) -> BackdoorMetrics:
    """Attack success and clean accuracy of `logits_fn` on a clean test set (x, y).

    The triggered set is `stamp(x, trigger)` over the test images whose label is not the
    target (images of the target class say nothing about the backdoor).
    """
    x, y = np.asarray(x), np.asarray(y)
    check_batch(x, y)
    target = check_int(target, "target", 0)

    def predict(xs):
        out = [
            np.asarray(jnp.argmax(logits_fn(jnp.asarray(xs[i : i + batch_size])), -1))
            for i in range(0, len(xs), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros(0, int)

    correct = predict(x) == y
    other = x[y != target]
    hits = predict(np.asarray(stamp(other, trigger))) == target if len(other) else np.zeros(0, bool)
    return BackdoorMetrics(
        float(hits.mean()) if hits.size else float("nan"),
        int(hits.size),
        float(correct.mean()) if correct.size else float("nan"),
        int(correct.size),
        hits,
        correct,
    )


def triggered_test_split(x: Any, y: Any, *, trigger: Trigger, target: int) -> tuple:
    """The test images of the non-target classes, stamped, labelled `target`: a model's
    accuracy on this split is the backdoor's attack success rate."""
    x, y = np.asarray(x), np.asarray(y)
    keep = y != target
    return np.asarray(stamp(x[keep], trigger)), np.full(int(keep.sum()), target, np.int64)


def write_poisoned_dataset(
    folder: str | os.PathLike[str],
    poisoned: Poisoned,
    test: tuple[Any, Any],
    *,
    trigger: Trigger,
    target: int,
    info: Any,
    description: str = "",
    metadata: dict[str, Any] | None = None,
) -> str:
    """Store a poisoned training set as a derived dataset; returns its name.

    Splits: "train" (the poisoned set), "test" (the clean test set), "test_triggered"
    (`triggered_test_split`: accuracy on it is the attack success rate). dataset.json
    records the target, the trigger, the poison count and the poisoned indices, so a
    detector's recall can be read back. Train on it with
    `jaxrobust train --set dataset=derived:<folder>`.

    Args:
      folder: the dataset's folder.
      poisoned: `dirty_label` or `label_consistent`'s result.
      test: the clean (x_test, y_test).
      trigger: the backdoor's trigger (to build the triggered split and record it).
      target: the backdoor's target class.
      info: the source dataset's `DatasetInfo` (classes and normalisation statistics).
      description: recorded in the tfds info and dataset.json.
      metadata: recorded in the tfds info and dataset.json.
    """
    from jaxrobust.data.derived import write_derived

    x_test, y_test = np.asarray(test[0]), np.asarray(test[1])
    x_trig, y_trig = triggered_test_split(x_test, y_test, trigger=trigger, target=target)
    meta = {
        **(metadata or {}),
        "poison": {
            "target": int(target),
            "count": int(np.sum(np.asarray(poisoned.poisoned))),
            "indices": [int(i) for i in np.sort(np.asarray(poisoned.indices))],
            "trigger": {
                "pattern": np.asarray(trigger.pattern).tolist(),
                "row": int(trigger.row),
                "col": int(trigger.col),
                "amplitude": float(trigger.amplitude),
            },
        },
    }
    return write_derived(
        folder,
        {
            "train": (np.asarray(poisoned.x), np.asarray(poisoned.y)),
            "test": (x_test, y_test),
            "test_triggered": (x_trig, y_trig),
        },
        num_classes=info.num_classes,
        mean=tuple(info.mean),
        std=tuple(info.std),
        description=description or "A backdoor-poisoned training set (jaxrobust.poison).",
        metadata=meta,
    )
