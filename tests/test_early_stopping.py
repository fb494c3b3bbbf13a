"""Validation hold-out and early stopping (Rice et al. 2020) in the training loop: record
ranges in the loaders, config errors, model selection, patience, and resumption."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

import jaxrobust.data as jd
from jaxrobust.checkpoint import Checkpointer
from jaxrobust.config import default_config, load_config
from jaxrobust.errors import ConfigError
from jaxrobust.train.loop import best_checkpoint_metric, restore_run, train

N_TRAIN = 1437  # digits training records
N_VAL = 157  # held out: 1280 = 10 batches of 128 remain for training


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x.reshape(len(x), -1)}


# --------------------------------------------------------------------- record ranges


def test_load_split_records_range():
    x, y = jd.load_split("digits", "train")
    xv, yv = jd.load_split("digits", "train", records=range(N_TRAIN - N_VAL, N_TRAIN))
    np.testing.assert_array_equal(xv, x[-N_VAL:])
    np.testing.assert_array_equal(yv, y[-N_VAL:])
    xl, _ = jd.load_split("digits", "train", records=range(10, 20), limit=3)
    np.testing.assert_array_equal(xl, x[10:13])


@pytest.mark.parametrize("shard_count", [1, 2])
def test_loader_never_yields_held_out_records(shard_count):
    keep = range(N_TRAIN - N_VAL)
    x_all, _ = jd.load_split("digits", "train")
    seen: list[np.ndarray] = []
    for shard in range(shard_count):
        loader = jd.make_loader(
            "digits",
            "train",
            batch_size=64,
            seed=3,
            num_epochs=1,
            drop_remainder=False,
            shard_index=shard,
            shard_count=shard_count,
            records=keep,
        )
        seen.extend(b["image"] for b in loader)
    images = np.concatenate(seen)
    assert len(images) == len(keep)  # every training record exactly once, shards disjoint
    assert _rows(images) == _rows(x_all[: len(keep)])
    assert not _rows(images) & (_rows(x_all[len(keep) :]) - _rows(x_all[: len(keep)]))


def test_loader_records_offset_and_resume():
    records = range(100, 300)
    x_all, _ = jd.load_split("digits", "train")
    loader = jd.make_loader("digits", "train", batch_size=50, seed=0, records=records)
    it = iter(loader)
    first = [next(it)["image"] for _ in range(4)]  # one epoch: exactly the range
    assert _rows(np.concatenate(first)) == _rows(x_all[100:300])
    state = jd.loader_state(it)
    expected = next(it)["image"]
    again = jd.restore_loader_state(iter(loader), state)
    np.testing.assert_array_equal(next(again)["image"], expected)
    # A loader over another range refuses the state instead of resuming elsewhere.
    other = jd.make_loader("digits", "train", batch_size=50, seed=0, records=range(0, 200))
    with pytest.raises(ConfigError, match="cannot restore"):
        jd.restore_loader_state(iter(other), state)


@pytest.mark.parametrize(
    "records", [range(0), range(0, 10, 2), range(-1, 5), range(0, N_TRAIN + 1), (0, 10)]
)
def test_bad_record_ranges(records):
    with pytest.raises(ConfigError, match="records"):
        jd.make_loader("digits", "train", batch_size=4, seed=0, records=records)
    with pytest.raises(ConfigError, match="records"):
        jd.load_split("digits", "train", records=records)


# ------------------------------------------------------------------------ config


def test_defaults_keep_validation_and_early_stopping_off():
    c = default_config()
    assert c.validation.examples == 0 and not c.early_stopping.enabled


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["validation.examples=-1"], "validation.examples must be >= 0"),
        (["early_stopping.patience=-3"], "patience must be >= 0"),
        (["eval.during_train_examples=-1"], "during_train_examples must be >= 0"),
        (["validation.examples=10", "early_stopping.metric=test_robust_accuracy"], "unknown"),
        (["early_stopping.enabled=True"], "needs a validation set"),
        (["early_stopping.enabled=1"], "expects a bool"),
        (["early_stopping.bogus=1"], "unknown config key"),
    ],
)
def test_early_stopping_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("smoke", overrides)


@pytest.mark.parametrize(
    ("examples", "match"), [(N_TRAIN, "leaves no training examples"), (1400, "held out")]
)
def test_too_many_validation_examples(tmp_path, examples, match):
    cfg = load_config("smoke", [f"validation.examples={examples}"])
    with pytest.raises(ConfigError, match=match):
        train(cfg, tmp_path, progress=False, log=lambda s: None)


# ------------------------------------------------------------------------ training

ES_RUN = [
    "epochs=4",
    f"validation.examples={N_VAL}",
    "early_stopping.enabled=True",
    "eval.during_train_examples=128",
    "checkpoint.keep=10",
    "eval.eps_list=(0.1,)",
]


@pytest.fixture(scope="module")
def es_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("es") / "run"
    metrics = train(load_config("smoke", ES_RUN), out, progress=False, log=lambda s: None)
    return out, metrics


@pytest.mark.slow
def test_early_stopping_selects_best_validation_epoch(es_run):
    out, metrics = es_run
    assert metrics == json.loads((out / "metrics.json").read_text())
    history = metrics["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    for r in history:
        for name in ("train_subset", "validation", "test"):
            assert 0 <= r[f"{name}_clean_accuracy"] <= 1
            assert 0 <= r[f"{name}_robust_accuracy"] <= 1
        assert "train_accuracy" in r  # robust accuracy on the training adversary's inputs
    val = [r["validation_robust_accuracy"] for r in history]
    es = metrics["early_stopping"]
    assert es["selected_epoch"] == history[int(np.argmax(val))]["epoch"]  # first maximum
    assert es["selected_value"] == max(val)
    assert es["last_epoch"] == 4 and not es["stopped_early"]
    steps_per_epoch = (N_TRAIN - N_VAL) // 128
    assert es["selected_step"] == es["selected_epoch"] * steps_per_epoch
    assert es["last_step"] == metrics["steps"] == 4 * steps_per_epoch
    assert es["selected"]["robust_accuracy"] == metrics["robust_accuracy"]
    assert es["selected"]["history"] == history[es["selected_epoch"] - 1]
    assert es["last"]["history"] == history[-1]
    # The Checkpointer's best checkpoint (what `--best` restores) is the selected epoch.
    run, state, _ = restore_run(out, best=True)
    assert int(state.step) == es["selected_step"]
    assert run.num_train == metrics["num_train"] == N_TRAIN - N_VAL
    assert metrics["num_validation"] == N_VAL


@pytest.mark.slow
def test_best_checkpoint_without_early_stopping_ranks_by_validation(tmp_path):
    """With records held out but early stopping off, `--best` restores the epoch of best
    robust validation accuracy (never a test-set selection); with nothing held out the
    ranking is the test set's, and metrics.json says so."""
    overrides = [o for o in ES_RUN if not o.startswith("early_stopping")] + ["epochs=3"]
    cfg = load_config("smoke", overrides)
    assert best_checkpoint_metric(cfg) == "validation_robust_accuracy"
    assert best_checkpoint_metric(load_config("smoke")) == "test_robust_accuracy"
    metrics = train(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    assert metrics["best_checkpoint_ranked_by"] == "validation_robust_accuracy"
    history = metrics["history"]
    steps_per_epoch = (N_TRAIN - N_VAL) // 128
    ckpt = Checkpointer(tmp_path / "run" / "checkpoints")
    for r in history:  # every epoch's checkpoint is ranked by its validation number
        ranked = ckpt.metrics(r["epoch"] * steps_per_epoch)["robust_accuracy"]
        assert ranked == r["validation_robust_accuracy"]
    # ... and not by the test set's (which differs: the check above can tell them apart).
    assert any(r["validation_robust_accuracy"] != r["test_robust_accuracy"] for r in history)
    val = [r["validation_robust_accuracy"] for r in history]
    best_epoch = max(e for e, v in enumerate(val, 1) if v == max(val))  # ties: the newest
    _, state, _ = restore_run(tmp_path / "run", best=True)
    assert int(state.step) == best_epoch * steps_per_epoch


@pytest.mark.slow
def test_resume_keeps_early_stopping_state(es_run, tmp_path):
    """Drop the last two epochs' checkpoints (as if killed after epoch 2): the resumed run
    retrains them and ends with the same history, selection and parameters."""
    src, metrics = es_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    (out / "metrics.json").unlink()
    steps_per_epoch = (N_TRAIN - N_VAL) // 128
    for step in Checkpointer(out / "checkpoints").steps():
        if step > 2 * steps_per_epoch:
            shutil.rmtree(out / "checkpoints" / str(step))
    logs: list[str] = []
    resumed = train(load_config("smoke", ES_RUN), out, progress=False, log=logs.append)
    assert any("resumed from step 20" in line for line in logs)
    assert resumed["history"] == metrics["history"]
    assert resumed["early_stopping"] == metrics["early_stopping"]
    assert resumed["robust_accuracy"] == metrics["robust_accuracy"]
    a = jax.tree.leaves(restore_run(src)[1])
    b = jax.tree.leaves(restore_run(out)[1])
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_patience_stops_training_and_stays_stopped(tmp_path):
    """With a zero learning rate the model never changes, so the first epoch stays the best
    and patience 2 stops the run after epoch 3; starting it again trains no further."""
    cfg = load_config(
        "smoke",
        [
            "objective=standard",
            "epochs=8",
            "optimizer.learning_rate=0.0",
            f"validation.examples={N_VAL}",
            "early_stopping.enabled=True",
            "early_stopping.patience=2",
            "eval.eps_list=(0.1,)",
        ],
    )
    logs: list[str] = []
    metrics = train(cfg, tmp_path, progress=False, log=logs.append)
    es = metrics["early_stopping"]
    steps_per_epoch = (N_TRAIN - N_VAL) // 128
    assert es["stopped_early"] and es["selected_epoch"] == 1 and es["last_epoch"] == 3
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3]
    assert metrics["steps"] == 3 * steps_per_epoch
    assert any("early stopping at epoch 3" in line for line in logs)
    again = train(cfg, tmp_path, progress=False, log=logs.append)
    assert any("stopped early at epoch 3" in line for line in logs)
    assert again["steps"] == metrics["steps"]
    assert again["history"] == metrics["history"]
    assert again["early_stopping"]["selected_epoch"] == 1
