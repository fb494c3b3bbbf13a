"""The benchmark scripts run (tiny sizes): they must not rot between benchmark runs. Timings
are never asserted; the adversarial examples of the contenders must agree."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    """Import a benchmark script as `python benchmarks/NAME.py` runs it: with its folder on
    the path, where its sibling modules (_report, _torch_peers) live."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
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


def test_pgd_throughput_names_the_bound_of_rows_below_peer():
    """A workload below 1.0x gets its bounding kernel from the kernels report; none else."""
    bench = _load("pgd_throughput")
    resnet_conv = {
        "count": 4, "model_formulation": "xla", "gflop_fwd_and_input_grad": 2.0,
        "jax_model_ms": 20.0, "torch_ms": 10.0, "jax_model_train_ms": 30.0, "torch_train_ms": 15.0,
    }  # fmt: skip
    kernels = {
        "path": "DATE-kernels.json",
        "rows": [
            {"kernel": "matmul 2048x2048", "jax_gflops": 300.0, "torch_gflops": 380.0},
            {
                "kernel": "madry_cnn conv2",
                "jax_input_grad_gflops": 100.0,
                "torch_input_grad_gflops": 200.0,
            },
        ],
        "preact_resnet18_convs": {
            "rows": [
                {**resnet_conv, "kernel": "3x3 32x32 64->64"},
                {**resnet_conv, "kernel": "3x3 4x4 512->512", "count": 1},
            ],
            "total_jax_model_ms": 300.0,
            "total_torch_ms": 250.0,
            "total_jax_model_train_ms": 550.0,
            "total_torch_train_ms": 380.0,
        },
    }
    payload = {
        "pgd": [
            {"model": "mlp", "ratio_vs_best_peer": {"jaxrobust pgd": 1.5}},
            {"model": "madry_cnn", "ratio_vs_best_peer": {"jaxrobust pgd": 0.9}},
        ],
        "train": [
            {
                "model": "preact_resnet18",
                "attack_steps": 7,
                "ratio_vs_pytorch": {"jaxrobust train step": 0.97},
            },
        ],
    }
    lines = bench._bounds(payload, kernels)
    assert lines[0].startswith("- machine peak") and "300 GFLOP/s" in lines[0]
    assert not any(line.startswith("- mlp") for line in lines)  # 1.5x: nothing to explain
    assert any("madry_cnn PGD (0.90×): madry_cnn conv2" in line for line in lines)
    (resnet,) = [line for line in lines if line.startswith("- preact_resnet18 AT step")]
    # The layer losing most time over the network (count x gap), with both gradients.
    assert "3x3 32x32 64->64 (×4" in resnet and "forward + both gradients 30.0 ms" in resnet
    assert "= 100 GFLOP/s" in resnet and "550 vs 380 ms" in resnet
    assert bench._bounds({"pgd": payload["pgd"][:1], "train": []}, kernels) == []
    assert "no kernels report" in bench._bounds(payload, None)[0]


@pytest.mark.slow
def test_scaling_quick(tmp_path):
    bench = _load("scaling")
    out = tmp_path / "scaling"
    assert bench.main(["--quick", "--models", "mlp", "--repeats", "1", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["peak"]["measured_sgemm_gflops"] > 0
    # XLA's count of a matmul is 2n³: the FLOP unit MFU rests on.
    assert all(r["xla_flops_over_2n3"] == 1.0 for r in data["peak"]["sgemm"])
    rows = data["batch_scaling"]
    assert [r["batch"] for r in rows] == list(bench.QUICK_BATCHES)
    for row in rows:
        # Every step of the engine is counted (not a while loop's body once).
        assert row["flops_per_call"] >= 0.9 * row["step_flops_times_steps"] > 0
        results = row["results"]
        labels = {"jaxrobust pgd", "PyTorch loop"} if bench.HAVE_PEERS else {"jaxrobust pgd"}
        assert set(results) == labels
        for r in results.values():
            assert r["images_per_s"] > 0 and r["gflops"] > 0 and r["mfu_vs_measured_sgemm"] > 0
        if bench.HAVE_PEERS:  # only where the PyTorch peers are installed
            assert row["ratio_jax_over_torch"] > 0
    devices = data["device_scaling"]
    assert [r["devices"] for r in devices] == list(bench.QUICK_DEVICES)
    for r in devices:
        assert r["images_per_s"] > 0
        assert r["output_devices"] == r["devices"]  # the batch really was sharded
        assert r["max_abs_diff_vs_1_device"] < 1e-5
    assert out.with_suffix(".md").read_text().startswith("# PGD scaling")
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.slow  # trains a smoke model and compiles APGD-CE and APGD-T
def test_apgd_strength_quick(tmp_path):
    bench = _load("apgd_strength")
    out = tmp_path / "apgd"
    assert bench.main(["--quick", "--seeds", "2", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert [row["model"] for row in data["results"]] == ["pgd_at", "standard"]
    for row in data["results"]:
        assert set(row["attacks"]) == {"apgd-ce", "apgd-t"}
        for r in row["attacks"].values():
            counts = r["jaxrobust"]["counts"]
            assert len(counts) == 2 and all(0 <= c <= row["clean_correct"] for c in counts)
            assert r["jaxrobust"]["mean"] == sum(counts) / 2
            if bench.HAVE_PEERS:  # only where the PyTorch peers are installed
                assert len(r["reference"]["counts"]) == 2
                # The PyTorch copy of the model agrees on jaxrobust's own examples.
                by_torch = r["jaxrobust"]["counts_by_pytorch_copy"]
                assert all(abs(a - b) <= 1 for a, b in zip(by_torch, counts, strict=True))
                # From the same random starts the two algorithms agree point by point.
                same = r["reference_same_starts"]
                assert len(same["counts"]) == 2 and max(same["points_differing"]) <= 1
    assert out.with_suffix(".md").read_text().startswith("# APGD strength")


def test_conv_loops_quick(tmp_path):
    bench = _load("conv_loops")
    out = tmp_path / "conv_loops"
    assert bench.main(["--quick", "--steps", "2", "--repeats", "1", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    (row,) = data["results"].values()
    assert set(row) >= {"xla", "auto", "speedup_xla_over_auto"}
    assert all(v > 0 for impl in ("xla", "auto") for v in row[impl].values())
    assert "| small_cnn (batch 8) | train_scan_s |" in out.with_suffix(".md").read_text()
