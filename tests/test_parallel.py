"""One device and eight (simulated CPU) devices give the same training, attack and
evaluation results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

WORKER = Path(__file__).with_name("parallel_worker.py")


def _run(devices: int, out: Path) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    subprocess.run([sys.executable, str(WORKER), str(out)], env=env, check=True, timeout=300)
    return dict(np.load(out))


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
