"""Import PyTorch checkpoints of the common robust architectures into the project's Flax models.

    sd = load_torch_state_dict("cifar_linf_8.pt")          # tensors only, never runs code
    model, variables = convert(sd, "resnet50")              # linen module + its variables
    logits_fn = jr.as_logits_fn(model, variables)           # inputs NHWC in [0, 1]

Architectures (`ARCHS`), each layer for layer as its PyTorch reference defines it:

- `preact_resnet18`: PreActResNet-18 of Wong et al. / Rice et al. and RobustBench
  (`PreActResNet18`); a checkpoint without the final `bn` (RobustBench `bn_before_fc=False`)
  converts to `final_bn=False`; `activated_shortcut=False` selects RobustBench's
  `PreActBlock` (projection of the raw block input) instead of `PreActBlockV2` / Rice et al.
- `resnet18`, `resnet50`: the CIFAR ResNets of MadryLab's `robustness` (`cifar_models`) and
  RobustBench (3x3 stem, no max-pool, post-activation blocks).
- `wrn-28-10`, `wrn-34-10`, `wrn-70-16` (any `wrn-DEPTH-WIDTH`): the WideResNet of TRADES /
  RobustBench (`model_zoo/architectures/wide_resnet.py`); TRADES' unused `sub_block1` is
  dropped, a head without bias (`bias_last=False`) gets a zero bias. DeepMind's
  `DMWideResNet` (Swish, other layout) is a different network and is not covered.

The mapping: convolution weights OIHW -> HWIO, linear weights transposed, BatchNorm
`weight`/`bias` -> `scale`/`bias` and `running_mean`/`running_var` -> `batch_stats`
(`num_batches_tracked` is dropped), and the input normalisation of a `robustness` checkpoint
(`normalizer.new_mean` / `new_std`) into the model's `mean` / `std` fields, so ε stays in
[0, 1] pixel units. PyTorch is needed only to read `.pt` files (`pip install
'jaxrobust[torch]'`); `convert` takes any mapping of names to arrays.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.errors import CheckpointError, ConfigError
from jaxrobust.models.registry import create_model

# Converter name -> (registry name, fixed model keywords).
ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "preact_resnet18": ("preact_resnet18", {}),
    "resnet18": ("resnet18", {}),
    "resnet50": ("resnet50", {}),
    "wrn-28-10": ("wide_resnet", {"depth": 28, "width": 10}),
    "wrn-34-10": ("wide_resnet", {"depth": 34, "width": 10}),
    "wrn-70-16": ("wide_resnet", {"depth": 70, "width": 16}),
}

_WRN = re.compile(r"wrn-(\d+)-(\d+)")
_INSTALL = "pip install 'jaxrobust[torch]'"
# Wrappers that hold the state dict inside a bigger checkpoint dict, tried in this order.
_CONTAINERS = ("state_dict", "model_state_dict", "model", "net")
# Prefixes of wrapped models: DataParallel, `robustness`' AttackerModel.
_NORMALIZER = ("normalizer.new_mean", "normalizer.new_std")


def resolve_arch(arch: str) -> tuple[str, dict[str, Any]]:
    """(registry name, model keywords) of a converter architecture name.

    Args:
      arch: one of `ARCHS` or `wrn-DEPTH-WIDTH`.
    Returns:
      e.g. `("wide_resnet", {"depth": 34, "width": 10})` for "wrn-34-10".
    Raises:
      ConfigError: an unknown name.
    """
    if arch in ARCHS:
        name, kwargs = ARCHS[arch]
        return name, dict(kwargs)
    m = _WRN.fullmatch(str(arch))
    if m:
        return "wide_resnet", {"depth": int(m.group(1)), "width": int(m.group(2))}
    raise ConfigError(
        f"unknown PyTorch architecture {arch!r}; known: {', '.join(ARCHS)} "
        "(or wrn-DEPTH-WIDTH for another WideResNet)"
    )


def _import_torch(path: str) -> Any:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"reading the PyTorch checkpoint {path} needs PyTorch, which is an optional "
            f"extra: {_INSTALL}"
        ) from None
    return torch


def _unwrap(obj: Any, path: str) -> dict[str, Any]:
    """The state dict inside a checkpoint: the dict itself or under a wrapper key."""
    for _ in range(4):  # {"model": {"state_dict": ...}} at most a few levels deep
        if not isinstance(obj, Mapping):
            break
        inner = next(
            (obj[k] for k in _CONTAINERS if k in obj and isinstance(obj[k], Mapping)), None
        )
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{path} holds no state dict (a mapping of parameter names to tensors, directly "
            f"or under one of {', '.join(map(repr, _CONTAINERS))}): got {type(obj).__name__}"
        )
    return dict(obj)


def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove the wrappers' key prefixes of a state dict.

    `module.` (DataParallel) is removed everywhere; a `robustness` `AttackerModel` state dict
    (`model.*`, `attacker.model.*`, `normalizer.*`, `attacker.normalizer.*`) keeps `model.*`
    without the prefix (the `attacker.*` entries are the same tensors twice) and the
    normalizer's `normalizer.new_mean` / `normalizer.new_std`.

    Args:
      state_dict: parameter name -> tensor or array.
    Returns:
      a new dict with the network's own names (`conv1.weight`, ...) and, if present, the
      two `normalizer.*` entries.
    """
    sd = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    if any(k.startswith("model.") for k in sd):
        prefix = "model."
    elif any(k.startswith("attacker.model.") for k in sd):
        prefix = "attacker.model."
    else:
        return sd
    out = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    for key in _NORMALIZER:
        for src in (key, "attacker." + key):
            if src in sd:
                out[key] = sd[src]
                break
    return out


