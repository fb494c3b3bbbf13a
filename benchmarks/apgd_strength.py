"""APGD-CE and APGD-T strength, one attack at a time: jaxrobust against the reference
implementation (`pyautoattack` 0.2.0's `APGDAttack` and `APGDAttack_targeted`, the code of
AutoAttack) on the same models, weights, images and ε, over several seeds.

Models: the main job's digits MLP 64-512-512-10 trained as `jaxrobust train` does (PGD-AT
ℓ∞ ε = 0.1, seed 0; the in-training evaluation is cut to one cheap PGD pass, which does not
touch the weights) and the same with `objective=standard`; the reference runs on a PyTorch
copy of the weights (`_torch_peers.mlp`). The 360 digits test images; ℓ∞ ε = 0.2 on the
PGD-AT model and 0.1 on the standard one. Each attack as AutoAttack's standard version
runs it: 100 iterations, 1 restart, APGD-T over the 9 most likely wrong classes. Seed s
is `jax.random.key(s)` for jaxrobust and `seed=s` (torch's generator) for the reference.

A point counts as robust when the model classifies the clean image and the attack's
returned example correctly (each implementation's model re-evaluates its own examples; both
return an example that misclassifies as soon as any iterate did). Reported per model and
attack: the robust count per seed, mean ± standard error over seeds for each
implementation, the ratio of the means (jaxrobust / reference; < 1: jaxrobust leaves fewer
points, i.e. is stronger) and whether jaxrobust's mean is at most the reference's. Without
the PyTorch peers installed (`bash benchmarks/install_peers.sh`) only jaxrobust is measured.

    python benchmarks/apgd_strength.py [--seeds 5] [--runs PGD_AT_DIR STANDARD_DIR]
        [--quick] [--out benchmarks/results/DATE-apgd_strength]

Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _report import write_report

import jaxrobust as jr
from jaxrobust.attacks.apgd import apgd, apgd_targeted
from jaxrobust.data import load_split
from jaxrobust.train.loop import restore_run

HAVE_PEERS = all(importlib.util.find_spec(m) for m in ("torch", "pyautoattack"))

# label, config overrides, attack ε.
MODELS = (
    ("pgd_at", [], 0.2),
    ("standard", ["objective=standard"], 0.1),
)
# In-training evaluation cut to one cheap pass: it runs after the weights are final.
CHEAP_EVAL = ["eval.eps_list=(0.1,)", "eval.steps=10", "eval.restarts=1", "eval.every_epochs=1000"]
STEPS, N_TARGETS = 100, 9
# --quick (tests): one smoke-config model (1 epoch) serves both rows; few steps and images.
QUICK = {"steps": 5, "n_targets": 2, "examples": 32, "overrides": ["epochs=1"]}


def train_model(run_dir: Path, overrides: list[str], config: str | None = None) -> None:
    """Train one digits model as `jaxrobust train [--config config] --set ...` would."""
    from jaxrobust.config import load_config
    from jaxrobust.train.loop import train

    cfg = load_config(config, [*overrides, *CHEAP_EVAL])
    train(cfg, run_dir, progress=False, log=lambda s: None)


def _mean_se(counts: list[int]) -> tuple[float, float]:
    mean = float(np.mean(counts))
    se = float(np.std(counts, ddof=1) / math.sqrt(len(counts))) if len(counts) > 1 else 0.0
    return mean, se


def jax_counts(logits_fn, x, y, eps: float, attack: str, seeds, steps: int, n_targets: int):
    """Robust counts of jaxrobust's APGD-CE / APGD-T, one per seed, one compiled program."""
    threat = jr.linf(eps)
    if attack == "apgd-ce":

        def run(key):
            return apgd(logits_fn, x, y, key, threat=threat, steps=steps, loss="ce").x_adv
    else:

        def run(key):
            return apgd_targeted(
                logits_fn, x, y, key, threat=threat, steps=steps, n_target_classes=n_targets
            ).x_adv

    run = jax.jit(run)
    clean = jnp.argmax(logits_fn(x), -1) == y
    counts, examples, masks = [], [], []
    for seed in seeds:
        x_adv = run(jax.random.key(seed))
        robust = clean & (jnp.argmax(logits_fn(x_adv), -1) == y)
        counts.append(int(robust.sum()))
        examples.append(np.asarray(x_adv))
        masks.append(np.asarray(robust))
    return counts, examples, masks


