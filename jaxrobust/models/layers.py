"""Shared building blocks: in-model normalisation, a fast 2x2 max-pool and a convolution
that picks the fastest formulation for its shape on the backend.

Layout is NHWC throughout (batch, height, width, channels).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.custom_derivatives import SymbolicZero

from jaxrobust.errors import ConfigError

Stat = float | Sequence[float]


def normalize(x: Array, mean: Stat = 0.0, std: Stat = 1.0) -> Array:
    """Return `(x - mean) / std`, broadcasting a per-channel tuple over the last axis.

    Normalisation lives inside the model so that ε is always measured in input units.

    Args:
      x: inputs (..., C).
      mean: a scalar or one value per channel (length C).
      std: a scalar or one value per channel (length C).
    Returns:
      array of the same shape and dtype as `x`.
    """
    mean_a = jnp.asarray(mean, dtype=x.dtype)
    std_a = jnp.asarray(std, dtype=x.dtype)
    return (x - mean_a) / std_a


def check_stats(mean: Stat, std: Stat) -> None:
    """Raise `ConfigError` for a malformed mean/std (wrong rank, or std <= 0)."""
    arrays: dict[str, np.ndarray] = {}
    for name, v in (("mean", mean), ("std", std)):
        try:
            a: np.ndarray | None = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            a = None
        if a is None or a.ndim > 1:
            raise ConfigError(f"{name} must be a number or one value per channel, got {v!r}")
        arrays[name] = a
    if not np.all(arrays["std"] > 0):
        raise ConfigError(f"std must be > 0 (per channel), got {std!r}")


def max_pool_2x2(x: Array) -> Array:
    """2x2 max-pool with stride 2, written as reshape + max.

    Equal to `nn.max_pool(x, (2, 2), strides=(2, 2))` on even sizes, but its gradient is a
    cheap compare-and-broadcast instead of XLA's select-and-scatter (several times slower on
    XLA:CPU). Odd H or W are padded at the bottom/right with -inf, so the output has
    ceil(H/2) x ceil(W/2) positions (like 'SAME' padding) and no border pixel is dropped.

    On exact ties inside a window the gradient is split evenly between the tied inputs
    (select-and-scatter gives it all to the first); ties have measure zero for real-valued
    activations, and tied ReLU zeros have zero gradient anyway.

    Args:
      x: (..., H, W, C).
    Returns:
      (..., ceil(H/2), ceil(W/2), C).
    """
    if x.ndim < 3:
        raise ValueError(f"max_pool_2x2 expects (..., H, W, C), got shape {x.shape}")
    *lead, h, w, c = x.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        pad = [(0, 0)] * len(lead) + [(0, ph), (0, pw), (0, 0)]
        x = jnp.pad(x, pad, constant_values=-jnp.inf)
        h, w = h + ph, w + pw
    x = x.reshape(*lead, h // 2, 2, w // 2, 2, c)
    nd = len(lead)
    return jnp.max(x, axis=(nd + 1, nd + 3))


Padding = str | Sequence[tuple[int, int]]
ConvImpl = Literal["auto", "xla", "gemm", "gemm_grad"]
CONV_IMPLS: tuple[str, ...] = get_args(ConvImpl)

# Output positions per image at or below which `Conv`'s "auto" mode uses the GEMM form on
# CPU. benchmarks/kernels.py (2 cores, float32, forward + input gradient, batch 32 sharded
# over one device per core): PreActResNet-18's 3x3 512->512 convolution at 4x4 takes 23.7 ms
# as XLA's convolution and 16.7 ms as a GEMM, its 3x3/2 256->512 one (output 4x4) 12.0 vs
# 9.3 ms. On larger maps the patch matrix costs more than the GEMM saves (measured once with
# the same set-up: 3x3 128->128 at 16x16 18 vs 24 ms, 64->64 at 32x32 17 vs 62 ms; at 8x8
# neither formulation wins clearly).
GEMM_MAX_POSITIONS = 16


def conv_padding(
    spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int], padding: Padding
) -> list[tuple[int, int]]:
    """Explicit ((top, bottom), (left, right)) padding for "SAME", "VALID" or explicit pairs."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"padding must be 'SAME', 'VALID' or pairs of ints, got {padding!r}")
        return list(lax.padtype_to_pads(tuple(spatial), tuple(kernel), tuple(strides), padding))
    pads = [tuple(int(v) for v in p) for p in padding]
    if len(pads) != 2 or any(len(p) != 2 or min(p) < 0 for p in pads):
        raise ValueError(f"padding must be two (low, high) pairs of ints >= 0, got {padding!r}")
    return cast(list[tuple[int, int]], pads)  # two pairs, checked just above


def _check_conv_args(name: str, x: Array, kernel: Array) -> None:
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[2] != x.shape[-1]:
        raise ValueError(
            f"{name} expects x (B, H, W, C) and kernel (kh, kw, C, O), got {x.shape} "
            f"and {kernel.shape}"
        )


