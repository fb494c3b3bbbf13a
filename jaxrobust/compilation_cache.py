"""Opt-in JAX persistent compilation cache: `jr.enable_compilation_cache()`.

Compilation dominates short jobs on CPU; caching compiled programs on disk makes a second
run of the same job (or a second process evaluating another checkpoint of the same
architecture) start in seconds. Library functions never call this (no global state behind
a user's back); `jaxrobust` commands and the tests do, and research code can with one line.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

CACHE_ENV = "JAXROBUST_CACHE_DIR"


def enable_compilation_cache(directory: str | os.PathLike[str] | None = None) -> Path:
    """Cache compiled XLA programs on disk, for this process and every later one.

        import jaxrobust as jr
        jr.enable_compilation_cache()  # e.g. ~/.cache/jaxrobust/jax

    Within one process, a jitted function that takes a model made by `jr.as_logits_fn`
    compiles once per architecture anyway; the disk cache saves the compilation in the next
    process (a new script, a new job on another checkpoint). It may be called at any time,
    again with another directory too: programs compiled afterwards are cached there. It is
    process-wide JAX configuration (`jax_compilation_cache_dir`); every program is cached,
    however small.

    Args:
      directory: where to keep the programs; default `$JAXROBUST_CACHE_DIR`, else
        ~/.cache/jaxrobust/jax. Created when missing.
    Returns:
      The directory.
    """
    path = Path(
        directory or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "jaxrobust" / "jax"
    )
    path.mkdir(parents=True, exist_ok=True)
    # jax.config's flags are attributes made at run time, which its stubs do not declare.
    previous = jax.config.jax_compilation_cache_dir  # type: ignore[attr-defined]
    jax.config.update("jax_compilation_cache_dir", str(path))
    if previous and previous != str(path):
        # JAX opens its cache once, at the first compilation: reopen it in the new place.
        from jax.experimental.compilation_cache import compilation_cache

        compilation_cache.reset_cache()
    # Cache every program: loading a small one is cheaper than compiling it again, and
    # a warm job then compiles nothing (eager ops and small helpers included).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
