"""Real-data helpers for the paper reproductions on the offline UCI digits (not an experiment:
the leading `_` keeps it out of `jaxrobust experiment`'s list).

Everything is a pure function of explicit PRNG keys. Training uses the library's own pieces
(`create_model`, `TrainState`, `make_train_step`, the `standard` / `pgd_at(linf(ε))`
objectives, optax) driven by `lax.scan`; a *configuration* is (ε_train, subset, seed), and
`train_many` vmaps the whole training run over a flat batch of configurations, so a sweep
over n, seeds or ε_train compiles once and runs as one batched program on CPU.

Subsets are prefixes of a class-balanced ordering of the training set (`balanced_order`):
the subset of size n is `order[:n]`, so subsets of one ordering are nested, and every prefix
holds ⌊n/10⌋ or ⌈n/10⌉ examples of each class (while every class still has examples left).
Training batches are drawn with replacement from the subset, so every n gets the same
number of steps and the same batch shape (one compiled program for all n).

Images are (N, 8, 8, 1) float32 in [0, 1] (pixel counts / 16); ε is in the same units.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrobust as jr
from jaxrobust import report
from jaxrobust.data import get_info, load_split
from jaxrobust.models import create_model
from jaxrobust.train import TrainState, make_train_step, pgd_at, standard

Array = jax.Array
INFO = get_info("digits")
# The experiments' MLP and Adam budget: one size for smoke runs (compiles in seconds), one
# for full runs; each experiment adds its own grid to these.
MLP_SMOKE = {"hidden": [64], "batch": 32, "lr": 3e-3}
MLP_FULL = {"hidden": [256, 256], "steps": 2000, "batch": 64, "lr": 2e-3}
NUM_CLASSES = INFO.num_classes
PARTS = ("all", "synthetic", "digits")


# ------------------------------------------------------------------------------ command line


def parse_args(
    name: str,
    argv: Sequence[str] | None,
    doc: str | None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """`_common.parse_args`' command line (--smoke, --out, --seed) plus --part (and what
    `extra(parser)` adds).

    --part all (default) runs the synthetic and the digits parts and embeds the digits
    results in NAME.json; --part digits writes only NAME_digits.json and its PNGs, so the
    synthetic results in the same folder stay as they were; --part synthetic skips digits.
    """

    def part(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--part", choices=PARTS, default="all", help="which part to run (default: all)"
        )
        if extra is not None:
            extra(parser)

    return C.parse_args(name, argv, doc, extra=part)


def write(out: Path, name: str, data: dict, t0: float, lines: Sequence[str]) -> Path:
    """Write out/NAME_digits.json (with its own wall time) and print a short summary."""
    data["wall_time_s"] = round(time.perf_counter() - t0, 2)
    data.update(C.run_info())
    path = report.write_json(out / f"{name}_digits.json", C.jsonable(data))
    head = f"[{name} digits] "
    print(head + "\n  ".join([*lines, f"wall time {data['wall_time_s']:.1f} s -> {path}"]))
    return path


# ---------------------------------------------------------------------------------- data


def report_header(name: str, smoke: bool, seed: int, cfg: dict, x: Any, x_test: Any) -> dict:
    """The leading fields of a digits experiment's JSON: what ran and how it was attacked."""
    return C.header(
        name,
        smoke,
        seed,
        {
            **cfg,
            "model": f"MLP(hidden={tuple(cfg['hidden'])}) on 8x8 digits",
            "train_size": int(x.shape[0]),
            "test_size": int(x_test.shape[0]),
            "optimizer": "adam, cosine decay to 0",
            "attack": f"PGD ℓ∞ (CE, {cfg['eval_steps']} steps of 2.5ε/steps, "
            f"{cfg['eval_restarts']} restarts)",
        },
    ) | {"part": "digits"}