def conv_as_gemm(
    x: Array, kernel: Array, strides: Sequence[int] = (1, 1), padding: Padding = "VALID"
) -> Array:
    """A 2-D cross-correlation written as one matrix product over gathered patches (im2col).

    The same function as `lax.conv_general_dilated(x, kernel, strides, padding)` in
    NHWC/HWIO layout (equal up to float32 summation order), built from a pad, strided slices
    and a `dot`, so XLA runs it, and its gradients, as GEMMs. On XLA:CPU this beats the
    direct convolution on small outputs with many channels (see `GEMM_MAX_POSITIONS`); on
    large feature maps the patch matrix (kh*kw/(sh*sw) times the input) costs more than it
    saves. A 1x1 convolution is a plain matrix product with no patch matrix at all.

    Args:
      x: (B, H, W, C) inputs.
      kernel: (kh, kw, C, O) weights.
      strides: (sh, sw).
      padding: "SAME", "VALID" or ((top, bottom), (left, right)).
    Returns:
      (B, Ho, Wo, O), Ho = (H + top + bottom - kh) // sh + 1 (likewise Wo).
    """
    _check_conv_args("conv_as_gemm", x, kernel)
    kh, kw, c, o = kernel.shape
    sh, sw = strides
    (pt, pb), (pl, pr) = conv_padding(x.shape[1:3], (kh, kw), strides, padding)
    if pt or pb or pl or pr:
        x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    b, h, w, _ = x.shape
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"kernel {kernel.shape[:2]} is larger than the padded input {(h, w)}")
    taps = [
        x[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :]
        for i in range(kh)
        for j in range(kw)
    ]
    patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
    # Patch channels are ordered (tap row, tap column, C): kernel.reshape(kh * kw * C, O).
    y = patches.reshape(b * ho * wo, kh * kw * c) @ kernel.reshape(kh * kw * c, o)
    return y.reshape(b, ho, wo, o)


