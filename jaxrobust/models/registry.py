"""Model registry: build a model by name, and initialise its variables."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

from jaxrobust.errors import ConfigError
from jaxrobust.models.layers import CONV_IMPLS, Stat, check_stats
from jaxrobust.models.madry_cnn import BNCNN, MadryCNN, SmallCNN
from jaxrobust.models.mlp import MLP
from jaxrobust.models.preact_resnet import PreActResNet18
from jaxrobust.models.resnet import ResNet18, ResNet50
from jaxrobust.models.wide_resnet import WideResNet

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "small_cnn": SmallCNN,
    "madry_cnn": MadryCNN,
    "bn_cnn": BNCNN,
    "preact_resnet18": PreActResNet18,
    "resnet18": ResNet18,
    "resnet50": ResNet50,
    "wide_resnet": WideResNet,
}

# Set by create_model itself (or by linen), so never accepted through **kwargs.
_RESERVED = {"parent", "name", "num_classes", "mean", "std"}


def _check_wide_resnet(kwargs: dict[str, Any]) -> None:
    depth, width = kwargs.get("depth", 28), kwargs.get("width", 10)
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ConfigError(
            f"wide_resnet depth must be 6n + 4 (10, 16, 22, 28, 34, ...), got {depth!r}"
        )
    if not isinstance(width, int) or width < 1:
        raise ConfigError(f"wide_resnet width must be a positive integer, got {width!r}")


_VALIDATORS: dict[str, Callable[[dict[str, Any]], None]] = {"wide_resnet": _check_wide_resnet}


def model_kwargs(name: str) -> list[str]:
    """Model-specific keywords `create_model(name, ...)` accepts, besides num_classes/mean/std."""
    cls = _lookup(name)
    return sorted(f.name for f in dataclasses.fields(cls) if f.init and f.name not in _RESERVED)


def _lookup(name: str) -> type[nn.Module]:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def _freeze(v: Any) -> Any:
    # Lists from configs become tuples: linen module attributes should be hashable.
    return tuple(v) if isinstance(v, list) else v


def create_model(
    name: str,
    num_classes: int,
    *,
    mean: Stat = 0.0,
    std: Stat = 1.0,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered linen model.

    Args:
      name: one of `MODELS` ("mlp", "small_cnn", "madry_cnn", "bn_cnn", "preact_resnet18",
        "resnet18", "resnet50", "wide_resnet").
      num_classes: size of the logits.
      mean: in-model input normalisation mean, a number or one value per channel.
      std: in-model input normalisation std, a number or one value per channel.
      **kwargs: model-specific fields, e.g. `hidden=(128,)` for "mlp", `depth=28, width=10,
        dropout=0.0` for "wide_resnet"; see `model_kwargs(name)`.
    Returns:
      an unbound `flax.linen.Module` with `__call__(x, train=False) -> (B, num_classes)`.
    Raises:
      ConfigError: unknown name, unknown keyword, or a malformed value.
    """
    cls = _lookup(name)
    allowed = model_kwargs(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown argument(s) {', '.join(map(repr, unknown))} for model {name!r}; "
            f"it accepts: {', '.join(allowed) or '(none)'}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    check_stats(mean, std)
    if kwargs.get("conv_impl", "auto") not in CONV_IMPLS:
        raise ConfigError(
            f"conv_impl must be one of {', '.join(map(repr, CONV_IMPLS))}, "
            f"got {kwargs['conv_impl']!r}"
        )
    kwargs = {k: _freeze(v) for k, v in kwargs.items()}
    if name in _VALIDATORS:
        _VALIDATORS[name](kwargs)
    return cls(num_classes=num_classes, mean=_freeze(mean), std=_freeze(std), **kwargs)


def init_model(model: nn.Module, key: Array, input_shape: Sequence[int]) -> dict[str, Any]:
    """Initialise a linen model on a dummy batch of one.

    Args:
      model: a linen module with `__call__(x, train=False)`.
      key: PRNG key (used for "params"; also given as "dropout" in case a model asks).
      input_shape: the shape of one example, without the batch axis, e.g. (32, 32, 3).
    Returns:
      {"params": ...} plus {"batch_stats": ...} when the model has BatchNorm; sown
      intermediates from the init pass are dropped.
    """
    shape = tuple(int(d) for d in input_shape)
    x = jnp.zeros((1, *shape), jnp.float32)

    def init(k: Array, x: Array) -> Mapping[str, Any]:
        return model.init({"params": k, "dropout": k}, x, train=False)

    # One compiled init beats op-by-op dispatch for the larger ResNets.
    variables = jax.jit(init)(key, x)
    return {k: variables[k] for k in ("params", "batch_stats") if k in variables}
