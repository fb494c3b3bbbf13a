"""Errors that name the problem, and the input checks that raise them, eager and traced.

Every public attack and the engine (`optimize`, `best_of`) validate their inputs and their
model's output: values outside the threat model's box, NaN/inf in x or in the logits,
labels outside [0, C), ε < 0 / NaN / inf, empty batches.

- Static properties (shapes, dtypes, empty batches, Python hyper-parameters) and every
  check on concrete (eager) values raise a `JaxRobustError` subclass at once.
- Checks on traced values (inside a user's `jax.jit`, `vmap`, `grad`, `scan`) are fused
  into one boolean per attack call, which poisons the outputs: x_adv, delta and value
  become NaN and every success flag True, so a bad input yields no robust-accuracy claim
  (every example counts as broken, with a NaN adversarial input). `raise_if_poisoned`
  turns such a result into an `InputError` on the host; the library's own host code
  (evaluation, training, the CLI) does so.
- To have the traced checks *name* the problem from inside a jitted call, trace it under
  `raise_in_jit()` (or wrap the function in `with_callbacks`): a host callback
  (`jax.debug.callback` under `lax.cond`, nothing runs on the host while the inputs are
  valid) then raises the `InputError`, and the call fails with a
  `jax.errors.JaxRuntimeError` whose message ends with `InputError: <what is wrong>`
  (`named_error(exc)` recovers it). This composes with jit, vmap, grad, scan and sharded
  inputs (measured on jax 0.10.2); `checkify` would need every caller to wrap their
  function, and `io_callback` / `pure_callback` refuse vmap-of-cond and JVP.
- Why the callback is opt-in: a program that holds a host callback cannot be exported
  (`jax.export`: "serialization of host_callbacks is not yet implemented"), is never
  written to JAX's persistent compilation cache, and runs through JAX's Python dispatch
  path with runtime tokens. Measured on this repository's 2-core CPU (jax 0.10.2, jitted
  PGD-40, batch 128, 784-256-256-10 MLP, in-process A/B against the code before the
  checks, paired medians of 240-300 alternating calls): the checks with poisoning cost
  +1.5-2.0% on one device and nothing measurable on two (-5%); the callback added +2.6%
  on one device and +30-39% with the batch sharded over two devices; on the Madry CNN
  (2.5 s calls) neither is resolved by the +-5% noise.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np


class _LazyModule:
    """A module imported on first attribute access: the CLI imports this module for its
    error classes and must answer `--help` and config errors without starting JAX."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


jax = _LazyModule("jax")
jnp = _LazyModule("jax.numpy")


class JaxRobustError(ValueError):
    """Base class of every error jaxrobust raises on bad input."""


class InputError(JaxRobustError):
    """Inputs with the wrong shape, range, dtype or value."""


class ConfigError(JaxRobustError):
    """An unknown or malformed configuration key or value."""


class DatasetError(JaxRobustError):
    """An unknown dataset, or one that cannot be prepared here (e.g. offline)."""


class CheckpointError(JaxRobustError):
    """A missing, corrupt or foreign checkpoint."""


