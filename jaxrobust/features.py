"""The dataset constructions of Ilyas et al. 2019, "Adversarial Examples Are Not Bugs, They
Are Features": training sets whose labels or inputs come from a source model's features.

- D_rand (`d_rand_batch`): targeted ℓ2 PGD on a (standard) source model from x toward a
  uniformly random class t (which may equal y, as in the paper), relabelled t. The inputs
  still look like class y; only the source model's non-robust features say t, and those
  features are, by construction, uncorrelated with y.
- D_det (`d_det_batch`): the same toward the deterministic t = (y + 1) mod C, relabelled t:
  the non-robust features now predict the label deterministically, the robust ones
  contradict it (every label differs from the true class).
- D_R / D_NR (`d_robust_batch`): representation inversion of every training input: from a
  noise (or unrelated-image) start, normalised ℓ2 steps (`jaxrobust.represent.invert`)
  until the penultimate features of the source model match those of x; label y. With a
  robust source model that is D_R (robust features only), with a standard one D_NR.

Each batch function is pure and jitted (compiled once per shape and static configuration;
the model is an argument, so every checkpoint of one architecture shares the program),
works per example (example i draws its randomness from fold_in(key, i), so a batch
sharded over devices gives the results of one device), and validates concrete inputs at
once (`InputError`).

`build_dataset` runs a construction over a whole training split in fixed-size chunks,
saving each finished chunk atomically so that an interrupted build resumes where it
stopped, and stores the result as a derived tfds dataset (`jaxrobust.data.derived`) whose
name, `"derived:<folder>"`, is a dataset name like any other: `load_split(name, "train")`,
or the training config's `dataset=derived:<folder>`. Its "test" split is the source
dataset's own test split, so a model trained on the construction is tested on real data.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.attacks.pgd import label_input_checks, pgd
from jaxrobust.errors import (
    ConfigError,
    InputError,
    check_array,
    check_batch,
    check_callable,
    check_eps,
    check_int,
    check_key,
    check_number,
    eval_shape_or_name,
    screen,
)
from jaxrobust.models.adapters import as_logits_fn
from jaxrobust.provenance import git_commit
from jaxrobust.represent.inversion import invert, layer_features
from jaxrobust.threat import example_keys, input_checks, l2, unconstrained

Array = jax.Array

KINDS = ("d_rand", "d_det", "d_robust", "d_nonrobust")
"""The constructions `build_dataset` knows. d_robust and d_nonrobust are the same
inversion; the name records which kind of source model (robust or standard) was used."""

RULES = ("random", "deterministic")
STARTS = ("noise", "image")


class Constructed(NamedTuple):
    """A batch of a constructed dataset, per example.

    x: (B, ...) the new inputs, in [0, 1].
    label: (B,) int32, their labels (the target t for D_rand / D_det, y for D_R / D_NR).
    success: (B,) bool: the source model classifies x as t (D_rand / D_det); the
      relative feature error is <= tol (D_R / D_NR; all False without a tol).
    value: (B,) the construction's objective at x, lower is better: the source model's
      cross-entropy of the target class (D_rand / D_det, nats), or the relative feature
      error ‖φ(x) − φ(x_orig)‖₂ / ‖φ(x_orig)‖₂ (D_R / D_NR, unitless).
    """

    x: Array
    label: Array
    success: Array
    value: Array


# ------------------------------------------------------------------------------ targets


@functools.partial(jax.jit, static_argnames=("num_classes",))
def random_targets(key: Array, y: Array, num_classes: int) -> Array:
    """Uniform random target classes, independent of y (so t == y with probability 1/C).

    Args:
      key: PRNG key; example i uses fold_in(key, i), so a result does not depend on the
        batch's sharding.
      y: (B,) integer labels (only their number is used).
      num_classes: C.

    Returns:
      (B,) int32 in [0, C).
    """
    keys = example_keys(key, y.shape[0])
    return jax.vmap(lambda k: jax.random.randint(k, (), 0, num_classes, jnp.int32))(keys)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def deterministic_targets(y: Array, num_classes: int) -> Array:
    """t = (y + 1) mod C, (B,) int32: never the true class (for C >= 2)."""
    return ((jnp.asarray(y).astype(jnp.int32) + 1) % num_classes).astype(jnp.int32)


def other_indices(key: Array, n: int) -> Array:
    """For each of n examples, the index of a uniformly random *other* example, (n,) int32
    (the unrelated-image starts of D_R / D_NR). Needs n >= 2."""
    if n < 2:
        raise InputError(f"other_indices needs at least 2 examples, got {n}")
    shift = jax.random.randint(key, (n,), 1, n, jnp.int32)
    return (jnp.arange(n, dtype=jnp.int32) + shift) % n


# ------------------------------------------------------------------ D_rand / D_det


def _check_model_batch(logits_fn: Any, x: Any, y: Any, key: Any) -> int:
    """Static and concrete checks shared by the adversarial constructions; returns C."""
    check_callable(logits_fn, "logits_fn")
    check_array(x)
    check_array(y, "y")
    check_key(key)
    check_batch(x, y)
    screen(label_input_checks(logits_fn, x, y))
    return int(jax.eval_shape(logits_fn, x).shape[1])


@functools.partial(jax.jit, static_argnames=("rule", "steps", "num_classes"))
def _relabelled(logits_fn, x, y, key, eps, step_size, *, rule, steps, num_classes):
    target_key, attack_key = jax.random.split(key)
    if rule == "random":
        t = random_targets(target_key, y, num_classes)
    else:
        t = deterministic_targets(y, num_classes)
    r = pgd(
        logits_fn,
        x,
        y,
        attack_key,
        threat=l2(eps),
        steps=steps,
        step_size=step_size,
        target=t,
        random_start=False,
    )
    # pgd's targeted value is −CE(target): report the cross-entropy itself.
    return Constructed(r.x_adv, t, r.success, -r.value)


def relabelled_adversarial(
    logits_fn: Callable[[Array], Array],
    x: Array,
    y: Array,
    key: Array,
    *,
    eps: float | Array,
    steps: int,
    step_size: float | Array | None = None,
    rule: str = "random",
) -> Constructed:
    """Targeted ℓ2 PGD toward a new class, relabelled with it (D_rand / D_det).

    From x itself (no random start), `steps` normalised ℓ2 steps of the source model's
    target-class cross-entropy, projected onto the ℓ2 ball of radius eps around x and the
    box [0, 1]; the per-example best iterate is kept (classified as t first, then the
    lowest cross-entropy).

    Args:
      logits_fn: the source model, x (B, ...) -> (B, C) (a standard model in the paper).
      x: (B, ...) inputs in [0, 1].
      y: (B,) their true labels.
      key: PRNG key (the random targets); the same key gives the same result.
      eps: ℓ2 radius in input units (the whole example's ℓ2 norm, pixels in [0, 1]).
      steps: PGD steps.
      step_size: ℓ2 length of a step; default 2.5·eps/steps (Madry et al.).
      rule: "random" (t uniform over the C classes, D_rand) or "deterministic"
        (t = (y + 1) mod C, D_det).

    Returns:
      `Constructed(x_adv, t, success = source model predicts t, value = its CE of t)`.

    Raises:
      InputError: concrete bad input (x outside [0, 1] or non-finite, labels out of
        range, shapes that do not match, eps < 0 or non-finite, an unknown rule).
    """
    if rule not in RULES:
        raise InputError(f"rule must be one of {RULES}, got {rule!r}")
    logits_fn = as_logits_fn(logits_fn)
    num_classes = _check_model_batch(logits_fn, x, y, key)
    check_int(steps, "steps", 0)
    check_eps(eps)
    screen(input_checks(l2(eps), x))
    if step_size is None:
        step_size = 2.5 * jnp.asarray(eps, jnp.float32) / max(steps, 1)
    else:
        check_eps(step_size, "step_size")
    return _relabelled(
        logits_fn,
        jnp.asarray(x),
        jnp.asarray(y),
        key,
        jnp.asarray(eps, jnp.float32),
        jnp.asarray(step_size, jnp.float32),
        rule=rule,
        steps=steps,
        num_classes=num_classes,
    )


def d_rand_batch(logits_fn, x, y, key, *, eps, steps, step_size=None) -> Constructed:
    """D_rand on a batch: `relabelled_adversarial(..., rule="random")`."""
    return relabelled_adversarial(
        logits_fn, x, y, key, eps=eps, steps=steps, step_size=step_size, rule="random"
    )


def d_det_batch(logits_fn, x, y, key, *, eps, steps, step_size=None) -> Constructed:
    """D_det on a batch: `relabelled_adversarial(..., rule="deterministic")`."""
    return relabelled_adversarial(
        logits_fn, x, y, key, eps=eps, steps=steps, step_size=step_size, rule="deterministic"
    )


# ------------------------------------------------------------------------- D_R / D_NR


@functools.partial(jax.jit, static_argnames=("steps", "layer", "decay", "has_start", "has_tol"))
def _robust(
    features_fn, x, y, key, x_start, step_size, tol, *, steps, layer, decay, has_start, has_tol
):
    target = jax.lax.stop_gradient(layer_features(features_fn, x, layer))
    if not has_start:
        x_start = unconstrained().init(key, x) + x  # uniform noise in [0, 1]
    size = (lambda i: step_size * (1.0 - i / steps)) if decay else step_size
    r = invert(
        features_fn,
        target,
        x_start,
        key,
        steps=steps,
        step_size=size,
        layer=layer,
        tol=None,
    )
    success = r.value <= tol if has_tol else jnp.zeros_like(r.success)
    return Constructed(r.x_adv, jnp.asarray(y).astype(jnp.int32), success, r.value)


def d_robust_batch(
    features_fn: Callable[[Array], Any],
    x: Array,
    y: Array,
    key: Array,
    *,
    steps: int,
    step_size: float,
    x_start: Array | None = None,
    layer: str = "features",
    decay: bool = True,
    tol: float | None = None,
) -> Constructed:
    """D_R / D_NR on a batch: invert each input's `layer` features, keep its label.

    Minimises the relative feature error ‖φ(x') − φ(x)‖₂ / ‖φ(x)‖₂ over x' in [0, 1]
    (no ball around the start) from `x_start`, with `steps` normalised ℓ2 steps
    (`jaxrobust.represent.invert`).

    Args:
      features_fn: the source model's features, x -> {name: (B, D)} (`as_features_fn`;
        "features" is the penultimate layer) or x -> (B, D). A robust model gives D_R, a
        standard one D_NR.
      x: (B, ...) inputs in [0, 1] whose features are the targets.
      y: (B,) labels.
      key: PRNG key: draws the uniform noise starts when `x_start` is None.
      steps: gradient steps.
      step_size: ℓ2 length of the first step, input units.
      x_start: (B, ...) starts in [0, 1] (e.g. unrelated training images,
        `x[other_indices(...)]`); None: uniform noise.
      layer: the features to match.
      decay: decay the step size linearly to 0 over the steps (a precise final match);
        else constant.
      tol: optional: `success` marks a relative error <= tol.

    Returns:
      `Constructed(x_inverted, y, success = error <= tol, value = relative error)`.

    Raises:
      InputError: concrete bad input (shapes, NaN, out of [0, 1], negative step size or
        tol, a missing layer).
    """
    features_fn = as_logits_fn(features_fn)
    check_callable(features_fn, "features_fn")
    check_array(x)
    check_array(y, "y")
    check_key(key)
    check_batch(x, y)
    check_int(steps, "steps", 0)
    check_eps(step_size, "step_size")
    if tol is not None:
        check_number(tol, "tol", 0.0)
    screen(input_checks(unconstrained(), x))
    if x_start is not None:
        check_array(x_start, "x_start")
        if np.shape(x_start) != np.shape(x):
            raise InputError(
                f"x_start must have the shape of x {np.shape(x)}, got {np.shape(x_start)}"
            )
        screen(input_checks(unconstrained(), x_start, "x_start"))
    eval_shape_or_name(
        lambda: layer_features(features_fn, jnp.asarray(x), layer),
        f"the features function failed on x of shape {np.shape(x)}",
    )
    x = jnp.asarray(x)
    return _robust(
        features_fn,
        x,
        jnp.asarray(y),
        key,
        x if x_start is None else jnp.asarray(x_start),
        jnp.asarray(step_size, jnp.float32),
        jnp.asarray(0.0 if tol is None else tol, jnp.float32),
        steps=steps,
        layer=layer,
        decay=decay,
        has_start=x_start is not None,
        has_tol=tol is not None,
    )


# ------------------------------------------------------------------- resumable writer

BUILD_FILE = "build.json"
CHUNKS_DIR = "chunks"


def _digest(tree: Any) -> str:
    """sha256 of a pytree's array leaves (shapes, dtypes and bytes), 16 hex digits."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        a = np.asarray(leaf)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


class _Source(NamedTuple):
    fn: Any  # logits_fn or features_fn (a pytree)
    description: str
    digest: str
    dataset: str | None
    dataset_kwargs: dict | None = None


def _resolve_source(source: Any, kind: str, source_name: str | None) -> _Source:
    """A run directory, or a logits_fn (D_rand / D_det) / features_fn (D_R / D_NR)."""
    if isinstance(source, str | os.PathLike):
        from jaxrobust.runs import load_run

        run = load_run(source)
        fn: Callable[..., Any]
        if kind in ("d_rand", "d_det"):
            fn = run.logits_fn()
        else:
            try:
                fn = run.features_fn()
            except ConfigError as e:
                raise ConfigError(f"the run in {source}: {e}") from None
        desc = f"run {Path(source).absolute()} step {run.step}"
        kw = run.config.dataset_kwargs.to_dict() if "dataset_kwargs" in run.config else {}
        return _Source(
            fn, source_name or desc, _digest(run.state.variables()), run.config.dataset, kw or None
        )
    if not callable(source):
        raise InputError(
            f"source must be a run directory or a model function, got {type(source).__name__}"
        )
    fn = as_logits_fn(source)
    leaves = jax.tree.leaves(fn)
    # A function that carries no weights as pytree leaves (a closure) cannot be digested:
    # its name stands in (give `source_name`, or its repr, which differs between
    # processes, so that a resumed build would refuse the chunks of an earlier process).
    digest = _digest(leaves) if leaves else f"callable:{source_name or repr(source):.80}"
    return _Source(fn, source_name or repr(source)[:200], digest, None)


def _chunk_path(out: Path, i: int) -> Path:
    return out / CHUNKS_DIR / f"chunk_{i:05d}.npz"


def _save_atomic_npz(path: Path, **arrays: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _summary(kind: str, y_true: np.ndarray, c: dict[str, np.ndarray], x: np.ndarray, tol) -> dict:
    n = int(y_true.shape[0])
    out: dict[str, Any] = {"num_examples": n}
    if kind in ("d_rand", "d_det"):
        agree = int(np.sum(c["label"] == y_true))
        delta = (c["x"] - x).reshape(n, -1)
        out.update(
            targeted_success_rate=float(np.mean(c["success"])),
            label_agreement_with_true_class=agree / n,
            label_agreement_count=agree,
            chance_agreement=None,
            mean_l2_perturbation=float(np.mean(np.linalg.norm(delta, axis=1))),
            max_l2_perturbation=float(np.max(np.linalg.norm(delta, axis=1))),
            mean_target_cross_entropy=float(np.mean(c["value"])),
        )
    else:
        err = c["value"]
        # How far the inversions are from the inputs whose features they match: a
        # representation that (nearly) determines its input gives back the input itself.
        dist = np.linalg.norm((c["x"] - x).reshape(n, -1), axis=1)
        out.update(
            mean_l2_distance_to_original=float(np.mean(dist)),
            median_l2_distance_to_original=float(np.median(dist)),
        )
        out.update(
            relative_feature_error_mean=float(np.mean(err)),
            relative_feature_error_median=float(np.median(err)),
            relative_feature_error_p95=float(np.quantile(err, 0.95)),
            relative_feature_error_max=float(np.max(err)),
            tol=tol,
            fraction_within_tol=None if tol is None else float(np.mean(err <= tol)),
        )
    return out


def build_dataset(
    kind: str,
    source: Any,
    out_dir: str | os.PathLike[str],
    *,
    dataset: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    dataset_kwargs: dict[str, Any] | None = None,
    eps: float = 1.0,
    steps: int = 100,
    step_size: float | None = None,
    seed: int = 0,
    chunk_size: int = 256,
    start: str = "noise",
    layer: str = "features",
    decay: bool = True,
    tol: float | None = None,
    limit: int | None = None,
    max_chunks: int | None = None,
    source_name: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Build a constructed dataset from the training split, resumably, as a tfds dataset.

    The training split (its first `limit` records) is processed in chunks of `chunk_size`
    examples (the last one padded to that size, so one program serves all), chunk i with
    key fold_in(key(seed), i). Each finished chunk is saved atomically to
    `out_dir/chunks/chunk_<i>.npz`; a build that stops (killed, or after `max_chunks` new
    chunks) continues from the chunks on disk when called again with the same
    parameters, and gives the same dataset as an uninterrupted build. The parameters
    (with a digest of the source model's weights) are recorded in `out_dir/build.json`
    at the first call; a later call with other parameters raises `ConfigError` rather
    than mix chunks of two constructions. When every chunk is done, the train split
    (constructed examples) and the source dataset's test split are written as the
    derived dataset `"derived:<out_dir>"` (`jaxrobust.data.derived`), with the
    provenance and a summary (targeted success rate, agreement of the new labels with
    the true class; or relative feature errors) in `out_dir/dataset.json`.

    Args:
      kind: "d_rand", "d_det" (targeted ℓ2 PGD, `relabelled_adversarial`), "d_robust" or
        "d_nonrobust" (inversion, `d_robust_batch`; the name says which kind of source).
      source: a training-run directory (`jaxrobust.load_run`), or a `logits_fn` (d_rand,
        d_det) / `features_fn` (d_robust, d_nonrobust). The provenance digests the
        weights of a run or of an adapted model (`as_logits_fn(module, variables)`,
        `as_features_fn`); a closure has none to digest: name it with `source_name` so
        that a build resumed in another process recognises it.
      out_dir: the dataset's folder.
      dataset: the source dataset (default: the run's; "digits" for a function).
      data_dir: where the source dataset is prepared.
      dataset_kwargs: the source dataset's parameters (e.g. shapes' {"planted": True});
        default: the run's own when `dataset` is not given, else none. Recorded in the
        build parameters; the derived test split is the test split of that variant.
      eps: the ℓ2 radius (d_rand / d_det only).
      steps: PGD or inversion steps.
      step_size: step size (default 2.5·eps/steps for PGD; required for the inversion).
      seed: the construction's PRNG seed.
      chunk_size: examples per chunk (a multiple of the device count shards it evenly).
      start: inversion starts: "noise" (uniform in [0, 1]) or "image" (a random other
        training image, drawn once for the whole split from the seed).
      layer: the inversion's layer.
      decay: the inversion's step decay.
      tol: the inversion's success threshold.
      limit: use only the first `limit` training records.
      max_chunks: compute at most this many new chunks in this call, then return (the
        build stays incomplete until a later call finishes it).
      source_name: how the provenance names the source (default: the run directory or
        the function's repr).
      progress: show a tqdm bar.

    Returns:
      A summary dict: "complete" (bool), "chunks_done", "num_chunks", and when complete
      "name" (the dataset name), "summary" (the construction's statistics) and
      "provenance".

    One process writes the folder (multi-host builds are not supported); the chunks
    themselves are sharded over the process's devices when `chunk_size` is a multiple of
    their number.

    Raises:
      ConfigError: parameters differ from the build already in `out_dir`; a bad kind,
        start or chunk size.
      InputError: bad construction parameters (see the batch functions).
    """
    from jaxrobust.data import get_info, load_split
    from jaxrobust.data.derived import write_derived
    from jaxrobust.parallel import shard_examples

    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {KINDS}, got {kind!r}")
    if start not in STARTS:
        raise ConfigError(f"start must be one of {STARTS}, got {start!r}")
    check_int(chunk_size, "chunk_size", 1)
    check_int(steps, "steps", 0)
    if max_chunks is not None:
        check_int(max_chunks, "max_chunks", 0)
    adversarial = kind in ("d_rand", "d_det")
    if adversarial:
        check_eps(eps)
    elif step_size is None:
        raise ConfigError("the inversion (d_robust, d_nonrobust) needs a step_size")
    src = _resolve_source(source, kind, source_name)
    if dataset_kwargs is None and dataset is None:
        dataset_kwargs = src.dataset_kwargs
    dataset = dataset or src.dataset or "digits"
    dataset_kwargs = dict(dataset_kwargs) if dataset_kwargs else None
    info = get_info(dataset)
    x_all, y_all = load_split(
        dataset, "train", data_dir=data_dir, limit=limit, dataset_kwargs=dataset_kwargs
    )
    n = int(y_all.shape[0])
    if not adversarial and start == "image" and n < 2:
        raise ConfigError("start='image' needs at least 2 training examples")
    num_chunks = math.ceil(n / chunk_size)

    params = {
        "kind": kind,
        "dataset": dataset,
        "num_examples": n,
        "source_digest": src.digest,
        "seed": int(seed),
        "chunk_size": int(chunk_size),
        "steps": int(steps),
        "step_size": None if step_size is None else float(step_size),
    }
    if dataset_kwargs:  # absent when none, so that earlier builds still resume
        params["dataset_kwargs"] = {k: dataset_kwargs[k] for k in sorted(dataset_kwargs)}
    if adversarial:
        params.update(eps=float(eps), threat="l2", targets="random" if kind == "d_rand" else "y+1")
    else:
        params.update(start=start, layer=layer, decay=bool(decay), tol=tol, objective="relative")
    params_digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]

    out = Path(out_dir).expanduser().absolute()
    (out / CHUNKS_DIR).mkdir(parents=True, exist_ok=True)
    build_path = out / BUILD_FILE
    if build_path.exists():
        previous = json.loads(build_path.read_text())
        if previous.get("params") != params:
            old = previous.get("params", {})
            diff = sorted(k for k in set(old) | set(params) if old.get(k) != params.get(k))
            raise ConfigError(
                f"{out} holds a build with other parameters (differs in: {', '.join(diff)}); "
                "use another out_dir, or the same parameters to resume it"
            )
        provenance = previous
    else:
        provenance = {
            "params": params,
            "params_digest": params_digest,
            "source": src.description,
            "git_commit": git_commit(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "construction": "Ilyas et al. 2019, 'Adversarial Examples Are Not Bugs, They "
            "Are Features'",
        }
        _write_json_atomic(build_path, provenance)

    base_key = jax.random.key(seed)
    starts_idx = None
    if not adversarial and start == "image":
        starts_idx = np.asarray(other_indices(jax.random.fold_in(base_key, 2**31 - 1), n))

    def compute(i: int) -> dict[str, np.ndarray]:
        idx = np.arange(i * chunk_size, min(n, (i + 1) * chunk_size))
        padded = np.concatenate([idx, np.full(chunk_size - idx.size, idx[-1])])
        x, y = x_all[padded], y_all[padded]
        key = jax.random.fold_in(base_key, i)
        if jax.device_count() > 1 and chunk_size % jax.device_count() == 0:
            x_dev, y_dev = shard_examples(x, y)
        else:
            x_dev, y_dev = jnp.asarray(x), jnp.asarray(y)
        if adversarial:
            c = relabelled_adversarial(
                src.fn,
                x_dev,
                y_dev,
                key,
                eps=eps,
                steps=steps,
                step_size=step_size,
                rule="random" if kind == "d_rand" else "deterministic",
            )
        else:
            x_start = None
            if starts_idx is not None:
                x_start = x_all[starts_idx[padded]]
                if jax.device_count() > 1 and chunk_size % jax.device_count() == 0:
                    x_start = shard_examples(x_start)
            assert step_size is not None  # the inversion requires it: checked above
            c = d_robust_batch(
                src.fn,
                x_dev,
                y_dev,
                key,
                steps=steps,
                step_size=step_size,
                x_start=x_start,
                layer=layer,
                decay=decay,
                tol=tol,
            )
        k = idx.size
        return {
            "x": np.asarray(c.x)[:k],
            "label": np.asarray(c.label)[:k],
            "success": np.asarray(c.success)[:k],
            "value": np.asarray(c.value)[:k],
            "index": idx,
        }

    def load(i: int) -> dict[str, np.ndarray] | None:
        """Chunk i from disk; None when missing or damaged (then computed again)."""
        path = _chunk_path(out, i)
        if not path.exists():
            return None
        try:
            with np.load(path) as z:
                digest = str(z["params_digest"])
                arrays = {k: z[k] for k in ("x", "label", "success", "value", "index")}
        except (OSError, ValueError, KeyError, EOFError):
            return None
        if digest != params_digest:
            raise ConfigError(
                f"{path} was built with other parameters than {build_path} records; "
                "remove it (or the whole folder) to rebuild"
            )
        return arrays

    chunks = [load(i) for i in range(num_chunks)]
    todo = [i for i, c in enumerate(chunks) if c is None]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_chunks, initial=num_chunks - len(todo), desc=kind, unit="chunk")
    new = 0
    t0 = time.perf_counter()
    for i in todo:
        if max_chunks is not None and new >= max_chunks:
            break
        chunk = compute(i)
        chunks[i] = chunk
        _save_atomic_npz(_chunk_path(out, i), params_digest=np.asarray(params_digest), **chunk)
        new += 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    done = sum(c is not None for c in chunks)
    if done < num_chunks:
        return {"complete": False, "chunks_done": done, "num_chunks": num_chunks}

    from jaxrobust.data.derived import INFO_FILE, derived_name

    if new == 0 and (out / INFO_FILE).is_file():  # finished before: leave it as it is
        meta = json.loads((out / INFO_FILE).read_text())
        return {
            "complete": True,
            "chunks_done": done,
            "num_chunks": num_chunks,
            "name": derived_name(out),
            "summary": meta.get("summary"),
            "provenance": meta.get("provenance"),
        }
    full = [c for c in chunks if c is not None]  # all of them: done == num_chunks
    cat = {k: np.concatenate([c[k] for c in full]) for k in full[0]}
    if not np.array_equal(cat["index"], np.arange(n)):
        raise ConfigError(f"the chunks in {out / CHUNKS_DIR} do not cover the split in order")
    summary = _summary(kind, y_all, cat, x_all, tol)
    if kind in ("d_rand", "d_det"):
        summary["chance_agreement"] = 1.0 / info.num_classes if kind == "d_rand" else 0.0
    provenance = {
        **provenance,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "last_call_seconds": seconds,
    }
    splits = {"train": (cat["x"], cat["label"])}
    for split in info.splits:
        if split != "train":
            splits[split] = load_split(
                dataset, split, data_dir=data_dir, dataset_kwargs=dataset_kwargs
            )
    name = write_derived(
        out,
        splits,
        num_classes=info.num_classes,
        mean=info.mean,
        std=info.std,
        augment=info.augment,
        flip=info.flip,
        description=f"{kind} (Ilyas et al. 2019) built from {dataset} with {src.description}",
        metadata={"provenance": provenance, "summary": summary, "source_dataset": dataset},
    )
    return {
        "complete": True,
        "chunks_done": done,
        "num_chunks": num_chunks,
        "name": name,
        "summary": summary,
        "provenance": provenance,
    }