def load() -> tuple[Array, Array, Array, Array]:
    """The fixed digits split: x_train (1437, 8, 8, 1), y_train (1437,), x_test (360, ...),
    y_test (360,); images float32 in [0, 1], labels int32 in [0, 10)."""
    x, y = load_split("digits", "train")
    xt, yt = load_split("digits", "test")
    return jnp.asarray(x), jnp.asarray(y), jnp.asarray(xt), jnp.asarray(yt)


def balanced_order(key: Array, y: Array, num_classes: int = NUM_CLASSES) -> Array:
    """A random ordering (N,) int32 of the training indices whose prefixes are class-balanced.

    Shuffle, give every example its rank among the earlier examples of its class, then sort
    by (rank, shuffled position): the ordering walks through "rounds" holding one example
    of every class (in random class order), so the prefix `order[:n]` has ⌊n/C⌋ or ⌈n/C⌉
    examples of each class as long as n <= C·(smallest class count). Prefixes of one
    ordering are nested by construction.
    """
    n = y.shape[0]
    perm = jax.random.permutation(key, n)
    onehot = jax.nn.one_hot(y[perm], num_classes, dtype=jnp.int32)
    rank = jnp.take_along_axis(jnp.cumsum(onehot, 0) - 1, y[perm][:, None], axis=1)[:, 0]
    # Integer sort key rank·N + position: exact (N² ≈ 2e6 fits int32), ties impossible.
    return perm[jnp.argsort(rank * n + jnp.arange(n))].astype(jnp.int32)


def class_counts(order: Any, y: Any, n: int, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Examples per class (num_classes,) in the subset `order[:n]` (host-side, for checks)."""
    return np.bincount(np.asarray(y)[np.asarray(order)[:n]], minlength=num_classes)


def in_subset(order: Array, n: Array, size: int) -> Array:
    """Membership mask (size,) float32 of the subset `order[:n]` (n may be traced)."""
    pos = jnp.zeros((size,), jnp.int32).at[order].set(jnp.arange(order.shape[0]))
    return (pos < n).astype(jnp.float32)


# -------------------------------------------------------------------------------- model


def make_model(hidden: Sequence[int]):
    """The library's MLP for digits: flatten 64 pixels -> [Dense+ReLU]* -> 10 logits, with the
    dataset's mean/std normalisation inside the model (inputs stay in [0, 1], which is the
    box the ℓ∞ threat model clips to)."""
    return create_model(
        "mlp", NUM_CLASSES, mean=INFO.mean, std=INFO.std, hidden=tuple(int(h) for h in hidden)
    )


def make_optimizer(lr: float, steps: int) -> optax.GradientTransformation:
    """Adam with a cosine decay from lr to 0 over `steps` (the same budget for every run)."""
    return optax.adam(optax.cosine_decay_schedule(lr, steps))


def at_objective(eps: Any, pgd_steps: int):
    """PGD-AT (ℓ∞ ball of radius eps, box [0, 1]) with `pgd_steps` steps of 2.5·ε/steps.

    eps may be traced (vmapped ε_train). eps = 0 is exactly standard training: the ball is a
    point, PGD returns x, and the outer loss is the clean cross-entropy.
    """
    eps = jnp.asarray(eps, jnp.float32)
    return pgd_at(jr.linf(eps), steps=pgd_steps, step_size=2.5 * eps / pgd_steps)


# ---------------------------------------------------------------------------- training


def make_trainer(
    objective_for_eps: Callable[[Array], Any],
    model,
    tx: optax.GradientTransformation,
    x: Array,
    y: Array,
    *,
    steps: int,
    batch: int,
) -> Callable[[Array, Array, Array, Array], tuple[Any, Array]]:
    """train(eps, order, n, key) -> (params, losses (steps,)): one whole training run.

    `steps` library train steps (`make_train_step(objective_for_eps(eps))`) on batches of
    `batch` indices drawn with replacement from `order[:n]`; `key` seeds both the
    initialisation and the batch draws. Every argument may be traced, so `jax.vmap(train)`
    runs many configurations as one program.
    """

    def train(eps, order, n, key):
        k_init, k_batches = jax.random.split(key)
        state = TrainState.create(model, tx, k_init, x.shape[1:])
        step = make_train_step(objective_for_eps(eps))

        def body(state, k):
            ib = order[jax.random.randint(k, (batch,), 0, n)]
            state, metrics = step(state, {"image": x[ib], "label": y[ib]})
            return state, metrics["loss"]

        state, losses = jax.lax.scan(body, state, jax.random.split(k_batches, steps))
        return state.params, losses

    return train


def train_many(train, eps: Array, orders: Array, ns: Array, keys: Array) -> tuple[Any, Array]:
    """vmapped `train` over C configurations: eps (C,), orders (C, N), ns (C,), keys (C,).

    Returns stacked params (leading axis C) and losses (C, steps). One compilation per
    (trainer, C); jit here, not in the caller, so the scan is traced once.
    """
    return jax.jit(jax.vmap(train))(eps, orders, ns, keys)


def standard_objective(_eps: Any):
    """The library's `standard()` objective (eps is ignored; same signature as the AT one)."""
    return standard()


