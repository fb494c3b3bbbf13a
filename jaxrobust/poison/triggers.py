"""Backdoor triggers: a small pattern stamped at a fixed place of every image.

A `Trigger` is data (a NamedTuple of arrays and ints): `pattern` (h, w, C) in [0, 1], its
top-left corner (`row`, `col`), and an `amplitude` α in [0, 1]. `stamp(x, trigger)` blends
the pattern into the patch, x' = (1 − α)·x + α·pattern there and x elsewhere, so the
result stays in [0, 1] whenever x is, and α = 1 pastes the pattern (Gu et al. 2017);
α < 1 is the reduced-amplitude trigger of Turner et al. 2019.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.errors import InputError, check_int, check_number

Array = jax.Array

PATTERNS = ("checkerboard", "solid", "inverse_checkerboard")
LOCATIONS = ("bottom_right", "bottom_left", "top_right", "top_left")


class Trigger(NamedTuple):
    """A trigger: `pattern` (h, w, C) float32 in [0, 1] at rows [row, row + h) and columns
    [col, col + w) of an image, blended with weight `amplitude` α in [0, 1]."""

    pattern: Any
    row: int
    col: int
    amplitude: float = 1.0


def _pattern(name: str, size: int, channels: int) -> np.ndarray:
    i, j = np.indices((size, size))
    if name == "checkerboard":  # 1 on the corner pixel, alternating (Gu et al.'s pattern)
        p = ((i + j) % 2 == 0).astype(np.float32)
    elif name == "inverse_checkerboard":
        p = ((i + j) % 2 == 1).astype(np.float32)
    elif name == "solid":
        p = np.ones((size, size), np.float32)
    else:
        raise InputError(f"pattern must be one of {PATTERNS} or an array, got {name!r}")
    return np.repeat(p[:, :, None], channels, axis=2)


def make_trigger(
    image_shape: tuple[int, int, int],
    *,
    size: int = 3,
    pattern: str | Any = "checkerboard",
    location: str | tuple[int, int] = "bottom_right",
    margin: int = 0,
    amplitude: float = 1.0,
) -> Trigger:
    """A square (or given) pattern at a corner (or at a given (row, col)) of the image.

    Args:
      image_shape: (H, W, C) of the images it will be stamped on.
      size: side of a named square pattern, in pixels (ignored for an array pattern).
      pattern: "checkerboard", "inverse_checkerboard", "solid", or an array (h, w) or
        (h, w, C) with values in [0, 1].
      location: a corner name from `LOCATIONS`, or the (row, col) of the top-left pixel.
      margin: pixels between a named corner and the pattern.
      amplitude: blend weight α in [0, 1].

    Raises:
      InputError: a pattern larger than the image or placed outside it, values outside
        [0, 1], an unknown pattern or location, amplitude outside [0, 1].
    """
    if len(image_shape) != 3:
        raise InputError(f"image_shape must be (H, W, C), got {image_shape!r}")
    h_img, w_img, c = (check_int(v, "image_shape", 1) for v in image_shape)
    amplitude = check_number(amplitude, "amplitude", 0.0, 1.0)
    check_int(margin, "margin", 0)
    if isinstance(pattern, str):
        size = check_int(size, "size", 1)
        if size > min(h_img, w_img):
            raise InputError(
                f"trigger size {size} is larger than the image ({h_img}x{w_img}); use a "
                "size of at most the image's smaller side"
            )
        p = _pattern(pattern, size, c)
    else:
        p = np.asarray(pattern, np.float32)
        if p.ndim == 2:
            p = np.repeat(p[:, :, None], c, axis=2)
        if p.ndim != 3 or p.shape[2] != c or p.size == 0:
            raise InputError(f"an array pattern must be (h, w) or (h, w, {c}), got {p.shape}")
        if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
            raise InputError("the trigger pattern's values must lie in [0, 1]")
        if p.shape[0] > h_img or p.shape[1] > w_img:
            raise InputError(
                f"trigger pattern {p.shape[:2]} is larger than the image ({h_img}x{w_img})"
            )
    h, w = p.shape[:2]
    if isinstance(location, str):
        if location not in LOCATIONS:
            raise InputError(f"location must be one of {LOCATIONS} or (row, col), got {location!r}")
        row = margin if location.startswith("top") else h_img - h - margin
        col = margin if location.endswith("left") else w_img - w - margin
    else:
        try:
            row, col = (int(v) for v in location)
        except (TypeError, ValueError):
            raise InputError(
                f"location must be a corner name or (row, col), got {location!r}"
            ) from None
    if row < 0 or col < 0 or row + h > h_img or col + w > w_img:
        raise InputError(
            f"a {h}x{w} trigger at (row {row}, col {col}) does not fit in a {h_img}x{w_img} image"
        )
    return Trigger(jnp.asarray(p), int(row), int(col), float(amplitude))


def trigger_mask(trigger: Trigger, image_shape: tuple[int, ...]) -> Array:
    """The blend weights (H, W, C): α on the trigger's patch, 0 elsewhere."""
    h, w, c = trigger.pattern.shape
    full = jnp.zeros(tuple(image_shape), jnp.float32)
    patch = jnp.full((h, w, c), 1.0, jnp.float32) * jnp.asarray(trigger.amplitude, jnp.float32)
    return jax.lax.dynamic_update_slice(full, patch, (trigger.row, trigger.col, 0))


def stamp(x: Array, trigger: Trigger) -> Array:
    """Stamp the trigger on images x (B, H, W, C) in [0, 1] (or one image (H, W, C)).

    Returns images of the same shape: (1 − α)·x + α·pattern on the trigger's patch, x
    elsewhere. Pure and jittable (the trigger's place is static: a Python int).
    """
    x = jnp.asarray(x)
    single = x.ndim == 3
    xb = x[None] if single else x
    if xb.ndim != 4:
        raise InputError(f"stamp needs images (B, H, W, C) or (H, W, C), got shape {x.shape}")
    h, w, c = trigger.pattern.shape
    _, h_img, w_img, c_img = xb.shape
    placed = [v for v in (trigger.row, trigger.col) if isinstance(v, int | np.integer)]
    outside = len(placed) == 2 and (trigger.row + h > h_img or trigger.col + w > w_img)
    if c != c_img or h > h_img or w > w_img or outside:
        raise InputError(
            f"a {h}x{w}x{c} trigger at (row {trigger.row}, col {trigger.col}) does not fit "
            f"images of shape {xb.shape[1:]}"
        )
    m = trigger_mask(trigger, xb.shape[1:])
    zeros = jnp.zeros(xb.shape[1:], xb.dtype)
    where = (trigger.row, trigger.col, 0)
    full = jax.lax.dynamic_update_slice(zeros, jnp.asarray(trigger.pattern, xb.dtype), where)
    out = (1 - m) * xb + m * full
    return out[0] if single else out
