"""Image synthesis with one (robust) classifier and gradient steps (Santurkar et al. 2019,
"Image synthesis with a single (robust) classifier").

Every task is the `jaxrobust.optimize` engine with normalised ℓ2 steps (each step moves the
whole example by `step_size`, input units, along the normalised gradient) on a
cross-entropy objective toward a class, from a task-specific start:

- `generate`: seeds drawn from a class-conditional Gaussian fitted on training images
  (`fit_class_gaussian`, `sample_seeds`), then targeted steps toward the class;
- `inpaint`: CE toward the true class plus a weighted squared ℓ2 distance to the visible
  pixels, from the corrupted image;
- `super_resolve`: nearest-neighbour upsampling, then CE toward the class in a small ℓ2
  ball around the upsampled image;
- `translate` (image-to-image translation between two classes) and `sketch_to_image`:
  targeted steps in an ℓ2 ball around the source image / sketch.

Models are `logits_fn(x) -> (B, C)`; inputs (B, H, W, K) in [lo, hi] (default [0, 1]).
Everything is pure and jittable (steps and sizes are static Python values; arrays may be
traced) and vmappable; bad concrete input raises `InputError` (a class outside [0, C), a
mask that does not match the images, eps < 0), as in `optimize`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.errors import (
    Check,
    InputError,
    check_array,
    check_callable,
    check_eps,
    check_int,
    check_key,
    check_number,
    eval_shape_or_name,
    index_checks,
    screen,
)
from jaxrobust.losses import cross_entropy
from jaxrobust.optimize import Result, StepSize, optimize
from jaxrobust.threat import ThreatModel, l2, unconstrained

Array = jax.Array
LogitsFn = Callable[[Array], Array]


# ------------------------------------------------------------------------------ helpers


def num_classes_of(logits_fn: LogitsFn, x: Array) -> int:
    """The number of classes C of `logits_fn` on inputs like x (shapes only, no compute).

    Raises:
      InputError: the model fails on x, or does not return (B, C) logits.
    """
    out = eval_shape_or_name(
        lambda: logits_fn(x), f"the model failed on x of shape {tuple(np.shape(x))}"
    )
    if len(out.shape) != 2 or out.shape[0] != x.shape[0]:
        raise InputError(
            f"the model must return logits of shape ({x.shape[0]}, num_classes), got {out.shape}"
        )
    return int(out.shape[1])


def class_checks(y: Array, num_classes: int, batch: int, name: str = "target") -> list[Check]:
    """Class indices, one per example, in [0, C) (`index_checks`)."""
    return index_checks(y, num_classes, batch, name, "the model's classes", "class")


def _threat(eps: float | Array | None, lo: float, hi: float) -> ThreatModel:
    if eps is None:
        return unconstrained(lo=lo, hi=hi, step_norm="l2")
    check_eps(eps)
    return l2(eps, lo=lo, hi=hi)


def _check_images(x: Array, name: str) -> None:
    check_array(x, name)
    if x.ndim != 4 or x.shape[0] == 0:
        raise InputError(f"{name} must be a non-empty batch of images (B, H, W, K), got {x.shape}")


def toward_class(
    logits_fn: LogitsFn,
    x_start: Array,
    target: Array,
    key: Array,
    *,
    steps: int,
    step_size: StepSize,
    eps: float | Array | None = None,
    penalty: Callable[[Array], Array] | None = None,
    lo: float = 0.0,
    hi: float = 1.0,
) -> Result:
    """The core of every synthesis task: minimise CE(logits_fn(x), target) (+ `penalty(x)`,
    per example (B,)) from `x_start` with `steps` normalised ℓ2 steps of `step_size`, inside
    the ℓ2 ball of radius `eps` around x_start (None: anywhere in the box [lo, hi]).

    Returns `Result(x_adv, delta, value, success)`: x_adv (B, ...) the synthesised inputs
    (the best iterate: the lowest objective seen), delta = x_adv − x_start, value (B,) the
    objective there (nats, plus the penalty), success (B,) whether the model predicts
    `target` there. Deterministic: no randomness is used (`key` is the engine's, unused
    without a random start), so the same inputs give the same result.

    Raises:
      InputError: a target outside [0, C) or of the wrong shape, eps < 0 / NaN, x_start
        non-finite or outside the box, steps < 0, a negative step size.
    """
    check_callable(logits_fn, "logits_fn")
    _check_images(x_start, "x_start")
    check_key(key)
    check_int(steps, "steps", 0)
    threat = _threat(eps, lo, hi)
    c = num_classes_of(logits_fn, x_start)
    checks = class_checks(target, c, x_start.shape[0])
    target = jnp.asarray(target)

    def objective(x):
        logits = logits_fn(x)
        value = cross_entropy(logits, target)
        if penalty is not None:
            value = value + penalty(x)
        return value, jnp.argmax(logits, -1) == target

    # keep_best with has_aux prefers iterates classified as the target, then lower loss.
    return optimize(
        objective,
        x_start,
        key,
        threat=threat,
        steps=steps,
        step_size=step_size,
        random_start=False,
        keep_best=True,
        maximize=False,
        has_aux=True,
        checks=checks,
    )


# ------------------------------------------------------------- class-conditional seeds


def downsample(x: Array, factor: int) -> Array:
    """Average pooling by `factor` (B, H, W, K) -> (B, H/f, W/f, K); H, W divisible by f."""
    b, h, w, k = x.shape
    if h % factor or w % factor:
        raise InputError(f"image size {h}x{w} is not divisible by the factor {factor}")
    return x.reshape(b, h // factor, factor, w // factor, factor, k).mean((2, 4))


def upsample(x: Array, factor: int) -> Array:
    """Nearest-neighbour upsampling by `factor` (B, h, w, K) -> (B, h·f, w·f, K)."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