# One compiled program (eager vmap would compile the permutation op by op: seconds).
_orders = jax.jit(jax.vmap(balanced_order, (0, None)))


def grid_configs(
    key: Array, y: Array, eps: Sequence[float], ns: Sequence[int], seeds: int
) -> dict[str, Any]:
    """The flat configuration batch for the grid ε_train × n × seed (C = E·N·S, that order).

    Seed s fixes one class-balanced ordering (so the subsets of one seed are nested across
    n) and one run key (initialisation and batch draws). Both are shared across ε_train and
    n: common random numbers, so differences between ε_train (or n) at one seed are paired.
    Returns eps (C,) float32, orders (C, N_train) int32, ns (C,) int32, keys (C,), the
    per-seed orders (S, N_train) and the grid shape (E, N, S).
    """
    k_order, k_run = jax.random.split(key)
    orders = _orders(jax.random.split(k_order, seeds), y)
    run_keys = jax.random.split(k_run, seeds)
    e, n, s = (a.ravel() for a in np.indices((len(eps), len(ns), seeds)))
    return {
        "eps": jnp.asarray(np.asarray(eps, np.float32)[e]),
        "orders": orders[s],
        "ns": jnp.asarray(np.asarray(ns, np.int32)[n]),
        "keys": run_keys[s],
        "seed_orders": orders,
        "shape": (len(eps), len(ns), seeds),
    }


def concat_configs(*grids: dict[str, Any]) -> dict[str, Any]:
    """Several `grid_configs` batches as one (so they train in one vmapped program); the
    result's "slices" give each input grid's range of configurations."""
    keys = ("eps", "orders", "ns", "keys")
    out = {k: jnp.concatenate([g[k] for g in grids]) for k in keys}
    bounds = np.cumsum([0, *(int(g["eps"].shape[0]) for g in grids)])
    out["slices"] = [slice(a, b) for a, b in itertools.pairwise(bounds)]
    return out


def train_sweep(
    model,
    x: Array,
    y: Array,
    configs: dict[str, Any],
    *,
    steps: int,
    batch: int,
    lr: float,
    pgd_steps: int,
    separate_standard: bool = True,
) -> tuple[Any, Array]:
    """Train every configuration of `configs` (from `grid_configs` / `concat_configs`).

    ε_train > 0 uses the library's `pgd_at(linf(ε))`. With `separate_standard`, ε_train = 0
    uses `standard()` in a second compiled program (it skips PGD's passes, ~7/8 of an
    adversarial step: worth it at full size); without it, one program trains everything and
    ε_train = 0 runs PGD-AT on a zero-radius ball, i.e. exactly standard training (one
    compilation instead of two: what matters at smoke size, where compiling dominates).
    Returns params stacked in configuration order (leading axis C) and losses (C, steps).
    """
    tx = make_optimizer(lr, steps)
    eps = np.asarray(configs["eps"])
    at = lambda e: at_objective(e, pgd_steps)  # noqa: E731
    groups = (
        [(eps == 0, standard_objective), (eps != 0, at)]
        if separate_standard
        else [(np.ones(eps.shape, bool), at)]
    )
    parts = []
    for mask, objective in groups:
        idx = np.flatnonzero(mask)
        if idx.size:
            train = make_trainer(objective, model, tx, x, y, steps=steps, batch=batch)
            params, losses = train_many(
                train, *(configs[k][idx] for k in ("eps", "orders", "ns", "keys"))
            )
            parts.append((idx, params, losses))
    inv = np.argsort(np.concatenate([p[0] for p in parts]))
    params = jax.tree.map(lambda *a: jnp.concatenate(a)[inv], *(p[1] for p in parts))
    return params, jnp.concatenate([p[2] for p in parts])[inv]


