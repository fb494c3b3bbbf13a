"""Interval bound propagation (IBP) and CROWN-IBP: certified bounds for an ℓ∞ ball.

Sound lower and upper bounds on a network's logits, and on the logit margins z_y − z_j,
over every input in the ℓ∞ ball of radius ε around x intersected with the input box
[lo, hi] (the images' domain, [0, 1] by default):

- **IBP** (Gowal et al. 2018, "On the Effectiveness of Interval Bound Propagation for
  Training Verifiably Robust Models"): an interval per activation, pushed through every
  layer in centre/radius form (dense and conv: centre through W, radius through |W|).
  For the margins, the last dense layer is merged with the specification matrix C
  (row j = e_y − e_j) before the interval is taken ("elision of the last layer"), which is
  tighter than subtracting logit intervals.
- **CROWN-IBP** (Zhang et al. 2020, "Towards Stable and Efficient Training of Verifiably
  Robust Neural Networks"): IBP's intervals for every hidden pre-activation, then one
  backward pass of linear bounds (CROWN, Zhang et al. 2018) from the specification down to
  the input, with the adaptive lower ReLU relaxation (slope 1 where u > −l, else 0), and
  the linear bound minimised over the input box in closed form. CROWN-IBP is not tighter
  than IBP on every network (Zhang et al. note the opposite on IBP-trained ones), so
  `margin_bounds(method="crown_ibp")` returns the elementwise best of the two sound bounds:
  never looser than IBP by construction; `crown_lower` alone is the raw backward bound.

The network is a tuple of layers (`Network`), built from the registered Flax models
(`from_flax`: "mlp", "small_cnn", "madry_cnn") or by hand: `Dense`, `Conv`, `Affine`
(input normalisation and folded BatchNorm, see `fold_batchnorm`), `ReLU`, `Flatten`,
`AvgPool` and `MaxPool2x2`. Anything else raises `UnsupportedLayerError`: there is no
fallback that could return a wrong bound.

Shapes: x (B, *input_shape) NHWC images or (B, d) vectors, y (B,) integer labels, logits
(B, K); ε is a scalar or one radius per example (B,), in input units. Everything is pure
and jittable/vmappable; under a trace a negative or NaN ε poisons the bounds with NaN (so
nothing is verified) instead of raising.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import Array, lax

from jaxrobust.errors import ConfigError, InputError, check_eps, check_range, is_concrete
from jaxrobust.models.layers import max_pool_2x2


class UnsupportedLayerError(ConfigError):
    """A model or layer that bound propagation does not support (no silent fallback)."""


# ----------------------------------------------------------------------------- layers


@struct.dataclass
class Dense:
    """y = x @ kernel + bias on (B, d_in) inputs; kernel (d_in, d_out), bias (d_out,)."""

    kernel: Array
    bias: Array


@struct.dataclass
class Conv:
    """2-D cross-correlation, NHWC inputs, HWIO kernel (kh, kw, C, O), bias (O,)."""

    kernel: Array
    bias: Array
    strides: tuple[int, int] = struct.field(pytree_node=False, default=(1, 1))
    padding: Any = struct.field(pytree_node=False, default="SAME")


@struct.dataclass
class Affine:
    """Elementwise y = x * scale + shift, scale/shift scalars or per channel (last axis).

    Input normalisation is Affine(1/std, −mean/std); an inference-mode BatchNorm is one too
    (`fold_batchnorm`). A negative scale is fine (the interval swaps its ends)."""

    scale: Array
    shift: Array


@struct.dataclass
class ReLU:
    """y = max(x, 0)."""


@struct.dataclass
class Flatten:
    """(B, *shape) -> (B, prod(shape))."""


@struct.dataclass
class AvgPool:
    """Non-overlapping `size`×`size` average pooling (stride = size) on NHWC maps whose H
    and W are multiples of `size`."""

    size: int = struct.field(pytree_node=False, default=2)


@struct.dataclass
class MaxPool2x2:
    """The models' `max_pool_2x2` (2×2, stride 2, odd sizes padded with −inf)."""


