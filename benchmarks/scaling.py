"""How jaxrobust's PGD scales: with the batch size (beside the PyTorch loop), in achieved
FLOP/s against this machine's measured matmul peak, and with the number of devices.

Three measurements in one run, on the MLP 784-256-256-10 and the Madry et al. MNIST CNN of
`pgd_throughput.py` (same specs, weights, data, random starts and ℓ∞ PGD: ε = 0.3, PGD-40,
sign step 2.5ε/k, last iterate; `--steps` runs fewer steps for every model):

  1. Batch size: jaxrobust `pgd` (the engine, one compiled program) and the PyTorch
     `torch.autograd.grad` loop (`_torch_peers.pgd_linf`, where torch and torchattacks are
     installed) at batches 16, 32, 64, 128 and 256, images/s and their ratio.
  2. FLOP/s: FLOPs per call from XLA's cost analysis of the compiled engine, divided by the
     median seconds; the PyTorch loop computes the same math, so the same count gives its
     FLOP/s. MFU is against the *measured sgemm peak*: the best of a few large jitted float32
     matrix products in the same run (2n³ FLOPs over the median seconds). Where the CPU
     reports a clock, a theoretical fp32 peak (cores × GHz × FLOP/cycle, 64 FLOP/cycle
     assuming two AVX-512 FMA units) is given as well; it is an assumption, not a
     measurement. XLA counts a while loop's body once, so the engine's count is checked
     against (one step's count) × steps; on CPU the engine unrolls its steps and the two
     agree. XLA counts only the multiply-adds that touch real inputs, not SAME padding, so
     the Madry CNN's 5×5 convolutions count 8% (28×28) and 16% (14×14) below the textbook
     2·H·W·k²·Cin·Cout (its PGD step: 49 MFLOP per image, not 55): MFU is conservative.
  3. Device count: the same engine on a global batch of 128, sharded over a mesh of 1, 2, 4
     and 8 simulated CPU devices (`jaxrobust.parallel.data_mesh`, `shard_batch`; params
     replicated), each in a fresh process started with
     XLA_FLAGS=--xla_force_host_platform_device_count=N and JAX_PLATFORMS=cpu. The
     adversarial examples must equal the 1-device ones (max |Δx| reported). The simulated
     devices share this machine's cores, so on a small CPU this measures the overhead of
     sharding, not a speed-up; on accelerators the same code runs one shard per chip.

Timings are medians over repeats after a warm-up call; "compile" is lowering plus XLA
compilation. PyTorch uses all cores (`torch.set_num_threads`). On an idle 2-core CPU the
full run should take 3–4 minutes (PGD-40, estimated from `pgd_throughput`'s timings; most
of it the Madry CNN); `--steps 10` cuts the attack time to a quarter. The wall time is
recorded in the output.

    python benchmarks/scaling.py [--quick] [--steps K] [--out benchmarks/results/DATE-scaling]

Writes OUT.json, OUT.md (tables) and OUT.png (images/s and MFU vs batch, images/s vs devices).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from _report import write_report  # a sibling module: importable once its folder is on the path
from pgd_throughput import (  # a sibling script: importable once its folder is on the path
    HAVE_PEERS,
    MODELS,
    QUICK,
    _jax_attacks,
    _setup,
    _time,
    _torch_model,
)

from jaxrobust.parallel import data_mesh, replicate, shard_batch

BATCHES, QUICK_BATCHES = (16, 32, 64, 128, 256), (2, 4, 8)
DEVICES, QUICK_DEVICES = (1, 2, 4, 8), (1, 2)
DEVICE_BATCH, QUICK_DEVICE_BATCH = 128, 8  # global batch, divisible by every device count
SGEMM_SIZES, QUICK_SGEMM_SIZES = (1024, 2048, 3072), (256, 512)
SPECS = {"mlp": MODELS["mlp"], "madry_cnn": MODELS["madry_cnn"]}
QUICK_SPECS = {"mlp": QUICK["mlp"], "madry_cnn": ("madry_cnn", {}, (8, 8, 8, 1), 2, 0.1)}
JAX, TORCH = "jaxrobust pgd", "PyTorch loop"


def _spec(name: str, quick: bool, batch: int, steps: int | None) -> tuple:
    """The model spec of `pgd_throughput` with the batch (and optionally steps) replaced."""
    model, kwargs, shape, default_steps, eps = (QUICK_SPECS if quick else SPECS)[name]
    return model, kwargs, (batch, *shape[1:]), steps or default_steps, eps


def _flops(compiled: Any) -> float:
    """FLOPs of one call of a compiled program per XLA's cost analysis (NaN if absent).

    jax 0.10 returns a dict; older versions a list with one dict per computation."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    return float(cost.get("flops", math.nan)) if cost else math.nan


