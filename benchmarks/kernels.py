"""GFLOP/s of the kernels that bound the PGD benchmarks, JAX (XLA:CPU) beside PyTorch.

A 2048² float32 matrix product (the practical peak of this machine), the convolutions
of the benchmark models at batch 128 (the Madry CNN's two 5×5 layers and a PreActResNet
3×3 layer, forward and input gradient: what a PGD step computes), and every convolution of
PreActResNet-18 at the PGD benchmark's batch 32, summed over the network, to set against a
measured PGD step (and, with weight gradients, a training step). Medians over repeats
after a warm-up; PyTorch uses all cores. Writes JSON.

    python benchmarks/kernels.py [--out benchmarks/results/DATE-kernels.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxrobust.models.layers import Conv
from jaxrobust.parallel import (
    data_mesh_for_batch,
    replicate,
    shard_batch,
    use_cpu_cores_as_devices,
)

HAVE_TORCH = importlib.util.find_spec("torch") is not None
# (kernel size, spatial size, in channels, out channels), batch 128, SAME padding.
CONVS = {
    "madry_cnn conv1 5x5 28x28 1->32": (5, 28, 1, 32),
    "madry_cnn conv2 5x5 14x14 32->64": (5, 14, 32, 64),
    "preact_resnet18 3x3 16x16 128->128": (3, 16, 128, 128),
}
BATCH = 128
# Every convolution of PreActResNet-18 on 32x32x3 inputs: (kernel, input size, in, out,
# stride, padding, how many in the network). Timed at the PGD benchmark's batch (32) so
# their sum can be set against one measured PGD step of the whole network.
RESNET_BATCH = 32
RESNET_CONVS = {
    "stem 3x3 32x32 3->64": (3, 32, 3, 64, 1, 1, 1),
    "3x3 32x32 64->64": (3, 32, 64, 64, 1, 1, 4),
    "3x3/2 32x32 64->128": (3, 32, 64, 128, 2, 1, 1),
    "1x1/2 32x32 64->128": (1, 32, 64, 128, 2, 0, 1),
    "3x3 16x16 128->128": (3, 16, 128, 128, 1, 1, 3),
    "3x3/2 16x16 128->256": (3, 16, 128, 256, 2, 1, 1),
    "1x1/2 16x16 128->256": (1, 16, 128, 256, 2, 0, 1),
    "3x3 8x8 256->256": (3, 8, 256, 256, 1, 1, 3),
    "3x3/2 8x8 256->512": (3, 8, 256, 512, 2, 1, 1),
    "1x1/2 8x8 256->512": (1, 8, 256, 512, 2, 0, 1),
    "3x3 4x4 512->512": (3, 4, 512, 512, 1, 1, 3),
}


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _jax(fn, *args):
    compiled = jax.jit(fn)
    return lambda: jax.block_until_ready(compiled(*args))


def _resnet_convs(repeats: int) -> dict:
    """Milliseconds of every PreActResNet-18 convolution, per layer and summed over the
    network (times its count): forward + input gradient (`*_ms`, the convolution share of a
    PGD step) and forward + input and weight gradients (`*_train_ms`, of a training step).

    JAX columns: XLA's convolution on one device (`jax_*`), and sharded over one device per
    core as the `jaxrobust` commands and the PGD benchmark run it, both as XLA's
    convolution (`jax_per_core_*`) and as the formulation the model's `layers.Conv` picks
    for the layer (`jax_model_*`: `conv_as_gemm` for 1x1 kernels and small outputs)."""
    rows = []
    columns = ("jax", "jax_per_core", "jax_model", "torch")
    totals = {f"{c}{t}": 0.0 for c in columns for t in ("_ms", "_train_ms")}
    mesh = data_mesh_for_batch(RESNET_BATCH)
    for name, (k, hw, cin, cout, stride, pad, count) in RESNET_CONVS.items():
        x = jnp.ones((RESNET_BATCH, hw, hw, cin), jnp.float32)
        w = jnp.ones((k, k, cin, cout), jnp.float32)
        padding = ((pad, pad), (pad, pad))
        layer = Conv(cout, (k, k), (stride, stride), padding, use_bias=False)

        def conv(x, w, stride=stride, padding=padding):
            dims = ("NHWC", "HWIO", "NHWC")
            return jax.lax.conv_general_dilated(
                x, w, (stride, stride), padding, dimension_numbers=dims
            )

        def model_conv(x, w, layer=layer):
            return layer.apply({"params": {"kernel": w}}, x)

        def input_grad(x, w, conv=conv):
            return jax.grad(lambda v: jnp.sum(conv(v, w) ** 2))(x)

        def both_grads(x, w, conv=conv):  # a training step's backward: input and weights
            return jax.grad(lambda v, u: jnp.sum(conv(v, u) ** 2), argnums=(0, 1))(x, w)

        out_hw = (hw + 2 * pad - k) // stride + 1
        gflop = 2 * 2 * RESNET_BATCH * out_hw**2 * cin * cout * k * k / 1e9  # fwd + grad
        row = {"kernel": name, "count": count, "gflop_fwd_and_input_grad": gflop}
        row["model_formulation"] = "gemm" if layer.uses_gemm(x.shape) else "xla"
        xs, ws = shard_batch(x, mesh), replicate(w, mesh)
        for key, conv_fn, args in (
            ("jax", conv, (x, w)),
            ("jax_per_core", conv, (xs, ws)),
            ("jax_model", model_conv, (xs, ws)),
        ):
            ms, train_ms = (
                1e3 * _median_seconds(_jax(partial(fn, conv=conv_fn), *args), repeats)
                for fn in (input_grad, both_grads)
            )
            row[f"{key}_ms"], row[f"{key}_train_ms"] = ms, train_ms
            row[f"{key}_gflops"] = gflop / ms * 1e3
            totals[f"{key}_ms"] += count * ms
            totals[f"{key}_train_ms"] += count * train_ms
        if HAVE_TORCH:
            import torch

            xt = torch.ones(RESNET_BATCH, cin, hw, hw, requires_grad=True)
            wt = torch.ones(cout, cin, k, k)

            def t_input_grad(xt=xt, wt=wt, stride=stride, pad=pad):
                y = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=pad)
                return torch.autograd.grad((y**2).sum(), xt)

            wg = wt.clone().requires_grad_(True)

            def t_both_grads(xt=xt, wg=wg, stride=stride, pad=pad):
                y = torch.nn.functional.conv2d(xt, wg, stride=stride, padding=pad)
                return torch.autograd.grad((y**2).sum(), (xt, wg))

            row["torch_ms"] = 1e3 * _median_seconds(t_input_grad, repeats)
            row["torch_train_ms"] = 1e3 * _median_seconds(t_both_grads, repeats)
            totals["torch_train_ms"] += count * row["torch_train_ms"]
            row["torch_gflops"] = gflop / row["torch_ms"] * 1e3
            row["jax_over_torch_time"] = row["jax_ms"] / row["torch_ms"]
            row["jax_model_over_torch_time"] = row["jax_model_ms"] / row["torch_ms"]
            totals["torch_ms"] += count * row["torch_ms"]
        rows.append(row)
    return {"batch": RESNET_BATCH, "rows": rows, **{f"total_{k}": v for k, v in totals.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--out", default=f"benchmarks/results/{time.strftime('%Y-%m-%d')}-kernels.json"
    )
    args = parser.parse_args(argv)
    # One CPU device per core (for the per-core columns); single-device rows use device 0,
    # whose programs still run on every core's thread.
    use_cpu_cores_as_devices()
    rows = []
    n = 2048
    a = jnp.ones((n, n), jnp.float32)
    row = {"kernel": f"matmul {n}x{n}", "gflop": 2 * n**3 / 1e9}
    row["jax_gflops"] = row["gflop"] / _median_seconds(_jax(lambda x: x @ x, a), args.repeats)
    if HAVE_TORCH:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        at = torch.ones(n, n)
        row["torch_gflops"] = row["gflop"] / _median_seconds(lambda: at @ at, args.repeats)
    rows.append(row)

    for name, (k, hw, cin, cout) in CONVS.items():
        x = jnp.ones((BATCH, hw, hw, cin), jnp.float32)
        w = jnp.ones((k, k, cin, cout), jnp.float32)

        def conv(x, w):
            dims = ("NHWC", "HWIO", "NHWC")
            return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims)

        def input_grad(x, w):
            return jax.grad(lambda v: jnp.sum(conv(v, w) ** 2))(x)

        gflop = 2 * BATCH * hw * hw * cin * cout * k * k / 1e9  # forward
        row = {"kernel": name, "gflop_forward": gflop}
        # The input gradient of a loss that needs the output (squares, so XLA cannot drop
        # the forward pass): one forward and one transposed convolution, 2x the work.
        row["jax_forward_gflops"] = gflop / _median_seconds(_jax(conv, x, w), args.repeats)
        row["jax_input_grad_gflops"] = (
            2 * gflop / _median_seconds(_jax(input_grad, x, w), args.repeats)
        )
        if HAVE_TORCH:
            import torch

            xt = torch.ones(BATCH, cin, hw, hw, requires_grad=True)
            wt = torch.ones(cout, cin, k, k)

            def t_forward(xt=xt, wt=wt, k=k):
                with torch.no_grad():
                    return torch.nn.functional.conv2d(xt, wt, padding=k // 2)

            def t_input_grad(xt=xt, wt=wt, k=k):
                y = torch.nn.functional.conv2d(xt, wt, padding=k // 2)
                return torch.autograd.grad((y**2).sum(), xt)

            row["torch_forward_gflops"] = gflop / _median_seconds(t_forward, args.repeats)
            row["torch_input_grad_gflops"] = 2 * gflop / _median_seconds(t_input_grad, args.repeats)
        rows.append(row)

    resnet = _resnet_convs(args.repeats)
    payload = {
        "benchmark": "kernel GFLOP/s, JAX (XLA:CPU) vs PyTorch",
        "date": time.strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "rows": rows,
        "preact_resnet18_convs": resnet,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    for r in rows + resnet["rows"]:
        print({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()})
    print({k: v for k, v in resnet.items() if k != "rows"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