def _xla_conv(x: Array, kernel: Array, strides: Sequence[int], pads: Sequence) -> Array:
    return lax.conv_general_dilated(
        x, kernel, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv_gemm_grad(x: Array, kernel: Array, strides: tuple, pads: tuple) -> Array:
    return _xla_conv(x, kernel, strides, pads)


def _conv_gemm_grad_jvp(strides: tuple, pads: tuple, primals: tuple, tangents: tuple) -> tuple:
    x, kernel = primals
    dx, dkernel = tangents
    y = _xla_conv(x, kernel, strides, pads)
    # The convolution is bilinear: its tangent is the same map applied to each tangent in
    # turn, written so that the transposes reverse mode takes run fast on XLA:CPU inside
    # loops. The input term is a convolution with the kernel physically in HWOI layout:
    # its transpose (the input gradient) swaps the spec's I and O back to canonical HWIO.
    # The kernel term is a GEMM over patches: its transpose (the kernel gradient) is a
    # GEMM. A symbolic-zero tangent (the kernel's, in an attack) costs nothing.
    terms = []
    if not isinstance(dx, SymbolicZero):
        kernel_oi = jnp.transpose(kernel, (0, 1, 3, 2))
        dims = ("NHWC", "HWOI", "NHWC")
        terms.append(lax.conv_general_dilated(dx, kernel_oi, strides, pads, dimension_numbers=dims))
    if not isinstance(dkernel, SymbolicZero):
        terms.append(conv_as_gemm(x, dkernel, strides, pads))
    if not terms:
        return y, jnp.zeros_like(y)
    return y, terms[0] if len(terms) == 1 else terms[0] + terms[1]


_conv_gemm_grad.defjvp(_conv_gemm_grad_jvp, symbolic_zeros=True)


def conv_gemm_grad(
    x: Array, kernel: Array, strides: Sequence[int] = (1, 1), padding: Padding = "VALID"
) -> Array:
    """XLA's convolution, with derivatives that XLA:CPU also runs fast inside loops.

    Why: XLA:CPU hands a convolution to its fast (Eigen) kernel only in the canonical
    NHWC/HWIO layout, and brings the transposed convolutions that reverse-mode autodiff
    emits (input gradient: an I/O-swapped kernel; kernel gradient: batch and channels
    swapped) into that layout only in the program's top level. Inside `lax.scan`,
    `fori_loop` or `while_loop` (every attack of the `optimize` engine, a training loop
    under `scan`) they run as naive loops: 16-33x slower training steps and 1.7-3.1x
    slower ℓ2 PGD on the small CNNs here (benchmarks/conv_loops.py, 2026-12-07; at the
    top level this form ran at 0.88-1.61x and 0.95-1.01x of XLA's own). Here the input
    gradient is a convolution already in the canonical layout and the kernel gradient a
    GEMM over patches (see `conv_as_gemm`), inside loops or not. The derivative rule is a
    `custom_jvp`: forward mode, reverse mode, `vmap` and higher orders all work.

    Args:
      x: (B, H, W, C) inputs.
      kernel: (kh, kw, C, O) weights.
      strides: (sh, sw).
      padding: "SAME", "VALID" or ((top, bottom), (left, right)).
    Returns:
      (B, Ho, Wo, O), the same as `lax.conv_general_dilated` in NHWC/HWIO layout.
    """
    _check_conv_args("conv_gemm_grad", x, kernel)
    pads = conv_padding(x.shape[1:3], kernel.shape[:2], strides, padding)
    static_pads = tuple(tuple(p) for p in pads)
    return _conv_gemm_grad(x, kernel, tuple(int(s) for s in strides), static_pads)


def conv_general_dilated_gemm_grad(
    lhs: Array,
    rhs: Array,
    window_strides: Sequence[int],
    padding: Padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> Array:
    """`lax.conv_general_dilated` with `conv_gemm_grad`'s derivatives where it applies.

    For a model of your own on CPU: `flax.linen.Conv(..., conv_general_dilated=
    conv_general_dilated_gemm_grad)` keeps its parameters and values and runs its
    gradients fast inside the attack engine's loops. A 2-D convolution in NHWC/HWIO layout,
    without dilation, groups, precision or element-type options and with "SAME", "VALID" or
    non-negative explicit padding runs as `conv_gemm_grad`; any other call is passed to
    `lax.conv_general_dilated` unchanged.
    """
    plain = (
        lhs.ndim == 4
        and rhs.ndim == 4
        and dimension_numbers is not None
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
        and all(tuple(d or (1, 1)) == (1, 1) for d in (lhs_dilation, rhs_dilation))
        and feature_group_count == 1
        and batch_group_count == 1
        and precision is None
        and preferred_element_type is None
    )
    if plain:
        try:
            pads = conv_padding(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
        except ValueError:  # other padding strings, negative pads: XLA's own convolution
            plain = False
    if not plain:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type,
        )  # fmt: skip
    return conv_gemm_grad(lhs, rhs, window_strides, pads)


class Conv(nn.Module):
    """A 2-D convolution (NHWC, HWIO kernel) that runs as the backend's fastest formulation.

    Parameters are `kernel` (kh, kw, C, features) and, with `use_bias`, `bias` (features,),
    initialised like `flax.linen.Conv`'s: the same parameter tree, so checkpoints and
    PyTorch weight maps are shared. `impl` picks the formulation: "xla" (XLA's convolution),
    "gemm" (`conv_as_gemm`), "gemm_grad" (`conv_gemm_grad`: XLA's convolution, a GEMM kernel
    gradient), or "auto": on CPU the GEMM for 1x1 kernels and for outputs of at most
    `GEMM_MAX_POSITIONS` positions per image, "gemm_grad" otherwise (XLA:CPU runs the
    derivatives of its own convolution as naive loops inside `scan` or `while`: see
    `conv_gemm_grad`), and XLA's convolution on every other backend (cuDNN and the TPU
    convolution units need no help).

    `Conv(features, kernel_size, strides=1, padding="SAME")(x)`: (..., H, W, C) -> (..., Ho,
    Wo, features), any number of leading batch dimensions (or none).
    """

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Padding = "SAME"
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()
    impl: ConvImpl = "auto"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if x.ndim < 3:
            raise ValueError(f"Conv expects (..., H, W, C) inputs, got shape {x.shape}")
        lead = x.shape[:-3]  # like nn.Conv: any number of batch dimensions, or none
        x = x.reshape(-1, *x.shape[-3:])
        kh, kw = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
        pads = conv_padding(x.shape[1:3], (kh, kw), self.strides, self.padding)
        formulation = self.formulation(x.shape)
        if formulation == "gemm":
            y = conv_as_gemm(x, kernel, self.strides, pads)
        elif formulation == "gemm_grad":
            y = conv_gemm_grad(x, kernel, self.strides, pads)
        else:
            y = _xla_conv(x, kernel, tuple(self.strides), pads)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,))
        return y.reshape(*lead, *y.shape[1:])

    def formulation(self, input_shape: Sequence[int]) -> str:
        """The formulation this layer runs on inputs of `input_shape` (..., H, W, C) on the
        default backend: "xla", "gemm" or "gemm_grad" (the "auto" rule above, or `impl`)."""
        if self.impl not in CONV_IMPLS:
            raise ValueError(f"Conv impl must be one of {CONV_IMPLS}, got {self.impl!r}")
        if self.impl != "auto":
            return self.impl
        if jax.default_backend() != "cpu":
            return "xla"
        if tuple(self.kernel_size) == (1, 1):
            return "gemm"
        spatial = tuple(input_shape[-3:-1])
        pads = conv_padding(spatial, self.kernel_size, self.strides, self.padding)
        sizes = zip(spatial, pads, self.kernel_size, self.strides, strict=True)
        ho, wo = ((n + lo + hi - k) // s + 1 for n, (lo, hi), k, s in sizes)
        return "gemm" if ho * wo <= GEMM_MAX_POSITIONS else "gemm_grad"

    def uses_gemm(self, input_shape: Sequence[int]) -> bool:
        """Whether this layer runs as `conv_as_gemm` (value and derivatives) on inputs of
        `input_shape` (..., H, W, C) on the default backend."""
        return self.formulation(input_shape) == "gemm"
