"""Flax models with in-model normalisation, a registry, and adapters to pure functions.

All models map NHWC float inputs in [0, 1] to logits, `__call__(x, train=False)`, and sow their
penultimate representation as `intermediates/features`.
"""

from jaxrobust.models.adapters import FeaturesFn, LogitsFn, as_features_fn, as_logits_fn
from jaxrobust.models.layers import (
    Conv,
    conv_as_gemm,
    conv_gemm_grad,
    conv_general_dilated_gemm_grad,
    max_pool_2x2,
    normalize,
)
from jaxrobust.models.madry_cnn import MadryCNN, SmallCNN
from jaxrobust.models.mlp import MLP
from jaxrobust.models.preact_resnet import PreActBlock, PreActResNet, PreActResNet18
from jaxrobust.models.registry import MODELS, create_model, init_model, model_kwargs
from jaxrobust.models.resnet import BasicBlock, Bottleneck, ResNet, ResNet18, ResNet50
from jaxrobust.models.wide_resnet import WideBlock, WideResNet

__all__ = [
    "MLP",
    "MODELS",
    "BasicBlock",
    "Bottleneck",
    "Conv",
    "FeaturesFn",
    "LogitsFn",
    "MadryCNN",
    "PreActBlock",
    "PreActResNet",
    "PreActResNet18",
    "ResNet",
    "ResNet18",
    "ResNet50",
    "SmallCNN",
    "WideBlock",
    "WideResNet",
    "as_features_fn",
    "as_logits_fn",
    "conv_as_gemm",
    "conv_gemm_grad",
    "conv_general_dilated_gemm_grad",
    "create_model",
    "init_model",
    "max_pool_2x2",
    "model_kwargs",
    "normalize",
]
