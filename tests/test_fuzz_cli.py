"""Fuzzing the `jaxrobust` command: bad values for every option and argument, damaged runs.

Every case must end in one of two ways: exit status 2 with exactly one line on stderr that
starts "jaxrobust <command>: error:" (and nothing created on disk), or, for a damaged run
that still holds an intact checkpoint, a result computed from exactly that checkpoint.
An exception escaping `main` (a traceback) or an accepted bad value fails the test.

`main([...])` runs in-process (no interpreter or JAX start per case); a few cases run as
real subprocesses. The number of examples per test is bounded for CI (the whole file takes
well under a minute); set JAXROBUST_FUZZ_EXAMPLES=N to run N per test by hand. Each test
prints how many cases it tried (`pytest -s`).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxrobust import cli
from jaxrobust.config import default_config

_SCALE = int(os.environ.get("JAXROBUST_FUZZ_EXAMPLES", "0"))


def _examples(ci: int) -> settings:
    return settings(
        max_examples=_SCALE or ci,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )


class _Tally:
    """Cases tried per test, printed at the end of each test."""

    def __init__(self, name: str) -> None:
        self.name, self.cases = name, 0

    def report(self) -> None:
        print(f"\nfuzz {self.name}: {self.cases} cases, 0 tracebacks, 0 silent results")
        assert self.cases > 0


def _run(argv: list[str]) -> tuple[int, str, str]:
    """`main(argv)` in-process: (exit status, stdout, stderr); an escaping exception fails."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def _assert_one_line_error(code: int, err: str, command: str, argv: list[str]) -> None:
    lines = err.strip().splitlines()
    assert code == 2, (argv, code, err)
    assert len(lines) == 1, (argv, err)
    # argparse answers a stray option-like value (e.g. "-1e+16") at the top level.
    assert lines[0].startswith((f"jaxrobust {command}: error: ", "jaxrobust: error: ")), err
    assert "Traceback" not in err


# ------------------------------------------------------------------ bad values, by kind

_NAN_INF = st.sampled_from(["nan", "inf", "-inf", "1e999", "-1e999"])
_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)
_JUNK = st.one_of(
    _TEXT.map(repr),  # a quoted string literal
    st.sampled_from(["[]", "()", "{}", "None", "True", "False", "[1, 2]", "{'a': 1}", "(1,)"]),
    st.just("'"),  # unparseable
)


def _bad_for(key: str, default) -> st.SearchStrategy[str]:
    """Text for `--set key=TEXT` that must be rejected, given the key's default value."""
    from jaxrobust.config import _LOWER_BOUNDS

    if isinstance(default, bool):
        return st.one_of(st.integers(-3, 3).map(str), st.floats(allow_nan=False).map(repr), _JUNK)
    if isinstance(default, int):
        low = int(_LOWER_BOUNDS.get(key, 0))
        below = st.integers(max_value=low - 1).map(str)
        floats = st.floats(allow_nan=False).map(repr)  # 1.0 is a float, not an int
        too_big = st.integers(2**32, 2**70).map(str) if key == "seed" else st.nothing()
        return st.one_of(below, floats, too_big, _NAN_INF, _JUNK)
    if isinstance(default, float):
        low = _LOWER_BOUNDS.get(key, 0)
        # `exclude_max` still lets -0.0 through at max_value=0 (it orders -0.0 below 0.0), and
        # "-0.0" is a valid value: filter on the number itself.
        below = st.floats(
            max_value=low, exclude_max=True, allow_nan=False, allow_infinity=False
        ).filter(lambda v: v < low)
        return st.one_of(below.map(repr), _NAN_INF, _JUNK)
    if isinstance(default, tuple):  # eval.eps_list: numbers >= 0
        bad_number = st.one_of(
            # Negated positives: hypothesis 6.170 lets 0.0 through
            # `floats(max_value=0).filter(lambda v: v < 0)` inside `lists` (a valid value).
            st.floats(min_value=1e-300, max_value=1e300).map(lambda v: repr(-v)),
            st.sampled_from(["1e999", "'a'", "None", "[0.1]"]),
        )
        return st.one_of(
            st.lists(bad_number, min_size=1, max_size=3).map(lambda v: f"({', '.join(v)},)"),
            st.just("()"),
            _TEXT.filter(lambda t: t.strip() != "").map(repr),
        )
    # Strings: names that must be known (dataset, objective, threat, optimizer ...).
    return st.one_of(
        _TEXT.filter(lambda t: t.strip() not in _VALID_NAMES), st.sampled_from(["1", "[]"])
    )


