"""Threat models: the perturbation sets that attacks search and training defends against.

A `ThreatModel` is a small NamedTuple of pure, per-example functions (like an optax
transform). Inputs `x` have shape (B, ...) with a leading batch axis; perturbations `delta`
have the shape `zeros(x)` returns: the shape of `x` for pixel threats, (B, 3) for spatial.

- `init(key, x) -> delta`      random start, uniform in the set (intersected with the box);
- `project(delta, x) -> delta` onto the set ∩ {delta : lo <= x + delta <= hi}, idempotent;
- `ascent(grad) -> direction`  steepest ascent for the norm (unit length in that norm);
- `apply(x, delta) -> x_adv`   the perturbed input;
- `zeros(x) -> delta`          the zero perturbation;
- `free(grad, delta, x) -> grad` (optional) zero the gradient coordinates that point out of
  the input box where x + delta already sits on its face: steps along them would be clipped
  away, and leaving them in wastes the step budget of ℓ2 and sparse ℓ1 ascent.

ε may be a Python float, a scalar array or a per-example array of shape (B,); it may be a
tracer, so one compiled attack serves every ε.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.errors import (
    Check,
    InputError,
    check_eps,
    check_number,
    check_threat,
    eps_checks,
    range_checks,
)

Array = jax.Array


class ThreatModel(NamedTuple):
    """A perturbation set as pure per-example functions; see the module docstring."""

    init: Callable[[Array, Array], Array]
    project: Callable[[Array, Array], Array]
    ascent: Callable[[Array], Array]
    apply: Callable[[Array, Array], Array]
    zeros: Callable[[Array], Array]
    name: str
    eps: Any
    box: tuple[float, float]
    free: Callable[[Array, Array, Array], Array] | None = None


# ----------------------------------------------------------------------------- helpers


def _per_example(v: Any, x: Array) -> Array:
    """Broadcast a scalar or (B,) value against x of shape (B, ...)."""
    v = jnp.asarray(v, dtype=x.dtype)
    if v.ndim == 0:
        return v
    return v.reshape((-1,) + (1,) * (x.ndim - 1))


def _flat_sum(v: Array) -> Array:
    """Sum over all but the leading (batch) axis, keeping dims for broadcasting."""
    return jnp.sum(v, axis=tuple(range(1, v.ndim)), keepdims=True)


def example_keys(key: Array, batch: int) -> Array:
    """One key per example, independent of the batch size: example i gets fold_in(key, i)."""
    return jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(batch))


def _per_example_sample(key: Array, x: Array, sampler: Callable[[Array, tuple], Array]) -> Array:
    keys = example_keys(key, x.shape[0])
    return jax.vmap(lambda k: sampler(k, x.shape[1:]))(keys).astype(x.dtype)


def _box_bounds(x: Array, lo: float, hi: float) -> tuple[Array, Array]:
    """Per-coordinate bounds on delta so that x + delta stays in [lo, hi]."""
    return lo - x, hi - x


def _clip_to_box(delta: Array, x: Array, lo: float, hi: float) -> Array:
    return jnp.clip(x + delta, lo, hi) - x


def _box_free(lo: float, hi: float) -> Callable[[Array, Array, Array], Array]:
    def free(grad, delta, x):
        z = x + delta
        blocked = ((z >= hi) & (grad > 0)) | ((z <= lo) & (grad < 0))
        return jnp.where(blocked, 0.0, grad)

    return free


def _bisect(fn: Callable[[Array], Array], lo: Array, hi: Array, iters: int = 40) -> Array:
    """Per-example root of a decreasing function fn(lam) - 0 on [lo, hi] by bisection.

    Returns the upper end, where fn(hi) <= 0 holds, so the result is always feasible.
    """

    def body(_, bounds):
        a, b = bounds
        mid = 0.5 * (a + b)
        feasible = fn(mid) <= 0
        return jnp.where(feasible, a, mid), jnp.where(feasible, mid, b)

    _, b = jax.lax.fori_loop(0, iters, body, (lo, hi))
    return b


def _validate(eps: Any, lo: float, hi: float) -> None:
    check_eps(eps)
    for name, v in (("lo", lo), ("hi", hi)):
        try:
            finite = not isinstance(v, str | bytes) and np.ndim(v) == 0 and math.isfinite(float(v))
        except (TypeError, ValueError):
            finite = False
        if not finite:
            raise InputError(f"the input box bound {name} must be a finite number, got {v!r}")
    if not lo < hi:
        raise InputError(f"the input box needs lo < hi, got lo={lo}, hi={hi}")


# ----------------------------------------------------------------------------- norm balls


def linf(eps: Any, *, lo: float = 0.0, hi: float = 1.0) -> ThreatModel:
    """ℓ∞ ball of radius eps (input units) intersected with the box [lo, hi].

    The intersection of two boxes is a box, so clipping is the exact Euclidean projection.
    """
    _validate(eps, lo, hi)

    def project(delta, x):
        e = _per_example(eps, x)
        return _clip_to_box(jnp.clip(delta, -e, e), x, lo, hi)

    def init(key, x):
        u = _per_example_sample(key, x, lambda k, s: jax.random.uniform(k, s, minval=-1, maxval=1))
        return project(u * _per_example(eps, x), x)

    return ThreatModel(
        init=init,
        project=project,
        ascent=jnp.sign,
        apply=lambda x, delta: x + delta,
        zeros=jnp.zeros_like,
        name="linf",
        eps=eps,
        box=(lo, hi),
        free=_box_free(lo, hi),
    )


def _uniform_l2_ball(key: Array, shape: tuple) -> Array:
    """Uniform in the unit ℓ2 ball: Gaussian direction, radius U^(1/d)."""
    k1, k2 = jax.random.split(key)
    g = jax.random.normal(k1, shape)
    d = math.prod(shape)
    r = jax.random.uniform(k2) ** (1.0 / d)
    return g / jnp.linalg.norm(g.reshape(-1)) * r


def _uniform_l1_ball(key: Array, shape: tuple) -> Array:
    """Uniform in the unit ℓ1 ball: the first d of d+1 Dirichlet(1) weights, random signs."""
    k1, k2 = jax.random.split(key)
    d = math.prod(shape)
    e = jax.random.exponential(k1, (d + 1,))
    mags = (e[:d] / jnp.sum(e)).reshape(shape)
    signs = jax.random.rademacher(k2, shape).astype(mags.dtype)
    return mags * signs


def l2(eps: Any, *, lo: float = 0.0, hi: float = 1.0) -> ThreatModel:
    """ℓ2 ball of radius eps intersected with the box [lo, hi].

    The projection is exact: the KKT conditions give delta = clip(s·v, box) with the largest
    s in (0, 1] that makes ‖delta‖₂ <= eps. s is found per example by bisection on log s over
    [log(eps/‖v‖), 0] (s = eps/‖v‖ is always feasible), so huge v keep full resolution, and
    ‖v‖ is computed with a rescaling that cannot overflow.
    """
    _validate(eps, lo, hi)

    def project(delta, x):
        e = _per_example(eps, x)
        a, b = _box_bounds(x, lo, hi)
        # Scale by an exact power of two before squaring so ‖v‖ cannot overflow (a division
        # by max|v| would flush to zero on backends that compute 1/max|v| as a denormal).
        big = jnp.max(jnp.abs(delta), axis=tuple(range(1, delta.ndim)), keepdims=True)
        scale = jnp.where(big > 2.0**60, 2.0**-80, 1.0).astype(delta.dtype)
        norm = jnp.sqrt(_flat_sum((delta * scale) ** 2)) / scale
        norm = jnp.minimum(norm, jnp.finfo(delta.dtype).max)

        def candidate(w):  # w = -log s >= 0
            return jnp.clip(delta * jnp.exp(-w), a, b)

        def excess(w):
            return jnp.sqrt(_flat_sum(candidate(w) ** 2)) - e

        # s = eps/‖v‖ is feasible in exact arithmetic; the margin keeps it feasible after
        # float32 rounding of log/exp (bisection needs a feasible upper end).
        upper = jnp.maximum(jnp.log(norm) - jnp.log(jnp.maximum(e, 1e-30)), 0.0) + 1e-3
        w = _bisect(excess, jnp.zeros_like(upper), upper)
        w = jnp.where(excess(jnp.zeros_like(upper)) <= 0, 0.0, w)
        return jnp.where(e > 0, candidate(w), 0.0)

    def init(key, x):
        u = _per_example_sample(key, x, _uniform_l2_ball)
        return project(u * _per_example(eps, x), x)

    def ascent(g):
        # Rescale by max|g| first: tiny (or huge) gradients still give a unit direction.
        big = jnp.max(jnp.abs(g), axis=tuple(range(1, g.ndim)), keepdims=True)
        scaled = g / jnp.where(big > 0, big, 1.0)
        return scaled / jnp.maximum(jnp.sqrt(_flat_sum(scaled**2)), 1.0)

    return ThreatModel(
        init=init,
        project=project,
        ascent=ascent,
        apply=lambda x, delta: x + delta,
        zeros=jnp.zeros_like,
        name="l2",
        eps=eps,
        box=(lo, hi),
        free=_box_free(lo, hi),
    )


def l1(eps: Any, *, lo: float = 0.0, hi: float = 1.0, sparsity: float = 0.99) -> ThreatModel:
    """ℓ1 ball of radius eps intersected with the box [lo, hi].

    Projection (exact up to float32 resolution, i.e. for |v| well below 1e6·eps):
    delta_i = sign(v_i) · clip(|v_i| − λ, 0, u_i) where u_i is the room the box leaves in the
    direction of v_i, with the smallest λ >= 0 that meets the budget (bisection).
    Ascent keeps the top (1 − sparsity) fraction of coordinates by |grad| (at least one),
    signs them and scales to unit ℓ1 norm (the sparse steepest ascent of SLIDE/APGD-ℓ1).
    """
    _validate(eps, lo, hi)
    check_number(sparsity, "l1 sparsity", 0.0, 1.0, hi_open=True)

    def project(delta, x):
        e = _per_example(eps, x)
        a, b = _box_bounds(x, lo, hi)
        room = jnp.where(delta >= 0, b, -a)  # >= 0 since x lies in the box
        mag = jnp.abs(delta)

        def candidate(lam):
            return jnp.sign(delta) * jnp.clip(mag - lam, 0.0, room)

        def excess(lam):
            return _flat_sum(jnp.abs(candidate(lam))) - e

        upper = jnp.max(mag, axis=tuple(range(1, delta.ndim)), keepdims=True)
        lam = _bisect(excess, jnp.zeros_like(upper), upper)
        lam = jnp.where(excess(jnp.zeros_like(upper)) <= 0, 0.0, lam)
        return candidate(lam)

    def init(key, x):
        u = _per_example_sample(key, x, _uniform_l1_ball)
        return project(u * _per_example(eps, x), x)

    def ascent(g):
        flat = jnp.abs(g.reshape(g.shape[0], -1))
        k = max(1, round((1.0 - sparsity) * flat.shape[1]))
        # Exactly k coordinates by index: a threshold |g| >= kth keeps every tie (all of them
        # for a constant gradient), which breaks the promised sparsity.
        idx = jax.lax.top_k(flat, k)[1]
        rows = jnp.arange(flat.shape[0])[:, None]
        mask = jnp.zeros(flat.shape, bool).at[rows, idx].set(True).reshape(g.shape)
        mask = mask & (jnp.abs(g) > 0)
        d = jnp.sign(g) * mask
        return d / jnp.maximum(_flat_sum(jnp.abs(d)), 1.0)

    return ThreatModel(
        init=init,
        project=project,
        ascent=ascent,
        apply=lambda x, delta: x + delta,
        zeros=jnp.zeros_like,
        name="l1",
        eps=eps,
        box=(lo, hi),
        free=_box_free(lo, hi),
    )


def unconstrained(*, lo: float = 0.0, hi: float = 1.0, step_norm: str = "linf") -> ThreatModel:
    """Any input in the box [lo, hi] (inversion, synthesis, patch attacks).

    `step_norm` picks the ascent direction: "linf" (sign) or "l2" (normalised gradient).
    """
    _validate(0.0, lo, hi)
    if step_norm not in ("linf", "l2"):
        raise InputError(f"step_norm must be 'linf' or 'l2', got {step_norm!r}")

    def project(delta, x):
        return _clip_to_box(delta, x, lo, hi)

    def init(key, x):
        u = _per_example_sample(key, x, lambda k, s: jax.random.uniform(k, s))
        return lo + (hi - lo) * u - x

    return ThreatModel(
        init=init,
        project=project,
        ascent=jnp.sign if step_norm == "linf" else l2(1.0).ascent,
        apply=lambda x, delta: x + delta,
        zeros=jnp.zeros_like,
        name="unconstrained",
        eps=math.inf,
        box=(lo, hi),
        free=_box_free(lo, hi),
    )


def masked(threat: ThreatModel, mask: Any) -> ThreatModel:
    """Restrict a pixel threat model to where `mask` is nonzero (patches, frames, regions).

    `mask` broadcasts against x: (H, W, 1), (H, W, C) or per example (B, H, W, C), with
    values in {0, 1}. The norm budget of `threat` applies to the masked perturbation.
    """
    check_threat(threat)
    if threat.name == "spatial":
        raise InputError("masked() applies to pixel threat models, not spatial")
    dtype = getattr(mask, "dtype", None)
    if dtype is None or not (jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)):
        raise InputError(f"mask must be a numeric array broadcasting against x, got {mask!r:.80}")

    def project(delta, x):
        return threat.project(delta * mask, x) * mask

    return threat._replace(
        init=lambda key, x: project(threat.init(key, x), x),
        project=project,
        ascent=lambda g: threat.ascent(g * mask) * mask,
        name=f"masked_{threat.name}",
    )


# ----------------------------------------------------------------------------- spatial


def rotate_translate(x: Array, params: Array) -> Array:
    """Rotate about the image centre and translate, with bilinear sampling and zero fill.

    x: (B, H, W, C) images; params: (B, 3) = (angle in degrees, dx, dy in pixels),
    dx moving content right and dy moving it down. Differentiable in both arguments.
    """
    _, h, w, _ = x.shape
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=x.dtype), jnp.arange(w, dtype=x.dtype), indexing="ij")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0

    def one(img, p):
        theta = jnp.deg2rad(p[0])
        cos, sin = jnp.cos(theta), jnp.sin(theta)
        # Inverse map: output pixel -> source location (undo translation, then rotation).
        u, v = xs - cx - p[1], ys - cy - p[2]
        src_x = cos * u + sin * v + cx
        src_y = -sin * u + cos * v + cy
        x0, y0 = jnp.floor(src_x), jnp.floor(src_y)
        wx, wy = src_x - x0, src_y - y0

        def gather(yy, xx):
            valid = (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
            yi = jnp.clip(yy, 0, h - 1).astype(jnp.int32)
            xi = jnp.clip(xx, 0, w - 1).astype(jnp.int32)
            return img[yi, xi] * valid[..., None]

        top = gather(y0, x0) * (1 - wx)[..., None] + gather(y0, x0 + 1) * wx[..., None]
        bottom = gather(y0 + 1, x0) * (1 - wx)[..., None] + gather(y0 + 1, x0 + 1) * wx[..., None]
        return top * (1 - wy)[..., None] + bottom * wy[..., None]

    return jax.vmap(one)(x, params)


def spatial(
    max_angle: float = 30.0,
    max_dx: float = 3.0,
    max_dy: float | None = None,
    *,
    lo: float = 0.0,
    hi: float = 1.0,
) -> ThreatModel:
    """Rotation (± max_angle degrees) and translation (± max_dx, ± max_dy pixels).

    The perturbation is the (B, 3) parameter vector (angle, dx, dy); `apply` renders it with
    `rotate_translate`. Ascent is the sign step scaled by each range, so a step size of 0.1
    moves each parameter by a tenth of its range. [lo, hi] is the declared image range
    (zero fill keeps transformed images inside it when lo <= 0 <= hi).
    """
    max_dy = max_dx if max_dy is None else max_dy
    for name, v in (("max_angle", max_angle), ("max_dx", max_dx), ("max_dy", max_dy)):
        check_eps(v, name)
    ranges = jnp.array([max_angle, max_dx, max_dy], dtype=jnp.float32)

    def project(delta, x):
        del x
        return jnp.clip(delta, -ranges, ranges)

    def init(key, x):
        u = jax.vmap(lambda k: jax.random.uniform(k, (3,), minval=-1, maxval=1))(
            example_keys(key, x.shape[0])
        )
        return u * ranges

    return ThreatModel(
        init=init,
        project=project,
        ascent=lambda g: jnp.sign(g) * ranges,
        apply=rotate_translate,
        zeros=lambda x: jnp.zeros((x.shape[0], 3), x.dtype),
        name="spatial",
        eps=(max_angle, max_dx, max_dy),
        box=(lo, hi),
    )


def input_checks(threat: ThreatModel, x: Any, name: str = "x") -> list[Check]:
    """What every attack and the engine check before they run: a non-empty batch (static,
    raises), x finite and inside `threat.box`, ε finite and >= 0. Concrete values raise
    `InputError` now; traced ones come back as `Check`s for `errors.enforce`."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) < 1:
        raise InputError(f"{name} must be an array with a leading batch axis, got {x!r:.80}")
    if shape[0] == 0:
        raise InputError(f"{name} is an empty batch (shape {tuple(shape)}): nothing to attack")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise InputError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    checks = range_checks(x, *threat.box, name=name)
    if threat.eps is not None and not threat.name.endswith("unconstrained"):
        names = ("max_angle", "max_dx", "max_dy") if threat.name == "spatial" else None
        leaves = threat.eps if names else (threat.eps,)
        for i, e in enumerate(leaves):
            checks += eps_checks(e, names[i] if names else "eps")
    return checks


THREATS: dict[str, Callable[..., ThreatModel]] = {
    "linf": linf,
    "l2": l2,
    "l1": l1,
}


def get_threat(name: str, eps: Any, *, lo: float = 0.0, hi: float = 1.0) -> ThreatModel:
    """Build a norm-ball threat model by name ("linf", "l2", "l1")."""
    if not isinstance(name, str) or name not in THREATS:
        raise InputError(f"unknown threat model {name!r}; known: {sorted(THREATS)}")
    return THREATS[name](eps, lo=lo, hi=hi)
