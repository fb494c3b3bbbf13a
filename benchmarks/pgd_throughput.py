"""PGD attack and PGD adversarial-training throughput: jaxrobust against its PyTorch peers,
on the same models, weights, data and random starts, measured side by side in one run.

Models (as in issue "Speed and scale"): an MLP 784-256-256-10 (batch 128, PGD-40, ℓ∞
ε = 0.3), the Madry et al. MNIST CNN (batch 128, PGD-40, ε = 0.3) and PreActResNet-18 on
32×32×3 inputs (batch 32, PGD-10, ε = 8/255). Random weights from one seed (Flax init,
BatchNorm statistics perturbed so they matter), copied into the PyTorch peers
(`_torch_peers.py`); inputs uniform in [0, 1], random labels. Throughput does not depend
on what the weights have learnt; the adversarial examples are compared as well.

Contenders, each from the same random start δ₀ (last iterate, cross-entropy, sign step
2.5ε/k, projection onto the ε-ball ∩ [0, 1]):
  * jaxrobust `pgd` — the engine, one compiled program (on CPU its step loop is unrolled:
    XLA:CPU runs a step ~2x slower inside a while loop, see `optimize.loop_plan`), with
    the batch sharded over one CPU device per core as the `jaxrobust` commands run it
    (`parallel.use_cpu_cores_as_devices`: XLA:CPU spreads one program's convolutions over
    cores poorly, one shard per core does better);
  * jaxrobust `pgd`, 1 device — the same program unsharded on one CPU device;
  * jaxrobust step loop — the same step compiled on its own, looped from Python;
  * PyTorch loop — the textbook `torch.autograd.grad` loop;
  * torchattacks `PGD` (its own uniform random start, so its examples are compared from a
    zero start instead).
Training: one PGD-7 adversarial-training step (attack in inference mode, SGD momentum 0.9
on the adversarial batch in training mode) with `jaxrobust.train.make_train_step(pgd_at)`
(state replicated, batch sharded over the per-core devices, and on 1 device) against a
plain PyTorch loop.

Timings are medians over repeats after a warm-up call; "compile" is the first call's extra
time. PyTorch uses all cores (`torch.set_num_threads`). Without the peers installed
(`bash benchmarks/install_peers.sh`) only the JAX columns are measured.

    python benchmarks/pgd_throughput.py [--quick] [--out benchmarks/results/DATE-pgd_throughput]

Writes OUT.json, OUT.md (a table of images/s and ratios) and OUT.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _report import write_report

import jaxrobust as jr
from jaxrobust.models import create_model
from jaxrobust.parallel import data_mesh_for_batch, replicate, shard_batch, use_cpu_cores_as_devices
from jaxrobust.train import TrainState, make_train_step, pgd_at

HAVE_PEERS = all(importlib.util.find_spec(m) for m in ("torch", "torchattacks"))

# name, model kwargs, input shape (B, H, W, C), PGD steps, ε.
MODELS = {
    "mlp": ("mlp", {"hidden": (256, 256)}, (128, 28, 28, 1), 40, 0.3),
    "madry_cnn": ("madry_cnn", {}, (128, 28, 28, 1), 40, 0.3),
    "preact_resnet18": ("preact_resnet18", {}, (32, 32, 32, 3), 10, 8 / 255),
}
QUICK = {
    "mlp": ("mlp", {"hidden": (32,)}, (8, 8, 8, 1), 3, 0.1),
    "preact_resnet18": ("preact_resnet18", {"width": 4}, (4, 8, 8, 3), 2, 0.1),
}
TRAIN_STEPS = 7


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(first call seconds, median seconds of `repeats` further calls)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def _setup(spec):
    name, kwargs, shape, steps, eps = spec
    model = create_model(name, 10, **kwargs)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=shape).astype(np.float32)
    y = rng.integers(0, 10, shape[0]).astype(np.int32)
    variables = jax.device_get(model.init(jax.random.key(0), jnp.asarray(x[:1])))
    if "batch_stats" in variables:  # non-trivial running statistics, so they must match
        variables = dict(variables)
        variables["batch_stats"] = jax.tree.map(
            lambda a: a + rng.uniform(0.0, 0.2, a.shape).astype(np.float32),
            variables["batch_stats"],
        )
    u = rng.uniform(-eps, eps, size=shape).astype(np.float32)
    delta0 = np.clip(x + u, 0.0, 1.0) - x  # a feasible random start, shared by everyone
    return model, variables, x, y, delta0, steps, eps


def _jax_attacks(model, variables, steps, eps):
    """The two jaxrobust strategies: the engine (one program) and a Python step loop."""

    def logits_fn(v):
        if "batch_stats" in v:
            return lambda z: model.apply(v, z, train=False)
        return lambda z: model.apply(v, z)

    alpha = 2.5 * eps / steps

    @jax.jit
    def engine(v, x, y, d0):
        threat = jr.linf(eps)._replace(init=lambda key, xx: d0)
        r = jr.pgd(
            logits_fn(v), x, y, jax.random.key(0), threat=threat, steps=steps,
            step_size=alpha, keep_best=False,
        )  # fmt: skip
        return r.x_adv

    threat = jr.linf(eps)

    @jax.jit
    def step(v, x, y, delta):
        def loss(d):
            return jnp.sum(jr.cross_entropy(logits_fn(v)(x + d), y))

        g = jax.grad(loss)(delta)
        return threat.project(delta + alpha * threat.ascent(g), x)

    def loop(v, x, y, d0):
        delta = d0
        for _ in range(steps):
            delta = step(v, x, y, delta)
        return x + delta

    loop.step = step
    return engine, loop


def _torch_model(name, variables):
    import _torch_peers as peers

    params = variables["params"]
    if name == "mlp":
        return peers.mlp(params)
    if name == "madry_cnn":
        return peers.madry_cnn(params)
    return peers.preact_resnet(params, variables["batch_stats"])


def _compare(a: np.ndarray, b: np.ndarray, eps: float) -> dict:
    """How equal two batches of adversarial examples are (sign steps amplify float noise
    only where a gradient coordinate is ~0, so a few coordinates may differ by 2α)."""
    diff = np.abs(a - b)
    return {
        "max_abs_diff": float(diff.max()),
        "frac_coords_differ": float((diff > 1e-5).mean()),
        "max_abs_diff_over_eps": float(diff.max() / eps),
    }


def _place(variables, *batch):
    """Weights replicated and the batch sharded over the per-core devices (what the
    `jaxrobust` commands do: `use_cpu_cores_as_devices` + `data_mesh`), as a
    (mesh size, variables, *batch) tuple."""
    mesh = data_mesh_for_batch(batch[0].shape[0])
    return mesh.devices.size, replicate(variables, mesh), *(shard_batch(a, mesh) for a in batch)


def bench_pgd(key: str, spec, repeats: int) -> dict:
    model, variables, x, y, delta0, steps, eps = _setup(spec)
    engine, loop = _jax_attacks(model, variables, steps, eps)
    v1, x1, y1, d1 = jax.device_put((variables, x, y, delta0), jax.devices()[0])
    devices, v, xj, yj, dj = _place(variables, x, y, delta0)
    batch = x.shape[0]
    out = {"model": key, "batch": batch, "steps": steps, "eps": eps, "devices": devices}
    out["results"] = {}

    def run_engine():
        return jax.block_until_ready(engine(v, xj, yj, dj))

    def run_engine_one_device():
        return jax.block_until_ready(engine(v1, x1, y1, d1))

    def run_loop():
        return jax.block_until_ready(loop(v, xj, yj, dj))

    contenders = [("jaxrobust pgd", run_engine), ("jaxrobust step loop", run_loop)]
    if devices > 1:
        contenders.insert(1, ("jaxrobust pgd, 1 device", run_engine_one_device))
    for label, fn in contenders:
        first, median = _time(fn, repeats)
        out["results"][label] = {
            "seconds": median,
            "images_per_s": batch / median,
            "compile_seconds": max(first - median, 0.0),
        }
    x_jax = np.asarray(run_engine())
    out["engine_vs_loop"] = _compare(x_jax, np.asarray(run_loop()), eps)
    out["sharded_vs_one_device"] = _compare(x_jax, np.asarray(run_engine_one_device()), eps)
    x_one = np.asarray(loop.step(v, xj, yj, dj) + xj)  # one step: float noise only

    if HAVE_PEERS:
        import _torch_peers as peers
        import torch
        import torchattacks

        torch.set_num_threads(os.cpu_count() or 1)
        net = _torch_model(spec[0], variables)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
        dt = torch.from_numpy(delta0)
        alpha = 2.5 * eps / steps

        def run_torch():
            return peers.pgd_linf(net, xt, yt, dt, eps=eps, step_size=alpha, steps=steps)

        atk = torchattacks.PGD(net, eps=eps, alpha=alpha, steps=steps, random_start=True)

        def run_ta():
            return atk(xt, yt)

        for label, fn in (("PyTorch loop", run_torch), ("torchattacks PGD", run_ta)):
            first, median = _time(fn, repeats)
            out["results"][label] = {
                "seconds": median,
                "images_per_s": batch / median,
                "compile_seconds": 0.0,
            }
        out["jax_vs_pytorch_loop"] = _compare(x_jax, run_torch().numpy(), eps)
        # After one step the two agree to float rounding; over k sign steps a coordinate
        # whose gradient is ~0 may flip sign and the trajectories part (frac_coords_differ).
        one = peers.pgd_linf(net, xt, yt, dt, eps=eps, step_size=alpha, steps=1).numpy()
        out["jax_vs_pytorch_loop_one_step"] = _compare(x_one, one, eps)
        # torchattacks draws its own start: compare both from δ₀ = 0 instead.
        zero = jnp.zeros_like(dj)
        atk0 = torchattacks.PGD(net, eps=eps, alpha=alpha, steps=steps, random_start=False)
        out["jax_vs_torchattacks_zero_start"] = _compare(
            np.asarray(engine(v, xj, yj, zero)), atk0(xt, yt).numpy(), eps
        )
        best_peer = max(
            out["results"][k]["images_per_s"] for k in ("PyTorch loop", "torchattacks PGD")
        )
        out["ratio_vs_best_peer"] = {
            k: r["images_per_s"] / best_peer
            for k, r in out["results"].items()
            if k.startswith("jaxrobust")
        }
    return out


def bench_train(key: str, spec, repeats: int) -> dict:
    """One PGD-7 adversarial-training step (SGD momentum 0.9, lr 0.01)."""
    model, variables, x, y, _, _, eps = _setup(spec)
    steps, alpha = TRAIN_STEPS, eps / 4
    state = TrainState.create(model, optax.sgd(0.01, momentum=0.9), jax.random.key(0), x.shape[1:])
    state = state.replace(params=variables["params"])
    step = make_train_step(pgd_at(jr.linf(eps), steps=steps, step_size=alpha))
    n = x.shape[0]
    devices, state_sharded, xs, ys = _place(state, x, y)
    setups = {"jaxrobust train step": (state_sharded, {"image": xs, "label": ys})}
    if devices > 1:
        one = jax.devices()[0]
        # Own buffers: the step donates its state, and `replicate` may share the original's.
        own = jax.tree.map(lambda a: a.copy(), state)
        setups["jaxrobust train step, 1 device"] = jax.device_put(
            (own, {"image": x, "label": y}), one
        )
    out = {"model": key, "batch": n, "attack_steps": steps, "eps": eps, "devices": devices}
    out["results"] = {}
    for label, (state0, batch) in setups.items():
        holder = {"state": state0}

        def run_jax(holder=holder, batch=batch):
            holder["state"], metrics = step(holder["state"], batch)
            jax.block_until_ready(metrics)

        first, median = _time(run_jax, repeats)
        out["results"][label] = {
            "seconds": median,
            "images_per_s": n / median,
            "compile_seconds": max(first - median, 0.0),
        }
    if HAVE_PEERS:
        import _torch_peers as peers
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        net = _torch_model(spec[0], variables)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
        loss_fn = torch.nn.CrossEntropyLoss()

        def run_torch():
            net.eval()
            d0 = torch.empty_like(xt).uniform_(-eps, eps)
            d0 = torch.clamp(xt + d0, 0, 1) - xt
            x_adv = peers.pgd_linf(net, xt, yt, d0, eps=eps, step_size=alpha, steps=steps)
            net.train()
            opt.zero_grad()
            loss_fn(net(x_adv), yt).backward()
            opt.step()

        first, median = _time(run_torch, repeats)
        out["results"]["PyTorch train loop"] = {
            "seconds": median,
            "images_per_s": n / median,
            "compile_seconds": 0.0,
        }
        out["ratio_vs_pytorch"] = {
            k: r["images_per_s"] / (n / median)
            for k, r in out["results"].items()
            if k.startswith("jaxrobust")
        }
    return out


def _main_ratio(row: dict) -> tuple[str, float] | None:
    """(label, ratio) of the row's sharded jaxrobust contender, if a peer was measured."""
    ratios = row.get("ratio_vs_best_peer", row.get("ratio_vs_pytorch", {}))
    label = "jaxrobust train step" if "attack_steps" in row else "jaxrobust pgd"
    return (label, ratios[label]) if label in ratios else None