def is_concrete(x: Any) -> bool:
    """True when `x` holds values (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def check_eps(
    eps: Any, name: str = "eps", *, allow_zero: bool = True, allow_inf: bool = False
) -> None:
    """Raise `InputError` if a concrete ε is negative, NaN, inf (unless `allow_inf`) or
    zero (when not `allow_zero`). A radius of inf is no ball: `unconstrained()` is that."""
    if not is_concrete(eps):
        return
    if isinstance(eps, str | bytes) or eps is None:
        raise InputError(f"{name} must be a number or an array of numbers, got {eps!r}")
    try:
        arr = np.asarray(eps, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number or an array of numbers, got {eps!r}") from None
    if np.any(np.isnan(arr)):
        raise InputError(f"{name} must be a number, got NaN")
    if np.any(arr < 0) or (not allow_zero and np.any(arr == 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise InputError(f"{name} must be {bound}, got {eps!r}")
    if not allow_inf and np.any(np.isinf(arr)):
        raise InputError(
            f"{name} must be finite, got inf (for no norm bound use jaxrobust.unconstrained())"
        )


def check_range(x: Any, lo: float, hi: float, name: str = "x") -> None:
    """Raise `InputError` if concrete inputs fall outside the declared box [lo, hi]."""
    if not is_concrete(x):
        return
    arr = np.asarray(x)
    if arr.size == 0:
        return
    if np.isnan(arr).any():
        raise InputError(f"{name} contains NaN")
    if np.isinf(arr).any():
        raise InputError(f"{name} contains inf")
    mn, mx = float(arr.min()), float(arr.max())
    # A tolerance of one float32 ulp-ish step: clipping upstream can land at hi + 1e-7.
    tol = 1e-6 * max(1.0, abs(hi - lo))
    if mn < lo - tol or mx > hi + tol:
        raise InputError(
            f"{name} must lie in the declared input range [{lo}, {hi}], "
            f"but its values span [{mn:.4g}, {mx:.4g}]; scale inputs to the range "
            "(normalisation belongs inside the model) or declare the range of the threat model"
        )


def check_batch(x: Any, y: Any, name_x: str = "x", name_y: str = "y") -> None:
    """Raise `InputError` unless x is (B, ...) and y is integer labels of shape (B,)."""
    xs, ys = np.shape(x), np.shape(y)
    if len(xs) < 1:
        raise InputError(f"{name_x} must have a leading batch axis, got shape {xs}")
    if len(ys) != 1 or ys[0] != xs[0]:
        raise InputError(
            f"shapes of {name_x} {xs} and {name_y} {ys} do not match: expected {name_y} of "
            f"shape ({xs[0]},) with one integer label per example"
        )
    dtype = y.dtype if hasattr(y, "dtype") else np.asarray(y).dtype
    if not np.issubdtype(dtype, np.integer):
        raise InputError(f"{name_y} must hold integer class labels, got dtype {dtype}")


def check_labels(y: Any, num_classes: int, name: str = "y") -> None:
    """Raise `InputError` if concrete labels fall outside [0, num_classes)."""
    if not is_concrete(y):
        return
    arr = np.asarray(y)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise InputError(
            f"{name} holds labels in [{arr.min()}, {arr.max()}] but the model has "
            f"{num_classes} classes"
        )


def check_logits(logits: Any, batch: int | None = None, name: str = "logits") -> None:
    """Raise `InputError` for logits of the wrong shape, or concrete logits with NaN/inf."""
    shape = np.shape(logits)
    if len(shape) != 2 or (batch is not None and shape[0] != batch):
        want = f"({batch}, num_classes)" if batch is not None else "(batch, num_classes)"
        raise InputError(f"the model must return {name} of shape {want}, got {shape}")
    if is_concrete(logits) and not np.isfinite(np.asarray(logits)).all():
        raise InputError(
            f"the model returned non-finite {name} (NaN or inf); check the model's "
            "weights and inputs"
        )


# ----------------------------------------------------------------------------- arguments
# Static (Python) hyper-parameters of the public API: the wrong type or value raises
# `InputError` naming the argument, instead of a TypeError deep inside JAX.


def check_int(v: Any, name: str, minimum: int = 0) -> int:
    """A Python/NumPy integer (not a bool) >= minimum."""
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def check_number(
    v: Any,
    name: str,
    lo: float = -np.inf,
    hi: float = np.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """A finite real number in [lo, hi] (`lo_open` / `hi_open`: the open interval ends)."""
    ok = isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
    if ok:
        f = float(v)
        above = f > lo if lo_open else f >= lo
        below = f < hi if hi_open else f <= hi
        ok = bool(np.isfinite(f) and above and below)
    if not ok:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise InputError(f"{name} must be a finite number in {left}{lo}, {hi}{right}, got {v!r}")
    return float(v)


def check_bool(v: Any, name: str) -> None:
    if not isinstance(v, bool | np.bool_):
        raise InputError(f"{name} must be True or False, got {v!r}")


def check_key(key: Any, name: str = "key") -> None:
    """A JAX PRNG key: a typed key array (`jax.random.key`) or a raw uint32[2] key."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if np.ndim(key) == 0:
            return
    elif dtype is not None and dtype == np.uint32 and np.shape(key) == (2,):
        return
    raise InputError(
        f"{name} must be one PRNG key (jax.random.key(seed)), got "
        f"{type(key).__name__} {getattr(key, 'dtype', '')}{np.shape(key) if dtype else ''}"
    )


