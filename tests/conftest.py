"""Shared test set-up: an isolated data directory and the persistent compilation cache.

Both live in one temporary folder per test session (per worker under pytest-xdist), so
tests never depend on or write to the user's ~/.cache. Subprocesses (CLI tests) inherit
them through the environment.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs the property tests with a fixed seed so a submission's result is reproducible;
# locally every run explores new examples.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

_ROOT = Path(os.environ.get("JAXROBUST_TEST_ROOT") or tempfile.mkdtemp(prefix="jaxrobust-tests-"))
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
