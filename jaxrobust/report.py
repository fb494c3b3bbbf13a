"""Reports: metrics JSON written atomically, and the PNGs a user would rather look at.

Plots render with matplotlib's Agg canvas on `matplotlib.figure.Figure` objects created
directly, without pyplot: nothing is registered in pyplot's global figure list (so nothing to
leak or close), and importing this module does not switch the process's backend with
`matplotlib.use("Agg")`, which would break a notebook's inline plots. No display is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxrobust.errors import InputError

__all__ = [
    "plot_accuracy_vs_eps",
    "plot_training_curves",
    "read_json",
    "save_image_grid",
    "to_builtin",
    "write_json",
]


# ---------------------------------------------------------------------------------- JSON


def to_builtin(obj: Any) -> Any:
    """A copy of `obj` made of Python builtins that `json` can write.

    NumPy/JAX scalars become int/float/bool, arrays become nested lists, tuples and sets become
    lists, mapping keys become strings, paths become strings; anything else is left as is.
    """
    if isinstance(obj, Mapping):
        return {str(k) if not isinstance(k, str) else k: to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_builtin(v) for v in obj]
    if isinstance(obj, set | frozenset):
        return [to_builtin(v) for v in sorted(obj, key=repr)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "__array__") and hasattr(obj, "dtype"):  # np.ndarray, jax.Array
        return np.asarray(obj).tolist()
    return obj


def write_json(path: str | Path, data: dict) -> Path:
    """Write `data` as indented JSON, atomically: readers see the old file or the new one.

    The text goes to a temporary file in the same directory, is flushed to disk, then
    `os.replace`d over `path` (atomic on POSIX and Windows). Parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_builtin(data), indent=2, sort_keys=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; give the result the mode a plain open() would (or the old one's).
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def read_json(path: str | Path) -> Any:
    """Read a JSON file written by `write_json` (or any JSON file)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------- plots


def _figure(**kwargs: Any) -> Figure:
    """A pyplot-free figure on an Agg canvas (garbage-collected like any object)."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_accuracy_vs_eps(
    curves: Mapping[str, tuple[np.ndarray | Sequence[float], np.ndarray | Sequence[float]]],
    path: str | Path,
    *,
    title: str | None = None,
    xlabel: str = "ε",
) -> Path:
    """Accuracy against perturbation size: one line with markers per curve, y in [0, 1].

    Args:
      curves: name -> (eps values, accuracies), e.g. {"PGD-AT": ([0, 2/255, 8/255], [...])}.
      path: the PNG to write.
    """
    fig = _figure(figsize=(5.5, 4))
    ax = fig.subplots()
    markers = "osD^v<>ph*"
    for i, (name, (eps, acc)) in enumerate(curves.items()):
        eps, acc = np.asarray(eps, dtype=float), np.asarray(acc, dtype=float)
        if eps.shape != acc.shape or eps.ndim != 1:
            raise InputError(
                f"curve {name!r} needs two equal-length sequences, got shapes "
                f"{eps.shape} and {acc.shape}"
            )
        # clip_on=False: markers at accuracy 0 or 1 are drawn whole, not cut by the axes.
        ax.plot(eps, acc, marker=markers[i % len(markers)], label=str(name), clip_on=False)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    if curves:
        ax.legend()
    return _save(fig, path)


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def plot_training_curves(
    history: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    x: str = "epoch",
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Learning curves: losses (keys containing "loss") left, accuracies right.

    Args:
      history: one dict per logged point, e.g. {"epoch": 3, "train_loss": ..., "robust_accuracy":
        ...}; a key may be missing from some entries (e.g. evaluated every few epochs).
      path: the PNG to write.
      x: the key for the x axis; entries without it use their index.
      labels: legend text per key (default: the key), e.g. to say what inputs a training
        accuracy was measured on.
    """
    labels = labels or {}
    groups: dict[str, list[str]] = {"loss": [], "accuracy": []}
    for entry in history:
        for key in entry:
            for group, keys in groups.items():
                if group in key and key != x and key not in keys:
                    keys.append(key)
    fig = _figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, (group, keys) in zip(axes, groups.items(), strict=True):
        for key in keys:
            pts = [
                (float(e.get(x, i)), float(e[key]))
                for i, e in enumerate(history)
                if key in e and _is_number(e[key]) and _is_number(e.get(x, i))
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="." if len(pts) < 50 else None, label=labels.get(key, key))
        ax.set_xlabel(x)
        ax.set_ylabel(group)
        ax.set_title("losses" if group == "loss" else "accuracies")
        ax.grid(True, alpha=0.3)
        if group == "accuracy":
            ax.set_ylim(0.0, 1.0)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return _save(fig, path)


def _as_images(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise InputError(
            f"{name} must be images of shape (N, H, W, C) with C in {{1, 3}}, got {arr.shape}"
        )
    return arr


def _title(prefix: str, label: Any, pred: Any) -> str:
    parts = []
    if label is not None:
        parts.append(f"y={label}")
    if pred is not None:
        parts.append(f"{prefix}={pred}")
    return " ".join(parts)


def save_image_grid(
    clean: Any,
    adv: Any,
    path: str | Path,
    *,
    labels: np.ndarray | Sequence[int] | None = None,
    pred_clean: np.ndarray | Sequence[int] | None = None,
    pred_adv: np.ndarray | Sequence[int] | None = None,
    max_images: int = 16,
) -> Path:
    """Clean images, their adversarial versions, and the perturbations, in three rows.

    Args:
      clean, adv: (N, H, W, C) images in [0, 1], C in {1, 3} (grayscale shown in gray).
      path: the PNG to write.
      labels, pred_clean, pred_adv: optional per-image ints, shown as titles (a wrong adversarial
        prediction is titled in red).
      max_images: at most this many columns (the first ones).

    The third row shows adv - clean rescaled to [0, 1] by its largest magnitude over the shown
    images (0.5 is no change), so small ε perturbations are visible.
    """
    clean, adv = _as_images(clean, "clean"), _as_images(adv, "adv")
    if clean.shape != adv.shape:
        raise InputError(f"clean {clean.shape} and adv {adv.shape} must have the same shape")
    n = min(len(clean), int(max_images))
    if n < 1:
        raise InputError("save_image_grid needs at least one image")
    clean, adv = clean[:n], adv[:n]
    delta = adv - clean
    scale = float(np.abs(delta).max())
    amplified = 0.5 + 0.5 * delta / scale if scale > 0 else np.full_like(delta, 0.5)

    def pick(seq: np.ndarray | Sequence[Any] | None, i: int) -> Any:
        return None if seq is None else to_builtin(np.asarray(seq)[i])

    gray = clean.shape[-1] == 1
    fig = _figure(figsize=(1.4 * n + 0.8, 4.6))
    axes = fig.subplots(3, n, squeeze=False)
    rows = [("clean", clean), ("adversarial", adv), ("perturbation", amplified)]
    for r, (name, images) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            img = np.clip(images[i], 0.0, 1.0)
            if gray:
                ax.imshow(img[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
            else:
                ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            label = pick(labels, i)
            if r == 0:
                ax.set_title(_title("pred", label, pick(pred_clean, i)), fontsize=8)
            elif r == 1:
                pred = pick(pred_adv, i)
                wrong = pred is not None and label is not None and pred != label
                ax.set_title(
                    _title("pred", None, pred), fontsize=8, color="red" if wrong else "black"
                )
            if i == 0:
                ax.set_ylabel(name, fontsize=9)
    if scale > 0:
        fig.suptitle(
            f"perturbation scaled by 1/{2 * scale:.3g} (max |δ| = {scale:.3g})", fontsize=8
        )
    return _save(fig, path)
