"""Measure the Ilyas et al. 2019 constructions on digits (issue 14, item 2): not an
experiment module (that comes later), the script behind the numbers in
experiments/results/features_digits_measure.json.

    python experiments/_features_digits_measure.py WORK_DIR [step ...]

Steps (each reuses what an earlier call left in WORK_DIR):
  sources   train the main job's MLP with objective=standard and the main job itself
            (PGD-AT, ℓ∞ 0.1): the source models.
  sweep     targeted ℓ2 PGD success of the standard model vs ε on the first 360 training
            images (to choose ε).
  build     D_det, D_rand (standard source, ℓ2 ε in EPS) and D_R (robust source) / D_NR
            (standard source) inversions of the whole training split.
  inspect   ℓ2 distances of the D_R / D_NR inversions to their originals.
  train     a fresh standard model (main job config, objective=standard) on each, tested
            on the original digits test set.
  bottleneck  D_R / D_NR from MLPs with a 32-unit penultimate layer (standard and PGD-AT
            sources), and standard models trained on them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jaxrobust import features as F
from jaxrobust.config import default_config
from jaxrobust.data import load_split
from jaxrobust.runs import load_run
from jaxrobust.train.loop import train

EPS = (1.5, 2.0)  # ℓ2 radii of D_det / D_rand (pixels in [0, 1], 8×8 images)
PGD_STEPS = 100
INV_STEPS = 1000
INV_STEP_SIZE = 1.0
TOL = 0.05
RESULTS = Path(__file__).with_name("results") / "features_digits_measure.json"


def _quiet(_: str) -> None:
    pass


def _train(cfg, out: Path) -> dict:
    t = time.perf_counter()
    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    metrics = train(cfg, out, progress=False, log=_quiet)
    metrics["measure_seconds"] = time.perf_counter() - t
    return metrics


def sources(work: Path, results: dict) -> None:
    cfg = default_config()
    cfg.objective = "standard"
    std = _train(cfg, work / "source_standard")
    rob = _train(default_config(), work / "source_robust")
    results["sources"] = {
        "standard": {
            "config": "main job (MLP 512-512, 30 epochs, Adam) with objective=standard",
            "clean_accuracy": std["clean_accuracy"],
            "robust_accuracy_linf_0.1": std["robust_accuracy"],
            "n_test": 360,
        },
        "robust": {
            "config": "main job: PGD-AT l-inf eps 0.1",
            "clean_accuracy": rob["clean_accuracy"],
            "robust_accuracy_linf_0.1": rob["robust_accuracy"],
            "n_test": 360,
        },
    }


def sweep(work: Path, results: dict) -> None:
    f = load_run(work / "source_standard").logits_fn()
    x, y = load_split("digits", "train", limit=360)
    rows = []
    for eps in (0.5, 1.0, 1.5, 2.0, 3.0):
        row = {"eps": eps}
        for rule in ("deterministic", "random"):
            c = F.relabelled_adversarial(
                f, x, y, jax.random.key(0), eps=eps, steps=PGD_STEPS, rule=rule
            )
            row[f"{rule}_targeted_success"] = float(np.mean(c.success))
        rows.append(row)
    results["eps_sweep"] = {"n": 360, "steps": PGD_STEPS, "rows": rows}


def _kinds() -> list[tuple[str, str, dict]]:
    """(folder, kind, source run, build arguments) of every construction measured."""
    rows = []
    for eps in EPS:
        for kind in ("d_det", "d_rand"):
            rows.append(
                (f"{kind}_eps{eps:g}", kind, "source_standard", dict(eps=eps, steps=PGD_STEPS))
            )
    inv = dict(steps=INV_STEPS, step_size=INV_STEP_SIZE, tol=TOL, start="noise")
    rows.append(("d_robust", "d_robust", "source_robust", inv))
    rows.append(("d_nonrobust", "d_nonrobust", "source_standard", inv))
    return rows


def build(work: Path, results: dict) -> None:
    out = results.setdefault("datasets", {})
    for folder, kind, source, kw in _kinds():
        t = time.perf_counter()
        r = F.build_dataset(kind, work / source, work / folder, chunk_size=256, seed=0, **kw)
        out[folder] = {
            "kind": kind,
            "params": r["provenance"]["params"],
            "source": source,
            "summary": r["summary"],
            "seconds": time.perf_counter() - t,
        }
        print(folder, json.dumps(r["summary"]), flush=True)


def train_on(work: Path, results: dict) -> None:
    out = results.setdefault("trained_on", {})
    for folder, _, _, _ in _kinds():
        cfg = default_config()
        cfg.objective = "standard"
        cfg.dataset = f"derived:{work / folder}"
        m = _train(cfg, work / f"trained_on_{folder}")
        out[folder] = {
            "test_accuracy_original_digits": m["clean_accuracy"],
            "robust_accuracy_linf_0.1": m["robust_accuracy"],
            "n_test": 360,
            "n_train": 1437,
        }
        print(folder, json.dumps(out[folder]), flush=True)


def inspect(work: Path, results: dict) -> None:
    """ℓ2 distance of the D_R / D_NR inversions to their originals (pixels in [0, 1]), and
    of the noise starts, for scale."""
    x, _ = load_split("digits", "train")
    out = results.setdefault("inversion_distances", {})
    noise = np.random.default_rng(0).uniform(size=x.shape).astype(np.float32)
    out["uniform_noise_to_original_mean_l2"] = float(
        np.mean(np.linalg.norm((noise - x).reshape(len(x), -1), axis=1))
    )
    for kind in ("d_robust", "d_nonrobust"):
        xi, _ = load_split(f"derived:{work / kind}", "train")
        d = np.linalg.norm((xi - x).reshape(len(x), -1), axis=1)
        out[kind] = {"mean_l2": float(np.mean(d)), "median_l2": float(np.median(d)), "n": len(x)}


BOTTLENECK = (512, 32)  # a penultimate layer narrower than the 64 pixels


def bottleneck(work: Path, results: dict) -> None:
    """D_R / D_NR from MLPs whose penultimate layer (32 units) cannot determine the 64
    pixels: standard and PGD-AT sources, the inversions, and standard models trained on
    them (clean and ℓ∞ 0.1 PGD accuracy on the original test set)."""
    out = results.setdefault("bottleneck", {"hidden": list(BOTTLENECK)})
    x, _ = load_split("digits", "train")
    for kind, objective in (("d_robust", "pgd_at"), ("d_nonrobust", "standard")):
        cfg = default_config()
        cfg.objective = objective
        cfg.model.kwargs.hidden = BOTTLENECK
        src = work / f"source_{objective}_b32"
        m = _train(cfg, src)
        r = F.build_dataset(
            kind,
            src,
            work / f"{kind}_b32",
            chunk_size=256,
            seed=0,
            steps=INV_STEPS,
            step_size=INV_STEP_SIZE,
            tol=TOL,
            start="noise",
        )
        xi, _ = load_split(r["name"], "train")
        d = np.linalg.norm((xi - x).reshape(len(x), -1), axis=1)
        tcfg = default_config()
        tcfg.objective = "standard"
        tcfg.dataset = r["name"]
        t = _train(tcfg, work / f"trained_on_{kind}_b32")
        out[kind] = {
            "source": {
                "objective": objective,
                "clean_accuracy": m["clean_accuracy"],
                "robust_accuracy_linf_0.1": m["robust_accuracy"],
            },
            "summary": r["summary"],
            "mean_l2_distance_to_original": float(np.mean(d)),
            "trained_on": {
                "test_accuracy_original_digits": t["clean_accuracy"],
                "robust_accuracy_linf_0.1": t["robust_accuracy"],
                "n_test": 360,
                "n_train": 1437,
            },
        }
        print(kind, json.dumps(out[kind]), flush=True)


STEPS = {
    "sources": sources,
    "sweep": sweep,
    "build": build,
    "inspect": inspect,
    "train": train_on,
    "bottleneck": bottleneck,
}


def main(argv: list[str]) -> None:
    work = Path(argv[0]).absolute()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for step in argv[1:] or list(STEPS):
        t = time.perf_counter()
        STEPS[step](work, results)
        results.setdefault("seconds", {})[step] = time.perf_counter() - t
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        print(step, "done in", round(time.perf_counter() - t, 1), "s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