_VALID_NAMES = {
    "digits",
    "mnist",
    "cifar10",
    "shapes",
    "fashion_mnist",
    "svhn",
    "cifar100",
    *("standard", "pgd_at", "fast_at", "trades", "spatial_worst_of_k", "spatial_random"),
    "gaussian_noise",
    "smooth_adv",
    *("linf", "l2", "l1", "adam", "adamw", "sgd", "constant", "piecewise", "cosine", "cyclic"),
    *("validation_robust_accuracy", "validation_clean_accuracy", ""),
    *("mlp", "small_cnn", "madry_cnn", "bn_cnn", "preact_resnet18", "wide_resnet"),
}


def _attack_names() -> set[str]:
    from jaxrobust.attacks.suites import ATTACKS

    return set(ATTACKS)


def _config_keys() -> dict[str, object]:
    cfg, keys = default_config(), {}

    def walk(node, prefix):
        for k, v in node.items():
            if hasattr(v, "items") and k != "kwargs":
                walk(v, f"{prefix}{k}.")
            elif k != "kwargs":
                keys[f"{prefix}{k}"] = v

    walk(cfg, "")
    # Free text where any string is valid: a path, a model name checked by the registry.
    for free in ("data_dir",):
        keys.pop(free)
    return keys


_KEYS = _config_keys()


@st.composite
def _bad_override(draw) -> str:
    kind = draw(st.sampled_from(["value", "value", "value", "unknown", "malformed"]))
    if kind == "unknown":
        key = draw(st.from_regex(r"[a-z_]{1,8}(\.[a-z_]{1,8})?", fullmatch=True))
        if key in _KEYS or key.startswith(("model", "eval", "adversary", "optimizer")):
            key = f"no_such_{key}"
        return f"{key}={draw(st.integers())}"
    if kind == "malformed":
        return draw(st.sampled_from(["eps", "", "=0.1", ".=1", "eps:0.1", "model..name=x"]))
    key = draw(st.sampled_from(sorted(_KEYS)))
    if key == "dataset":  # checked by the dataset registry, inside the job
        return f"dataset={draw(_TEXT.filter(lambda t: t.strip() not in _VALID_NAMES))!r}"
    return f"{key}={draw(_bad_for(key, _KEYS[key]))}"


@pytest.fixture
def no_training(monkeypatch):
    """Replace the training job by its input checks: a valid config would start training,
    which here fails the test (every fuzzed config is invalid)."""
    import jaxrobust.train.loop as loop

    def checked(cfg, out, **kwargs):
        from jaxrobust.data import get_info

        info = get_info(cfg.dataset)
        loop.build_model(cfg, info)
        raise AssertionError(f"an invalid config was accepted: {cfg.to_dict()}")

    monkeypatch.setattr(loop, "train", checked)


def test_train_rejects_every_bad_override(no_training, tmp_path):
    tally = _Tally("train --set KEY=BAD")

    @_examples(ci=150)
    @given(overrides=st.lists(_bad_override(), min_size=1, max_size=3), extra=st.booleans())
    def check(overrides, extra):
        tally.cases += 1
        out = tmp_path / f"run{tally.cases}"
        argv = ["train", "--quiet", "--out", str(out)]
        for item in overrides:
            argv += ["--set", item]
        if extra:
            argv = [*argv[:2], "--config", "smoke", *argv[2:]]
        code, _, err = _run(argv)
        _assert_one_line_error(code, err, "train", argv)
        assert not out.exists(), argv

    check()
    tally.report()


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


_NOT_INT = _TEXT.filter(lambda t: not _is_int(t))  # "1" is a valid --limit
_BAD_INT = st.one_of(st.integers(max_value=0).map(str), _NOT_INT, _NAN_INF, st.just("1.5"))
_BAD_EPS = st.one_of(
    st.floats(max_value=0, allow_nan=False, allow_infinity=False).filter(lambda v: v < 0).map(repr),
    _NAN_INF,
    _TEXT.filter(lambda t: not _is_float(t)),
)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@st.composite
def _bad_eval_or_attack(draw, command: str) -> list[str]:
    options = {
        "--limit": _BAD_INT,
        "--batch-size": _BAD_INT,
        "--seed": st.one_of(st.integers(max_value=-1).map(str), _NOT_INT),
        "--eps": _BAD_EPS,
        "--suite": _TEXT.filter(lambda t: t not in ("standard", "plus", "rand", "fast")),
        "--attacks": _TEXT.filter(lambda t: t.strip() and t not in _attack_names()),
        "--threat": _TEXT.filter(lambda t: t not in ("linf", "l2", "l1")),
        "--step": st.one_of(st.integers(max_value=-1).map(str), _NOT_INT, st.just("7")),
        "--num-processes": _BAD_INT,
        "--process-id": st.one_of(st.integers(max_value=-1).map(str), _NOT_INT),
        "--coordinator": _TEXT.filter(lambda t: ":" not in t),
    }
    if command == "attack":
        options = {k: options[k] for k in ("--eps", "--threat", "--step")}
        options.update({"--num": _BAD_INT, "--steps": _BAD_INT})
        options["--eps"] = st.one_of(_BAD_EPS, st.just("0"))
    else:
        options["--eps"] = st.one_of(
            st.lists(_BAD_EPS, min_size=1, max_size=2), st.just(["0"]), st.just(["0", "0.0"])
        )
    name = draw(st.sampled_from(sorted(options)))
    value = draw(options[name])
    values = value if isinstance(value, list) else [value]
    if any(v.startswith("-") and not _is_float(v) for v in values):
        values = [f"{name}={values[0]}"]  # argparse would read "-x" as an option
        return values
    return [name, *values]


