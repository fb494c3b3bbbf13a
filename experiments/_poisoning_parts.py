"""Pieces of `experiments/poisoning.py` (not an experiment: the leading `_` keeps it out of
`jaxrobust experiment`'s list): an in-memory trainer for many small retrainings (the
library's `TrainState`, `make_train_step` and objectives driven by `lax.scan`, vmapped over
seeds), representations, accuracies with their standard errors, and the figure."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrobust as jr
from jaxrobust.models import create_model
from jaxrobust.train import TrainState, make_train_step, pgd_at, standard

Array = jax.Array


def make_model(info, s: dict):
    """The library's MLP with `s["hidden"]` units, or the model `s["architecture"]` names with
    `s["model_kwargs"]` (bn_cnn on shapes), the dataset's normalisation inside (inputs in
    [0, 1])."""
    name = s.get("architecture", "mlp")
    if name == "mlp":
        kwargs = {"hidden": tuple(int(h) for h in s["hidden"])}
    else:
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in s["model_kwargs"].items()}
    return create_model(name, info.num_classes, mean=info.mean, std=info.std, **kwargs)


def over_seeds(s: dict) -> str:
    """How `make_trainer` runs the seeds for the model of settings `s`."""
    return "vmap" if s.get("architecture", "mlp") == "mlp" else "loop"


def describe_model(s: dict) -> str:
    if s.get("architecture", "mlp") == "mlp":
        return f"MLP(hidden={tuple(s['hidden'])})"
    return f"{s['architecture']}({', '.join(f'{k}={v}' for k, v in s['model_kwargs'].items())})"


def make_trainer(
    model,
    image_shape,
    *,
    steps: int,
    batch: int,
    lr: float,
    adversarial: jr.ThreatModel | None = None,
    pgd_steps: int = 10,
    over_seeds: str = "vmap",
) -> Callable:
    """train(x (N, ...), y (N,), keep (N,) bool, key) -> variables: `steps` Adam steps
    (cosine decay from lr) of the library's train step on batches of `batch` examples drawn
    with replacement from the kept ones. Standard training, or PGD-AT within `adversarial`.
    The Flax variables ({"params"}, plus "batch_stats" for a BatchNorm model). Jitted over
    a leading seed axis of all four arguments: `over_seeds="vmap"` batches the seeds in one
    `lax.scan` program (fast for an MLP); "loop" runs the seeds and the steps from Python,
    one jitted step at a time (for a CNN: see the comment below)."""
    tx = optax.adam(optax.cosine_decay_schedule(lr, steps))
    if adversarial is None:
        objective = standard()
    else:
        objective = pgd_at(
            adversarial, steps=pgd_steps, step_size=2.5 * float(adversarial.eps) / pgd_steps
        )

    step = make_train_step(objective)

    def one_step(state, x, y, order, n, k):
        ib = order[jax.random.randint(k, (batch,), 0, n)]
        state, _ = step(state, {"image": x[ib], "label": y[ib]})
        return state

    def train(x, y, keep, key):
        k_init, k_batches = jax.random.split(key)
        state = TrainState.create(model, tx, k_init, image_shape)
        n = keep.sum()
        order = jnp.argsort(~keep)  # kept examples first (stable)

        def body(state, k):
            return one_step(state, x, y, order, n, k), None

        state, _ = jax.lax.scan(body, state, jax.random.split(k_batches, steps))
        return state.variables()

    if over_seeds == "vmap":
        return jax.jit(jax.vmap(train))
    if over_seeds != "loop":
        raise ValueError(f"over_seeds must be 'vmap' or 'loop', got {over_seeds!r}")
    # The same batches and updates, one jitted step per host iteration: on XLA:CPU a conv
    # train step inside lax.scan ran about 10x slower than the same step called from Python.
    step_jit = jax.jit(one_step)
    create = jax.jit(lambda k: TrainState.create(model, tx, k, image_shape))

    def train_loop(xs, ys, keeps, keys):
        out = []
        for x, y, keep, key in zip(xs, ys, keeps, keys, strict=True):
            k_init, k_batches = jax.random.split(key)
            state = create(k_init)
            n = keep.sum()
            order = jnp.argsort(~keep)
            for k in jax.random.split(k_batches, steps):
                state = step_jit(state, x, y, order, n, k)
            out.append(state.variables())
        return jax.tree.map(lambda *a: jnp.stack(a), *out)

    return train_loop


def logits_fn(model, variables) -> Callable:
    """Inference mode (BatchNorm's running averages) logits of one model's variables."""
    return jr.as_logits_fn(model, variables)


def features(model, variables, x: Array, layer: str = "features") -> Array:
    """The representations (N, D) of x under one model's variables: the sown value `layer`
    ("features": the penultimate layer; "block2": a conv block's map), flattened."""
    f = jr.as_features_fn(model, variables)
    n = x.shape[0]
    return jnp.concatenate([f(x[i : i + 1024])[layer] for i in range(0, n, 1024)]).reshape(n, -1)


def seed_params(variables: Any, s: int) -> Any:
    """Seed s's slice of variables vmapped over seeds."""
    return jax.tree.map(lambda a: a[s], variables)


def proportion(values: Sequence[np.ndarray], how: str) -> dict:
    """A measured proportion pooled over seeds: values are the per-seed boolean outcome
    arrays. n = all outcomes; se = the binomial SE of the pooled proportion when there is
    one seed, else the SE of the mean of the per-seed proportions (seed to seed spread)."""
    per_seed = [float(np.mean(v)) for v in values]
    n = int(sum(np.size(v) for v in values))
    p = float(np.mean(per_seed))
    if len(per_seed) > 1:
        se = float(np.std(per_seed, ddof=1) / np.sqrt(len(per_seed)))
        how = how + f"; mean over {len(per_seed)} seeds, se = std over seeds / sqrt(seeds)"
    else:
        se = float(C.mc_se(p, n))
        how = how + "; one seed, binomial se"
    out = C.measured(p, n=n, se=se, how=how)
    out["per_seed"] = per_seed
    return out


def retrain_head(
    head: dict,
    feats: Array,
    y: Array,
    poison_feats: Array,
    poison_y: Array,
    *,
    steps: int,
    lr: float,
) -> dict:
    """Fine-tune the last layer (`head` {"kernel", "bias"}) on frozen representations of the
    clean training set plus poisons: full-batch Adam on the mean cross-entropy. The
    transfer-learning setting of feature collision (Shafahi et al. 2018)."""
    f = jnp.concatenate([feats, poison_feats])
    labels = jnp.concatenate([y, poison_y])
    tx = optax.adam(lr)

    def loss(h):
        logits = f @ h["kernel"] + h["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def body(carry, _):
        h, s = carry
        g = jax.grad(loss)(h)
        u, s = tx.update(g, s, h)
        return (optax.apply_updates(h, u), s), None

    (head, _), _ = jax.lax.scan(body, (head, tx.init(head)), None, length=steps)
    return head
