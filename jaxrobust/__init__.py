"""jaxrobust: adversarially robust machine learning in pure, composable JAX.

The flat public API (like optax): threat models, losses, the `optimize` engine, attacks,
models and their adapters, training objectives. Submodules hold the rest:
`jaxrobust.data`, `jaxrobust.checkpoint`, `jaxrobust.report`, `jaxrobust.train`.
"""

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
    "classifier_objective",
    "create_model",
    "cross_entropy",
    "dlr",
    "dlr_targeted",
    "enable_compilation_cache",
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
    "targeted",
    "transform_grid",
    "unconstrained",
    "use_cpu_cores_as_devices",
    "worst_of_k",
]
