"""Certified robustness by interval bound propagation on digits (Gowal et al. 2018).

Trains a 512-512 MLP on the offline UCI digits (1437 training images) with the library's
`bound_training` objective (IBP, the `ibp` objective of `jaxrobust train`): natural
training for a warm-up, then ε ramps linearly from 0 to ε_train and κ from 1 to 0.5, loss
κ·CE(clean) + (1 − κ)·CE(−margin lower bounds). ε_train = 0.13 > ε = 0.1 (Gowal et al.
train at a larger ε than they certify). Then, on the 360 test images at ℓ∞ ε = 0.1 within
[0, 1]:

- clean accuracy;
- verified accuracy by IBP (`jaxrobust.certify.verified_accuracy`, method "ibp", last
  layer merged into the margin specification) and by CROWN-IBP (elementwise best of both);
- PGD robust accuracy: PGD-50 × 5 restarts with cross-entropy and again with the margin
  (CW) loss; an example counts as robust when neither attack breaks it.

Cross-checks (a violation is a flag, reported, never hidden): verified ≤ PGD robust ≤ clean
on the aggregate, and no single example is both verified and broken by PGD (that would be
an unsound bound or an attack leaving the ball).

Writes OUT/digits_ibp.json (keys ibp.verified_accuracy, ibp.clean_accuracy, ibp.pgd_accuracy,
each with n and the binomial SE) and OUT/digits_ibp.png (accuracy vs ε: clean, PGD,
verified by IBP and CROWN-IBP). The committed results are experiments/results/certified/.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

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

NAME = "certified_ibp"
SETTINGS = {
    "full": {
        "hidden": [512, 512],
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
        "test_examples": 0,  # 0 = the whole test split
    },
    "smoke": {
        "hidden": [64],
        "epochs": 4,
        "batch": 64,
        "lr": 1e-3,
        "eps_train": 0.13,
        "warmup_epochs": 1,
        "ramp_epochs": 2,
        "kappa": 0.5,
        "eps": 0.1,
        "pgd_steps": 5,
        "pgd_restarts": 1,
        "eps_curve": [0.0, 0.1],
        "test_examples": 64,
    },
}


def train(cfg: dict, seed: int):
    """The IBP-trained MLP: (model, params, training seconds)."""
    info = get_info("digits")
    x, y = load_split("digits", "train")
    model = create_model(
        "mlp", info.num_classes, mean=info.mean, std=info.std, hidden=tuple(cfg["hidden"])
    )
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
    return C.measured(p, n=len(v), se=float(np.sqrt(p * (1 - p) / len(v))), how=how)


def main(argv: list[str] | None = None) -> int:
    args = C.parse_args(NAME, argv, __doc__)
    cfg = SETTINGS["smoke" if args.smoke else "full"]
    out = Path(args.out)
    t0 = time.perf_counter()
    model, params, train_s = train(cfg, args.seed)
    x, y = load_split("digits", "test")
    if cfg["test_examples"]:
        x, y = x[: cfg["test_examples"]], y[: cfg["test_examples"]]
    x, y = jnp.asarray(x), jnp.asarray(y)
    net = certify.from_flax(model, {"params": params})
    logits_fn = jr.as_logits_fn(model, {"params": params})
    key = jax.random.key(args.seed + 1)

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
        for k, v in (
            ("clean", clean),
            ("pgd", rob),
            ("ibp", ok["ibp"]),
            ("crown_ibp", ok["crown_ibp"]),
        ):
            curve[k].append(float(np.mean(v)))

    clean, rob, ok = per_eps[cfg["eps"]]
    n = len(y)
    attack = f"PGD-{cfg['pgd_steps']}×{cfg['pgd_restarts']} (cross-entropy and margin losses)"
    where = (
        f"{n} digits test images, ℓ∞ ε = {cfg['eps']} ∩ [0, 1], one IBP-trained model "
        f"(seed {args.seed})"
    )
    both = int(np.sum(ok["ibp"] & ~rob)) + int(np.sum(ok["crown_ibp"] & ~rob))
    ibp = {
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
    v, p, c = (ibp[k]["value"] for k in ("verified_accuracy", "pgd_accuracy", "clean_accuracy"))
    checks = {
        "verified_le_pgd_le_clean": bool(v <= p <= c),
        "crown_ibp_ge_ibp": bool(ibp["crown_ibp_verified_accuracy"]["value"] >= v),
        "no_example_verified_and_broken": both == 0,
    }
    settings = {
        **cfg,
        "model": f"mlp {cfg['hidden']}",
        "optimizer": "adam, cosine decay",
        "dataset": "digits",
    }
    data = {
        **C.header(NAME, args.smoke, args.seed, settings),
        "recipe": (
            f"IBP training (Gowal et al. 2018) of an MLP {cfg['hidden']} on the 1437 digits "
            f"training images: {cfg['epochs']} epochs, batch {cfg['batch']}, Adam lr {cfg['lr']} "
            f"with cosine decay; ε_train {cfg['eps_train']} ramped linearly after "
            f"{cfg['warmup_epochs']} natural epochs over {cfg['ramp_epochs']} epochs, κ 1 → "
            f"{cfg['kappa']}"
        ),
        "train_seconds": round(train_s, 2),
        "ibp": ibp,
        "curve": curve,
        "checks": checks,
    }
    fig, axes = C.figure()
    ax = axes[0, 0]
    for k, style in (("clean", "k--"), ("pgd", "C3-o"), ("crown_ibp", "C2-s"), ("ibp", "C0-^")):
        ax.plot(curve["eps"], curve[k], style, label=k if k != "pgd" else attack.split(" (")[0])
    ax.axvline(cfg["eps"], color="0.7", lw=0.8)
    ax.set(
        xlabel="ℓ∞ ε", ylabel=f"accuracy (n = {n})", title="digits, IBP-trained MLP", ylim=(0, 1.02)
    )
    ax.legend(fontsize=8)
    C.save(fig, out / "digits_ibp.png")
    lines = [
        f"clean {c:.3f}, PGD {p:.3f}, verified IBP {v:.3f}, CROWN-IBP "
        f"{ibp['crown_ibp_verified_accuracy']['value']:.3f} at ε = {cfg['eps']} (n = {n})",
        f"checks {checks}",
    ]
    C.finish(out, "digits_ibp", data, t0, lines)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
