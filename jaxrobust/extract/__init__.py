"""Model extraction and query-only attacks: a query-counting prediction API
(`prediction_api`, `query`), substitutes trained from its answers (`extract`, Tramèr et al.
2016, with Papernot et al. 2017's Jacobian-based augmentation), and transfer attacks from the
substitute scored against the victim (`transfer`)."""

from jaxrobust.extract.api import (
    OUTPUTS,
    PredictionAPI,
    QueryBudgetError,
    prediction_api,
    query,
    remaining,
)
from jaxrobust.extract.substitute import (
    AUGMENTATIONS,
    SUBSTITUTE_MODELS,
    Extraction,
    FitConfig,
    agreement,
    check_disjoint,
    extract,
    fit_classifier,
    overlap,
    soft_cross_entropy,
    substitute_model,
    targets_of,
)
from jaxrobust.extract.transfer import noise_like, transfer_attack

__all__ = [
    "AUGMENTATIONS",
    "OUTPUTS",
    "SUBSTITUTE_MODELS",
    "Extraction",
    "FitConfig",
    "PredictionAPI",
    "QueryBudgetError",
    "agreement",
    "check_disjoint",
    "extract",
    "fit_classifier",
    "noise_like",
    "overlap",
    "prediction_api",
    "query",
    "remaining",
    "soft_cross_entropy",
    "substitute_model",
    "targets_of",
    "transfer_attack",
]
