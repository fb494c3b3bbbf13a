"""`jaxrobust experiment spatial --smoke` runs end to end and writes its table and figure."""

from __future__ import annotations

import json

import pytest

from jaxrobust.cli import main


@pytest.mark.slow
def test_spatial_experiment_smoke(tmp_path):
    assert main(["experiment", "spatial", "--smoke", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "spatial.json").read_text())
    assert set(result["table"]) == {"standard", "random", "worst-of-10"}
    for row in result["table"].values():
        assert set(row) == {
            "natural",
            "random",
            "worst-of-10",
            "first-order",
            "grid",
            "grid + vote",
        }
        assert all(0.0 <= v <= 1.0 for v in row.values())
        assert row["grid"] <= row["natural"] and row["worst-of-10"] <= row["natural"]
    assert (tmp_path / "spatial.png").is_file()
