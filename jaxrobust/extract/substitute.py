"""Model extraction: train a substitute from a prediction API's answers within a query budget.

Tramèr, Zhang, Juels, Reiter & Ristenpart (2016), "Stealing machine learning models via
prediction APIs", retraining strategy: query the API on inputs the attacker holds, and fit
a model of the attacker's choosing to the answers, with the soft-label cross-entropy
(equivalently KL(answer ‖ substitute) up to a constant) when the API returns probabilities
and the usual cross-entropy when it returns labels only.

Papernot, McDaniel, Goodfellow, Jha, Celik & Swami (2017), "Practical black-box attacks
against machine learning", Jacobian-based dataset augmentation (`augmentation="jacobian"`):
once the attacker's own points are queried, new queries are synthesised in rounds as
`x + λ·sign(∇_x z_sub[ŷ(x)](x))` (ŷ the API's label for x, z the substitute's logits),
clipped to the input box, and the substitute is retrained on everything queried so far.

The query pool (the attacker's own inputs) must not overlap the data the extraction is
scored on: `check_disjoint` refuses a pool that shares an input with the test set.

Training is Adam on fixed-shape, masked arrays (`capacity` rows), full-batch or on
minibatches drawn from the unmasked rows (`FitConfig.batch_size`), one compiled program for
every budget up to the capacity; the same key gives the same substitute.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from jaxrobust.errors import InputError, check_array, check_int, check_key, check_number
from jaxrobust.extract.api import PredictionAPI, query
from jaxrobust.models import as_logits_fn, create_model, init_model

Array = jax.Array
AUGMENTATIONS = (None, "jacobian")


class Extraction(NamedTuple):
    """An extracted substitute and the queries that made it.

    logits_fn: the substitute, x (B, ...) -> logits (B, C);
    params: its variables ({"params": ...});
    x: (Q, ...) the inputs queried, in query order; answers: (Q, C) probabilities or (Q,)
      labels, the API's answers to them;
    count: queries spent (= Q), never above the budget;
    pool_queries: how many of the Q came from the pool (the rest were synthesised).
    """

    logits_fn: Callable[[Array], Array]
    params: Any
    x: np.ndarray
    answers: np.ndarray
    # A field named like tuple.count: mypy sees a clash, the NamedTuple works (public name).
    count: int  # type: ignore[assignment]
    pool_queries: int


class FitConfig(NamedTuple):
    """Substitute training: Adam for `steps` steps at learning rate `lr`, with decoupled
    weight decay `weight_decay`; full-batch (`batch_size=None`), or each step on
    `batch_size` rows drawn with replacement, in proportion to the mask (the cost
    of a step then does not grow with the number of queries: the convolutional
    substitutes' choice).

    The architecture: `model` "mlp" with hidden widths `hidden`, or a convolutional model
    of `jaxrobust.models` (`SUBSTITUTE_MODELS`) built with the keyword pairs
    `model_kwargs`, e.g. `FitConfig(model="small_cnn", model_kwargs=(("channels", (8, 16)),
    ("dense", 64)))`. A BatchNorm model ("bn_cnn") needs `batch_size`: full-batch training
    pads the queries to `capacity` masked rows, which would enter the batch statistics;
    minibatches hold only real rows (the substitute keeps running averages, and its
    `logits_fn` uses them).
    """

    hidden: tuple[int, ...] = (256,)
    steps: int = 500
    lr: float = 3e-3
    weight_decay: float = 1e-4
    model: str = "mlp"
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    batch_size: int | None = None


DEFAULT_FIT = FitConfig()
SUBSTITUTE_MODELS = ("mlp", "small_cnn", "madry_cnn", "bn_cnn")
BATCHNORM_MODELS = ("bn_cnn",)


def check_fit_config(fit: Any) -> FitConfig:
    if not isinstance(fit, FitConfig):
        raise InputError(f"fit must be a FitConfig, got {type(fit).__name__}")
    hidden = fit.hidden
    if not isinstance(hidden, tuple | list) or not all(
        isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden
    ):
        raise InputError(f"fit.hidden must be a tuple of positive integers, got {hidden!r}")
    check_int(fit.steps, "fit.steps", 1)
    check_number(fit.lr, "fit.lr", 0.0, lo_open=True)
    check_number(fit.weight_decay, "fit.weight_decay", 0.0)
    if fit.batch_size is not None:
        check_int(fit.batch_size, "fit.batch_size", 1)
    if fit.model not in SUBSTITUTE_MODELS:
        raise InputError(f"fit.model must be one of {list(SUBSTITUTE_MODELS)}, got {fit.model!r}")
    if fit.model in BATCHNORM_MODELS and fit.batch_size is None:
        raise InputError(
            f"fit.model {fit.model!r} has BatchNorm: give fit.batch_size (full-batch training "
            "pads the queries with masked rows, which would enter the batch statistics)"
        )
    pairs = fit.model_kwargs
    if not isinstance(pairs, tuple | list) or not all(
        isinstance(p, tuple | list) and len(p) == 2 and isinstance(p[0], str) for p in pairs
    ):
        raise InputError(f"fit.model_kwargs must be (name, value) pairs, got {pairs!r}")
    if fit.model == "mlp" and pairs:
        raise InputError("fit.model_kwargs is for the convolutional models; the MLP takes hidden")
    # Lists become tuples: the model is a cache key of the compiled training program.
    frozen = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in pairs)
    return fit._replace(hidden=tuple(hidden), model_kwargs=frozen)


def substitute_model(fit: FitConfig, num_classes: int) -> nn.Module:
    """The untrained substitute architecture that `fit` describes, with num_classes logits."""
    if fit.model == "mlp":
        return create_model("mlp", num_classes, hidden=tuple(fit.hidden))
    return create_model(fit.model, num_classes, **dict(fit.model_kwargs))


# ----------------------------------------------------------------------------- training


def soft_cross_entropy(logits: Array, targets: Array) -> Array:
    """−Σ_c t_c log softmax(z)_c per example: (B, C), (B, C) -> (B,). With one-hot targets
    the usual cross-entropy; with probabilities KL(t ‖ softmax z) + H(t)."""
    return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def targets_of(answers: ArrayLike, output: str, num_classes: int) -> Array:
    """The training targets (B, C) of API answers: probabilities as they are, labels one-hot."""
    if output == "probs":
        return jnp.asarray(answers, jnp.float32)
    return jax.nn.one_hot(jnp.asarray(answers), num_classes, dtype=jnp.float32)


@functools.lru_cache(maxsize=32)
def _fit_program(model: nn.Module, steps: int, lr: float, weight_decay: float,
                 batch_size: int | None = None) -> Callable:  # fmt: skip
    """The jitted training of `model` (cached on its static configuration), one `lax.scan`
    over the steps: run(variables, x, targets, mask, key) -> (variables, (steps,) losses).
    `key` draws the minibatches (unused full-batch)."""
    tx = optax.adamw(lr, weight_decay=weight_decay)

    def loss_fn(params, stats, x, targets, mask):
        if stats is None:
            logits = model.apply({"params": params}, x)
        else:  # BatchNorm: batch statistics of the minibatch, running averages updated
            logits, new = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                      mutable=["batch_stats"])  # fmt: skip
            stats = new["batch_stats"]
        per = soft_cross_entropy(logits, targets)
        return jnp.sum(per * mask) / jnp.maximum(jnp.sum(mask), 1.0), stats

    def run(variables, x, targets, mask, key):
        # Minibatch rows drawn in proportion to their weights (log 0 = -inf: never drawn),
        # so a minibatch loss estimates the weighted full-batch loss.
        row_logits = jnp.log(jnp.clip(mask, 0.0))

        def body(carry, k):
            params, stats, opt = carry
            if batch_size is None:
                xb, tb, mb = x, targets, mask
            else:
                rows = jax.random.categorical(k, row_logits, shape=(batch_size,))
                xb, tb, mb = x[rows], targets[rows], jnp.ones((batch_size,), mask.dtype)
            grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
            (loss, stats), grads = grad_fn(params, stats, xb, tb, mb)
            updates, opt = tx.update(grads, opt, params)
            return (optax.apply_updates(params, updates), stats, opt), loss

        params, stats = variables["params"], variables.get("batch_stats")
        carry = (params, stats, tx.init(params))
        (params, stats, _), losses = jax.lax.scan(body, carry, jax.random.split(key, steps))
        out = {"params": params} if stats is None else {"params": params, "batch_stats": stats}
        return out, losses

    return jax.jit(run)


def fit_classifier(
    key: Array,
    x: ArrayLike,
    targets: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    fit: FitConfig = DEFAULT_FIT,
) -> tuple[Any, Callable[[Array], Array], Array]:
    """Train the `fit.model` (default an MLP) on (x, targets), rows weighted by `mask`.

    Args:
      key: PRNG key: the initialisation and, with `fit.batch_size`, the minibatches.
      x: (N, ...) inputs; targets: (N, C) target distributions (one-hot or probabilities);
      mask: (N,) weights >= 0: 1 for rows to train on, 0 for padding (default all ones).
      fit: the `FitConfig`.

    Returns:
      (variables, logits_fn, losses): the trained variables, the model as a `logits_fn`,
      and the (steps,) training losses.
    """
    check_key(key)
    check_array(x)
    fit = check_fit_config(fit)
    targets = jnp.asarray(targets, jnp.float32)
    if targets.ndim != 2 or targets.shape[0] != np.shape(x)[0]:
        raise InputError(
            f"targets must be (N, num_classes) with N = {np.shape(x)[0]}, got {targets.shape}"
        )
    mask = jnp.ones(targets.shape[0], jnp.float32) if mask is None else jnp.asarray(mask)
    if mask.shape != (targets.shape[0],):
        raise InputError(f"mask must be ({targets.shape[0]},), got {mask.shape}")
    if not bool(jnp.all(mask >= 0)):  # NaN fails this too
        raise InputError("mask weights must be >= 0 (1 trains on a row, 0 skips it)")
    if not bool(jnp.any(mask > 0)):
        raise InputError("mask selects no row to train on")
    model = substitute_model(fit, int(targets.shape[1]))
    # The key itself initialises (as before minibatches existed: full-batch fits unchanged).
    k_init, k_batches = key, jax.random.fold_in(key, 1)
    variables = init_model(model, k_init, np.shape(x)[1:])
    program = _fit_program(model, fit.steps, fit.lr, fit.weight_decay, fit.batch_size)
    variables, losses = program(
        variables, jnp.asarray(x), targets, mask.astype(jnp.float32), k_batches
    )
    return variables, as_logits_fn(model, variables), losses


# ----------------------------------------------------------------------------- pool checks


def _row_bytes(x: np.ndarray) -> set[bytes]:
    flat = np.ascontiguousarray(np.asarray(x, np.float32).reshape(len(x), -1))
    return {row.tobytes() for row in flat}


def overlap(pool: Any, test: Any) -> np.ndarray:
    """(N_pool,) bool: pool rows equal (bit for bit, as float32) to some test row."""
    check_array(pool, "pool")
    check_array(test, "test")
    if np.shape(pool)[1:] != np.shape(test)[1:]:
        raise InputError(
            f"pool and test inputs differ in shape: {np.shape(pool)[1:]} vs {np.shape(test)[1:]}"
        )
    seen = _row_bytes(test)
    flat = np.ascontiguousarray(np.asarray(pool, np.float32).reshape(len(pool), -1))
    return np.array([row.tobytes() in seen for row in flat], bool)


def check_disjoint(pool: Any, test: Any) -> None:
    """Raise `InputError` if any pool input equals a test input (the extraction would be
    scored on points it queried)."""
    shared = overlap(pool, test)
    if shared.any():
        raise InputError(
            f"the query pool shares {int(shared.sum())} input(s) with the test set (e.g. "
            f"pool row {int(np.argmax(shared))}); drop them (pool[~overlap(pool, test)])"
        )


# ----------------------------------------------------------------------------- extraction


@functools.lru_cache(maxsize=32)
def _jacobian_step(model: nn.Module, lam: float, lo: float, hi: float) -> Callable:
    """x, labels -> clip(x + λ·sign(∇_x z[label](x))) for the substitute `model`."""

    def step(variables, x, labels):
        def picked(z):
            logits = model.apply(variables, z)
            return jnp.sum(jnp.take_along_axis(logits, labels[:, None], axis=1))

        return jnp.clip(x + lam * jnp.sign(jax.grad(picked)(x)), lo, hi)

    return jax.jit(step)


def _labels(answers: np.ndarray, output: str) -> np.ndarray:
    return np.asarray(answers).argmax(-1) if output == "probs" else np.asarray(answers)


def extract(
    api: PredictionAPI,
    pool: Any,
    key: Array,
    *,
    budget: int,
    count: int = 0,
    seed_size: int | None = None,
    augmentation: str | None = None,
    lam: float = 0.1,
    fit: FitConfig = DEFAULT_FIT,
    capacity: int | None = None,
) -> Extraction:
    """Extract a substitute of the model behind `api` with at most `budget` queries.

    Args:
      api: the victim's `PredictionAPI` (probabilities or labels; the substitute is trained
        on whatever it answers, nothing else).
      pool: (N, ...) the attacker's own inputs (inside `api.box`; keep them disjoint from
        the data the substitute is scored on, see `check_disjoint`).
      key: PRNG key: which pool points, the substitute's initialisation.
      budget: queries to spend at most (also bounded by the API's own budget).
      count: queries already spent on `api` (threaded through from earlier calls).
      seed_size: pool points queried first (default min(budget, N)).
      augmentation: None (query pool points only) or "jacobian" (Papernot et al.: after the
        pool points, synthesise the remaining budget in rounds, each at most doubling the
        query set, retraining after every round).
      lam: the Jacobian augmentation step λ (input units).
      fit: the substitute's `FitConfig`.
      capacity: rows of the fixed-shape training arrays (default `budget`); give the
        largest budget of a sweep so that every budget uses one compiled program.

    Returns:
      `Extraction`; `count` is the total spent on the API (the `count` given plus this
      extraction's queries).

    Raises:
      InputError: bad arguments (an empty pool, a pool of the wrong input shape, capacity
        below budget, an unknown augmentation).
      QueryBudgetError: the API's budget is smaller than count + the queries needed.
    """
    if not isinstance(api, PredictionAPI):
        raise InputError(f"api must be a PredictionAPI, got {type(api).__name__}")
    check_array(pool, "pool")
    check_key(key)
    budget = check_int(budget, "budget", 1)
    count = check_int(count, "count", 0)
    if augmentation not in AUGMENTATIONS:
        raise InputError(f"augmentation must be one of {list(AUGMENTATIONS)}, got {augmentation!r}")
    check_number(lam, "lam", 0.0, lo_open=True)
    fit = check_fit_config(fit)
    pool = np.asarray(pool, np.float32)
    n = len(pool)
    if n == 0:
        raise InputError("the query pool is empty")
    seed_size = min(budget, n) if seed_size is None else check_int(seed_size, "seed_size", 1)
    if seed_size > min(budget, n):
        raise InputError(f"seed_size {seed_size} exceeds min(budget, pool size) = {min(budget, n)}")
    capacity = budget if capacity is None else check_int(capacity, "capacity", 1)
    if capacity < budget:
        raise InputError(f"capacity ({capacity}) must be >= budget ({budget})")
    k_pool, k_init = jax.random.split(key)
    order = np.asarray(jax.random.permutation(k_pool, n))
    xs = pool[order[:seed_size]]
    first, count = query(api, xs, count)
    answers = np.asarray(first)
    spent = seed_size
    model = substitute_model(fit, api.num_classes)

    def train(xq: np.ndarray, aq: np.ndarray):
        m = len(xq)
        xp = np.zeros((capacity, *xq.shape[1:]), np.float32)
        xp[:m] = xq
        tq = np.asarray(targets_of(aq, api.output, api.num_classes))
        tp = np.zeros((capacity, api.num_classes), np.float32)
        tp[:m] = tq
        mask = (np.arange(capacity) < m).astype(np.float32)
        variables, logits_fn, _ = fit_classifier(k_init, xp, tp, mask, fit=fit)
        return variables, logits_fn

    variables, logits_fn = train(xs, answers)
    if augmentation == "jacobian":
        step = _jacobian_step(model, float(lam), *api.box)
        while spent < budget:
            new = min(len(xs), budget - spent)
            # The newest points first (Papernot's doubling augments every point; with a
            # budget cut, the last round augments the most recent ones).
            src = xs[len(xs) - new :]
            lab = _labels(answers[len(xs) - new :], api.output)
            synth = np.asarray(step(variables, jnp.asarray(src), jnp.asarray(lab, jnp.int32)))
            got, count = query(api, synth, count)
            xs = np.concatenate([xs, synth])
            answers = np.concatenate([answers, np.asarray(got)])
            spent += new
            variables, logits_fn = train(xs, answers)
    return Extraction(logits_fn, variables, xs, answers, int(count), int(seed_size))


# ----------------------------------------------------------------------------- scoring


def agreement(substitute: Callable[[Array], Array], victim: Callable[[Array], Array], x: Any,
              batch_size: int = 1024) -> np.ndarray:  # fmt: skip
    """(N,) bool: the substitute's predicted label equals the victim's, on inputs x (N, ...).

    Scoring, not attacking: the victim is called directly (its `logits_fn`), no API query.
    """
    check_array(x)
    x = np.asarray(x, np.float32)
    out = []
    for i in range(0, len(x), batch_size):
        xb = jnp.asarray(x[i : i + batch_size])
        out.append(np.asarray(jnp.argmax(substitute(xb), -1) == jnp.argmax(victim(xb), -1)))
    return np.concatenate(out) if out else np.zeros((0,), bool)