def timed_sweep(model, x: Array, y: Array, configs: dict[str, Any], cfg: dict):
    """`train_sweep` with the training settings of an experiment's `cfg` (steps, batch, lr,
    pgd_steps, separate_standard); returns (params, losses, wall seconds)."""
    t = time.perf_counter()
    params, losses = train_sweep(
        model,
        x,
        y,
        configs,
        steps=cfg["steps"],
        batch=cfg["batch"],
        lr=cfg["lr"],
        pgd_steps=cfg["pgd_steps"],
        separate_standard=cfg["separate_standard"],
    )
    jax.block_until_ready(losses)
    return params, losses, time.perf_counter() - t


# --------------------------------------------------------------------------- evaluation


def logits_fn(model, params) -> Callable[[Array], Array]:
    """The MLP closed over params: x (B, 8, 8, 1) -> logits (B, 10)."""
    return jr.as_logits_fn(model, {"params": params})


@partial(jax.jit, static_argnames=("model", "steps", "restarts"))
def robust_correct(model, params, x, y, key, eps, *, steps: int, restarts: int) -> Array:
    """Per-example correctness (B,) float32 under the library's ℓ∞ PGD at eps (box [0, 1]).

    PGD with cross-entropy, `steps` steps of 2.5·ε/steps and `restarts` random restarts,
    keeping each example's worst iterate; a misclassified clean example counts as broken.
    `eps` may be traced (vmapped over models' own ε_train).
    """
    f = logits_fn(model, params)
    res = jr.pgd(f, x, y, key, threat=jr.linf(eps), steps=steps, restarts=restarts)
    clean_ok = jnp.argmax(f(x), -1) == y
    return (clean_ok & ~res.success).astype(jnp.float32)


@partial(jax.jit, static_argnames=("model",))
def clean_correct(model, params, x, y) -> Array:
    """Per-example clean correctness (B,) float32."""
    return (jnp.argmax(logits_fn(model, params)(x), -1) == y).astype(jnp.float32)


@partial(jax.jit, static_argnames=("model", "steps", "restarts"))
def evaluate_jobs(
    model,
    params,
    x: Array,
    y: Array,
    key: Array,
    model_idx: Array,
    eps: Array,
    *,
    steps: int,
    restarts: int,
) -> tuple[Array, Array]:
    """Clean and PGD correctness for J evaluation jobs (model model_idx[j] at radius eps[j]).

    params: C stacked models (leading axis C); model_idx (J,) int, eps (J,). Returns
    (clean (J, B), robust (J, B)) float32. One compiled program for any mix of models and
    radii (`lax.map`: one job's attack at a time, bounded memory); a job list rather than
    every (model, ε) pair, since most pairs are not needed.
    """

    def one(args):
        i, e = args
        p = jax.tree.map(lambda a: a[i], params)
        return (
            clean_correct(model, p, x, y),
            robust_correct(model, p, x, y, key, e, steps=steps, restarts=restarts),
        )

    return jax.lax.map(one, (model_idx, eps))


def seed_mean(a: Any) -> np.ndarray:
    """Mean over the trailing (seed) axis."""
    return np.asarray(a, float).mean(-1)


