"""`jaxrobust experiment nonrobust_features`: the smoke run writes the JSON schema the
acceptance names (with the label invariants checked on the built datasets), its figure,
and `--dataset cifar10` stops offline with the library's message before any training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxrobust.cli import main
from jaxrobust.data import load_split


@pytest.mark.slow
def test_nonrobust_features_smoke(tmp_path):
    assert main(["experiment", "nonrobust_features", "--smoke", "--out", str(tmp_path)]) == 0
    d = json.loads((tmp_path / "digits_smoke.json").read_text())
    assert d["smoke"] is True and d["settings"]["dataset"] == "digits"
    for key in ("d_rand", "d_det"):
        assert d[key]["test_accuracy"]["method"] == "measured"
    for key in ("d_r", "d_nr"):
        for metric in ("clean_accuracy", "robust_accuracy"):
            m = d[key][metric]
            assert m["n"] == 64 and 0 <= m["value"] <= 1 and m["se"] >= 0
        assert d["feature_match"][key]["tol"] == 0.05
    for name in ("standard", "robust"):
        assert "clean_accuracy" in d["sources"][name] and "robust_accuracy" in d["sources"][name]
    # The label checks, against the datasets on disk.
    work = tmp_path / "work" / "digits_smoke"
    y = load_split("digits", "train", limit=64)[1]
    det = load_split(f"derived:{work / 'd_det'}", "train")[1]
    rand = load_split(f"derived:{work / 'd_rand'}", "train")[1]
    assert np.all(det != y) and d["label_checks"]["d_det"]["agreement_count"] == 0
    assert d["label_checks"]["d_det"]["passed"] is True
    assert d["label_checks"]["d_rand"]["agreement_count"] == int(np.sum(rand == y))
    assert (tmp_path / "digits_smoke.png").read_bytes()[:4] == b"\x89PNG"
    assert d["git_commit"] and d["wall_time_s"] > 0


def test_cifar10_offline_stops_with_the_library_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JAXROBUST_DATA_DIR", str(tmp_path / "data"))
    args = ["experiment", "nonrobust_features", "--dataset", "cifar10", "--smoke"]
    assert main([*args, "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "cifar10" in err and "offline" in err.lower()
    assert not (tmp_path / "out" / "work").exists()  # nothing trained