def eval_shape_or_name(trace: Callable[[], Any], what: str) -> Any:
    """`jax.eval_shape(trace)` (shapes only, no computation); any failure other than a
    `JaxRobustError` becomes an `InputError` "<what>: <error type>: <its first line>", so a
    model or objective that cannot take the given input is named before anything runs."""
    try:
        return jax.eval_shape(trace)
    except JaxRobustError:
        raise
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise InputError(f"{what}: {type(e).__name__}: {first}") from e


def check_callable(fn: Any, name: str) -> None:
    if not callable(fn):
        raise InputError(f"{name} must be callable, got {type(fn).__name__}")


def check_threat(threat: Any, names: Sequence[str] | None = None, who: str = "this attack") -> None:
    """A `ThreatModel` (duck-typed: project/init/box), optionally of the given kinds."""
    fields = ("init", "project", "ascent", "apply", "zeros", "name", "eps", "box")
    if not all(hasattr(threat, f) for f in fields):
        raise InputError(
            "threat must be a ThreatModel (e.g. jaxrobust.linf(8/255)), got "
            f"{type(threat).__name__}"
        )
    if names is not None and threat.name not in names:
        raise InputError(f"{who} supports the threat models {list(names)}, got {threat.name!r}")


def check_array(x: Any, name: str = "x") -> None:
    """A numeric array with a leading batch axis (shape only: safe on tracers)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not hasattr(x, "shape"):
        try:
            dtype = np.asarray(x).dtype
        except Exception:  # any object NumPy cannot convert is bad input
            dtype = None
    if dtype is None or not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
        raise InputError(f"{name} must be a numeric array, got {type(x).__name__}")
    if len(np.shape(x)) < 1:
        raise InputError(f"{name} must have a leading batch axis, got shape {np.shape(x)}")


# ----------------------------------------------------------------------------- traced checks


class Check(NamedTuple):
    """One validity condition: `bad` (a bool, concrete or traced) and the message that
    names the problem, a `str.format` template filled with `values` (scalars); `error` is
    the `JaxRobustError` subclass raised when it fails, eagerly or from inside a jitted
    call under `raise_in_jit()` (default `InputError`)."""

    bad: Any
    message: str
    values: tuple = ()
    error: type[JaxRobustError] | None = None


def _error_of(check: Check) -> type[JaxRobustError]:
    return check.error if check.error is not None else InputError


def _traced(*trees: Any) -> bool:
    return any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(trees))


def _fmt(v: Any) -> str:
    arr = np.asarray(v)
    if arr.size == 1:
        item = arr.reshape(()).item()
        return f"{item:.4g}" if isinstance(item, float) else str(item)
    return np.array2string(arr, precision=4, threshold=8)


def _render(check: Check) -> str:
    return check.message.format(*(_fmt(v) for v in check.values))


def screen(checks: Sequence[Check]) -> list[Check]:
    """Raise `InputError` for the first concrete check that fails; return the traced ones
    (to be fused by `enforce` once the computation that they guard is staged)."""
    pending = []
    for check in checks:
        if _traced(check.bad):
            pending.append(check)
        elif bool(np.any(np.asarray(check.bad))):
            raise _error_of(check)(_render(check))
    return pending


def _raise_failed(templates: tuple[Check, ...], flags: Any, values: Any) -> None:
    """Host side of `enforce`: raise the messages of the checks that failed."""
    for t, flag, v in zip(templates, flags, values, strict=True):
        # The first failure only: inputs are checked before outputs, and a bad input
        # (NaN in x, a label >= C) also spoils the outputs.
        if np.any(np.asarray(flag)):
            raise _error_of(t)(_render(Check(None, t.message, tuple(v))))


_RAISE_IN_CALLBACK = contextvars.ContextVar("jaxrobust_raise_in_callback", default=False)


@contextlib.contextmanager
def _raising(flag: bool) -> Iterator[None]:
    token = _RAISE_IN_CALLBACK.set(flag)
    try:
        yield
    finally:
        _RAISE_IN_CALLBACK.reset(token)


def raise_in_jit() -> contextlib.AbstractContextManager[None]:
    """Trace attacks with a host callback that raises a named `InputError` when a traced
    check fails (see the module docstring for what it costs). Read at trace time: wrap
    the first call (the tracing) of your jitted function, e.g. while debugging::

        with jaxrobust.errors.raise_in_jit():
            result = my_jitted_attack(x, y, key)
    """
    return _raising(True)


def poison_only() -> contextlib.AbstractContextManager[None]:
    """Trace attacks without the host callback (the default; this undoes an enclosing
    `raise_in_jit()`): a failed traced check only poisons the result."""
    return _raising(False)


def with_callbacks(fn: Callable) -> Callable:
    """`fn` traced under `raise_in_jit()`: `jax.jit(with_callbacks(f))` names bad traced
    input with an `InputError` from inside the compiled call."""

    @functools.wraps(fn)
    def traced_with_callbacks(*args: Any, **kwargs: Any) -> Any:
        with raise_in_jit():
            return fn(*args, **kwargs)

    return traced_with_callbacks


def without_callbacks(fn: Callable) -> Callable:
    """`fn` traced under `poison_only()`: the library's own compiled programs (evaluation,
    training steps) use it so that they stay exportable and in JAX's persistent
    compilation cache whatever the caller's context, and test `is_poisoned` on the host."""

    @functools.wraps(fn)
    def traced_without_callbacks(*args: Any, **kwargs: Any) -> Any:
        with poison_only():
            return fn(*args, **kwargs)

    return traced_without_callbacks


