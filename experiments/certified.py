"""Certified vs empirical robustness: randomized smoothing (Cohen, Rosenfeld & Kolter 2019)
and interval bound propagation (Gowal et al. 2018), on digits or shapes.

- smoothing (`_certified_smoothing.py`): a base classifier (MLP on digits, SmallCNN on
  shapes) trained with Gaussian noise at σ = 0.25; its smoothed classifier certified on the
  test set (`jaxrobust.certify.certify`, n0 = 100, n = 10,000, α = 0.001), timed; every
  certificate attacked inside its radius, and the empirical robust accuracy of the smoothed
  classifier at a few ℓ2 radii on the same images: APGD-CE and APGD-DLR through EOT, the
  smoothed prediction re-estimated with fresh noise;
- ibp (`_certified_ibp.py`): a model trained with the IBP objective; verified accuracy by
  IBP and CROWN-IBP, PGD robust accuracy and clean accuracy at ℓ∞ ε (0.1 on digits, 2/255
  on shapes) and along a few ε, with the cross-checks verified ≤ PGD ≤ clean and no image
  both verified and broken.

    jaxrobust experiment certified [--method all|smoothing|ibp] [--dataset digits|shapes]
                                   [--smoke] [--out DIR] [--seed S]

Writes DIR/DATASET.json (keys `smoothing.certified_accuracy` and
`smoothing.empirical_accuracy` per radius, `ibp.verified_accuracy`, `ibp.clean_accuracy`,
`ibp.pgd_accuracy`, each measured with n and its binomial SE, the checks and wall times) and
DIR/DATASET.png (certified vs empirical robust accuracy: one panel per method); with one
--method, DIR/DATASET_METHOD.json and .png. Exit status 1 when a deterministic cross-check
fails (an image verified by IBP yet broken by PGD, an attack input outside its radius).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import numpy as np

import jaxrobust as jr

NAME = "certified"
METHODS = ("smoothing", "ibp")


def _options(parser) -> None:
    parser.add_argument("--method", choices=("all", *METHODS), default="all")
    parser.add_argument("--dataset", choices=("digits", "shapes"), default="digits")


def _figure(dataset: str, smoothing: dict | None, ibp: dict | None, path: Path) -> None:
    panels = [p for p in (smoothing, ibp) if p is not None]
    fig, axes = C.figure(1, len(panels), (5.5, 4.0))
    axes = list(axes[0])
    if smoothing is not None:
        ax = axes.pop(0)
        r, acc = smoothing["curve"]
        ax.plot(r, acc, "C0-", label="certified (smoothing, σ=0.25)")
        for key, style, label in (
            ("certified", "C0o", "certified at the radii (± SE)"),
            ("empirical", "C3s", f"empirical (± SE): {smoothing['attack']} + EOT"),
        ):
            ms = smoothing[key]
            ax.errorbar(
                smoothing["radii"],
                [m["value"] for m in ms],
                yerr=[m["se"] or 0 for m in ms],
                fmt=style,
                capsize=3,
                label=label,
            )
        ax.set(
            xlabel="ℓ2 radius",
            ylabel=f"accuracy of the smoothed classifier (n = {smoothing['n']})",
            title=f"{dataset}: randomized smoothing",
            ylim=(0, 1.02),
        )
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    if ibp is not None:
        ax = axes.pop(0)
        curve, n = ibp["curve"], ibp["settings"]["test_size"]
        for key, style, label in (
            ("clean", "k--", "clean"),
            ("pgd", "C3-o", ibp["attack"].split(" (")[0]),
            ("crown_ibp", "C2-s", "verified, CROWN-IBP"),
            ("ibp", "C0-^", "verified, IBP"),
        ):
            p = np.asarray(curve[key])
            ax.errorbar(
                curve["eps"], p, yerr=C.mc_se(p, n), fmt=style, capsize=3, ms=4, label=label
            )
        ax.axvline(ibp["settings"]["eps"], color="0.7", lw=0.8)
        ax.set(
            xlabel="ℓ∞ ε",
            ylabel=f"accuracy (n = {n})",
            title=f"{dataset}: IBP-trained {ibp['settings']['model']}",
            ylim=(0, 1.02),
        )
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    C.save(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    # One CPU device per core (a no-op when `jaxrobust experiment` did it already, or when
    # JAX has started): certification shards its batches over them.
    jr.use_cpu_cores_as_devices()
    import _certified_ibp as IBP
    import _certified_smoothing as SM

    args = C.parse_args(NAME, argv, __doc__, _options)
    size = "smoke" if args.smoke else "full"
    methods = METHODS if args.method == "all" else (args.method,)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data: dict = {}
    settings: dict = {"dataset": args.dataset, "methods": list(methods)}
    lines: list[str] = []
    plot_sm = plot_ibp = None
    checks: dict[str, bool] = {}
    if "smoothing" in methods:
        part, plot_sm, more = SM.run(args.dataset, SM.SETTINGS[args.dataset][size], args.seed, out)
        data["smoothing"], lines = part, lines + more
        checks["smoothing_inputs_within_radius"] = bool(
            part["eot_check"]["inputs_within_radius"]
            and part["empirical_check"]["inputs_within_radius"]
        )
    if "ibp" in methods:
        part, more = IBP.run(args.dataset, IBP.SETTINGS[args.dataset][size], args.seed)
        data["ibp"], plot_ibp, lines = part, part, lines + more
        checks.update({f"ibp_{k}": v for k, v in part["checks"].items()})
    stem = args.dataset if args.method == "all" else f"{args.dataset}_{args.method}"
    _figure(args.dataset, plot_sm, plot_ibp, out / f"{stem}.png")
    result = {**C.header(NAME, args.smoke, args.seed, settings), **data, "checks": checks}
    C.finish(out, stem, result, t0, lines)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
