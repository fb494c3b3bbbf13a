"""PyTorch checkpoint import (`jaxrobust.models.from_torch`): round trips through torch.save.

Every test here needs PyTorch (`pip install 'jaxrobust[torch]'`) and is marked `torch`, which
the default `pytest` run deselects (CI runs `pytest -m torch` after installing the extra). The
missing-PyTorch error and the torch-free import are in tests/test_from_torch_optional.py.

The PyTorch networks below are written here from the architectures' published definitions
(RobustBench `model_zoo/architectures/{resnet,wide_resnet}.py`, MadryLab `robustness`
`cifar_models/resnet.py`, Rice et al.'s `preactresnet.py`): same module names, so their
`state_dict` keys are those of the published checkpoints.
"""

from __future__ import annotations

import json
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrobust as jr
from jaxrobust.errors import CheckpointError, ConfigError
from jaxrobust.models import from_torch
from jaxrobust.models.from_torch import convert, load_torch_state_dict

torch = pytest.importorskip("torch")
import torch.nn as tnn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

pytestmark = pytest.mark.torch

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)


# --- PyTorch reference networks -------------------------------------------------------------


class TPreActBlock(tnn.Module):
    def __init__(self, cin, cout, stride, activated_shortcut=True):
        super().__init__()
        self.bn1 = tnn.BatchNorm2d(cin)
        self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(cout)
        self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.activated_shortcut = activated_shortcut
        if stride != 1 or cin != cout:
            self.shortcut = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        if hasattr(self, "shortcut"):
            sc = self.shortcut(out if self.activated_shortcut else x)
        else:
            sc = x
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + sc


class TPreActResNet18(tnn.Module):
    def __init__(self, num_classes=10, final_bn=True, activated_shortcut=True):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 64, 3, 1, 1, bias=False)
        cin = 64
        for s, planes in enumerate((64, 128, 256, 512)):
            blocks = []
            for b in range(2):
                stride = 2 if s > 0 and b == 0 else 1
                blocks.append(TPreActBlock(cin, planes, stride, activated_shortcut))
                cin = planes
            setattr(self, f"layer{s + 1}", tnn.Sequential(*blocks))
        self.final_bn = final_bn
        if final_bn:
            self.bn = tnn.BatchNorm2d(512)
        self.linear = tnn.Linear(512, num_classes)

    def forward(self, x):
        out = self.conv1(x)
        for s in range(4):
            out = getattr(self, f"layer{s + 1}")(out)
        if self.final_bn:
            out = F.relu(self.bn(out))
        out = F.avg_pool2d(out, 4).flatten(1)
        return self.linear(out)