def torch_counts(model, x, y, eps: float, attack: str, seeds, steps: int, n_targets: int):
    """Robust counts of the reference APGD-CE / APGD-T on the PyTorch copy, one per seed."""
    import torch
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    xt, yt = torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(y)).long()
    counts = []
    for seed in seeds:
        if attack == "apgd-ce":
            adversary = APGDAttack(
                model, n_iter=steps, norm="Linf", n_restarts=1, eps=eps, seed=seed, loss="ce",
                device="cpu",
            )  # fmt: skip
        else:
            adversary = APGDAttack_targeted(
                model, n_iter=steps, norm="Linf", n_restarts=1, eps=eps, seed=seed,
                n_target_classes=n_targets, device="cpu",
            )  # fmt: skip
        x_adv = adversary.perturb(xt, yt)
        with torch.no_grad():
            robust = (model(xt).argmax(1) == yt) & (model(x_adv).argmax(1) == yt)
        counts.append(int(robust.sum()))
    return counts


def jaxrobust_starts(x, eps: float, attack: str, seed: int, n_targets: int) -> list:
    """The random starts jaxrobust's APGD-CE (one) / APGD-T (one per target) draw from seed.

    The library's own start function (AutoAttack's ℓ∞ form) with the keys `apgd` and
    `apgd_targeted` derive: restart 0 of key (APGD-CE), of fold_in(key, j) for target j.
    `_check_starts` confirms the first against the library's result with 0 steps.
    """
    from jaxrobust.attacks.apgd import _reference_linf_start

    init = _reference_linf_start(jr.linf(eps)).init
    key = jax.random.key(seed)
    keys = [key] if attack == "apgd-ce" else [jax.random.fold_in(key, j) for j in range(n_targets)]
    return [np.asarray(init(jax.random.fold_in(k, 0), jnp.asarray(x))) for k in keys]


def _check_starts(logits_fn, x, y, eps: float) -> None:
    """With 0 steps APGD-CE returns its start: the benchmark's reconstruction must equal it."""
    got = apgd(logits_fn, x, y, jax.random.key(0), threat=jr.linf(eps), steps=0).delta
    want = jaxrobust_starts(x, eps, "apgd-ce", 0, 1)[0]
    if not np.array_equal(np.asarray(got), want):
        raise AssertionError("jaxrobust_starts no longer matches the library's APGD start")


def torch_counts_same_starts(model, x, y, eps, attack, seeds, steps: int, n_targets: int):
    """The reference algorithm from jaxrobust's own random starts (common random numbers).

    Runs the reference's `attack_single_run` (the whole APGD iteration) with
    `x_init = x + start`, inside the outer loop of its `perturb` (1 restart; APGD-T: target
    j = the (j+2)-th largest clean logit, on the points still robust). With the starts equal,
    any difference in the robust points is the algorithm's, not the draw's. Returns the robust
    counts and the robust masks, one per seed.
    """
    import torch
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    xt, yt = torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(y)).long()
    counts, masks = [], []
    for seed in seeds:
        starts = [torch.from_numpy(s) for s in jaxrobust_starts(x, eps, attack, seed, n_targets)]
        if attack == "apgd-ce":
            adversary = APGDAttack(
                model, n_iter=steps, norm="Linf", n_restarts=1, eps=eps, loss="ce", device="cpu"
            )
        else:
            adversary = APGDAttack_targeted(
                model, n_iter=steps, norm="Linf", n_restarts=1, eps=eps,
                n_target_classes=n_targets, device="cpu",
            )  # fmt: skip
        adversary.init_hyperparam(xt)
        with torch.no_grad():
            robust = model(xt).argmax(1) == yt
        for j, start in enumerate(starts):
            idx = robust.nonzero().flatten()
            if idx.numel() == 0:
                break
            if attack == "apgd-t":
                with torch.no_grad():
                    adversary.y_target = model(xt[idx]).sort(dim=1)[1][:, -(j + 2)]
            x_init = (xt[idx] + start[idx]).clamp(0.0, 1.0)
            _, acc, _, _ = adversary.attack_single_run(xt[idx], yt[idx], x_init=x_init)
            robust[idx[acc == 0]] = False
        counts.append(int(robust.sum()))
        masks.append(robust.numpy())
    return counts, masks