def is_poisoned(value: Any) -> bool:
    """True when an attack's (B,) `value` (concrete) was poisoned by a failed traced check,
    or is NaN for another reason: either way no number may be read off the result."""
    return bool(np.isnan(np.asarray(value)).any())


POISONED = (
    "a check on traced values failed inside a compiled call ({} of {} values NaN): x "
    "outside the threat model's input box, NaN/inf in x or in the model's logits, labels "
    "outside [0, num_classes), or eps < 0, NaN or inf. The result is poisoned (x_adv and "
    "value NaN, every example counted as broken); run the call once eagerly, or trace it "
    "under jaxrobust.errors.raise_in_jit(), to have the problem named"
)


def raise_if_poisoned(result: Any) -> Any:
    """Return an attack's concrete `result` (anything with a `.value`, or a (B,) array of
    values) unchanged, or raise `InputError` when a failed traced check poisoned it."""
    inner = getattr(result, "result", result)  # a BlackBoxResult nests its Result
    value = np.asarray(getattr(inner, "value", inner))
    nan = np.isnan(value)
    if nan.any():
        raise InputError(POISONED.format(int(nan.sum()), nan.size))
    return result


def enforce(checks: Sequence[Check]) -> Any:
    """Raise for failed concrete checks now; fuse the traced ones into one flag.

    Returns None when nothing is traced (everything passed), else the traced bool that is
    true when any check failed; the caller poisons its outputs with it, and under
    `raise_in_jit()` a host callback raises the check's error (`InputError` unless it names
    another) naming the first failed check when the program runs (see the module docstring).
    """
    pending = screen(checks)
    if not pending:
        return None
    if not _RAISE_IN_CALLBACK.get():
        return jnp.any(jnp.stack([jnp.any(jnp.asarray(c.bad)) for c in pending]))
    flags = tuple(jnp.any(jnp.asarray(c.bad)) for c in pending)
    values = tuple(tuple(jnp.asarray(v) for v in c.values) for c in pending)
    bad = jnp.any(jnp.stack(flags))
    templates = tuple(Check(None, c.message, error=c.error) for c in pending)

    def report(flags, values):
        _raise_failed(templates, flags, values)

    # Under cond the callback runs only on failure; under vmap cond becomes select and
    # the callback runs per element, raising for the failed ones.
    jax.lax.cond(bad, lambda: jax.debug.callback(report, flags, values), lambda: None)
    return bad


def range_checks(x: Any, lo: float, hi: float, name: str = "x") -> list[Check]:
    """`check_range` for concrete x (raises now); the same conditions as checks if traced."""
    if not _traced(x):
        check_range(x, lo, hi, name)
        return []
    x = jnp.asarray(x)
    if x.size == 0:
        return []
    tol = 1e-6 * max(1.0, abs(hi - lo))
    finite = jnp.isfinite(x)
    return [
        Check(jnp.any(jnp.isnan(x)), f"{name} contains NaN ({{}} values)", (jnp.isnan(x).sum(),)),
        Check(jnp.any(jnp.isinf(x)), f"{name} contains inf ({{}} values)", (jnp.isinf(x).sum(),)),
        Check(
            jnp.any(finite & ((x < lo - tol) | (x > hi + tol))),
            f"{name} must lie in the declared input range [{lo}, {hi}], but its finite "
            "values span [{}, {}]; scale inputs to the range (normalisation belongs inside "
            "the model) or declare the range of the threat model",
            (jnp.min(jnp.where(finite, x, jnp.inf)), jnp.max(jnp.where(finite, x, -jnp.inf))),
        ),
    ]


