"""The randomized-smoothing part of `certified.py` (not an experiment: the leading `_` keeps
it out of `jaxrobust experiment`'s list).

A base classifier is trained with Gaussian-noise augmentation at σ = SIGMA
(`objective=gaussian_noise`, the library's training loop) and its smoothed classifier is
certified on the test set with `jaxrobust.certify.certify` (n0 selection samples, n
estimation samples, α), timed. Two attack checks follow, both with the library's strongest
ℓ2 attack on the smoothed classifier: APGD-CE and APGD-DLR on its EOT surrogate (log mean
softmax over `eot_samples` fixed noise draws), the smoothed prediction at each attack's
input re-estimated with fresh noise (`predict`, the same n and α):

- the certificates: every image certified correct is attacked at ℓ2 ε = its own certified
  radius; a returned class other than the label is a violated certificate (sound
  certificates are violated only through the failure probabilities of `certify` and
  `predict`, at most 2α per image);
- the empirical robust accuracy at the radii EMPIRICAL_RADII: an image counts as robust at
  r when `predict` returns its label at the clean input and at both attacks' inputs
  (abstaining counts as not robust), on the same images as the certified accuracy; the
  certified accuracy at r should not exceed it, and no image certified at radius ≥ r may
  be moved to another class within r (a flag, reported).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import jax
import numpy as np
from scipy.stats import binom

from jaxrobust.certify import smoothing as sm
from jaxrobust.config import load_config
from jaxrobust.data import load_split
from jaxrobust.train.loop import restore_run, train

RADII = (0.0, 0.25, 0.5, 0.75)
EMPIRICAL_RADII = (0.0, 0.25, 0.5, 0.75)
SIGMA, ALPHA, BATCH = 0.25, 0.001, 32
LOSSES = ("ce", "dlr")

# Per dataset and size: the base classifier (model name and kwargs), its training, the test
# images (0 = the whole split) and the sample sizes. `shapes` uses dataset_kwargs to keep
# its generated splits small enough for this CPU.
SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "digits": {
        "smoke": {
            "model": ("mlp", {"hidden": (32,)}),
            "epochs": 2,
            "test": 16,
            "n0": 10,
            "n": 200,
            "eot_samples": 4,
            "attack_steps": 5,
        },
        "full": {
            "model": ("mlp", {"hidden": (256, 256)}),
            "epochs": 60,
            "test": 0,
            "n0": 100,
            "n": 10_000,
            "eot_samples": 32,
            "attack_steps": 100,
        },
    },
    "shapes": {
        "smoke": {
            "model": ("small_cnn", {"channels": (4, 8), "dense": 16}),
            "dataset_kwargs": {"num_train": 200, "num_test": 100},
            "epochs": 1,
            "test": 8,
            "n0": 10,
            "n": 100,
            "eot_samples": 2,
            "attack_steps": 2,
        },
        # Not run yet: certifying 500 images with n = 10,000 SmallCNN passes each (~6.5M
        # MAC per pass, ~3e13 MAC in all) takes hours on the shared 2-core CPU.
        "full": {
            "model": ("small_cnn", {"channels": (16, 32), "dense": 64}),
            "dataset_kwargs": {"num_train": 5000, "num_test": 500},
            "epochs": 20,
            "test": 0,
            "n0": 100,
            "n": 10_000,
            "eot_samples": 32,
            "attack_steps": 100,
        },
    },
}


def describe_model(cfg: dict) -> str:
    """'mlp(hidden=(256, 256))', 'small_cnn(channels=(16, 32), dense=64)'."""
    name, kwargs = cfg["model"]
    return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"


def train_overrides(dataset: str, cfg: dict, seed: int) -> list[str]:
    """`--set` overrides of the default job: Gaussian-noise training at σ = SIGMA. The
    training job's own final evaluation (PGD on the base classifier) is cut to one step:
    the base classifier's robustness is not what this experiment measures."""
    name, kwargs = cfg["model"]
    data = [f"dataset_kwargs.{k}={v!r}" for k, v in cfg.get("dataset_kwargs", {}).items()]
    return [
        f"dataset={dataset}",
        *data,
        "objective=gaussian_noise",
        f"smoothing.sigma={SIGMA}",
        "threat=l2",
        f"eps={SIGMA}",
        f"seed={seed}",
        f"model.name={name}",
        f"model.kwargs={kwargs!r}",
        f"epochs={cfg['epochs']}",
        "eval.eps_list=(0.0,)",
        "eval.steps=1",
        "eval.restarts=1",
        "eval.every_epochs=1000",
        "checkpoint.keep=1",
    ]


