"""The `shapes` dataset's baseline numbers: preparation time and a small standard model.

    python benchmarks/shapes_baseline.py [--epochs 3] [--planted] [--model small_cnn|mlp]
                                         [--data-dir DIR] [--out FILE]

Prepares `shapes` (default 20 000 train / 5 000 test, seed 0) into a fresh temporary
data_dir (or reuses DIR) and times it, then trains a small model (`small_cnn`, channels
(16, 32), dense 128; or `mlp`, one hidden layer of 512; Adam 1e-3, batch 128, no
augmentation, standard training) and reports its accuracy on the test split(s). With
`--planted` the dataset carries the planted feature (norm 0.5, rate 1, correlation 1)
and the report adds `test_clean` and `test_shuffled` (the reliance drop) and the
accuracy under l2 PGD-20 at eps = 0.5 on the first 1 000 (--pgd-examples) test images. Not part of
`run_all.sh` (it measures the dataset, not throughput).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrobust.data as jd
from jaxrobust.attacks import pgd
from jaxrobust.models import create_model, init_model
from jaxrobust.threat import l2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--planted", action="store_true")
    p.add_argument("--model", choices=("small_cnn", "mlp"), default="small_cnn")
    p.add_argument("--pgd-examples", type=int, default=1000, help="0: no PGD evaluation")
    p.add_argument("--data-dir", help="prepared data to reuse (default: a fresh temp dir)")
    p.add_argument("--out", help="JSON file for the numbers (default: print only)")
    args = p.parse_args(argv)
    kwargs = {"planted": True, "planted_norm": 0.5} if args.planted else None
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="shapes-baseline-")
    t0 = time.perf_counter()
    jd.prepare("shapes", data_dir, dataset_kwargs=kwargs)
    prepare_s = time.perf_counter() - t0
    splits = ["train", "test"] + (["test_clean", "test_shuffled"] if args.planted else [])
    data = {s: jd.load_split("shapes", s, data_dir=data_dir, dataset_kwargs=kwargs) for s in splits}
    print(f"prepared in {prepare_s:.1f} s; splits {[len(data[s][1]) for s in splits]}", flush=True)

    info = jd.get_info("shapes")
    arch = {"small_cnn": {"channels": (16, 32), "dense": 128}, "mlp": {"hidden": (512,)}}
    model = create_model(args.model, 10, mean=info.mean, std=info.std, **arch[args.model])
    params = init_model(model, jax.random.key(0), info.image_shape)["params"]
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    def loss_fn(params, x, y):
        logits = model.apply({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    predict = jax.jit(lambda params, x: jnp.argmax(model.apply({"params": params}, x), -1))

    def accuracy(x, y):
        preds = np.concatenate([predict(params, x[i : i + 500]) for i in range(0, len(y), 500)])
        return float(np.mean(preds == y))

    x_tr, y_tr = data["train"]
    rng = np.random.default_rng(0)
    batch = 128
    t0 = time.perf_counter()
    history = []
    for epoch in range(args.epochs):
        order = rng.permutation(len(y_tr))
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i : i + batch]
            params, opt_state, loss = step(params, opt_state, x_tr[idx], y_tr[idx])
        acc = {s: accuracy(*data[s]) for s in splits if s != "train"}
        history.append({"epoch": epoch + 1, "loss": float(loss), **acc})
        print(f"epoch {epoch + 1}: loss {float(loss):.3f} {acc}", flush=True)
    train_s = time.perf_counter() - t0
    result = {
        "dataset_kwargs": kwargs or {},
        "num_train": len(y_tr),
        "prepare_seconds": prepare_s,
        "model": f"{args.model} {arch[args.model]}, Adam 1e-3, batch 128",
        "epochs": args.epochs,
        "train_seconds": train_s,
        "history": history,
        "accuracy": {s: accuracy(*data[s]) for s in splits},
        "num_examples": {s: len(data[s][1]) for s in splits},
    }
    if args.planted and args.pgd_examples:
        x_te, y_te = data["test"]
        n = args.pgd_examples

        def logits_fn(x):
            return model.apply({"params": params}, x)

        adv = pgd(
            logits_fn,
            jnp.asarray(x_te[:n]),
            jnp.asarray(y_te[:n]),
            jax.random.key(1),
            threat=l2(0.5),
            steps=20,
        )
        result[f"pgd20_l2_0.5_accuracy_first_{n}_test"] = accuracy(np.asarray(adv.x_adv), y_te[:n])
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
