"""Representations: inputs optimised to match or steer a model's internal features, and
image synthesis with one (robust) classifier.

Every task is the one `jaxrobust.optimize` engine with normalised ℓ2 steps and a different
objective and start:

- `inversion`: `invert` (Mahendran & Vedaldi 2015; Engstrom et al. 2019, "Adversarial
  robustness as a prior for learned representations"; the D_R / D_NR constructions of
  Ilyas et al. 2019), `feature_error`, `layer_features`;
- `visualize`: `interpolate` (through the representation), `visualize_feature` (maximise
  one component), `add_feature` (feature manipulation), `sensitivity` (∇ₓ of a feature);
- `synthesis` (Santurkar et al. 2019): `fit_class_gaussian` / `sample_seeds` / `generate`,
  `inpaint`, `super_resolve`, `translate`, `sketch_to_image` (all on `toward_class`);
- `saliency`: `input_gradient`, `saliency_map`, `alignment`.
"""

from jaxrobust.represent.inversion import feature_error, invert, layer_features
from jaxrobust.represent.saliency import alignment, input_gradient, saliency_map
from jaxrobust.represent.synthesis import (
    ClassGaussian,
    downsample,
    fit_class_gaussian,
    generate,
    inpaint,
    sample_seeds,
    sketch_to_image,
    super_resolve,
    toward_class,
    translate,
    upsample,
)
from jaxrobust.represent.visualize import add_feature, interpolate, sensitivity, visualize_feature

__all__ = [
    "ClassGaussian",
    "add_feature",
    "alignment",
    "downsample",
    "feature_error",
    "fit_class_gaussian",
    "generate",
    "inpaint",
    "input_gradient",
    "interpolate",
    "invert",
    "layer_features",
    "saliency_map",
    "sample_seeds",
    "sensitivity",
    "sketch_to_image",
    "super_resolve",
    "toward_class",
    "translate",
    "upsample",
    "visualize_feature",
]
