"""Transfer of adversarial examples between models (Ilyas et al. 2019, section 4: "adversarial
examples are features" explains transferability).

Trains independent models with the recipes of `experiments/nonrobust_features.py` (the
same MLPs, optimiser, epochs and constructions):

- `standard_a`, `standard_b`: standard training, the source MLP, different seeds
  (`standard_a` is the source of D_rand / D_det);
- `standard_wide`: standard training, the fresh-model MLP (the architecture of the D_rand /
  D_det models), another seed;
- `robust_linf`: PGD-AT in ℓ∞ at nonrobust_features' ε (the source MLP);
- `robust_l2`: PGD-AT in ℓ2 at `L2_TRAIN_EPS` (the source MLP);
- `d_rand`, `d_det`: the fresh-model MLP trained with standard training on D_rand / D_det
  built from `standard_a` by `jaxrobust.features.build_dataset` (targeted ℓ2 PGD).

Then, on the original test set, for each ε of `attack_eps`: untargeted ℓ2 PGD
(cross-entropy, one random start, default step size 2.5ε/steps, the per-example best
iterate) on every source model, and every target model's prediction on those examples.

Matrix entry (source s, target t): among the test points that s and t both classify
correctly, the fraction that t misclassifies on s's adversarial example (n = that number
of points, binomial SE). On the diagonal (s = t) it is the white-box success rate.
Random-noise baseline per target: among the points t classifies correctly, the fraction
it misclassifies at x + δ with δ a uniformly random direction scaled so that, after
clipping to the [0, 1] box, ‖δ‖₂ = ε exactly (the ℓ2 threat model's own projection).

    jaxrobust experiment transferability [--smoke] [--dataset digits|shapes] [--out DIR]
        [--work DIR] [--seed S]

Writes DIR/<dataset>.json (model accuracies, the matrices with n and SE, the noise
baselines, settings, wall time) and DIR/<dataset>.png (one heatmap per ε). Sizes: `SETTINGS`
(`--smoke`: tiny models, 64 test points; shapes at smoke size reads 256 / 64 records).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import _nonrobust_features_parts as P
import jax
import jax.numpy as jnp
import nonrobust_features as NRF
import numpy as np

import jaxrobust as jr
from jaxrobust import features as F
from jaxrobust.data import get_info, load_split

NAME = "transferability"
DATASETS = ("digits", "shapes")
# The ℓ2 radii of the transfer attack and robust_l2's PGD-AT radius, per image size.
ATTACK_EPS = {"digits": (0.5, 1.0, 2.0), "shapes": (0.5, 1.0)}
L2_TRAIN_EPS = {"digits": 1.0, "shapes": 0.5}
_SHARED = (
    "source_hidden",
    "fresh_hidden",
    "epochs",
    "limit",
    "test",
    "dataset_kwargs",
    "adv_steps",
    "chunk_size",
)
SETTINGS = {  # the nonrobust_features recipes (`_SHARED` from its SETTINGS) plus the attack
    "full": {**{k: NRF.SETTINGS["full"][k] for k in _SHARED}, "attack_steps": 100},
    "smoke": {**{k: NRF.SETTINGS["smoke"][k] for k in _SHARED}, "attack_steps": 5},
}
BATCH = 512


def _models(s: dict, seed: int) -> dict[str, dict]:
    """name -> training recipe. Every model has its own training seed (initialisation and
    data order); d_rand / d_det train on datasets built from standard_a."""
    src, fresh = tuple(s["source_hidden"]), tuple(s["fresh_hidden"])
    return {
        "standard_a": dict(objective="standard", hidden=src, seed=seed, data="original"),
        "standard_b": dict(objective="standard", hidden=src, seed=seed + 1, data="original"),
        "standard_wide": dict(objective="standard", hidden=fresh, seed=seed + 2, data="original"),
        "robust_linf": dict(
            objective="pgd_at",
            hidden=src,
            seed=seed + 3,
            data="original",
            threat="linf",
            eps=s["eps"],
        ),
        "robust_l2": dict(
            objective="pgd_at",
            hidden=src,
            seed=seed + 4,
            data="original",
            threat="l2",
            eps=s["l2_train_eps"],
        ),
        "d_rand": dict(objective="standard", hidden=fresh, seed=seed + 5, data="d_rand"),
        "d_det": dict(objective="standard", hidden=fresh, seed=seed + 6, data="d_det"),
    }


# ----------------------------------------------------------------------- the measurement


def predict(f: Callable, x: np.ndarray) -> np.ndarray:
    """argmax of f's logits, in batches of `BATCH`: (N, ...) -> (N,) int."""
    return np.concatenate(
        [
            np.asarray(jnp.argmax(f(jnp.asarray(x[i : i + BATCH])), -1))
            for i in range(0, len(x), BATCH)
        ]
    )