def torch_robust_on(model, x, y, x_adv) -> int:
    """Robust count of jaxrobust's examples under the PyTorch copy (a cross-check)."""
    import torch

    xt, yt = torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(y)).long()
    with torch.no_grad():
        robust = (model(xt).argmax(1) == yt) & (model(torch.from_numpy(x_adv)).argmax(1) == yt)
    return int(robust.sum())


def measure(label: str, run_dir: Path, eps: float, seeds, steps, n_targets, examples) -> dict:
    run, state, _ = restore_run(run_dir)
    x, y = load_split("digits", "test", limit=examples)
    logits_fn = state.logits_fn()
    model = None
    if HAVE_PEERS:
        import _torch_peers

        model = _torch_peers.mlp(state.params, run.model.mean, run.model.std)
    row = {
        "model": label,
        "hidden": list(run.cfg.model.kwargs.hidden),
        "objective": run.cfg.objective,
        "eps": eps,
        "num_examples": len(y),
        "clean_correct": int((np.argmax(logits_fn(x), -1) == y).sum()),
        "attacks": {},
    }
    _check_starts(logits_fn, x, y, eps)
    for attack in ("apgd-ce", "apgd-t"):
        t0 = time.perf_counter()
        counts, advs, masks = jax_counts(logits_fn, x, y, eps, attack, seeds, steps, n_targets)
        res = {"jaxrobust": {"counts": counts, "seconds": time.perf_counter() - t0}}
        res["jaxrobust"]["mean"], res["jaxrobust"]["se"] = _mean_se(counts)
        if model is not None:
            res["jaxrobust"]["counts_by_pytorch_copy"] = [
                torch_robust_on(model, x, y, a) for a in advs
            ]
            t0 = time.perf_counter()
            ref = torch_counts(model, x, y, eps, attack, seeds, steps, n_targets)
            res["reference"] = {"counts": ref, "seconds": time.perf_counter() - t0}
            res["reference"]["mean"], res["reference"]["se"] = _mean_se(ref)
            jm, rm = res["jaxrobust"]["mean"], res["reference"]["mean"]
            res["ratio_jax_over_reference"] = jm / rm if rm else float("nan")
            res["jaxrobust_at_most_reference"] = jm <= rm
            # Independent draws: the difference of the means and its standard error.
            res["difference"], res["difference_se"] = (
                jm - rm,
                math.hypot(res["jaxrobust"]["se"], res["reference"]["se"]),
            )
            t0 = time.perf_counter()
            same, same_masks = torch_counts_same_starts(
                model, x, y, eps, attack, seeds, steps, n_targets
            )
            paired = {"counts": same, "seconds": time.perf_counter() - t0}
            paired["mean"], paired["se"] = _mean_se(same)
            # Per seed, the points one implementation leaves robust and the other breaks.
            paired["points_differing"] = [
                int((a != b).sum()) for a, b in zip(masks, same_masks, strict=True)
            ]
            paired["jaxrobust_at_most_reference"] = res["jaxrobust"]["mean"] <= paired["mean"]
            res["reference_same_starts"] = paired
        row["attacks"][attack] = res
        print(label, attack, {k: v for k, v in res.items()}, flush=True)
    return row


