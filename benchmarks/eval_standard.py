"""Time the `standard` evaluation (APGD-CE → APGD-T → FAB-T → Square) of the digits test set,
beside the reference PyTorch AutoAttack on the same weights.

A fixed model (a 3-layer MLP 64-256-256-10, standard training, seed 0) and the 360 test
images at ℓ∞ ε = 0.1, batch 360, no sanity checks (AutoAttack has none). Each
measurement runs in a fresh process:

- the API path, as research code calls it: `use_cpu_cores_as_devices()` (the one-liner
  giving the CPU one device per core, as the CLI does), `restore_run`, `jr.evaluate`;
  "cold" with an empty JAX persistent compilation cache, "warm" with the cache the cold
  run filled, and within the warm process a second `evaluate` call (the programs are kept
  in memory: nothing is compiled or loaded); "warm, one device" without the one-liner;
- the CLI path: `jaxrobust eval RUN --suite standard --eps 0.1 --batch-size 360
  --no-checks` (its `main`, in a process whose report is saved per example), warm cache;
- (when installed: `bash benchmarks/install_peers.sh`) the reference AutoAttack
  (`pyautoattack`, version="standard", batch of 360) on a PyTorch copy of the same weights.

Reports end-to-end seconds (process work after imports: data, model restore, evaluation
incl. compilation), compilation seconds and attack seconds without compilation, the robust
accuracies, the speed-ups over the reference, whether every path leaves the same examples
robust (per-example equality with the reference), and writes them to JSON.

    python benchmarks/eval_standard.py [--out benchmarks/results/DATE-eval_standard.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EPS = 0.1


def _train_model(run_dir: Path) -> None:
    from jaxrobust.config import load_config
    from jaxrobust.train.loop import train

    cfg = load_config(
        None,
        [
            "objective=standard",
            "model.kwargs.hidden=(256, 256)",
            "epochs=20",
            "eval.eps_list=(0.1,)",
            "eval.steps=10",
            "eval.restarts=1",
            "eval.every_epochs=20",
        ],
    )
    train(cfg, run_dir, progress=False, log=lambda s: None)


def _report_numbers(report) -> dict:
    return {
        "compile_seconds": report.compile_seconds,
        "attack_seconds": sum(report.timings.values()),
        "per_attack_seconds": report.timings,
        "clean_accuracy": report.clean_accuracy,
        "robust_accuracy": report.robust_accuracy[0],
        "per_attack_cascade": {k: v[0] for k, v in report.per_attack.items()},
        "robust_examples": [int(i) for i in report.robust[0].nonzero()[0]],
    }


def _worker(run_dir: str, cores_as_devices: bool) -> dict:
    """The API path: what research code writes."""
    t0 = time.perf_counter()
    import jax

    import jaxrobust as jr
    from jaxrobust.data import load_split
    from jaxrobust.parallel import use_cpu_cores_as_devices
    from jaxrobust.train.loop import restore_run

    if cores_as_devices:
        use_cpu_cores_as_devices()  # one CPU device per core, as `jaxrobust eval` runs
    t_import = time.perf_counter() - t0
    t1 = time.perf_counter()
    _, state, _ = restore_run(run_dir)
    x, y = load_split("digits", "test")
    kwargs = dict(eps=EPS, attacks="standard", batch_size=len(y), checks=False)
    report = jr.evaluate(state.logits_fn(), x, y, jax.random.key(0), **kwargs)
    seconds = time.perf_counter() - t1
    t2 = time.perf_counter()
    again = jr.evaluate(state.logits_fn(), x, y, jax.random.key(0), **kwargs)
    return {
        "end_to_end_seconds": seconds,
        "second_call_seconds": time.perf_counter() - t2,
        "second_call_compile_seconds": again.compile_seconds,
        "second_call_same_results": bool((again.broken_by == report.broken_by).all()),
        "devices": jax.device_count(),
        "import_seconds": t_import,
        **_report_numbers(report),
    }


def _cli_worker(run_dir: str) -> dict:
    """The CLI path: `jaxrobust eval`'s own `main`, with its report kept per example."""
    t0 = time.perf_counter()
    import tempfile

    import jaxrobust.attacks.cascade as cascade
    from jaxrobust import cli

    t_import = time.perf_counter() - t0
    reports = []
    real = cascade.evaluate

    def keep(*args, **kwargs):
        reports.append(real(*args, **kwargs))
        return reports[-1]

    cascade.evaluate = keep
    with tempfile.TemporaryDirectory() as out:
        argv = ["eval", run_dir, "--suite", "standard", "--eps", str(EPS), "--no-checks"]
        argv += ["--batch-size", "360", "--out", out]
        t1 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(argv)
        seconds = time.perf_counter() - t1
        assert code == 0, code
    import jax

    return {
        "end_to_end_seconds": seconds,
        "devices": jax.device_count(),
        "import_seconds": t_import,
        **_report_numbers(reports[0]),
    }


