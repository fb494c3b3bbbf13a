"""GFLOP/s of the kernels that bound the PGD benchmarks, JAX (XLA:CPU) beside PyTorch.

A 2048² float32 matrix product (the practical peak of this machine), and the convolutions
of the benchmark models at batch 128: the Madry CNN's two 5×5 layers and a PreActResNet
3×3 layer, forward and input gradient (what a PGD step computes). Medians over repeats
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
from pathlib import Path

import jax
import jax.numpy as jnp

HAVE_TORCH = importlib.util.find_spec("torch") is not None
# (kernel size, spatial size, in channels, out channels), batch 128, SAME padding.
CONVS = {
    "madry_cnn conv1 5x5 28x28 1->32": (5, 28, 1, 32),
    "madry_cnn conv2 5x5 14x14 32->64": (5, 14, 32, 64),
    "preact_resnet18 3x3 16x16 128->128": (3, 16, 128, 128),
}
BATCH = 128


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--out", default=f"benchmarks/results/{time.strftime('%Y-%m-%d')}-kernels.json"
    )
    args = parser.parse_args(argv)
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

    payload = {
        "benchmark": "kernel GFLOP/s, JAX (XLA:CPU) vs PyTorch",
        "date": time.strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    for r in rows:
        print({k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
