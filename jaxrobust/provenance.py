"""Where a result came from: code version, packages, devices and command of a run.

Every training run writes `run_info.json` beside its `config.json` (`jaxrobust train`,
`jr.train`), and the experiments put the same code fields in their JSON, so a number can
be traced to the commit, the library versions and the hardware that produced it.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax

# The packages whose versions change a result (numerics, checkpoints, data), in the
# order a reader looks for them.
PACKAGES = (
    "jaxrobust",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "chex",
    "orbax-checkpoint",
    "numpy",
    "scipy",
    "ml_collections",
    "tensorflow-datasets",
    "array_record",
    "grain",
)

_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def git_commit(root: str | Path | None = None) -> str | None:
    """HEAD of the git checkout at `root` (default: the one this jaxrobust runs from), with
    '+dirty' when tracked files have uncommitted changes; None for an installed copy, or
    where git is unavailable."""
    root = Path(root) if root is not None else _SOURCE_ROOT
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0 or not head.stdout.strip():
        return None
    dirty = status.returncode == 0 and bool(status.stdout.strip())
    return head.stdout.strip() + ("+dirty" if dirty else "")


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None where it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_metadata(*, seed: int | None = None, config: dict | None = None) -> dict[str, Any]:
    """What produced a run: time, command, code, packages, Python, platform and devices.

    Args:
      seed: the run's seed (also inside `config`; repeated so it is found at a glance).
      config: the run's JSON config, stored as given.
    Returns:
      A JSON-ready dict.
    """
    devices = jax.devices()
    info: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
        "git_commit": git_commit(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind if devices else None,
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "seed": seed,
    }
    if config is not None:
        info["config"] = config
    return info
