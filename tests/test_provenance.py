"""Run provenance (run_info.json, git commit, package versions) and TensorBoard event files:
what they record is what happened, read back from the files."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import jax
import pytest

from jaxrobust.config import load_config
from jaxrobust.errors import ConfigError
from jaxrobust.provenance import git_commit, package_versions, run_metadata
from jaxrobust.train.event_log import EVENTS_DIR, EventLog
from jaxrobust.train.loop import RUN_INFO, _record_run_info


def read_scalars(directory) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TFRecord event files under `directory`: tag -> [(step, value)].

    The record format: uint64 length, uint32 masked CRC, payload, uint32 masked CRC."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            payload = data[pos + 12 : pos + 12 + length]
            pos += 12 + length + 4
            event = event_pb2.Event.FromString(payload)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def _git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def test_git_commit_names_head_and_flags_uncommitted_changes(tmp_path):
    assert git_commit(tmp_path) is None  # not a checkout
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.com")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "f.txt").write_text("a")
    _git(tmp_path, "add", "f.txt")
    _git(tmp_path, "commit", "-qm", "one")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True
    ).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "f.txt").write_text("b")
    assert git_commit(tmp_path) == head + "+dirty"
    (tmp_path / "untracked.txt").write_text("c")  # untracked files do not change a result
    (tmp_path / "f.txt").write_text("a")
    assert git_commit(tmp_path) == head


def test_run_metadata_names_versions_devices_and_seed():
    info = run_metadata(seed=7, config={"seed": 7})
    json.dumps(info)  # JSON-ready as it is
    assert info["seed"] == 7 and info["config"] == {"seed": 7}
    assert info["packages"]["jax"] == jax.__version__
    assert info["devices"] == [str(d) for d in jax.devices()]
    assert info["process_count"] == jax.process_count()
    assert package_versions(("no-such-distribution-xyz",)) == {"no-such-distribution-xyz": None}


def test_resumed_segments_are_appended_to_the_first_record(tmp_path):
    path = tmp_path / RUN_INFO
    _record_run_info(path, seed=3, start_step=0)
    first = json.loads(path.read_text())
    _record_run_info(path, seed=3, start_step=11)
    _record_run_info(path, seed=3, start_step=22)
    info = json.loads(path.read_text())
    assert info["started"] == first["started"] and info["seed"] == 3
    assert [r["resumed_from_step"] for r in info["resumed"]] == [11, 22]
    path.write_text("{not json")  # a damaged record is replaced, not a crash
    _record_run_info(path, seed=3, start_step=33)
    assert json.loads(path.read_text())["unreadable_previous_record"] is True


def test_event_log_writes_history_and_final_scalars(tmp_path):
    log = EventLog(tmp_path, enabled=True, config={"seed": 0})
    history = [
        {"epoch": 1, "train_loss": 2.5, "test_robust_accuracy": 0.25},
        {"epoch": 2, "train_loss": 1.5, "test_robust_accuracy": 0.5},
    ]
    for record, step in zip(history, (11, 22), strict=True):
        log.epoch(record, step)
    curve = {"eps": [0.0, 0.1], "robust_accuracy": [0.875, 0.375]}
    log.final({"clean_accuracy": 0.875, "robust_accuracy": 0.375, "curve": curve}, 22)
    log.close()
    got = read_scalars(tmp_path / EVENTS_DIR)
    assert got["epoch/train_loss"] == [(11, 2.5), (22, 1.5)]
    assert got["epoch/test_robust_accuracy"] == [(11, 0.25), (22, 0.5)]
    assert "epoch/epoch" not in got
    assert got["final/clean_accuracy"] == [(22, 0.875)]
    assert got["final/robust_accuracy_at_eps_0.1"] == [(22, 0.375)]


def test_event_log_disabled_writes_nothing_and_missing_writer_is_named(tmp_path, monkeypatch):
    log = EventLog(tmp_path, enabled=False)
    log.epoch({"epoch": 1, "train_loss": 1.0}, 1)
    log.close()
    assert not (tmp_path / EVENTS_DIR).exists()
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"jaxrobust\[tensorboard\]"):
        EventLog(tmp_path, enabled=True)


def test_logging_config_parses_json_booleans_and_rejects_others():
    assert load_config("smoke", ["logging.tensorboard=true"]).logging.tensorboard is True
    assert load_config("smoke", ["logging.tensorboard=False"]).logging.tensorboard is False
    with pytest.raises(ConfigError, match=r"logging\.tensorboard"):
        load_config("smoke", ["logging.tensorboard=1"])


@pytest.mark.slow
def test_training_run_writes_run_info_and_matching_event_files(tmp_path):
    from jaxrobust.cli import main

    out = tmp_path / "run"
    args = ["train", "--config", "smoke", "--quiet", "--out", str(out)]
    assert main([*args, "--set", "logging.tensorboard=True"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    info = json.loads((out / RUN_INFO).read_text())
    assert info["seed"] == metrics["seed"] and info["devices"] == metrics["devices"]
    assert info["git_commit"] == metrics["git_commit"] and info["packages"]["jaxrobust"]
    got = read_scalars(out / EVENTS_DIR)
    steps_per_epoch = metrics["steps"] // metrics["epochs"]
    for name in ("train_loss", "test_robust_accuracy"):
        steps, values = zip(*got[f"epoch/{name}"], strict=True)
        assert list(steps) == [r["epoch"] * steps_per_epoch for r in metrics["history"]]
        assert list(values) == pytest.approx([r[name] for r in metrics["history"]], rel=1e-6)
    ((step, value),) = got["final/robust_accuracy"]
    assert step == metrics["steps"] and value == pytest.approx(metrics["robust_accuracy"])
    # Logging is not part of a run's identity: the finished run resumes with it turned off.
    assert main(args) == 0
    assert len(json.loads((out / RUN_INFO).read_text())["resumed"]) == 1