def _markdown(payload: dict) -> str:
    lines = [
        f"# APGD strength vs the reference, {payload['date']} ({payload['machine']})",
        "",
        f"{payload['workload']}",
        "",
        "Robust points (of the test images; lower is a stronger attack), per seed "
        f"{payload['seeds']}, and mean ± standard error over seeds.",
        "",
        "| model | ε | attack | jaxrobust per seed | jaxrobust | reference per seed "
        "| reference | difference | jaxrobust ≤ reference |",
        "|---|---:|---|---|---:|---|---:|---:|---|",
    ]
    for row in payload["results"]:
        for attack, r in row["attacks"].items():
            j = r["jaxrobust"]
            ref = r.get("reference")
            cells = [
                f"{row['model']} ({row['clean_correct']}/{row['num_examples']} clean)",
                f"{row['eps']:g}",
                attack,
                " ".join(map(str, j["counts"])),
                f"{j['mean']:.1f} ± {j['se']:.1f}",
                " ".join(map(str, ref["counts"])) if ref else "–",
                f"{ref['mean']:.1f} ± {ref['se']:.1f}" if ref else "–",
                f"{r['difference']:+.1f} ± {r['difference_se']:.1f}" if ref else "–",
                ("yes" if r["jaxrobust_at_most_reference"] else "**no**") if ref else "–",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    if not payload.get("torch"):
        lines += ["", "PyTorch peers not installed: jaxrobust only."]
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "Independent draws differ in their random starts as well as in the algorithm. With "
        "common random numbers, the reference's iteration (`attack_single_run`) started from "
        "jaxrobust's own random starts (`x_init`), any difference is the algorithm's:",
        "",
        "| model | attack | jaxrobust per seed | reference, same starts, per seed | "
        "points differing per seed | jaxrobust ≤ reference |",
        "|---|---|---|---|---|---|",
    ]
    for row in payload["results"]:
        for attack, r in row["attacks"].items():
            same = r["reference_same_starts"]
            cells = [
                row["model"],
                attack,
                " ".join(map(str, r["jaxrobust"]["counts"])),
                " ".join(map(str, same["counts"])),
                " ".join(map(str, same["points_differing"])),
                "yes" if same["jaxrobust_at_most_reference"] else "**no**",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per attack")
    parser.add_argument(
        "--runs", nargs=2, type=Path, metavar=("PGD_AT_DIR", "STANDARD_DIR"),
        help="use these trained run directories instead of training the two models",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke models, few steps (tests)")
    parser.add_argument(
        "--out", default=f"benchmarks/results/{time.strftime('%Y-%m-%d')}-apgd_strength"
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    steps, n_targets, examples = STEPS, N_TARGETS, None
    if args.quick:
        steps, n_targets, examples = QUICK["steps"], QUICK["n_targets"], QUICK["examples"]
    seeds = list(range(args.seeds))
    payload = {
        "benchmark": "APGD-CE and APGD-T strength vs the reference AutoAttack implementation",
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "quick": args.quick,
        "seeds": seeds,
        "steps": steps,
        "restarts": 1,
        "n_target_classes": n_targets,
        "workload": (
            f"Digits MLP {'(smoke config, both rows)' if args.quick else '64-512-512-10'} "
            "trained by the main job's config (PGD-AT ℓ∞ ε = 0.1) and with objective=standard; "
            f"{examples or 360} digits test images; ℓ∞ ε = 0.2 (PGD-AT) and 0.1 (standard); "
            f"{steps} iterations, 1 restart, APGD-T over {n_targets} target classes; "
            "reference: pyautoattack APGDAttack / APGDAttack_targeted on a PyTorch copy."
        ),
        "results": [],
    }
    if HAVE_PEERS:
        import pyautoattack
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        payload["torch"] = torch.__version__
        payload["reference"] = f"pyautoattack {getattr(pyautoattack, '__version__', '0.2.0')}"
    else:
        print("PyTorch peers not installed (bash benchmarks/install_peers.sh): jaxrobust only")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, overrides, eps) in enumerate(MODELS):
            if args.runs:
                run_dir = args.runs[i]
            elif args.quick:
                run_dir = Path(tmp) / "smoke"
                if i == 0:
                    train_model(run_dir, QUICK["overrides"], "smoke")
            else:
                run_dir = Path(tmp) / label
                train_model(run_dir, overrides)
            payload["results"].append(
                measure(label, run_dir, eps, seeds, steps, n_targets, examples)
            )
    write_report(args.out, payload, _markdown(payload))
    print(_markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
