"""A prediction API that answers queries and counts them: the attacker's only view of a model.

`prediction_api(logits_fn, output=..., budget=...)` wraps a model as the service a model
extraction (Tramèr et al. 2016) or a query-only attack sees: for inputs x (B, ...) in the
input box it answers either class probabilities (B, C) float32 (`output="probs"`) or labels
(B,) int32 (`output="labels"`, nothing else: no scores, no ties broken by scores leaking).

Pure and functional: the API is a NamedTuple, the number of queries spent is a value the
caller threads through `query(api, x, count) -> (answers, count + B)`, never hidden state.
One query is one input: a batch of B inputs costs B. A query that would take the count past
`api.budget` raises `QueryBudgetError` before anything is answered (eager count), or, with a
traced count inside `jax.jit`, poisons the answers (NaN probabilities, label -1) and, traced
under `jaxrobust.errors.raise_in_jit()`, raises `QueryBudgetError` from inside the call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxrobust.errors import (
    Check,
    InputError,
    JaxRobustError,
    check_array,
    check_callable,
    check_int,
    check_number,
    enforce,
    eval_shape_or_name,
    is_concrete,
    range_checks,
)

Array = jax.Array
OUTPUTS = ("probs", "labels")


class QueryBudgetError(JaxRobustError):
    """A query to a `PredictionAPI` would exceed its query budget."""


class PredictionAPI(NamedTuple):
    """A model behind a query interface.

    answer: x (B, ...) -> probabilities (B, C) float32 or labels (B,) int32 (jitted; the
      model is reachable only through it);
    output: "probs" or "labels";
    budget: the most queries (inputs) the API answers in all;
    num_classes: C;
    box: (lo, hi), the input range the API accepts.
    """

    answer: Callable[[Array], Array]
    output: str
    budget: int
    num_classes: int
    box: tuple[float, float]


def prediction_api(
    logits_fn: Callable[[Array], Array],
    *,
    output: str = "probs",
    budget: int,
    num_classes: int,
    box: tuple[float, float] = (0.0, 1.0),
) -> PredictionAPI:
    """Wrap `logits_fn` (x (B, ...) -> logits (B, C)) as a query-counting prediction API.

    Args:
      logits_fn: the victim model.
      output: "probs" (softmax probabilities, (B, C) float32) or "labels" (argmax, (B,) int32).
      budget: queries allowed in all, an integer >= 0 (one query = one input).
      num_classes: C, the size of the model's logits.
      box: the accepted input range (inputs outside it are refused with `InputError`).

    Raises:
      InputError: an unknown `output`, a bad budget, class count or box, or a model that is
        not callable.
    """
    check_callable(logits_fn, "logits_fn")
    if output not in OUTPUTS:
        raise InputError(f"output must be one of {list(OUTPUTS)}, got {output!r}")
    budget = check_int(budget, "budget", 0)
    num_classes = check_int(num_classes, "num_classes", 2)
    if not (isinstance(box, tuple | list) and len(box) == 2):
        raise InputError(f"box must be a pair (lo, hi), got {box!r}")
    lo = check_number(box[0], "box[0]")
    hi = check_number(box[1], "box[1]", lo, lo_open=True)

    try:
        answer = _answer_program(logits_fn, output)
    except TypeError:  # an unhashable model: compiled per API
        answer = _answer_program.__wrapped__(logits_fn, output)
    return PredictionAPI(answer, output, budget, num_classes, (lo, hi))


@functools.lru_cache(maxsize=64)
def _answer_program(logits_fn: Callable[[Array], Array], output: str) -> Callable[[Array], Array]:
    """The jitted answer of a model, shared by every API on it (one compile per input shape,
    whatever the budget)."""
    if output == "probs":

        def answer(x: Array) -> Array:
            return jax.nn.softmax(logits_fn(x).astype(jnp.float32), axis=-1)

    else:

        def answer(x: Array) -> Array:
            return jnp.argmax(logits_fn(x), axis=-1).astype(jnp.int32)

    return jax.jit(answer)


def _check_count(count: Any) -> None:
    if is_concrete(count):
        arr = np.asarray(count)
        if arr.ndim != 0 or not np.issubdtype(arr.dtype, np.integer) or isinstance(count, bool):
            raise InputError(f"count must be an integer (queries spent so far), got {count!r}")
        if int(arr) < 0:
            raise InputError(f"count must be >= 0, got {int(arr)}")
    elif jnp.ndim(count) != 0 or not jnp.issubdtype(jnp.result_type(count), jnp.integer):
        raise InputError("count must be a scalar integer (queries spent so far)")


def query(api: PredictionAPI, x: ArrayLike, count: int | Array) -> tuple[Array, Any]:
    """Ask `api` about the inputs x; returns `(answers, count + B)`.

    Args:
      api: a `PredictionAPI`.
      x: (B, ...) inputs inside `api.box`.
      count: queries spent before this call (an int, or a traced integer under jit).

    Returns:
      answers: (B, C) float32 probabilities or (B,) int32 labels (as `api.output`);
      the new count, count + B (same kind as `count`: a Python int stays an int).

    Raises:
      QueryBudgetError: count + B > api.budget (concrete count; nothing is answered), or a
        traced count over budget under `raise_in_jit()`.
      InputError: x not a numeric (B, ...) array, x outside the box or not finite, a
        negative or non-integer count, or a model that cannot take x. With a traced count
        over budget the answers are poisoned (NaN / -1), see the module docstring.
    """
    if not isinstance(api, PredictionAPI):
        raise InputError(f"api must be a PredictionAPI, got {type(api).__name__}")
    check_array(x)
    _check_count(count)
    b = int(np.shape(x)[0])
    if is_concrete(count) and int(count) + b > api.budget:
        raise QueryBudgetError(
            f"query budget exceeded: {int(count)} queries spent, {b} more asked, budget "
            f"{api.budget}"
        )
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    checks = list(range_checks(x, *api.box))
    shape = eval_shape_or_name(lambda: api.answer(x), "the model cannot take x")
    want = (b, api.num_classes) if api.output == "probs" else (b,)
    if tuple(shape.shape) != want:
        raise InputError(
            f"the model answered shape {tuple(shape.shape)} for {b} inputs, expected {want} "
            f"(num_classes={api.num_classes})"
        )
    if not is_concrete(count):
        checks.append(
            Check(
                count + b > api.budget,
                "query budget exceeded: {} queries spent, " + f"{b} more asked, budget "
                f"{api.budget}",
                (count,),
                QueryBudgetError,
            )
        )
    bad = enforce(checks)
    answers = api.answer(x)
    if bad is not None:
        poison = jnp.nan if api.output == "probs" else -1
        answers = jnp.where(bad, jnp.asarray(poison, answers.dtype), answers)
    return answers, count + b


def remaining(api: PredictionAPI, count: int) -> int:
    """Queries still allowed after `count` were spent (>= 0)."""
    _check_count(count)
    return max(api.budget - int(count), 0)
