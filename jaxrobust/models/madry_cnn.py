"""Small convolutional networks: the Madry et al. MNIST CNN, a cheaper 3x3 CNN, and a
3x3 CNN with BatchNorm and global average pooling."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import Array

from jaxrobust.models.layers import Conv, ConvImpl, Stat, max_pool_2x2, normalize


class MadryCNN(nn.Module):
    """The MNIST model of Madry et al. (2018), "Towards Deep Learning Models Resistant...".

    conv5x5-32 SAME + ReLU, 2x2 max-pool, conv5x5-64 SAME + ReLU, 2x2 max-pool,
    FC-1024 + ReLU, FC-num_classes. Input (B, H, W, C) in [0, 1] -> logits (B, num_classes).
    Sows `pool1`, `pool2` (pooled conv maps) and `features` (B, 1024).
    """

    num_classes: int = 10
    mean: Stat = 0.0
    std: Stat = 1.0
    conv_impl: ConvImpl = "auto"  # `layers.Conv`'s formulation

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        del train
        h = normalize(x, self.mean, self.std)
        h = max_pool_2x2(
            nn.relu(Conv(32, (5, 5), padding="SAME", name="conv1", impl=self.conv_impl)(h))
        )
        self.sow("intermediates", "pool1", h)
        h = max_pool_2x2(
            nn.relu(Conv(64, (5, 5), padding="SAME", name="conv2", impl=self.conv_impl)(h))
        )
        self.sow("intermediates", "pool2", h)
        h = h.reshape((h.shape[0], -1))
        h = nn.relu(nn.Dense(1024, name="fc1")(h))
        self.sow("intermediates", "features", h)
        return nn.Dense(self.num_classes, name="head")(h)


class SmallCNN(nn.Module):
    """A cheap CNN for 8x8 digits and MNIST (3x3 convs are at parity with PyTorch on CPU).

    [conv3x3-c1 ReLU] x2, max-pool, [conv3x3-c2 ReLU] x2, max-pool, Dense(dense) ReLU,
    Dense(num_classes). Input (B, H, W, C) -> logits (B, num_classes).
    Sows `block1`, `block2` (pooled maps) and `features` (B, dense).
    """

    channels: Sequence[int] = (32, 64)
    dense: int = 128
    num_classes: int = 10
    mean: Stat = 0.0
    std: Stat = 1.0
    conv_impl: ConvImpl = "auto"  # `layers.Conv`'s formulation

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        del train
        h = normalize(x, self.mean, self.std)
        for b, c in enumerate(self.channels, start=1):
            for j in (1, 2):
                h = nn.relu(
                    Conv(c, (3, 3), padding="SAME", name=f"conv{b}_{j}", impl=self.conv_impl)(h)
                )
            h = max_pool_2x2(h)
            self.sow("intermediates", f"block{b}", h)
        h = h.reshape((h.shape[0], -1))
        h = nn.relu(nn.Dense(self.dense, name="fc1")(h))
        self.sow("intermediates", "features", h)
        return nn.Dense(self.num_classes, name="head")(h)


class BNCNN(nn.Module):
    """A small 3x3 CNN with BatchNorm and global average pooling, for 32x32 `shapes`.

    For each width c in `channels`: [conv3x3-c (no bias) BN ReLU] x2, then a 2x2
    max-pool after every block but the last; global average pooling; Dense(num_classes).
    Input (B, H, W, C) -> logits (B, num_classes). BatchNorm uses batch statistics when
    `train=True` (running averages, momentum 0.9, otherwise). Sows `block1`, `block2`, ...
    (each block's output) and `features` (B, channels[-1]), the pooled vector.

    Why it exists: on `shapes` (random position, rotation, texture and clutter) the plain
    `small_cnn` learns slowly and, under PGD adversarial training, collapsed to a
    constant prediction; normalised activations and position-invariant pooling train
    faster per CPU second and stay off the constant solution (see
    experiments/_shapes_reliance.py and its results).
    """

    channels: Sequence[int] = (16, 32, 64)
    num_classes: int = 10
    mean: Stat = 0.0
    std: Stat = 1.0
    conv_impl: ConvImpl = "auto"  # `layers.Conv`'s formulation

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        h = normalize(x, self.mean, self.std)
        last = len(self.channels)
        for b, c in enumerate(self.channels, start=1):
            for j in (1, 2):
                h = Conv(
                    c,
                    (3, 3),
                    padding="SAME",
                    use_bias=False,
                    name=f"conv{b}_{j}",
                    impl=self.conv_impl,
                )(h)
                h = nn.BatchNorm(
                    use_running_average=not train, momentum=0.9, epsilon=1e-5, name=f"bn{b}_{j}"
                )(h)
                h = nn.relu(h)
            if b < last:
                h = max_pool_2x2(h)
            self.sow("intermediates", f"block{b}", h)
        h = jnp.mean(h, axis=(1, 2))
        self.sow("intermediates", "features", h)
        return nn.Dense(self.num_classes, name="head")(h)
