"""The interval-bound-propagation part of `certified.py` (Gowal et al. 2018; not an
experiment: the leading `_` keeps it out of `jaxrobust experiment`'s list).

A model `jaxrobust.certify.from_flax` supports (MLP on digits, SmallCNN on shapes) is
trained with the library's `bound_training` objective (IBP, the `ibp` objective of
`jaxrobust train`): natural training for a warm-up, then ε ramps linearly from 0 to
ε_train and κ from 1 to κ_end, loss κ·CE(clean) + (1 − κ)·CE(−margin lower bounds).
ε_train > ε (Gowal et al. train at a larger ε than they certify). Then, on the test images
at ℓ∞ ε within [0, 1] (and at each ε of `eps_curve`):

- clean accuracy;
- verified accuracy by IBP (`jaxrobust.certify.verified`, method "ibp", last layer merged
  into the margin specification) and by CROWN-IBP (elementwise best of both);
- PGD robust accuracy: PGD-steps × restarts with cross-entropy and again with the margin
  (CW) loss; an image counts as robust when neither attack breaks it.

Cross-checks (a violation is a flag, reported, never hidden): verified ≤ PGD robust ≤ clean
on the aggregate, CROWN-IBP ≥ IBP, and no single image is both verified and broken by PGD
(that would be an unsound bound or an attack leaving the ball).
"""

from __future__ import annotations

import time
from typing import Any

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrobust as jr
from jaxrobust import certify
from jaxrobust.data import get_info, load_split
from jaxrobust.models import create_model
from jaxrobust.train import TrainState, bound_training, make_train_step

_DIGITS_FULL = {
    "model": ("mlp", {"hidden": (512, 512)}),
    "epochs": 150,
    "batch": 64,
    "lr": 1e-3,
    "eps_train": 0.13,
    "warmup_epochs": 2,
    "ramp_epochs": 75,
    "kappa": 0.5,
    "eps": 0.1,
    "pgd_steps": 50,
    "pgd_restarts": 5,
    "eps_curve": [0.0, 0.02, 0.05, 0.08, 0.1, 0.13, 0.15],
    "test": 0,  # 0 = the whole test split
}
# Not run yet (the smoothing part of a full shapes run does not fit the shared 2-core CPU).
_SHAPES_FULL = {
    **_DIGITS_FULL,
    "model": ("small_cnn", {"channels": (16, 32), "dense": 64}),
    "dataset_kwargs": {"num_train": 5000, "num_test": 500},
    "epochs": 40,
    "eps_train": 2.2 / 255,
    "warmup_epochs": 2,
    "ramp_epochs": 20,
    "eps": 2 / 255,
    "eps_curve": [0.0, 1 / 255, 2 / 255, 4 / 255],
}
SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "digits": {
        "full": _DIGITS_FULL,
        "smoke": {
            **_DIGITS_FULL,
            "model": ("mlp", {"hidden": (64,)}),
            "epochs": 4,
            "warmup_epochs": 1,
            "ramp_epochs": 2,
            "pgd_steps": 5,
            "pgd_restarts": 1,
            "eps_curve": [0.0, 0.1],
            "test": 64,
        },
    },
    "shapes": {
        "full": _SHAPES_FULL,
        "smoke": {
            **_SHAPES_FULL,
            "model": ("small_cnn", {"channels": (4, 8), "dense": 16}),
            "dataset_kwargs": {"num_train": 200, "num_test": 100},
            "epochs": 2,
            "warmup_epochs": 1,
            "ramp_epochs": 1,
            "pgd_steps": 3,
            "pgd_restarts": 1,
            "eps_curve": [0.0, 2 / 255],
            "test": 32,
        },
    },
}


def train(dataset: str, cfg: dict, seed: int):
    """The IBP-trained model: (model, params, training seconds)."""
    info = get_info(dataset)
    x, y = load_split(dataset, "train", dataset_kwargs=cfg.get("dataset_kwargs"))
    name, kwargs = cfg["model"]
    model = create_model(name, info.num_classes, mean=info.mean, std=info.std, **kwargs)
    spe = len(x) // cfg["batch"]
    total = cfg["epochs"] * spe
    tx = optax.adam(optax.cosine_decay_schedule(cfg["lr"], total))
    k_init, k_data = jax.random.split(jax.random.key(seed))
    state = TrainState.create(model, tx, k_init, info.image_shape)
    step = make_train_step(
        bound_training(
            cfg["eps_train"],
            warmup_steps=cfg["warmup_epochs"] * spe,
            ramp_steps=cfg["ramp_epochs"] * spe,
            kappa=cfg["kappa"],
            method="ibp",
        )
    )
    rng = np.random.default_rng(np.asarray(jax.random.key_data(k_data))[-1])
    t = time.perf_counter()
    for _ in range(cfg["epochs"]):
        perm = rng.permutation(len(x))
        for i in range(spe):
            idx = perm[i * cfg["batch"] : (i + 1) * cfg["batch"]]
            state, metrics = step(
                state, {"image": jnp.asarray(x[idx]), "label": jnp.asarray(y[idx])}
            )
    jax.block_until_ready(state.params)
    if not np.isfinite(float(metrics["loss"])):
        raise RuntimeError("IBP training diverged (non-finite loss)")
    return model, state.params, time.perf_counter() - t


