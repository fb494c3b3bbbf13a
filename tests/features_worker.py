"""Run the Ilyas et al. constructions (`jaxrobust.features`) on a batch sharded over however
many devices this process sees, and a small `build_dataset`; save the results to the .npz
path given as argv[1] (the build goes to the folder argv[2]). Used by test_features."""

from __future__ import annotations

import sys

import jax
import numpy as np

from jaxrobust import features as F
from jaxrobust.data import get_info, load_split
from jaxrobust.models import MLP, as_features_fn, as_logits_fn
from jaxrobust.parallel import shard_examples


def model():
    """A fixed (untrained, seeded) MLP: the same weights in every process."""
    info = get_info("digits")
    net = MLP(hidden=(32,), mean=info.mean, std=info.std)
    variables = net.init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))
    return as_logits_fn(net, variables), as_features_fn(net, variables)


def main(path: str, build_dir: str) -> None:
    logits_fn, features_fn = model()
    x, y = load_split("digits", "train", limit=32)
    xs, ys = shard_examples(x, y)
    key = jax.random.key(3)
    rand = F.d_rand_batch(logits_fn, xs, ys, key, eps=1.0, steps=10)
    det = F.d_det_batch(logits_fn, xs, ys, key, eps=1.0, steps=10)
    rob = F.d_robust_batch(features_fn, xs, ys, key, steps=20, step_size=0.5)
    built = F.build_dataset(
        "d_det", logits_fn, build_dir, eps=1.0, steps=10, chunk_size=16, limit=48
    )
    bx, by = load_split(built["name"], "train")
    np.savez(
        path,
        devices=len(jax.devices()),
        input_devices=len(xs.sharding.device_set),
        rand_x=np.asarray(rand.x),
        rand_label=np.asarray(rand.label),
        rand_success=np.asarray(rand.success),
        det_x=np.asarray(det.x),
        det_label=np.asarray(det.label),
        robust_x=np.asarray(rob.x),
        robust_value=np.asarray(rob.value),
        built_x=bx,
        built_y=by,
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
