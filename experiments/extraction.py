"""Model extraction from a query-counting prediction API (Tramèr et al. 2016) and transfer
attacks from the substitute (Papernot et al. 2017), against query-based black-box attacks.

Victim: an MLP trained on the first `victim_train` records of the training split. The
attacker's query pool: the rest of the training split (never seen by the victim, and
checked disjoint from the test set: no pool image equals a test image). The attacker sees
the victim only through `jaxrobust.extract.prediction_api` (probabilities, or labels only),
which counts every query and refuses any over the budget.

- Extraction (`jaxrobust.extract.extract`): for each budget of `budgets` and each output
  kind, the pool points (random order) are queried and, once the pool is used up, Papernot's
  Jacobian-based augmentation (λ = `lam`) synthesises the rest of the budget; a fresh MLP
  substitute is trained on the answers (soft-label cross-entropy on probabilities, plain
  cross-entropy on labels). Score: test agreement, the fraction of the test points where
  the substitute's label equals the victim's (n = test size, binomial SE), per seed of the
  extraction (pool order and initialisation) and their mean (SE over seeds). A second
  curve ("jacobian_only") starts from `seed_size` pool points and synthesises the rest.
- Transfer (`jaxrobust.extract.transfer_attack`): PGD and APGD on the budget-`headline`
  substitutes (first seed), no victim query; success = the victim misclassifies x_adv,
  among the test points it classifies correctly (n, binomial SE). Baseline: random noise
  of the same norm (`jaxrobust.extract.noise_like`). Query-based black-box attacks on the
  victim at the same budget: Square (margin loss on the API's log-probabilities, which has
  the logits' margin) and Bandits-TD, with the extraction's whole budget *per example*,
  and Square with the same *total* budget spread over the attacked points.

    jaxrobust experiment extraction [--smoke] [--dataset digits|shapes] [--model mlp|bn_cnn]
                                    [--out DIR] [--seed S]

With `--model bn_cnn` (shapes only, settings `CNN`) the victim is the conv-BN CNN and the
substitute the same architecture trained on minibatches of the queries, results in
DIR/<dataset>_bn_cnn.*.

Writes DIR/<dataset>.json (keys `extraction.agreement_probs`, `extraction.agreement_labels`,
`extraction.transfer_success`, `extraction.noise_success` and the rest, every rate with its
n and SE) and DIR/<dataset>.png (agreement vs queries).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import jax
import jax.numpy as jnp
import numpy as np

import jaxrobust as jr
from jaxrobust import extract as X
from jaxrobust.data import get_info, load_split

NAME = "extraction"
DATASETS = ("digits", "shapes")
SETTINGS = {
    "full": {
        "victim_train": 737,
        "victim_hidden": (128, 128),
        "victim_steps": 800,
        "substitute_hidden": (256,),
        "substitute_steps": 500,
        "budgets": (100, 250, 500, 1000),
        "headline": 1000,
        "seeds": 3,
        "seed_size": 250,
        "lam": 0.1,
        "attack_steps": 100,
        "blackbox_points": None,  # every test point the victim classifies correctly
        "limit": None,
        "test": None,
        "dataset_kwargs": {},
    },
    "smoke": {
        "victim_train": 96,
        "victim_hidden": (32,),
        "victim_steps": 100,
        "substitute_hidden": (32,),
        "substitute_steps": 50,
        "budgets": (16, 48),
        "headline": 48,
        "seeds": 1,
        "seed_size": 8,
        "lam": 0.1,
        "attack_steps": 5,
        "blackbox_points": None,
        "limit": 128,
        "test": 64,
        "dataset_kwargs": {"num_train": 256, "num_test": 64},  # shapes only
    },
}
# `--model bn_cnn` (shapes): a victim that learns shapes (the MLP above reaches 12% there),
# the conv-BN CNN with the shapes trade-off's recipe (5000 training records, batch 32, Adam
# 2e-3, 1100 steps, about 7 epochs, trained in memory), and a substitute of the same
# architecture trained on minibatches of the queries (`FitConfig(batch_size=32)`: a step
# costs the same at every budget). The budgets go past the 1000 queries, up to
# 5000, because 1000 answers are far too few to copy a CNN that needed 5000 labelled images
# (measured: about 56% agreement from probabilities); the Jacobian-only curve is measured at
# the headline budget only. The query-based attacks run the victim's CNN for every query
# (372 s of a 21.4-minute run on all 731 correctly classified test points), so they attack
# the first 300 of those points; the transfer attacks and noise still use all of them.
CNN = {
    "full": {
        "victim_model": {"name": "bn_cnn", "kwargs": {"channels": (8, 16, 32)}},
        "victim_train": 5000,
        "victim_steps": 1100,
        "victim_batch": 32,
        "victim_lr": 2e-3,
        "substitute_model": {"name": "bn_cnn", "kwargs": {"channels": (8, 16, 32)}},
        "substitute_steps": 800,
        "substitute_batch": 32,
        "substitute_lr": 2e-3,
        "budgets": (250, 1000, 2500, 5000),
        "jacobian_budgets": (1000,),
        "test": 1000,
        "blackbox_points": 300,
    },
    "smoke": {
        "victim_model": {"name": "bn_cnn", "kwargs": {"channels": (4, 8)}},
        "victim_steps": 60,
        "victim_batch": 32,
        "victim_lr": 2e-3,
        "substitute_model": {"name": "bn_cnn", "kwargs": {"channels": (4, 8)}},
        "substitute_steps": 30,
        "substitute_batch": 16,
        "substitute_lr": 2e-3,
    },
}
THREAT = {"digits": ("l2", 1.0), "shapes": ("l2", 1.0)}
OUTPUTS = ("probs", "labels")


def _rate(hits: np.ndarray, how: str) -> dict:
    hits = np.asarray(hits, bool)
    if hits.size == 0:
        return {"value": None, "method": "measured", "n": 0, "se": None, "how": how}
    p = float(hits.mean())
    return C.measured(p, n=hits.size, se=float(C.mc_se(p, hits.size)), how=how)


def _over_seeds(entries: list[dict], how: str) -> dict:
    """Mean over seeds of per-seed rates, SE = std / sqrt(seeds) (None for one seed)."""
    v = np.array([e["value"] for e in entries], float)
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None
    out = C.measured(float(v.mean()), n=len(v), se=se, how=how)
    out["per_seed"] = [e["value"] for e in entries]
    out["test_points"] = entries[0]["n"]
    return out


def _predict(f, x: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [np.asarray(jnp.argmax(f(jnp.asarray(x[i : i + 512])), -1)) for i in range(0, len(x), 512)]
    )


def _describe(m: dict) -> str:
    return f"{m['name']}({', '.join(f'{k}={v}' for k, v in m['kwargs'].items())})"


def _describe_victim(s: dict, nv: int) -> str:
    if "victim_model" in s:
        return (
            f"{_describe(s['victim_model'])}, Adam {s['victim_lr']} cosine, {s['victim_steps']} "
            f"steps of batch {s['victim_batch']} (in memory, the library's train step), on "
            f"train records [0, {nv})"
        )
    return (
        f"MLP {tuple(s['victim_hidden'])}, full-batch AdamW 3e-3, {s['victim_steps']} steps, "
        f"on train records [0, {nv})"
    )


def _cnn_victim(s: dict, ds: str, x: np.ndarray, y: np.ndarray, key):
    """The `victim_model` trained in memory (poisoning's trainer: the library's TrainState
    and train step, BatchNorm statistics kept); returns its inference-mode logits_fn."""
    import _poisoning_parts as PP

    info = get_info(ds)
    m = s["victim_model"]
    model = PP.make_model(info, {"architecture": m["name"], "model_kwargs": m["kwargs"]})
    steps, batch, lr = s["victim_steps"], s["victim_batch"], s["victim_lr"]
    train = PP.make_trainer(
        model, tuple(x.shape[1:]), steps=steps, batch=batch, lr=lr, over_seeds="loop"
    )
    n = len(x)
    v = train(
        jnp.asarray(x)[None],
        jnp.asarray(y, jnp.int32)[None],
        jnp.ones((1, n), bool),
        jax.random.split(key, 1),
    )
    return PP.logits_fn(model, PP.seed_params(v, 0))


def figure(curves: dict, path: Path, title: str) -> None:
    fig, axes = C.figure(1, 1, (6.0, 4.2))
    ax = axes[0, 0]
    styles = {"probs": "-o", "labels": "-s"}
    for name, curve in curves.items():
        for out, pts in curve.items():
            b = [p["budget"] for p in pts]
            v = np.array([100 * p["agreement"]["value"] for p in pts])
            se = np.array([100 * (p["agreement"]["se"] or 0.0) for p in pts])
            ls = styles[out] if name == "pool" else styles[out].replace("-", "--")
            ax.errorbar(b, v, yerr=se, fmt=ls, capsize=3, label=f"{name}, {out}")
    ax.set_xscale("log")
    ax.set_xlabel("queries to the prediction API")
    ax.set_ylabel("test agreement with the victim (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=8)
    C.save(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dataset", choices=DATASETS, default="digits")
        parser.add_argument("--model", choices=("mlp", "bn_cnn"), default="mlp",
                            help="bn_cnn: a CNN victim and substitute (shapes; CNN)")  # fmt: skip

    args = C.parse_args(NAME, argv, __doc__, extra)
    t0 = time.perf_counter()
    ds = args.dataset
    size = "smoke" if args.smoke else "full"
    s = dict(SETTINGS[size])
    cnn = args.model == "bn_cnn"
    if cnn:
        if ds != "shapes":
            raise SystemExit("--model bn_cnn is a shapes option")
        s.update(CNN[size])
    kw = dict(s["dataset_kwargs"]) if ds == "shapes" else {}
    s["dataset_kwargs"] = kw
    x_test, y_test = load_split(ds, "test", limit=s["test"], dataset_kwargs=kw or None)
    x_train, y_train = load_split(ds, "train", limit=s["limit"], dataset_kwargs=kw or None)
    num_classes = get_info(ds).num_classes
    nv = s["victim_train"]
    if nv >= len(x_train):
        raise jr.ConfigError(f"victim_train {nv} leaves no query pool of {len(x_train)} records")
    pool = x_train[nv:]
    shared = X.overlap(pool, x_test)
    pool = pool[~shared]
    X.check_disjoint(pool, x_test)
    norm, eps = THREAT[ds]
    threat = jr.l2(eps) if norm == "l2" else jr.linf(eps)
    seconds: dict[str, float] = {}
    key = jax.random.key(args.seed)

    # The victim.
    t = time.perf_counter()
    if cnn:
        victim = _cnn_victim(s, ds, x_train[:nv], y_train[:nv], jax.random.fold_in(key, 0))
        sub = s["substitute_model"]
        fit = X.FitConfig(
            steps=s["substitute_steps"],
            lr=s["substitute_lr"],
            model=sub["name"],
            model_kwargs=tuple(sub["kwargs"].items()),
            batch_size=s["substitute_batch"],
        )
    else:
        _, victim, _ = X.fit_classifier(
            jax.random.fold_in(key, 0),
            x_train[:nv],
            jax.nn.one_hot(y_train[:nv], num_classes),
            fit=X.FitConfig(hidden=tuple(s["victim_hidden"]), steps=s["victim_steps"]),
        )
        fit = X.FitConfig(hidden=tuple(s["substitute_hidden"]), steps=s["substitute_steps"])
    victim_pred = _predict(victim, x_test)
    correct = victim_pred == y_test
    seconds["victim"] = time.perf_counter() - t

    def run(output: str, budget: int, seed: int, seed_size: int | None):
        api = X.prediction_api(victim, output=output, budget=budget, num_classes=num_classes)
        e = X.extract(
            api,
            pool,
            jax.random.fold_in(key, 1000 + seed),
            budget=budget,
            seed_size=seed_size,
            augmentation="jacobian",
            lam=s["lam"],
            fit=fit,
            # Minibatch fits: one compiled program for every budget (a step's cost does not
            # depend on the padding); full-batch fits train on exactly the queries.
            capacity=max(s["budgets"]) if fit.batch_size else None,
        )
        if e.count > budget:  # the API refuses this; checked here as well
            raise AssertionError(f"extraction spent {e.count} > {budget} queries")
        return e

    # Agreement vs queries.
    curves: dict[str, dict[str, list]] = {"pool": {}, "jacobian_only": {}}
    subs: dict[str, X.Extraction] = {}
    for name in curves:
        t = time.perf_counter()
        for output in OUTPUTS:
            pts = []
            for budget in s["budgets"]:
                seeds = s["seeds"] if (name == "pool" and budget == s["headline"]) else 1
                if name == "jacobian_only" and (
                    budget <= s["seed_size"] or budget not in s.get("jacobian_budgets", (budget,))
                ):
                    continue
                per_seed = []
                for seed in range(seeds):
                    e = run(output, budget, seed, s["seed_size"] if name != "pool" else None)
                    agree = X.agreement(e.logits_fn, victim, x_test)
                    per_seed.append(
                        _rate(agree, f"test agreement with the victim ({output} API)")
                        | {"queries": e.count, "pool_queries": e.pool_queries}
                    )
                    if name == "pool" and budget == s["headline"] and seed == 0:
                        subs[output] = e
                point = {
                    "budget": budget,
                    "queries": per_seed[0]["queries"],
                    "pool_queries": per_seed[0]["pool_queries"],
                    "agreement": per_seed[0],
                }
                if seeds > 1:
                    point["agreement_over_seeds"] = _over_seeds(
                        per_seed, f"mean over {seeds} extraction seeds of the test agreement"
                    )
                pts.append(point)
            curves[name][output] = pts
        seconds[f"curve_{name}"] = time.perf_counter() - t

    # Transfer attacks from the headline substitutes, noise, query-based black-box attacks.
    t = time.perf_counter()
    xc, yc = x_test[correct], y_test[correct]
    kt = jax.random.fold_in(key, 2)
    transfer = {}
    for output, e in subs.items():
        for attack in ("pgd", "apgd"):
            x_adv = X.transfer_attack(
                e.logits_fn,
                xc,
                yc,
                jax.random.fold_in(kt, len(transfer)),
                threat=threat,
                attack=attack,
                steps=s["attack_steps"],
            )
            transfer[f"{attack}_from_{output}_substitute"] = _rate(
                _predict(victim, x_adv) != yc,
                f"victim misclassifies {attack.upper()}-{s['attack_steps']} examples crafted on "
                f"the {output} substitute ({norm} eps {eps}), among the test points the victim "
                "classifies correctly",
            )
    noisy = X.noise_like(xc, jax.random.fold_in(key, 3), threat)
    noise = _rate(
        _predict(victim, noisy) != yc,
        f"victim misclassifies x + random noise of {norm} norm {eps}, among the test points "
        "it classifies correctly",
    )
    seconds["transfer"] = time.perf_counter() - t

    t = time.perf_counter()
    budget = s["headline"]
    xb, yb = jnp.asarray(xc[: s["blackbox_points"]]), jnp.asarray(yc[: s["blackbox_points"]])
    api = X.prediction_api(victim, output="probs", budget=budget * len(yb), num_classes=num_classes)

    def scores(z):  # what a probability API gives: log-probabilities (same margin as logits)
        return jnp.log(jnp.clip(api.answer(z), 1e-30, 1.0))

    ks = jax.random.fold_in(key, 4)
    sq = jr.square(scores, xb, yb, ks, threat=threat, queries=budget)
    per_total = max(budget // len(yb), 1)
    where = f"among the first {len(yb)} test points the victim classifies correctly"
    sq_total = jr.square(scores, xb, yb, ks, threat=threat, queries=per_total)
    bandits = jr.query_limited_attack(
        scores,
        xb,
        yb,
        ks,
        threat=threat,
        estimator="bandits" if xc.ndim == 4 else "nes",
        max_queries=budget,
    )
    blackbox = {
        "square_per_example_budget": _rate(
            np.asarray(sq.success),
            f"Square ({norm} eps {eps}, margin loss) with {budget} queries per example, {where}",
        )
        | {"mean_queries": float(np.mean(np.asarray(sq.queries))), "queries_per_example": budget},
        "bandits_per_example_budget": _rate(
            np.asarray(bandits.result.success),
            f"Bandits-TD ({norm} eps {eps}, cross-entropy) with {budget} queries per example, "
            + where,
        )
        | {
            "mean_queries": float(np.mean(np.asarray(bandits.queries))),
            "queries_per_example": budget,
        },
        "square_equal_total_budget": _rate(
            np.asarray(sq_total.success),
            f"Square with {per_total} queries per example: the extraction's {budget} queries "
            f"in total spread over the {len(yb)} attacked points",
        )
        | {"queries_per_example": per_total, "queries_total": per_total * len(yb)},
    }
    seconds["blackbox"] = time.perf_counter() - t

    head = {o: next(p for p in curves["pool"][o] if p["budget"] == s["headline"]) for o in OUTPUTS}
    tr = transfer["pgd_from_probs_substitute"]
    extraction = {
        "agreement_probs": head["probs"]["agreement"],
        "agreement_labels": head["labels"]["agreement"],
        "agreement_probs_over_seeds": head["probs"].get("agreement_over_seeds"),
        "agreement_labels_over_seeds": head["labels"].get("agreement_over_seeds"),
        "queries": head["probs"]["queries"],
        "budget": s["headline"],
        "transfer_success": tr,
        "noise_success": noise,
        "transfer_over_noise": (tr["value"] / noise["value"]) if noise["value"] else None,
        "transfer": transfer,
        "blackbox": blackbox,
        "eps": eps,
        "norm": norm,
        "budgets": list(s["budgets"]),
        "curves": curves,
    }
    data = C.header(
        NAME,
        args.smoke,
        args.seed,
        {
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()},
            "dataset": ds,
            "test_size": len(y_test),
            "pool_size": len(pool),
            "pool_dropped_as_test_duplicates": int(shared.sum()),
            "victim": _describe_victim(s, nv),
            "substitute": (
                f"{_describe(s['substitute_model'])}, AdamW {s['substitute_lr']}, "
                f"{s['substitute_steps']} steps of batch {s['substitute_batch']} drawn from the "
                "queries"
                if cnn
                else f"MLP {tuple(s['substitute_hidden'])}, full-batch AdamW 3e-3, "
                f"{s['substitute_steps']} steps"
            )
            + ", soft-label CE (probs) / CE (labels)",
            "pool": f"train records [{nv}, {len(x_train)}), none equal to a test image",
        },
    )
    data["victim"] = {"clean_accuracy": _rate(correct, "victim test accuracy")}
    data["extraction"] = extraction
    data["seconds"] = seconds
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = C.result_tag(ds, args.model, args.smoke)
    figure(
        curves,
        out / f"{tag}.png",
        f"{ds}: substitute/victim test agreement vs queries (n = {len(y_test)}, ± binomial SE)\n"
        f"pool: {len(pool)} pool images, then Jacobian augmentation;\n"
        f"jacobian_only: {s['seed_size']} pool images, then Jacobian augmentation",
    )
    lines = [
        f"victim accuracy {correct.mean():.3f}; pool {len(pool)}",
        *(
            f"{name:>14} {o:>6}: "
            + ", ".join(f"{p['budget']}: {p['agreement']['value']:.3f}" for p in pts)
            for name, c in curves.items()
            for o, pts in c.items()
        ),
        *(f"{k}: {v['value']:.3f} (n {v['n']})" for k, v in transfer.items()),
        f"noise: {noise['value']:.3f} (n {noise['n']})",
        *(f"{k}: {v['value']:.3f}" for k, v in blackbox.items()),
    ]
    C.finish(out, tag, data, t0, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
