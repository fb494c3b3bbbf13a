"""Compilation time of the default training and evaluation jobs, cold and warm.

The two jobs are exactly the commands a user runs first: `jaxrobust train` (its defaults:
PGD-AT of the 512-512 MLP on digits, then the PGD-50×5 evaluation curve) and
`jaxrobust eval RUN` (its defaults: the `standard` suite at the run's ε list) on the run the
train job wrote. Each runs in a fresh process, "cold" with an empty JAX persistent compilation
cache, then "warm" in another fresh process with the cache the cold run filled.

Compilation time is read from JAX's own monitoring events, summed over every jitted program
the job builds: tracing to a jaxpr, lowering to StableHLO, and the backend step (XLA
compilation when cold, loading the compiled program from the persistent cache when warm).
Tracing and lowering happen in every process — the persistent cache is keyed by the lowered
program — so they are part of the warm number too. Programs that compile in under 0.1 s
are not cached (`jax_persistent_cache_min_compile_time_secs`) and are recompiled warm.

    python benchmarks/compile_time.py [--out benchmarks/results/DATE-compile_time.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_COLD_S, TARGET_WARM_S = 30.0, 3.0
EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "backend_s",
}


def _child(job: str, run_dir: str, out_dir: str, result_path: str) -> None:
    """Run one job in this process with listeners on JAX's compile events; write JSON."""
    t0 = time.perf_counter()
    import jax

    from jaxrobust import cli

    totals = dict.fromkeys(EVENTS.values(), 0.0)
    counts = {"programs": 0, "cache_hits": 0, "cache_misses": 0}

    by_function: dict[str, list] = {}  # fun_name -> [backend compiles, seconds]

    def on_duration(event: str, seconds: float, fun_name: str = "?", **_: object) -> None:
        if event in EVENTS:
            totals[EVENTS[event]] += seconds
            entry = by_function.setdefault(fun_name, [0, 0.0])
            entry[0] += event == "/jax/core/compile/backend_compile_duration"
            entry[1] += seconds
            counts["programs"] += event == "/jax/core/compile/backend_compile_duration"

    def on_event(event: str, **_: object) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            counts["cache_hits"] += 1
        elif event == "/jax/compilation_cache/cache_misses":
            counts["cache_misses"] += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    t_import = time.perf_counter() - t0
    argv = (
        ["train", "--out", run_dir, "--quiet"]
        if job == "train"
        else ["eval", run_dir, "--out", out_dir]
    )
    t1 = time.perf_counter()
    rc = cli.main(argv)
    wall = time.perf_counter() - t1
    compile_s = sum(totals.values())
    Path(result_path).write_text(
        json.dumps(
            {
                "rc": rc,
                "argv": argv,
                "import_s": round(t_import, 2),
                "job_s": round(wall, 2),
                "compile_s": round(compile_s, 2),
                **{k: round(v, 2) for k, v in totals.items()},
                **counts,
                # The programs that cost most (compiles per name, seconds of all three steps).
                "top_functions": sorted(
                    ([name, n, round(sec, 3)] for name, (n, sec) in by_function.items()),
                    key=lambda r: -r[2],
                )[:12],
            }
        )
    )


def _run(job: str, cache: Path, run_dir: Path, out_dir: Path, work: Path) -> dict:
    result = work / f"{job}-{out_dir.name}.json"
    env_cache = {"JAXROBUST_CACHE_DIR": str(cache)}
    cmd = [sys.executable, __file__, "--child", job, str(run_dir), str(out_dir), str(result)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, **env_cache}, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{job} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    data = json.loads(result.read_text())
    data["process_s"] = round(time.perf_counter() - t, 2)
    return data


def measure(work: Path) -> dict:
    """Cold and warm runs of both jobs under `work`; returns the results dict."""
    rows = {}
    run_dir = work / "run"
    for job in ("train", "eval"):
        cache = work / f"cache-{job}"  # cold = empty cache of this job's own
        for mode in ("cold", "warm"):
            # train: a new run directory per mode (an existing one would resume, not train);
            # eval: the run the cold train job wrote, a new output directory per mode.
            rd = run_dir if job == "eval" or mode == "cold" else work / "run-warm"
            rows[f"{job}_{mode}"] = _run(job, cache, rd, work / f"eval-{mode}", work)
            r = rows[f"{job}_{mode}"]
            print(
                f"{job:5s} {mode}: compile {r['compile_s']:6.2f} s (trace {r['trace_s']:.2f}, "
                f"lower {r['lower_s']:.2f}, backend {r['backend_s']:.2f}; "
                f"{r['programs']} programs, {r['cache_hits']} cache hits) of a "
                f"{r['job_s']:.1f} s job",
                flush=True,
            )
    checks = {
        f"{job}_{mode}_below_{int(target)}s": rows[f"{job}_{mode}"]["compile_s"] < target
        for job in ("train", "eval")
        for mode, target in (("cold", TARGET_COLD_S), ("warm", TARGET_WARM_S))
    }
    return {"jobs": rows, "targets_s": {"cold": TARGET_COLD_S, "warm": TARGET_WARM_S}, **checks}


def _markdown(payload: dict) -> str:
    lines = [
        f"# Compilation time of the default jobs ({payload['date']})",
        "",
        f"{payload['machine']}; jax {payload['jax']}. Seconds; compile = trace + lower + "
        "backend (XLA compile cold, persistent-cache load warm).",
        "",
        "| job | cache | compile s | trace | lower | backend | programs | cache hits | job s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in payload["jobs"].items():
        job, mode = key.split("_")
        lines.append(
            f"| {job} | {mode} | {r['compile_s']:.2f} | {r['trace_s']:.2f} | {r['lower_s']:.2f} "
            f"| {r['backend_s']:.2f} | {r['programs']} | {r['cache_hits']} | {r['job_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        _child(*argv[1:5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    today = datetime.date.today().isoformat()
    default = Path(__file__).parent / "results" / f"{today}-compile_time.json"
    parser.add_argument("--out", type=Path, default=default, help="JSON path (+ .md beside)")
    args = parser.parse_args(argv)
    import jax

    with tempfile.TemporaryDirectory(prefix="jaxrobust-compile-") as tmp:
        payload = {
            "date": today,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "jax": jax.__version__,
            **measure(Path(tmp)),
        }
    from _report import write_report

    write_report(args.out, payload, _markdown(payload))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
