"""Opt-in JAX persistent compilation cache for the command line and the tests.

Compilation dominates short jobs on CPU; caching compiled programs on disk makes a second
run of the same job start in seconds. Library functions never call this (no global state
behind a user's back); `jaxrobust` commands do.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

CACHE_ENV = "JAXROBUST_CACHE_DIR"


def enable_compilation_cache(directory: str | os.PathLike[str] | None = None) -> Path:
    """Cache compiled XLA programs in `directory` (default `$JAXROBUST_CACHE_DIR` or
    ~/.cache/jaxrobust/jax). Returns the directory."""
    path = Path(
        directory or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "jaxrobust" / "jax"
    )
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Cache every program: loading a small one is cheaper than compiling it again, and
    # a warm job then compiles nothing (eager ops and small helpers included).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
