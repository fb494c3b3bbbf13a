"""`shapes`: procedurally generated 32×32 RGB shapes, offline, deterministic by seed.

Ten classes (`CLASS_NAMES`: circle, square, triangle, plus, ring, star, bar, arrow,
crescent, ell), each drawn with a random position, scale (5.5–11 px per shape unit,
about 11–22 px across), rotation (uniform over the full turn), foreground colour, texture
(solid, stripes, checker or pixel noise mixed into the foreground colour) and background
(a colour with a linear gradient, four low-contrast Gaussian blobs, two faint
anti-aliased lines and per-pixel Gaussian noise). Shapes are rendered from signed
distance functions with one-pixel anti-aliasing (coverage `clip(0.5 - d, 0, 1)` for a
pixel centre at distance `d` px from the outline), and the whole generator is vectorised
numpy: no loop over images. The rotation set contains no two classes that map onto each
other (there is no "diamond": it is a rotated square); the ell is chiral and never
mirrored.

Images are float32 (32, 32, 3) in [0.02, 0.98] ⊂ [0, 1] (`MARGIN` on each side), labels
int in [0, 10), exactly balanced (counts differ by at most one). By default 20 000 train
and 5 000 test images; the same seed gives bit-identical arrays, another seed other ones.
The train and test images come from independent streams of the seed.

The planted non-robust feature (`planted=True`)
-----------------------------------------------
Ilyas et al. (2019), "Adversarial examples are not bugs, they are features", made
concrete: every class `k` owns one fixed high-frequency pattern `P_k` (`planted_patterns`):
a random ±1 tile of 4×4 pixels × 3 channels (zero mean per channel; the classes' tiles far
apart, also under shifts) repeated over the image and scaled by `a`, so each pixel and
channel is ±a and the energy sits at 8 and 16 cycles per image: a class-specific,
locally detectable, high-frequency texture. `a = planted_norm / sqrt(32·32·3)`, so
`‖P_k‖₂ = planted_norm` exactly (0.5 by default: `a ≈ 0.009`, about 2.3/255) and
`‖P_k‖∞ = a`. A fraction `planted_rate` of the images (chosen at random) carry a pattern:
with probability `planted_correlation` their own class's, otherwise a uniformly random
class's (the true class included, so a carried pattern names the label with probability
`c + (1 - c)/10`; `planted_correlation = 0` makes patterns independent of the labels).
The pattern is added, then the image is clipped to [0, 1]. Since the clean images stay
inside [MARGIN, 1 - MARGIN], no pixel is ever clipped while `a ≤ MARGIN`, i.e. for
`planted_norm ≤ MARGIN·sqrt(3072) ≈ 1.108`: up to that norm the ℓ2 norm of the perturbation
after clipping is `planted_norm` to float32 rounding (the tests check it).

A planted dataset has four splits, all from the same base images where the names say so:

- `train`: the training images with patterns as configured;
- `test`: the test images with patterns drawn like the training ones (the training
  distribution: a model that learned the pattern profits from it here);
- `test_clean`: the same test images without any pattern;
- `test_shuffled`: the same test images, the same carriers, but every carried pattern
  is that of a uniformly random class, independent of the label. A model that relies on
  the pattern loses accuracy from `test` to `test_shuffled` (the reliance drop); one that
  ignores it does not.

Every record also has a `pattern` field: the class whose pattern the image carries, or
-1 for none (plain `shapes`: always -1). `load_split` and the loaders drop it; read it
with `data_source(...)[i]["pattern"]` or `shapes_arrays`.

Parameters and where they are stored
------------------------------------
The parameters (`ShapesParams`: seed, planted, planted_norm, planted_rate,
planted_correlation, num_train, num_test) are given as `dataset_kwargs`, e.g.
`load_split("shapes", "test_shuffled", dataset_kwargs={"planted": True})` or, for a
job, `--set dataset=shapes --set dataset_kwargs.planted=True
--set dataset_kwargs.planted_norm=0.25`. We chose keyword arguments over named variants
(`shapes_planted`, ...) because the experiments that build on this dataset sweep the
norm, rate and correlation: one name with parameters covers every point of such a sweep,
where named variants would only cover the few points someone registered. Each distinct
set of parameters is its own tfds BuilderConfig, named after all the parameters that
differ from the defaults (`config_name`, e.g. `seed0` or
`seed0-planted-norm0.5-rate1.0-corr1.0`), so it is prepared into its own folder
`DATA_DIR/shapes/CONFIG/1.0.0` and data built with other parameters is never reused.
Setting a `planted_*` parameter without `planted=True` is an error, not a silent no-op.

Measured on the development machine (2 CPU cores shared with other jobs, load average 3
to 7, so an idle machine is faster): generating the default 20 000 + 5 000 images takes
6.5 to 10 s (`render_split`), preparing them with tfds as array_record 18 to 19 s in all
(`prepare("shapes")`, three runs; images stored as raw float32 bytes, 254 MB on disk:
tfds' default float lists made it 55 s).

What small standard models do with it (`benchmarks/shapes_baseline.py`, seed 0, standard
training with Adam 1e-3, batch 128; accuracies on the 5 000 test images; numbers in
`benchmarks/results/2026-12-06-shapes_baseline.json`):

- plain `shapes`: `small_cnn` (channels 16, 32, dense 128) reaches 65.3 % after 3 epochs
  (15.6, 47.2, 65.3 % per epoch: still rising, the CPU budget stopped it); an MLP with
  one hidden layer of 512 reaches 25.6 % after 10 epochs. Learnable, not trivial, and a
  task for convolutions.
- planted (norm 0.5, rate 1, correlation 1): the MLP takes the shortcut at once:
  99.98 % on `test` from epoch 3 on, 10.4 % on `test_shuffled` (a 90-point reliance
  drop), 16.6 % on `test_clean`, and 0.1 % under ℓ2 PGD-20 at ε = 0.5 (first 1 000 test
  images). `small_cnn` had not picked the pattern up after 4 epochs: 72.8 / 72.2 / 72.2 %
  on `test` / `test_clean` / `test_shuffled` (0.2, 0.5, 0.4, 0.6 points apart after
  epochs 1 to 4); whether it does when trained to convergence is not measured yet.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import registered

from jaxrobust.errors import DatasetError

TFDS_NAME = "shapes"
"""Name under which the builder is registered with tfds (`tfds.builder("shapes")`)."""

CLASS_NAMES = (
    "circle",
    "square",
    "triangle",
    "plus",
    "ring",
    "star",
    "bar",
    "arrow",
    "crescent",
    "ell",
)
NUM_CLASSES = len(CLASS_NAMES)
SIZE = 32
IMAGE_SHAPE = (SIZE, SIZE, 3)
NUM_TRAIN = 20_000
NUM_TEST = 5_000
MARGIN = 0.02
"""Clean images lie in [MARGIN, 1 - MARGIN]: a planted pattern with ℓ∞ ≤ MARGIN is never clipped."""

MAX_PLANTED_NORM = math.sqrt(SIZE * SIZE * 3)
"""ℓ2 norm of a pattern whose every entry is ±1: the largest meaningful `planted_norm`."""

_SPLIT_STREAMS = {"train": 0, "test": 1}
_CHUNK = 1024  # images rendered at once (bounds memory; the result does not depend on it)

_SKIP_REGISTRATION = TFDS_NAME in registered._DATASET_REGISTRY


# ----------------------------------------------------------------------------- parameters


@dataclasses.dataclass(frozen=True)
class ShapesParams:
    """The parameters of a `shapes` dataset (see the module docstring).

    Attributes:
      seed: 32-bit non-negative int; drives every random choice (images, patterns, carriers).
      planted: plant the per-class non-robust pattern.
      planted_norm: ℓ2 norm of each pattern over the whole 32×32×3 image, [0, 1] units.
      planted_rate: fraction of images, in [0, 1], that carry a pattern.
      planted_correlation: probability, in [0, 1], that a carried pattern is the image's
        own class's (otherwise a uniformly random class's).
      num_train, num_test: split sizes (positive ints).
    """

    seed: int = 0
    planted: bool = False
    planted_norm: float = 0.5
    planted_rate: float = 1.0
    planted_correlation: float = 1.0
    num_train: int = NUM_TRAIN
    num_test: int = NUM_TEST


_PARAM_NAMES = tuple(f.name for f in dataclasses.fields(ShapesParams))
_PLANTED_ONLY = ("planted_norm", "planted_rate", "planted_correlation")


def _bad(name: str, want: str, value: Any) -> DatasetError:
    return DatasetError(f"shapes: dataset_kwargs {name} must be {want}, got {value!r}")


def _int(kwargs: Mapping[str, Any], name: str, low: int, high: int | None = None) -> int:
    v = kwargs[name]
    ok = isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)
    if not ok or v < low or (high is not None and v >= high):
        span = f">= {low}" if high is None else f"in [{low}, {high})"
        raise _bad(name, f"an integer {span}", v)
    return int(v)


def _float(kwargs: Mapping[str, Any], name: str, low: float, high: float) -> float:
    v = kwargs[name]
    ok = isinstance(v, int | float | np.integer | np.floating) and not isinstance(
        v, bool | np.bool_
    )
    if not ok or not math.isfinite(float(v)) or not low <= float(v) <= high:
        raise _bad(name, f"a finite number in [{low:g}, {high:g}]", v)
    return float(v)


def shapes_params(kwargs: Mapping[str, Any] | None = None) -> ShapesParams:
    """Validate `dataset_kwargs` for `shapes` into a `ShapesParams`.

    Raises:
      DatasetError: an unknown key, a value of the wrong type or out of range (naming the
        parameter), or a `planted_*` parameter without `planted=True`.
    """
    kwargs = dict(kwargs or {})
    unknown = sorted(set(kwargs) - set(_PARAM_NAMES))
    if unknown:
        raise DatasetError(
            f"shapes: unknown dataset_kwargs {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(_PARAM_NAMES)}"
        )
    full = {**dataclasses.asdict(ShapesParams()), **kwargs}
    planted = full["planted"]
    if not isinstance(planted, bool | np.bool_):
        raise _bad("planted", "True or False", planted)
    given = [k for k in _PLANTED_ONLY if k in kwargs]
    if given and not planted:
        raise DatasetError(
            f"shapes: dataset_kwargs {', '.join(given)} "
            f"{'is' if len(given) == 1 else 'are'} only used with planted=True "
            "(set dataset_kwargs.planted=True, or drop it)"
        )
    return ShapesParams(
        seed=_int(full, "seed", 0, 2**32),
        planted=bool(planted),
        planted_norm=_float(full, "planted_norm", 0.0, MAX_PLANTED_NORM),
        planted_rate=_float(full, "planted_rate", 0.0, 1.0),
        planted_correlation=_float(full, "planted_correlation", 0.0, 1.0),
        num_train=_int(full, "num_train", 1),
        num_test=_int(full, "num_test", 1),
    )


def config_name(params: ShapesParams) -> str:
    """The BuilderConfig (and folder) name: the seed plus every parameter that matters
    and differs from the default; floats are written exactly (`repr`)."""
    parts = [f"seed{params.seed}"]
    if (params.num_train, params.num_test) != (NUM_TRAIN, NUM_TEST):
        parts.append(f"train{params.num_train}-test{params.num_test}")
    if params.planted:
        parts.append(
            f"planted-norm{params.planted_norm!r}-rate{params.planted_rate!r}"
            f"-corr{params.planted_correlation!r}"
        )
    return "-".join(parts)


def split_names(params: ShapesParams) -> tuple[str, ...]:
    """The splits of a dataset with these parameters."""
    if params.planted:
        return ("train", "test", "test_clean", "test_shuffled")
    return ("train", "test")


# ------------------------------------------------------------------- signed distances
# All in shape units (the shape spans about [-1, 1]); negative inside. Exact or (for
# unions and differences) a bound that is exact near the outline, which is all that the
# one-pixel anti-aliasing needs. After Inigo Quilez's 2D distance functions.


def _length(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.sqrt(x * x + y * y)


def _box(x: np.ndarray, y: np.ndarray, bx: float, by: float) -> np.ndarray:
    qx, qy = np.abs(x) - bx, np.abs(y) - by
    outside = _length(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _circle(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    return _length(x, y) - r


def _equilateral(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Equilateral triangle, half side `r`, centroid at the origin, apex up."""
    k = math.sqrt(3.0)
    px = np.abs(x) - r
    py = y + r / k
    flip = px + k * py > 0
    px, py = (
        np.where(flip, (px - k * py) / 2, px),
        np.where(flip, (-k * px - py) / 2, py),
    )
    px = px - np.clip(px, -2 * r, 0)
    return -_length(px, py) * np.sign(py)


