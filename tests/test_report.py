"""Tests of jaxrobust.report: JSON (atomic, NumPy/JAX types) and PNG figures."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxrobust import report
from jaxrobust.errors import InputError


def assert_png(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
    assert w > 10 and h > 10
    return w, h


def test_json_roundtrip_with_numpy_and_jax_types(tmp_path: Path) -> None:
    data = {
        "z_first": 1,  # key order is kept (sort_keys=False)
        "np_float": np.float32(0.5),
        "np_int": np.int64(7),
        "np_bool": np.bool_(True),
        "jax_scalar": jnp.asarray(3, jnp.int32),
        "jax_array": jnp.arange(3, dtype=jnp.float32),
        "np_array": np.array([[1, 2], [3, 4]], dtype=np.uint8),
        "nested": {"tuple": (1, np.float64(2.5)), 3: "int key"},
        "path": tmp_path,
        "none": None,
        "text": "ε = 8/255",
    }
    out = report.write_json(tmp_path / "sub" / "metrics.json", data)
    assert out == tmp_path / "sub" / "metrics.json"
    loaded = report.read_json(out)
    assert loaded == {
        "z_first": 1,
        "np_float": 0.5,
        "np_int": 7,
        "np_bool": True,
        "jax_scalar": 3,
        "jax_array": [0.0, 1.0, 2.0],
        "np_array": [[1, 2], [3, 4]],
        "nested": {"tuple": [1, 2.5], "3": "int key"},
        "path": str(tmp_path),
        "none": None,
        "text": "ε = 8/255",
    }
    assert list(loaded) == list(data)
    assert type(loaded["np_int"]) is int and type(loaded["np_bool"]) is bool
    text = out.read_text(encoding="utf-8")
    assert text.startswith('{\n  "z_first": 1,')  # indent=2


def test_write_json_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    report.write_json(path, {"v": 1})
    report.write_json(path, {"v": 2})  # overwrite in place
    assert report.read_json(path) == {"v": 2}
    assert sorted(os.listdir(tmp_path)) == ["results.json"]
    if sys.platform != "win32":
        assert path.stat().st_mode & 0o777 == 0o644

    # A failure while serialising leaves the old file intact and no temporary behind.
    with pytest.raises(TypeError):
        report.write_json(path, {"v": object()})
    assert report.read_json(path) == {"v": 2}
    assert sorted(os.listdir(tmp_path)) == ["results.json"]


def test_write_json_failure_during_replace_cleans_up(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "r.json"

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        report.write_json(path, {"a": 1})
    assert os.listdir(tmp_path) == []


def test_plot_accuracy_vs_eps(tmp_path: Path) -> None:
    curves = {
        "standard": ([0, 2 / 255, 4 / 255, 8 / 255], [0.95, 0.3, 0.05, 0.0]),
        "PGD-AT": (np.array([0, 2, 4, 8]) / 255, jnp.array([0.85, 0.7, 0.6, 0.45])),
    }
    out = report.plot_accuracy_vs_eps(curves, tmp_path / "acc.png", title="CIFAR-10 ℓ∞")
    assert_png(out)
    with pytest.raises(InputError, match="PGD-AT"):
        report.plot_accuracy_vs_eps({"PGD-AT": ([0, 1], [0.5])}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_plot_training_curves(tmp_path: Path) -> None:
    history = [
        {"epoch": e, "train_loss": 2.0 / (e + 1), "train_accuracy": 0.1 * e, "lr": 0.1}
        for e in range(5)
    ]
    for e in (1, 3):  # evaluated every other epoch: keys missing elsewhere
        history[e].update(
            {"robust_loss": np.float32(1.5), "robust_accuracy": np.float32(0.3), "note": "eval"}
        )
    assert_png(report.plot_training_curves(history, tmp_path / "curves.png"))
    # Without the x key the index is used; empty histories still give a (blank) figure.
    assert_png(report.plot_training_curves([{"loss": 1.0}, {"loss": 0.5}], tmp_path / "a.png"))
    assert_png(report.plot_training_curves([], tmp_path / "empty.png"))


@pytest.mark.parametrize("channels", [1, 3])
def test_save_image_grid(tmp_path: Path, channels: int) -> None:
    rng = np.random.default_rng(0)
    clean = rng.uniform(size=(20, 8, 8, channels)).astype(np.float32)
    adv = np.clip(clean + rng.uniform(-0.03, 0.03, size=clean.shape), 0, 1)
    labels = rng.integers(0, 10, size=20)
    pred_adv = (labels + 1) % 10
    out = report.save_image_grid(
        clean,
        jnp.asarray(adv),
        tmp_path / f"grid{channels}.png",
        labels=labels,
        pred_clean=labels,
        pred_adv=pred_adv,
        max_images=6,
    )
    w, h = assert_png(out)
    assert w > h  # 6 columns by 3 rows
    # Identical images (zero perturbation) and no titles also work.
    assert_png(report.save_image_grid(clean[:2], clean[:2], tmp_path / "same.png"))


def test_save_image_grid_rejects_bad_shapes(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="N, H, W, C"):
        report.save_image_grid(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)), tmp_path / "x.png")
    with pytest.raises(InputError, match="same shape"):
        report.save_image_grid(np.zeros((2, 8, 8, 3)), np.zeros((2, 8, 8, 1)), tmp_path / "x.png")


def test_no_pyplot_state_leaks(tmp_path: Path) -> None:
    import matplotlib

    backend = matplotlib.get_backend()
    report.plot_accuracy_vs_eps({"a": ([0, 1], [1, 0])}, tmp_path / "a.png")
    report.save_image_grid(np.zeros((1, 4, 4, 1)), np.ones((1, 4, 4, 1)), tmp_path / "g.png")
    assert matplotlib.get_backend() == backend
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


def test_json_file_is_plain_json(tmp_path: Path) -> None:
    path = report.write_json(tmp_path / "m.json", {"acc": np.float32(0.25)})
    assert json.loads(path.read_text()) == {"acc": 0.25}
