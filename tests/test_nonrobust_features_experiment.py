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


def test_bad_classes_stop_before_any_training(tmp_path, capsys):
    args = ["experiment", "nonrobust_features", "--smoke", "--out", str(tmp_path / "out")]
    assert main([*args, "--classes", "3,3"]) != 0
    assert "at least 2 distinct class indices" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # the experiment's own argument parser
        main([*args, "--classes", "5,x"])
    assert exit_.value.code == 2 and "separated by commas" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_nonrobust_features_smoke_on_two_classes(tmp_path):
    """`--classes 5,3` (the talk's dog-vs-cat form, here on digits): every dataset and
    model has 2 classes, D_det flips every label, the test set is the subset's."""
    args = ["experiment", "nonrobust_features", "--smoke", "--classes", "5,3"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    d = json.loads((tmp_path / "digits_classes5-3_smoke.json").read_text())
    assert d["settings"]["classes"] == [5, 3] and d["settings"]["dataset"] == "digits"
    y_test = load_split(d["settings"]["subset"], "test")[1]
    assert set(np.unique(y_test).tolist()) == {0, 1}
    assert d["d_r"]["clean_accuracy"]["n"] == min(64, len(y_test))
    work = tmp_path / "work" / "digits_classes5-3_smoke"
    y = load_split(d["settings"]["subset"], "train", limit=64)[1]
    det = load_split(f"derived:{work / 'd_det'}", "train")[1]
    np.testing.assert_array_equal(det, 1 - y)
    assert d["label_checks"]["d_det"]["agreement_count"] == 0


@pytest.mark.slow
def test_nonrobust_features_smoke_bn_cnn_on_planted_shapes(tmp_path):
    """`--model bn_cnn`: every model is the CNN (its run's config says so), all four
    datasets are built, the robust source is l2 PGD-AT with the recipe's one-step adversary,
    the evaluation is the recipe's l2 attack, and the label invariants hold on disk."""
    args = ["experiment", "nonrobust_features", "--smoke", "--dataset", "shapes", "--planted"]
    assert main([*args, "--model", "bn_cnn", "--out", str(tmp_path)]) == 0
    d = json.loads((tmp_path / "shapes_planted_bn_cnn_smoke.json").read_text())
    assert d["settings"]["model"]["name"] == "bn_cnn"
    assert d["settings"]["kinds"] == ["d_rand", "d_det", "d_r", "d_nr"]
    assert set(d["sources"]) == {"standard", "robust"}
    assert d["settings"]["attack"] == {"threat": "l2", "eps": 0.25, "steps": 5, "restarts": 1}
    work = tmp_path / "work" / "shapes_planted_bn_cnn_smoke"
    # D_R / D_NR start from another training image: their folders say so.
    folders = ("d_rand", "d_det", "d_r_image_start", "d_nr_image_start")
    runs = ("source_standard", "source_robust", *(f"trained_on_{k}" for k in folders))
    for run in runs:
        assert json.loads((work / run / "config.json").read_text())["model"]["name"] == "bn_cnn"
    robust = json.loads((work / "source_robust" / "config.json").read_text())
    assert robust["objective"] == "pgd_at" and robust["threat"] == "l2" and robust["eps"] == 0.5
    assert robust["adversary"]["steps"] == 1 and robust["adversary"]["step_size"] == 0.5
    for name in ("d_r", "d_nr"):
        fm = d["feature_match"][name]
        assert d[name]["clean_accuracy"]["n"] == 64 and fm["n"] == 64
        build = json.loads((work / f"{name}_image_start" / "build.json").read_text())
        assert build["params"]["start"] == "image"
    kw = {"num_train": 256, "num_test": 64, "planted": True}
    y = load_split("shapes", "train", limit=64, dataset_kwargs=kw)[1]
    det = load_split(f"derived:{work / 'd_det'}", "train")[1]
    assert np.all(det != y) and d["label_checks"]["d_det"]["passed"] is True
    assert d["d_rand"]["test_accuracy"]["n"] == 64
    assert d["d_det"]["predicts_det_rule"]["n"] == 64 and "predicts_det_rule" not in d["d_rand"]