def _bounds(payload: dict, kernels: dict | None) -> list[str]:
    """For every workload below 1.0x of its best peer: the kernel that bounds it, with its
    measured GFLOP/s against the machine's matrix-product peak, from benchmarks/kernels.py.

    MLP: the matrix product itself. Madry CNN: its slowest convolution relative to PyTorch.
    PreActResNet-18: the layer that loses most time to PyTorch summed over the network, as
    the model runs it (`jax_model_*` columns), forward + input gradient for PGD and with
    weight gradients for the training step.
    """
    slow = [
        (row, *main)
        for row in payload["pgd"] + payload["train"]
        if (main := _main_ratio(row)) is not None and main[1] < 1.0
    ]
    if not slow:
        return []
    if kernels is None:
        return ["- rows below 1.0×, but no kernels report to name their bound (run kernels.py)"]
    peak = kernels["rows"][0]
    lines = [
        f"- machine peak (from `{kernels['path']}`): {peak['kernel']} "
        f"{peak['jax_gflops']:.0f} GFLOP/s JAX, {peak.get('torch_gflops', float('nan')):.0f} "
        "PyTorch"
    ]
    for row, _, ratio in slow:
        what = f"{row['model']} {'AT step' if 'attack_steps' in row else 'PGD'} ({ratio:.2f}×)"
        if row["model"] == "mlp":
            lines.append(f"- {what}: bounded by the matrix product above")
        elif row["model"] == "madry_cnn":
            convs = [r for r in kernels["rows"] if r["kernel"].startswith("madry_cnn")]
            worst = min(
                convs, key=lambda r: r["jax_input_grad_gflops"] / r["torch_input_grad_gflops"]
            )
            lines.append(
                f"- {what}: {worst['kernel']}, forward + input gradient "
                f"{worst['jax_input_grad_gflops']:.0f} GFLOP/s vs PyTorch "
                f"{worst['torch_input_grad_gflops']:.0f}"
            )
        elif row["model"] == "preact_resnet18":
            res = kernels["preact_resnet18_convs"]
            train = "attack_steps" in row
            key = "train_ms" if train else "ms"
            worst = max(
                res["rows"], key=lambda r: r["count"] * (r[f"jax_model_{key}"] - r[f"torch_{key}"])
            )
            ms, torch_ms = worst[f"jax_model_{key}"], worst[f"torch_{key}"]
            # forward + input gradient = 2 convolutions' FLOPs; weight gradients add a third
            gflop = worst["gflop_fwd_and_input_grad"] * (1.5 if train else 1.0)
            passes = "forward + both gradients" if train else "forward + input gradient"
            lines.append(
                f"- {what}: {worst['kernel']} (×{worst['count']}, as "
                f"{worst['model_formulation']}), {passes} {ms:.1f} ms = "
                f"{gflop / ms * 1e3:.0f} GFLOP/s vs PyTorch {torch_ms:.1f} ms; all convolutions "
                f"{res[f'total_jax_model_{key}']:.0f} vs {res[f'total_torch_{key}']:.0f} ms"
            )
    return lines


