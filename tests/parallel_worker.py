"""Run a few sharded training steps, a sharded PGD attack and a sharded `evaluate` cascade
on however many devices this process sees; save the results to the .npz path given as
argv[1]. Used by test_parallel."""

from __future__ import annotations

import sys

import jax
import numpy as np
import optax

from jaxrobust import linf, pgd
from jaxrobust.attacks.cascade import evaluate
from jaxrobust.data import load_split
from jaxrobust.models import MLP
from jaxrobust.parallel import data_mesh, replicate, shard_batch
from jaxrobust.train import TrainState, make_train_step, pgd_at


def main(path: str) -> None:
    mesh = data_mesh()
    x, y = load_split("digits", "train", limit=64)
    state = TrainState.create(MLP(hidden=(32,)), optax.adam(1e-2), jax.random.key(0), (8, 8, 1))
    state = replicate(state, mesh)
    step = make_train_step(pgd_at(linf(0.1), steps=3))
    for i in range(4):
        batch = shard_batch(
            {"image": x[16 * i : 16 * i + 16], "label": y[16 * i : 16 * i + 16]}, mesh
        )
        state, _ = step(state, batch)
    sharded = shard_batch({"x": x, "y": y}, mesh)
    attack = jax.jit(
        lambda xx, yy: pgd(state.logits_fn(), xx, yy, jax.random.key(1), threat=linf(0.1), steps=5)
    )
    result = attack(sharded["x"], sharded["y"])
    # The cascade shards its batches (64 = 8 per device) over the same mesh.
    report = evaluate(
        state.logits_fn(),
        x,
        y,
        jax.random.key(2),
        eps=(0.05, 0.1),
        attacks=("apgd-ce", "apgd-t", "square"),
        batch_size=64,
        checks=False,
    )
    leaves = {f"p{i}": np.asarray(v) for i, v in enumerate(jax.tree.leaves(state.params))}
    np.savez(
        path,
        devices=len(jax.devices()),
        x_adv=np.asarray(result.x_adv),
        eval_robust=np.asarray(report.robust_accuracy),
        eval_per_attack=np.asarray([report.per_attack[a] for a in report.attacks]),
        eval_x_adv=report.x_adv,
        **leaves,
    )


if __name__ == "__main__":
    main(sys.argv[1])
