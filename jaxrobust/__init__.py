"""jaxrobust: adversarially robust machine learning in pure, composable JAX.

The flat public API (like optax): threat models, losses, the `optimize` engine, attacks,
models and their adapters, training objectives. Submodules hold the rest:
`jaxrobust.data`, `jaxrobust.checkpoint`, `jaxrobust.report`, `jaxrobust.train`.

`import jaxrobust` (and so the `jaxrobust` command) does not import JAX: the public names
load on first use, so `jaxrobust --help` and configuration errors answer at once.
"""

# ruff: noqa: F401 (the imports in `_public_api` are its result, through locals())
from typing import Any


def _public_api() -> dict[str, Any]:
    """Import the flat public API (and with it JAX)."""
    from jaxrobust.attacks import (
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

    return {name: value for name, value in locals().items() if name in __all__}


__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "InputError",
    "JaxRobustError",
    "Result",
    "StepRule",
    "ThreatModel",
    "apgd",
    "apgd_targeted",
    "as_features_fn",
    "as_logits_fn",
    "best_of",
    "classifier_objective",
    "create_model",
    "cross_entropy",
    "dlr",
    "dlr_targeted",
    "evaluate",
    "fab",
    "fab_targeted",
    "fgsm",
    "fixed_step",
    "get_loss",
    "get_threat",
    "grid",
    "init_model",
    "kl_divergence",
    "l1",
    "l2",
    "linf",
    "margin",
    "masked",
    "optax_step",
    "optimize",
    "pgd",
    "query_limited_attack",
    "rotate_translate",
    "spatial",
    "square",
    "targeted",
    "transform_grid",
    "unconstrained",
    "worst_of_k",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        globals().update(_public_api())
        return globals()[name]
    raise AttributeError(f"module 'jaxrobust' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
