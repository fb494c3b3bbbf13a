"""Turn models into the pure functions the rest of jaxrobust works with.

`as_logits_fn` gives `logits_fn(x) -> (B, num_classes)` from a Flax linen module and its
variables, a Flax NNX module, an Equinox module, a Haiku-style `apply(params, x)` function or a
plain function; `as_features_fn` gives `features_fn(x) -> {name: array}` from the values a
linen model sows into its "intermediates" collection.

Every function made here from a model with weights is a `jax.tree_util.Partial` whose pytree
leaves are the weights and whose static part (the function called) compares equal, and hashes
equally, for models of equal architecture. Passed as an argument to a jitted function, the
weights are inputs of the compiled program, and a new checkpoint of the same architecture (or a
second `as_logits_fn` call on the same one) reuses the compiled program instead of compiling
it again.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any, cast

import flax.linen as nn
import jax
import numpy as np
from flax import nnx, traverse_util
from jax import Array

from jaxrobust.errors import InputError

LogitsFn = Callable[[Array], Array]
FeaturesFn = Callable[[Array], dict[str, Array]]

# Call arguments that switch a model between training and inference mode, and the value each
# takes in training mode (`deterministic` is the inverse of `train`, as in flax's Dropout).
_MODE_ARGUMENTS = {"train": True, "training": True, "is_training": True, "deterministic": False}


# --------------------------------------------------------------- static parts of the pytrees
# Each is a frozen dataclass, so two made from equal modules compare (and hash) equal: the
# treedef of the Partial around it is then equal too, which is what jit's cache compares.


@dataclasses.dataclass(frozen=True)
class _LinenApply:
    """`module.apply(variables, x, **mode)`, discarding updated collections in train mode."""

    module: nn.Module
    mode: tuple[tuple[str, bool], ...] = ()
    mutable: tuple[str, ...] = ()

    def __call__(self, variables: Mapping[str, Any], x: Array) -> Array:
        mode: dict[str, Any] = dict(self.mode)
        if self.mutable:
            logits, _ = self.module.apply(variables, x, mutable=list(self.mutable), **mode)
            return logits
        return cast(Array, self.module.apply(variables, x, **mode))  # not mutable: the logits


@dataclasses.dataclass(frozen=True)
class _LinenFeatures:
    """The sown intermediates (and logits) of `module.apply(variables, x, **mode)`."""

    module: nn.Module
    mode: tuple[tuple[str, bool], ...] = ()
    capture_intermediates: bool = False

    def __call__(self, variables: Mapping[str, Any], x: Array) -> dict[str, Array]:
        mode: dict[str, Any] = dict(self.mode)
        logits, state = self.module.apply(
            variables,
            x,
            mutable=["intermediates"],
            capture_intermediates=self.capture_intermediates,
            **mode,
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


@dataclasses.dataclass(frozen=True)
class _NNXApply:
    """`nnx.merge(graphdef, state)(x)` on a fresh module per call (so the function is pure:
    BatchNorm statistics updated in train mode and RNG counters stay local)."""

    graphdef: Any

    def __call__(self, state: Any, x: Array) -> Array:
        return nnx.merge(self.graphdef, state, copy=True)(x)


@dataclasses.dataclass(frozen=True)
class _PytreeApply:
    """A callable pytree (an Equinox module) rebuilt from its array leaves and called.

    `static` holds the non-array leaves (functions, Python numbers) in place, None where the
    arrays go; the arrays are the Partial's argument."""

    treedef: Any
    static: tuple[Any, ...]

    def __call__(self, arrays: list[Array], x: Array) -> Array:
        it = iter(arrays)
        leaves = [next(it) if s is _ARRAY else s for s in self.static]
        return jax.tree.unflatten(self.treedef, leaves)(x)


@dataclasses.dataclass(frozen=True)
class _BoundMethod:
    """A bound method that compares its object by value (Python compares `obj.method` by the
    object's identity, so the `apply` of two equal modules would differ)."""

    obj: Any
    func: Callable

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(self.obj, *args, **kwargs)


@dataclasses.dataclass(frozen=True)
class _PerExample:
    """A per-example model `f(*weights, x_i) -> (C,)` vmapped over the batch axis of x."""

    func: Callable

    def __call__(self, *args: Any) -> Array:
        *weights, x = args
        if np.ndim(x) < 1:
            raise InputError(f"a batch of inputs needs a leading batch axis, got shape {x.shape}")
        try:
            out = jax.vmap(lambda xi: self.func(*weights, xi))(x)
        except InputError:
            raise
        except (TypeError, ValueError) as e:
            raise InputError(
                f"calling the per-example model on one example of shape {tuple(x.shape[1:])} "
                f"failed ({type(e).__name__}: {e}); if it takes whole batches, adapt it with "
                "as_logits_fn(model, batched=True)"
            ) from e
        if out.ndim != 2:
            raise InputError(
                f"the per-example model returned shape {tuple(out.shape[1:])} for one example, "
                "expected (num_classes,); if it takes whole batches, adapt it with "
                "as_logits_fn(model, batched=True)"
            )
        return out


