"""Shared pieces of experiments/representations.py and experiments/synthesis.py (not an
experiment: the leading `_` keeps it out of `jaxrobust experiment`'s list): the data, a
standard and a robust (ℓ2 PGD-trained) MLP trained with the library's objectives, the
pixel-space 5-nearest-neighbour judge, and image grids.

Both models have the same architecture, optimiser, steps and seed; they differ only in the
objective: `standard()` vs `pgd_at(l2(eps_train))` (PGD with `pgd_steps` steps of
2.5·ε/steps from a random start). Every task of both experiments then runs with the same
budget (steps, step size, ball) on both models.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import _digits as D
import jax
import jax.numpy as jnp
import numpy as np

import jaxrobust as jr
from jaxrobust.data import get_info, load_split
from jaxrobust.models import as_features_fn, as_logits_fn, create_model
from jaxrobust.train import pgd_at, standard

Array = jax.Array
DATASETS = ("digits", "shapes")
MODELS = ("standard", "robust")
ARCHITECTURES = ("mlp", "bn_cnn")
# Training of both models, shared by representations.py and synthesis.py (full and smoke).
TRAIN_FULL = {"steps": 2000, "batch": 64, "lr": 2e-3, "pgd_steps": 7, "eval_steps": 20,
              "eval_restarts": 5}  # fmt: skip
TRAIN_SMOKE = {"steps": 60, "batch": 32, "lr": 3e-3, "pgd_steps": 2, "eval_steps": 3,
               "eval_restarts": 1}  # fmt: skip
# On shapes: 1000 training steps on 5000 generated images keep a full run near 10 minutes
# on the shared 2-core CPU; the smoke size reads 256 / 64 records.
TRAIN_SHAPES_FULL = {
    **TRAIN_FULL,
    "steps": 1000,
    "lr": 1e-3,
    "eval_restarts": 1,
    "shapes_kwargs": {"num_train": 5000, "num_test": 1000},
    "hidden": [256, 32],
    "eps_train": 1.0,
}
TRAIN_SHAPES_SMOKE = {
    **TRAIN_SMOKE,
    "shapes_kwargs": {"num_train": 256, "num_test": 64},
    "hidden": [64, 16],
    "eps_train": 0.5,
}


# `--model bn_cnn` (shapes): the conv-BN CNN with the shapes trade-off's recipe, the model
# that learns shapes on this CPU (the MLPs above stay near chance there): batch 32, Adam 2e-3
# with the cosine schedule, 7 epochs over the 5000 images; the robust model PGD-AT with one
# l2 step of size eps from a random start, eps ramped up over the first 4 epochs (without
# the ramp, PGD-AT on shapes collapsed to a constant prediction in the runs behind
# experiments/results/shapes_reliance.json). eps_train 1.0, the MLP runs' value. Trained
# with the library's training loop into OUT/work/ (a finished run there is reused).
CNN_SHAPES = {
    "full": {
        "architecture": "bn_cnn",
        "model": {"name": "bn_cnn", "kwargs": {"channels": (8, 16, 32)}, "batch_size": 32,
                  "learning_rate": 2e-3},
        "epochs": 7,
        "eps_train": 1.0,
        "adversary": {"steps": 1, "step_size": 1.0, "eps_warmup_epochs": 4.0},
    },
    "smoke": {
        "architecture": "bn_cnn",
        "model": {"name": "bn_cnn", "kwargs": {"channels": (4, 8)}, "batch_size": 32,
                  "learning_rate": 2e-3},
        "epochs": 1,
        "eps_train": 0.5,
        "adversary": {"steps": 1, "step_size": 0.5, "eps_warmup_epochs": 0.0},
    },
}  # fmt: skip


def settings_for(table: dict, dataset: str, size: str, architecture: str) -> dict:
    """An experiment's settings for the dataset and size, with the CNN's training recipe
    over the MLP's when `architecture` is "bn_cnn" (shapes only: SystemExit otherwise)."""
    if size not in table[dataset]:
        raise SystemExit(f"--dataset {dataset} runs at smoke size only (--smoke)")
    s = dict(table[dataset][size])
    if architecture == "bn_cnn":
        if dataset != "shapes":
            raise SystemExit("--model bn_cnn is a shapes option")
        s.update(CNN_SHAPES[size])
        s.pop("hidden", None)
        s.pop("steps", None)
    return s


