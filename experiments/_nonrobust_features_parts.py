"""Pieces of `experiments/nonrobust_features.py` (not an experiment: the leading `_` keeps it
out of `jaxrobust experiment`'s list): training a model of the experiment, its clean and
PGD accuracy on the original test set, the label checks and the image grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import jaxrobust as jr
from jaxrobust.config import default_config
from jaxrobust.runs import load_run
from jaxrobust.train.loop import train


def train_model(run_dir: Path, *, dataset: str, dataset_kwargs: dict, hidden, objective: str,
                epochs: int, eps: float, seed: int, threat: str = "linf",
                model: dict | None = None, adversary: dict | None = None) -> Any:  # fmt: skip
    """Train (or reuse, when `run_dir` holds a finished run) a model with the library's
    training loop; returns its logits_fn. The model is an MLP with `hidden` units, or
    `model` when given: {"name", "kwargs", "batch_size", "learning_rate"} (e.g. bn_cnn on
    shapes; `hidden` is then unused). `threat` and `eps` are PGD-AT's ball (unused by
    `objective="standard"`), `adversary` its `cfg.adversary` fields (e.g. {"steps": 1}).
    The loop's own evaluation is switched off: the experiment evaluates every model with
    one attack (`accuracy`)."""
    if not (run_dir / "metrics.json").is_file():
        cfg = default_config()
        cfg.dataset = dataset
        if dataset_kwargs:
            cfg.dataset_kwargs.update(dataset_kwargs)
        if model is None:
            cfg.model.kwargs.hidden = tuple(hidden)
        else:
            cfg.model.name = model["name"]
            cfg.model.kwargs = ml_collections.ConfigDict(dict(model["kwargs"]))
            cfg.batch_size = int(model["batch_size"])
            cfg.optimizer.learning_rate = float(model["learning_rate"])
        cfg.objective = objective
        cfg.threat = threat
        cfg.eps = float(eps)
        for k, v in (adversary or {}).items():
            cfg.adversary[k] = v
        cfg.epochs = int(epochs)
        cfg.seed = int(seed)
        cfg.eval.eps_list = (0.0,)
        cfg.eval.steps = 1
        cfg.eval.restarts = 1
        cfg.eval.every_epochs = 100_000
        train(cfg, run_dir, progress=False, log=lambda s: None)
    return load_run(run_dir).logits_fn()


def _entry(correct: np.ndarray, how: str) -> dict:
    correct = np.asarray(correct, bool)
    p = float(correct.mean())
    return C.measured(p, n=correct.size, se=float(C.mc_se(p, correct.size)), how=how)


def accuracy(f, x, y, key, attack: dict) -> dict:
    """Clean and robust accuracy of `f` on (x, y): ℓ∞ PGD (cross-entropy, random starts,
    per-example worst case over restarts; a clean-misclassified example counts as broken)."""
    threat = jr.linf(attack["eps"]) if attack["threat"] == "linf" else jr.l2(attack["eps"])
    clean = np.zeros(len(y), bool)
    robust = np.zeros(len(y), bool)
    bs = 512
    for i in range(0, len(y), bs):
        xb, yb = jnp.asarray(x[i : i + bs]), jnp.asarray(y[i : i + bs])
        ok = np.asarray(jnp.argmax(f(xb), -1) == yb)
        r = jr.pgd(f, xb, yb, jax.random.fold_in(key, i), threat=threat,
                   steps=attack["steps"], restarts=attack["restarts"])  # fmt: skip
        clean[i : i + bs] = ok
        robust[i : i + bs] = ok & ~np.asarray(r.success)
    desc = (f"{attack['threat']} PGD eps {attack['eps']}, {attack['steps']} steps, "
            f"{attack['restarts']} restarts, on the original test set")  # fmt: skip
    return {
        "clean_accuracy": _entry(clean, "clean accuracy on the original test set"),
        "robust_accuracy": _entry(robust, desc),
    }


def follows_det_rule(f, x, y, num_classes: int) -> dict:
    """The fraction of original test points on which `f` predicts D_det's relabelling
    (y + 1) mod C: a model that learned D_det from the source class's own features (robust
    ones, or a planted pattern the perturbation could not overwrite) predicts the rule."""
    pred = np.concatenate(
        [np.asarray(jnp.argmax(f(jnp.asarray(x[i : i + 512])), -1)) for i in range(0, len(y), 512)]
    )
    return _entry(
        pred == (np.asarray(y) + 1) % num_classes,
        "predictions equal to (y + 1) mod C, D_det's relabelling, on the original test set",
    )


def label_checks(kind: str, labels: np.ndarray, y: np.ndarray, num_classes: int) -> dict:
    """D_det: every label differs from the true class. D_rand: agreement with the true
    class at the chance rate 1/C (within 3 binomial SE at 1/C)."""
    n = len(y)
    agree = int(np.sum(labels == y))
    out = {"n": n, "agreement_count": agree, "agreement_rate": agree / n}
    if kind == "d_det":
        out.update(check="every label differs from the true class", passed=agree == 0)
    else:
        p0 = 1.0 / num_classes
        se = float(np.sqrt(p0 * (1 - p0) / n))
        z = (agree / n - p0) / se
        out.update(
            check="agreement with the true class within 3 binomial SE of chance 1/C",
            chance=p0,
            se_at_chance=se,
            z=float(z),
            passed=bool(abs(z) <= 3.0),
        )
    return out


def feature_match(summary: dict, x_new: np.ndarray, x: np.ndarray) -> dict:
    """The inversion's feature errors against its tolerance, and how far the inversions are
    from the images whose features they match (near 0: the representation determines the
    image; a uniform-noise image is ~4 away on 8×8 digits)."""
    keys = ("tol", "fraction_within_tol", "relative_feature_error_mean",
            "relative_feature_error_median", "relative_feature_error_p95",
            "relative_feature_error_max")  # fmt: skip
    out = {k: summary.get(k) for k in keys}
    d = np.linalg.norm((x_new - x).reshape(len(x), -1), axis=1)
    noise = np.random.default_rng(0).uniform(size=x.shape).astype(np.float32)
    dn = np.linalg.norm((noise - x).reshape(len(x), -1), axis=1)
    out.update(
        mean_l2_to_original=float(d.mean()),
        median_l2_to_original=float(np.median(d)),
        uniform_noise_mean_l2_to_original=float(dn.mean()),
        n=len(x),
    )
    return out


def figure(rows: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> None:
    """A grid: one row per dataset (the originals first), the same training examples in
    every column, each titled with its label."""
    k = min(8, min(len(v[0]) for v in rows.values()))
    fig, axes = C.figure(len(rows), k, (1.1, 1.25))
    for r, (name, (xs, ls)) in enumerate(rows.items()):
        for c in range(k):
            ax = axes[r, c]
            img = np.clip(xs[c], 0, 1)
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(str(int(ls[c])), fontsize=7)
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle(title, fontsize=8)
    C.save(fig, path)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
