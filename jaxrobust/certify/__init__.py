"""Certified robustness: randomized smoothing (`jaxrobust.certify.smoothing`), interval
bound propagation and CROWN-IBP (`jaxrobust.certify.ibp`).

`METHODS` maps the `jaxrobust certify --method` names to the module that implements each
(imported on use); a method whose module is not part of this build is listed with None
and answers with a `ConfigError` naming what is available. Importing this package does
not import JAX (the CLI checks `--method` before starting it); the smoothing names load
on first access.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

from jaxrobust.errors import ConfigError

if TYPE_CHECKING:
    from jaxrobust.certify.ibp import (
        Affine,
        AvgPool,
        Bounds,
        Conv,
        Dense,
        Flatten,
        MaxPool2x2,
        ReLU,
        UnsupportedLayerError,
        bound_cross_entropy,
        crown_ibp_bounds,
        crown_lower,
        fold_batchnorm,
        forward,
        from_flax,
        ibp_bounds,
        margin_bounds,
        mixed_margins,
        specification,
        supported_models,
        verified,
        verified_accuracy,
    )
    from jaxrobust.certify.smoothing import (
        ABSTAIN,
        AttackCheck,
        Certificate,
        Prediction,
        attack_certificates,
        certified_accuracy,
        certified_accuracy_curve,
        certify,
        clopper_pearson_lower,
        max_radius,
        predict,
        sample_counts,
        smoothed_logits_fn,
    )

METHODS: dict[str, str | None] = {
    "smoothing": "jaxrobust.certify.smoothing",
    # Interval bound propagation and CROWN-IBP: verified accuracy at an l-inf eps.
    "ibp": "jaxrobust.certify.ibp",
    "crown-ibp": "jaxrobust.certify.ibp",
}
"""`--method` name -> implementing module (None: not available in this build)."""

_SMOOTHING = (
    "ABSTAIN",
    "AttackCheck",
    "attack_certificates",
    "Certificate",
    "Prediction",
    "certified_accuracy",
    "certified_accuracy_curve",
    "certify",
    "clopper_pearson_lower",
    "max_radius",
    "predict",
    "sample_counts",
    "smoothed_logits_fn",
)


def method_module(name: str) -> ModuleType:
    """The module implementing certification method `name`.

    Raises:
      ConfigError: an unknown method, or one not available in this build.
    """
    if name not in METHODS:
        raise ConfigError(f"unknown certification method {name!r}; known: {', '.join(METHODS)}")
    module = METHODS[name]
    if module is None:
        available = ", ".join(k for k, v in METHODS.items() if v is not None)
        raise ConfigError(
            f"certification method {name!r} is not available in this build; available: {available}"
        )
    return importlib.import_module(module)


_IBP = (
    "Affine",
    "AvgPool",
    "Bounds",
    "Conv",
    "Dense",
    "Flatten",
    "MaxPool2x2",
    "ReLU",
    "UnsupportedLayerError",
    "bound_cross_entropy",
    "crown_ibp_bounds",
    "crown_lower",
    "fold_batchnorm",
    "forward",
    "from_flax",
    "ibp_bounds",
    "margin_bounds",
    "mixed_margins",
    "specification",
    "supported_models",
    "verified",
    "verified_accuracy",
)


def __getattr__(name: str) -> Any:
    if name in _SMOOTHING:
        return getattr(importlib.import_module("jaxrobust.certify.smoothing"), name)
    if name in _IBP:
        return getattr(importlib.import_module("jaxrobust.certify.ibp"), name)
    raise AttributeError(f"module 'jaxrobust.certify' has no attribute {name!r}")


__all__ = [
    "ABSTAIN",
    "METHODS",
    "Affine",
    "AttackCheck",
    "AvgPool",
    "Bounds",
    "Certificate",
    "Conv",
    "Dense",
    "Flatten",
    "MaxPool2x2",
    "Prediction",
    "ReLU",
    "UnsupportedLayerError",
    "attack_certificates",
    "bound_cross_entropy",
    "certified_accuracy",
    "certified_accuracy_curve",
    "certify",
    "clopper_pearson_lower",
    "crown_ibp_bounds",
    "crown_lower",
    "fold_batchnorm",
    "forward",
    "from_flax",
    "ibp_bounds",
    "margin_bounds",
    "max_radius",
    "method_module",
    "mixed_margins",
    "predict",
    "sample_counts",
    "smoothed_logits_fn",
    "specification",
    "supported_models",
    "verified",
    "verified_accuracy",
]
assert set(__all__) == {"METHODS", "method_module", *_SMOOTHING, *_IBP}  # one list, kept in step
