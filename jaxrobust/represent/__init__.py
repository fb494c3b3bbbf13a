"""Representations: inputs optimised to match or steer a model's internal features.

`invert` is representation inversion (Mahendran & Vedaldi 2015; Engstrom et al. 2019,
"Adversarial robustness as a prior for learned representations"; the D_R / D_NR
constructions of Ilyas et al. 2019): the `jaxrobust.optimize` engine minimising the
distance between a layer's features and a target, with normalised ℓ2 steps.
"""

from jaxrobust.represent.inversion import feature_error, invert, layer_features

__all__ = ["feature_error", "invert", "layer_features"]
