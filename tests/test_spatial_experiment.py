"""`jaxrobust experiment spatial`: the --angle/--shift ranges reach training, the grid column
is the brute-force answer, and the smoke run writes its table, provenance and figure."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrobust as jr
from jaxrobust.cli import main
from jaxrobust.config import load_config


def _spatial():
    from test_experiments import _module  # the experiments' loader (sys.path, by path)

    return _module("spatial")


def test_angle_and_shift_reach_training():
    sp = _spatial()
    for angle, shift in ((12.5, 0.05), (30.0, 0.1)):
        for objective in sp.TRAININGS.values():
            cfg = load_config(
                None, sp.train_overrides(sp.SETTINGS["smoke"], objective, angle, shift, 3)
            )
            assert cfg.adversary.max_angle == angle and cfg.adversary.max_shift == shift
            assert cfg.objective == objective and cfg.seed == 3


@pytest.mark.slow  # compile-heavy: runs with the slow tests, keeping the default suite < 15 min
def test_grid_column_is_the_brute_force_answer(digits_test):
    """evaluate_model's grid accuracy: correct on the clean image and on every transform of
    the grid (checked transform by transform), for a small random linear model."""
    sp = _spatial()
    x, y = digits_test
    x, y = jnp.asarray(x[:24]), jnp.asarray(y[:24])
    w = jax.random.normal(jax.random.key(0), (64, 10)) * 0.3
    f = lambda z: z.reshape(z.shape[0], -1) @ w  # noqa: E731
    threat = jr.spatial(30.0, 0.8)
    sizes = (3, 3)
    res = sp.evaluate_model(
        f, x, y, jax.random.key(1), threat, grid_sizes=sizes, first_order_steps=2, vote_samples=3
    )
    ok = np.array(jnp.argmax(f(x), -1) == y)
    for t in np.asarray(jr.transform_grid(threat, *sizes)):
        xt = threat.apply(x, jnp.broadcast_to(jnp.asarray(t), (x.shape[0], 3)))
        ok &= np.asarray(jnp.argmax(f(xt), -1) == y)
    np.testing.assert_array_equal(np.asarray(res["grid"]), ok)
    assert 0 < np.asarray(res["natural"]).sum() and ok.sum() < np.asarray(res["natural"]).sum()


@pytest.mark.slow
def test_spatial_experiment_smoke(tmp_path):
    assert main(["experiment", "spatial", "--smoke", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "spatial.json").read_text())
    assert result["seed"] == 0 and result["smoke"] is True and result["wall_time_s"] > 0
    assert "jaxrobust_version" in result and "git_commit" in result
    s = result["settings"]
    assert s["model"].startswith("mlp") and s["epochs"] == 2 and s["test_size"] == 64
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
        for cell in row.values():
            outcomes = np.array([int(c) for c in cell["per_example"]])
            assert cell["method"] == "measured" and cell["n"] == 64 == outcomes.size
            assert cell["value"] == pytest.approx(outcomes.mean())
            assert cell["se"] == pytest.approx(
                np.sqrt(outcomes.mean() * (1 - outcomes.mean()) / 64)
            )
    assert (tmp_path / "spatial.png").is_file()
