"""Turn models into the pure functions the rest of jaxrobust works with.

`as_logits_fn` gives `logits_fn(x) -> (B, num_classes)`, closed over the weights, pure and
jittable; `as_features_fn` gives `features_fn(x) -> {name: array}` from the values a linen
model sows into its "intermediates" collection.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
from flax import nnx, traverse_util
from jax import Array

from jaxrobust.errors import InputError

LogitsFn = Callable[[Array], Array]
FeaturesFn = Callable[[Array], dict[str, Array]]


def _check_variables(variables: Any) -> None:
    if variables is None:
        raise InputError(
            "a linen module needs its variables: pass as_logits_fn(model, variables) with "
            "variables = {'params': ..., 'batch_stats': ...} as returned by init_model"
        )
    if not isinstance(variables, Mapping) or "params" not in variables:
        keys = list(variables) if isinstance(variables, Mapping) else type(variables).__name__
        raise InputError(
            f"variables must be a dict with a 'params' entry (and 'batch_stats' for BatchNorm "
            f"models), got {keys}; if you hold bare params, pass {{'params': params}}"
        )


def _nnx_logits_fn(model: nnx.Module, train: bool) -> LogitsFn:
    # Dropout / BatchNorm modes are static attributes: set them on a view (not on the
    # caller's module) before splitting, so they land in the graphdef.
    modes = {"deterministic": not train, "use_running_average": not train}
    if hasattr(nnx, "view"):
        model = nnx.view(model, raise_if_not_found=False, **modes)
        graphdef, state = nnx.split(model)
    else:  # older flax: copy, then set the mode on the copy
        graphdef, state = nnx.split(model)
        copy = nnx.merge(graphdef, state)
        copy.set_attributes(raise_if_not_found=False, **modes)
        graphdef, state = nnx.split(copy)

    # Snapshot the weights (new Variables, shared arrays): later in-place updates of the
    # caller's module (e.g. by nnx.Optimizer) must not change this function between calls,
    # which would also make eager and jitted results disagree.
    state = jax.tree.map(lambda a: a, state)

    def logits_fn(x: Array) -> Array:
        # A fresh module per call: any state it updates (BatchNorm statistics in train
        # mode, RNG counters) stays local, so the function is pure.
        return nnx.merge(graphdef, state, copy=True)(x)

    return logits_fn


def _linen_eval(model: nn.Module, variables: Mapping[str, Any], x: Array) -> Array:
    return model.apply(variables, x, train=False)


def _linen_train(model: nn.Module, variables: Mapping[str, Any], x: Array) -> Array:
    logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return logits


def as_logits_fn(
    model: Any, variables: Mapping[str, Any] | None = None, *, train: bool = False
) -> LogitsFn:
    """Make a pure `logits_fn(x) -> logits` from a model.

    Accepts
      (a) a `flax.linen.Module` plus its `variables` ({"params", ["batch_stats"]}), applied as
          `model.apply(variables, x, train=train)`;
      (b) a `flax.nnx.Module` (called as `module(x)`; split once here and merged inside the
          function, so the result is pure and jittable; the caller's module is not modified,
          and its weights are captured now: call `as_logits_fn` again after training it);
      (c) any other callable `logits_fn(x)`, returned unchanged.

    With `train=False` (the default, what attacks and evaluation want) BatchNorm uses its
    running statistics and dropout is off, so each example's logits do not depend on the rest
    of the batch. With `train=True` BatchNorm uses batch statistics; the updated statistics are
    discarded; an NNX module's dropout then draws the same mask on every call, since its RNG
    counters are not carried over between calls. (A linen model with active dropout would
    also need a "dropout" rng: wrap it in your own closure for that.)

    Args:
      model: linen module, NNX module, or callable.
      variables: the linen variables; must be None for (b) and (c).
      train: run in training mode (see above).
    Returns:
      `logits_fn(x: (B, ...)) -> (B, num_classes)`; for a linen model a
      `jax.tree_util.Partial` over the variables (a pytree: hand it to a jitted function
      as an argument and the weights stay inputs of the compiled program).
    Raises:
      InputError: missing/malformed variables, variables given for a non-linen model, or a
        model of an unsupported type.
    """
    if isinstance(model, nn.Module):
        _check_variables(variables)

        # A Partial is a pytree whose leaves are the variables: passed to a jitted function
        # (as `evaluate` does), the weights are program inputs instead of baked-in constants.
        apply = _linen_train if train else _linen_eval
        return jax.tree_util.Partial(functools.partial(apply, model), variables)
    if variables is not None:
        raise InputError(
            f"variables are only used with a flax.linen module, got a {type(model).__name__}; "
            "an NNX module or a plain logits function carries its own weights"
        )
    if isinstance(model, nnx.Module):
        return _nnx_logits_fn(model, train)
    if callable(model):
        return model
    raise InputError(
        f"cannot make a logits function from a {type(model).__name__}: expected a flax.linen "
        "Module with its variables, a flax.nnx Module, or a callable logits_fn(x) -> logits"
    )


def as_features_fn(
    model: nn.Module,
    variables: Mapping[str, Any],
    *,
    capture_intermediates: bool = False,
) -> FeaturesFn:
    """Make `features_fn(x) -> {name: array}` from a linen model's sown intermediates.

    Runs `model.apply(variables, x, train=False, mutable=["intermediates"])` and flattens the
    collection: a value sown as `self.sow("intermediates", "features", h)` at the top level
    becomes key "features" (B, D); one sown by a submodule becomes "submodule/name". A value
    sown more than once in a call becomes "name/0", "name/1", ... The logits are added as
    "logits" (B, num_classes).

    Args:
      model: a linen module.
      variables: its variables ({"params", ["batch_stats"]}).
      capture_intermediates: also return every submodule's output (flax's
        `capture_intermediates`), keyed by module path, e.g. "conv1" — useful for models that
        sow nothing.
    Returns:
      `features_fn(x: (B, ...)) -> dict[str, Array]`, pure and jittable.
    """
    if not isinstance(model, nn.Module):
        raise InputError(
            f"as_features_fn needs a flax.linen Module (it reads sown intermediates), got a "
            f"{type(model).__name__}"
        )
    _check_variables(variables)

    def features_fn(x: Array) -> dict[str, Array]:
        logits, state = model.apply(
            variables,
            x,
            train=False,
            mutable=["intermediates"],
            capture_intermediates=capture_intermediates,
        )
        flat = traverse_util.flatten_dict(dict(state.get("intermediates", {})), sep="/")
        out: dict[str, Array] = {}
        for path, values in flat.items():
            # capture_intermediates stores a module's output under "<module path>/__call__".
            key = path.removesuffix("/__call__") or "__call__"
            if key == "__call__":
                continue  # the top-level output: that is the logits, added below
            values = tuple(values) if isinstance(values, tuple | list) else (values,)
            if len(values) == 1:
                out[key] = values[0]
            else:
                out.update({f"{key}/{i}": v for i, v in enumerate(values)})
        out["logits"] = logits
        return out

    return features_fn
