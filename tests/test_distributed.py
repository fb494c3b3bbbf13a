"""Two processes joined by `jax.distributed` (CPU devices, gloo collectives over localhost)
train through `jaxrobust train`, die mid-run, resume from their collectively written orbax
checkpoint, and end where one process with two devices ends when it reads the same global
batches (`train(..., data_shards=2)`).

Why this comparison: with one device per process each process reads its own shard of the
records, so a plain one-process run sees other batches and cannot be compared. One
process reading both shards gives the identical global batch, split over its two devices
exactly as over the two processes' devices, so everything else (the jitted step, the
gradient all-reduce, sharded evaluation, checkpoints, the loader state) is the project's
own code on both sides and must agree up to the all-reduce's float rounding.

Then `jaxrobust eval` of the two-process run, in two processes (resuming from a state file
that both must read) and in one process with two devices, must report the same numbers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxrobust.checkpoint import Checkpointer
from jaxrobust.train.loop import restore_run

WORKER = Path(__file__).with_name("distributed_worker.py")
TIMEOUT = 240  # seconds for one launch (both processes)
TOTAL_STEPS = 2 * (1437 // 256)  # distributed_worker.SETTINGS: 2 epochs of 5 steps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _launch(args: list[list[str]], devices: int, logs: Path) -> list[tuple[str, str]]:
    """Run the worker once per argument list, concurrently; (stdout, stderr) of each.

    Output goes to files, not pipes: a process blocked on a full pipe would stall its peer
    in the next collective. Fails with every process's output if one fails or time runs out.
    """
    logs.mkdir(parents=True, exist_ok=True)
    procs, files = [], []
    for i, a in enumerate(args):
        out, err = logs / f"{i}.out", logs / f"{i}.err"
        with out.open("w") as fo, err.open("w") as fe:
            cmd = [sys.executable, str(WORKER), *a]
            procs.append(subprocess.Popen(cmd, env=_env(devices), stdout=fo, stderr=fe))
        files.append((out, err))
    deadline = time.monotonic() + TIMEOUT
    try:
        # Until all are done, time is up, or one failed (its peers would wait for it in
        # their next collective until jax's own timeouts, minutes later).
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    texts = [(o.read_text(), e.read_text()) for o, e in files]
    if any(p.returncode != 0 for p in procs):
        report = "\n".join(
            f"--- process {i} (exit {p.returncode}) stdout:\n{o[-3000:]}\n--- stderr:\n{e[-6000:]}"
            for i, (p, (o, e)) in enumerate(zip(procs, texts, strict=True))
        )
        raise AssertionError(f"worker failed or timed out after {TIMEOUT} s:\n{report}")
    return texts


def _two_processes(mode: str, out: Path) -> list[tuple[str, str]]:
    port = str(_free_port())
    return _launch([[mode, str(out), port, str(i)] for i in range(2)], 1, out.parent / mode)


def _result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, stdout
    return json.loads(lines[0][len("RESULT ") :])


def _eval_in_two_processes_matches_one(run: Path, tmp_path: Path) -> None:
    """`jaxrobust eval RUN` (distributed_worker.EVAL_ARGS) in two processes reports what one
    process with two devices reports: the same sharded programs, whose outputs come back
    replicated to every process (through gloo instead of within one process)."""
    one_dir, two_dir = tmp_path / "eval_one", tmp_path / "eval_two"
    ((one_out, _),) = _launch([["eval", str(run), str(one_dir)]], 2, tmp_path / "eval_one_logs")
    one = json.loads((one_dir / "metrics.json").read_text())
    assert one["processes"] == 1 and _result(one_out)["num_examples"] == 64

    # The two processes resume after the first ε, from the one process's state there:
    # both must read the state file, or they would run different programs.
    state = json.loads((one_dir / "eval_state.json").read_text())
    assert state["done"] == {"0": 1, "1": 1}
    state["done"], state["robust"] = {"0": 1}, {"0": state["robust"]["0"]}
    state["per_attack"] = {k: [v[0], None] for k, v in state["per_attack"].items()}
    two_dir.mkdir()
    (two_dir / "eval_state.json").write_text(json.dumps(state))
    port = str(_free_port())
    args = [["eval", str(run), str(two_dir), port, str(i)] for i in range(2)]
    (out0, _), (out1, _) = _launch(args, 1, tmp_path / "eval_two_logs")

    # Both processes computed the same report; process 0 alone reported progress (from
    # the second ε on: it resumed), printed the results and wrote the files.
    assert _result(out0) == _result(out1)
    assert "eps=0.01 apgd" not in out0 and "eps=0.04 apgd-t: robust accuracy" in out0
    assert "clean accuracy" in out0 and "robust accuracy" not in out1
    assert json.loads((two_dir / "eval_state.json").read_text())["done"] == {"0": 1, "1": 1}
    assert (two_dir / "accuracy_vs_eps.png").is_file()
    two = json.loads((two_dir / "metrics.json").read_text())
    assert two["processes"] == 2

    # The numbers one process reports (bit for bit on this CPU; one example of the 64 at
    # most would be float rounding). The attacks broke some but not all examples.
    assert 0.0 < one["robust_accuracy"][-1] < one["robust_accuracy"][0] == one["clean_accuracy"]
    for k in ("eps", "attacks", "num_examples", "threat", "flags"):
        assert two[k] == one[k], k
    pairs = {k: (two[k], one[k]) for k in ("clean_accuracy", "robust_accuracy")}
    pairs |= {
        f"after {k}": (v, one["per_attack_cascade"][k])
        for k, v in two["per_attack_cascade"].items()
    }
    pairs |= {k: (v, one["checks"][k]) for k, v in two["checks"].items() if k != "total_seconds"}
    for k, (a, b) in pairs.items():
        np.testing.assert_allclose(a, b, atol=1.01 / 64, err_msg=k)


@pytest.mark.slow  # five launches, ~60 s on two cores, mostly compilation
def test_two_processes_resume_and_match_one_process(tmp_path):
    ref_dir, two_dir = tmp_path / "reference", tmp_path / "two"
    ((ref_out, _),) = _launch([["reference", str(ref_dir)]], 2, tmp_path / "reference_logs")
    ref = _result(ref_out)

    # Both processes die before step 8; the last collective checkpoint is step 6.
    crashed = _two_processes("crash", two_dir)
    assert all("CRASHED" in out for out, _ in crashed), crashed
    assert Checkpointer(two_dir / "checkpoints").latest_step() == 6

    (out0, err0), (out1, err1) = _two_processes("resume", two_dir)
    # Both processes restored step 6 (the loader positions too: each its own shards) and
    # returned the same metrics; only process 0 logged.
    assert "resumed from step 6" in out0
    assert "clean accuracy" in out0 and "train:" in err0  # the log and the progress bar
    assert "resumed" not in out1 and "clean accuracy" not in out1 and "train:" not in err1
    two = _result(out0)
    assert _result(out1) == two
    assert two["processes"] == 2 and two["steps"] == TOTAL_STEPS

    # The two-process run trained on the single-process run's global batches ...
    _, ref_state, ref_meta = restore_run(ref_dir)
    _, two_state, two_meta = restore_run(two_dir)  # one process reads the 2-process run
    assert int(two_state.step) == TOTAL_STEPS
    assert len(two_meta["loader"]) == 2 and two_meta["loader"] == ref_meta["loader"]
    # ... and ends with the same parameters, optimizer state and metrics: gradients are
    # all-reduced by gloo instead of within one process, so equal up to float rounding (bit
    # for bit on this CPU), which may at most flip one evaluated example.
    ref_leaves, two_leaves = jax.tree.leaves(ref_state), jax.tree.leaves(two_state)
    assert len(ref_leaves) == len(two_leaves)
    for a, b in zip(ref_leaves, two_leaves, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    assert [r["epoch"] for r in two["history"]] == [1, 2]
    for r_ref, r_two in zip(ref["history"], two["history"], strict=True):
        assert r_ref.keys() == r_two.keys()
        for k in r_ref:
            tol = 1.01 / 128 if k.startswith("test_") else 1e-5  # 128 examples evaluated
            np.testing.assert_allclose(r_two[k], r_ref[k], atol=tol, err_msg=k)
    assert two["curve"]["eps"] == ref["curve"]["eps"]
    pairs = {k: (two[k], ref[k]) for k in ("clean_accuracy", "robust_accuracy")}
    pairs["curve"] = (two["curve"]["robust_accuracy"], ref["curve"]["robust_accuracy"])
    for k, (a, b) in pairs.items():
        np.testing.assert_allclose(a, b, atol=1.01 / 360, err_msg=k)  # the 360 test examples
    assert 0.0 < two["clean_accuracy"] <= 1.0

    # Process 0 wrote the report; the replicated state got its checksums in the manifest.
    metrics = json.loads((two_dir / "metrics.json").read_text())
    assert metrics["processes"] == 2 and len(metrics["devices"]) == 2
    assert metrics["clean_accuracy"] == two["clean_accuracy"]
    for name in ("config.json", "accuracy_vs_eps.png", "adversarial_examples.png"):
        assert (two_dir / name).is_file(), name
    manifest_file = two_dir / "checkpoints" / str(TOTAL_STEPS) / "manifest" / "metadata"
    leaves = json.loads(manifest_file.read_text())["leaves"]
    assert leaves and all(e["sha256"] for e in leaves), leaves

    _eval_in_two_processes_matches_one(two_dir, tmp_path)
