"""Certified robustness on the offline digits: randomized smoothing (Cohen, Rosenfeld &
Kolter 2019). (Interval bound propagation joins this experiment where it is available.)

A 256-256 MLP is trained with Gaussian-noise augmentation at σ = 0.25
(`objective=gaussian_noise`) and its smoothed classifier is certified on the whole test
set with `jaxrobust.certify.certify` (n0 = 100 selection samples, n = 10,000 estimation
samples, α = 0.001), timed. The certificates are then attacked: every example certified
correct is attacked at ℓ2 ε = its certified radius by APGD-CE and APGD-DLR on the EOT
surrogate of the smoothed classifier (log mean softmax over 32 fixed noise draws), and
the smoothed prediction at the attack's input is re-estimated with fresh noise
(`predict`, n = 10,000, α = 0.001). A returned class other than the label there is a
violated certificate; sound certificates are violated only through the failure
probabilities of `certify` and `predict` (at most 2α per example).

    jaxrobust experiment certified [--smoke] [--out DIR] [--seed S]

Writes DIR/digits.json (`smoothing.certified_accuracy` per radius, each measured on the
test set with its binomial SE; the certification wall time and device count; the attack
check) and DIR/digits.png (certified accuracy against the ℓ2 radius).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)

import jaxrobust as jr

NAME = "certified"
RADII = (0.0, 0.25, 0.5, 0.75)
SETTINGS = {
    "smoke": {
        "hidden": (32,),
        "epochs": 2,
        "test": 16,
        "n0": 10,
        "n": 200,
        "eot_samples": 4,
        "attack_steps": 5,
    },
    "full": {
        "hidden": (256, 256),
        "epochs": 60,
        "test": 0,
        "n0": 100,
        "n": 10_000,
        "eot_samples": 32,
        "attack_steps": 100,
    },
}
SIGMA, ALPHA, BATCH = 0.25, 0.001, 32


def train_overrides(cfg: dict, seed: int) -> list[str]:
    """`--set` overrides of the default job: Gaussian-noise training at σ = SIGMA. The
    training job's own final evaluation (PGD on the base classifier) is cut to one step:
    the base classifier's robustness is not what this experiment measures."""
    return [
        "objective=gaussian_noise",
        f"smoothing.sigma={SIGMA}",
        "threat=l2",
        f"eps={SIGMA}",
        f"seed={seed}",
        f"model.kwargs={{'hidden': {tuple(cfg['hidden'])!r}}}",
        f"epochs={cfg['epochs']}",
        "eval.eps_list=(0.0,)",
        "eval.steps=1",
        "eval.restarts=1",
        "eval.every_epochs=1000",
    ]


