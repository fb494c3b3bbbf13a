"""Pre-activation ResNet-18 (He et al., 2016), as used by Wong et al. (fast-AT) and Rice et al.

Layer-for-layer the PyTorch `PreActResNet18` of those papers: 3x3 convs with padding 1 and no
bias (so PyTorch weights map one-to-one), 1x1 projection shortcuts, BatchNorm with momentum 0.9
and eps 1e-5, a final BN-ReLU, global average pooling (any input size: 8x8, 28x28, 32x32) and a
dense head.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jax import Array

from jaxrobust.models.layers import Conv, Stat, normalize

# Kaiming-normal (fan_out) as in the torchvision / WRN reference initialisations.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
    # Flax momentum is the decay of the running average: 0.9 == PyTorch momentum 0.1.
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def _conv1x1(features: int, stride: int, name: str) -> Conv:
    """A bias-free 1×1 convolution (projection shortcuts, bottleneck blocks)."""
    return Conv(
        features,
        (1, 1),
        strides=(stride, stride),
        padding="VALID",
        use_bias=False,
        kernel_init=conv_init,
        name=name,
    )


def _shortcut(features: int, stride: int) -> Conv:
    """The 1×1 projection shortcut of a pre-activation block (applied to its activated input)."""
    return _conv1x1(features, stride, "shortcut")


def _conv3x3(features: int, stride: int, name: str) -> Conv:
    # Explicit symmetric padding 1 (not 'SAME') matches PyTorch's alignment at stride 2.
    # `Conv` (not nn.Conv): same parameters, faster on CPU (small late-stage maps; loops).
    return Conv(
        features,
        (3, 3),
        strides=(stride, stride),
        padding=((1, 1), (1, 1)),
        use_bias=False,
        kernel_init=conv_init,
        name=name,
    )


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3 + shortcut; (B, H, W, Cin) -> (B, H/s, W/s, C).

    `activated_shortcut`: the 1x1 projection shortcut sees the block's pre-activated input
    (True: Wong et al., Rice et al., RobustBench `PreActBlockV2`) or its raw input (False:
    RobustBench `PreActBlock`).
    """

    features: int
    stride: int = 1
    activated_shortcut: bool = True

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        out = nn.relu(_batch_norm(train, "bn1")(x))
        if self.stride != 1 or x.shape[-1] != self.features:
            # By default the projection sees the pre-activated input, as in Rice et al.'s code.
            shortcut = _shortcut(self.features, self.stride)(out if self.activated_shortcut else x)
        else:
            shortcut = x
        out = _conv3x3(self.features, self.stride, "conv1")(out)
        out = nn.relu(_batch_norm(train, "bn2")(out))
        out = _conv3x3(self.features, 1, "conv2")(out)
        return out + shortcut


class PreActResNet(nn.Module):
    """Pre-activation ResNet with `PreActBlock`s; input (B, H, W, C) -> logits (B, num_classes).

    Sows `stage1`..`stage4` (block-stage outputs) and `features` (B, 8 * width), the pooled
    representation after the final BN-ReLU.
    """

    num_blocks: tuple[int, ...] = (2, 2, 2, 2)
    num_classes: int = 10
    width: int = 64
    mean: Stat = 0.0
    std: Stat = 1.0
    final_bn: bool = True
    activated_shortcut: bool = True

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        h = normalize(x, self.mean, self.std)
        h = _conv3x3(self.width, 1, "conv1")(h)
        for s, n in enumerate(self.num_blocks):
            features = self.width * 2**s
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                h = PreActBlock(
                    features, stride, self.activated_shortcut, name=f"layer{s + 1}_{b}"
                )(h, train)
            self.sow("intermediates", f"stage{s + 1}", h)
        if self.final_bn:
            h = nn.relu(_batch_norm(train, "bn")(h))
        h = jnp.mean(h, axis=(1, 2))  # global average pool: any spatial size
        self.sow("intermediates", "features", h)
        return nn.Dense(self.num_classes, name="linear")(h)


class PreActResNet18(PreActResNet):
    """PreActResNet-18: `PreActResNet` with (2, 2, 2, 2) blocks of widths 64/128/256/512.

    `PreActResNet18(num_classes=10, mean=..., std=...)`; input (B, H, W, C) -> (B, num_classes).
    `width` scales all stages (e.g. 16 for a cheap test model).
    """
