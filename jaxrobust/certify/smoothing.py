"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): certified ℓ2 robustness.

The smoothed classifier g(x) = argmax_c P(f(x + ε) = c), ε ~ N(0, σ²I), of a base
classifier f is constant on the ℓ2 ball of radius σ·Φ⁻¹(p_A) around x when the top class
has probability p_A > 1/2 (Theorem 1 of the paper). p_A is estimated by Monte Carlo:

- `predict` (the paper's PREDICT): n noise samples, the top two classes' counts, a
  two-sided binomial test at level α; abstains (`ABSTAIN`) when the test does not reject
  a tie. It returns a wrong class with probability at most α.
- `certify` (CERTIFY): n0 samples select the top class c_A, n fresh samples count it;
  the one-sided Clopper–Pearson lower confidence bound p_A_lower at level 1 − α gives the
  radius σ·Φ⁻¹(p_A_lower); it abstains when p_A_lower <= 1/2. With probability at least
  1 − α (per example), a returned class is g(x) and the radius is certified.

Noise is drawn per (example, sample) from `fold_in(fold_in(key, example_index),
sample_index)`, so a certificate depends only on the key, the example and its index in
the data set: not on the batch size, the chunk size (how many samples per example go
through the model at once) or the number of devices, and an interrupted run resumes
exactly. The noise is not clipped to the input box (the theorem is about the unclipped
Gaussian).

The counting program (`sample_counts`) is pure, jittable and vmappable; `predict` and
`certify` are host-side drivers (statistics in SciPy, like `evaluate`) that run it over
padded, fixed-shape batches sharded over the devices (`jaxrobust.parallel`).

Gaussian-noise training of the base classifier is the training objective
`jaxrobust.train.objectives.gaussian_noise` (config `objective=gaussian_noise`,
`smoothing.sigma`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrobust.errors import (
    InputError,
    check_array,
    check_callable,
    check_int,
    check_key,
    check_labels,
    check_number,
    check_range,
    eval_shape_or_name,
)
from jaxrobust.parallel import replicate, shard_global_batch

Array = jax.Array
LogitsFn = Callable[[Array], Array]

ABSTAIN = -1
"""The class `predict` and `certify` return where the smoothed classifier abstains."""

DEFAULT_CHUNK = 1000
"""Noise samples per example in one pass through the model (memory: batch · chunk inputs)."""


class Prediction(NamedTuple):
    """`predict`'s per-example outcome (N examples).

    prediction: (N,) int, the smoothed class or `ABSTAIN`; count_a, count_b: (N,) the noise
    samples (of n) classified as the top and the runner-up class; p_value: (N,) the
    two-sided binomial test's p-value of count_a against a tie (abstain when > alpha).
    """

    prediction: np.ndarray
    count_a: np.ndarray
    count_b: np.ndarray
    p_value: np.ndarray


class Certificate(NamedTuple):
    """`certify`'s per-example outcome (N examples) and how it was obtained.

    prediction: (N,) int, the smoothed class or `ABSTAIN`; radius: (N,) the certified ℓ2
    radius σ·Φ⁻¹(p_a_lower) in input units (0 where abstaining); p_a_lower: (N,) the
    Clopper–Pearson lower bound on p_A at level 1 − alpha; count: (N,) of the n estimation
    samples classified as the selected class. sigma, n0, n, alpha: the settings.
    """

    prediction: np.ndarray
    radius: np.ndarray
    p_a_lower: np.ndarray
    count: np.ndarray  # type: ignore[assignment]  # field shadows tuple.count (works at runtime)
    sigma: float
    n0: int
    n: int
    alpha: float


# ------------------------------------------------------------------------ validation


def _check_sigma(sigma: Any) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, int | float | np.integer | np.floating):
        raise InputError(
            f"sigma must be a number > 0 (the noise's standard deviation), got {sigma!r}"
        )
    s = float(sigma)
    if not np.isfinite(s) or s <= 0:
        raise InputError(
            f"sigma must be a finite number > 0 (the noise's standard deviation, in input "
            f"units), got {sigma!r}"
        )
    return s


def _check_alpha(alpha: Any) -> float:
    return check_number(
        alpha, "alpha (the failure probability)", 0.0, 1.0, lo_open=True, hi_open=True
    )


def _check_samples(v: Any, name: str) -> int:
    return check_int(v, f"{name} (a number of noise samples)", 1)


def _check_inputs(logits_fn: Any, x: Any, lo: float, hi: float) -> int:
    """Validate the model and inputs; return the number of classes."""
    check_callable(logits_fn, "logits_fn")
    check_array(x)
    if np.shape(x)[0] == 0:
        raise InputError("x is empty: give at least one example")
    if not np.issubdtype(np.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype, np.floating):
        raise InputError(f"x must hold floating-point inputs, got dtype {np.asarray(x).dtype}")
    check_range(x, lo, hi)
    one = jax.ShapeDtypeStruct((1, *np.shape(x)[1:]), jnp.float32)
    out = eval_shape_or_name(lambda: logits_fn(jnp.zeros(one.shape, one.dtype)), "logits_fn")
    if len(getattr(out, "shape", ())) != 2 or out.shape[0] != 1:
        raise InputError(
            f"the model must return logits of shape (batch, num_classes), got "
            f"{getattr(out, 'shape', type(out).__name__)} for a batch of 1"
        )
    if out.shape[1] < 2:
        raise InputError(f"the model must have at least 2 classes, got {out.shape[1]}")
    return int(out.shape[1])


# ------------------------------------------------------------------------- sampling


def sample_counts(
    logits_fn: LogitsFn,
    x: Array,
    key: Array,
    *,
    sigma: float | Array,
    num: int,
    num_classes: int,
    chunk: int = DEFAULT_CHUNK,
    offset: int | Array = 0,
) -> Array:
    """How often the base classifier picks each class under Gaussian noise, per example.

    Pure and jittable (`num`, `num_classes`, `chunk` static) and vmappable; the memory
    is bounded by the chunk: B·min(chunk, num) noisy inputs go through the model at once.

    Args:
      logits_fn: the base classifier, x (B, ...) -> logits (B, num_classes).
      x: (B, ...) inputs.
      key: PRNG key; example i's noise comes from fold_in(key, offset + i) (see `noise`).
      sigma: the noise's standard deviation (input units).
      num: noise samples per example.
      num_classes: the model's number of classes.
      chunk: samples per example per pass through the model (the last pass is masked).
      offset: the index of x[0] in the data set (so that batches of one data set get
        distinct noise and results do not depend on how the data set is batched).
    Returns:
      (B, num_classes) int32 counts, summing to `num` per example.
    """
    b, shape = x.shape[0], x.shape[1:]
    chunk = max(1, min(int(chunk), int(num)))
    passes = -(-int(num) // chunk)
    index = offset + jnp.arange(b)

    def body(j, counts):
        start = j * chunk
        eps = noise(key, index, start, chunk, shape, x.dtype)  # (B, chunk, ...)
        noisy = x[:, None] + sigma * eps
        logits = logits_fn(noisy.reshape(b * chunk, *shape))
        pred = jnp.argmax(logits, axis=-1).reshape(b, chunk)
        valid = (start + jnp.arange(chunk)) < num
        hits = jax.nn.one_hot(pred, num_classes, dtype=jnp.int32) * valid[None, :, None]
        return counts + hits.sum(axis=1)

    counts = jnp.zeros((b, num_classes), jnp.int32)
    if passes == 1:
        return body(0, counts)
    return jax.lax.fori_loop(0, passes, body, counts)


def noise(
    key: Array, index: Array, start: Array | int, samples: int, shape: Sequence[int], dtype: Any
) -> Array:
    """Standard normal noise (B, samples, *shape) for the examples `index` (B,): draw s
    (s = start, ..., start + samples − 1) of example i comes from fold_in(fold_in(key, i), s),
    so it does not depend on how examples and samples are grouped into passes."""
    sample_ids = start + jnp.arange(samples)

    def draws(example_key: Array) -> Array:
        keys = jax.vmap(jax.random.fold_in, (None, 0))(example_key, sample_ids)
        return jax.vmap(lambda k: jax.random.normal(k, shape, dtype))(keys)

    return jax.vmap(draws)(jax.vmap(jax.random.fold_in, (None, 0))(key, index))


# ------------------------------------------------------------------ host-side driver


@functools.lru_cache(maxsize=64)
def _program(num: int, num_classes: int, chunk: int, mesh: Mesh | None) -> Callable:
    def run(model, x, key, offset, sigma):
        return sample_counts(
            model, x, key, sigma=sigma, num=num, num_classes=num_classes, chunk=chunk, offset=offset
        )

    kwargs: dict[str, Any] = (
        {} if mesh is None else {"out_shardings": NamedSharding(mesh, PartitionSpec())}
    )
    return jax.jit(run, **kwargs)


def _select_mesh(batch_size: int, devices: Any) -> Mesh | None:
    from jaxrobust.attacks.eval_plan import select_mesh

    return select_mesh(batch_size, devices)


class _Counter:
    """Counts for a whole data set, in padded fixed-shape batches sharded over devices."""

    def __init__(self, logits_fn: LogitsFn, num_classes: int, batch_size: int, chunk: int, devices):
        self.mesh = _select_mesh(batch_size, devices)
        model = logits_fn if isinstance(logits_fn, jax.tree_util.Partial) else None
        if model is None:  # a plain callable: carried as the static part of a Partial
            model = jax.tree_util.Partial(logits_fn)
        self.model = model if self.mesh is None else replicate(model, self.mesh)
        self.num_classes, self.batch_size, self.chunk = num_classes, batch_size, chunk

    def __call__(self, x: np.ndarray, key: Array, start: int, num: int, sigma: float) -> np.ndarray:
        """(len(x), C) counts of the examples start, ..., start + len(x) − 1."""
        m = len(x)
        pad = self.batch_size - m
        xb: np.ndarray | Array = np.concatenate([x, np.repeat(x[:1], pad, axis=0)]) if pad else x
        xb = jnp.asarray(xb) if self.mesh is None else shard_global_batch(xb, self.mesh)
        # The chunk is clamped here too, so that settings that run the same passes share
        # one compiled program.
        program = _program(num, self.num_classes, min(self.chunk, num), self.mesh)
        counts = program(self.model, xb, key, jnp.int32(start), jnp.float32(sigma))
        return np.asarray(counts)[:m]


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def _common_args(logits_fn, x, key, sigma, batch_size, chunk, lo, hi):
    num_classes = _check_inputs(logits_fn, x, lo, hi)
    check_key(key)
    sigma = _check_sigma(sigma)
    batch_size = check_int(batch_size, "batch_size", 1)
    chunk = check_int(chunk, "chunk", 1)
    return num_classes, sigma, batch_size, chunk


def binomial_p_value(count_a: Any, count_b: Any) -> np.ndarray:
    """Two-sided exact binomial test of count_a successes in count_a + count_b trials
    against p = 1/2 (count_a >= count_b): min(1, 2·P(Bin(count_a + count_b, 1/2) <= count_b))."""
    from scipy.stats import binom

    a, b = np.asarray(count_a), np.asarray(count_b)
    return np.minimum(1.0, 2.0 * binom.cdf(np.minimum(a, b), a + b, 0.5))


def clopper_pearson_lower(count: Any, n: int, alpha: float) -> np.ndarray:
    """One-sided Clopper–Pearson lower confidence bound at level 1 − alpha on a binomial
    proportion from `count` successes in `n` trials: Beta(alpha; count, n − count + 1),
    and 0 for count = 0."""
    from scipy.stats import beta

    c = np.asarray(count, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        low = beta.ppf(alpha, np.maximum(c, 1), n - c + 1)
    return np.where(c > 0, low, 0.0)


def predict(
    logits_fn: LogitsFn,
    x: Any,
    key: Array,
    *,
    sigma: float,
    n: int = 10_000,
    alpha: float = 0.001,
    batch_size: int = 32,
    chunk: int = DEFAULT_CHUNK,
    lo: float = 0.0,
    hi: float = 1.0,
    devices: int | Sequence[Any] | None = None,
) -> Prediction:
    """The smoothed classifier's prediction (Cohen et al.'s PREDICT), or `ABSTAIN`.

    Host-side: call it eagerly, not inside `jax.jit`.

    Args:
      logits_fn: the base classifier, x (B, ...) -> logits (B, C).
      x: (N, ...) inputs in [lo, hi].
      key: PRNG key; the same key and inputs give the same predictions.
      sigma: noise standard deviation (> 0, input units).
      n: noise samples per example (>= 1).
      alpha: the test's level in (0, 1): a returned class is wrong (not g(x)) with
        probability at most alpha.
      batch_size: examples per compiled batch (padded; sharded over the devices when a
        multiple of their count); chunk: noise samples per example per model pass.
      devices: as in `evaluate`.
    Returns:
      `Prediction`.
    Raises:
      InputError: sigma <= 0, n < 1, alpha outside (0, 1), an empty or malformed x,
        inputs outside [lo, hi] or non-finite, a model that does not return (B, C) logits.
    """
    num_classes, sigma, batch_size, chunk = _common_args(
        logits_fn, x, key, sigma, batch_size, chunk, lo, hi
    )
    n = _check_samples(n, "n")
    alpha = _check_alpha(alpha)
    x = np.asarray(x, dtype=np.float32)
    counter = _Counter(logits_fn, num_classes, batch_size, chunk, devices)
    counts = np.concatenate(
        [counter(x[s:e], key, s, n, sigma) for s, e in _batches(len(x), batch_size)]
    )
    order = np.argsort(-counts, axis=1, kind="stable")
    top, second = order[:, 0], order[:, 1]
    rows = np.arange(len(x))
    count_a, count_b = counts[rows, top], counts[rows, second]
    p = binomial_p_value(count_a, count_b)
    prediction = np.where(p <= alpha, top, ABSTAIN).astype(np.int64)
    return Prediction(prediction, count_a, count_b, p)


def _state_signature(key: Array, x: np.ndarray, **settings: Any) -> dict:
    import hashlib

    data = np.asarray(jax.random.key_data(key) if _is_typed_key(key) else key)
    return {
        **settings,
        "key": data.ravel().tolist(),
        "num_examples": len(x),
        "x_sha256": hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest(),
    }


def _is_typed_key(key: Array) -> bool:
    return jax.dtypes.issubdtype(getattr(key, "dtype", np.uint32), jax.dtypes.prng_key)


def certify(
    logits_fn: LogitsFn,
    x: Any,
    key: Array,
    *,
    sigma: float,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    batch_size: int = 32,
    chunk: int = DEFAULT_CHUNK,
    lo: float = 0.0,
    hi: float = 1.0,
    devices: int | Sequence[Any] | None = None,
    state_file: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Certificate:
    """Certified ℓ2 radii of the smoothed classifier (Cohen et al.'s CERTIFY).

    Per example: the top class c_A of n0 noise samples (key fold_in(key, 0)); its count
    among n fresh samples (fold_in(key, 1)); p_A_lower, the one-sided Clopper–Pearson
    lower bound at level 1 − alpha; radius σ·Φ⁻¹(p_A_lower), or `ABSTAIN` (radius 0) when
    p_A_lower <= 1/2. Host-side: call it eagerly.

    Args:
      logits_fn: the base classifier, x (B, ...) -> logits (B, C); a
        `jax.tree_util.Partial` carrying its weights (`TrainState.logits_fn()`,
        `jr.as_logits_fn`) is passed to the compiled program as an argument.
      x: (N, ...) inputs in [lo, hi].
      key: PRNG key; the same key and inputs give the same certificates, whatever the
        batch size, chunk or devices.
      sigma: noise standard deviation (> 0, input units).
      n0: selection samples per example (>= 1).
      n: estimation samples per example (>= 1).
      alpha: failure probability in (0, 1).
      batch_size: examples per compiled batch (padded; sharded over the devices when a
        multiple of their count); chunk: noise samples per example per model pass
        (memory: batch_size · chunk inputs at once).
      devices: as in `evaluate`: None = all devices when batch_size is a multiple of
        their count.
      state_file: a JSON file recording finished batches; a rerun with the same
        arguments (key, settings, inputs) goes on after them, one with other arguments
        starts afresh.
      progress: called with (examples done, N) after each batch.
    Returns:
      `Certificate`.
    Raises:
      InputError: sigma <= 0, n0 or n < 1, alpha outside (0, 1), an empty or malformed
        x, inputs outside [lo, hi] or non-finite, a model that does not return logits.
    """
    from scipy.stats import norm

    num_classes, sigma, batch_size, chunk = _common_args(
        logits_fn, x, key, sigma, batch_size, chunk, lo, hi
    )
    n0 = _check_samples(n0, "n0")
    n = _check_samples(n, "n")
    alpha = _check_alpha(alpha)
    x = np.asarray(x, dtype=np.float32)
    total = len(x)
    signature = _state_signature(key, x, sigma=sigma, n0=n0, n=n, alpha=alpha, chunk=chunk)
    prediction = np.full(total, ABSTAIN, np.int64)
    count = np.zeros(total, np.int64)
    done = 0
    path = Path(state_file) if state_file is not None else None
    if path is not None and path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            saved = None
        if saved and saved.get("signature") == signature:
            done = int(saved["done"])
            prediction[:done] = saved["prediction"][:done]
            count[:done] = saved["count"][:done]
    counter = _Counter(logits_fn, num_classes, batch_size, chunk, devices)
    k_select, k_estimate = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
    for s, e in _batches(total, batch_size):
        if e <= done:
            continue
        xb = x[s:e]
        selected = np.argmax(counter(xb, k_select, s, n0, sigma), axis=1)
        counts = counter(xb, k_estimate, s, n, sigma)
        prediction[s:e] = selected
        count[s:e] = counts[np.arange(e - s), selected]
        done = e
        if path is not None:
            _write_state(path, signature, done, prediction, count)
        if progress is not None:
            progress(done, total)
    p_lower = clopper_pearson_lower(count, n, alpha)
    certified = p_lower > 0.5
    radius = np.where(certified, sigma * norm.ppf(np.where(certified, p_lower, 0.75)), 0.0)
    prediction = np.where(certified, prediction, ABSTAIN)
    return Certificate(prediction, radius, p_lower, count, sigma, n0, n, alpha)


def _write_state(path: Path, signature: dict, done: int, prediction, count) -> None:
    """Write atomically, so that an interrupt never leaves a half-written state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    data = {
        "signature": signature,
        "done": done,
        "prediction": prediction[:done].tolist(),
        "count": count[:done].tolist(),
    }
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


# --------------------------------------------------------------------- summaries


def certified_accuracy(
    certificate: Certificate, y: Any, radii: float | np.ndarray | Sequence[float]
) -> np.ndarray:
    """Fraction of examples certified correct at each radius: prediction == y and
    certified radius >= r (Cohen et al.'s approximate certified accuracy).

    Args:
      certificate: `certify`'s result for N examples.
      y: (N,) integer labels.
      radii: one ℓ2 radius or several (finite, >= 0).
    Returns:
      (len(radii),) fractions in [0, 1] (a 0-d array for one radius).
    Raises:
      InputError: y of the wrong shape or dtype, a negative or non-finite radius.
    """
    pred, radius = np.asarray(certificate.prediction), np.asarray(certificate.radius)
    y = np.asarray(y)
    if y.shape != pred.shape:
        raise InputError(
            f"y must hold one label per certified example, shape {pred.shape}, got {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"y must hold integer class labels, got dtype {y.dtype}")
    check_labels(y, np.iinfo(np.int32).max)
    r = np.asarray(radii, dtype=np.float64)
    if not np.all(np.isfinite(r)) or np.any(r < 0):
        raise InputError(f"radii must be finite and >= 0, got {radii!r}")
    correct = pred == y
    hit = correct[None, :] & (radius[None, :] >= r.reshape(-1, 1))
    out = hit.mean(axis=1)
    return out.reshape(r.shape)


def certified_accuracy_curve(
    certificate: Certificate, y: Any, radii: np.ndarray | Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(radii, certified accuracy at each): the certified-accuracy-vs-radius curve.
    Default radii: 0 to the largest certified radius (or σ·4 if larger), 41 points."""
    if radii is None:
        top = max(float(np.max(certificate.radius, initial=0.0)), 4 * certificate.sigma)
        radii = np.linspace(0.0, top, 41)
    r = np.asarray(radii, dtype=np.float64)
    return r, certified_accuracy(certificate, y, r)


def max_radius(n: int, alpha: float, sigma: float) -> float:
    """The largest radius `certify` can return with n samples: all n count the top class,
    p_A_lower = alpha^(1/n), radius σ·Φ⁻¹(alpha^(1/n))."""
    from scipy.stats import norm

    return float(sigma * norm.ppf(clopper_pearson_lower(n, n, alpha)))


# ------------------------------------------------------------------------ attacks


def smoothed_logits_fn(
    logits_fn: LogitsFn, key: Array, *, sigma: float, samples: int = 32
) -> LogitsFn:
    """A differentiable surrogate of the smoothed classifier for attacks (EOT):
    log of the mean softmax of the base classifier over `samples` Gaussian noise draws,
    the same draws at every call (per example position, from `key`), as in SmoothAdv
    (Salman et al. 2019). Returns x (B, ...) -> (B, C) log-probabilities.
    """
    sigma = _check_sigma(sigma)
    samples = _check_samples(samples, "samples")
    check_key(key)

    def fn(x: Array) -> Array:
        b, shape = x.shape[0], x.shape[1:]
        eps = noise(key, jnp.arange(b), 0, samples, shape, x.dtype)
        logits = logits_fn((x[:, None] + sigma * eps).reshape(b * samples, *shape))
        logp = jax.nn.log_softmax(logits).reshape(b, samples, -1)
        return jax.nn.logsumexp(logp, axis=1) - jnp.log(samples)

    return fn


class AttackCheck(NamedTuple):
    """`attack_certificates`' outcome over the N examples of a certificate.

    attacked: (N,) bool, the examples attacked (certified correct: prediction == y and
    radius > 0); x_adv: (N, ...) the attack's input (x where not attacked), within the
    certified radius; surrogate_fooled: (N,) bool, the EOT surrogate misclassifies x_adv;
    prediction: (N,) `predict`'s smoothed class at x_adv with fresh noise (-2 where not
    attacked); violated: (N,) bool, a returned class other than y at x_adv (abstaining is
    no violation).
    """

    attacked: np.ndarray
    x_adv: np.ndarray
    surrogate_fooled: np.ndarray
    prediction: np.ndarray
    violated: np.ndarray


def attack_certificates(
    logits_fn: LogitsFn,
    x: Any,
    y: Any,
    certificate: Certificate,
    key: Array,
    *,
    eot_samples: int = 32,
    steps: int = 100,
    losses: Sequence[str] = ("ce", "dlr"),
    n: int | None = None,
    alpha: float | None = None,
    batch_size: int = 32,
    chunk: int = DEFAULT_CHUNK,
    lo: float = 0.0,
    hi: float = 1.0,
) -> AttackCheck:
    """Try to break each certificate: attack the smoothed classifier inside the radius.

    Every example certified correct is attacked at ℓ2 ε = its certified radius by APGD
    (each loss of `losses`, the library's `rand` suite for randomised models) on the EOT
    surrogate `smoothed_logits_fn` (log of the mean softmax over `eot_samples` fixed noise
    draws); the smoothed prediction at each attack's input is then re-estimated with
    fresh noise by `predict` (n samples, level alpha; default the certificate's). A
    violation is a returned class other than y at any attack's input. A sound certificate
    is violated only through the failure probabilities of `certify` and `predict` (at
    most about 2·alpha per example).

    Returns:
      `AttackCheck` (x_adv and the prediction of the first loss whose input was violated,
      else of the last loss).
    Raises:
      InputError: as `predict`, or labels / a certificate that do not match x.
    """
    from jaxrobust.attacks.apgd import apgd
    from jaxrobust.threat import l2

    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    num_classes = _check_inputs(logits_fn, x, lo, hi)
    check_key(key)
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"y must hold {len(x)} integer labels, got shape {y.shape} {y.dtype}")
    check_labels(y, num_classes)
    if np.shape(certificate.prediction) != (len(x),):
        raise InputError(
            f"the certificate covers {np.shape(certificate.prediction)} examples, x has {len(x)}"
        )
    n = certificate.n if n is None else _check_samples(n, "n")
    alpha = certificate.alpha if alpha is None else _check_alpha(alpha)
    eot_samples = _check_samples(eot_samples, "eot_samples")
    steps = check_int(steps, "steps", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    sigma = certificate.sigma
    radius = np.asarray(certificate.radius, np.float32)
    attacked = (np.asarray(certificate.prediction) == y) & (radius > 0)
    idx = np.flatnonzero(attacked)
    x_adv = x.copy()
    fooled = np.zeros(len(x), bool)
    prediction = np.full(len(x), -2, np.int64)
    violated = np.zeros(len(x), bool)
    if not len(idx):
        return AttackCheck(attacked, x_adv, fooled, prediction, violated)
    k_eot, k_attack, k_predict = (jax.random.fold_in(key, i) for i in range(3))
    surrogate = smoothed_logits_fn(logits_fn, k_eot, sigma=sigma, samples=eot_samples)
    attack = jax.jit(
        lambda xb, yb, eps, k, loss: apgd(
            surrogate, xb, yb, k, threat=l2(eps, lo=lo, hi=hi), steps=steps, loss=loss
        ),
        static_argnames="loss",
    )
    for li, loss in enumerate(losses):
        for s in range(0, len(idx), batch_size):
            rows = idx[s : s + batch_size]
            pad = batch_size - len(rows)
            take = np.concatenate([rows, np.repeat(rows[:1], pad)])
            res = attack(
                jnp.asarray(x[take]),
                jnp.asarray(y[take], jnp.int32),
                jnp.asarray(radius[take]),
                jax.random.fold_in(k_attack, li * len(idx) + s),
                loss,
            )
            cand = np.asarray(res.x_adv)[: len(rows)]
            pred = predict(
                logits_fn,
                cand,
                jax.random.fold_in(k_predict, li * len(idx) + s),
                sigma=sigma,
                n=n,
                alpha=alpha,
                batch_size=batch_size,
                chunk=chunk,
                lo=lo,
                hi=hi,
            ).prediction
            bad = (pred != ABSTAIN) & (pred != y[rows])
            keep = ~violated[rows]  # the first violating input is kept
            x_adv[rows[keep]] = cand[keep]
            prediction[rows[keep]] = pred[keep]
            fooled[rows] |= np.asarray(res.success)[: len(rows)]
            violated[rows] |= bad
    return AttackCheck(attacked, x_adv, fooled, prediction, violated)
