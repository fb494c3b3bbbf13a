"""One process of test_distributed: `jaxrobust train` (smoke-sized) as process I of 2, or the
single-process reference that reads the same global batches; then `jaxrobust eval` of the
run, as process I of 2 or in one process.

    distributed_worker.py reference OUT            one process, all its devices, data_shards=2
    distributed_worker.py crash OUT PORT I         `jaxrobust train --coordinator ...`, dies
                                                   (in both processes) before step CRASH_AT + 1
    distributed_worker.py resume OUT PORT I        the same command again: resumes, finishes
    distributed_worker.py eval RUN OUT PORT I      `jaxrobust eval RUN --out OUT --coordinator
                                                   ...` (EVAL_ARGS)
    distributed_worker.py eval RUN OUT             the same in one process, all its devices

Prints "RESULT <json>" on stdout: the metrics `train` returned in this process, or what
`evaluate` returned in it (the CLI writes process 0's alone).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

CRASH_AT = 7  # steps done when the crash run dies; its last checkpoint is step 6

# 2 epochs of 1437 // 256 = 5 steps, a checkpoint every 2 steps (the last one is the final
# state), evaluation on 128 test examples per epoch and on the test split at the end, with
# the same PGD-3 (one compiled attack: compilation dominates the test's time).
SETTINGS = {
    "epochs": 2,
    "batch_size": 256,
    "checkpoint.every_steps": 2,
    "eval.batch_size": 128,
    "eval.during_examples": 128,
    "eval.steps": 3,
}

# Two attacks and the sanity checks on the test split's first 64 examples, at two ε where
# the smoke-trained model is neither robust nor broken everywhere. Batches of 64: a cascade
# stage runs on a multiple of 8 examples (4 per device), so the programs stay small.
EVAL_ARGS = ["--suite", "fast", "--limit", "64", "--eps", "0", "0.01", "0.04"]
EVAL_ARGS += ["--batch-size", "64", "--resume"]


class SimulatedCrash(Exception):
    """Raised in place of a training step: the run dies there, in every process."""


def _crash_before_step(steps: int) -> None:
    """Make the training loop's step function raise once `steps` steps are done."""
    from jaxrobust.train import objectives

    real = objectives.make_train_step

    def make_train_step(objective: Any) -> Any:
        step_fn, calls = real(objective), [0]

        def step(state: Any, batch: Any) -> Any:
            if calls[0] == steps:
                raise SimulatedCrash(f"simulated crash after {steps} steps")
            calls[0] += 1
            return step_fn(state, batch)

        return step

    objectives.make_train_step = make_train_step


def _report_results() -> None:
    """Print what `train` returns in this process (the CLI only prints process 0's log)."""
    from jaxrobust.train import loop

    real = loop.train

    def train(*args: Any, **kwargs: Any) -> dict:
        metrics = real(*args, **kwargs)
        keys = ("clean_accuracy", "robust_accuracy", "curve", "history", "steps", "processes")
        print("RESULT " + json.dumps({k: metrics[k] for k in keys}), flush=True)
        return metrics

    loop.train = train


def _report_eval_results() -> None:
    """Print what `evaluate` returns in this process (the CLI writes process 0's only)."""
    import importlib

    module = importlib.import_module("jaxrobust.attacks.cascade")
    real = module.evaluate

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        report = real(*args, **kwargs)
        result = report.to_dict()
        # Timings are each process's own; everything else must agree across processes.
        for k in ("timings", "compile_seconds"):
            result.pop(k)
        result["checks"].pop("total_seconds")
        print("RESULT " + json.dumps(result), flush=True)
        return report

    module.evaluate = evaluate


def _eval(run: str, out: str, port: str | None = None, process_id: str | None = None) -> int:
    """`jaxrobust eval` of `run` into `out`: as process `process_id` of 2, or alone."""
    from jaxrobust import cli

    _report_eval_results()
    args = ["eval", run, "--out", out, *EVAL_ARGS]
    if port is not None:
        args += ["--coordinator", f"localhost:{port}", "--num-processes", "2"]
        args += ["--process-id", process_id]
    return cli.main(args)


def _train(mode: str, out: str, port: str | None = None, process_id: str | None = None) -> int:
    """`jaxrobust train` as process `process_id` of 2 (crash or resume), or the reference."""
    from jaxrobust import cli
    from jaxrobust.config import apply_overrides, smoke_config

    overrides = [f"{k}={v}" for k, v in SETTINGS.items()]
    _report_results()
    if mode == "reference":
        from jaxrobust.compilation_cache import enable_compilation_cache
        from jaxrobust.train import loop

        enable_compilation_cache()
        cfg = smoke_config()
        apply_overrides(cfg, overrides)
        loop.train(cfg, out, progress=False, data_shards=2)
        return 0
    if mode == "crash":
        _crash_before_step(CRASH_AT)
    args = ["train", "--config", "smoke", "--out", out]  # progress bar: process 0's only
    args += [a for o in overrides for a in ("--set", o)]
    args += ["--coordinator", f"localhost:{port}", "--num-processes", "2"]
    try:
        return cli.main([*args, "--process-id", process_id])
    except SimulatedCrash as e:
        print(f"CRASHED: {e}", flush=True)
        return 0


def main(mode: str, *args: str) -> int:
    if mode == "eval":
        return _eval(*args)
    return _train(mode, *args)


if __name__ == "__main__":
    try:
        code = main(*sys.argv[1:])
    except BaseException:
        traceback.print_exc()
        code = 1
    if code:
        # Exit at once: a normal exit would wait (minutes) in jax.distributed's shutdown
        # barrier for a peer that is itself stuck waiting for this process.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