def describe_models(s: dict) -> str:
    """The JSON's description of the two models."""
    if s.get("architecture") == "bn_cnn":
        m = s["model"]
        return (
            f"{m['name']} {m['kwargs']}, the same recipe and seed (Adam {m['learning_rate']} "
            f"cosine, batch {m['batch_size']}, {s['epochs']} epochs, the library's training "
            f"loop); standard vs pgd_at l2 eps {s['eps_train']} with adversary {s['adversary']}"
        )
    return (
        "MLP, same architecture/optimiser/steps/seed; standard() vs "
        f"pgd_at(l2({s['eps_train']})) with {s['pgd_steps']} PGD steps of 2.5eps/steps"
    )


def load_data(dataset: str, smoke: bool, sizes: dict) -> dict[str, Any]:
    """Train and test images (N, H, W, K) float32 in [0, 1] and labels; shapes at the sizes
    of `sizes["shapes_kwargs"]` (its generator's own split sizes)."""
    kw = dict(sizes.get("shapes_kwargs", {})) if dataset == "shapes" else {}
    x, y = load_split(dataset, "train", dataset_kwargs=kw or None)
    xt, yt = load_split(dataset, "test", dataset_kwargs=kw or None)
    info = get_info(dataset)
    return {
        "x": jnp.asarray(x, jnp.float32),
        "y": jnp.asarray(y, jnp.int32),
        "x_test": jnp.asarray(xt, jnp.float32),
        "y_test": jnp.asarray(yt, jnp.int32),
        "num_classes": int(info.num_classes),
        "info": info,
        "dataset_kwargs": kw,
    }


def train_models(data: dict, cfg: dict, seed: int, work: Path | None = None) -> dict[str, Any]:
    """Train the standard and the robust MLP (`cfg`: hidden, steps, batch, lr, eps_train,
    pgd_steps) on the whole training split, or the CNNs (`cfg["architecture"] == "bn_cnn"`,
    into run folders under `work`); returns, per model, its logits_fn, features_fn,
    clean test accuracy and ℓ2 PGD robust accuracy at eps_train (measured, with n and SE),
    plus the training wall time."""
    if cfg.get("architecture") == "bn_cnn":
        if work is None:
            raise ValueError("the CNNs train into run folders: give work")
        return _train_cnn_models(data, cfg, seed, work)
    info = data["info"]
    model = create_model(
        "mlp", data["num_classes"], mean=info.mean, std=info.std, hidden=tuple(cfg["hidden"])
    )
    x, y = data["x"], data["y"]
    n = int(x.shape[0])
    tx = D.make_optimizer(cfg["lr"], cfg["steps"])
    eps, ps = float(cfg["eps_train"]), int(cfg["pgd_steps"])
    objectives = {
        "standard": lambda _e: standard(),
        "robust": lambda _e: pgd_at(jr.l2(eps), steps=ps, step_size=2.5 * eps / ps),
    }
    key = jax.random.key(seed)
    order = jnp.arange(n, dtype=jnp.int32)
    out: dict[str, Any] = {}
    for name in MODELS:
        t = time.perf_counter()
        train = D.make_trainer(
            objectives[name], model, tx, x, y, steps=cfg["steps"], batch=cfg["batch"]
        )
        params, losses = jax.jit(train)(jnp.float32(eps), order, jnp.int32(n), key)
        jax.block_until_ready(losses)
        variables = {"params": params}
        f = as_logits_fn(model, variables)
        out[name] = {
            "params": params,
            "logits_fn": f,
            "features_fn": as_features_fn(model, variables),
            "train_seconds": round(time.perf_counter() - t, 2),
            **_test_accuracy(f, data, cfg, seed),
        }
    return out


def _test_accuracy(f, data: dict, cfg: dict, seed: int) -> dict:
    """Both models' evaluation: clean and l2 PGD at eps_train on the test split."""
    return accuracy(f, data["x_test"], data["y_test"], jax.random.key(seed + 1),
                    float(cfg["eps_train"]), steps=cfg["eval_steps"],
                    restarts=cfg["eval_restarts"])  # fmt: skip


def _train_cnn_models(data: dict, cfg: dict, seed: int, work: Path) -> dict[str, Any]:
    import _nonrobust_features_parts as P  # the library's training loop into a run folder

    from jaxrobust.runs import load_run

    eps = float(cfg["eps_train"])
    out: dict[str, Any] = {}
    for name in MODELS:
        t = time.perf_counter()
        run_dir = work / name
        reused = (run_dir / "metrics.json").is_file()
        robust = name == "robust"
        P.train_model(
            run_dir,
            dataset=data["info"].name,
            dataset_kwargs=data["dataset_kwargs"],
            hidden=(),
            objective="pgd_at" if robust else "standard",
            epochs=cfg["epochs"],
            eps=eps,
            seed=seed,
            threat="l2",
            model=cfg["model"],
            adversary=cfg["adversary"] if robust else None,
        )
        run = load_run(run_dir)
        f = run.logits_fn()
        out[name] = {
            "logits_fn": f,
            "features_fn": run.features_fn(),
            "run": str(run_dir),
            "train_seconds": round(time.perf_counter() - t, 2),
            "reused_finished_run": reused,
            **_test_accuracy(f, data, cfg, seed),
        }
    return out