@pytest.mark.parametrize("command", ["eval", "attack"])
def test_eval_attack_reject_every_bad_option(command, smoke_run, tmp_path):
    tally = _Tally(f"{command} --OPTION BAD")

    @_examples(ci=60)
    @given(option=_bad_eval_or_attack(command))
    def check(option):
        tally.cases += 1
        out = tmp_path / f"out{tally.cases}"
        argv = [command, str(smoke_run), *option, "--out", str(out)]
        code, _, err = _run(argv)
        _assert_one_line_error(code, err, command, argv)
        assert not out.exists(), argv

    check()
    tally.report()


@st.composite
def _bad_certify_bounds(draw) -> list[str]:
    """`certify --method ibp|crown-ibp` options with one bad value (or one that belongs to
    smoothing, or --eps left out)."""
    method = draw(st.sampled_from(["ibp", "crown-ibp"]))
    options = {
        # eps 0 is valid here (the clean accuracy): negated positives, as in _bad_for (a
        # filtered `floats(max_value=0)` lets 0.0 through).
        "--eps": st.one_of(
            st.floats(min_value=1e-300, max_value=1e300).map(lambda v: repr(-v)),
            _NAN_INF,
            _TEXT.filter(lambda t: not _is_float(t)),
        ),
        "--pgd-steps": _BAD_INT,
        "--pgd-restarts": _BAD_INT,
        "--limit": _BAD_INT,
        "--batch-size": _BAD_INT,
        "--seed": st.one_of(st.integers(max_value=-1).map(str), _NOT_INT),
        "--step": st.one_of(st.integers(max_value=-1).map(str), _NOT_INT, st.just("7")),
        "--sigma": st.sampled_from(["0.25", "1"]),  # a smoothing option
        "--radii": st.sampled_from(["0.5", "0"]),  # a smoothing option
        "no --eps": st.just(""),
    }
    name = draw(st.sampled_from(sorted(options)))
    base = ["--method", method]
    if name == "no --eps":
        return base
    value = draw(options[name])
    option = (
        [f"{name}={value}"] if value.startswith("-") and not _is_float(value) else [name, value]
    )
    return [*base, "--eps", "0.1", *option]  # a bad --eps replaces the good one (last wins)


def test_certify_bound_methods_reject_every_bad_option(smoke_run, tmp_path):
    tally = _Tally("certify --method ibp|crown-ibp --OPTION BAD")

    @_examples(ci=40)
    @given(option=_bad_certify_bounds())
    def check(option):
        tally.cases += 1
        out = tmp_path / f"out{tally.cases}"
        argv = ["certify", str(smoke_run), *option, "--out", str(out)]
        code, _, err = _run(argv)
        _assert_one_line_error(code, err, "certify", argv)
        assert not out.exists(), argv

    check()
    tally.report()


@st.composite
def _bad_run_dir(draw, root: Path, case: int) -> Path:
    kind = draw(st.sampled_from(["missing", "file", "empty", "no_config", "no_checkpoints"]))
    path = root / f"{kind}{case}"
    if kind == "file":
        path.write_text(draw(_TEXT))
    elif kind in ("empty", "no_config", "no_checkpoints"):
        path.mkdir()
        if kind == "no_config":
            (path / "checkpoints").mkdir()
        if kind == "no_checkpoints":
            (path / "config.json").write_text("{}")
    return path


def test_eval_attack_reject_bad_run_dirs(tmp_path):
    tally = _Tally("eval/attack BAD_RUN_DIR")

    @_examples(ci=30)
    @given(data=st.data(), command=st.sampled_from(["eval", "attack"]))
    def check(data, command):
        tally.cases += 1
        run = data.draw(_bad_run_dir(tmp_path, tally.cases))
        out = tmp_path / f"out{tally.cases}"
        argv = [command, str(run), "--out", str(out)]
        code, _, err = _run(argv)
        _assert_one_line_error(code, err, command, argv)
        assert not out.exists(), argv

    check()
    tally.report()


# ------------------------------------------------------------------ damaged run folders


