"""PyTorch peers of the project's models, built from the *same* weights (benchmark-only).

PyTorch is never a dependency of the library: only the benchmarks import this module, after
`bash benchmarks/install_peers.sh` (CPU torch, torchattacks, the reference AutoAttack).

Flax stores Dense kernels as (in, out) and convolutions as (kh, kw, in, out) on NHWC
inputs; PyTorch wants (out, in) and (out, in, kh, kw) on NCHW. The peers take NHWC inputs
(what the project feeds) and permute once at the start, so a Flatten sees the same order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


def _t(a: Any) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))


def dense(p: dict) -> nn.Linear:
    """A Flax Dense's params {kernel (in, out), bias (out,)} as an nn.Linear."""
    kernel = np.asarray(p["kernel"])
    layer = nn.Linear(kernel.shape[0], kernel.shape[1])
    with torch.no_grad():
        layer.weight.copy_(_t(kernel.T))
        layer.bias.copy_(_t(p["bias"]))
    return layer


def conv(p: dict, *, padding: str | int, stride: int = 1) -> nn.Conv2d:
    """A Flax Conv's params {kernel (kh, kw, in, out), bias?} as an nn.Conv2d."""
    kernel = np.asarray(p["kernel"])
    kh, kw, cin, cout = kernel.shape
    layer = nn.Conv2d(cin, cout, (kh, kw), stride=stride, padding=padding, bias="bias" in p)
    with torch.no_grad():
        layer.weight.copy_(_t(kernel.transpose(3, 2, 0, 1)))
        if "bias" in p:
            layer.bias.copy_(_t(p["bias"]))
    return layer


class Normalize(nn.Module):
    """(x - mean) / std with a scalar or per-channel (last, NHWC axis) mean and std."""

    def __init__(self, mean: Any = 0.0, std: Any = 1.0):
        super().__init__()
        self.register_buffer("mean", _t(mean))
        self.register_buffer("std", _t(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class NHWCFlatten(nn.Module):
    """NCHW activations -> flattened in NHWC order (Flax's reshape order)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)


class FromNHWC(nn.Module):
    """Wrap an NCHW network so it takes the project's NHWC images."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2))


def mlp(params: dict, mean: Any = 0.0, std: Any = 1.0) -> nn.Module:
    """`jaxrobust.models.MLP` with the same weights: (B, H, W, C) in [0, 1] -> logits."""
    hidden = sorted((k for k in params if k.startswith("dense")), key=lambda k: int(k[5:]))
    layers: list[nn.Module] = [Normalize(mean, std), nn.Flatten()]
    for k in hidden:
        layers += [dense(params[k]), nn.ReLU()]
    layers.append(dense(params["head"]))
    return nn.Sequential(*layers).eval()


def madry_cnn(params: dict, mean: Any = 0.0, std: Any = 1.0) -> nn.Module:
    """`jaxrobust.models.MadryCNN` (Madry et al. MNIST: conv5-32, pool, conv5-64, pool, fc1024)."""
    net = nn.Sequential(
        conv(params["conv1"], padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        conv(params["conv2"], padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        NHWCFlatten(),
        dense(params["fc1"]),
        nn.ReLU(),
        dense(params["head"]),
    )
    return nn.Sequential(Normalize(mean, std), FromNHWC(net)).eval()


def batch_norm(params: dict, stats: dict) -> nn.BatchNorm2d:
    """A Flax BatchNorm (scale, bias; running mean, var; eps 1e-5, decay 0.9) as BatchNorm2d."""
    layer = nn.BatchNorm2d(len(np.asarray(params["scale"])), eps=1e-5, momentum=0.1)
    with torch.no_grad():
        layer.weight.copy_(_t(params["scale"]))
        layer.bias.copy_(_t(params["bias"]))
        layer.running_mean.copy_(_t(stats["mean"]))
        layer.running_var.copy_(_t(stats["var"]))
    return layer


class PreActBlock(nn.Module):
    """`jaxrobust.models.preact_resnet.PreActBlock` in PyTorch (NCHW)."""

    def __init__(self, params: dict, stats: dict, stride: int):
        super().__init__()
        self.bn1 = batch_norm(params["bn1"], stats["bn1"])
        self.conv1 = conv(params["conv1"], padding=1, stride=stride)
        self.bn2 = batch_norm(params["bn2"], stats["bn2"])
        self.conv2 = conv(params["conv2"], padding=1)
        self.shortcut = (
            conv(params["shortcut"], padding=0, stride=stride) if "shortcut" in params else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """`jaxrobust.models.PreActResNet` (any widths and block counts) in PyTorch (NCHW)."""

    def __init__(self, params: dict, stats: dict):
        super().__init__()
        self.conv1 = conv(params["conv1"], padding=1)
        names = sorted(
            (k for k in params if k.startswith("layer")),
            key=lambda k: tuple(int(v) for v in k[5:].split("_")),
        )
        blocks = []
        for k in names:
            stage, index = (int(v) for v in k[5:].split("_"))
            stride = 2 if stage > 1 and index == 0 else 1
            blocks.append(PreActBlock(params[k], stats[k], stride))
        self.blocks = nn.Sequential(*blocks)
        self.bn = batch_norm(params["bn"], stats["bn"])
        self.linear = dense(params["linear"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.conv1(x))
        h = torch.relu(self.bn(h)).mean(dim=(2, 3))
        return self.linear(h)


def preact_resnet(params: dict, batch_stats: dict, mean: Any = 0.0, std: Any = 1.0) -> nn.Module:
    """`jaxrobust.models.PreActResNet18` with the same weights and BatchNorm statistics."""
    return nn.Sequential(Normalize(mean, std), FromNHWC(PreActResNet(params, batch_stats))).eval()


def pgd_linf(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    delta0: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
) -> torch.Tensor:
    """A plain PyTorch ℓ∞ PGD loop (cross-entropy, sign step, clip to ball and [0, 1]) from
    the given random start `delta0` — the textbook loop the benchmarks compare against."""
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    delta = delta0.clone()
    x_adv = torch.clamp(x + delta, 0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = loss_fn(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = x_adv + step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    return x_adv.detach()