def _latest_kernels_report(out: str) -> dict | None:
    """The newest `*-kernels.json` beside the report (benchmarks/kernels.py), if any."""
    found = sorted(Path(out).parent.glob("*-kernels.json"))
    if not found:
        return None
    return {**json.loads(found[-1].read_text()), "path": found[-1].name}


def _markdown(payload: dict) -> str:
    lines = [
        f"# PGD throughput, {payload['date']} ({payload['machine']})",
        "",
        f"jax {payload['jax']} ({payload['backend']}), torch {payload.get('torch', 'n/a')}; "
        "images/s (median of repeats, compilation excluded); ratio = jaxrobust / best peer.",
        "",
        "| workload | contender | images/s | compile s | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for row in payload["pgd"] + payload["train"]:
        ratios = row.get("ratio_vs_best_peer", row.get("ratio_vs_pytorch", {}))
        work = f"{row['model']} " + (
            f"PGD-{row['steps']} ×{row['batch']}"
            if "steps" in row
            else f"PGD-{row['attack_steps']} AT step ×{row['batch']}"
        )
        for label, r in row["results"].items():
            ratio = ratios.get(label)
            lines.append(
                f"| {work} | {label} | {r['images_per_s']:.1f} | {r['compile_seconds']:.1f} | "
                + (f"{ratio:.2f}×" if ratio is not None else "")
                + " |"
            )
    lines.append("")
    for row in payload["pgd"]:
        for k in (
            "jax_vs_pytorch_loop_one_step",
            "jax_vs_pytorch_loop",
            "jax_vs_torchattacks_zero_start",
            "engine_vs_loop",
            "sharded_vs_one_device",
        ):
            if k in row:
                c = row[k]
                lines.append(
                    f"- {row['model']} {k}: max |Δx| = {c['max_abs_diff']:.2e} "
                    f"({c['max_abs_diff_over_eps']:.2f} ε), coordinates differing "
                    f"{100 * c['frac_coords_differ']:.4f}%"
                )
    if payload.get("bounds"):
        lines += ["", "What bounds the workloads below 1.0×:", "", *payload["bounds"]]
    return "\n".join(lines) + "\n"


def _plot(payload: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = payload["pgd"] + payload["train"]
    fig = Figure(figsize=(4.0 * len(rows), 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(rows), squeeze=False)[0]
    for ax, row in zip(axes, rows, strict=True):
        labels = list(row["results"])
        vals = [row["results"][k]["images_per_s"] for k in labels]
        colors = ["tab:blue" if k.startswith("jax") else "tab:orange" for k in labels]
        ax.bar(range(len(vals)), vals, color=colors)
        ax.set_xticks(range(len(vals)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(row["model"] + (" train" if "attack_steps" in row else " PGD"), fontsize=9)
        ax.set_ylabel("images / s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models (a smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=None, help="subset of the models")
    parser.add_argument(
        "--out", default=f"benchmarks/results/{time.strftime('%Y-%m-%d')}-pgd_throughput"
    )
    args = parser.parse_args(argv)
    # As the `jaxrobust` commands do: one CPU device per core, batches sharded over them.
    use_cpu_cores_as_devices()
    specs = QUICK if args.quick else MODELS
    names = args.models or list(specs)
    unknown = set(names) - set(specs)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; known: {sorted(specs)}")
    payload = {
        "benchmark": "PGD and PGD-AT throughput vs PyTorch peers",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "quick": args.quick,
        "pgd": [],
        "train": [],
    }
    if HAVE_PEERS:
        import torch

        payload["torch"] = torch.__version__
    for name in names:
        payload["pgd"].append(bench_pgd(name, specs[name], args.repeats))
        print(json.dumps(payload["pgd"][-1]["results"]), flush=True)
    for name in [n for n in names if n in ("mlp", "preact_resnet18")]:
        payload["train"].append(bench_train(name, specs[name], args.repeats))
        print(json.dumps(payload["train"][-1]["results"]), flush=True)
    payload["bounds"] = _bounds(payload, _latest_kernels_report(args.out))
    write_report(args.out, payload, _markdown(payload), _plot)
    print(_markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