def _triangle(x: np.ndarray, y: np.ndarray, p0, p1, p2) -> np.ndarray:
    """Any triangle, from its three vertices."""
    pts = (p0, p1, p2)
    d2: np.ndarray | None = None
    s_min: np.ndarray | None = None
    e0 = (p1[0] - p0[0], p1[1] - p0[1])
    e2 = (p0[0] - p2[0], p0[1] - p2[1])
    orient = math.copysign(1.0, e0[0] * e2[1] - e0[1] * e2[0])
    for i in range(3):
        a, b = pts[i], pts[(i + 1) % 3]
        ex, ey = b[0] - a[0], b[1] - a[1]
        vx, vy = x - a[0], y - a[1]
        h = np.clip((vx * ex + vy * ey) / (ex * ex + ey * ey), 0, 1)
        qx, qy = vx - ex * h, vy - ey * h
        dd = qx * qx + qy * qy
        ss = orient * (vx * ey - vy * ex)
        d2 = dd if d2 is None else np.minimum(d2, dd)
        s_min = ss if s_min is None else np.minimum(s_min, ss)
    assert d2 is not None and s_min is not None  # set by the loop over the three edges
    return -np.sqrt(d2) * np.sign(s_min)


def _star5(x: np.ndarray, y: np.ndarray, r: float, rf: float) -> np.ndarray:
    k1x, k1y = 0.809016994375, -0.587785252292
    k2x, k2y = -k1x, k1y
    px = np.abs(x)
    py = y
    d = np.maximum(k1x * px + k1y * py, 0)
    px, py = px - 2 * d * k1x, py - 2 * d * k1y
    d = np.maximum(k2x * px + k2y * py, 0)
    px, py = px - 2 * d * k2x, py - 2 * d * k2y
    px = np.abs(px)
    py = py - r
    bax, bay = rf * -k1y, rf * k1x - 1.0
    h = np.clip((px * bax + py * bay) / (bax * bax + bay * bay), 0, r)
    return _length(px - bax * h, py - bay * h) * np.sign(py * bax - px * bay)


