"""Seeing through masked gradients: straight-through models (BPDA), transfer attacks and
distilled surrogates.

A defence that puts a non-differentiable operation in front of (or inside) a model — input
quantisation `round(x·255)/255`, a `stop_gradient`, a `sign` — gives gradient attacks a zero
gradient, so they fail although the model is no more robust. BPDA (Backward Pass
Differentiable Approximation, Athalye, Carlini & Wagner 2018) attacks the same forward
pass with the masking operations' gradient replaced by the identity:

  `straight_through(logits_fn)`  same forward values, bit for bit; the gradient of every
                                 masking operation is the identity.
  `bpda(attack)`                 an `AttackFn` (see `jaxrobust.attacks.cascade`): `attack`
                                 on `straight_through(target)`, judged on the target.
  `transfer(attack, surrogate)`  an `AttackFn`: `attack` on a fixed surrogate model, success
                                 and value recomputed on the target.
  `distill(target, x, key)`      a differentiable surrogate trained on the target's outputs,
                                 for what `straight_through` cannot see (host callbacks).
  `masking_operations(f, x)`     what `straight_through` would replace in `f(x)`.

How `straight_through` works: the model is traced to a jaxpr (`jax.make_jaxpr`) at the
shapes it is called with and the jaxpr is evaluated again with each masking operation
replaced by a `jax.custom_jvp` whose forward pass binds the original primitive (same
values) and whose tangent is the input's tangent. What it sees through:

  - the primitives `stop_gradient`, `round`, `floor`, `ceil`, `sign` on real floating
    inputs (so `jnp.round`, `jnp.rint`, `jnp.floor`, `jnp.ceil`, `jnp.trunc`, `jnp.fix`,
    `jnp.sign`, `lax.stop_gradient`, `jnp.round(x, decimals)`, ...), wherever they occur: at
    top level, inside nested `jax.jit` / Flax calls / `jax.checkpoint` (inlined, so the
    straight-through model does not rematerialise), and inside `lax.scan`, `lax.cond`,
    `lax.while_loop` / `fori_loop` bodies (rebuilt);
  - a float → integer → float cast pair (`(x * 255).astype(jnp.uint8).astype(jnp.float32)`)
    when the integer value goes straight back to floats (also across `jax.jit` calls); its
    gradient becomes the identity with respect to the float that was cast. Integer
    arithmetic between the two casts hides the pair.

Not masking: the `stop_gradient` that JAX's own code applies (`log_softmax`, `logsumexp`
subtract a stopped maximum for stability; the result does not depend on it), recognised by
its caller in the equation's source traceback, and operations whose result is unused.

What it cannot see through (the gradient stays what JAX computes):

  - host callbacks (`jax.pure_callback`, `io_callback`): they have no gradient at all
    (`jax.grad` raises); `distill` a surrogate and attack it with `transfer`;
  - functions with their own derivative rule (`jax.custom_jvp` / `jax.custom_vjp`): their
    rule is respected, also when it returns zero (an "opaque" defence): `distill` again;
  - randomness (a model taking a key): take expectation over transformation first
    (`jaxrobust.attacks.expectation_over_transformation`), then `straight_through`;
  - gradients that vanish for other reasons: saturated softmax or clipping, thresholds
    built from comparisons (`x > 0.5`), lookup tables indexed by quantised values, models
    that are flat (genuinely robust, or shattered beyond a straight-through estimate).
    The identity is also only an approximation: a quantiser much coarser than ε leaves
    the straight-through gradient pointing where the model's decision does not change.

Every masking primitive is replaced, wherever it is: a smooth function that uses `sign` or
`round` as a factor (`sign(x) * log1p(abs(x))`) gets the straight-through term as well,
so its gradient changes; `masking_operations` lists what will be replaced.

A model with none of these operations is unchanged: its call traces the jaxpr, finds
nothing to replace and calls the model itself, so values and gradients are those of the
original model, bit for bit. Only the parts of a masked model that contain a masking
operation are re-evaluated; every other call (including custom-derivative functions) is
bound as it was traced. Each call of a straight-through model traces the model once more
(at trace time of the caller's `jax.jit`: no cost in the compiled program).

A model given as a `jax.tree_util.Partial` stays one: `straight_through(Partial(f, w))`
is a Partial whose leaves are `w`, so a jitted function that takes it as an argument keeps
the weights as inputs and compiles once for all weights of the architecture.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import flax.linen as nn
import jax
import jax.extend as jex
import jax.numpy as jnp
import optax

from jaxrobust.errors import InputError
from jaxrobust.losses import Loss, cross_entropy
from jaxrobust.optimize import Result
from jaxrobust.threat import ThreatModel

Array = jax.Array
LogitsFn = Callable[[Array], Array]
AttackFn = Callable[[LogitsFn, Array, Array, Array, ThreatModel], Result]

#: Elementwise primitives whose gradient is zero almost everywhere while their value tracks
#: their input: straight-through replaces their gradient by the identity.
MASKING_PRIMITIVES: frozenset[str] = frozenset({"stop_gradient", "round", "floor", "ceil", "sign"})

_AGREEMENT_EXAMPLES = 1024
_JAX_SRC = os.path.join(os.path.dirname(jax.__file__), "_src", "")

# Calls whose body is evaluated in place (inlined) when it contains a masking operation.
_INLINED = frozenset({"jit", "pjit", "closed_call", "core_call", "remat", "remat2", "checkpoint"})
# Primitives with their own derivative rules: bound as traced, never looked into.
_OPAQUE = frozenset({"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})
# Loops and branches: their bodies are rebuilt with the masking operations replaced.
_REBUILT = {"scan": ("jaxpr",), "while": ("cond_jaxpr", "body_jaxpr"), "cond": ("branches",)}


# ----------------------------------------------------------------------------- public API


def straight_through(logits_fn: Callable) -> jax.tree_util.Partial:
    """The model with the gradient of its masking operations replaced by the identity.

    Args:
      logits_fn: the model, x (B, ...) -> logits (B, C) (any positional arguments work); a
        plain callable or a `jax.tree_util.Partial` carrying its weights.

    Returns:
      a `jax.tree_util.Partial` computing exactly `logits_fn`'s values, whose gradient
      treats `stop_gradient`, `round`, `floor`, `ceil`, `sign` and float→int→float casts as
      the identity (see the module docstring for what it cannot see through). For a
      Partial input its leaves are the input's leaves (the weights stay program inputs
      under `jax.jit`); equal inputs give equal (same tree structure) outputs. Jittable
      and vmappable.

    Raises:
      InputError: `logits_fn` is not callable.
    """
    if not callable(logits_fn):
        raise InputError(
            f"straight_through needs a model logits_fn(x) -> logits, got {type(logits_fn).__name__}"
        )
    if isinstance(logits_fn, jax.tree_util.Partial):
        return jax.tree_util.Partial(_straight_through_call, logits_fn)
    return jax.tree_util.Partial(_StaticModel(logits_fn))


def transfer(attack: AttackFn, surrogate: LogitsFn, *, loss: Loss = cross_entropy) -> AttackFn:
    """An attack that optimises on `surrogate` and is judged on the model under attack.

    Args:
      attack: `attack(logits_fn, x, y, key, threat) -> Result`, e.g.
        `lambda f, x, y, k, t: jr.pgd(f, x, y, k, threat=t, steps=50)`.
      surrogate: a differentiable model of the same inputs and classes.
      loss: the per-example loss reported as `value` on the target.

    Returns:
      `attack_fn(target_fn, x, y, key, threat) -> Result`: `x_adv` and `delta` come from
      the attack on the surrogate; `success` (B,) is `argmax target_fn(x_adv) != y` and
      `value` (B,) is `loss(target_fn(x_adv), y)`, so an example counts as broken only if
      the target itself misclassifies it. Untargeted. Jittable and vmappable.
    """
    return lambda target_fn, x, y, key, threat: judge_on(
        target_fn, attack(surrogate, x, y, key, threat), y, loss=loss
    )


def bpda(attack: AttackFn, *, loss: Loss = cross_entropy) -> AttackFn:
    """BPDA: `attack` run on `straight_through(target_fn)`, judged on `target_fn`.

    Returns `attack_fn(target_fn, x, y, key, threat) -> Result` (the cascade's `AttackFn`
    of `jaxrobust.attacks.cascade`); the surrogate is built from the target at call time,
    so a target passed as a `jax.tree_util.Partial` keeps its weights as program inputs.
    Success and value are recomputed on the target (see `transfer`).
    """
    return lambda target_fn, x, y, key, threat: judge_on(
        target_fn, attack(straight_through(target_fn), x, y, key, threat), y, loss=loss
    )


def judge_on(
    target_fn: LogitsFn, result: Result, y: Array, *, loss: Loss = cross_entropy
) -> Result:
    """`result` with `success` = target misclassifies x_adv and `value` = loss on the target."""
    logits = target_fn(result.x_adv)
    return result._replace(value=loss(logits, y), success=jnp.argmax(logits, axis=-1) != y)


def masking_operations(logits_fn: Callable, *args: Any) -> dict[str, int]:
    """Count the masking operations `straight_through` would replace in `logits_fn(*args)`.

    `args` may be arrays or `jax.ShapeDtypeStruct`s. Returns {primitive name: count} over
    the whole program (nested calls and loop bodies included, functions with their own
    derivative rule excluded), with `"convert_element_type"` for float→int casts (a cast
    pair's first half) and `"callback"` for host callbacks whose results the model uses
    (no gradient at all: see `distill`). Empty for an ordinary network (Dense, Conv,
    BatchNorm, ReLU, softmax: the `stop_gradient`s that JAX's own `log_softmax` and
    `logsumexp` apply to their stabilising shift are not masking). Useful for deciding
    whether BPDA applies to a model before running it.
    """
    closed = jax.make_jaxpr(lambda *a: logits_fn(*a))(*args)
    counts: dict[str, int] = {}
    _count(closed.jaxpr, counts)
    return counts


class Distilled(NamedTuple):
    """A surrogate trained to imitate a model: `logits_fn` (a `jax.tree_util.Partial` over
    its weights) and `agreement`, the fraction of inputs on which its top-1 class equals
    the model's, measured after training on the first (up to) 1024 distillation inputs,
    clean, and as many perturbed inside the threat model (so over up to 2048 points)."""

    logits_fn: jax.tree_util.Partial
    agreement: float


def distill(
    target_fn: LogitsFn,
    x: Any,
    key: Array,
    *,
    threat: ThreatModel | None = None,
    model: nn.Module | None = None,
    steps: int = 500,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
) -> Distilled:
    """Train a differentiable surrogate on the model's outputs (the generic BPDA fallback).

    Only forward calls of `target_fn` are used, so this works where `straight_through`
    cannot see: host callbacks, functions whose custom derivative is zero, anything with
    no useful gradient. Each step draws `batch_size` inputs from `x`, perturbs half of them
    uniformly inside `threat`'s ball (when given: the region the attack will search), and
    minimises the KL divergence from the target's softmax to the surrogate's. Attack the
    surrogate with `transfer(attack, distilled.logits_fn)`: success still counts on the
    target only. The transfer attack is only as strong as the imitation: read `agreement`,
    and expect it to be weaker than a white-box attack on a differentiable model.

    Args:
      target_fn: the model, x (B, ...) -> logits (B, C); called inside `jax.jit` (a host
        callback is fine).
      x: (N, ...) unlabelled inputs from the data distribution (labels are the target's).
      key: PRNG key for the surrogate's initialisation, batches and perturbations.
      threat: optional threat model whose ball the perturbed half is drawn from.
      model: a Flax linen module taking (x, train=False) -> logits; default
        `jaxrobust.models.MLP(hidden=(256, 256))` with the target's number of classes.
      steps: Adam steps on the distillation loss.
      batch_size: examples per distillation step.
      learning_rate: Adam's learning rate.

    Returns:
      `Distilled(logits_fn, agreement)`.
    """
    from jaxrobust.models import MLP, as_logits_fn

    x = jnp.asarray(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise InputError(f"distill needs a batch of inputs (N, ...), got shape {x.shape}")
    if steps < 1 or batch_size < 1:
        raise InputError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    num_classes = jax.eval_shape(target_fn, x[:1]).shape[-1]
    model = MLP(hidden=(256, 256), num_classes=num_classes) if model is None else model
    k_init, k_train = jax.random.split(key)
    variables = model.init(k_init, x[:1])
    optimizer = optax.adam(learning_rate)
    carried = target_fn if isinstance(target_fn, jax.tree_util.Partial) else None
    target = (lambda m: m) if carried is not None else (lambda _: target_fn)

    def ball(k, xb):
        """Uniform points of the threat model's ball around xb (xb itself without one)."""
        return xb if threat is None else threat.apply(xb, threat.init(k, xb))

    def perturb(k, xb):
        """Every other example moved to a random point of the ball."""
        perturbed = ball(k, xb)
        odd = (jnp.arange(xb.shape[0]) % 2 == 1).reshape((-1,) + (1,) * (xb.ndim - 1))
        return jnp.where(odd, perturbed, xb)

    def loss_fn(v, xb, teacher):
        student = jax.nn.log_softmax(model.apply(v, xb, train=False))
        return jnp.mean(jnp.sum(jnp.exp(teacher) * (teacher - student), axis=-1))

    # The data and a carried target are arguments, not constants of the programs.
    @jax.jit
    def step(v, opt_state, k, m, data):
        k_idx, k_ball = jax.random.split(k)
        xb = perturb(k_ball, data[jax.random.randint(k_idx, (batch_size,), 0, data.shape[0])])
        teacher = jax.nn.log_softmax(target(m)(xb))  # a constant of the student's loss
        grads = jax.grad(loss_fn)(v, xb, teacher)
        updates, opt_state = optimizer.update(grads, opt_state, v)
        return optax.apply_updates(v, updates), opt_state

    @jax.jit
    def agree(v, k, m, xb):
        xb = jnp.concatenate([xb, ball(k, xb)]) if threat is not None else xb
        student = model.apply(v, xb, train=False)
        return jnp.mean(jnp.argmax(student, -1) == jnp.argmax(target(m)(xb), -1))

    opt_state = optimizer.init(variables)
    for i in range(steps):
        k = jax.random.fold_in(k_train, i)
        variables, opt_state = step(variables, opt_state, k, carried, x)
    probe = x[:_AGREEMENT_EXAMPLES]
    agreement = float(agree(variables, jax.random.fold_in(k_train, steps), carried, probe))
    # as_logits_fn of a linen module and its variables is a Partial.
    return Distilled(cast(jax.tree_util.Partial, as_logits_fn(model, variables)), agreement)


# ----------------------------------------------------------------------------- tracing


class _StaticModel:
    """A plain callable as the static part of a Partial: equal when the callables are, so
    `straight_through(f)` twice gives equal tree structures (no recompilation)."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _StaticModel):
            return False
        try:
            return other.fn is self.fn or bool(other.fn == self.fn)
        except Exception:  # a callable whose == is elementwise or raises: identity only
            return False

    def __hash__(self) -> int:
        try:
            return hash((_StaticModel, self.fn))
        except TypeError:  # unhashable callable: equal only to itself
            return hash((_StaticModel, id(self.fn)))

    def __repr__(self) -> str:
        return f"straight_through({self.fn!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _straight_through_apply(lambda a, k: self.fn(*a, **k), (args, kwargs))


def _straight_through_call(model: jax.tree_util.Partial, *args: Any, **kwargs: Any) -> Any:
    # The model is part of the traced inputs: its leaves (the weights) stay inputs of the
    # jaxpr and so of any program the caller compiles.
    return _straight_through_apply(lambda m, a, k: m(*a, **k), (model, args, kwargs))


def _straight_through_apply(fn: Callable, inputs: tuple) -> Any:
    leaves, tree = jax.tree_util.tree_flatten(inputs)
    closed, out_shape = jax.make_jaxpr(
        lambda *ls: fn(*jax.tree_util.tree_unflatten(tree, ls)), return_shape=True
    )(*leaves)
    if not _contains_masking(closed.jaxpr, {}):
        return fn(*inputs)  # nothing to see through: the model itself, exactly
    outs, _ = _eval(closed.jaxpr, closed.consts, leaves, [None] * len(leaves))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)


def _is_real_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _used_vars(jaxpr) -> set:
    """The variables some equation or the output reads."""
    used = {v for v in jaxpr.outvars if not isinstance(v, jex.core.Literal)}
    for eqn in jaxpr.eqns:
        used.update(v for v in eqn.invars if not isinstance(v, jex.core.Literal))
    return used


def _is_masking_eqn(eqn, used: set) -> bool:
    name = eqn.primitive.name
    if not any(v in used for v in eqn.outvars):
        return False  # an unused result (e.g. the sign that `logsumexp` computes) masks nothing
    if name in MASKING_PRIMITIVES:
        return jnp.issubdtype(eqn.invars[0].aval.dtype, jnp.floating) and not (
            name == "stop_gradient" and _called_by_jax(eqn)
        )
    if name == "convert_element_type":
        return _is_float_to_int(eqn)
    return False


def _called_by_jax(eqn) -> bool:
    """Was this `stop_gradient` called by JAX's own code? `log_softmax`, `logsumexp` and
    friends stop the gradient of a shift they subtract for stability; their results do not
    depend on it, and neither should a straight-through gradient (it would differ by
    rounding). Decided by the frame that called `lax.stop_gradient` in the equation's
    source traceback; without a traceback the operation counts as masking."""
    traceback = getattr(eqn.source_info, "traceback", None)
    if traceback is None:
        return False
    frames = list(traceback.frames)  # innermost first
    for inner, outer in itertools.pairwise(frames):
        if inner.function_name == "stop_gradient" and inner.file_name.startswith(_JAX_SRC):
            return outer.file_name.startswith(_JAX_SRC)
    return False


def _is_float_to_int(eqn) -> bool:
    return jnp.issubdtype(eqn.invars[0].aval.dtype, jnp.floating) and jnp.issubdtype(
        eqn.params["new_dtype"], jnp.integer
    )


def _sub_jaxprs(eqn) -> list:
    """The (closed or open) jaxprs in an equation's parameters."""
    subs = []
    for value in eqn.params.values():
        for v in value if isinstance(value, tuple | list) else (value,):
            if isinstance(v, jex.core.ClosedJaxpr | jex.core.Jaxpr):
                subs.append(v)
    return subs


def _open(j) -> Any:
    return j.jaxpr if isinstance(j, jex.core.ClosedJaxpr) else j


def _contains_masking(jaxpr, memo: dict) -> bool:
    key = id(jaxpr)
    if key not in memo:
        used = _used_vars(jaxpr)
        memo[key] = any(
            _is_masking_eqn(eqn, used)
            or (
                eqn.primitive.name not in _OPAQUE
                and any(_contains_masking(_open(s), memo) for s in _sub_jaxprs(eqn))
            )
            for eqn in jaxpr.eqns
        )
    return memo[key]


def _count(jaxpr, counts: dict[str, int]) -> None:
    used = _used_vars(jaxpr)
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if _is_masking_eqn(eqn, used):
            counts[name] = counts.get(name, 0) + 1
        elif "callback" in name and any(v in used for v in eqn.outvars):
            counts["callback"] = counts.get("callback", 0) + 1
        if name not in _OPAQUE:
            for s in _sub_jaxprs(eqn):
                _count(_open(s), counts)


# ----------------------------------------------------------------------------- evaluation


def _straight_through_op(primitive, params: dict) -> Callable[[Array], Array]:
    """`primitive` with the identity as its derivative."""

    @jax.custom_jvp
    def op(x):
        return primitive.bind(x, **params)

    @op.defjvp
    def op_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        return primitive.bind(x, **params), t

    return op


@jax.custom_jvp
def _cast_back(source: Array, value: Array) -> Array:
    """`value` (a float→int→float cast of `source`), differentiated as `source`."""
    del source
    return value


@_cast_back.defjvp
def _cast_back_jvp(primals, tangents):
    (_, value), (t_source, _) = primals, tangents
    return value, t_source.astype(value.dtype)


def _eval(jaxpr, consts: Sequence, args: Sequence, shadows: Sequence) -> tuple[list, list]:
    """Evaluate `jaxpr` with masking operations replaced by straight-through versions.

    `shadows[i]` is, for an integer input produced by a float→int cast, the float that was
    cast (else None); returns the outputs and the outputs' shadows.
    """
    env: dict = {}
    shadow: dict = {}

    def read(v):
        return v.val if isinstance(v, jex.core.Literal) else env[v]

    def write(v, value):
        if not isinstance(v, jex.core.DropVar):
            env[v] = value

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        write(v, c)
    for v, a, s in zip(jaxpr.invars, args, shadows, strict=True):
        write(v, a)
        if s is not None:
            shadow[v] = s
    memo: dict = {}
    used = _used_vars(jaxpr)
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        in_shadows = [
            None if isinstance(v, jex.core.Literal) else shadow.get(v) for v in eqn.invars
        ]
        name = eqn.primitive.name
        out_shadows: list = [None] * len(eqn.outvars)
        subs = _sub_jaxprs(eqn)
        if name in MASKING_PRIMITIVES and _is_real_float(ins[0]) and _is_masking_eqn(eqn, used):
            outs = [_straight_through_op(eqn.primitive, eqn.params)(ins[0])]
        elif name == "convert_element_type":
            outs = _bind(eqn, ins)
            if _is_float_to_int(eqn):
                out_shadows = [ins[0]]
            elif in_shadows[0] is not None and jnp.issubdtype(
                eqn.params["new_dtype"], jnp.floating
            ):
                outs = [_cast_back(in_shadows[0], outs[0])]
        elif (
            name in _INLINED
            and len(subs) == 1
            and (_contains_masking(_open(subs[0]), memo) or any(s is not None for s in in_shadows))
        ):
            sub = subs[0]
            sub_consts = sub.consts if isinstance(sub, jex.core.ClosedJaxpr) else ()
            outs, out_shadows = _eval(_open(sub), sub_consts, ins, in_shadows)
        elif name in _REBUILT and any(_contains_masking(_open(s), memo) for s in subs):
            outs = _bind(eqn, ins, _rebuilt_params(eqn))
        else:
            outs = _bind(eqn, ins)
        for v, o, s in zip(eqn.outvars, outs, out_shadows, strict=True):
            write(v, o)
            if s is not None and not isinstance(v, jex.core.DropVar):
                shadow[v] = s
    return [read(v) for v in jaxpr.outvars], [
        None if isinstance(v, jex.core.Literal) else shadow.get(v) for v in jaxpr.outvars
    ]


def _bind(eqn, ins: list, params: dict | None = None) -> list:
    """Bind `eqn`'s primitive as traced (or with `params`); always a list of outputs."""
    bind_params = eqn.primitive.get_bind_params(eqn.params if params is None else params)
    with eqn.ctx.manager:  # the equation's tracing context, as jax's own evaluator does
        out = eqn.primitive.bind(*ins, **bind_params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _rebuilt_params(eqn) -> dict:
    params = dict(eqn.params)
    for field in _REBUILT[eqn.primitive.name]:
        value = params[field]
        params[field] = (
            tuple(_rebuild(j) for j in value) if isinstance(value, tuple) else _rebuild(value)
        )
    return params


def _rebuild(closed) -> Any:
    """A closed jaxpr of the same signature with its masking operations replaced."""
    jaxpr = closed.jaxpr
    if not _contains_masking(jaxpr, {}):
        return closed
    avals = [
        jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype, weak_type=v.aval.weak_type)
        for v in jaxpr.invars
    ]
    new = jax.make_jaxpr(
        lambda *a: _eval(jaxpr, closed.consts, a, [None] * len(a))[0],
    )(*avals)
    # Keep the original output types (weak types included): loops check them.
    if [v.aval for v in new.jaxpr.outvars] != [v.aval for v in jaxpr.outvars]:
        raise NotImplementedError(
            "straight_through could not rebuild a loop body with identical output types"
        )
    return new
