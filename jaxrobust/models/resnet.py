"""Standard (post-activation) ResNet-18 / ResNet-50 for CIFAR-sized inputs (He et al., 2016).

Layer-for-layer the CIFAR `ResNet` of MadryLab's `robustness` library (`cifar_models/resnet.py`)
and of RobustBench (`model_zoo/architectures/resnet.py`): a 3x3 stem convolution with 64
channels, BN and ReLU (no max-pool), four stages of `BasicBlock`s (ResNet-18: 2, 2, 2, 2) or
`Bottleneck`s with expansion 4 (ResNet-50: 3, 4, 6, 3) with widths 64/128/256/512 and strides
1, 2, 2, 2, global average pooling and a dense head. Convolutions have no bias; the shortcut is
the identity or, when the shape changes, a 1x1 convolution followed by BN. BatchNorm momentum
0.9 (PyTorch 0.1), eps 1e-5, as PyTorch's defaults, so PyTorch weights map one-to-one
(`jaxrobust.models.from_torch`).

The reference pools with `avg_pool2d(out, 4)`, which on the 4x4 maps of a 32x32 input is the
global average used here; the global average also accepts other input sizes.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jax import Array

from jaxrobust.errors import ConfigError
from jaxrobust.models.layers import Stat, normalize
from jaxrobust.models.preact_resnet import _batch_norm, _conv1x1, _conv3x3


def _projection(x: Array, features: int, stride: int, train: bool) -> Array:
    """The shortcut: identity, or 1x1 conv(stride) + BN when the shape changes."""
    if stride == 1 and x.shape[-1] == features:
        return x
    return _batch_norm(train, "shortcut_bn")(_conv1x1(features, stride, "shortcut")(x))


class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN + shortcut, then ReLU.

    (B, H, W, Cin) -> (B, H/stride, W/stride, features).
    """

    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        out = nn.relu(_batch_norm(train, "bn1")(_conv3x3(self.features, self.stride, "conv1")(x)))
        out = _batch_norm(train, "bn2")(_conv3x3(self.features, 1, "conv2")(out))
        return nn.relu(out + _projection(x, self.features, self.stride, train))


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4 * features)-BN + shortcut, then ReLU.

    (B, H, W, Cin) -> (B, H/stride, W/stride, 4 * features).
    """

    features: int
    stride: int = 1
    expansion: int = 4

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        out_features = self.expansion * self.features
        out = nn.relu(_batch_norm(train, "bn1")(_conv1x1(self.features, 1, "conv1")(x)))
        out = _conv3x3(self.features, self.stride, "conv2")(out)
        out = nn.relu(_batch_norm(train, "bn2")(out))
        out = _batch_norm(train, "bn3")(_conv1x1(out_features, 1, "conv3")(out))
        return nn.relu(out + _projection(x, out_features, self.stride, train))


class ResNet(nn.Module):
    """Post-activation ResNet; input (B, H, W, C) in [0, 1] -> logits (B, num_classes).

    `block` is "basic" (`BasicBlock`) or "bottleneck" (`Bottleneck`, expansion 4). Sows
    `stage1`..`stage4` (block-stage outputs) and `features` (B, 8 * width * expansion), the
    pooled representation.
    """

    num_blocks: tuple[int, ...] = (2, 2, 2, 2)
    block: str = "basic"
    num_classes: int = 10
    width: int = 64
    mean: Stat = 0.0
    std: Stat = 1.0

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        if self.block not in ("basic", "bottleneck"):
            raise ConfigError(f"ResNet block must be 'basic' or 'bottleneck', got {self.block!r}")
        h = normalize(x, self.mean, self.std)
        h = nn.relu(_batch_norm(train, "bn1")(_conv3x3(self.width, 1, "conv1")(h)))
        for s, n in enumerate(self.num_blocks):
            features = self.width * 2**s
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                name = f"layer{s + 1}_{b}"
                if self.block == "basic":
                    h = BasicBlock(features, stride, name=name)(h, train)
                else:
                    h = Bottleneck(features, stride, name=name)(h, train)
            self.sow("intermediates", f"stage{s + 1}", h)
        h = jnp.mean(h, axis=(1, 2))  # global average pool: any spatial size
        self.sow("intermediates", "features", h)
        return nn.Dense(self.num_classes, name="linear")(h)


class ResNet18(ResNet):
    """ResNet-18: `ResNet` with (2, 2, 2, 2) `BasicBlock`s of widths 64/128/256/512.

    `ResNet18(num_classes=10, mean=..., std=...)`; input (B, H, W, C) -> (B, num_classes);
    features (B, 8 * width). `width` scales all stages (e.g. 8 for a cheap test model).
    """


class ResNet50(ResNet):
    """ResNet-50: `ResNet` with (3, 4, 6, 3) `Bottleneck`s of widths 64/128/256/512 (x4 out).

    `ResNet50(num_classes=10, mean=..., std=...)`; input (B, H, W, C) -> (B, num_classes);
    features (B, 32 * width).
    """

    num_blocks: tuple[int, ...] = (3, 4, 6, 3)
    block: str = "bottleneck"