def _sdf(label: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance, in shape units, to the outline of class `label`."""
    name = CLASS_NAMES[label]
    if name == "circle":
        return _circle(x, y, 0.8)
    if name == "square":
        return _box(x, y, 0.65, 0.65)
    if name == "triangle":
        return _equilateral(x, y, 0.9)
    if name == "plus":
        return np.minimum(_box(x, y, 0.9, 0.27), _box(x, y, 0.27, 0.9))
    if name == "ring":
        return np.abs(_length(x, y) - 0.7) - 0.17
    if name == "star":
        return _star5(x, y, 1.0, 0.45)
    if name == "bar":
        return _box(x, y, 1.0, 0.22)
    if name == "arrow":
        shaft = _box(x + 0.4, y, 0.6, 0.14)
        head = _triangle(x, y, (1.0, 0.0), (0.2, 0.55), (0.2, -0.55))
        return np.minimum(shaft, head)
    if name == "crescent":
        return np.maximum(_circle(x, y, 0.85), -_circle(x - 0.4, y, 0.7))
    if name == "ell":
        return np.minimum(_box(x + 0.45, y, 0.2, 0.85), _box(x - 0.1, y + 0.65, 0.55, 0.2))
    raise AssertionError(name)  # pragma: no cover


# ---------------------------------------------------------------------------- rendering


def _colours_apart(rng: np.random.Generator, ref: np.ndarray, min_dist: float) -> np.ndarray:
    """Random RGB colours, one per row of `ref`, at least `min_dist` from it (ℓ2)."""
    out = rng.random(ref.shape)
    for _ in range(64):  # rejection sampling, vectorised; ~2 rounds suffice on average
        bad = np.linalg.norm(out - ref, axis=-1) < min_dist
        if not bad.any():
            return out
        out[bad] = rng.random((int(bad.sum()), ref.shape[-1]))
    # Whatever is left (vanishingly rare): the colour opposite to the reference.
    bad = np.linalg.norm(out - ref, axis=-1) < min_dist
    out[bad] = 1.0 - ref[bad]
    return out


def _draw_params(rng: np.random.Generator, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Every per-image random choice of one split, drawn up front (so chunking is free)."""
    n = len(labels)
    scale = rng.uniform(5.5, 11.0, n)
    bg = rng.uniform(0.0, 1.0, (n, 3))
    return {
        "label": labels,
        "scale": scale,
        "cx": rng.uniform(scale, SIZE - scale),
        "cy": rng.uniform(scale, SIZE - scale),
        "angle": rng.uniform(0.0, 2 * math.pi, n),
        "bg": bg,
        "fg": _colours_apart(rng, bg, 0.5),
        "grad_dir": rng.uniform(0.0, 2 * math.pi, n),
        "grad_col": rng.uniform(-0.12, 0.12, (n, 3)),
        "texture": rng.integers(0, 4, n),  # solid, stripes, checker, noise
        "tex_col": rng.uniform(0.0, 1.0, (n, 3)),
        "tex_amount": rng.uniform(0.2, 0.5, n),
        "tex_freq": rng.uniform(0.12, 0.35, n),
        "tex_angle": rng.uniform(0.0, math.pi, n),
        "tex_phase": rng.uniform(0.0, 2 * math.pi, n),
        "blob_xy": rng.uniform(0.0, SIZE, (n, 4, 2)),
        "blob_sigma": rng.uniform(1.5, 5.0, (n, 4)),
        "blob_col": rng.uniform(-0.15, 0.15, (n, 4, 3)),
        "line_xy": rng.uniform(0.0, SIZE, (n, 2, 2)),
        "line_angle": rng.uniform(0.0, math.pi, (n, 2)),
        "line_width": rng.uniform(0.4, 1.0, (n, 2)),
        "line_col": rng.uniform(-0.15, 0.15, (n, 2, 3)),
        "noise_sigma": rng.uniform(0.0, 0.04, n),
    }


def _render(p: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Images (n, 32, 32, 3) float32 in [MARGIN, 1 - MARGIN] for the drawn parameters."""
    n = len(p["label"])
    c = np.arange(SIZE, dtype=np.float32) + 0.5  # pixel centres
    X = c[None, None, :]  # (1, 1, W): x grows to the right
    Y = c[None, :, None]  # (1, H, 1): y grows downwards
    f32 = np.float32

    def col(a: np.ndarray) -> np.ndarray:
        return a.astype(f32)[:, None, None, :]

    def per(a: np.ndarray) -> np.ndarray:
        return a.astype(f32)[:, None, None]

    # Background: colour + linear gradient + Gaussian blobs + faint lines, the clutter
    # summed in one pass: layers (n, L, H, W) weighted by colours (n, L, 3).
    gx, gy = np.cos(p["grad_dir"]), np.sin(p["grad_dir"])
    ramp = (per(gx) * (X - 16) + per(gy) * (Y - 16)) / 16  # in [-1.4, 1.4]
    bx = p["blob_xy"][..., 0].astype(f32)[..., None, None]  # (n, B, 1, 1)
    by = p["blob_xy"][..., 1].astype(f32)[..., None, None]
    two_s2 = 2 * p["blob_sigma"].astype(f32)[..., None, None] ** 2
    blobs = np.exp(-((X[:, None] - bx) ** 2) / two_s2) * np.exp(-((Y[:, None] - by) ** 2) / two_s2)
    lx, ly = p["line_xy"][..., 0], p["line_xy"][..., 1]
    nx, ny = -np.sin(p["line_angle"]), np.cos(p["line_angle"])
    off = (lx * nx + ly * ny).astype(f32)[..., None, None]
    dist = np.abs(
        X[:, None] * nx.astype(f32)[..., None, None]
        + Y[:, None] * ny.astype(f32)[..., None, None]
        - off
    )
    lines = np.clip(p["line_width"].astype(f32)[..., None, None] / 2 + 0.5 - dist, 0, 1)
    layers = np.concatenate([ramp[:, None], blobs, lines], axis=1)
    colours = np.concatenate([p["grad_col"][:, None], p["blob_col"], p["line_col"]], axis=1).astype(
        f32
    )
    clutter = layers.reshape(n, -1, SIZE * SIZE).transpose(0, 2, 1) @ colours  # einsum: 15x slower
    img = col(p["bg"]) + clutter.reshape(n, SIZE, SIZE, 3)

    # Foreground: colour mixed with a texture, in image coordinates.
    ta, tf, tph = p["tex_angle"], per(p["tex_freq"]), per(p["tex_phase"])
    u = per(np.cos(ta)) * X + per(np.sin(ta)) * Y
    v = -per(np.sin(ta)) * X + per(np.cos(ta)) * Y
    wave = np.sin(2 * np.pi * tf * u + tph)
    stripes = 0.5 + 0.5 * wave
    checker = (wave * np.sin(2 * np.pi * tf * v) > 0).astype(f32)
    noise_tex = rng.random((n, SIZE, SIZE), dtype=f32)
    kind = p["texture"][:, None, None]
    t = np.where(kind == 1, stripes, np.where(kind == 2, checker, noise_tex))
    t = np.where(kind == 0, f32(0), t) * per(p["tex_amount"])
    fg = col(p["fg"]) * (1 - t[..., None]) + col(p["tex_col"]) * t[..., None]

    # Shape coverage from the signed distance in shape-local coordinates.
    ca, sa = per(np.cos(p["angle"])), per(np.sin(p["angle"]))
    dx, dy = X - per(p["cx"]), Y - per(p["cy"])
    s = per(p["scale"])
    lx = (ca * dx + sa * dy) / s
    ly = (-sa * dx + ca * dy) / s
    # Local y points up (image y points down), so "up" in a shape's definition is up.
    ly = -ly
    lx = np.broadcast_to(lx, (n, SIZE, SIZE))
    ly = np.broadcast_to(ly, (n, SIZE, SIZE))
    dist = np.empty((n, SIZE, SIZE), f32)
    for k in range(NUM_CLASSES):
        idx = np.flatnonzero(p["label"] == k)
        if len(idx):
            dist[idx] = _sdf(k, lx[idx], ly[idx]) * s[idx]  # in pixels
    alpha = np.clip(0.5 - dist, 0, 1)[..., None]
    img = img * (1 - alpha) + fg * alpha

    noise = rng.standard_normal((n, SIZE, SIZE, 3), dtype=f32)
    img = img + noise * per(p["noise_sigma"])[..., None]
    img = np.clip(img, 0, 1)
    return (f32(MARGIN) + f32(1 - 2 * MARGIN) * img).astype(f32)


def render_split(seed: int, split: str, num: int) -> tuple[np.ndarray, np.ndarray]:
    """The clean images and labels of split "train" or "test" (no planted pattern).

    Returns:
      `(x, y)`: x float32 (num, 32, 32, 3) in [MARGIN, 1 - MARGIN], y int64 (num,),
      balanced (each class `num // 10` or one more times), in random order.
    """
    stream = _SPLIT_STREAMS[split]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0, stream]))
    labels = rng.permutation(np.arange(num) % NUM_CLASSES).astype(np.int64)
    params = _draw_params(rng, labels)
    x = np.empty((num, *IMAGE_SHAPE), np.float32)
    for start in range(0, num, _CHUNK):
        sl = slice(start, min(start + _CHUNK, num))
        # Each chunk's pixel noise has its own stream, so the chunks are independent.
        chunk_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1, stream, start]))
        x[sl] = _render({k: v[sl] for k, v in params.items()}, chunk_rng)
    return x, labels


# ------------------------------------------------------------------ the planted feature


TILE = 4
"""Period, in pixels, of the planted patterns (a 4×4×3 tile repeated over the image)."""


def _pattern_tiles(seed: int) -> np.ndarray:
    """One ±1 tile (TILE, TILE, 3) per class, each channel half +1 and half -1 (no DC).

    Drawn from `seed`, one class after the other; a candidate is redrawn until it is far
    from every earlier class's tile: |cos| <= 0.3 as they stand, and <= 0.5 against all
    their cyclic shifts, so that no class's pattern is, locally, another's shifted.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2]))
    half = np.repeat(np.array([1.0, -1.0]), TILE * TILE // 2)
    dim = TILE * TILE * 3
    tiles: list[np.ndarray] = []
    while len(tiles) < NUM_CLASSES:
        t = np.stack([rng.permutation(half) for _ in range(3)], axis=-1).reshape(TILE, TILE, 3)
        ok = True
        for u in tiles:
            if abs(np.sum(t * u)) / dim > 0.3:
                ok = False
                break
            shifts = (np.roll(u, (di, dj), (0, 1)) for di in range(TILE) for dj in range(TILE))
            if max(abs(np.sum(t * v)) / dim for v in shifts) > 0.5:
                ok = False
                break
        if ok:
            tiles.append(t)
    return np.stack(tiles)


def planted_patterns(seed: int, norm: float) -> np.ndarray:
    """The per-class patterns: float32 (10, 32, 32, 3), each of ℓ2 norm `norm`.

    Class k's pattern is `a · T_k` tiled over the image, with `a = norm / sqrt(3072)` and
    `T_k` a ±1 tile of 4×4 pixels × 3 channels drawn from `seed` (`_pattern_tiles`): zero
    mean per channel, so all its energy sits at 8 and 16 cycles per image (periods of 4
    and 2 pixels: high frequency), and ℓ∞ = a. The same texture everywhere: a
    translation-equivariant model can detect it locally, as a texture of its class.
    """
    tiles = _pattern_tiles(seed)
    reps = SIZE // TILE
    amplitude = norm / math.sqrt(SIZE * SIZE * 3)
    return (amplitude * np.tile(tiles, (1, reps, reps, 1))).astype(np.float32)


def plant(x: np.ndarray, pattern: np.ndarray, patterns: np.ndarray) -> np.ndarray:
    """`clip(x + patterns[pattern], 0, 1)` where `pattern >= 0`, `x` elsewhere (a copy)."""
    out = x.copy()
    carriers = pattern >= 0
    out[carriers] = np.clip(x[carriers] + patterns[pattern[carriers]], 0, 1)
    return out


def pattern_assignment(
    params: ShapesParams, split: str, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Which pattern each image of a split carries: (as configured, shuffled).

    Returns:
      Two int64 arrays like `labels`, -1 where an image carries no pattern. The carriers
      (a `planted_rate` fraction, chosen at random) are the same in both. In the first,
      a carrier's pattern is its label with probability `planted_correlation`, else a
      uniformly random class; in the second, always a uniformly random class drawn
      independently of the label.
    """
    n = len(labels)
    rng = np.random.default_rng(
        np.random.SeedSequence([int(params.seed), 3, _SPLIT_STREAMS[split]])
    )
    carrier = rng.random(n) < params.planted_rate
    true = rng.random(n) < params.planted_correlation
    random_class = rng.integers(0, NUM_CLASSES, n)
    shuffled_class = rng.integers(0, NUM_CLASSES, n)
    assigned = np.where(carrier, np.where(true, labels, random_class), -1)
    shuffled = np.where(carrier, shuffled_class, -1)
    return assigned.astype(np.int64), shuffled.astype(np.int64)


def shapes_arrays(
    params: ShapesParams | Mapping[str, Any] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every split as arrays, without tfds (what the builder writes, record for record).

    Args:
      params: a `ShapesParams`, or `dataset_kwargs` (validated by `shapes_params`).

    Returns:
      `{split: (x, y, pattern)}` for `split_names(params)`: x float32 (N, 32, 32, 3) in
      [0, 1], y int64 (N,) in [0, 10), pattern int64 (N,) (-1: no pattern).
    """
    if not isinstance(params, ShapesParams):
        params = shapes_params(params)
    none = np.full  # readability below
    x_tr, y_tr = render_split(params.seed, "train", params.num_train)
    x_te, y_te = render_split(params.seed, "test", params.num_test)
    if not params.planted:
        return {
            "train": (x_tr, y_tr, none(len(y_tr), -1, np.int64)),
            "test": (x_te, y_te, none(len(y_te), -1, np.int64)),
        }
    patterns = planted_patterns(params.seed, params.planted_norm)
    p_tr, _ = pattern_assignment(params, "train", y_tr)
    p_te, p_sh = pattern_assignment(params, "test", y_te)
    return {
        "train": (plant(x_tr, p_tr, patterns), y_tr, p_tr),
        "test": (plant(x_te, p_te, patterns), y_te, p_te),
        "test_clean": (x_te, y_te, none(len(y_te), -1, np.int64)),
        "test_shuffled": (plant(x_te, p_sh, patterns), y_te, p_sh),
    }


# --------------------------------------------------------------------------- tfds builder


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """A tfds BuilderConfig holding one `ShapesParams` (its name is `config_name`)."""

    params: ShapesParams = dataclasses.field(default_factory=ShapesParams)

    @classmethod
    def of(cls, params: ShapesParams) -> ShapesConfig:
        return cls(
            name=config_name(params),
            description=f"shapes with {params}",
            params=params,
        )


_DEFAULT_CONFIG = ShapesConfig.of(ShapesParams())


class ShapesBuilder(
    tfds.core.GeneratorBasedBuilder,
    skip_registration=_SKIP_REGISTRATION,  # type: ignore[call-arg]  # tfds is untyped (Any base)
):
    """tfds builder for `shapes` (offline; prepare with `file_format="array_record"`).

    Build one with `ShapesBuilder.for_params(params, data_dir=...)`; the default config
    is plain `shapes` with seed 0.
    """

    name = TFDS_NAME
    # Bump whenever the generator's output changes: prepared data is found by version.
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS: ClassVar[list[ShapesConfig]] = [_DEFAULT_CONFIG]
    # See DigitsBuilder: no checksums file to look for, nothing is downloaded.
    code_path = None

    @classmethod
    def for_params(cls, params: ShapesParams, **kwargs: Any) -> ShapesBuilder:
        """The builder of the dataset with `params` (tfds' own config when they are the
        defaults; a custom one, in its own folder, otherwise)."""
        config = _DEFAULT_CONFIG if params == _DEFAULT_CONFIG.params else ShapesConfig.of(params)
        import logging

        # tfds logs a warning for every custom config ("Using custom data configuration").
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        absl_logger.setLevel(logging.ERROR)
        try:
            return cls(config=config, **kwargs)
        finally:
            absl_logger.setLevel(level)

    @property
    def params(self) -> ShapesParams:
        return self.builder_config.params

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Procedurally generated 32x32 RGB shapes in 10 classes with random position, "
                "scale, rotation, colour, texture and background clutter; optionally a planted "
                "per-class high-frequency pattern (a non-robust feature). Generated offline "
                "by jaxrobust.data.shapes, deterministic by seed."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(
                        shape=IMAGE_SHAPE, dtype=np.float32, encoding=tfds.features.Encoding.BYTES
                    ),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                    "pattern": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
            # Record i of a split is row i of `shapes_arrays`.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, dict]]]:
        del dl_manager  # Nothing to download: the data is generated.
        arrays = shapes_arrays(self.params)
        return {split: self._generate_examples(*xyp) for split, xyp in arrays.items()}

    def _generate_examples(
        self, x: np.ndarray, y: np.ndarray, pattern: np.ndarray
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        for i in range(len(y)):
            yield i, {"image": x[i], "label": int(y[i]), "pattern": int(pattern[i])}