def pgd_robust(logits_fn, x, y, eps: float, cfg: dict, key) -> np.ndarray:
    """(N,) bool: not broken by PGD-steps × restarts with CE nor with the margin loss."""
    robust = np.array(jnp.argmax(logits_fn(x), -1) == y)
    if eps == 0:
        return robust
    for loss, k in zip((jr.cross_entropy, jr.margin), jax.random.split(key), strict=True):
        res = jr.pgd(
            logits_fn,
            x,
            y,
            k,
            threat=jr.linf(eps),
            steps=cfg["pgd_steps"],
            step_size=eps / 4,
            restarts=cfg["pgd_restarts"],
            loss=loss,
        )
        if float(jnp.max(jnp.abs(res.x_adv - x))) > eps + 1e-6:
            raise RuntimeError("PGD left the ε-ball")
        robust &= ~np.asarray(res.success)
    return robust


def _frac(v: np.ndarray, how: str) -> dict:
    p = float(np.mean(v))
    return C.measured(p, n=len(v), se=float(C.mc_se(p, len(v))), how=how)


def run(dataset: str, cfg: dict, seed: int) -> tuple[dict, list[str]]:
    """Train, verify and attack; returns (the JSON part, summary lines)."""
    model, params, train_s = train(dataset, cfg, seed)
    x, y = load_split(
        dataset, "test", limit=cfg["test"] or None, dataset_kwargs=cfg.get("dataset_kwargs")
    )
    x, y = jnp.asarray(x), jnp.asarray(y)
    net = certify.from_flax(model, {"params": params})
    logits_fn = jr.as_logits_fn(model, {"params": params})
    key = jax.random.key(seed + 1)

    curve = {"eps": [], "clean": [], "pgd": [], "ibp": [], "crown_ibp": []}
    per_eps = {}
    for eps in cfg["eps_curve"]:
        ok = {
            m: np.asarray(certify.verified(net, x, y, eps, method=m)) for m in ("ibp", "crown_ibp")
        }
        clean = np.asarray(jnp.argmax(logits_fn(x), -1) == y)
        rob = pgd_robust(logits_fn, x, y, eps, cfg, jax.random.fold_in(key, int(eps * 1e4)))
        per_eps[eps] = (clean, rob, ok)
        curve["eps"].append(eps)
        for name, v in (("clean", clean), ("pgd", rob), ("ibp", ok["ibp"])):
            curve[name].append(float(np.mean(v)))
        curve["crown_ibp"].append(float(np.mean(ok["crown_ibp"])))

    clean, rob, ok = per_eps[cfg["eps"]]
    n = len(y)
    attack = f"PGD-{cfg['pgd_steps']}×{cfg['pgd_restarts']} (cross-entropy and margin losses)"
    where = (
        f"{n} {dataset} test images, ℓ∞ ε = {cfg['eps']:.4g} ∩ [0, 1], one IBP-trained model "
        f"(seed {seed})"
    )
    both = int(np.sum(ok["ibp"] & ~rob)) + int(np.sum(ok["crown_ibp"] & ~rob))
    part: dict[str, Any] = {
        "verified_accuracy": _frac(ok["ibp"], f"IBP margin bounds (last layer merged), {where}"),
        "crown_ibp_verified_accuracy": _frac(
            ok["crown_ibp"], f"CROWN-IBP ∩ IBP margin bounds, {where}"
        ),
        "clean_accuracy": _frac(clean, f"clean test accuracy, {where}"),
        "pgd_accuracy": _frac(rob, f"robust to {attack}, {where}"),
        "verified_and_broken_examples": C.measured(
            both, n=n, how="examples certified (IBP or CROWN-IBP) that PGD still broke: must be 0"
        ),
    }
    v, p, c = (part[k]["value"] for k in ("verified_accuracy", "pgd_accuracy", "clean_accuracy"))
    checks = {
        "verified_le_pgd_le_clean": bool(v <= p <= c),
        "crown_ibp_ge_ibp": bool(part["crown_ibp_verified_accuracy"]["value"] >= v),
        "no_example_verified_and_broken": both == 0,
    }
    name, kwargs = cfg["model"]
    settings = {
        **{k: v for k, v in cfg.items() if k != "model"},
        "model": name,
        "model_kwargs": kwargs,
        "test_size": n,
        "optimizer": "adam, cosine decay",
    }
    part = {
        "settings": settings,
        "recipe": (
            f"IBP training (Gowal et al. 2018) of {name} {kwargs} on the {dataset} training "
            f"images: {cfg['epochs']} epochs, batch {cfg['batch']}, Adam lr {cfg['lr']} with "
            f"cosine decay; ε_train {cfg['eps_train']:.4g} ramped linearly after "
            f"{cfg['warmup_epochs']} natural epochs over {cfg['ramp_epochs']} epochs, κ 1 → "
            f"{cfg['kappa']}"
        ),
        "train_seconds": round(train_s, 2),
        **part,
        "attack": attack,
        "curve": curve,
        "checks": checks,
    }
    lines = [
        f"ibp: clean {c:.3f}, PGD {p:.3f}, verified IBP {v:.3f}, CROWN-IBP "
        f"{part['crown_ibp_verified_accuracy']['value']:.3f} at ε = {cfg['eps']:.4g} (n = {n}); "
        f"train {train_s:.0f} s",
        f"ibp checks {checks}",
    ]
    return part, lines