@dataclasses.dataclass(frozen=True)
class ClassGaussian:
    """A Gaussian per class over (downscaled) images: the seeds of `generate`.

    mean: (C, D) with D = (H/f)·(W/f)·K; chol: (C, D, D) lower Cholesky factors of the
    covariances; small_shape (h, w, K) and factor f are static (jit-safe pytree metadata).
    """

    mean: Array
    chol: Array
    small_shape: tuple[int, int, int]
    factor: int

    @property
    def num_classes(self) -> int:
        return int(self.mean.shape[0])


jax.tree_util.register_dataclass(
    ClassGaussian, data_fields=["mean", "chol"], meta_fields=["small_shape", "factor"]
)


def fit_class_gaussian(
    x: Array, y: Array, num_classes: int, *, factor: int = 1, ridge: float = 1e-3
) -> ClassGaussian:
    """Fit a full-covariance Gaussian per class to images downscaled by `factor`.

    Santurkar et al. 2019 fit one on downscaled ImageNet images; for 8x8 digits factor=1
    (the images themselves, 64 dimensions). The covariance of class c is the sample
    covariance of its images (pixel units²) plus `ridge`·I, so it is positive definite even
    for classes with fewer images than dimensions.

    Args:
      x: (N, H, W, K) training images; y: (N,) int labels in [0, num_classes).
      num_classes: C (every class needs at least one image).
      factor: the downscaling factor (H and W divisible by it).
      ridge: the variance added to the diagonal (>= 0).

    Raises:
      InputError: labels out of range or shape mismatch, a class without images, factor < 1.
    """
    _check_images(x, "x")
    check_int(num_classes, "num_classes", 1)
    check_int(factor, "factor", 1)
    check_number(ridge, "ridge", 0.0)
    screen(class_checks(y, num_classes, x.shape[0], "y"))
    counts = np.bincount(np.asarray(y), minlength=num_classes)
    if np.any(counts == 0):
        raise InputError(f"every class needs training images; counts per class {counts}")
    mean, chol = _fit(jnp.asarray(x, jnp.float32), jnp.asarray(y), num_classes, factor, ridge)
    h, w, k = x.shape[1:]
    return ClassGaussian(mean, chol, (h // factor, w // factor, k), int(factor))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _fit(x: Array, y: Array, num_classes: int, factor: int, ridge: float) -> tuple[Array, Array]:
    """Per-class means (C, D) and Cholesky factors (C, D, D) of the covariances + ridge·I."""
    small = downsample(x, factor)
    flat = small.reshape(small.shape[0], -1)
    onehot = jax.nn.one_hot(y, num_classes)  # (N, C)
    counts = onehot.sum(0)
    mean = (onehot.T @ flat) / counts[:, None]
    centred = flat[None] - mean[:, None]  # (C, N, D)
    cov = jnp.einsum("cnd,cne->cde", centred * onehot.T[:, :, None], centred)
    cov = cov / jnp.maximum(counts - 1.0, 1.0).reshape(-1, 1, 1)
    cov = cov + ridge * jnp.eye(flat.shape[1])
    return mean, jnp.linalg.cholesky(cov)


def sample_seeds(
    gaussian: ClassGaussian, classes: Array, key: Array, *, lo: float = 0.0, hi: float = 1.0
) -> Array:
    """Draw one seed per entry of `classes` (B,) from its class's Gaussian, upsample it
    (nearest neighbour, by the fit's factor) and clip it to [lo, hi]: (B, H, W, K).

    The same key gives the same seeds. Raises `InputError` for classes outside [0, C).
    """
    check_key(key)
    classes = jnp.asarray(classes)
    if classes.ndim != 1:
        raise InputError(f"classes must be a (B,) array of class indices, got {classes.shape}")
    screen(class_checks(classes, gaussian.num_classes, classes.shape[0], "classes"))
    return _sample(gaussian, classes, key, lo, hi)


@jax.jit
def _sample(gaussian: ClassGaussian, classes: Array, key: Array, lo: float, hi: float) -> Array:
    z = jax.random.normal(key, (classes.shape[0], gaussian.mean.shape[1]))
    flat = gaussian.mean[classes] + jnp.einsum("bde,be->bd", gaussian.chol[classes], z)
    small = flat.reshape((classes.shape[0], *gaussian.small_shape))
    return jnp.clip(upsample(small, gaussian.factor), lo, hi)


# --------------------------------------------------------------------------------- tasks


def generate(
    logits_fn: LogitsFn,
    gaussian: ClassGaussian,
    target: Array,
    key: Array,
    *,
    steps: int,
    step_size: StepSize,
    seed_classes: Array | None = None,
    eps: float | Array | None = None,
) -> Result:
    """Class-conditional generation: a seed per example from the class-conditional Gaussian
    of `seed_classes` (default: the target class itself, as in the paper; another class
    makes the task harder: the steps must turn one class into another), then `toward_class`
    the target with `steps` normalised ℓ2 steps (in the ℓ2 ball `eps` around the seed, or
    anywhere in [0, 1] with eps None).

    Args:
      logits_fn: the model. gaussian: from `fit_class_gaussian`.
      target: (B,) int classes to generate. key: draws the seeds (same key, same images).
    Returns:
      `Result` as `toward_class` (delta is the change from the seed; x_adv − delta = seed).
    """
    check_callable(logits_fn, "logits_fn")
    check_key(key)
    target = jnp.asarray(target)
    if target.ndim != 1 or target.shape[0] == 0:
        raise InputError(f"target must be a non-empty (B,) array of classes, got {target.shape}")
    seed_classes = target if seed_classes is None else jnp.asarray(seed_classes)
    seeds = sample_seeds(gaussian, seed_classes, key)
    if seeds.shape[0] != target.shape[0]:
        raise InputError(f"seed_classes {seeds.shape[0]} and target {target.shape[0]} differ")
    return toward_class(logits_fn, seeds, target, key, steps=steps, step_size=step_size, eps=eps)


def inpaint(
    logits_fn: LogitsFn,
    x: Array,
    mask: Array,
    y: Array,
    key: Array,
    *,
    steps: int,
    step_size: StepSize,
    weight: float = 10.0,
    eps: float | Array | None = None,
) -> Result:
    """Inpainting: fill the pixels where `mask` is 1 so that the image looks like class y.

    Minimises CE(logits_fn(x'), y) + weight · Σ (1 − mask)·(x' − x)² (the squared ℓ2
    distance to the visible pixels, pixel units²) from x (whatever the missing region holds:
    the corrupted image) with normalised ℓ2 steps.

    Args:
      x: (B, H, W, K) corrupted images in [0, 1].
      mask: 1 where pixels are missing, 0 where visible; shape (H, W), (H, W, 1),
        (H, W, K) or (B, H, W, K|1), values in [0, 1].
      y: (B,) the true classes. weight: the visible-pixel penalty's weight (>= 0).
    Returns:
      `Result`: x_adv the inpainted images.
    Raises:
      InputError: a mask that does not match the images, y out of range, weight < 0.
    """
    _check_images(x, "x")
    check_number(weight, "weight", 0.0)
    mask = _mask_like(mask, x)
    visible = 1.0 - mask
    x0 = jnp.asarray(x)

    def penalty(z):
        return weight * jnp.sum((visible * (z - x0)) ** 2, axis=(1, 2, 3))

    return toward_class(
        logits_fn, x, y, key, steps=steps, step_size=step_size, eps=eps, penalty=penalty
    )


def _mask_like(mask: Array, x: Array) -> Array:
    check_array(mask, "mask")
    m = jnp.asarray(mask, x.dtype)
    b, h, w, k = x.shape
    if m.ndim == 2:
        m = m[..., None]
    ok = (m.ndim == 3 and m.shape[:2] == (h, w) and m.shape[2] in (1, k)) or (
        m.ndim == 4 and m.shape[0] in (1, b) and m.shape[1:3] == (h, w) and m.shape[3] in (1, k)
    )
    if not ok:
        raise InputError(
            f"mask of shape {np.shape(mask)} does not match the images {tuple(x.shape)}: "
            f"give (H, W) = ({h}, {w}), (H, W, 1|{k}) or (B, H, W, 1|{k})"
        )
    screen(
        [
            Check(
                jnp.any((m < 0) | (m > 1) | jnp.isnan(m)),
                "mask values must lie in [0, 1] (1 = missing); got values outside",
            )
        ]
    )
    return m if m.ndim == 4 else m[None]


def super_resolve(
    logits_fn: LogitsFn,
    x_low: Array,
    y: Array,
    key: Array,
    *,
    factor: int,
    eps: float | Array,
    steps: int,
    step_size: StepSize,
) -> Result:
    """Super-resolution: upsample x_low (B, h, w, K) by `factor` (nearest neighbour), then
    minimise CE toward class y in the ℓ2 ball of radius `eps` around the upsampled image.

    The result stays within eps of the upsampled image, so its average-pooled downsample
    stays within eps/factor (ℓ2) of x_low (pooling a block of f² pixels shrinks the ℓ2 norm
    by at least f, Cauchy-Schwarz).

    Returns:
      `Result`: x_adv (B, h·f, w·f, K); delta the change from the upsampled image.
    """
    _check_images(x_low, "x_low")
    check_int(factor, "factor", 1)
    check_eps(eps)
    return toward_class(
        logits_fn, upsample(x_low, factor), y, key, steps=steps, step_size=step_size, eps=eps
    )


def translate(
    logits_fn: LogitsFn,
    x: Array,
    target: Array,
    key: Array,
    *,
    eps: float | Array,
    steps: int,
    step_size: StepSize,
) -> Result:
    """Image-to-image translation between classes: move images x (of one class) toward the
    class `target` (B,) inside the ℓ2 ball of radius eps around them (the paper's
    horse → zebra, here e.g. digit 3 → 8), with targeted normalised ℓ2 steps."""
    _check_images(x, "x")
    check_eps(eps)
    return toward_class(logits_fn, x, target, key, steps=steps, step_size=step_size, eps=eps)


def sketch_to_image(
    logits_fn: LogitsFn,
    sketch: Array,
    target: Array,
    key: Array,
    *,
    eps: float | Array,
    steps: int,
    step_size: StepSize,
) -> Result:
    """Sketch-to-image: targeted normalised ℓ2 steps from a crude drawing (B, H, W, K) in
    [0, 1] toward class `target` inside the ℓ2 ball of radius eps around the sketch (a
    larger ball than translation's: the sketch only suggests the shape)."""
    _check_images(sketch, "sketch")
    check_eps(eps)
    return toward_class(logits_fn, sketch, target, key, steps=steps, step_size=step_size, eps=eps)


__all__ = [
    "ClassGaussian",
    "downsample",
    "fit_class_gaussian",
    "generate",
    "inpaint",
    "sample_seeds",
    "sketch_to_image",
    "super_resolve",
    "toward_class",
    "translate",
    "upsample",
]
