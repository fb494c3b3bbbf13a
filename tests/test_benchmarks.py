"""The benchmark scripts run (tiny sizes): they must not rot between benchmark runs. Timings
are never asserted; the adversarial examples of the contenders must agree."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_pgd_throughput_quick(tmp_path):
    bench = _load("pgd_throughput")
    out = tmp_path / "pgd"
    assert bench.main(["--quick", "--models", "mlp", "--repeats", "1", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    (row,) = data["pgd"]
    assert {"jaxrobust pgd", "jaxrobust step loop"} <= set(row["results"])
    assert all(r["images_per_s"] > 0 for r in row["results"].values())
    # The engine and the hand-written step loop compute the same iterates.
    assert row["engine_vs_loop"]["max_abs_diff"] < 1e-5
    if bench.HAVE_PEERS:  # only where the PyTorch peers are installed
        assert row["jax_vs_pytorch_loop_one_step"]["max_abs_diff"] < 1e-5
    assert data["train"][0]["results"]["jaxrobust train step"]["images_per_s"] > 0
    assert out.with_suffix(".md").read_text().startswith("# PGD throughput")
    assert out.with_suffix(".png").stat().st_size > 0