def accuracy(f, x: Array, y: Array, key: Array, eps: float, *, steps: int, restarts: int) -> dict:
    """Clean and ℓ2 PGD robust test accuracy at eps (CE, `steps` steps of 2.5ε/steps,
    `restarts` random restarts, per-example worst case), as measured entries."""
    ok = np.asarray(jnp.argmax(f(x), -1) == y)
    r = jr.pgd(f, x, y, key, threat=jr.l2(eps), steps=steps, restarts=restarts)
    rob = ok & ~np.asarray(r.success)
    how = f"l2 PGD eps {eps}, {steps} steps of 2.5eps/steps, {restarts} restarts, CE, test split"
    return {
        "clean_accuracy": proportion(ok, "clean accuracy on the test split"),
        "robust_accuracy": proportion(rob, how),
    }


def proportion(flags: Any, how: str) -> dict:
    """A measured proportion with its binomial SE."""
    flags = np.asarray(flags, bool).ravel()
    p = float(flags.mean())
    return C.measured(p, n=flags.size, se=float(C.mc_se(p, flags.size)), how=how)


def mean_of(values: Any, how: str) -> dict:
    """A measured mean with its standard error (sample SD / √n)."""
    v = np.asarray(values, float).ravel()
    se = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else None
    return C.measured(float(v.mean()), n=v.size, se=se, how=how)


class Judge:
    """The perceptual proxy: a pixel-space k-nearest-neighbour classifier (Euclidean) fitted
    on the training images; it shares no features with the networks."""

    def __init__(self, x: Array, y: Array, k: int = 5) -> None:
        from sklearn.neighbors import KNeighborsClassifier

        self.k = k
        self.knn = KNeighborsClassifier(n_neighbors=k).fit(
            np.asarray(x).reshape(len(x), -1), np.asarray(y)
        )

    def __call__(self, images: Any) -> np.ndarray:
        images = np.asarray(images)
        return self.knn.predict(images.reshape(len(images), -1))

    def describe(self, n_train: int) -> str:
        return f"pixel-space {self.k}-NN (Euclidean) fitted on the {n_train} training images"


def l2_dist(a: Any, b: Any) -> np.ndarray:
    """Per-example ℓ2 distance in pixel units, (B,)."""
    d = np.asarray(a, np.float32) - np.asarray(b, np.float32)
    return np.linalg.norm(d.reshape(len(d), -1), axis=1)


def grid(
    rows: Sequence[tuple[str, Any]],
    path: Path,
    title: str,
    col_titles: Sequence[str] | None = None,
    signed: Sequence[bool] | None = None,
) -> Path:
    """An image grid: one row per (name, images (N, H, W, K)); images in [0, 1] (a row
    marked `signed` is in [−1, 1] and shown with a diverging colour map)."""
    n = max(len(r[1]) for r in rows)
    fig, axes = C.figure(len(rows), n, size=(1.0, 1.05))
    for r, (name, images) in enumerate(rows):
        images = np.asarray(images, np.float32)
        s = signed is not None and signed[r]
        for i in range(n):
            ax = axes[r, i]
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= len(images):
                ax.axis("off")
                continue
            img = images[i]
            if s:
                ax.imshow(img.mean(-1), cmap="seismic", vmin=-1.0, vmax=1.0)
            elif img.shape[-1] == 1:
                ax.imshow(np.clip(img[..., 0], 0, 1), cmap="gray", vmin=0.0, vmax=1.0)
            else:
                ax.imshow(np.clip(img, 0, 1))
            if i == 0:
                ax.set_ylabel(name, fontsize=6)
            if r == 0 and col_titles is not None and i < len(col_titles):
                ax.set_title(col_titles[i], fontsize=6)
    fig.suptitle(title, fontsize=8)
    return C.save(fig, path)


def pick_per_class(y: Any, per_class: int, num_classes: int) -> np.ndarray:
    """Indices of the first `per_class` examples of each class (class-major order)."""
    y = np.asarray(y)
    return np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(num_classes)])


def model_summary(models: dict) -> dict:
    """The JSON entry of the two models (accuracies and training time)."""
    return {
        name: {k: v for k, v in m.items() if k not in ("params", "logits_fn", "features_fn")}
        for name, m in models.items()
    }