class TBasic(tnn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.shortcut = tnn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = tnn.Sequential(
                tnn.Conv2d(cin, planes, 1, stride, bias=False), tnn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class TBottleneck(tnn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride):
        super().__init__()
        cout = 4 * planes
        self.conv1 = tnn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(cout)
        self.shortcut = tnn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = tnn.Sequential(
                tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class TResNet(tnn.Module):
    def __init__(self, block, num_blocks, num_classes=10):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        cin = 64
        for s, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks, strict=True)):
            blocks = []
            for b in range(n):
                blocks.append(block(cin, planes, 2 if s > 0 and b == 0 else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{s + 1}", tnn.Sequential(*blocks))
        self.linear = tnn.Linear(512 * block.expansion, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        for s in range(4):
            out = getattr(self, f"layer{s + 1}")(out)
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


class TWideBlock(tnn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = tnn.BatchNorm2d(cin)
        self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(cout)
        self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else tnn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.equal else self.convShortcut(act))


class TNetworkBlock(tnn.Module):
    def __init__(self, n, cin, cout, stride):
        super().__init__()
        self.layer = tnn.Sequential(
            *[TWideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)]
        )

    def forward(self, x):
        return self.layer(x)


class TWideResNet(tnn.Module):
    def __init__(self, depth, widen, num_classes=10, sub_block1=False, bias_last=True):
        super().__init__()
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        n = (depth - 4) // 6
        self.conv1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.block1 = TNetworkBlock(n, ch[0], ch[1], 1)
        if sub_block1:  # TRADES' checkpoints carry this unused stage
            self.sub_block1 = TNetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = TNetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = TNetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = tnn.BatchNorm2d(ch[3])
        self.fc = tnn.Linear(ch[3], num_classes, bias=bias_last)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(F.avg_pool2d(out, 8).flatten(1))


class TNormalizer(tnn.Module):
    """`robustness`' InputNormalize: buffers new_mean / new_std of shape (3, 1, 1)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("new_mean", torch.tensor(mean).view(3, 1, 1))
        self.register_buffer("new_std", torch.tensor(std).view(3, 1, 1))

    def forward(self, x):
        return (torch.clamp(x, 0, 1) - self.new_mean) / self.new_std


class TAttackerModel(tnn.Module):
    """The module layout of `robustness`' AttackerModel (model, normalizer, attacker.*)."""

    def __init__(self, model, mean, std):
        super().__init__()
        self.normalizer = TNormalizer(mean, std)
        self.model = model
        self.attacker = tnn.Module()
        self.attacker.model = model
        self.attacker.normalizer = self.normalizer

    def forward(self, x):
        return self.model(self.normalizer(x))


def _randomise(net, seed):
    """Random weights, and random BatchNorm affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, tnn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, tnn.Linear) and m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return net.eval()


REFS = {
    "preact_resnet18": lambda: TPreActResNet18(),
    "resnet18": lambda: TResNet(TBasic, (2, 2, 2, 2)),
    "resnet50": lambda: TResNet(TBottleneck, (3, 4, 6, 3)),
    "wrn-28-10": lambda: TWideResNet(28, 10),
    "wrn-34-10": lambda: TWideResNet(34, 10, sub_block1=True),
    "wrn-70-16": lambda: TWideResNet(70, 16),
}


def _round_trip(tmp_path, net, arch, batch, seed, save=None, **convert_kwargs):
    """Save `net` (or `save`), load and convert; compare logits and one PGD step."""
    torch.manual_seed(seed)
    path = tmp_path / f"{arch}.pt"
    torch.save(save if save is not None else net.state_dict(), path)
    model, variables = convert(load_torch_state_dict(path), arch, **convert_kwargs)
    logits_fn = jr.as_logits_fn(model, variables)

    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (batch, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        want = net(xt).numpy()
    # The logits_fn (a Partial over the weights) is an argument, so the weights are not
    # compiled into the program as constants (WRN-70-16: 1 GB of them).
    got = np.asarray(jax.jit(lambda f, x: f(x))(logits_fn, jnp.asarray(x)))
    assert want.shape == got.shape == (batch, 10)
    diff = float(np.abs(want - got).max())
    assert diff <= 1e-4, (
        f"{arch}: max |logit diff| {diff:.2e} (logit scale {np.abs(want).max():.2f})"
    )

    # One l-inf PGD step from the clean input, in PyTorch (autograd) and in jaxrobust.
    eps, alpha = 8 / 255, 2 / 255
    for p in net.parameters():  # the input gradient only (WRN-70-16: 1 GB of weight grads)
        p.requires_grad_(False)
    xg = xt.clone().requires_grad_(True)
    F.cross_entropy(net(xg), torch.from_numpy(y)).backward()
    grad = xg.grad.permute(0, 2, 3, 1).numpy()
    adv_t = np.clip(np.clip(x + alpha * np.sign(grad), x - eps, x + eps), 0.0, 1.0)
    r = jr.pgd(
        logits_fn,
        jnp.asarray(x),
        jnp.asarray(y),
        jax.random.key(0),
        threat=jr.linf(eps),
        steps=1,
        step_size=alpha,
        random_start=False,
        keep_best=False,
    )
    adv_j = np.asarray(r.x_adv)
    # Float summation order differs, so a sign may flip only where the gradient is ~0.
    tiny = np.abs(grad) <= 1e-6 * np.abs(grad).max()
    mismatch = np.abs(adv_j - adv_t) > 1e-6
    assert not (mismatch & ~tiny).any(), f"{arch}: {int(mismatch.sum())} pixels differ"
    assert mismatch.sum() <= max(1, x.size // 10_000)
    return model, variables, diff


@pytest.mark.parametrize(
    "arch, batch",
    [("preact_resnet18", 4), ("resnet18", 4), ("resnet50", 2)],
)
def test_round_trip_resnets(tmp_path, arch, batch):
    net = _randomise(REFS[arch](), seed=1)
    _round_trip(tmp_path, net, arch, batch, seed=1)


@pytest.mark.parametrize("arch, batch", [("wrn-28-10", 2), ("wrn-34-10", 2), ("wrn-70-16", 2)])
def test_round_trip_wide_resnets(tmp_path, arch, batch):
    # Full widths (WRN-70-16: 267M parameters); two inputs keep the forward passes cheap.
    net = _randomise(REFS[arch](), seed=2)
    _round_trip(tmp_path, net, arch, batch, seed=2)
    del net


def test_preact_robustbench_variants(tmp_path):
    # RobustBench's PreActBlock (raw-input shortcut) without the final BN (bn_before_fc=False).
    net = _randomise(TPreActResNet18(final_bn=False, activated_shortcut=False), seed=3)
    model, _, _ = _round_trip(tmp_path, net, "preact_resnet18", 2, seed=3, activated_shortcut=False)
    assert model.final_bn is False


def test_robustness_checkpoint_wrapper_and_normaliser(tmp_path):
    # A `robustness` checkpoint: {"model": AttackerModel state dict under DataParallel,
    # "epoch": ...}, the input normalisation in its normalizer buffers.
    inner = _randomise(TResNet(TBasic, (2, 2, 2, 2)), seed=4)
    net = TAttackerModel(inner, CIFAR_MEAN, CIFAR_STD).eval()
    sd = {f"module.{k}": v for k, v in net.state_dict().items()}
    assert "module.attacker.model.conv1.weight" in sd and "module.normalizer.new_mean" in sd
    ckpt = {"model": sd, "epoch": 150, "optimizer": {"state": {}, "param_groups": []}}
    model, _, _ = _round_trip(tmp_path, net, "resnet18", 2, seed=4, save=ckpt)
    np.testing.assert_allclose(model.mean, CIFAR_MEAN, rtol=1e-6)
    np.testing.assert_allclose(model.std, CIFAR_STD, rtol=1e-6)


def test_wrn_without_head_bias_and_state_dict_key(tmp_path):
    net = _randomise(TWideResNet(16, 1, bias_last=False), seed=5)
    _round_trip(tmp_path, net, "wrn-16-1", 2, seed=5, save={"state_dict": net.state_dict()})


# --- loading never executes code ------------------------------------------------------------


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload(marker)}, evil)
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps({"conv1.weight": _Payload(marker)}))
    for path in (evil, raw):
        refused = rf"{path.name} was refused.*runs code.*(GLOBAL \S*mkdir|Unsupported operand)"
        with pytest.raises(CheckpointError, match=refused):
            load_torch_state_dict(path)
    assert not marker.exists()
    # A full (unsafe) unpickle would have run it: the test would see the payload.
    pickle.loads(raw.read_bytes())
    assert marker.exists()


def test_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"no PyTorch checkpoint file at .*nothing\.pt"):
        load_torch_state_dict(tmp_path / "nothing.pt")
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"garbage\.pt was refused: it is not a tensors-only"):
        load_torch_state_dict(bad)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"cut\.pt is not a readable"):
        load_torch_state_dict(cut)
    odd = tmp_path / "odd.pt"
    torch.save({"w": torch.ones(3), "note": "hello"}, odd)
    with pytest.raises(CheckpointError, match="'note' is a str, not a tensor"):
        load_torch_state_dict(odd)
    lst = tmp_path / "list.pt"
    torch.save([torch.ones(3)], lst)
    with pytest.raises(CheckpointError, match=r"list\.pt holds no state dict"):
        load_torch_state_dict(lst)


# --- bad keys and shapes --------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_wrn_sd():
    net = _randomise(TWideResNet(10, 1), seed=6)
    return {k: v.numpy() for k, v in net.state_dict().items()}


def test_bad_keys_and_shapes(small_wrn_sd):
    sd = dict(small_wrn_sd)
    _, variables = convert(sd, "wrn-10-1")
    assert variables["params"]["fc"]["kernel"].shape == (64, 10)
    with pytest.raises(ConfigError, match="unknown PyTorch architecture 'resnet101'"):
        convert(sd, "resnet101")
    no_bn = {k: v for k, v in sd.items() if k != "block2.layer.0.bn1.running_var"}
    with pytest.raises(CheckpointError, match=r"lacks 1 key.*block2\.layer\.0\.bn1\.running_var"):
        convert(no_bn, "wrn-10-1")
    extra = {**sd, "block4.layer.0.conv1.weight": np.zeros((1, 1, 3, 3), np.float32)}
    with pytest.raises(CheckpointError, match=r"does not use: block4\.layer\.0\.conv1\.weight"):
        convert(extra, "wrn-10-1")
    wrong = {**sd, "block1.layer.0.conv1.weight": np.zeros((16, 16, 1, 3), np.float32)}
    with pytest.raises(
        CheckpointError,
        match=r"'block1\.layer\.0\.conv1\.weight'.*\(16, 16, 1, 3\).*expects \(16, 16, 3, 3\)",
    ):
        convert(wrong, "wrn-10-1")
    # A WideResNet state dict is not a ResNet-18 one: both lists name keys.
    with pytest.raises(CheckpointError, match=r"no 2-D 'linear\.weight'"):
        convert(sd, "resnet18")
    with pytest.raises(CheckpointError, match=r"wrn-16-1 needs: block1\.layer\.1"):
        convert(sd, "wrn-16-1")
    assert from_torch.resolve_arch("wrn-70-16") == ("wide_resnet", {"depth": 70, "width": 16})


# --- the command line -------------------------------------------------------------------------


def test_cli_eval_from_torch(tmp_path, monkeypatch, capsys):
    """`jaxrobust eval --from-torch` on the offline 32x32x3 `shapes` (a small variant of it)."""
    import jaxrobust.data as data
    from jaxrobust import cli

    real = data.load_split

    def small_shapes(name, split, **kw):  # the default sizes take minutes to generate
        kw["dataset_kwargs"] = {"num_train": 256, "num_test": 64}
        return real(name, split, **kw)

    monkeypatch.setattr(data, "load_split", small_shapes)
    net = _randomise(TAttackerModel(TWideResNet(10, 1), CIFAR_MEAN, CIFAR_STD), seed=7)
    ckpt = tmp_path / "wrn.pt"
    torch.save({"model": net.state_dict(), "epoch": 3}, ckpt)
    argv = ["eval", "--from-torch", str(ckpt), "--arch", "wrn-10-1", "--dataset", "shapes"]
    argv += ["--eps", "0.01", "--attacks", "pgd-10", "--limit", "8", "--no-checks"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "wrn_eval" / "metrics.json").read_text())
    assert metrics["num_examples"] == 8 and metrics["arch"] == "wrn-10-1"
    assert metrics["dataset"] == "shapes" and metrics["eps"] == [0.01]
    np.testing.assert_allclose(metrics["mean"], CIFAR_MEAN, rtol=1e-6)
    # The clean accuracy is the PyTorch model's on the same 8 examples.
    x, y = small_shapes("shapes", "test", limit=8)
    with torch.no_grad():
        pred = net(torch.from_numpy(x).permute(0, 3, 1, 2)).argmax(1).numpy()
    assert metrics["clean_accuracy"] == pytest.approx(float(np.mean(pred == y)))
    assert metrics["robust_accuracy"][0] <= metrics["clean_accuracy"]
    assert "clean accuracy" in capsys.readouterr().out