def attack_smoothed(f, x, y, radius, target, key, cfg: dict) -> list:
    """Attack the smoothed classifier at ℓ2 ε = radius (N,) on the images `target` (N,)
    bool: one `attack_certificates` call per loss of LOSSES (APGD on the EOT surrogate, then
    `predict` with fresh noise at the attack's input), each later loss on the images the
    earlier ones did not move to another class. Returns the `AttackCheck` of each loss."""
    checks = []
    target = np.asarray(target, bool).copy()
    n = len(x)
    for j, loss in enumerate(LOSSES):
        # attack_certificates attacks where the "certificate" names the label with a
        # positive radius: here the images `target`, at `radius`.
        cert = sm.Certificate(
            np.where(target, y, sm.ABSTAIN), np.asarray(radius, np.float32),
            np.zeros(n), np.zeros(n, np.int64), SIGMA, 0, cfg["n"], ALPHA,
        )  # fmt: skip
        check = sm.attack_certificates(
            f,
            x,
            y,
            cert,
            jax.random.fold_in(key, j),
            eot_samples=cfg["eot_samples"],
            steps=cfg["attack_steps"],
            losses=(loss,),
            batch_size=BATCH,
        )
        checks.append(check)
        target &= ~check.violated
    return checks


def run(dataset: str, cfg: dict, seed: int, out: Path) -> tuple[dict, dict, list[str]]:
    """Train, certify and attack; returns (the JSON part, the figure's data, summary lines)."""
    t0 = time.perf_counter()
    run_dir = out / "models" / f"{dataset}_gaussian_noise"
    train(
        load_config(None, train_overrides(dataset, cfg, seed)),
        run_dir,
        progress=False,
        log=lambda s: None,
    )
    train_seconds = time.perf_counter() - t0
    _, state, _ = restore_run(run_dir)
    f = state.logits_fn()
    x, y = load_split(
        dataset, "test", limit=cfg["test"] or None, dataset_kwargs=cfg.get("dataset_kwargs")
    )
    key = jax.random.key(seed + 1)

    t1 = time.perf_counter()
    cert = sm.certify(
        f, x, key, sigma=SIGMA, n0=cfg["n0"], n=cfg["n"], alpha=ALPHA, batch_size=BATCH
    )
    certify_seconds = time.perf_counter() - t1
    acc = sm.certified_accuracy(cert, y, RADII)
    curve_r, curve_acc = sm.certified_accuracy_curve(cert, y)
    how = (
        "fraction of the test images whose smoothed prediction (CERTIFY, Cohen et al. 2019: "
        f"n0={cfg['n0']}, n={cfg['n']}, alpha={ALPHA}) is the label with certified l2 "
        "radius >= the radius; SE binomial"
    )
    certified = {
        f"{r:g}": C.measured(a, n=len(y), se=float(C.mc_se(a, len(y))), how=how)
        for r, a in zip(RADII, acc, strict=True)
    }

    # Both checks in one pass per loss (one compiled attack each): copy 0 of the test set
    # is attacked at each image's certified radius (the certificates certified correct),
    # copy k at EMPIRICAL_RADII[k] (the images `predict` classifies correctly).
    t2 = time.perf_counter()
    n = len(y)
    pred, rad = np.asarray(cert.prediction), np.asarray(cert.radius, np.float32)
    clean = sm.predict(
        f, x, jax.random.key(seed + 2), sigma=SIGMA, n=cfg["n"], alpha=ALPHA, batch_size=BATCH
    ).prediction
    radii = [r for r in EMPIRICAL_RADII if r > 0]
    copies = 1 + len(radii)
    x_all = np.concatenate([x] * copies)
    radius_all = np.concatenate([rad, *(np.full(n, r, np.float32) for r in radii)])
    target = np.concatenate([(pred == y) & (rad > 0), *([clean == y] * len(radii))])
    checks = attack_smoothed(
        f, x_all, np.tile(y, copies), radius_all, target, jax.random.key(seed + 3), cfg
    )
    attack_seconds = time.perf_counter() - t2
    within = True
    for c in checks:
        dist = np.sqrt(((c.x_adv - x_all) ** 2).reshape(len(x_all), -1).sum(1))
        reach = radius_all * (1 + 1e-5) + 1e-6
        within &= bool(np.all(dist[c.attacked] <= reach[c.attacked]))
    moved = np.any([c.violated for c in checks], axis=0).reshape(-1, n)
    predictions = np.stack([c.prediction for c in checks]).reshape(len(checks), -1, n)
    fooled = np.any([c.surrogate_fooled for c in checks], axis=0).reshape(-1, n)
    eot = _eot_check(
        attacked=checks[0].attacked[:n],
        violated=moved[0],
        abstained=np.any(predictions[:, 0] == sm.ABSTAIN, axis=0) & ~moved[0],
        fooled=fooled[0],
        within=within,
        cfg=cfg,
    )
    robust = {0.0: clean == y}
    moved_at = {0.0: (clean != y) & (clean != sm.ABSTAIN)}
    for k, r in enumerate(radii, start=1):
        robust[r] = (clean == y) & np.all(predictions[:, k] == y, axis=0)
        moved_at[r] = moved_at[0.0] | moved[k]
    attack = f"APGD-CE and APGD-DLR ({cfg['attack_steps']} steps each)"
    how_emp = (
        f"fraction of the test images where predict (fresh noise, n={cfg['n']}, "
        f"alpha={ALPHA}) returns the label at the image and at the inputs of {attack} on "
        f"the EOT surrogate ({cfg['eot_samples']} noise draws) at l2 eps = the radius "
        "(abstaining counts as not robust); SE binomial"
    )
    empirical = {
        f"{r:g}": C.measured(
            float(robust[r].mean()), n=n, se=float(C.mc_se(robust[r].mean(), n)), how=how_emp
        )
        for r in EMPIRICAL_RADII
    }
    certified_and_moved = {
        f"{r:g}": int(np.sum((pred == y) & (rad >= r) & moved_at[r])) for r in EMPIRICAL_RADII
    }
    le = {
        f"{r:g}": bool(certified[f"{r:g}"]["value"] <= empirical[f"{r:g}"]["value"])
        for r in EMPIRICAL_RADII
    }
    part = {
        "settings": {
            "model": describe_model(cfg),
            "objective": "gaussian_noise",
            "epochs": cfg["epochs"],
            "dataset_kwargs": cfg.get("dataset_kwargs", {}),
            "test_size": len(y),
            "batch_size": BATCH,
            "eot_samples": cfg["eot_samples"],
            "attack": f"{attack}, l2, on the EOT surrogate of the smoothed classifier",
        },
        "sigma": SIGMA,
        "n0": cfg["n0"],
        "n": cfg["n"],
        "alpha": ALPHA,
        "certified_accuracy": certified,
        "empirical_accuracy": empirical,
        "abstain_rate": C.measured(
            float(np.mean(pred == sm.ABSTAIN)),
            n=len(y),
            how="fraction of test images where certify abstained",
        ),
        "max_certifiable_radius": C.closed_form(
            sm.max_radius(cfg["n"], ALPHA, SIGMA), how="sigma * Phi^-1(alpha^(1/n))"
        ),
        "curve": {"radius": curve_r.tolist(), "certified_accuracy": curve_acc.tolist()},
        "train_seconds": round(train_seconds, 2),
        "certify_seconds": round(certify_seconds, 2),
        "certify_seconds_means": (
            "wall time of certify() over the whole test set, compilation included, on "
            "this machine (2 CPU cores shared with other jobs)"
        ),
        "devices": jax.device_count(),
        "attack_seconds": round(attack_seconds, 2),
        "attack_seconds_means": (
            "wall time of the EOT check and the empirical robust accuracy together (one "
            "attack pass per loss over the test set at the certified radii and at each radius)"
        ),
        "eot_check": eot,
        "empirical_check": {
            "certified_le_empirical": le,
            "certified_and_moved": certified_and_moved,
            "certified_and_moved_means": (
                "images certified correct at radius >= r that predict assigned another "
                "class at an attack's input within r (a flag: sound certificates allow "
                "this only through the failure probabilities, <= 2 alpha per image)"
            ),
            "inputs_within_radius": within,
        },
        "per_example": {
            "prediction": pred.tolist(),
            "radius": [round(float(r), 5) for r in rad],
            "label": np.asarray(y).tolist(),
        },
    }
    plot = {
        "curve": (curve_r, curve_acc),
        "radii": EMPIRICAL_RADII,
        "certified": [certified[f"{r:g}"] for r in EMPIRICAL_RADII],
        "empirical": [empirical[f"{r:g}"] for r in EMPIRICAL_RADII],
        "attack": attack,
        "n": len(y),
    }
    lines = [
        "smoothing: certified "
        + ", ".join(f"r={r:g}: {a:.3f}" for r, a in zip(RADII, acc, strict=True))
        + "; empirical "
        + ", ".join(f"r={k}: {v['value']:.3f}" for k, v in empirical.items()),
        f"certify: {len(y)} images in {certify_seconds:.1f} s on {jax.device_count()} "
        f"device(s); train {train_seconds:.0f} s, attacks {attack_seconds:.0f} s",
        f"EOT check: {eot['violated']} of {eot['attacked']} certificates violated "
        f"(p = {eot['p_value_vs_bound']['value']:.3g} vs 2 alpha); certified and moved "
        f"{certified_and_moved}",
    ]
    return part, plot, lines