@pytest.fixture(scope="module")
def saved_params(smoke_run):
    """The parameters of every checkpoint of the smoke run, by step."""
    from jaxrobust.train.loop import restore_run

    steps = sorted(int(p.name) for p in (smoke_run / "checkpoints").iterdir() if p.name.isdigit())
    return {
        s: [np.asarray(x) for x in jax.tree.leaves(restore_run(smoke_run, step=s)[1])]
        for s in steps
    }


@st.composite
def _damage(draw, files: list[Path]) -> list[tuple[int, str, float]]:
    """1-3 (file index, how, where) damages."""
    return draw(
        st.lists(
            st.tuples(
                st.integers(0, len(files) - 1),
                st.sampled_from(["truncate", "garbage", "flip", "delete", "empty"]),
                st.floats(0, 1),
            ),
            min_size=1,
            max_size=3,
        )
    )


def _apply(path: Path, how: str, where: float) -> None:
    if not path.exists():
        return
    data = path.read_bytes()
    cut = int(len(data) * where)
    if how == "truncate":
        path.write_bytes(data[:cut])
    elif how == "garbage":
        path.write_bytes(data[:cut] + os.urandom(max(1, len(data) - cut)))
    elif how == "flip" and data:
        i = min(cut, len(data) - 1)
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1 :])
    elif how == "delete":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.slow
def test_damaged_run_folders_fail_cleanly_or_use_an_intact_checkpoint(
    smoke_run, saved_params, tmp_path
):
    """Random damage to a run's files: `restore_run` (what eval and attack use) raises a
    one-line `CheckpointError` or returns exactly the parameters of a saved checkpoint;
    `attack` exits 0 or with one error line, never a traceback."""
    from jaxrobust.errors import JaxRobustError
    from jaxrobust.train.loop import restore_run

    checkpoint_files = (smoke_run / "checkpoints").rglob("*")
    files = [
        Path("config.json"),
        *sorted(p.relative_to(smoke_run) for p in checkpoint_files if p.is_file()),
    ]
    tally = _Tally("damaged run folder")
    outcomes = {"error": 0, "intact checkpoint": 0}

    @_examples(ci=5)
    @given(damage=_damage(files))
    def check(damage):
        tally.cases += 1
        run = tmp_path / f"run{tally.cases}"
        shutil.copytree(smoke_run, run, ignore=shutil.ignore_patterns("*.png", "attack", "eval"))
        for index, how, where in damage:
            _apply(run / files[index], how, where)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                _, state, _ = restore_run(run, warn=lambda m: None)
            except JaxRobustError as e:
                assert "\n" not in str(e) and len(str(e)) < 1500, str(e)
                outcomes["error"] += 1
            else:
                leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
                matches = [
                    s
                    for s, saved in saved_params.items()
                    if len(saved) == len(leaves)
                    and all(np.array_equal(a, b) for a, b in zip(saved, leaves, strict=True))
                ]
                assert matches, f"restored parameters match no saved checkpoint: {damage}"
                outcomes["intact checkpoint"] += 1
        assert "Traceback" not in err.getvalue() and "Exception ignored" not in err.getvalue()
        argv = ["attack", str(run), "--num", "2", "--steps", "1", "--out", str(run / "a")]
        code, _, err_text = _run(argv)
        if code != 0:
            _assert_one_line_error(code, err_text, "attack", argv)
        else:
            assert (run / "a" / "metrics.json").is_file()
        assert "Traceback" not in err_text and "Exception ignored" not in err_text
        shutil.rmtree(run)

    check()
    tally.report()
    print(f"fuzz damaged run folder outcomes: {outcomes}")


# ------------------------------------------------------------------ real processes


def _jaxrobust(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jaxrobust", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--set", "eps=1e999"],
        ["train", "--set", "model.kwargs.hidden=abc"],
        ["eval", "RUN", "--limit", "0"],
        ["attack", "RUN", "--eps", "inf"],
    ],
)
def test_subprocess_one_line(args, smoke_run, tmp_path):
    out = tmp_path / "out"
    args = [str(smoke_run) if a == "RUN" else a for a in args]
    proc = _jaxrobust(*args, "--out", str(out))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"jaxrobust {args[0]}: error: ")
    assert not out.exists()


@pytest.mark.slow
def test_subprocess_damaged_checkpoint_is_quiet(smoke_run, tmp_path):
    """A truncated array file: one warning line, then the older checkpoint is used; with
    --step on the damaged one, one error line; no asyncio/tensorstore noise either way."""
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    for f in (run / "checkpoints" / str(steps[-1]) / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    base = ["attack", str(run), "--num", "2", "--steps", "1", "--out", str(tmp_path / "a")]
    proc = _jaxrobust(*base)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "warning" in lines[0] and f"step {steps[-1]}" in lines[0], lines
    proc = _jaxrobust(*base, "--step", str(steps[-1]))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "corrupt" in lines[0], proc.stderr
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert math.isfinite(metrics["clean_accuracy"])
