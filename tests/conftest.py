"""Shared test set-up: an isolated data directory and the persistent compilation cache.

Both live in one temporary folder per test session (shared by the pytest-xdist workers), so
tests never depend on or write to the user's ~/.cache. Subprocesses (CLI tests) inherit
them through the environment. The folder (some 200 MB of compiled programs after a full
run) is removed when the session ends, unless $JAXROBUST_TEST_ROOT named it (kept then,
to reuse the cache across runs).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs the property tests with a fixed seed so a submission's result is reproducible;
# locally every run explores new examples.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# pytest-xdist workers share the controller's folder (set below, before the workers start,
# and inherited through the environment), so a program one worker compiled is read from the
# cache by the other; the controller (or a plain pytest process) removes it at the end.
_SHARED = "JAXROBUST_TEST_SHARED_ROOT"
_OWN_ROOT = not (os.environ.get("JAXROBUST_TEST_ROOT") or os.environ.get(_SHARED))
_ROOT = Path(
    os.environ.get("JAXROBUST_TEST_ROOT")
    or os.environ.get(_SHARED)
    or tempfile.mkdtemp(prefix="jaxrobust-tests-")
)
os.environ.setdefault(_SHARED, str(_ROOT))
os.environ.setdefault("JAXROBUST_DATA_DIR", str(_ROOT / "data"))
os.environ.setdefault("JAXROBUST_CACHE_DIR", str(_ROOT / "jax_cache"))
# The `jaxrobust` commands give the CPU one device per core; tests (in-process, where the
# first CLI call of a worker would otherwise decide the device count of every later test,
# and CLI subprocesses) keep JAX's single CPU device unless a test asks for more
# (test_parallel.py runs the per-core path).
os.environ.setdefault("JAXROBUST_CPU_DEVICES", "1")

from jaxrobust.compilation_cache import enable_compilation_cache  # noqa: E402

enable_compilation_cache(os.environ["JAXROBUST_CACHE_DIR"])


@pytest.fixture(scope="session")
def digits_test():
    """The digits test split, (360, 8, 8, 1) float32 in [0, 1] and (360,) int32."""
    from jaxrobust.data import load_split

    return load_split("digits", "test")


def pytest_unconfigure(config):
    """Remove this session's data and compilation-cache folder (it is ours alone)."""
    if _OWN_ROOT:
        shutil.rmtree(_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """A finished `jaxrobust train --config smoke` run (2 epochs, checkpoints at steps 11
    and 22), shared by the CLI tests; tests that change it work on a copy."""
    from jaxrobust.cli import main

    out = tmp_path_factory.mktemp("runs") / "smoke"
    assert main(["train", "--config", "smoke", "--quiet", "--out", str(out)]) == 0
    return out
