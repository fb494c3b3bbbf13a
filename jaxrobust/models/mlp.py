"""Multi-layer perceptron on flattened inputs."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
from jax import Array

from jaxrobust.models.layers import Stat, normalize


class MLP(nn.Module):
    """Flatten -> [Dense(h) -> ReLU]* -> Dense(num_classes).

    Input (B, H, W, C) (or any (B, ...)) in [0, 1]; output logits (B, num_classes).
    Sows the last hidden activation as `intermediates/features` (B, hidden[-1]).
    """

    hidden: Sequence[int] = (256, 256)
    num_classes: int = 10
    mean: Stat = 0.0
    std: Stat = 1.0

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        del train  # no train-dependent layers
        h = normalize(x, self.mean, self.std)
        h = h.reshape((h.shape[0], -1))
        for i, width in enumerate(self.hidden):
            h = nn.relu(nn.Dense(width, name=f"dense{i}")(h))
            self.sow("intermediates", f"hidden{i}", h)
        # With no hidden layer the "penultimate" representation is the flattened input.
        self.sow("intermediates", "features", h)
        return nn.Dense(self.num_classes, name="head")(h)
