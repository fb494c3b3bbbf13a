"""Convolutional models inside JAX loops on CPU: `Conv`'s "auto" formulation against XLA's
own convolution, measured in the same run.

XLA:CPU runs convolutions outside the NHWC/HWIO layout as naive loops and, inside a
`lax.scan`/`while_loop` body, leaves the transposed convolutions of reverse-mode autodiff
in their own layouts (see `jaxrobust.models.layers.conv_gemm_grad`). This times, for each
model and both `conv_impl` settings ("xla": XLA's convolution and its autodiff; "auto":
on CPU XLA's convolution with GEMM derivatives, GEMM for small maps): SGD training steps
under `lax.scan` and called from Python, and ℓ2 PGD (the engine's scanned loop) and ℓ∞
PGD (on CPU a fully unrolled loop). Medians over repeats after a warm-up; writes JSON + MD.

    python benchmarks/conv_loops.py [--quick] [--out benchmarks/results/DATE-conv_loops.json]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import jaxrobust as jr
from jaxrobust.models import create_model

# name -> (model keywords, input shape per image, batch)
MODELS = {
    "bn_cnn": ({}, (32, 32, 3), 128),
    "madry_cnn": ({}, (28, 28, 1), 128),
}
QUICK = {"small_cnn": ({"channels": (4, 8), "dense": 16}, (8, 8, 1), 8)}
IMPLS = ("xla", "auto")


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _measure(
    name: str, kwargs: dict, shape: tuple, batch: int, impl: str, steps: int, repeats: int
) -> dict:
    model = create_model(name, 10, **kwargs, conv_impl=impl)
    key = jax.random.key(0)
    x = jax.random.uniform(key, (batch, *shape))
    y = jnp.arange(batch) % 10
    variables = model.init(key, x)
    params = variables["params"]
    tx = optax.sgd(0.01)

    def loss(p, xb):
        out = model.apply({**variables, "params": p}, xb, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(out[0], y).mean()

    def step(carry, _=None):
        p, o = carry
        updates, o = tx.update(jax.grad(loss)(p, x), o, p)
        return (optax.apply_updates(p, updates), o), None

    carry0 = (params, tx.init(params))
    one_step = jax.jit(lambda c: step(c)[0])
    scanned = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps)[0])

    def from_python():
        c = carry0
        for _ in range(steps):
            c = one_step(c)
        return c

    def logits_fn(z):
        return model.apply(variables, z)

    l2 = jax.jit(lambda: jr.pgd(logits_fn, x, y, key, threat=jr.l2(1.0), steps=steps).x_adv)
    linf = jax.jit(lambda: jr.pgd(logits_fn, x, y, key, threat=jr.linf(0.1), steps=steps).x_adv)
    return {
        "train_scan_s": _median_seconds(lambda: scanned(carry0), repeats),
        "train_python_loop_s": _median_seconds(from_python, repeats),
        "pgd_l2_scan_s": _median_seconds(l2, repeats),
        "pgd_linf_unrolled_s": _median_seconds(linf, repeats),
    }


def _markdown(payload: dict) -> str:
    lines = [
        f"# Convolutional models inside loops, {payload['date']} ({payload['machine']})",
        "",
        f"{payload['steps']} steps each; median seconds over {payload['repeats']} repeats after "
        "a warm-up. conv_impl 'xla' = XLA's convolution and its autodiff; 'auto' = "
        "`layers.Conv`'s CPU rule (XLA value, GEMM derivatives). Speed-up = xla / auto.",
        "",
        "| model | workload | xla s | auto s | speed-up |",
        "|---|---|---:|---:|---:|",
    ]
    for model, r in payload["results"].items():
        for work in r["xla"]:
            a, b = r["xla"][work], r["auto"][work]
            lines.append(
                f"| {model} (batch {r['batch']}) | {work} | {a:.3f} | {b:.3f} | {a / b:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    today = datetime.date.today().isoformat()
    default = Path(__file__).parent / "results" / f"{today}-conv_loops.json"
    parser.add_argument("--quick", action="store_true", help="a tiny model (tests)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=default, help="JSON path (+ .md beside)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    models = QUICK if args.quick else MODELS
    results: dict = {}
    for name, (kwargs, shape, batch) in models.items():
        results[name] = {"batch": batch, "input": list(shape), "kwargs": kwargs}
        for impl in IMPLS:
            r = _measure(name, kwargs, shape, batch, impl, args.steps, args.repeats)
            results[name][impl] = r
            print(name, impl, {k: round(v, 3) for k, v in r.items()}, flush=True)
        results[name]["speedup_xla_over_auto"] = {
            k: results[name]["xla"][k] / results[name]["auto"][k] for k in results[name]["xla"]
        }
    payload = {
        "date": today,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "steps": args.steps,
        "repeats": args.repeats,
        "results": results,
    }
    sys.path.insert(0, str(Path(__file__).parent))
    from _report import write_report

    write_report(args.out, payload, _markdown(payload))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
