"""jaxrobust: adversarially robust machine learning in pure, composable JAX.

The flat public API (like optax): threat models, losses, the `optimize` engine, attacks,
models and their adapters, training objectives. Submodules hold the rest:
`jaxrobust.data`, `jaxrobust.checkpoint`, `jaxrobust.report`, `jaxrobust.train`;
`jaxrobust.certify` (randomized smoothing, IBP, CROWN-IBP) is also reachable as
`jr.certify` without importing it first.

`import jaxrobust` (and so the `jaxrobust` command) does not import JAX: each public name
loads its module on first use, so `jaxrobust --help` and configuration errors answer at
once. Type checkers see the eager imports below.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jaxrobust import certify
    from jaxrobust.attacks import (
        ATTACKS,
        SUITES,
        EvalReport,
        apgd,
        apgd_targeted,
        classifier_objective,
        evaluate,
        fab,
        fab_targeted,
        fgsm,
        grid,
        pgd,
        query_limited_attack,
        square,
        transform_grid,
        worst_of_k,
    )
    from jaxrobust.attacks.bpda import straight_through
    from jaxrobust.compilation_cache import enable_compilation_cache
    from jaxrobust.errors import (
        CheckpointError,
        ConfigError,
        DatasetError,
        InputError,
        JaxRobustError,
    )
    from jaxrobust.losses import (
        cross_entropy,
        dlr,
        dlr_targeted,
        get_loss,
        kl_divergence,
        margin,
        targeted,
    )
    from jaxrobust.models import as_features_fn, as_logits_fn, create_model, init_model
    from jaxrobust.optimize import Result, StepRule, best_of, fixed_step, optax_step, optimize
    from jaxrobust.parallel import shard_examples, use_cpu_cores_as_devices
    from jaxrobust.represent import feature_error, invert
    from jaxrobust.runs import LoadedRun, load_run
    from jaxrobust.threat import (
        ThreatModel,
        get_threat,
        l1,
        l2,
        linf,
        masked,
        rotate_translate,
        spatial,
        unconstrained,
    )

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access)
_SOURCES = {
    **dict.fromkeys(
        (
            "ATTACKS",
            "SUITES",
            "EvalReport",
            "apgd",
            "apgd_targeted",
            "classifier_objective",
            "evaluate",
            "fab",
            "fab_targeted",
            "fgsm",
            "grid",
            "pgd",
            "query_limited_attack",
            "square",
            "transform_grid",
            "worst_of_k",
        ),
        "jaxrobust.attacks",
    ),
    "straight_through": "jaxrobust.attacks.bpda",
    "enable_compilation_cache": "jaxrobust.compilation_cache",
    **dict.fromkeys(
        ("CheckpointError", "ConfigError", "DatasetError", "InputError", "JaxRobustError"),
        "jaxrobust.errors",
    ),
    **dict.fromkeys(
        (
            "cross_entropy",
            "dlr",
            "dlr_targeted",
            "get_loss",
            "kl_divergence",
            "margin",
            "targeted",
        ),
        "jaxrobust.losses",
    ),
    **dict.fromkeys(
        ("as_features_fn", "as_logits_fn", "create_model", "init_model"), "jaxrobust.models"
    ),
    **dict.fromkeys(
        ("Result", "StepRule", "best_of", "fixed_step", "optax_step", "optimize"),
        "jaxrobust.optimize",
    ),
    **dict.fromkeys(("shard_examples", "use_cpu_cores_as_devices"), "jaxrobust.parallel"),
    **dict.fromkeys(("feature_error", "invert"), "jaxrobust.represent"),
    **dict.fromkeys(("LoadedRun", "load_run"), "jaxrobust.runs"),
    **dict.fromkeys(
        (
            "ThreatModel",
            "get_threat",
            "l1",
            "l2",
            "linf",
            "masked",
            "rotate_translate",
            "spatial",
            "unconstrained",
        ),
        "jaxrobust.threat",
    ),
}

# public subpackages reachable as attributes (`jr.certify.certify(...)`), imported on first
# access like the names above
_SUBPACKAGES = ("certify",)

__all__ = [
    "ATTACKS",
    "SUITES",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "EvalReport",
    "InputError",
    "JaxRobustError",
    "LoadedRun",
    "Result",
    "StepRule",
    "ThreatModel",
    "apgd",
    "apgd_targeted",
    "as_features_fn",
    "as_logits_fn",
    "best_of",
    "certify",
    "classifier_objective",
    "create_model",
    "cross_entropy",
    "dlr",
    "dlr_targeted",
    "enable_compilation_cache",
    "evaluate",
    "fab",
    "fab_targeted",
    "feature_error",
    "fgsm",
    "fixed_step",
    "get_loss",
    "get_threat",
    "grid",
    "init_model",
    "invert",
    "kl_divergence",
    "l1",
    "l2",
    "linf",
    "load_run",
    "margin",
    "masked",
    "optax_step",
    "optimize",
    "pgd",
    "query_limited_attack",
    "rotate_translate",
    "shard_examples",
    "spatial",
    "square",
    "straight_through",
    "targeted",
    "transform_grid",
    "unconstrained",
    "use_cpu_cores_as_devices",
    "worst_of_k",
]
assert set(__all__) == set(_SOURCES) | set(_SUBPACKAGES)  # one list of names, kept in step


class _Package(types.ModuleType):
    """The import system binds each imported submodule on its package: `jaxrobust.optimize`
    (the module) would then hide `jaxrobust.optimize` (the engine, a public function).
    Public names always resolve to the public objects."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SOURCES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in _SOURCES:
        value = getattr(importlib.import_module(_SOURCES[name]), name)
        globals()[name] = value  # later accesses skip this hook
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")  # binds itself on the package
    raise AttributeError(f"module 'jaxrobust' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