class _ArrayMarker:
    def __repr__(self) -> str:
        return "<array>"


_ARRAY = _ArrayMarker()


@dataclasses.dataclass(frozen=True, eq=False)
class _ByIdentity:
    """Stand-in for a static part that cannot be hashed (a module with a list or array field):
    it works, but equal architectures no longer share compiled programs."""

    func: Callable

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)


def _hashable(func: Callable, what: str) -> Callable:
    try:
        hash(func)
    except TypeError as e:
        warnings.warn(
            f"{what} cannot be hashed ({e}): a jitted function that takes the adapted model "
            "as an argument compiles again for every as_logits_fn call; make its fields "
            "hashable (tuples instead of lists, no arrays) to reuse compiled programs",
            stacklevel=3,
        )
        return _ByIdentity(func)
    return func


def _stable(fn: Callable) -> Callable:
    """`fn`, with a bound method replaced by one that compares its object by value."""
    if inspect.ismethod(fn):
        try:
            hash(fn.__self__)
        except TypeError:
            return fn
        return _BoundMethod(fn.__self__, fn.__func__)
    return fn


# ------------------------------------------------------------------------------ detection


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


def _linen_mode(module: nn.Module, train: bool) -> tuple[tuple[str, bool], ...]:
    """The keyword arguments that put `module.__call__` in training or inference mode.

    The first of `train`, `training`, `is_training` (set to `train`) or `deterministic` (set
    to `not train`) that `__call__` accepts; none for a module without such an argument (it
    then runs as it is, e.g. the README's `Net`)."""
    try:
        params = inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):
        return ()
    for name, value_in_training in _MODE_ARGUMENTS.items():
        p = params.get(name)
        if p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            return ((name, train if value_in_training else not train),)
    return ()


def _is_equinox_module(model: Any) -> bool:
    eqx = sys.modules.get("equinox")  # no dependency: an Equinox module means it is imported
    return eqx is not None and isinstance(model, eqx.Module)


def _is_pytree_callable(model: Any) -> bool:
    """A callable registered as a pytree with leaves of its own (e.g. a `Partial`)."""
    leaves = jax.tree.leaves(model)
    return not (len(leaves) == 1 and leaves[0] is model)


def _is_hashable(obj: Any) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array | np.ndarray | np.generic)


def _linen_logits_fn(model: nn.Module, variables: Mapping[str, Any], train: bool) -> tuple:
    _check_variables(variables)
    # In train mode BatchNorm updates its statistics: mark every collection but the
    # parameters mutable, and drop the updates (the function stays pure).
    mutable = tuple(sorted(k for k in variables if k != "params")) if train else ()
    apply = _LinenApply(model, _linen_mode(model, train), mutable)
    return _hashable(apply, f"the linen module {type(model).__name__}"), (variables,)


def _nnx_logits_fn(model: nnx.Module, train: bool) -> tuple:
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
    return _hashable(_NNXApply(graphdef), f"the NNX module {type(model).__name__}"), (state,)


def _pytree_logits_fn(model: Any) -> tuple:
    leaves, treedef = jax.tree.flatten(model)
    arrays = [leaf for leaf in leaves if _is_array(leaf)]
    static = tuple(_ARRAY if _is_array(leaf) else leaf for leaf in leaves)
    apply = _PytreeApply(treedef, static)
    return _hashable(apply, f"the module {type(model).__name__}"), (arrays,)


# ----------------------------------------------------------------------------------- public


