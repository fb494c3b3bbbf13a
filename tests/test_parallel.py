"""One device and eight (simulated CPU) devices give the same training, attack and
evaluation results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("parallel_worker.py")


def _run(devices: int, out: Path) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    subprocess.run([sys.executable, str(WORKER), str(out)], env=env, check=True, timeout=300)
    return dict(np.load(out))


@pytest.mark.slow  # compile-heavy: runs with the slow tests, keeping the default suite < 15 min
def test_one_device_equals_eight(tmp_path):
    one = _run(1, tmp_path / "one.npz")
    eight = _run(8, tmp_path / "eight.npz")
    assert int(one["devices"]) == 1 and int(eight["devices"]) == 8
    keys = [k for k in one if k.startswith("p")]
    assert keys
    for k in keys:
        # The all-reduce sums gradients in another order: equal up to float rounding.
        np.testing.assert_allclose(one[k], eight[k], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(one["x_adv"], eight["x_adv"], atol=1e-4)
    # evaluate: same cascade, same per-attack robust accuracies, same adversarial inputs.
    assert 0.0 < one["eval_robust"][0] < 1.0
    np.testing.assert_array_equal(one["eval_robust"], eight["eval_robust"])
    np.testing.assert_array_equal(one["eval_per_attack"], eight["eval_per_attack"])
    # (gradients all-reduced in another order: a rare pixel differs by ~1e-4)
    np.testing.assert_allclose(one["eval_x_adv"], eight["eval_x_adv"], atol=1e-3)


def _probe(env_extra: dict, code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env.update(env_extra)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_use_cpu_cores_as_devices():
    code = (
        "import jax; from jaxrobust.parallel import use_cpu_cores_as_devices as u; "
        "n = u(); print(n, jax.device_count(), u())"
    )
    # Count from the environment; a second call (backends up) changes nothing.
    assert _probe({"JAXROBUST_CPU_DEVICES": "3"}, code) == "3 3 None"
    # The user's own device count wins.
    flags = {"JAXROBUST_CPU_DEVICES": "3", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert _probe(flags, code) == "None 2 None"
    bad = "from jaxrobust.parallel import use_cpu_cores_as_devices as u; u(0)"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-c", bad], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "positive integer" in proc.stderr


@pytest.mark.slow
def test_cli_train_and_eval_on_per_core_devices(tmp_path):
    """`jaxrobust train`/`eval` on 3 CPU devices: a batch of 128 is not divisible by 3, so
    training runs on the 2 devices that divide it; the eval batch (512) too."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAXROBUST_CPU_DEVICES"] = "3"
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "jaxrobust.cli", "train", "--config", "smoke", "--quiet"]
    subprocess.run([*cmd, "--out", str(run)], env=env, check=True, timeout=300)
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["devices"]) == 2 and metrics["clean_accuracy"] > 0.2
    ev = [sys.executable, "-m", "jaxrobust.cli", "eval", str(run), "--suite", "fast"]
    subprocess.run([*ev, "--limit", "64", "--no-checks"], env=env, check=True, timeout=300)
    report = json.loads((run / "eval" / "metrics.json").read_text())
    assert report["robust_accuracy"][-1] <= metrics["clean_accuracy"]