def _eot_check(*, attacked, violated, abstained, fooled, within: bool, cfg: dict) -> dict:
    """The certificates' attack check (see the module docstring): counts over the images
    certified correct, the violation rate and its α-level bound."""
    violated, abstained = violated & attacked, abstained & attacked
    attacked_n, violated_n = int(attacked.sum()), int(violated.sum())
    # The α-level noise: violations of sound certificates are failures of certify or of
    # predict, each at most α per example: at most Bin(attacked, 2α) in distribution.
    bound = 2 * ALPHA
    p_value = float(binom.sf(violated_n - 1, attacked_n, bound)) if attacked_n else 1.0
    rate = violated_n / attacked_n if attacked_n else 0.0
    return {
        "attacked": attacked_n,
        "attacked_means": "test images certified correct (prediction = label, radius > 0)",
        "surrogate_fooled": int(np.sum(fooled & attacked)),
        "abstained_after_attack": int(abstained.sum()),
        "abstained_after_attack_means": (
            "attacked images where predict abstained at some attack's input (no violation)"
        ),
        "violated": violated_n,
        "violation_rate": C.measured(
            rate,
            n=max(attacked_n, 1),
            se=float(C.mc_se(rate, max(attacked_n, 1))),
            how=(
                "fraction of the attacked images where predict (fresh noise, n = "
                f"{cfg['n']}, alpha = {ALPHA}) returned a class other than the label at "
                "an attack's input"
            ),
        ),
        "alpha_level_bound": C.by_argument(
            bound,
            why="a violation of a sound certificate needs certify or predict to fail, "
            "each with probability <= alpha per example",
        ),
        "p_value_vs_bound": C.closed_form(p_value, how="P(Bin(attacked, 2 alpha) >= violated)"),
        "inputs_within_radius": within,
    }