def as_logits_fn(
    model: Any,
    variables: Any = None,
    *,
    train: bool = False,
    batched: bool | None = None,
) -> LogitsFn:
    """Make a pure `logits_fn(x) -> logits` from a model.

    Accepts
      (a) a `flax.linen.Module` plus its `variables` ({"params", ["batch_stats"]}), applied as
          `model.apply(variables, x, train=train)`; a module whose `__call__` takes
          `training` / `is_training` / `deterministic` instead gets that, one that takes none
          of them is called as `model.apply(variables, x)`;
      (b) a `flax.nnx.Module` (called as `module(x)`; split once here and merged inside the
          function, so the result is pure and jittable; the caller's module is not modified,
          and its weights are captured now: call `as_logits_fn` again after training it);
      (c) an Equinox module (called as `module(x_i)` on one example at a time, vmapped over
          the batch, as Equinox layers expect; declare `batched=True` for a module that
          takes whole batches);
      (d) a Haiku-style `apply(params, x)` function plus its `params` as `variables`
          (`hk.without_apply_rng(hk.transform(f)).apply` is one);
      (e) any other callable `logits_fn(x)`, wrapped as `jax.tree_util.Partial(logits_fn)`
          so that it too can be an argument of a jitted function (vmapped over the batch
          with `batched=False`); one that is a pytree itself is returned unchanged.

    With `train=False` (the default, what attacks and evaluation want) BatchNorm uses its
    running statistics and dropout is off, so each example's logits do not depend on the rest
    of the batch. With `train=True` BatchNorm uses batch statistics; the updated statistics are
    discarded; an NNX module's dropout then draws the same mask on every call, since its RNG
    counters are not carried over between calls. (A linen model with active dropout would
    also need a "dropout" rng: wrap it in your own closure for that.)

    The result is a `jax.tree_util.Partial` (but for the cases above): its leaves are the
    weights and its static part compares equal for equal architectures, so a
    jitted function that takes it as an argument compiles once and serves every checkpoint:

        attack = jax.jit(lambda f, x, y, key: jr.pgd(f, x, y, key, threat=jr.linf(0.1)))
        for variables in checkpoints:
            attack(jr.as_logits_fn(model, variables), x, y, key)  # compiled on the first only

    (A lambda closing over the variables is a new function each time and bakes the weights
    into the program as constants: it compiles for every checkpoint.)

    Args:
      model: linen module, NNX module, Equinox module, Haiku-style apply function, or a
        logits function.
      variables: the linen variables for (a), the params for (d); None otherwise.
      train: run in training mode (see above).
      batched: whether `model` takes a batch (B, ...) -> (B, C) (True) or one example
        (...) -> (C,) (False, vmapped here). Default: False for Equinox modules, True for
        everything else.
    Returns:
      `logits_fn(x: (B, ...)) -> (B, num_classes)`.
    Raises:
      InputError: missing/malformed linen variables, variables given for an NNX module or an
        Equinox module, a model that is not callable; when the function runs, a per-example
        model that fails on one example or returns other than (num_classes,).
    """
    if isinstance(model, jax.tree_util.Partial) and variables is None and batched is None:
        return model  # already adapted (or the user's own pytree model): keep its structure
    if isinstance(model, nn.Module):
        func, args = _linen_logits_fn(model, variables, train)
    elif isinstance(model, nnx.Module) or _is_equinox_module(model):
        if variables is not None:
            raise InputError(
                f"variables are only used with a flax.linen module or a Haiku-style apply "
                f"function, got a {type(model).__name__}: an NNX or Equinox module carries "
                "its own weights"
            )
        if isinstance(model, nnx.Module):
            func, args = _nnx_logits_fn(model, train)
        else:
            func, args = _pytree_logits_fn(model)
            batched = False if batched is None else batched
    elif callable(model):
        plain = variables is None and batched in (None, True)
        if plain and _is_pytree_callable(model):
            return model  # it carries its weights as pytree leaves already
        if plain and not _is_hashable(model):
            return model  # cannot be static data: usable under jit only by closing over it
        func = _hashable(_stable(model), f"the function {getattr(model, '__name__', model)!r}")
        args = () if variables is None else (variables,)
    else:
        raise InputError(
            f"cannot make a logits function from a {type(model).__name__}: expected a flax.linen "
            "Module with its variables, a flax.nnx Module, an Equinox Module, a Haiku-style "
            "apply(params, x) function with its params, or a callable logits_fn(x) -> logits"
        )
    if batched is False:
        func = _PerExample(func)
    return jax.tree_util.Partial(func, *args)


def as_features_fn(
    model: nn.Module,
    variables: Mapping[str, Any],
    *,
    capture_intermediates: bool = False,
) -> FeaturesFn:
    """Make `features_fn(x) -> {name: array}` from a linen model's sown intermediates.

    Runs `model.apply(variables, x, train=False, mutable=["intermediates"])` (without
    `train` for a module that takes no such argument, see `as_logits_fn`) and flattens the
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
      `features_fn(x: (B, ...)) -> dict[str, Array]`, pure and jittable: a
      `jax.tree_util.Partial` over the variables whose static part compares equal for equal
      architectures, like `as_logits_fn`'s.
    """
    if not isinstance(model, nn.Module):
        raise InputError(
            f"as_features_fn needs a flax.linen Module (it reads sown intermediates), got a "
            f"{type(model).__name__}"
        )
    _check_variables(variables)
    func = _LinenFeatures(model, _linen_mode(model, False), capture_intermediates)
    return jax.tree_util.Partial(
        _hashable(func, f"the linen module {type(model).__name__}"), variables
    )
