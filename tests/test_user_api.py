"""The research-code path: loading a CLI run from Python, devices and sharding from Python,
the public compilation cache, type hints shipped, and the README's example runnable."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from compile_log import lowerings

import jaxrobust as jr
from jaxrobust.checkpoint import Checkpointer
from jaxrobust.cli import main
from jaxrobust.data import load_split

ROOT = Path(__file__).resolve().parents[1]


def test_load_run_restores_latest_step_and_best(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--config", "smoke", "--quiet", "--out", str(out)]) == 0
    steps = Checkpointer(out / "checkpoints").steps()
    assert len(steps) >= 2
    latest = jr.load_run(out)
    assert latest.step == steps[-1] and latest.config.dataset == "digits"
    first = jr.load_run(out, step=steps[0])
    assert first.step == steps[0]
    best = jr.load_run(out, best=True)
    assert best.step in steps

    x, y = load_split("digits", "test")

    @jax.jit
    def accuracy(f, x, y):
        return (f(x).argmax(-1) == y).mean()

    with lowerings("accuracy") as count:
        acc_latest = float(accuracy(latest.logits_fn(), x, y))
        acc_first = float(accuracy(first.logits_fn(), x, y))
    assert count == [1]  # two checkpoints, one compilation
    # The restored weights reproduce the run's own reported accuracy (the last checkpoint).
    metrics = json.loads((out / "metrics.json").read_text())
    assert abs(acc_latest - metrics["clean_accuracy"]) < 1e-3 and acc_latest != acc_first
    # Its representations: the penultimate layer, consistent with the logits it feeds.
    feats = latest.features_fn()(x[:8])
    assert feats["features"].ndim == 2 and feats["features"].shape[0] == 8
    np.testing.assert_allclose(feats["logits"], latest.logits_fn()(x[:8]), rtol=1e-5, atol=1e-5)
    plain = latest.state.replace(apply_fn=lambda v, x, train=False: x)  # no linen module
    with pytest.raises(jr.ConfigError, match="no sown representations"):
        plain.features_fn()
    with pytest.raises(jr.InputError, match="not both"):
        jr.load_run(out, best=True, step=steps[0])
    with pytest.raises(jr.CheckpointError, match="available steps"):
        jr.load_run(out, step=10**6)
    with pytest.raises(jr.CheckpointError):
        jr.load_run(tmp_path / "nothing-here")


_WORKER = """
import sys
import jaxrobust as jr
devices = jr.use_cpu_cores_as_devices(int(sys.argv[1]))  # first thing: before any JAX work
import flax.linen as nn, jax, jax.numpy as jnp, numpy as np

class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(32)(x.reshape(len(x), -1))))

from jaxrobust.data import load_split
x, y = load_split("digits", "test", limit=64)
variables = Net().init(jax.random.key(0), x)

@jax.jit
def attack(f, x, y, key):
    return jr.pgd(f, x, y, key, threat=jr.linf(0.1), steps=5)

xs, ys = jr.shard_examples(x, y)
result = attack(jr.as_logits_fn(Net(), variables), xs, ys, jax.random.key(1))
odd = jr.shard_examples(x[:12])  # 12 examples: on the devices that divide 12
np.savez(sys.argv[2], devices=devices, x_adv=np.asarray(result.x_adv),
         spread=len(result.x_adv.sharding.device_set), odd=len(odd.sharding.device_set))
"""


def _run_worker(devices: int, path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env["JAX_PLATFORMS"] = "cpu"
    subprocess.run(
        [sys.executable, "-c", _WORKER, str(devices), str(path)], env=env, check=True, timeout=300
    )
    return dict(np.load(path))


@pytest.mark.slow  # compile-heavy: runs with the slow tests, keeping the default suite < 15 min
def test_shard_examples_one_device_equals_eight(tmp_path):
    one, eight = _run_worker(1, tmp_path / "one.npz"), _run_worker(8, tmp_path / "eight.npz")
    assert int(one["devices"]) == 1 and int(eight["devices"]) == 8
    assert int(one["spread"]) == 1 and int(eight["spread"]) == 8  # the attack ran sharded
    assert int(eight["odd"]) == 6  # the most devices that divide 12
    np.testing.assert_allclose(one["x_adv"], eight["x_adv"], atol=1e-5)


def test_shard_examples_errors():
    with pytest.raises(jr.InputError, match="at least one"):
        jr.shard_examples()
    with pytest.raises(jr.InputError, match="same leading batch axis"):
        jr.shard_examples(np.zeros((4, 2)), np.zeros(3))


def test_use_cpu_cores_as_devices_too_late_warns():
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env["JAX_PLATFORMS"] = "cpu"
    code = (
        "import jax, jaxrobust as jr; jax.devices(); "
        "print(jr.use_cpu_cores_as_devices(3), jax.device_count())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["None", "1"]
    assert "RuntimeWarning" in out.stderr and "before any JAX computation" in out.stderr


def test_enable_compilation_cache_is_public(tmp_path):
    assert jr.enable_compilation_cache(tmp_path / "c") == tmp_path / "c"
    try:
        jax.jit(lambda a: a * 3 + 1)(np.arange(7.0)).block_until_ready()
        assert any((tmp_path / "c").iterdir())  # the program was written to disk
    finally:  # back to the session's cache (conftest)
        jr.enable_compilation_cache(os.environ["JAXROBUST_CACHE_DIR"])


def test_package_ships_type_hints():
    assert (ROOT / "jaxrobust" / "py.typed").is_file()
    assert "py.typed" in (ROOT / "setup.cfg").read_text()


def test_certify_is_reachable_from_the_package_lazily():
    """`jr.certify` is the `jaxrobust.certify` package without importing it first, reaching
    it imports no JAX (a fresh interpreter), and its names are the implementing modules'
    own objects."""
    code = (
        "import sys\n"
        "import jaxrobust as jr\n"
        "certify = jr.certify\n"
        "assert 'jax' not in sys.modules, 'jr.certify imported JAX'\n"
        "from jaxrobust import certify as again\n"
        "assert again is certify and 'certify' in jr.__all__ and 'certify' in dir(jr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    from jaxrobust.certify import ibp, smoothing

    assert jr.certify.certify is smoothing.certify
    assert jr.certify.verified_accuracy is ibp.verified_accuracy
    assert jr.pgd.__module__.startswith("jaxrobust.attacks")  # the flat names are unchanged


def _readme_section(title: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_research_code_example_runs(capsys):
    blocks = _readme_section("Calling an attack from research code")
    assert blocks
    namespace: dict = {}
    with lowerings("attack") as count:
        for block in blocks:
            exec(compile(textwrap.dedent(block), "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert printed.count("robust accuracy:") == 3
    assert count == [1]  # the README's claim: three checkpoints, compiled once