def _torch_worker(run_dir: str) -> dict:
    """The reference AutoAttack (PyTorch) on the same weights, images and ε."""
    t0 = time.perf_counter()
    import _torch_peers
    import numpy as np
    import torch
    from pyautoattack import AutoAttack

    from jaxrobust.data import load_split
    from jaxrobust.parallel import use_cpu_cores_as_devices
    from jaxrobust.train.loop import restore_run

    use_cpu_cores_as_devices()  # as `jaxrobust eval` runs: one CPU device per core
    t_import = time.perf_counter() - t0
    torch.set_num_threads(os.cpu_count() or 1)
    t1 = time.perf_counter()
    run, state, _ = restore_run(run_dir)
    model = _torch_peers.mlp(state.params, run.model.mean, run.model.std)
    x, y = load_split("digits", "test")
    xt, yt = torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(y)).long()
    adversary = AutoAttack(model, norm="Linf", eps=EPS, version="standard", seed=0)
    adversary.verbose = False
    x_adv = adversary.run_standard_evaluation(xt, yt, batch_size=len(yt))
    x_adv = x_adv[0] if isinstance(x_adv, tuple) else x_adv
    seconds = time.perf_counter() - t1
    with torch.no_grad():
        clean = (model(xt).argmax(1) == yt).float().mean().item()
        ok = (model(x_adv).argmax(1) == yt) & (model(xt).argmax(1) == yt)
        robust = ok.float().mean().item()
    return {
        "robust_examples": [int(i) for i in ok.nonzero().flatten()],
        "end_to_end_seconds": seconds,
        "import_seconds": t_import,
        "clean_accuracy": clean,
        "robust_accuracy": robust,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def _peers_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("torch", "pyautoattack"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default=f"benchmarks/results/{time.strftime('%Y-%m-%d')}-eval_standard.json"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--one-device", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cli-worker", help=argparse.SUPPRESS)
    parser.add_argument("--torch-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, not args.one_device)))
        return 0
    if args.cli_worker:
        print(json.dumps(_cli_worker(args.cli_worker)))
        return 0
    if args.torch_worker:
        print(json.dumps(_torch_worker(args.torch_worker)))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        run_dir, cache = Path(tmp) / "model", Path(tmp) / "jax_cache"
        _train_model(run_dir)
        env = dict(os.environ, JAXROBUST_CACHE_DIR=str(cache))
        env.pop("JAXROBUST_CPU_DEVICES", None)
        results = {}
        paths = [
            ("cold", ["--worker"]),
            ("warm", ["--worker"]),
            # One device compiles other programs than two (no sharding): the first one-device
            # run fills the cache for them, so the second is the warm one-device number.
            ("cold_one_device", ["--one-device", "--worker"]),
            ("warm_one_device", ["--one-device", "--worker"]),
            ("cli_warm", ["--cli-worker"]),
        ]
        for label, flags in paths:
            code = (
                "import sys; from jaxrobust.compilation_cache import enable_compilation_cache; "
                "enable_compilation_cache(); sys.argv = sys.argv[:1] + sys.argv[2:];"
                f" exec(open({str(Path(__file__).resolve())!r}).read())"
            )
            out = subprocess.run(
                [sys.executable, "-c", code, "-", *flags, str(run_dir)],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[label] = json.loads(out.strip().splitlines()[-1])
        if _peers_installed():
            out = subprocess.run(
                [sys.executable, __file__, "--torch-worker", str(run_dir)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results["pytorch_autoattack"] = json.loads(out.strip().splitlines()[-1])
            ref = results["pytorch_autoattack"]["end_to_end_seconds"]
            results["speedup_vs_pytorch_autoattack"] = {
                label: ref / results[label]["end_to_end_seconds"] for label, _ in paths
            }
            results["speedup_vs_pytorch_autoattack"]["second_call"] = (
                ref / results["warm"]["second_call_seconds"]
            )
            want = results["pytorch_autoattack"]["robust_examples"]
            results["same_robust_examples_as_reference"] = {
                label: results[label]["robust_examples"] == want for label, _ in paths
            }
        else:
            print("PyTorch peers not installed (bash benchmarks/install_peers.sh): JAX only")
    import jax

    payload = {
        "benchmark": "standard evaluation (APGD-CE, APGD-T, FAB-T, Square), digits test set",
        "model": "MLP 64-256-256-10, standard training, seed 0",
        "eps": EPS,
        "num_examples": 360,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        **results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2))
    for label, _ in paths:
        r = results[label]
        print(
            f"{label}: {r['end_to_end_seconds']:.1f} s end to end on {r['devices']} device(s) "
            f"({r['compile_seconds']:.1f} s compiling, {r['attack_seconds']:.1f} s attacking); "
            f"robust accuracy {r['robust_accuracy']:.4f}"
        )
    print(f"warm, second call in the process: {results['warm']['second_call_seconds']:.1f} s")
    if "pytorch_autoattack" in results:
        r = results["pytorch_autoattack"]
        speed = results["speedup_vs_pytorch_autoattack"]
        same = results["same_robust_examples_as_reference"]
        print(
            f"reference PyTorch AutoAttack: {r['end_to_end_seconds']:.1f} s end to end; "
            f"robust accuracy {r['robust_accuracy']:.4f}"
        )
        for label in speed:
            print(f"  {label}: {speed[label]:.2f}x the reference's speed")
        print(f"  same robust examples as the reference: {same}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