def craft(
    f: Callable, x: np.ndarray, y: np.ndarray, key: jax.Array, *, eps: float, steps: int
) -> np.ndarray:
    """Untargeted ℓ2 PGD on f (cross-entropy, one random start, step 2.5ε/steps, the
    per-example best iterate), in batches: x (N, ...) in [0, 1] -> x_adv (N, ...)."""
    out = []
    for i in range(0, len(x), BATCH):
        r = jr.pgd(
            f,
            jnp.asarray(x[i : i + BATCH]),
            jnp.asarray(y[i : i + BATCH]),
            jax.random.fold_in(key, i),
            threat=jr.l2(eps),
            steps=steps,
        )
        out.append(np.asarray(r.x_adv))
    return np.concatenate(out)


def random_noise(x: np.ndarray, key: jax.Array, eps: float) -> np.ndarray:
    """x + δ, δ along a uniformly random direction (a normalised Gaussian per example),
    scaled so that after clipping to the [0, 1] box ‖δ‖₂ = ε: the ℓ2 threat model's exact
    projection of a direction far outside the ball (it keeps the largest scale that fits)."""
    x = jnp.asarray(x)
    g = jax.random.normal(key, x.shape, x.dtype)
    g = g / jnp.sqrt(jnp.sum(g**2, axis=tuple(range(1, x.ndim)), keepdims=True))
    threat = jr.l2(eps)
    return np.asarray(x + threat.project(g * (100.0 * eps + 100.0), x))


def _rate(wrong: np.ndarray, keep: np.ndarray, how: str) -> dict:
    """Fraction of `wrong` over the points in `keep`, with n and its binomial SE (value and
    SE None when no point is kept)."""
    n = int(np.sum(keep))
    if n == 0:
        return {"value": None, "method": "measured", "n": 0, "se": None, "how": how}
    p = float(np.mean(wrong[keep]))
    return C.measured(p, n=n, se=float(C.mc_se(p, n)), how=how)


def transfer_matrix(
    models: Mapping[str, Callable],
    x: np.ndarray,
    y: np.ndarray,
    adversarial: Mapping[str, np.ndarray],
    noisy: np.ndarray | None = None,
) -> dict:
    """The transfer matrix from adversarial examples already crafted.

    Args:
      models: name -> logits_fn, x (B, ...) -> (B, C): every model is a target.
      x: (N, ...) clean inputs; y: (N,) labels.
      adversarial: source name (a key of `models`) -> (N, ...) its adversarial examples.
      noisy: optional (N, ...) randomly perturbed inputs (the noise baseline).

    Returns:
      {"transfer": {s: {t: entry}}: among the points that s and t both classify correctly,
      the fraction t misclassifies at adversarial[s] (n, binomial SE); "white_box": {s:
      entry} (the diagonal, repeated); "noise": {t: entry}: among the points t classifies
      correctly, the fraction it misclassifies at `noisy`; "clean_accuracy": {t: entry}}.
    """
    y = np.asarray(y)
    correct = {t: predict(f, x) == y for t, f in models.items()}
    out: dict = {"transfer": {}, "white_box": {}, "noise": {}, "clean_accuracy": {}}
    for t in models:
        out["clean_accuracy"][t] = _rate(
            correct[t], np.ones(len(y), bool), "clean accuracy on the test points"
        )
    for s, x_adv in adversarial.items():
        row = out["transfer"][s] = {}
        for t, f in models.items():
            wrong = predict(f, x_adv) != y
            row[t] = _rate(
                wrong,
                correct[s] & correct[t],
                f"misclassified by {t} at {s}'s adversarial example, among the "
                f"test points both classify correctly",
            )
        if s in models:
            out["white_box"][s] = row[s]
    if noisy is not None:
        for t, f in models.items():
            out["noise"][t] = _rate(
                predict(f, noisy) != y,
                correct[t],
                f"misclassified by {t} at random noise of the same l2 norm, "
                f"among the test points it classifies correctly",
            )
    return out