def index_checks(
    values: Any, bound: int, batch: int, name: str, what: str, item: str = "index"
) -> list[Check]:
    """One integer index in [0, bound) per example: shape (batch,) and an integer dtype are
    static (raised now); the range is a `Check`, raised now for concrete values and fused
    into the engine's poisoning for traced ones. The messages call each value an `item`
    ("class", "index") and name the bound by `what` ("the model's classes")."""
    article = "an" if item[:1] in "aeiou" else "a"
    kind = "" if item == "index" else f"{item} "
    shape = np.shape(values)
    if shape != (batch,):
        raise InputError(f"{name} must hold one {item} per example, shape ({batch},), got {shape}")
    dtype = values.dtype if hasattr(values, "dtype") else np.asarray(values).dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise InputError(f"{name} must hold integer {kind}indices, got dtype {dtype}")
    v = jnp.asarray(values)
    bad = (v < 0) | (v >= bound)
    return screen(
        [
            Check(
                jnp.any(bad),
                f"{name} holds {article} {item} outside [0, {bound}) ({what}) for {{}} of {{}} "
                "examples",
                (jnp.sum(bad), batch),
            )
        ]
    )


def label_checks(y: Any, num_classes: int, name: str = "y") -> list[Check]:
    """`check_labels` for concrete labels (raises now); a check if traced."""
    if not _traced(y):
        check_labels(y, num_classes, name)
        return []
    y = jnp.asarray(y)
    if y.size == 0:
        return []
    return [
        Check(
            jnp.any((y < 0) | (y >= num_classes)),
            f"{name} holds labels in [{{}}, {{}}] but the model has {num_classes} classes",
            (jnp.min(y), jnp.max(y)),
        )
    ]


def eps_checks(eps: Any, name: str = "eps") -> list[Check]:
    """`check_eps` (finite, >= 0) for a concrete ε (raises now); a check if traced."""
    if not _traced(eps):
        check_eps(eps, name)
        return []
    e = jnp.ravel(jnp.asarray(eps))
    bad = ~jnp.isfinite(e) | (e < 0)
    return [
        Check(
            jnp.any(bad),
            f"{name} must be finite and >= 0, got {{}} (a traced value)",
            (e[jnp.argmax(bad)],),
        )
    ]


def finite_checks(v: Any, what: str = "logits") -> list[Check]:
    """Non-finite model output `v` as a check, concrete or traced; `what` names it."""
    message = (
        f"the model returned non-finite {what} (NaN or inf) in {{}} entries; check its "
        "weights and inputs"
    )
    if not _traced(v):
        bad = ~np.isfinite(np.asarray(v))
        return [Check(bool(bad.any()), message, (int(bad.sum()),))]
    bad = ~jnp.isfinite(jnp.asarray(v))
    return [Check(jnp.any(bad), message, (jnp.sum(bad),))]


# ----------------------------------------------------------------------------- host side


class _DropRepeatedErrors(logging.Filter):
    """jax logs every exception raised in a debug callback before re-raising it; ours
    already carry their message in the raised error, so the log would print it twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, JaxRobustError)


logging.getLogger("jax._src.debugging").addFilter(_DropRepeatedErrors())

_NAMED = re.compile(r"^(?:jaxrobust\.errors\.)?(\w+Error): (.*)$", re.MULTILINE)


def named_error(exc: BaseException) -> JaxRobustError | None:
    """The `JaxRobustError` a traced check raised inside `exc` (a `JaxRuntimeError` from a
    jitted call), or `exc` itself if it is one, else None. For host code that turns a
    failed jitted attack into its one-line error."""
    if isinstance(exc, JaxRobustError):
        return exc
    known = {c.__name__: c for c in (JaxRobustError, *_subclasses(JaxRobustError))}
    for cls_name, message in reversed(_NAMED.findall(str(exc))):
        if cls_name in known:
            return known[cls_name](message)
    return None


def _subclasses(cls: type) -> list[type]:
    subs: list[type] = cls.__subclasses__()
    return [s for c in subs for s in (c, *_subclasses(c))]
