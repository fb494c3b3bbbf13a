"""Tests of jaxrobust.checkpoint: roundtrips, retention, and every way a checkpoint goes bad."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from jaxrobust.checkpoint import Checkpointer
from jaxrobust.errors import CheckpointError, ConfigError


@struct.dataclass
class TrainState:
    params: dict
    opt_state: tuple
    step: jax.Array
    rng: jax.Array
    ema: dict | None = None


def make_state(seed: int = 0, width: int = 4) -> TrainState:
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {
        "Dense_0": {
            "kernel": jax.random.normal(k1, (3, width)),
            "bias": jax.random.normal(k2, (width,)),
        }
    }
    opt_state = (
        {"count": jnp.asarray(seed, jnp.int32)},
        jax.tree.map(lambda p: p * 0.5, params),
    )
    return TrainState(
        params=params,
        opt_state=opt_state,
        step=jnp.asarray(seed, jnp.int32),
        rng=jax.random.key_data(jax.random.key(seed + 100)),
    )


def assert_tree_equal(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)  # bit-exact (also NaN positions)


def test_roundtrip_bit_exact_struct_dataclass(tmp_path: Path) -> None:
    state = make_state(3)
    # Values that only survive a bit-exact roundtrip.
    state = state.replace(
        params={
            "Dense_0": {
                "kernel": state.params["Dense_0"]["kernel"].at[0, 0].set(jnp.nan),
                "bias": jnp.asarray([np.float32(1e-45), -0.0, np.inf, 1 / 3], jnp.float32),
            }
        }
    )
    meta = {"config": {"lr": np.float32(0.1), "epochs": np.int64(3)}, "history": [0.1, 0.2]}
    with Checkpointer(tmp_path / "ck") as ck:
        assert ck.latest_step() is None
        ck.save(7, state, metadata=meta, metrics={"robust_accuracy": np.float64(0.5)})
        assert ck.latest_step() == 7
    with Checkpointer(tmp_path / "ck") as ck:  # a fresh process would do this
        step, restored, restored_meta = ck.restore(make_state(0))
    assert step == 7
    assert isinstance(restored, TrainState)
    assert_tree_equal(restored, state)
    assert restored.rng.dtype == jnp.uint32
    assert isinstance(restored.params["Dense_0"]["kernel"], jax.Array)
    assert restored_meta == {
        "config": {"lr": pytest.approx(0.1), "epochs": 3},
        "history": [0.1, 0.2],
    }


def test_roundtrip_dtypes_and_leaf_types(tmp_path: Path) -> None:
    state = {
        "f32": jnp.linspace(-1, 1, 7, dtype=jnp.float32),
        "i32": jnp.arange(-3, 3, dtype=jnp.int32),
        "u32": jax.random.key_data(jax.random.key(42)),
        "typed_key": jax.random.key(5),
        "np": np.arange(4, dtype=np.float32),
        "py": 11,
    }
    ck = Checkpointer(tmp_path, best_metric=None)
    ck.save(0, state)
    template = jax.tree.map(lambda x: x, state)
    step, restored, meta = ck.restore(template)
    ck.close()
    assert step == 0 and meta == {}
    for k in ("f32", "i32", "u32", "np"):
        assert np.asarray(restored[k]).dtype == np.asarray(state[k]).dtype
        np.testing.assert_array_equal(np.asarray(restored[k]), np.asarray(state[k]))
    assert isinstance(restored["np"], np.ndarray)
    assert restored["py"] == 11
    np.testing.assert_array_equal(
        jax.random.key_data(restored["typed_key"]), jax.random.key_data(state["typed_key"])
    )


def test_keep_two_plus_best(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path, keep=2, best_metric="robust_accuracy", best_mode="max")
    accs = {1: 0.3, 2: 0.9, 3: 0.5, 4: 0.4, 5: 0.2}
    for step, acc in accs.items():
        ck.save(step, make_state(step), metrics={"robust_accuracy": acc, "loss": 1.0})
    assert ck.steps() == [2, 4, 5]
    assert ck.best_step() == 2 and ck.latest_step() == 5
    step, state, _ = ck.restore_best(make_state(0))
    assert step == 2
    assert_tree_equal(state, make_state(2))
    assert ck.metrics(2) == {"robust_accuracy": 0.9, "loss": 1.0}
    # A new best replaces the old one; a step without the metric never counts as best.
    ck.save(6, make_state(6), metrics={"robust_accuracy": 0.95})
    ck.save(7, make_state(7))
    assert ck.steps() == [6, 7] and ck.best_step() == 6
    ck.close()
    unranked = Checkpointer(tmp_path / "unranked")
    unranked.save(1, make_state(1), metrics={"loss": 0.1})
    assert unranked.best_step() is None
    with pytest.raises(CheckpointError, match="saved with metric 'robust_accuracy'"):
        unranked.restore_best(make_state(0))
    unranked.close()


def test_best_mode_min_and_no_best(tmp_path: Path) -> None:
    with Checkpointer(tmp_path / "min", keep=1, best_metric="loss", best_mode="min") as ck:
        for step, loss in [(1, 0.5), (2, 0.1), (3, float("nan")), (4, 0.7)]:
            ck.save(step, make_state(step), metrics={"loss": loss})
        assert ck.steps() == [2, 4] and ck.best_step() == 2
    with Checkpointer(tmp_path / "none", keep=1, best_metric=None) as ck:
        for step in range(3):
            ck.save(step, make_state(step), metrics={"robust_accuracy": 1.0 - step})
        assert ck.steps() == [2] and ck.best_step() is None
        with pytest.raises(CheckpointError, match=re.escape("best_metric=None")):
            ck.restore_best(make_state(0))


def test_killed_save_is_ignored(tmp_path: Path) -> None:
    ck = Checkpointer(tmp_path, keep=2)
    ck.save(1, make_state(1))
    ck.save(2, make_state(2))
    ck.close()
    # A save killed mid-way leaves orbax's temporary directory...
    shutil.copytree(tmp_path / "2", tmp_path / "3.orbax-checkpoint-tmp-1700000000")
    # ...or (commit-file mode, e.g. on GCS) a step directory without its commit marker.
    shutil.copytree(tmp_path / "2", tmp_path / "4")
    os.remove(tmp_path / "4" / "commit_success.txt")
    (tmp_path / "5" / "state").mkdir(parents=True)  # killed right after mkdir
    ck = Checkpointer(tmp_path, keep=2)
    assert ck.steps() == [1, 2] and ck.latest_step() == 2
    step, state, _ = ck.restore(make_state(0))
    assert step == 2
    assert_tree_equal(state, make_state(2))
    with pytest.raises(CheckpointError, match="step 4"):
        ck.restore(make_state(0), step=4)
    # The next save removes the leftovers, so they never take a retention slot.
    ck.save(6, make_state(6))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2", "6"]
    ck.close()


def _corrupt_files(step_dir: Path, mode: str) -> None:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file()]
    data = [p for p in files if p.parent.name == "d"]
    assert data, files
    if mode == "garbage":
        for p in files:
            p.write_bytes(b"\x00garbage" * 8)
    elif mode == "truncate":
        for p in data:
            with open(p, "r+b") as f:
                f.truncate(max(1, p.stat().st_size // 3))
    elif mode == "flip":
        for p in data:
            b = bytearray(p.read_bytes())
            b[len(b) // 2] ^= 0xFF
            p.write_bytes(bytes(b))
    elif mode == "delete":
        for p in data:
            p.unlink()
    elif mode == "metadata":
        (step_dir / "metadata" / "metadata").write_text("{not json")
    elif mode == "manifest":
        (step_dir / "manifest" / "metadata").write_text("[1, 2")
    elif mode == "everything":
        for p in step_dir.rglob("*"):
            if p.is_file() and p.name != "commit_success.txt":
                p.write_bytes(b"\xff" * 5)
    else:
        raise AssertionError(mode)


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    "mode", ["garbage", "truncate", "flip", "delete", "metadata", "manifest", "everything"]
)
def test_corrupt_checkpoint_raises(tmp_path: Path, mode: str, capfd, caplog) -> None:
    ck = Checkpointer(tmp_path, keep=3)
    ck.save(1, make_state(1), metrics={"robust_accuracy": 0.1})
    ck.save(2, make_state(2), metrics={"robust_accuracy": 0.2})
    ck.close()
    _corrupt_files(tmp_path / "2", mode)
    ck = Checkpointer(tmp_path, keep=3)
    assert ck.latest_step() == 2
    capfd.readouterr()
    with pytest.raises(CheckpointError) as info:
        ck.restore(make_state(0))
    # No tensorstore/asyncio tracebacks echo on stderr or in the logs.
    assert "Traceback" not in capfd.readouterr().err
    assert "never retrieved" not in caplog.text
    msg = str(info.value)
    assert "step 2" in msg and str(tmp_path) in msg and "corrupt" in msg
    assert len(msg) < 1000  # a sentence, not a tensorstore spec dump
    assert info.value.__cause__ is None
    # The previous checkpoint is still readable and the message points to it.
    assert "[1]" in msg
    step, state, _ = ck.restore(make_state(0), step=1)
    assert step == 1
    assert_tree_equal(state, make_state(1))
    # Falling back to the newest intact step warns once, naming the damaged one.
    warnings = []
    step, state, _, damaged = ck.restore_newest_intact(make_state(0), warn=warnings.append)
    assert (step, damaged) == (1, [2])
    assert_tree_equal(state, make_state(1))
    assert len(warnings) == 1 and "step 2" in warnings[0] and "trying step 1" in warnings[0]
    # Saving goes on; damage that would break orbax's manager (it reads every step's
    # metrics) sets that step aside, next to the directory, with a warning.
    ck.save(3, make_state(3), metrics={"robust_accuracy": 0.3})
    assert ck.latest_step() == 3
    if mode == "everything":
        assert ck.steps() == [1, 3]
        assert "set aside" in caplog.text
        aside = tmp_path.with_name(tmp_path.name + ".set-aside")
        assert [p.name.split("-")[0] for p in aside.iterdir()] == ["2"]
    ck.close()


# Every file of a saved step, damaged three ways: what must happen.
_DAMAGE = ("truncate", "garbage", "delete")


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        # Same length, different bytes: reversed (or flipped when a palindrome / 1 byte).
        new = data[::-1] if data[::-1] != data else bytes(b ^ 0xFF for b in data)
        path.write_bytes(new or b"\xff")
    else:
        path.unlink()


@pytest.mark.slow  # compile-heavy: runs with the slow tests, keeping the default suite < 15 min
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("how", _DAMAGE)
def test_every_file_damaged_every_way(tmp_path: Path, how: str, capfd, caplog) -> None:
    """Truncate, overwrite or delete each file of the newest step, one at a time.

    Allowed outcomes: the state reads back bit-identical (the file was not needed, e.g.
    orbax's own descriptive metadata), or the step is no longer listed (its commit marker
    is gone), or a one-line `CheckpointError` naming the step, after which the newest
    intact step is restored with a warning. Never a different state without an error,
    never a traceback or asyncio noise on stderr.
    """
    base = tmp_path / "base"
    with Checkpointer(base, keep=3) as ck:
        ck.save(1, make_state(1), metadata={"n": 1}, metrics={"robust_accuracy": 0.1})
        ck.save(2, make_state(2), metadata={"n": 2}, metrics={"robust_accuracy": 0.2})
    files = sorted(p.relative_to(base / "2") for p in (base / "2").rglob("*") if p.is_file())
    kinds = {p.parts[0] for p in files}
    assert kinds >= {"state", "metadata", "manifest", "metrics", "commit_success.txt"}, kinds
    outcomes = {}
    for i, rel in enumerate(files):
        root = tmp_path / f"case{i}"
        shutil.copytree(base, root)
        _damage(root / "2" / rel, how)
        capfd.readouterr()
        with Checkpointer(root, keep=3) as ck:
            if ck.latest_step() != 2:
                assert ck.steps() == [1], (rel, ck.steps())
                outcomes[str(rel)] = "not listed"
                continue
            try:
                step, state, meta = ck.restore(make_state(0))
            except CheckpointError as e:
                msg = str(e)
                assert "step 2" in msg and str(root) in msg and "\n" not in msg, msg
                assert len(msg) < 1000 and e.__cause__ is None, msg
                warned = []
                step, state, meta, damaged = ck.restore_newest_intact(
                    make_state(0), warn=warned.append
                )
                assert (step, damaged, meta) == (1, [2], {"n": 1}) and len(warned) == 1
                assert_tree_equal(state, make_state(1))
                outcomes[str(rel)] = "error, fell back to step 1"
            else:
                assert (step, meta) == (2, {"n": 2}), rel
                assert_tree_equal(state, make_state(2))
                outcomes[str(rel)] = "read back intact"
        err = capfd.readouterr().err
        assert "Traceback" not in err and "Exception ignored" not in err, (rel, err[:2000])
        assert "never retrieved" not in caplog.text, rel
    print(f"\n{how}:", *(f"  {k}: {v}" for k, v in outcomes.items()), sep="\n")
    # The JSON items and the files that hold the arrays are what matters: damaging them is
    # always caught (where orbax keeps the arrays, state/d/ or ocdbt.process_0/d/, depends
    # on the tree: whichever it is, some array file's damage must be caught).
    for rel in ("metadata/metadata", "manifest/metadata", "state/manifest.ocdbt"):
        assert outcomes[rel] == "error, fell back to step 1", (rel, outcomes[rel])
    data = [v for k, v in outcomes.items() if k.startswith("state/") and "/d/" in k]
    assert "error, fell back to step 1" in data, outcomes


def test_silent_data_change_is_caught_by_checksum(tmp_path: Path) -> None:
    """Numbers that differ from what was saved, without any read error, are refused."""
    ck = Checkpointer(tmp_path)
    ck.save(1, make_state(1))
    manifest_file = tmp_path / "1" / "manifest" / "metadata"
    manifest = json.loads(manifest_file.read_text())
    # Equivalent to storage returning other bytes for the leaf `step` without an error.
    manifest["leaves"][[e["path"] for e in manifest["leaves"]].index("step")]["sha256"] = "0" * 64
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="checksum mismatch in leaf 'step'"):
        ck.restore(make_state(0))
    ck.close()


def test_foreign_checkpoint_shapes(tmp_path: Path) -> None:
    with Checkpointer(tmp_path) as ck:
        ck.save(1, make_state(1, width=4))
        with pytest.raises(CheckpointError) as info:
            ck.restore(make_state(0, width=8))
    msg = str(info.value)
    assert "params/Dense_0/bias" in msg
    assert "expected (8,) float32" in msg and "found (4,) float32" in msg


def test_foreign_checkpoint_structure_and_dtype(tmp_path: Path) -> None:
    with Checkpointer(tmp_path) as ck:
        ck.save(1, make_state(1))
        other = {"conv": {"kernel": jnp.zeros((3, 3, 1, 8))}}
        with pytest.raises(CheckpointError, match="different tree structure") as info:
            ck.restore(other)
        assert "conv/kernel" in str(info.value) and "params/Dense_0/kernel" in str(info.value)
        with_ema = make_state(0).replace(ema={"w": jnp.zeros(2)})
        with pytest.raises(CheckpointError, match="ema/w"):
            ck.restore(with_ema)
        wrong_dtype = make_state(0).replace(step=jnp.asarray(0.0, jnp.float32))
        with pytest.raises(
            CheckpointError, match=r"'step' expected \(\) float32, found \(\) int32"
        ):
            ck.restore(wrong_dtype)


def test_empty_or_unrelated_directory(tmp_path: Path) -> None:
    missing = Checkpointer(tmp_path / "does-not-exist")
    assert missing.latest_step() is None and missing.best_step() is None
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        missing.restore(make_state(0))
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        missing.restore_best(make_state(0))
    assert not (tmp_path / "does-not-exist").exists()  # reading creates nothing

    unrelated = tmp_path / "data"
    (unrelated / "12").mkdir(parents=True)
    (unrelated / "12" / "commit_success.txt").write_text("not ours")
    (unrelated / "notes.txt").write_text("hello")
    (unrelated / "7").write_text("a file named like a step")
    ck = Checkpointer(unrelated)
    assert ck.latest_step() is None
    with pytest.raises(CheckpointError, match=f"no checkpoint in {unrelated}"):
        ck.restore(make_state(0))
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        Checkpointer(tmp_path / "empty").restore(make_state(0), step=3)


def test_plain_orbax_checkpoint_is_not_ours(tmp_path: Path) -> None:
    import orbax.checkpoint as ocp

    mgr = ocp.CheckpointManager(
        tmp_path, options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False)
    )
    mgr.save(3, args=ocp.args.StandardSave({"w": jnp.ones(2)}))
    mgr.wait_until_finished()
    mgr.close()
    ck = Checkpointer(tmp_path)
    assert ck.latest_step() is None
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        ck.restore({"w": jnp.zeros(2)})


def test_save_existing_step_and_bad_inputs(tmp_path: Path) -> None:
    with Checkpointer(tmp_path) as ck:
        ck.save(1, make_state(1), metadata={"v": 1})
        with pytest.raises(CheckpointError, match="already exists"):
            ck.save(1, make_state(2))
        ck.save(1, make_state(2), metadata={"v": 2}, force=True)
        step, state, meta = ck.restore(make_state(0))
        assert step == 1 and meta == {"v": 2}
        assert_tree_equal(state, make_state(2))
        ck.save(0, make_state(0))  # an older step is saved, not silently skipped
        assert ck.steps() == [0, 1]
        with pytest.raises(CheckpointError, match="JSON"):
            ck.save(5, make_state(0), metadata={"f": object()})
        with pytest.raises(CheckpointError, match="step"):
            ck.save(-1, make_state(0))
        with pytest.raises(CheckpointError, match="step"):
            ck.save(1.5, make_state(0))  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Checkpointer(tmp_path, keep=0)
    with pytest.raises(ConfigError):
        Checkpointer(tmp_path, best_mode="best")


def test_metadata_with_numpy_and_jax_values(tmp_path: Path) -> None:
    meta = {
        "iterator": {"epoch": np.int32(2), "position": jnp.asarray(17)},
        "history": [{"loss": np.float32(0.25), "acc": jnp.float32(0.5)}],
        "array": np.arange(3),
        "tuple": (1, 2),
        "path": tmp_path,
    }
    with Checkpointer(tmp_path / "ck") as ck:
        ck.save(0, {"w": jnp.ones(1)}, metadata=meta)
        _, _, out = ck.restore({"w": jnp.zeros(1)})
    assert out == {
        "iterator": {"epoch": 2, "position": 17},
        "history": [{"loss": 0.25, "acc": 0.5}],
        "array": [0, 1, 2],
        "tuple": [1, 2],
        "path": str(tmp_path),
    }


def test_no_intact_checkpoint_is_one_error_without_warnings(tmp_path: Path) -> None:
    with Checkpointer(tmp_path, keep=3) as ck:
        ck.save(1, make_state(1))
        ck.save(2, make_state(2))
    for step in (1, 2):
        _corrupt_files(tmp_path / str(step), "metadata")
    warned = []
    with Checkpointer(tmp_path, keep=3) as ck, pytest.raises(CheckpointError) as info:
        ck.restore_newest_intact(make_state(0), warn=warned.append)
    assert warned == []
    msg = str(info.value)
    assert "all of steps [1, 2] are corrupt" in msg and "step 2" in msg and "\n" not in msg