# ------------------------------------------------------------------------------- figure


def heatmap(matrices: dict, names: Sequence[str], path: Path, title: str) -> None:
    """One panel per ε: rows = source models (and the noise baseline), columns = targets,
    cells = transfer rate ± SE."""
    fig, axes = C.figure(1, len(matrices), (0.6 * len(names) + 1.8, 0.55 * len(names) + 2.2))
    for ax, (label, m) in zip(axes[0], matrices.items(), strict=True):
        rows = [*names, "noise"]
        val = np.full((len(rows), len(names)), np.nan)
        se = np.full_like(val, np.nan)
        for i, s in enumerate(rows):
            for j, t in enumerate(names):
                e = m["noise"][t] if s == "noise" else m["transfer"][s][t]
                if e["value"] is not None:
                    val[i, j], se[i, j] = e["value"], e["se"]
        ax.imshow(val, cmap="viridis", vmin=0, vmax=1)
        for i in range(len(rows)):
            for j in range(len(names)):
                if np.isfinite(val[i, j]):
                    color = "black" if val[i, j] > 0.6 else "white"
                    ax.text(
                        j,
                        i,
                        f"{100 * val[i, j]:.0f}\n±{100 * se[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color=color,
                    )
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_xlabel("target model", fontsize=8)
        ax.set_ylabel("source of the l2 PGD examples", fontsize=8)
        ax.set_title(f"{label}: % of jointly correct points misclassified", fontsize=8)
    fig.suptitle(title, fontsize=8)
    C.save(fig, path)


# --------------------------------------------------------------------------------- main


