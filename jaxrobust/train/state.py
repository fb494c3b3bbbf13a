"""`TrainState`: everything a training run carries from step to step, as one pytree."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxrobust.errors import ConfigError
from jaxrobust.models import as_features_fn, as_logits_fn, init_model

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class _ApplyEval:
    """`apply_fn(variables, x, train=False)`; equal for equal `apply_fn`s."""

    apply_fn: Callable

    def __call__(self, variables: Any, x: Array) -> Array:
        return self.apply_fn(variables, x, train=False)


@struct.dataclass
class TrainState:
    """Parameters, BatchNorm statistics, optimizer state, step counter and PRNG key.

    `rng` holds raw key data (uint32), so checkpoints are plain arrays; the key for step t
    is `fold_in(key, t)`, which makes a resumed run draw the same randomness as an
    uninterrupted one. `apply_fn` and `tx` are static (not part of the pytree).
    """

    step: Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: Array
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    @classmethod
    def create(
        cls,
        model: nn.Module,
        tx: optax.GradientTransformation,
        key: Array,
        input_shape: tuple[int, ...],
    ) -> TrainState:
        """Initialise a model for inputs of `input_shape` (no batch axis)."""
        init_key, rng = jax.random.split(key)
        variables = init_model(model, init_key, input_shape)
        params = variables["params"]
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
            rng=jax.random.key_data(rng),
            apply_fn=model.apply,
            tx=tx,
        )

    @property
    def has_batch_stats(self) -> bool:
        return bool(jax.tree.leaves(self.batch_stats))

    def variables(self, params: Any | None = None) -> dict[str, Any]:
        """The Flax variables dict for `params` (default: the state's own)."""
        v = {"params": self.params if params is None else params}
        if self.has_batch_stats:
            v["batch_stats"] = self.batch_stats
        return v

    def logits_fn(self, params: Any | None = None) -> Callable[[Array], Array]:
        """The model in inference mode (BatchNorm uses running statistics): x -> logits.

        A `jax.tree_util.Partial` over the variables (`as_logits_fn` of the state's linen
        module): passed to a jitted function as an argument (as `evaluate` does), the weights
        are inputs of the compiled program, and its static part compares equal for every
        state of the same architecture, so a new checkpoint (or a second call) reuses the
        compiled program."""
        variables = self.variables(params)
        module = getattr(self.apply_fn, "__self__", None)
        if isinstance(module, nn.Module):  # `apply_fn` is `module.apply`, as `create` sets it
            return as_logits_fn(module, variables)
        return jax.tree_util.Partial(_ApplyEval(self.apply_fn), variables)

    def features_fn(self, params: Any | None = None) -> Callable[[Array], dict[str, Array]]:
        """The model's sown representations in inference mode: x -> {name: array}
        (`as_features_fn` of the state's linen module; "features" is the penultimate layer).

        Raises:
          ConfigError: the state's `apply_fn` is not a linen module's `apply` (a state built
            around a plain function sows nothing to read).
        """
        module = getattr(self.apply_fn, "__self__", None)
        if not isinstance(module, nn.Module):
            raise ConfigError(
                "this state's apply_fn is not a flax.linen Module's apply, so it has no sown "
                "representations to read (create the state with TrainState.create(model, ...))"
            )
        return as_features_fn(module, self.variables(params))

    def train_forward(self, params: Any, x: Array) -> tuple[Array, Any]:
        """Training-mode forward pass: (logits, updated batch_stats)."""
        if not self.has_batch_stats:
            return self.apply_fn({"params": params}, x, train=True), self.batch_stats
        logits, updates = self.apply_fn(
            self.variables(params), x, train=True, mutable=["batch_stats"]
        )
        return logits, updates["batch_stats"]

    def step_key(self) -> Array:
        """The PRNG key of the current step."""
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)

    def apply_gradients(self, grads: Any, batch_stats: Any) -> TrainState:
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        # flax's struct.dataclass adds .replace, which its stubs do not declare.
        return self.replace(  # type: ignore[attr-defined]
            step=self.step + 1,
            params=optax.apply_updates(self.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
        )
