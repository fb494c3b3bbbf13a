"""Wide residual network (Zagoruyko & Komodakis, 2016), pre-activation variant.

The layout of the WRN-28-10 / WRN-34-10 used in the robustness literature (Madry et al.,
TRADES, Rice et al.): a 3x3 stem with 16 channels, three stages of (depth - 4) / 6 blocks with
widths 16k, 32k, 64k and strides 1, 2, 2, a final BN-ReLU, global average pooling and a dense
head. BatchNorm momentum 0.9 (PyTorch 0.1), eps 1e-5.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jax import Array

from jaxrobust.errors import ConfigError
from jaxrobust.models.layers import Stat, normalize
from jaxrobust.models.preact_resnet import _batch_norm, _conv3x3, _shortcut


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3(stride)-BN-ReLU-[dropout]-conv3x3 + shortcut.

    (B, H, W, Cin) -> (B, H/stride, W/stride, features). When the shape changes, the
    pre-activation is shared by the residual branch and the 1x1 projection shortcut, as in
    the reference implementation.
    """

    features: int
    stride: int = 1
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        act = nn.relu(_batch_norm(train, "bn1")(x))
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = _shortcut(self.features, self.stride)(act)
        else:
            shortcut = x
        out = _conv3x3(self.features, self.stride, "conv1")(act)
        out = nn.relu(_batch_norm(train, "bn2")(out))
        if self.dropout > 0:
            out = nn.Dropout(self.dropout, deterministic=not train)(out)
        out = _conv3x3(self.features, 1, "conv2")(out)
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-`depth`-`width`; input (B, H, W, C) in [0, 1] -> logits (B, num_classes).

    `depth` must be 6n + 4. Dropout (between the convs of each block) needs a "dropout" rng
    when `train=True` and `dropout > 0`. Sows `stage1`..`stage3` and `features`
    (B, 64 * width), the pooled representation after the final BN-ReLU.
    """

    depth: int = 28
    width: int = 10
    num_classes: int = 10
    mean: Stat = 0.0
    std: Stat = 1.0
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        if (self.depth - 4) % 6 != 0 or self.depth < 10:
            raise ConfigError(f"WideResNet depth must be 6n + 4 with n >= 1, got {self.depth}")
        n = (self.depth - 4) // 6
        h = normalize(x, self.mean, self.std)
        h = _conv3x3(16, 1, "conv1")(h)
        for s, (mult, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
            for b in range(n):
                h = WideBlock(
                    mult * self.width,
                    stride if b == 0 else 1,
                    self.dropout,
                    name=f"block{s + 1}_{b}",
                )(h, train)
            self.sow("intermediates", f"stage{s + 1}", h)
        h = nn.relu(_batch_norm(train, "bn")(h))
        h = jnp.mean(h, axis=(1, 2))  # global average pool
        self.sow("intermediates", "features", h)
        return nn.Dense(self.num_classes, name="fc")(h)