def _cell(e: dict) -> str:
    return "-" if e["value"] is None else f"{e['value']:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dataset", choices=DATASETS, default="digits")
        parser.add_argument("--work", default=None, help="models and datasets (default OUT/work)")

    args = C.parse_args(NAME, argv, __doc__, extra)
    t0 = time.perf_counter()
    ds = args.dataset
    s = dict(SETTINGS["smoke" if args.smoke else "full"])
    s.update(NRF._IMAGES[ds], attack_eps=ATTACK_EPS[ds], l2_train_eps=L2_TRAIN_EPS[ds])
    kw = dict(s["dataset_kwargs"]) if ds == "shapes" else {}
    s["dataset_kwargs"] = kw
    x_test, y_test = load_split(ds, "test", limit=s["test"], dataset_kwargs=kw or None)
    _, y_train = load_split(ds, "train", limit=s["limit"], dataset_kwargs=kw or None)
    num_classes = get_info(ds).num_classes
    out = Path(args.out)
    tag = ds + ("_smoke" if args.smoke else "")
    work = (Path(args.work) if args.work else out / "work") / tag
    recipes = _models(s, args.seed)
    seconds: dict[str, float] = {}
    data = C.header(
        NAME,
        args.smoke,
        args.seed,
        {
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()},
            "dataset": ds,
            "train_records_used": len(y_train),
            "test_size": len(y_test),
            "training": "MLP, Adam 2e-3 cosine, batch 64 (the library's loop, as "
            "nonrobust_features); PGD-AT: 10 steps in the model's ball",
            "constructions": f"D_rand/D_det from standard_a: targeted l2 PGD eps {s['adv_eps']}, "
            f"{s['adv_steps']} steps (jaxrobust.features.build_dataset)",
            "attack": f"untargeted l2 PGD, cross-entropy, {s['attack_steps']} steps of 2.5 "
            "eps/steps, 1 random start, per-example best iterate, on the source model",
            "entry": "among the test points source and target both classify correctly, the "
            "fraction the target misclassifies at the source's adversarial example",
            "noise": "among the test points the target classifies correctly, the fraction it "
            "misclassifies at x + delta, delta a uniformly random direction with ||delta||_2 = eps "
            "after clipping to [0, 1]",
        },
    )

    # Models: standard_a first (the source of D_rand / D_det).
    fns, models = {}, {}
    built = {}
    for name, r in recipes.items():
        t = time.perf_counter()
        dataset, dkw = ds, kw
        if r["data"] != "original":
            b = F.build_dataset(
                r["data"],
                work / "model_standard_a",
                work / r["data"],
                dataset=ds,
                dataset_kwargs=kw or None,
                seed=args.seed,
                chunk_size=s["chunk_size"],
                limit=s["limit"],
                eps=s["adv_eps"],
                steps=s["adv_steps"],
            )
            labels = load_split(b["name"], "train")[1]
            built[r["data"]] = {
                "source": "standard_a",
                "n_train": len(labels),
                "build_summary": b["summary"],
                "label_check": P.label_checks(r["data"], labels, y_train, num_classes),
            }
            seconds[f"build_{r['data']}"] = time.perf_counter() - t
            t = time.perf_counter()
            dataset, dkw = b["name"], {}
        run = work / f"model_{name}"
        fns[name] = P.train_model(
            run,
            dataset=dataset,
            dataset_kwargs=dkw,
            hidden=r["hidden"],
            objective=r["objective"],
            epochs=s["epochs"],
            eps=r.get("eps", s["eps"]),
            seed=r["seed"],
            threat=r.get("threat", "linf"),
        )
        models[name] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items()}
        models[name]["run"] = str(run)
        seconds[f"train_{name}"] = time.perf_counter() - t

    # The matrices.
    names = list(recipes)
    matrices = {}
    key = jax.random.key(args.seed + 100)
    for k, eps in enumerate(s["attack_eps"]):
        t = time.perf_counter()
        ke = jax.random.fold_in(key, k)
        adversarial = {
            n: craft(
                fns[n], x_test, y_test, jax.random.fold_in(ke, i), eps=eps, steps=s["attack_steps"]
            )
            for i, n in enumerate(names)
        }
        noisy = random_noise(x_test, jax.random.fold_in(ke, 10_000), eps)
        m = transfer_matrix(fns, x_test, y_test, adversarial, noisy)
        flat = x_test.reshape(len(x_test), -1)
        m["eps"] = eps
        m["perturbation_l2_mean"] = {
            n: float(np.mean(np.linalg.norm(a.reshape(len(a), -1) - flat, axis=1)))
            for n, a in {**adversarial, "noise": noisy}.items()
        }
        matrices[f"eps_{eps:g}"] = m
        seconds[f"matrix_eps_{eps:g}"] = time.perf_counter() - t
    for name in names:
        models[name]["clean_accuracy"] = matrices[f"eps_{s['attack_eps'][0]:g}"]["clean_accuracy"][
            name
        ]

    data["models"] = models
    data["constructions"] = built
    data["matrices"] = matrices
    data["seconds"] = seconds
    out.mkdir(parents=True, exist_ok=True)
    heatmap(
        {f"l2 eps {k[4:]}": m for k, m in matrices.items()},
        names,
        out / f"{tag}.png",
        f"{ds}: transfer of untargeted l2 PGD-{s['attack_steps']} examples (n = "
        f"{len(y_test)} test points; ± binomial SE)",
    )
    lines = []
    for label, m in matrices.items():
        lines.append(f"{label} (rows: sources, columns: targets, last row: noise)")
        lines.append(" " * 14 + "".join(f"{n[:9]:>10}" for n in names))
        for src in [*names, "noise"]:
            row = m["noise"] if src == "noise" else m["transfer"][src]
            cells = "".join(f"{_cell(row[n]):>10}" for n in names)
            lines.append(f"{src:<14}{cells}")
    C.finish(out, tag, data, t0, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
