"""`jaxrobust experiment poisoning --smoke` end to end: the JSON's keys and provenance, the
PNGs, and the properties that hold even at smoke size."""

from __future__ import annotations

import json

import pytest

from jaxrobust.cli import main


@pytest.mark.slow
def test_poisoning_smoke(tmp_path):
    assert main(["experiment", "poisoning", "--smoke", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "digits_smoke.json").read_text())
    assert data["smoke"] is True and data["wall_time_s"] > 0 and data["git_commit"]
    for path in ("digits_smoke.png", "digits_smoke_scores.png"):
        assert (tmp_path / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    b, s = data["backdoor"], data["spectral"]
    for e in (b["attack_success"], b["clean_accuracy"], s["recall"], s["attack_success_after"],
              b["clean_model_accuracy"], s["precision"]):  # fmt: skip
        assert e["method"] == "measured" and e["n"] > 0 and 0.0 <= e["value"] <= 1.0
    assert b["count"] == round(b["rate"] * b["train_size"])
    lc = b["label_consistent"]
    assert set(lc) >= {"trigger_only", "standard_source", "robust_source"}
    assert len(s["rounds"]) == data["settings"]["rounds"]
    assert data["datasets"]["train_split_roundtrip"] is True
    assert (
        data["loop_check"]["attack_success"]["n"] * data["settings"]["seeds"]
        == b["attack_success"]["n"]
    )
    assert data["targeted"]["by_poisons"]["1"]["control_success"]["value"] <= 1.0
    # at smoke size the dirty-label trigger is already learned, a clean model ignores it
    assert b["attack_success"]["value"] > 0.5 > b["clean_model_attack_success"]["value"]


@pytest.mark.slow
def test_poisoning_smoke_bn_cnn_on_shapes(tmp_path):
    """`--model bn_cnn`: the in-memory models and the loop check's run are the CNN (their
    variables carry BatchNorm statistics through the vmapped trainer), and every rate is a
    measured proportion."""
    args = ["experiment", "poisoning", "--smoke", "--dataset", "shapes", "--model", "bn_cnn"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "shapes_bn_cnn_smoke.json").read_text())
    s = data["settings"]
    assert s["architecture"] == "bn_cnn" and s["model_kwargs"] == {"channels": [4, 8]}
    assert s["dataset_kwargs"] == {"num_train": 256, "num_test": 64}
    run = tmp_path / "work" / "shapes_bn_cnn_smoke" / "loop_dirty_label"
    assert json.loads((run / "config.json").read_text())["model"]["name"] == "bn_cnn"
    assert "bn_cnn" in data["loop_check"]["what"] and "bn_cnn" in s["model"]
    b, sp = data["backdoor"], data["spectral"]
    for e in (b["attack_success"], b["clean_accuracy"], sp["recall"], sp["attack_success_after"]):
        assert e["method"] == "measured" and e["n"] > 0 and 0.0 <= e["value"] <= 1.0
    assert (tmp_path / "shapes_bn_cnn_smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Spectral signatures read the last block's map (16x16x8, before the pooling), and the
    # first round is also scored on the pooled features and the pixels.
    by_rep = sp["round1_recall_by_representation"]
    assert sp["representation"] == "block2" and set(by_rep) == {"block2", "features", "pixels"}
    assert (by_rep["block2"]["dim"], by_rep["features"]["dim"], by_rep["pixels"]["dim"]) == (
        16 * 16 * 8,
        8,
        32 * 32 * 3,
    )
    assert by_rep["block2"]["value"] == sp["rounds"][0]["recall"]["value"]


def test_trainer_loop_equals_the_vmapped_scan(monkeypatch):
    """`make_trainer(over_seeds="loop")` (the CNN path: one jitted step per host iteration)
    trains exactly what the vmapped `lax.scan` trains: same batches, same updates, per seed,
    with a BatchNorm model's statistics carried along."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxrobust.cli import experiments_dir
    from jaxrobust.data import get_info

    monkeypatch.syspath_prepend(str(experiments_dir()))
    import _poisoning_parts as PP

    info = get_info("shapes")
    s = {"architecture": "bn_cnn", "model_kwargs": {"channels": (2,)}}
    model = PP.make_model(info, s)
    x = jax.random.uniform(jax.random.key(0), (2, 12, 8, 8, 3))
    y = jax.random.randint(jax.random.key(1), (2, 12), 0, 10)
    keep = jnp.ones((2, 12), bool).at[1, :4].set(False)
    keys = jax.random.split(jax.random.key(2), 2)
    got = {
        mode: PP.make_trainer(model, (8, 8, 3), steps=3, batch=4, lr=1e-2, over_seeds=mode)(
            x, y, keep, keys
        )
        for mode in ("vmap", "loop")
    }
    assert set(got["loop"]) == {"params", "batch_stats"}
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5),
        got["vmap"],
        got["loop"],
    )
    assert PP.over_seeds(s) == "loop" and PP.over_seeds({"hidden": (4,)}) == "vmap"