Layer = Dense | Conv | Affine | ReLU | Flatten | AvgPool | MaxPool2x2
Network = tuple  # tuple[Layer, ...]
_LINEAR = (Dense, Conv, Affine, Flatten, AvgPool)


class Bounds(NamedTuple):
    """Elementwise bounds lower <= value <= upper (same shapes)."""

    lower: Array
    upper: Array


def fold_batchnorm(
    scale: Array, bias: Array, mean: Array, var: Array, epsilon: float = 1e-5
) -> Affine:
    """An inference-mode BatchNorm, γ (x − μ)/sqrt(σ² + ε) + β, as one `Affine` layer.

    Args:
      scale: γ (C,).
      bias: β (C,).
      mean: the running mean μ (C,).
      var: the running variance σ² (C,).
      epsilon: the BatchNorm's ε (Flax's default 1e-5).
    """
    s = jnp.asarray(scale) / jnp.sqrt(jnp.asarray(var) + epsilon)
    return Affine(scale=s, shift=jnp.asarray(bias) - jnp.asarray(mean) * s)


# ------------------------------------------------------------------- exact forward pass


def _name(i: int, layer: Any) -> str:
    return f"layer {i} ({type(layer).__name__})"


def _check_layer(i: int, layer: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The per-example output shape of `layer` on per-example inputs of `shape`, or a named
    error for a layer that is not supported or does not fit its input."""
    if isinstance(layer, Dense):
        k = np.shape(layer.kernel)
        if len(shape) != 1 or len(k) != 2 or shape[0] != k[0]:
            raise InputError(
                f"{_name(i, layer)} with kernel {k} expects (B, {k[0] if k else '?'}) inputs, "
                f"got per-example shape {shape} (put a Flatten before it)"
            )
        return (k[1],)
    if isinstance(layer, Conv):
        k = np.shape(layer.kernel)
        if len(shape) != 3 or len(k) != 4 or shape[-1] != k[2]:
            c = k[2] if len(k) == 4 else "?"
            raise InputError(
                f"{_name(i, layer)} with kernel {k} expects (B, H, W, {c}) inputs, got "
                f"per-example shape {shape}"
            )
        out = jax.eval_shape(lambda v: _conv(layer, v, bias=True), jnp.zeros((1, *shape)))
        return tuple(out.shape[1:])
    if isinstance(layer, Affine):
        for v in (layer.scale, layer.shift):
            if np.ndim(v) > 1 or (np.ndim(v) == 1 and np.shape(v)[0] not in (1, shape[-1])):
                raise InputError(
                    f"{_name(i, layer)} needs a scalar or one value per channel ({shape[-1]}), "
                    f"got shape {np.shape(v)}"
                )
        return shape
    if isinstance(layer, ReLU):
        return shape
    if isinstance(layer, Flatten):
        return (int(np.prod(shape)),)
    if isinstance(layer, AvgPool):
        s = layer.size
        if len(shape) != 3 or shape[0] % s or shape[1] % s:
            raise InputError(
                f"{_name(i, layer)} of size {s} needs (B, H, W, C) maps with H and W multiples "
                f"of {s}, got per-example shape {shape}"
            )
        return (shape[0] // s, shape[1] // s, shape[2])
    if isinstance(layer, MaxPool2x2):
        if len(shape) != 3:
            raise InputError(f"{_name(i, layer)} needs (B, H, W, C) maps, got {shape}")
        return (-(-shape[0] // 2), -(-shape[1] // 2), shape[2])
    raise UnsupportedLayerError(
        f"{_name(i, layer)} is not supported by bound propagation; supported layers: "
        "Dense, Conv, Affine, ReLU, Flatten, AvgPool, MaxPool2x2"
    )


def layer_shapes(net: Network, input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """Per-example shapes [input of layer 0, ..., output of the last layer]; raises
    `InputError` / `UnsupportedLayerError` naming the first layer that does not fit."""
    if not isinstance(net, tuple | list) or not net:
        raise InputError(f"a network is a non-empty tuple of layers, got {type(net).__name__}")
    shapes = [tuple(int(d) for d in input_shape)]
    for i, layer in enumerate(net):
        shapes.append(_check_layer(i, layer, shapes[-1]))
    if len(shapes[-1]) != 1:
        raise InputError(
            f"the network must end in (B, K) logits, but its output is {shapes[-1]} per example"
        )
    return shapes


def _conv(layer: Conv, x: Array, *, bias: bool) -> Array:
    kernel = layer.kernel
    y = lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        tuple(layer.strides),
        layer.padding if isinstance(layer.padding, str) else tuple(map(tuple, layer.padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y + layer.bias if bias else y


def _avg_pool(x: Array, s: int) -> Array:
    b, h, w, c = x.shape
    return jnp.mean(x.reshape(b, h // s, s, w // s, s, c), axis=(2, 4))


def _apply(layer: Any, x: Array) -> Array:
    """One layer on a batch (B, ...)."""
    if isinstance(layer, Dense):
        return x @ layer.kernel + layer.bias
    if isinstance(layer, Conv):
        return _conv(layer, x, bias=True)
    if isinstance(layer, Affine):
        return x * layer.scale + layer.shift
    if isinstance(layer, ReLU):
        return jax.nn.relu(x)
    if isinstance(layer, Flatten):
        return x.reshape(x.shape[0], -1)
    if isinstance(layer, AvgPool):
        return _avg_pool(x, layer.size)
    if isinstance(layer, MaxPool2x2):
        return max_pool_2x2(x)
    raise UnsupportedLayerError(f"{type(layer).__name__} is not supported by bound propagation")


def forward(net: Network, x: Array) -> Array:
    """The network's exact logits: x (B, *input_shape) -> (B, K)."""
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise InputError(f"x must be a batch (B, ...), got shape {x.shape}")
    layer_shapes(net, x.shape[1:])
    for layer in net:
        x = _apply(layer, x)
    return x


# --------------------------------------------------------------------------------- IBP


def _interval(layer: Any, lo: Array, hi: Array) -> tuple[Array, Array]:
    """One layer applied to the box [lo, hi] (B, ...): its tightest axis-aligned enclosure
    for elementwise layers, the centre/radius enclosure for dense and conv."""
    if isinstance(layer, Dense | Conv):
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        if isinstance(layer, Dense):
            c, r = mid @ layer.kernel + layer.bias, rad @ jnp.abs(layer.kernel)
        else:
            c = _conv(layer, mid, bias=True)
            # flax's struct.dataclass adds .replace, which its stubs do not declare.
            abs_layer = layer.replace(kernel=jnp.abs(layer.kernel))  # type: ignore[attr-defined]
            r = _conv(abs_layer, rad, bias=False)
        return c - r, c + r
    if isinstance(layer, Affine):
        a, b = lo * layer.scale + layer.shift, hi * layer.scale + layer.shift
        return jnp.minimum(a, b), jnp.maximum(a, b)
    # Monotone non-decreasing layers: the ends map to the ends.
    return _apply(layer, lo), _apply(layer, hi)


def _ibp_all(net: Network, lo: Array, hi: Array) -> list[tuple[Array, Array]]:
    """Boxes at the input of every layer and at the output: len(net) + 1 pairs."""
    boxes = [(lo, hi)]
    for layer in net:
        boxes.append(_interval(layer, *boxes[-1]))
    return boxes


class _Prepared(NamedTuple):
    lo: Array
    hi: Array
    poison: Array  # () bool: a traced bad ε


def _prepare(net: Network, x: Any, eps: Any, lo: float, hi: float) -> _Prepared:
    """Validate, and the input box [max(x − ε, lo), min(x + ε, hi)]."""
    check_eps(eps)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise InputError(f"x must be a floating-point array, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise InputError(f"x must be a non-empty batch (B, ...), got shape {x.shape}")
    if not lo < hi:
        raise InputError(f"the input box needs lo < hi, got [{lo}, {hi}]")
    check_range(x, lo, hi)
    eps = jnp.asarray(eps, x.dtype)
    if eps.ndim > 1 or (eps.ndim == 1 and eps.shape[0] != x.shape[0]):
        raise InputError(
            f"eps must be a scalar or one radius per example ({x.shape[0]},), got shape {eps.shape}"
        )
    layer_shapes(net, x.shape[1:])
    poison = jnp.any(jnp.isnan(eps) | (eps < 0) | jnp.isinf(eps))
    e = jnp.reshape(eps, (-1,) + (1,) * (x.ndim - 1))
    return _Prepared(jnp.clip(x - e, lo, hi), jnp.clip(x + e, lo, hi), poison)


def _poisoned(p: _Prepared, *arrays: Array) -> tuple[Array, ...]:
    return tuple(jnp.where(p.poison, jnp.nan, a) for a in arrays)


def ibp_bounds(net: Network, x: Array, eps: Any, *, lo: float = 0.0, hi: float = 1.0) -> Bounds:
    """IBP bounds on the logits over the ℓ∞ ball of radius `eps` around `x` ∩ [lo, hi].

    Args:
      net: a `Network` (`from_flax(model, variables)` or a tuple of layers).
      x: (B, *input_shape) inputs in [lo, hi].
      eps: ℓ∞ radius, scalar or (B,), in input units.
      lo: lower end of the input domain (the box every input lies in).
      hi: upper end of the input domain.
    Returns:
      `Bounds` of shape (B, K) with lower <= f(x') <= upper for every x' in the set.
    """
    p = _prepare(net, x, eps, lo, hi)
    low, up = _ibp_all(net, p.lo, p.hi)[-1]
    return Bounds(*_poisoned(p, low, up))


def specification(y: Array, num_classes: int, dtype: Any = jnp.float32) -> Array:
    """The margin specification C (B, K, K): row j is e_y − e_j (row y is all zeros), so
    C @ z = z_y − z (per class j)."""
    eye = jnp.eye(num_classes, dtype=dtype)
    return eye[y][:, None, :] - eye[None, :, :]


def _ibp_spec_lower(net: Network, boxes: list, spec: Array) -> Array:
    """Lower bound of spec @ logits with the last dense layer merged into spec (elision)."""
    last = net[-1]
    if isinstance(last, Dense):
        l_in, u_in = boxes[-2]
        w = jnp.einsum("ik,bsk->bsi", last.kernel, spec)  # (B, S, d_in)
        mid, rad = (u_in + l_in) / 2, (u_in - l_in) / 2
        centre = jnp.einsum("bsi,bi->bs", w, mid) + spec @ last.bias
        return centre - jnp.einsum("bsi,bi->bs", jnp.abs(w), rad)
    l_out, u_out = boxes[-1]
    return _concretize(spec, jnp.zeros(spec.shape[:2], spec.dtype), l_out, u_out)


def _concretize(a: Array, c: Array, l_in: Array, u_in: Array) -> Array:
    """min over the box [l_in, u_in] of a · x + c, with a (B, S, *shape), c (B, S)."""
    axes = tuple(range(2, a.ndim))
    pos, neg = jnp.maximum(a, 0), jnp.minimum(a, 0)
    return c + jnp.sum(pos * l_in[:, None] + neg * u_in[:, None], axis=axes)


# ---------------------------------------------------------------------------- CROWN-IBP


def _relu_relax(l: Array, u: Array) -> tuple[Array, Array, Array]:
    """Linear relaxation of ReLU on [l, u]: lower slope α (no intercept), upper slope and
    intercept: α z <= relu(z) <= s z + t for z in [l, u]."""
    active, inactive = l >= 0, u <= 0
    unstable = ~(active | inactive)
    denom = jnp.where(unstable, u - l, 1.0)
    s = jnp.where(active, 1.0, jnp.where(unstable, u / denom, 0.0))
    t = jnp.where(unstable, -u * l / denom, 0.0)
    alpha = jnp.where(active, 1.0, jnp.where(unstable & (u > -l), 1.0, 0.0))
    return alpha, s, t


def _maxpool_relax(l: Array, u: Array) -> tuple[Array, Array, Array]:
    """Linear relaxation of the 2×2 max over each window on the box [l, u] (B, H, W, C).

    Lower: max >= x_i* with i* the window entry of largest lower bound. Upper: max = x_i*
    exactly when l_i* >= u_j for every other entry j, else max <= max_j u_j (a constant).
    Returns the one-hot mask of i* (B, Ho, 2, Wo, 2, C) (padding never chosen), whether the
    upper bound is x_i* (B, Ho, Wo, C), and the constant upper bound (B, Ho, Wo, C).
    """
    b, h, w, c = l.shape
    ph, pw = h % 2, w % 2
    pad = ((0, 0), (0, ph), (0, pw), (0, 0))
    lp = jnp.pad(l, pad, constant_values=-jnp.inf)
    up = jnp.pad(u, pad, constant_values=-jnp.inf)
    shape = (b, (h + ph) // 2, 2, (w + pw) // 2, 2, c)
    lw = lp.reshape(shape).transpose(0, 1, 3, 5, 2, 4).reshape(b, shape[1], shape[3], c, 4)
    uw = up.reshape(shape).transpose(0, 1, 3, 5, 2, 4).reshape(b, shape[1], shape[3], c, 4)
    idx = jnp.argmax(lw, axis=-1)
    onehot = jax.nn.one_hot(idx, 4, dtype=l.dtype)
    l_best = jnp.max(lw, axis=-1)
    u_others = jnp.max(jnp.where(onehot > 0, -jnp.inf, uw), axis=-1)
    exact = l_best >= u_others
    mask = onehot.reshape(b, shape[1], shape[3], c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return mask, exact, jnp.max(uw, axis=-1)


def _maxpool_back(a: Array, mask: Array, h: int, w: int) -> Array:
    """Coefficients a (B, S, Ho, Wo, C) on the pooled map -> on the input map (B, S, H, W, C),
    through the selection x -> x_i* of every window."""
    full = a[:, :, :, None, :, None, :] * mask[:, None]
    b, s, ho, _, wo, _, c = full.shape
    return full.reshape(b, s, 2 * ho, 2 * wo, c)[:, :, :h, :w, :]


def crown_lower(net: Network, boxes: list, spec: Array) -> Array:
    """CROWN's backward bound: a lower bound of spec @ f(x) (B, S) over the input box
    `boxes[0]`, with every ReLU / max-pool relaxed on the intermediate box `boxes[i]` at its
    input (IBP's for CROWN-IBP).

    Args:
      net: the network.
      boxes: `len(net) + 1` (lower, upper) pairs (B, ...): sound boxes of each layer's input
        (and of the output, unused); `boxes[0]` is the input set.
      spec: (B, S, K) rows of the linear specification.
    """
    a = spec
    c = jnp.zeros(spec.shape[:2], spec.dtype)
    for i in range(len(net) - 1, -1, -1):
        layer = net[i]
        l_in, u_in = boxes[i]
        if isinstance(layer, _LINEAR):
            # Affine layer f(v) = g(v) + f(0): a·f(v) = (gᵀa)·v + a·f(0).
            zero = jnp.zeros((1, *l_in.shape[1:]), l_in.dtype)
            f0 = _apply(layer, zero)
            c = c + jnp.sum(a * f0[:, None], axis=tuple(range(2, a.ndim)))
            n_b, n_s = a.shape[:2]
            _, vjp = jax.vjp(lambda v, _l=layer, _f0=f0: _apply(_l, v) - _f0, zero)
            flat = a.reshape(n_b * n_s, *a.shape[2:])
            back = jax.vmap(lambda r, _vjp=vjp: _vjp(r[None])[0][0])(flat)
            a = back.reshape(n_b, n_s, *l_in.shape[1:])
        elif isinstance(layer, ReLU):
            alpha, s, t = _relu_relax(l_in, u_in)
            pos, neg = jnp.maximum(a, 0), jnp.minimum(a, 0)
            c = c + jnp.sum(neg * t[:, None], axis=tuple(range(2, a.ndim)))
            a = pos * alpha[:, None] + neg * s[:, None]
        elif isinstance(layer, MaxPool2x2):
            mask, exact, u_const = _maxpool_relax(l_in, u_in)
            pos, neg = jnp.maximum(a, 0), jnp.minimum(a, 0)
            c = c + jnp.sum(jnp.where(exact[:, None], 0.0, neg * u_const[:, None]), axis=(2, 3, 4))
            a = pos + jnp.where(exact[:, None], neg, 0.0)
            a = _maxpool_back(a, mask, l_in.shape[1], l_in.shape[2])
        else:
            raise UnsupportedLayerError(f"{_name(i, layer)} is not supported by bound propagation")
    return _concretize(a, c, *boxes[0])


def crown_ibp_bounds(
    net: Network, x: Array, eps: Any, *, lo: float = 0.0, hi: float = 1.0
) -> Bounds:
    """CROWN-IBP bounds on the logits (B, K), intersected with IBP's (both are sound).

    Same arguments as `ibp_bounds`. The backward pass runs once for the lower bounds
    (specification I) and once for the upper ones (−I).
    """
    p = _prepare(net, x, eps, lo, hi)
    boxes = _ibp_all(net, p.lo, p.hi)
    k = boxes[-1][0].shape[-1]
    eye = jnp.broadcast_to(jnp.eye(k, dtype=p.lo.dtype), (p.lo.shape[0], k, k))
    low = jnp.maximum(crown_lower(net, boxes, eye), boxes[-1][0])
    up = jnp.minimum(-crown_lower(net, boxes, -eye), boxes[-1][1])
    return Bounds(*_poisoned(p, low, up))


METHODS = ("ibp", "crown_ibp", "crown_ibp_only")


def margin_bounds(
    net: Network,
    x: Array,
    y: Array,
    eps: Any,
    *,
    method: str = "ibp",
    lo: float = 0.0,
    hi: float = 1.0,
) -> Array:
    """Certified lower bounds of the margins z_y − z_j over the ℓ∞ ball ∩ [lo, hi].

    Args:
      net: as in `ibp_bounds`.
      x: as in `ibp_bounds`.
      eps: as in `ibp_bounds`.
      lo: as in `ibp_bounds`.
      hi: as in `ibp_bounds`.
      y: (B,) integer labels.
      method: "ibp" (with the last layer merged into the specification), "crown_ibp" (the
        elementwise best of CROWN-IBP's and IBP's bounds: never looser than IBP), or
        "crown_ibp_only" (CROWN-IBP's backward bound alone).
    Returns:
      (B, K) lower bounds; column y is 0 (the margin of a class over itself). The point is
      verified when every other column is > 0.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown bound method {method!r}; known: {', '.join(METHODS)}")
    p = _prepare(net, x, eps, lo, hi)
    y = jnp.asarray(y)
    n = p.lo.shape[0]
    if y.shape != (n,) or not jnp.issubdtype(y.dtype, jnp.integer):
        raise InputError(f"y must be integer labels of shape ({n},), got {y.dtype} {y.shape}")
    k = layer_shapes(net, p.lo.shape[1:])[-1][0]
    if is_concrete(y) and (np.any(np.asarray(y) < 0) or np.any(np.asarray(y) >= k)):
        raise InputError(f"labels must lie in [0, {k}), got values in [{y.min()}, {y.max()}]")
    m = _margins(net, p.lo, p.hi, y, method)
    m = jnp.where((jnp.arange(k) == y[:, None]), 0.0, m)
    # A traced label outside [0, K) would index a wrong row: NaN, nothing verified.
    m = jnp.where(((y < 0) | (y >= k))[:, None], jnp.nan, m)
    return _poisoned(p, m)[0]


def _margins(net: Network, lo: Array, hi: Array, y: Array, method: str) -> Array:
    boxes = _ibp_all(net, lo, hi)
    k = boxes[-1][0].shape[-1]
    spec = specification(y, k, lo.dtype)
    ibp = _ibp_spec_lower(net, boxes, spec)
    if method == "ibp":
        return ibp
    crown = crown_lower(net, boxes, spec)
    return crown if method == "crown_ibp_only" else jnp.maximum(crown, ibp)


def verified(
    net: Network, x: Array, y: Array, eps: Any, *, method: str = "ibp", **box: float
) -> Array:
    """(B,) bool: the label y provably wins over every other class on the whole set."""
    m = margin_bounds(net, x, y, eps, method=method, **box)
    k = m.shape[-1]
    others = jnp.arange(k) != jnp.asarray(y)[:, None]
    return jnp.all(jnp.where(others, m > 0, True), axis=-1)


def verified_accuracy(
    net: Network,
    x: Array | np.ndarray,
    y: Array | np.ndarray,
    eps: Any,
    *,
    method: str = "ibp",
    batch_size: int = 512,
    lo: float = 0.0,
    hi: float = 1.0,
) -> dict[str, float]:
    """Verified accuracy on a data set, in jitted batches (host loop).

    Returns {"verified_accuracy", "clean_accuracy", "n", "se"}: the fractions of examples
    verified at `eps` and correctly classified (clean), the number of examples and the
    binomial standard error of the verified fraction, sqrt(p(1 − p)/n). A point verified
    at ε > 0 is also correctly classified, so verified <= clean.
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y) or len(x) == 0:
        raise InputError(f"x and y must be non-empty with equal lengths, got {len(x)}, {len(y)}")
    check_eps(eps)
    if np.ndim(eps) != 0:
        raise InputError(f"verified_accuracy takes one scalar eps, got shape {np.shape(eps)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if method not in METHODS:
        raise ConfigError(f"unknown bound method {method!r}; known: {', '.join(METHODS)}")
    fn = _verified_step(method, float(lo), float(hi))
    size = min(batch_size, len(x))
    ver, cor = [], []
    for s in range(0, len(x), size):
        # Every batch has the same shape (the last one padded by repeating its first
        # example, padding dropped after): one compiled program.
        xb, yb = x[s : s + size], y[s : s + size]
        keep = len(xb)
        if keep < size:
            xb = np.concatenate([xb, np.repeat(xb[:1], size - keep, axis=0)])
            yb = np.concatenate([yb, np.repeat(yb[:1], size - keep, axis=0)])
        v, c = fn(net, jnp.asarray(xb), jnp.asarray(yb), eps)
        ver.append(np.asarray(v)[:keep])
        cor.append(np.asarray(c)[:keep])
    v, c = np.concatenate(ver), np.concatenate(cor)
    p = float(v.mean())
    return {
        "verified_accuracy": p,
        "clean_accuracy": float(c.mean()),
        "n": len(v),
        "se": float(np.sqrt(p * (1 - p) / len(v))),
    }


_STEPS: dict[tuple, Callable] = {}


def _verified_step(method: str, lo: float, hi: float) -> Callable:
    key = (method, lo, hi)
    if key not in _STEPS:

        def step(net, x, y, eps):
            ok = verified(net, x, y, eps, method=method, lo=lo, hi=hi)
            return ok, jnp.argmax(forward(net, x), -1) == y

        _STEPS[key] = jax.jit(step)
    return _STEPS[key]


def bound_cross_entropy(margins: Array, y: Array) -> Array:
    """Gowal et al.'s robust loss: the cross-entropy of the worst-case logits ẑ_j = −m_j
    (m the margin lower bounds, m_y = 0), an upper bound of the worst-case cross-entropy.
    Returns (B,) values."""
    logits = -margins
    return -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), y[:, None], -1)[:, 0]


# ------------------------------------------------------------------ from the Flax models


def _affine_from_stats(mean: Any, std: Any) -> Affine:
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return Affine(scale=1.0 / std, shift=-mean / std)


def _dense(params: dict, name: str, used: set) -> Dense:
    used.add(name)
    p = params[name]
    return Dense(kernel=p["kernel"], bias=p["bias"])


def _conv_layer(params: dict, name: str, used: set) -> Conv:
    used.add(name)
    p = params[name]
    return Conv(kernel=p["kernel"], bias=p["bias"], strides=(1, 1), padding="SAME")


def _mlp(m: Any, params: dict, used: set) -> list:
    layers: list = [_affine_from_stats(m.mean, m.std), Flatten()]
    for i in range(len(m.hidden)):
        layers += [_dense(params, f"dense{i}", used), ReLU()]
    return [*layers, _dense(params, "head", used)]


def _small_cnn(m: Any, params: dict, used: set) -> list:
    layers: list = [_affine_from_stats(m.mean, m.std)]
    for b in range(1, len(m.channels) + 1):
        for j in (1, 2):
            layers += [_conv_layer(params, f"conv{b}_{j}", used), ReLU()]
        layers.append(MaxPool2x2())
    return [*layers, Flatten(), _dense(params, "fc1", used), ReLU(), _dense(params, "head", used)]


def _madry_cnn(m: Any, params: dict, used: set) -> list:
    layers: list = [_affine_from_stats(m.mean, m.std)]
    for name in ("conv1", "conv2"):
        layers += [_conv_layer(params, name, used), ReLU(), MaxPool2x2()]
    return [*layers, Flatten(), _dense(params, "fc1", used), ReLU(), _dense(params, "head", used)]


def _builders() -> dict[type, tuple[Callable, frozenset]]:
    from jaxrobust.models.madry_cnn import MadryCNN, SmallCNN
    from jaxrobust.models.mlp import MLP

    base = {"parent", "name", "num_classes", "mean", "std"}
    conv = base | {"conv_impl"}  # how a convolution is computed, not which function
    return {
        MLP: (_mlp, frozenset(base | {"hidden"})),
        SmallCNN: (_small_cnn, frozenset(conv | {"channels", "dense"})),
        MadryCNN: (_madry_cnn, frozenset(conv)),
    }


def supported_models() -> list[str]:
    """Class names of the Flax models `from_flax` converts."""
    return sorted(cls.__name__ for cls in _builders())


def from_flax(model: nn.Module, variables: dict) -> Network:
    """The layer list of a registered Flax model ("mlp", "small_cnn", "madry_cnn").

    The layers hold the variables' arrays (traced ones too: training objectives build the
    network from the parameters being differentiated). A model class, field or parameter
    this function does not know raises `UnsupportedLayerError`, so a changed architecture
    cannot be converted into a network that computes something else.

    Args:
      model: the linen module (e.g. `create_model("mlp", 10, hidden=(64,))`).
      variables: {"params": ...} (a non-empty "batch_stats" is refused: none of these
        models has BatchNorm; fold one with `fold_batchnorm` into a hand-built network).
    Returns:
      a `Network` whose `forward` equals `model.apply(variables, x)`.
    """
    builders = _builders()
    cls = type(model)
    if cls not in builders:
        raise UnsupportedLayerError(
            f"bound propagation does not support {cls.__name__}; supported models: "
            f"{', '.join(supported_models())} (or build a tuple of layers by hand)"
        )
    build, fields = builders[cls]
    import dataclasses

    unknown = sorted(f.name for f in dataclasses.fields(model) if f.name not in fields)
    if unknown:
        raise UnsupportedLayerError(
            f"{cls.__name__} has fields {unknown} that bound propagation does not know"
        )
    if jax.tree.leaves(variables.get("batch_stats", {})):
        raise UnsupportedLayerError(f"{cls.__name__} variables carry batch_stats; not supported")
    params = variables["params"] if "params" in variables else variables
    used: set = set()
    try:
        layers = build(model, params, used)
    except KeyError as e:
        raise UnsupportedLayerError(
            f"{cls.__name__} parameters lack {e}: not the architecture bound propagation knows"
        ) from None
    extra = sorted(set(params) - used)
    if extra:
        raise UnsupportedLayerError(
            f"{cls.__name__} has parameters {extra} that bound propagation does not know"
        )
    return tuple(layers)


def mixed_margins(
    net: Network,
    x: Array,
    y: Array,
    eps: Any,
    *,
    beta: Any = 0.0,
    lo: float = 0.0,
    hi: float = 1.0,
) -> Array:
    """CROWN-IBP's training bound (Zhang et al. 2020): β·CROWN-IBP + (1 − β)·IBP margin lower
    bounds (B, K), column y = 0. β = 0 is IBP alone (the backward pass is then skipped
    when β is a Python 0); a convex combination of two lower bounds is a lower bound."""
    p = _prepare(net, x, eps, lo, hi)
    boxes = _ibp_all(net, p.lo, p.hi)
    k = boxes[-1][0].shape[-1]
    spec = specification(jnp.asarray(y), k, p.lo.dtype)
    m = _ibp_spec_lower(net, boxes, spec)
    if not (isinstance(beta, int | float) and beta == 0):
        m = beta * crown_lower(net, boxes, spec) + (1 - beta) * m
    m = jnp.where(jnp.arange(k) == jnp.asarray(y)[:, None], 0.0, m)
    return _poisoned(p, m)[0]