_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _torch_detail(e: BaseException) -> str:
    """The informative line of a torch.load error (not its advice about weights_only=False)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(_BOILERPLATE)] or lines
    return lines[0][:300] if lines else type(e).__name__


def load_torch_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a PyTorch checkpoint's weights without executing any code from the file.

    The file is read with `torch.load(path, map_location="cpu", weights_only=True)`: only
    tensors, numbers, strings and containers are unpickled, so a file that would build
    other objects (or run code while unpickling) is refused. The state dict is taken from
    the file itself or from its `state_dict` / `model_state_dict` / `model` / `net` entry,
    and the wrappers' prefixes are removed (`strip_prefixes`).

    Args:
      path: a `.pt` / `.pth` file written by `torch.save`.
    Returns:
      parameter name -> numpy array (float32 for floating tensors), e.g. `conv1.weight`
      (64, 3, 3, 3) OIHW, plus `normalizer.new_mean` / `normalizer.new_std` when the
      checkpoint carries `robustness`' input normalisation.
    Raises:
      CheckpointError: no file, PyTorch not installed, a corrupt file, a file that needs
        more than tensors to load (code, other objects), or entries that are not tensors.
    """
    where = os.fspath(path)
    if not os.path.isfile(where):
        raise CheckpointError(f"no PyTorch checkpoint file at {where}")
    torch = _import_torch(where)
    try:
        obj = torch.load(where, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # The restricted unpickler refused an instruction: a global (object or code) it will
        # not build, or bytes that are no pickle at all. Both read the same to it.
        raise CheckpointError(
            f"{where} was refused: it is not a tensors-only PyTorch checkpoint (it is damaged, "
            "or it holds objects or code that only a full unpickling would build; jaxrobust "
            f"never runs code from a checkpoint): {_torch_detail(e)}"
        ) from None
    except Exception as e:  # torch raises RuntimeError, EOFError, ... for damaged files
        raise CheckpointError(
            f"{where} is not a readable PyTorch checkpoint ({type(e).__name__}: {_torch_detail(e)})"
        ) from None
    sd = strip_prefixes(_unwrap(obj, where))
    out: dict[str, np.ndarray] = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(
                f"{where}: state dict entry {k!r} is a {type(v).__name__}, not a tensor"
            )
        a = v.detach().cpu()
        out[k] = a.float().numpy() if a.is_floating_point() else a.numpy()
    return out


def _torch_key(arch_family: str, path: tuple[str, ...]) -> str:
    """The PyTorch module path of a Flax module path (without the leaf name)."""
    parts: list[str] = []
    top = len(path) == 1
    for p in path:
        m = re.fullmatch(r"(layer|block)(\d+)_(\d+)", p)
        if m and arch_family == "wide_resnet":
            parts.append(f"block{m.group(2)}.layer.{m.group(3)}")
        elif m:
            parts.append(f"layer{m.group(2)}.{m.group(3)}")
        elif p == "shortcut":
            parts.append("convShortcut" if arch_family == "wide_resnet" else "shortcut.0")
        elif p == "shortcut_bn":
            parts.append("shortcut.1")
        elif p == "bn" and top and arch_family == "wide_resnet":
            parts.append("bn1")
        else:
            parts.append(p)
    return ".".join(parts)


_LEAF = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}


def _to_torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4:  # HWIO -> OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:  # (in, out) -> (out, in)
        return (shape[1], shape[0])
    return shape


def _from_torch(a: np.ndarray) -> np.ndarray:
    if a.ndim == 4:  # OIHW -> HWIO
        return np.transpose(a, (2, 3, 1, 0))
    if a.ndim == 2:
        return np.transpose(a)
    return a


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def _stat(v: Any, name: str) -> tuple[float, ...] | float:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise CheckpointError(f"the checkpoint's {name} is empty")
    return float(a[0]) if a.size == 1 else tuple(float(x) for x in a)