def measured_peak(sizes: tuple[int, ...], repeats: int) -> dict:
    """This machine's practical fp32 peak: the best GFLOP/s of jitted n×n @ n×n products
    (2n³ FLOPs over the median seconds); XLA's own count is kept as a check of its units."""
    rows = []
    for n in sizes:
        a = jax.device_put(np.random.default_rng(0).standard_normal((n, n), np.float32))
        compiled = jax.jit(lambda m: m @ m).lower(a).compile()
        _, seconds = _time(lambda c=compiled, a=a: jax.block_until_ready(c(a)), max(repeats, 3))
        rows.append(
            {
                "n": n,
                "seconds": seconds,
                "gflops": 2 * n**3 / seconds / 1e9,
                "xla_flops_over_2n3": _flops(compiled) / (2 * n**3),
            }
        )
    return {"sgemm": rows, "measured_sgemm_gflops": max(r["gflops"] for r in rows)}


def theoretical_peak() -> dict | None:
    """cores × GHz × FLOP/cycle from lscpu or /proc/cpuinfo, or None without a clock.

    An assumption, not a measurement: turbo and AVX-512 down-clocking move the real clock,
    and under a hypervisor "cpu MHz" is the reported (often TSC) frequency."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    m = re.search(r"^flags\s*:(.*)$", text, re.M)
    flags = set(m.group(1).split()) if m else set()
    mhz, source = None, None
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"^CPU max MHz:\s*([\d.]+)", lscpu, re.M)
        if m:
            mhz, source = float(m.group(1)), "lscpu CPU max MHz"
    except (OSError, subprocess.SubprocessError):
        pass
    if mhz is None:
        m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)
        if not m:
            return None
        mhz, source = float(m.group(1)), "/proc/cpuinfo cpu MHz (reported clock, not a max)"
    # fp32 lanes × 2 (multiply-add) × 2 FMA units: the server-core assumption.
    if "avx512f" in flags:
        per_cycle, isa = 64, "AVX-512"
    elif "fma" in flags:
        per_cycle, isa = 32, "AVX2"
    else:
        per_cycle, isa = 16, "SSE"
    cores = os.cpu_count() or 1
    return {
        "gflops": cores * mhz / 1e3 * per_cycle,
        "cores": cores,
        "mhz": mhz,
        "mhz_source": source,
        "flop_per_cycle": per_cycle,
        "assumption": f"{isa}, 2 FMA units × {per_cycle // 4} fp32 lanes × 2 FLOP per FMA",
    }


def bench_batch(name: str, spec: tuple, repeats: int, peak: float) -> dict:
    """images/s, GFLOP/s and MFU (vs the measured sgemm `peak`, GFLOP/s) of one model and
    batch size, for the jaxrobust engine and (with the peers) the PyTorch loop."""
    model, variables, x, y, delta0, steps, eps = _setup(spec)
    engine, loop = _jax_attacks(model, variables, steps, eps)
    args = jax.device_put((variables, x, y, delta0))
    batch = x.shape[0]
    t0 = time.perf_counter()
    compiled = engine.lower(*args).compile()  # timed as is: no second compilation by jit
    compile_s = time.perf_counter() - t0
    engine_flops = _flops(compiled)
    step_flops = _flops(loop.step.lower(*args).compile()) * steps
    # ~1 where the steps are unrolled (CPU); ~1/steps where XLA counted a while loop's body
    # once (the engine's loop on accelerators): then one step's count × steps is the work.
    unrolled = engine_flops >= 0.9 * step_flops
    flops = engine_flops if unrolled else step_flops
    row: dict[str, Any] = {
        "model": name,
        "batch": batch,
        "steps": steps,
        "eps": eps,
        "flops_per_call": flops,
        "flops_source": "engine" if unrolled else "step x steps",
        "step_flops_times_steps": step_flops,
        "engine_over_step_flops": engine_flops / step_flops,
        "mflop_per_image_step": flops / batch / steps / 1e6,
        "results": {},
    }
    _, seconds = _time(lambda: jax.block_until_ready(compiled(*args)), repeats)
    timings = {JAX: (seconds, compile_s)}
    if HAVE_PEERS:
        import _torch_peers as peers
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        net = _torch_model(spec[0], variables)
        xt, yt, dt = torch.from_numpy(x), torch.from_numpy(y).long(), torch.from_numpy(delta0)
        alpha = 2.5 * eps / steps

        def run_torch() -> torch.Tensor:
            return peers.pgd_linf(net, xt, yt, dt, eps=eps, step_size=alpha, steps=steps)

        timings[TORCH] = (_time(run_torch, repeats)[1], 0.0)
    for label, (sec, comp) in timings.items():
        gflops = flops / sec / 1e9
        row["results"][label] = {
            "seconds": sec,
            "images_per_s": batch / sec,
            "compile_seconds": comp,
            "gflops": gflops,
            "mfu_vs_measured_sgemm": gflops / peak,
        }
    if TORCH in row["results"]:
        row["ratio_jax_over_torch"] = (
            row["results"][JAX]["images_per_s"] / row["results"][TORCH]["images_per_s"]
        )
    return row


def device_child(
    devices: int, names: list[str], quick: bool, steps: int | None, repeats: int, out_dir: Path
) -> None:
    """In a process that sees `devices` CPU devices: time the engine sharded over all of
    them; write child.json (timings) and <model>.npy (adversarial examples)."""
    assert len(jax.devices()) == devices, (jax.devices(), devices)
    mesh = data_mesh()
    rows = []
    for name in names:
        spec = _spec(name, quick, QUICK_DEVICE_BATCH if quick else DEVICE_BATCH, steps)
        model, variables, x, y, delta0, k, eps = _setup(spec)
        engine, _ = _jax_attacks(model, variables, k, eps)
        v = replicate(variables, mesh)
        xs, ys, ds = shard_batch((x, y, delta0), mesh)
        t0 = time.perf_counter()
        compiled = engine.lower(v, xs, ys, ds).compile()
        compile_s = time.perf_counter() - t0
        _, seconds = _time(
            lambda c=compiled, a=(v, xs, ys, ds): jax.block_until_ready(c(*a)), repeats
        )
        x_adv = compiled(v, xs, ys, ds)
        np.save(out_dir / f"{name}.npy", np.asarray(x_adv))
        rows.append(
            {
                "model": name,
                "devices": devices,
                "batch": x.shape[0],
                "steps": k,
                "seconds": seconds,
                "images_per_s": x.shape[0] / seconds,
                "compile_seconds": compile_s,
                "output_devices": len(x_adv.sharding.device_set),  # sharded, not gathered
            }
        )
    (out_dir / "child.json").write_text(json.dumps(rows))


def bench_devices(names: list[str], quick: bool, steps: int | None, repeats: int) -> list[dict]:
    """Run `device_child` in a fresh process per device count; compare with 1 device."""
    rows, reference = [], {}
    for n in QUICK_DEVICES if quick else DEVICES:
        env = dict(os.environ)
        # The flag is read when the CPU client starts, so it goes into the child's env;
        # drop any inherited device count so ours is the only one.
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={n}"])
        env["JAX_PLATFORMS"] = "cpu"
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--device-child",
                str(n),
                "--child-out",
                tmp,
                "--repeats",
                str(repeats),
                "--models",
                *names,
            ]
            cmd += ["--quick"] if quick else []
            cmd += ["--steps", str(steps)] if steps else []
            subprocess.run(cmd, env=env, check=True, timeout=900)
            child = json.loads((Path(tmp) / "child.json").read_text())
            for row in child:
                x_adv = np.load(Path(tmp) / f"{row['model']}.npy")
                reference.setdefault(row["model"], x_adv)
                row["max_abs_diff_vs_1_device"] = float(
                    np.abs(x_adv - reference[row["model"]]).max()
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def _markdown(payload: dict) -> str:
    peak = payload["peak"]
    theo = payload.get("theoretical_peak")
    lines = [
        f"# PGD scaling, {payload['date']} ({payload['machine']})",
        "",
        f"jax {payload['jax']} ({payload['backend']}), torch {payload.get('torch', 'n/a')}; "
        "ℓ∞ PGD as in `pgd_throughput.py`; images/s (median of repeats after a warm-up, "
        "compilation excluded); ratio = jaxrobust / PyTorch loop. GFLOP/s from XLA's cost "
        "analysis of the compiled engine (the PyTorch loop computes the same math); "
        f"**MFU is against the measured sgemm peak, {peak['measured_sgemm_gflops']:.1f} "
        "GFLOP/s** (best jitted fp32 n×n matmul: "
        + ", ".join(f"n={r['n']} {r['gflops']:.1f}" for r in peak["sgemm"])
        + ")."
        + (
            f" Theoretical fp32 peak, an assumption: {theo['gflops']:.1f} GFLOP/s = "
            f"{theo['cores']} cores × {theo['mhz'] / 1e3:.2f} GHz ({theo['mhz_source']}) × "
            f"{theo['flop_per_cycle']} FLOP/cycle ({theo['assumption']}); the measured sgemm "
            f"peak is {100 * peak['measured_sgemm_gflops'] / theo['gflops']:.0f}% of it."
            if theo
            else ""
        ),
        "",
        "## Batch size",
        "",
        "| model | steps | batch | jaxrobust img/s | PyTorch img/s | ratio | jaxrobust GFLOP/s "
        "| jaxrobust MFU | PyTorch GFLOP/s | PyTorch MFU | MFLOP / image·step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in payload["batch_scaling"]:
        j, t = row["results"][JAX], row["results"].get(TORCH)
        cells = [
            row["model"],
            str(row["steps"]),
            str(row["batch"]),
            f"{j['images_per_s']:.1f}",
            f"{t['images_per_s']:.1f}" if t else "",
            f"{row['ratio_jax_over_torch']:.2f}×" if t else "",
            f"{j['gflops']:.1f}",
            f"{100 * j['mfu_vs_measured_sgemm']:.1f}%",
            f"{t['gflops']:.1f}" if t else "",
            f"{100 * t['mfu_vs_measured_sgemm']:.1f}%" if t else "",
            f"{row['mflop_per_image_step']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    ratios = [r["engine_over_step_flops"] for r in payload["batch_scaling"]]
    lines += [
        "",
        f"XLA FLOPs of the engine / (one step's FLOPs × steps): {min(ratios):.3f}–"
        f"{max(ratios):.3f} (≈ 1: the unrolled steps are all counted).",
        "",
        "## Device count",
        "",
        "Simulated CPU devices (`--xla_force_host_platform_device_count`) share this "
        f"machine's {os.cpu_count()} cores: this measures the overhead of sharding the batch "
        "(params replicated), not a speed-up. On accelerators the same code runs one shard "
        "per chip.",
        "",
        "| model | steps | global batch | devices | img/s | compile s | max abs Δx vs 1 device |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in payload["device_scaling"]:
        lines.append(
            f"| {r['model']} | {r['steps']} | {r['batch']} | {r['devices']} | "
            f"{r['images_per_s']:.1f} | {r['compile_seconds']:.1f} | "
            f"{r['max_abs_diff_vs_1_device']:.1e} |"
        )
    lines += ["", f"Whole run: {payload['wall_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def _plot(payload: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13.0, 3.8))
    FigureCanvasAgg(fig)
    ax_ips, ax_mfu, ax_dev = fig.subplots(1, 3)
    models = list(dict.fromkeys(r["model"] for r in payload["batch_scaling"]))
    colors = dict(zip(models, ("tab:blue", "tab:green", "tab:red", "tab:purple"), strict=False))
    for name in models:
        rows = [r for r in payload["batch_scaling"] if r["model"] == name]
        batches = [r["batch"] for r in rows]
        for label, style in ((JAX, "-o"), (TORCH, "--s")):
            if label in rows[0]["results"]:
                res = [r["results"][label] for r in rows]
                kw = {"color": colors[name], "label": f"{name} {label}"}
                ax_ips.plot(batches, [v["images_per_s"] for v in res], style, **kw)
                ax_mfu.plot(batches, [100 * v["mfu_vs_measured_sgemm"] for v in res], style, **kw)
    for name in models:
        rows = [r for r in payload["device_scaling"] if r["model"] == name]
        if rows:
            ax_dev.plot(
                [r["devices"] for r in rows],
                [r["images_per_s"] for r in rows],
                "-o",
                color=colors[name],
                label=f"{name} (batch {rows[0]['batch']})",
            )
    batches = sorted({r["batch"] for r in payload["batch_scaling"]})
    devices = sorted({r["devices"] for r in payload["device_scaling"]})
    for ax, ticks in ((ax_ips, batches), (ax_mfu, batches), (ax_dev, devices)):
        # log-log: the models differ by ~100x in images/s and MFU
        ax.set(xscale="log", yscale="log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.legend(fontsize=6)
        ax.grid(alpha=0.3)
    ax_ips.set(xlabel="batch size", ylabel="images / s", title="PGD images/s")
    ax_mfu.set(xlabel="batch size", ylabel="% of measured sgemm peak", title="MFU")
    ax_dev.set(
        xlabel="simulated CPU devices (shared cores)", ylabel="images / s", title="sharded PGD"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and sizes (a smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="PGD steps (default: 40)")
    parser.add_argument("--models", nargs="*", default=None, help="subset of mlp, madry_cnn")
    parser.add_argument("--out", default=f"benchmarks/results/{time.strftime('%Y-%m-%d')}-scaling")
    parser.add_argument("--device-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = args.models or list(SPECS)
    unknown = set(names) - set(SPECS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; known: {sorted(SPECS)}")
    if args.device_child is not None:
        device_child(
            args.device_child, names, args.quick, args.steps, args.repeats, Path(args.child_out)
        )
        return 0

    t_start = time.perf_counter()
    payload: dict[str, Any] = {
        "benchmark": "PGD scaling: batch size, FLOP/s and MFU, device count",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "quick": args.quick,
        "repeats": args.repeats,
    }
    if HAVE_PEERS:
        import torch

        payload["torch"] = torch.__version__
    payload["peak"] = measured_peak(QUICK_SGEMM_SIZES if args.quick else SGEMM_SIZES, args.repeats)
    payload["theoretical_peak"] = theoretical_peak()
    print(json.dumps(payload["peak"]), flush=True)
    peak = payload["peak"]["measured_sgemm_gflops"]
    payload["batch_scaling"] = []
    for name in names:
        for batch in QUICK_BATCHES if args.quick else BATCHES:
            spec = _spec(name, args.quick, batch, args.steps)
            payload["batch_scaling"].append(bench_batch(name, spec, args.repeats, peak))
            print(json.dumps(payload["batch_scaling"][-1]["results"]), flush=True)
    payload["device_scaling"] = bench_devices(names, args.quick, args.steps, args.repeats)
    payload["wall_seconds"] = time.perf_counter() - t_start

    write_report(args.out, payload, _markdown(payload), _plot)
    print(_markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
