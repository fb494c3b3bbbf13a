"""Peak memory of PGD on PreActResNet-18, batch 128: jaxrobust against the PyTorch loop.

Same model, weights, inputs and random start as `pgd_throughput.py` (32×32×3 inputs, ℓ∞
ε = 8/255, PGD-10 with sign steps), batch 128. Each contender runs in its own fresh process:

1. build the model, weights and inputs (and, for jaxrobust, compile the attack ahead of
   time, so compiler memory is not counted), and run the attack once as a warm-up (one-time
   set-up of thread pools and kernels is not counted either);
2. return freed heap to the OS (`malloc_trim`), read the resident set size (VmRSS) as the
   baseline and reset the kernel's high-water mark (`echo 5 > /proc/self/clear_refs`);
3. run the attack once and read the high-water mark (VmHWM).

Peak memory = VmHWM − baseline: the memory the attack itself needed on top of what was
resident (weights, inputs, libraries). For jaxrobust, XLA's own buffer assignment of the
compiled program (`memory_analysis()`: temporaries + outputs) is reported beside it.
Linux only (reads /proc). Without PyTorch installed only the jaxrobust column is measured.

    python benchmarks/memory.py [--quick] [--out benchmarks/results/DATE-memory.json]
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HAVE_TORCH = importlib.util.find_spec("torch") is not None
SPEC = ("preact_resnet18", {}, (128, 32, 32, 3), 10, 8 / 255)
QUICK = ("preact_resnet18", {"width": 4}, (8, 8, 8, 3), 2, 0.1)
MiB = 2**20


def _status_bytes(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> int:
    """Return freed heap to the OS, reset VmHWM; the resident bytes now (the baseline)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline just includes free heap
        pass
    Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmRSS")


def _child(framework: str, quick: bool) -> dict:
    import jax
    import numpy as np
    from pgd_throughput import _jax_attacks, _setup, _torch_model

    spec = QUICK if quick else SPEC
    model, variables, x, y, delta0, steps, eps = _setup(spec)
    out: dict = {"framework": framework, "batch": x.shape[0], "steps": steps}
    if framework == "jax":
        engine, _ = _jax_attacks(model, variables, steps, eps)
        args = jax.device_put((variables, x, y, delta0))
        compiled = engine.lower(*args).compile()
        mem = compiled.memory_analysis()
        out["xla_temp_bytes"] = int(mem.temp_size_in_bytes)
        out["xla_output_bytes"] = int(mem.output_size_in_bytes)
        out["xla_argument_bytes"] = int(mem.argument_size_in_bytes)
        jax.block_until_ready(compiled(*args))  # warm-up
        baseline = _reset_peak()
        result = np.asarray(jax.block_until_ready(compiled(*args)))
    else:
        import _torch_peers as peers
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        net = _torch_model(spec[0], variables)
        xt, yt, dt = torch.from_numpy(x), torch.from_numpy(y).long(), torch.from_numpy(delta0)
        alpha = 2.5 * eps / steps

        def attack():
            return peers.pgd_linf(net, xt, yt, dt, eps=eps, step_size=alpha, steps=steps)

        attack()  # warm-up
        baseline = _reset_peak()
        result = attack().numpy()
    peak = _status_bytes("VmHWM")
    out["baseline_bytes"] = baseline
    out["peak_bytes"] = peak - baseline
    out["checksum"] = float(np.abs(result).sum())
    return out


def _run_child(framework: str, quick: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", framework] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{framework} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _markdown(payload: dict) -> str:
    rows = payload["results"]
    lines = [
        f"# Peak memory of PGD, {payload['date']} ({payload['machine']})",
        "",
        f"{payload['workload']}. Peak = VmHWM − VmRSS before the attack (MiB).",
        "",
        "| contender | peak MiB | XLA temporaries + outputs MiB |",
        "|---|---:|---:|",
    ]
    for name, r in rows.items():
        xla = r.get("xla_temp_bytes")
        xla_s = f"{(xla + r['xla_output_bytes']) / MiB:.0f}" if xla is not None else "–"
        lines.append(f"| {name} | {r['peak_bytes'] / MiB:.0f} | {xla_s} |")
    if "ratio_jax_over_torch" in payload:
        lines += ["", f"jaxrobust / PyTorch: {payload['ratio_jax_over_torch']:.2f}×"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        print(json.dumps(_child(argv[1], "--quick" in argv)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    today = datetime.date.today().isoformat()
    default = Path(__file__).parent / "results" / f"{today}-memory.json"
    parser.add_argument("--quick", action="store_true", help="a tiny model (tests)")
    parser.add_argument("--out", type=Path, default=default, help="JSON path (+ .md beside)")
    args = parser.parse_args(argv)
    spec = QUICK if args.quick else SPEC
    results = {"jaxrobust pgd": _run_child("jax", args.quick)}
    if HAVE_TORCH:
        results["PyTorch loop"] = _run_child("torch", args.quick)
    name, kwargs, shape, steps, eps = spec
    payload = {
        "date": today,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "workload": f"{name}{kwargs or ''}, batch {shape[0]}, {shape[1:]} inputs, "
        f"PGD-{steps} ℓ∞ ε={eps:.4g}",
        "results": results,
    }
    if HAVE_TORCH:
        ratio = results["jaxrobust pgd"]["peak_bytes"] / results["PyTorch loop"]["peak_bytes"]
        payload["ratio_jax_over_torch"] = ratio
        payload["within_1_5x"] = ratio <= 1.5
    for label, r in results.items():
        print(f"{label:16s} peak {r['peak_bytes'] / MiB:8.1f} MiB")
    if HAVE_TORCH:
        print(f"jaxrobust / PyTorch: {payload['ratio_jax_over_torch']:.2f}x")
    from _report import write_report

    write_report(args.out, payload, _markdown(payload))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