def convert(
    state_dict: Mapping[str, Any],
    arch: str,
    *,
    num_classes: int | None = None,
    mean: float | tuple[float, ...] | None = None,
    std: float | tuple[float, ...] | None = None,
    **model_kwargs: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the Flax model of `arch` and its variables from a PyTorch state dict.

    Args:
      state_dict: parameter name -> array or CPU tensor, e.g. from `load_torch_state_dict`
        (prefixes are stripped here too).
      arch: one of `ARCHS` ("preact_resnet18", "resnet18", "resnet50", "wrn-28-10",
        "wrn-34-10", "wrn-70-16") or "wrn-DEPTH-WIDTH".
      num_classes: default: the rows of the head's weight.
      mean: the model's input normalisation mean, a number or one value per channel, in
        [0, 1] pixel units; default: the checkpoint's `normalizer.new_mean`, else 0.
      std: likewise the std; default: `normalizer.new_std`, else 1.
      **model_kwargs: further model fields, e.g. `activated_shortcut=False` for RobustBench's
        `PreActBlock` variant of `preact_resnet18`.
    Returns:
      `(module, variables)`: an unbound linen module (inputs (B, H, W, C) in [0, 1], NHWC)
      and `{"params": ..., "batch_stats": ...}` as float32 jax arrays, for
      `jr.as_logits_fn(module, variables)`.
    Raises:
      ConfigError: an unknown architecture or model keyword.
      CheckpointError: keys the architecture needs but the state dict lacks, keys it does
        not use, or a tensor whose shape differs from the architecture's (each named with
        both shapes, in PyTorch's layout).
    """
    name, kwargs = resolve_arch(arch)
    sd = strip_prefixes(state_dict)
    arrays = {k: np.asarray(v.detach().cpu() if hasattr(v, "detach") else v) for k, v in sd.items()}
    head = "fc.weight" if name == "wide_resnet" else "linear.weight"
    if num_classes is None:
        if head not in arrays or arrays[head].ndim != 2:
            raise CheckpointError(
                f"the state dict has no 2-D {head!r} for arch {arch!r}, so the number of "
                f"classes is unknown (keys start: {_listing(sorted(arrays), 5)})"
            )
        num_classes = int(arrays[head].shape[0])
    if mean is None:
        mean = _stat(arrays[_NORMALIZER[0]], _NORMALIZER[0]) if _NORMALIZER[0] in arrays else 0.0
    if std is None:
        std = _stat(arrays[_NORMALIZER[1]], _NORMALIZER[1]) if _NORMALIZER[1] in arrays else 1.0
    for key in _NORMALIZER:
        arrays.pop(key, None)
    if name == "preact_resnet18" and "final_bn" not in model_kwargs:
        kwargs["final_bn"] = "bn.weight" in arrays
    kwargs.update(model_kwargs)
    module = create_model(name, num_classes, mean=mean, std=std, **kwargs)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)

    variables: dict[str, Any] = {}
    used: set[str] = set()
    missing: list[str] = []
    optional_zero = {"fc.bias"} if name == "wide_resnet" else set()
    for collection in ("params", "batch_stats"):
        flat = jax.tree_util.tree_flatten_with_path(shapes.get(collection, {}))[0]
        out: dict[str, Any] = {}
        for keypath, leaf in flat:
            path = tuple(str(k.key) for k in keypath)
            tkey = f"{_torch_key(name, path[:-1])}.{_LEAF[(collection, path[-1])]}"
            want = tuple(leaf.shape)
            if tkey not in arrays:
                if tkey in optional_zero:
                    value = np.zeros(want, np.float32)
                else:
                    missing.append(tkey)
                    continue
            else:
                used.add(tkey)
                got = arrays[tkey]
                if tuple(got.shape) != _to_torch_shape(want):
                    raise CheckpointError(
                        f"shape mismatch for {tkey!r}: the checkpoint has {tuple(got.shape)}, "
                        f"{arch} expects {_to_torch_shape(want)} (PyTorch layout)"
                    )
                value = _from_torch(np.asarray(got, dtype=np.float32))  # no copy if float32
            node = out
            for p in path[:-1]:
                node = node.setdefault(p, {})
            node[path[-1]] = jnp.asarray(value)
        if out:
            variables[collection] = out
    if missing:
        raise CheckpointError(
            f"the state dict lacks {len(missing)} key(s) that {arch} needs: {_listing(missing)}"
        )
    bn_modules = {k.rsplit(".", 1)[0] for k in used if k.endswith(".running_mean")}
    ignorable = {f"{m}.num_batches_tracked" for m in bn_modules}
    unexpected = sorted(
        k
        for k in arrays
        if k not in used
        and k not in ignorable
        and not (name == "wide_resnet" and k.startswith("sub_block1."))
    )
    if unexpected:
        raise CheckpointError(
            f"the state dict has {len(unexpected)} key(s) that {arch} does not use: "
            f"{_listing(unexpected)} (another architecture?)"
        )
    return module, variables
