"""A `jaxrobust train` killed mid-run (SIGKILL) and started again ends with exactly the
parameters of an uninterrupted run with the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxrobust.checkpoint import Checkpointer
from jaxrobust.train.loop import restore_run

ARGS = [
    "--config",
    "smoke",
    "--quiet",
    "--set",
    "epochs=4",
    "--set",
    "checkpoint.every_steps=3",
    "--set",
    "adversary.steps=5",
]


def _train(out, **kwargs):
    cmd = [sys.executable, "-m", "jaxrobust.cli", "train", *ARGS, "--out", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def _params(out):
    _, state, _ = restore_run(out)
    return jax.tree.leaves(state)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_params(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert _train(full).wait(timeout=300) == 0

    proc = _train(killed)
    total_steps = 4 * (1437 // 128)
    deadline = time.monotonic() + 240
    step = None
    while time.monotonic() < deadline and proc.poll() is None:
        step = Checkpointer(killed / "checkpoints").latest_step()
        if step is not None and step >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step = Checkpointer(killed / "checkpoints").latest_step()
    assert step is not None and step < total_steps, step

    resumed = _train(killed)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out.decode()
    assert b"resumed from step" in out

    # Timing fields add up over the segments (each counted up to its last checkpoint):
    # before, wall_seconds counted the last segment only, below train_seconds.
    for run, segments in ((full, [0]), (killed, [0, step])):
        m = json.loads((run / "metrics.json").read_text())
        assert m["segments"] == segments
        assert m["wall_seconds"] >= m["train_seconds"] + m["eval_seconds"] > 0, m

    # run_info.json: the first segment's record, and the resumed one appended under it.
    info = json.loads((killed / "run_info.json").read_text())
    assert [r["resumed_from_step"] for r in info["resumed"]] == [step]
    assert "resumed" not in json.loads((full / "run_info.json").read_text())

    a, b = _params(full), _params(killed)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