def _figure(radii, acc, marks: dict, n: int, path: Path) -> None:
    fig, axes = C.figure(1, 1, (5.5, 4.0))
    ax = axes[0, 0]
    ax.plot(radii, acc, label=f"smoothing σ={SIGMA:g}")
    for r, a in marks.items():
        ax.plot([r], [a], "o", color="C0")
        ax.annotate(f"{a:.3f}", (r, a), textcoords="offset points", xytext=(5, 5))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("ℓ2 radius")
    ax.set_ylabel("certified accuracy")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"digits: certified accuracy ({n} test images)")
    ax.legend()
    C.save(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    # One CPU device per core (a no-op when `jaxrobust experiment` did it already, or when
    # JAX has started): certification shards its batches over them.
    jr.use_cpu_cores_as_devices()
    import jax
    import numpy as np
    from scipy.stats import binom

    from jaxrobust.certify import smoothing as sm
    from jaxrobust.config import load_config
    from jaxrobust.data import load_split
    from jaxrobust.train.loop import restore_run, train

    args = C.parse_args(NAME, argv, __doc__)
    cfg = SETTINGS["smoke" if args.smoke else "full"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run_dir = out / "models" / "gaussian_noise"
    train(
        load_config(None, train_overrides(cfg, args.seed)),
        run_dir,
        progress=False,
        log=lambda s: None,
    )
    train_time = time.perf_counter() - t0
    _, state, _ = restore_run(run_dir)
    f = state.logits_fn()
    x, y = load_split("digits", "test", limit=cfg["test"] or None)
    key = jax.random.key(args.seed + 1)

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

    t2 = time.perf_counter()
    check = sm.attack_certificates(
        f,
        x,
        y,
        cert,
        jax.random.key(args.seed + 2),
        eot_samples=cfg["eot_samples"],
        steps=cfg["attack_steps"],
        batch_size=BATCH,
    )
    attack_seconds = time.perf_counter() - t2
    attacked, violated = int(check.attacked.sum()), int(check.violated.sum())
    dist = np.sqrt(((check.x_adv - x) ** 2).reshape(len(x), -1).sum(1))
    within = bool(np.all(dist[check.attacked] <= cert.radius[check.attacked] * (1 + 1e-5) + 1e-6))
    # The α-level noise: violations of sound certificates are failures of certify or of
    # predict, each at most α per example: at most Bin(attacked, 2α) in distribution.
    bound = 2 * ALPHA
    p_value = float(binom.sf(violated - 1, attacked, bound)) if attacked else 1.0
    rate = violated / attacked if attacked else 0.0
    settings = {
        "model": f"mlp(hidden={tuple(cfg['hidden'])})",
        "objective": "gaussian_noise",
        "epochs": cfg["epochs"],
        "test_size": len(y),
        "sigma": SIGMA,
        "n0": cfg["n0"],
        "n": cfg["n"],
        "alpha": ALPHA,
        "batch_size": BATCH,
        "eot_samples": cfg["eot_samples"],
        "attack": (
            f"APGD-CE and APGD-DLR, {cfg['attack_steps']} steps each, l2 eps = the certified radius"
        ),
    }
    data = {
        **C.header(NAME, args.smoke, args.seed, settings),
        "smoothing": {
            "sigma": SIGMA,
            "n0": cfg["n0"],
            "n": cfg["n"],
            "alpha": ALPHA,
            "certified_accuracy": certified,
            "abstain_rate": C.measured(
                float(np.mean(cert.prediction == sm.ABSTAIN)),
                n=len(y),
                how="fraction of test images where certify abstained",
            ),
            "max_certifiable_radius": C.closed_form(
                sm.max_radius(cfg["n"], ALPHA, SIGMA), how="sigma * Phi^-1(alpha^(1/n))"
            ),
            "curve": {"radius": curve_r.tolist(), "certified_accuracy": curve_acc.tolist()},
            "certify_seconds": round(certify_seconds, 2),
            "certify_seconds_means": (
                "wall time of certify() over the whole test set, compilation included, on "
                "this machine (2 CPU cores shared with other jobs)"
            ),
            "devices": jax.device_count(),
            "per_example": {
                "prediction": cert.prediction.tolist(),
                "radius": [round(float(r), 5) for r in cert.radius],
                "label": np.asarray(y).tolist(),
            },
        },
        "eot_check": {
            "attacked": attacked,
            "attacked_means": "test images certified correct (prediction = label, radius > 0)",
            "surrogate_fooled": int(check.surrogate_fooled.sum()),
            "abstained_after_attack": int(np.sum(check.prediction[check.attacked] == sm.ABSTAIN)),
            "violated": violated,
            "violation_rate": C.measured(
                rate,
                n=max(attacked, 1),
                se=float(C.mc_se(rate, max(attacked, 1))),
                how=(
                    "fraction of the attacked images where predict (fresh noise, n = "
                    f"{cfg['n']}, alpha = {ALPHA}) returned a class other than the label at "
                    "the attack's input"
                ),
            ),
            "alpha_level_bound": C.by_argument(
                bound,
                why="a violation of a sound certificate needs certify or predict to fail, "
                "each with probability <= alpha per example",
            ),
            "p_value_vs_bound": C.closed_form(p_value, how="P(Bin(attacked, 2 alpha) >= violated)"),
            "inputs_within_radius": within,
            "attack_seconds": round(attack_seconds, 2),
        },
        "train_time_s": round(train_time, 2),
    }
    marks = {r: float(a) for r, a in zip(RADII, acc, strict=True) if r in (0.25, 0.5)}
    _figure(curve_r, curve_acc, marks, len(y), out / "digits.png")
    lines = [
        "certified accuracy "
        + ", ".join(f"r={r:g}: {a:.3f}" for r, a in zip(RADII, acc, strict=True)),
        f"certify: {len(y)} images in {certify_seconds:.1f} s on {jax.device_count()} device(s)",
        f"EOT attack: {violated} of {attacked} certificates violated "
        f"({int(check.surrogate_fooled.sum())} surrogate successes; p = {p_value:.3g} vs 2 alpha)",
    ]
    C.finish(out, "digits", data, t0, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