def seed_se(a: Any) -> np.ndarray:
    """Standard error of the mean over the trailing (seed) axis (0 with a single seed)."""
    a = np.asarray(a, float)
    s = a.shape[-1]
    return a.std(-1, ddof=1) / np.sqrt(s) if s > 1 else np.zeros(a.shape[:-1])


def saturation_n(ns: Sequence[int], acc: Sequence[float], tol: float = 0.02) -> int:
    """Smallest n whose (mean) accuracy is within `tol` (absolute) of the curve's maximum."""
    acc = np.asarray(acc, float)
    return int(np.asarray(ns)[np.argmax(acc >= acc.max() - tol)])


# ------------------------------------------------------------------------------ saliency


@partial(jax.jit, static_argnames=("model",))
def input_gradients(model, params, x: Array, y: Array) -> Array:
    """∇ₓ CE(f(x), y) per example, (B, 8, 8, 1): the true-class loss gradient w.r.t. pixels.

    The summed loss decouples over examples, so one grad gives every per-example gradient.
    """
    f = logits_fn(model, params)
    return jax.grad(lambda z: jnp.sum(jr.cross_entropy(f(z), y)))(x)


def _pearson(a: Array, b: Array) -> Array:
    """Pearson correlation over the trailing pixel axes, per example: (B, ...) -> (B,)."""
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = jnp.sqrt(jnp.sum(a * a, 1) * jnp.sum(b * b, 1))
    return jnp.sum(a * b, 1) / jnp.maximum(den, 1e-30)


def saliency_measures(grads: Array, x: Array, y: Array, class_means: Array) -> dict[str, Array]:
    """How "perceptual" input gradients g = ∇ₓL are, per example (each (B,)):

    - `abs_grad_vs_image` in [−1, 1]: corr(|g|, x): does the gradient's magnitude sit on
      the strokes?
    - `descent_vs_template` in [−1, 1]: corr(−g, μ_y − μ): does the loss-decreasing
      direction look like the true class's mean image μ_y minus the mean of all class means
      μ, i.e. like "more of this digit"?
    - `effective_pixels` in [1, 64]: (‖g‖₁ / ‖g‖₂)², how many pixels the gradient is spread
      over (ℓ∞ adversarial training penalises ε‖∇ₓ‖₁, which favours sparse gradients).
    class_means: (C, 8, 8, 1) mean training image per class.
    """
    template = class_means[y] - class_means.mean(0)
    flat = grads.reshape(grads.shape[0], -1)
    l1, l2 = jnp.sum(jnp.abs(flat), 1), jnp.linalg.norm(flat, axis=1)
    return {
        "abs_grad_vs_image": _pearson(jnp.abs(grads), x),
        "descent_vs_template": _pearson(-grads, template),
        "effective_pixels": (l1 / jnp.maximum(l2, 1e-30)) ** 2,
    }


@partial(jax.jit, static_argnames=("model",))
def saliency_many(model, params, x: Array, y: Array, means: Array) -> tuple[Array, dict]:
    """Input gradients (M, B, 8, 8, 1) and `saliency_measures` (each (M, B)) of M stacked
    models on (x, y), as one compiled program."""
    grads = jax.lax.map(lambda p: input_gradients(model, p, x, y), params)
    return grads, jax.vmap(lambda g: saliency_measures(g, x, y, means))(grads)


def class_means(x: Array, y: Array, num_classes: int = NUM_CLASSES) -> Array:
    """Mean image per class, (C, 8, 8, 1)."""
    onehot = jax.nn.one_hot(y, num_classes)
    return jnp.einsum("nc,nhwk->chwk", onehot, x) / onehot.sum(0)[:, None, None, None]


def pick_one_per_class(y: Any, k: int = NUM_CLASSES) -> np.ndarray:
    """Indices (k,) of the first test example of each of the first k classes (host-side)."""
    y = np.asarray(y)
    return np.asarray([int(np.flatnonzero(y == c)[0]) for c in range(k)])
