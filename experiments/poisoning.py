"""Data poisoning end to end: backdoors, spectral-signature detection, feature collision.

- Dirty-label backdoor (Gu et al. 2017): a corner checkerboard trigger on `dirty_rate` of
  the training set (non-target images), relabelled to the target class. Attack success
  (triggered non-target test images classified as the target) and clean accuracy, against
  a model trained on clean data with the same seeds.
- Label-consistent backdoor (Turner, Tsipras & Madry 2019): `lc_rate` of the training set,
  all target-class images, labels unchanged: trigger only, and trigger after an ℓ2 PGD
  perturbation against a standard and against a PGD-AT (robust) source model.
- Spectral signatures (Tran, Li & Madry 2018) against the dirty-label poison: per class,
  score the learned representations of the poisoned model (`spectral_layer`: the MLP's
  penultimate layer; bn_cnn's last conv block before pooling), remove ⌊1.5·ε·n_c⌋ per
  class (ε: the poisoned fraction of the target class, the bound the defender is assumed
  to know, as in the paper), retrain, repeat for `rounds` rounds. Recall and precision of
  the removal and the retrained model's attack success and clean accuracy per round; the
  headline keys are round `headline_round`'s.
- Feature collision (Shafahi et al. 2018): for random correctly classified test targets, 1
  or K poisons of another (random) class crafted with `jaxrobust.optimize` to collide with
  the target in the clean model's penultimate layer; the last layer is retrained on the
  clean training set plus the poisons; success = the target is classified as the base
  class. The unoptimised bases are the control.

Every model is the library's MLP (with `--model bn_cnn`, shapes only: its conv-BN CNN,
settings `CNN`) trained in memory (`TrainState`, `make_train_step`,
Adam, vmapped over seeds); the poisoned training sets are also written as derived tfds
datasets (splits train / test / test_triggered) and the dirty-label one is trained once
more with the library's training loop (`jaxrobust train`'s code), whose accuracy on
test_triggered is the attack success (`loop_check`).

    jaxrobust experiment poisoning [--smoke] [--dataset digits|shapes] [--model mlp|bn_cnn]
                                   [--out DIR] [--seed S]

Writes DIR/<dataset>.json (DIR/<dataset>_bn_cnn.* with the CNN; each rate with n and SE:
mean over seeds, SE from the seed to seed spread), DIR/<dataset>.png (poisoned examples,
feature-collision poisons) and DIR/<dataset>_scores.png (spectral scores of the target
class before and after removal).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import _poisoning_parts as PP
import jax
import jax.numpy as jnp
import numpy as np

import jaxrobust as jr
from jaxrobust import poison
from jaxrobust.data import get_info, load_split
from jaxrobust.poison.targeted import collision_targets, feature_collision

NAME = "poisoning"
DATASETS = ("digits", "shapes")
_IMAGES = {  # trigger side, LC ℓ2 radius, robust source's ℓ∞ ε, per dataset
    "digits": {"trigger_size": 3, "lc_eps": 2.0, "robust_eps": 0.1},
    "shapes": {"trigger_size": 4, "lc_eps": 3.0, "robust_eps": 8 / 255},
}
SETTINGS = {
    "full": {
        "hidden": (256, 256),
        "steps": 2000,
        "batch": 64,
        "lr": 2e-3,
        "seeds": 3,
        "target": 0,
        "dirty_rate": 0.03,
        "lc_rate": 0.05,
        "lc_pgd_steps": 20,
        "robust_pgd_steps": 10,
        "multiplier": 1.5,
        "rounds": 2,
        "headline_round": 1,
        "spectral_layer": "features",
        "collision_targets": 20,
        "collision_poisons": (1, 5),
        "collision_beta": 0.1,
        "collision_steps": 200,
        "collision_lr": 0.02,
        "head_steps": 300,
        "head_lr": 1e-3,
        "loop_epochs": 30,
        "loop_hidden": (256, 256),
        "dataset_kwargs": {},
    },
    "smoke": {
        "hidden": (32,),
        "steps": 150,
        "batch": 64,
        "lr": 3e-3,
        "seeds": 1,
        "target": 0,
        "dirty_rate": 0.05,
        "lc_rate": 0.05,
        "lc_pgd_steps": 3,
        "robust_pgd_steps": 2,
        "multiplier": 1.5,
        "rounds": 1,
        "headline_round": 1,
        "spectral_layer": "features",
        "collision_targets": 3,
        "collision_poisons": (1,),
        "collision_beta": 0.1,
        "collision_steps": 10,
        "collision_lr": 0.02,
        "head_steps": 10,
        "head_lr": 1e-3,
        "loop_epochs": 1,
        "loop_hidden": (32,),
        "dataset_kwargs": {"num_train": 256, "num_test": 64},  # shapes only
    },
}
# `--model bn_cnn` (shapes): every model the conv-BN CNN that learns shapes (the MLP above
# stays near chance there), with the shapes trade-off's recipe: 5000 generated images,
# batch 32, Adam 2e-3, 1100 steps (about 7 epochs); the robust source with 3 PGD steps
# and the loop check with 7 epochs keep a full run inside 20 minutes on 2 CPU cores.
# Spectral signatures read the last conv block's map (8x8x32, flattened) rather than the
# pooled vector after it: global average pooling mixes the trigger's corner response
# with the whole image (measured ad hoc on one dirty-label model: round-1 recall 31% on
# the pooled features, 98-100% on any block's map, 31-41% on the pixels); the run
# reports the round-1 recall of all three (`spectral.round1_recall_by_representation`).
CNN = {
    "full": {
        "architecture": "bn_cnn",
        "model_kwargs": {"channels": (8, 16, 32)},
        "steps": 1100,
        "batch": 32,
        "lr": 2e-3,
        "robust_pgd_steps": 3,
        "loop_epochs": 7,
        "dataset_kwargs": {"num_train": 5000, "num_test": 1000},
        "spectral_layer": "block3",
        "rounds": 1,  # round 1 already removes 99.8% of the poison (measured)
    },
    "smoke": {
        "architecture": "bn_cnn",
        "model_kwargs": {"channels": (4, 8)},
        "steps": 60,
        "batch": 32,
        "lr": 2e-3,
        "spectral_layer": "block2",
    },
}


def _rates(metrics: list, how: str) -> dict:
    return {
        "attack_success": PP.proportion(
            [m.hits for m in metrics],
            how + ": fraction of triggered non-target test images classified as the target",
        ),
        "clean_accuracy": PP.proportion(
            [m.correct for m in metrics], how + ": accuracy on the clean test set"
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dataset", choices=DATASETS, default="digits")
        parser.add_argument("--work", default=None, help="derived datasets (default OUT/work)")
        parser.add_argument("--dirty-rate", type=float, default=None,
                            help="dirty-label poison rate (default: SETTINGS)")  # fmt: skip
        parser.add_argument("--model", choices=("mlp", "bn_cnn"), default="mlp",
                            help="bn_cnn: every model the CNN (shapes; CNN)")  # fmt: skip

    args = C.parse_args(NAME, argv, __doc__, extra)
    t0 = time.perf_counter()
    size = "smoke" if args.smoke else "full"
    s = dict(SETTINGS[size])
    s.update(_IMAGES[args.dataset])
    if args.model == "bn_cnn":
        if args.dataset != "shapes":
            raise SystemExit("--model bn_cnn is a shapes option")
        s.update(CNN[size])
    if args.dirty_rate is not None:
        s["dirty_rate"] = args.dirty_rate
    ds = args.dataset
    kw = dict(s["dataset_kwargs"]) if ds == "shapes" else {}
    s["dataset_kwargs"] = kw
    info = get_info(ds)
    x_np, y_np = load_split(ds, "train", dataset_kwargs=kw or None)
    xt_np, yt_np = load_split(ds, "test", dataset_kwargs=kw or None)
    x, y = jnp.asarray(x_np), jnp.asarray(y_np).astype(jnp.int32)
    xt, yt = jnp.asarray(xt_np), jnp.asarray(yt_np).astype(jnp.int32)
    n, num_classes, target, seeds = x.shape[0], info.num_classes, s["target"], s["seeds"]
    tag = C.result_tag(ds, args.model, args.smoke)
    out = Path(args.out)
    work = (Path(args.work) if args.work else out / "work") / tag
    seconds: dict[str, float] = {}
    key = jax.random.key(args.seed)
    k_train, k_poison, k_collide = jax.random.split(key, 3)
    train_keys = jax.random.split(k_train, seeds)
    poison_keys = jax.random.split(k_poison, seeds)

    model = PP.make_model(info, s)
    shape = tuple(x.shape[1:])
    trainer = PP.make_trainer(
        model, shape, steps=s["steps"], batch=s["batch"], lr=s["lr"], over_seeds=PP.over_seeds(s)
    )
    trig = poison.make_trigger(shape, size=s["trigger_size"], location="bottom_right")
    all_kept = jnp.ones((seeds, n), bool)

    def train_on(xs, ys, keep=all_kept):
        return trainer(xs, ys, keep, train_keys)

    def evaluate(params) -> list:
        return [
            poison.backdoor_metrics(
                PP.logits_fn(model, PP.seed_params(params, i)),
                xt_np,
                yt_np,
                trigger=trig,
                target=target,
            )
            for i in range(seeds)
        ]

    def tick(name, t):
        seconds[name] = round(time.perf_counter() - t, 2)

    data = C.header(
        NAME,
        args.smoke,
        args.seed,
        {
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()},
            "dataset": ds,
            "train_size": n,
            "test_size": int(yt.shape[0]),
            "model": f"{PP.describe_model(s)}, Adam {s['lr']} cosine, {s['steps']} "
            f"steps of batch {s['batch']}, standard training, {seeds} seeds (the same seeds for "
            "every training set)",
            "trigger": f"{s['trigger_size']}x{s['trigger_size']} checkerboard, bottom-right "
            "corner, amplitude 1",
        },
    )

    # ---------------------------------------------------------------- clean and dirty label
    t = time.perf_counter()
    stack = lambda a: jnp.broadcast_to(a, (seeds, *a.shape))  # noqa: E731
    clean_params = train_on(stack(x), stack(y))
    clean = evaluate(clean_params)
    tick("clean", t)
    t = time.perf_counter()
    dirty = [
        poison.dirty_label(
            poison_keys[i],
            x,
            y,
            target=target,
            rate=s["dirty_rate"],
            trigger=trig,
            num_classes=num_classes,
        )
        for i in range(seeds)
    ]
    dirty_params = train_on(jnp.stack([p.x for p in dirty]), jnp.stack([p.y for p in dirty]))
    dirty_m = evaluate(dirty_params)
    tick("dirty_label", t)
    count = poison.poison_count(s["dirty_rate"], n)
    clean_r = _rates(clean, "model trained on the clean training set")
    dirty_r = _rates(dirty_m, f"model trained on the dirty-label set ({count} poisons)")
    backdoor = {
        "rate": s["dirty_rate"],
        "count": count,
        "train_size": n,
        "attack_success": dirty_r["attack_success"],
        "clean_accuracy": dirty_r["clean_accuracy"],
        "clean_model_accuracy": clean_r["clean_accuracy"],
        "clean_model_attack_success": clean_r["attack_success"],
        "accuracy_drop_pp": 100
        * (clean_r["clean_accuracy"]["value"] - dirty_r["clean_accuracy"]["value"]),
    }

    # ---------------------------------------------------------------------- label-consistent
    t = time.perf_counter()
    robust_trainer = PP.make_trainer(
        model,
        shape,
        steps=s["steps"],
        batch=s["batch"],
        lr=s["lr"],
        adversarial=jr.linf(s["robust_eps"]),
        pgd_steps=s["robust_pgd_steps"],
        over_seeds=PP.over_seeds(s),
    )
    robust_params = robust_trainer(x[None], y[None], all_kept[:1], train_keys[:1])
    robust_fn = PP.logits_fn(model, PP.seed_params(robust_params, 0))
    standard_fn = PP.logits_fn(model, PP.seed_params(clean_params, 0))
    source_accuracy = {
        name: PP.proportion(
            [np.asarray(jnp.argmax(f(xt), -1) == yt)],
            f"the {name} source model's accuracy on the clean test set",
        )
        for name, f in (("standard", standard_fn), ("robust", robust_fn))
    }
    tick("robust_source", t)
    sources = {"trigger_only": None, "standard_source": standard_fn, "robust_source": robust_fn}
    lc, lc_sets = {}, {}
    lc_count = poison.poison_count(s["lc_rate"], n)
    for name, src in sources.items():
        t = time.perf_counter()
        sets = [
            poison.label_consistent(
                jax.random.fold_in(poison_keys[i], 1),
                x,
                y,
                target=target,
                rate=s["lc_rate"],
                trigger=trig,
                num_classes=num_classes,
                logits_fn=src,
                threat=None if src is None else jr.l2(s["lc_eps"]),
                steps=s["lc_pgd_steps"],
            )
            for i in range(seeds)
        ]
        lc_sets[name] = sets
        m = evaluate(train_on(jnp.stack([p.x for p in sets]), stack(y)))
        what = (
            "no perturbation"
            if src is None
            else f"l2 PGD eps {s['lc_eps']}, {s['lc_pgd_steps']} steps, against the "
            f"{name.split('_')[0]} source model"
        )
        lc[name] = {"perturbation": what, **_rates(m, f"label-consistent ({what})")}
        tick(f"label_consistent_{name}", t)
    backdoor["label_consistent"] = {
        "rate": s["lc_rate"],
        "count": lc_count,
        "target_class_size": int(np.sum(y_np == target)),
        "source_models": {
            "standard": "the clean model (seed 0)",
            "robust": f"PGD-AT linf eps {s['robust_eps']}, "
            f"{s['robust_pgd_steps']} steps, same budget",
        },
        "source_accuracy": source_accuracy,
        **lc,
    }

    # ------------------------------------------------------------------ spectral signatures
    t = time.perf_counter()
    target_size = [int(np.sum(np.asarray(p.y) == target)) for p in dirty]
    eps_def = [count / ts for ts in target_size]
    keep = all_kept
    params = dirty_params
    rounds, scores_fig = [], {}
    for r in range(s["rounds"]):
        new_keep, scores = [], []
        for i in range(seeds):
            reps = PP.features(model, PP.seed_params(params, i), dirty[i].x, s["spectral_layer"])
            sc = poison.spectral_scores(reps, dirty[i].y, num_classes, keep[i])
            new_keep.append(
                poison.remove_top(
                    sc,
                    dirty[i].y,
                    keep[i],
                    num_classes=num_classes,
                    eps=eps_def[i],
                    multiplier=s["multiplier"],
                )
            )
            scores.append(np.asarray(sc))
        scores_fig[r] = (scores[0], np.asarray(keep[0]))
        keep = jnp.stack(new_keep)
        dets = [poison.detection(~np.asarray(keep[i]), dirty[i].poisoned) for i in range(seeds)]
        params = train_on(jnp.stack([p.x for p in dirty]), jnp.stack([p.y for p in dirty]), keep)
        m = evaluate(params)
        rr = _rates(m, f"retrained after round {r + 1} of removal")
        rounds.append(
            {
                "round": r + 1,
                "recall": C.measured(
                    float(np.mean([d.recall for d in dets])),
                    n=seeds * count,
                    se=_seed_se([d.recall for d in dets]),
                    how="removed poisons / poisons, cumulative over rounds, mean over seeds",
                ),
                "precision": C.measured(
                    float(np.mean([d.precision for d in dets])),
                    n=sum(d.removed for d in dets),
                    se=_seed_se([d.precision for d in dets]),
                    how="removed poisons / removed examples (all classes), "
                    "cumulative, mean over seeds",
                ),
                "target_class_precision": float(
                    np.mean(
                        [
                            d.removed_poison
                            / max(
                                1,
                                int(
                                    np.sum(
                                        ~np.asarray(keep[i]) & (np.asarray(dirty[i].y) == target)
                                    )
                                ),
                            )
                            for i, d in enumerate(dets)
                        ]
                    )
                ),
                "removed": [d.removed for d in dets],
                "removed_poison": [d.removed_poison for d in dets],
                "attack_success_after": rr["attack_success"],
                "clean_accuracy_after": rr["clean_accuracy"],
            }
        )
    # The same first round on other representations of the same dirty-label models (no
    # retraining): how much the choice of representation matters.
    candidates = {s["spectral_layer"]: s["spectral_layer"], "features": "features", "pixels": None}
    by_rep = {}
    for name, layer in candidates.items():
        dets = []
        for i in range(seeds):
            reps = (
                dirty[i].x.reshape(n, -1)
                if layer is None
                else PP.features(model, PP.seed_params(dirty_params, i), dirty[i].x, layer)
            )
            sc = poison.spectral_scores(reps, dirty[i].y, num_classes, all_kept[i])
            kept = poison.remove_top(
                sc, dirty[i].y, all_kept[i], num_classes=num_classes, eps=eps_def[i],
                multiplier=s["multiplier"],
            )  # fmt: skip
            dets.append(poison.detection(~np.asarray(kept), dirty[i].poisoned).recall)
        by_rep[name] = C.measured(
            float(np.mean(dets)),
            n=seeds * count,
            se=_seed_se(dets),
            how=f"round-1 recall scoring {'the pixels' if layer is None else repr(layer)} of "
            "the dirty-label models (mean over seeds)",
        ) | {"dim": int(reps.shape[1])}
    tick("spectral", t)
    last = rounds[s["headline_round"] - 1]
    spectral = {
        "headline_round": s["headline_round"],
        "headline": "recall, precision, attack_success_after and clean_accuracy_after are "
        "those of round headline_round (round 1: Tran et al.'s one removal and retraining); "
        "every round's numbers are in rounds",
        "defender_eps": eps_def,
        "multiplier": s["multiplier"],
        "eps_rule": "the poisoned fraction of the target class (count / its size), the "
        "bound Tran et al. assume known; removal of floor(1.5 eps n_c) from every class",
        "representation": s["spectral_layer"],
        "representation_is": "'features': the penultimate layer (the MLP's last hidden ReLU "
        "layer); 'blockK': bn_cnn's K-th conv block's output map, flattened, before the "
        "global average pooling that gives its 'features'",
        "round1_recall_by_representation": by_rep,
        "rounds": rounds,
        "recall": last["recall"],
        "precision": last["precision"],
        "attack_success_after": last["attack_success_after"],
        "clean_accuracy_after": last["clean_accuracy_after"],
        "clean_drop_pp_after": 100
        * (clean_r["clean_accuracy"]["value"] - last["clean_accuracy_after"]["value"]),
    }

    # -------------------------------------------------------------------- feature collision
    t = time.perf_counter()
    targeted, collision_fig = _collision(
        s, model, clean_params, x, y, xt, yt, k_collide, num_classes
    )
    tick("feature_collision", t)

    # ------------------------------------------------- derived datasets and the loop check
    t = time.perf_counter()
    datasets, loop = _datasets_and_loop(
        s, ds, info, dirty[0], lc_sets["robust_source"][0], (xt_np, yt_np), trig, work, args.seed
    )
    tick("datasets_and_loop", t)

    data.update(
        backdoor=backdoor,
        spectral=spectral,
        targeted=targeted,
        datasets=datasets,
        loop_check=loop,
        seconds=seconds,
    )
    out.mkdir(parents=True, exist_ok=True)
    _figures(out, tag, x_np, y_np, dirty[0], lc_sets, collision_fig, scores_fig, target)
    v = lambda e: e["value"]  # noqa: E731
    lines = [
        f"clean model: acc {v(backdoor['clean_model_accuracy']):.3f}",
        f"dirty-label {count}/{n}: success {v(backdoor['attack_success']):.3f}, "
        f"clean acc {v(backdoor['clean_accuracy']):.3f}",
        *(f"label-consistent {k}: success {v(lc[k]['attack_success']):.3f}" for k in lc),
        f"spectral: recall {v(spectral['recall']):.3f}, precision "
        f"{v(spectral['precision']):.3f}, success after {v(spectral['attack_success_after']):.3f}, "
        f"clean acc after {v(spectral['clean_accuracy_after']):.3f}",
        *(
            f"feature collision {k}: success {v(e['success']):.3f} (control "
            f"{v(e['control_success']):.3f})"
            for k, e in targeted["by_poisons"].items()
        ),
    ]
    data["cpu_time_s"] = round(time.process_time(), 1)  # all threads, user + system
    C.finish(out, tag, data, t0, lines)
    return 0


def _seed_se(values: list[float]) -> float | None:
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None


def _collision(s, model, clean_params, x, y, xt, yt, key, num_classes):
    """Feature collision on the seed-0 clean model: targets, poisons, retrained heads."""
    params = PP.seed_params(clean_params, 0)  # the Flax variables of seed 0
    ff = jr.as_features_fn(model, params)
    phi = lambda z: ff(z)["features"]  # noqa: E731
    feats = PP.features(model, params, x)
    k_t, k_b, k_pick, k_opt = jax.random.split(key, 4)
    correct = np.where(np.asarray(jnp.argmax(jr.as_logits_fn(model, params)(xt), -1) == yt))[0]
    T = min(s["collision_targets"], len(correct))
    tidx = np.asarray(jax.random.choice(k_t, jnp.asarray(correct), (T,), replace=False))
    base_cls = np.asarray(collision_targets(yt[tidx], num_classes, k_b))
    y_np = np.asarray(y)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(k_pick))[-1])
    kmax = max(s["collision_poisons"])
    bidx = np.stack([rng.choice(np.where(y_np == c)[0], kmax, replace=False) for c in base_cls])
    head = params["params"]["head"]
    retrain = jax.jit(
        jax.vmap(
            lambda pf, py: PP.retrain_head(
                head, feats, y, pf, py, steps=s["head_steps"], lr=s["head_lr"]
            )
        )
    )
    by, fig = {}, None
    for k in s["collision_poisons"]:
        tx_ = jnp.repeat(xt[tidx], k, 0)
        bx = x[bidx[:, :k].reshape(-1)]
        col = feature_collision(
            phi,
            tx_,
            bx,
            k_opt,
            beta=s["collision_beta"],
            steps=s["collision_steps"],
            learning_rate=s["collision_lr"],
        )
        py = jnp.repeat(jnp.asarray(base_cls)[:, None], k, 1)
        outcome = {}
        for name, px in (("poison", col.x), ("control", bx)):
            heads = retrain(phi(px).reshape(T, k, -1), py)
            pred = np.asarray(
                jnp.argmax(
                    jnp.einsum("td,tdc->tc", phi(xt[tidx]), heads["kernel"]) + heads["bias"], -1
                )
            )
            acc = [
                float(
                    np.mean(
                        np.asarray(jnp.argmax(phi(xt) @ heads["kernel"][i] + heads["bias"][i], -1))
                        == np.asarray(yt)
                    )
                )
                for i in range(T)
            ]
            outcome[name] = (pred == base_cls, acc)
        hits, acc = outcome["poison"]
        chits, _ = outcome["control"]
        by[str(k)] = {
            "poisons_per_target": k,
            "success": C.measured(
                float(hits.mean()),
                n=T,
                se=float(C.mc_se(hits.mean(), T)),
                how="targets classified as the base class after the last "
                "layer is retrained with the poisons; binomial se",
            ),
            "control_success": C.measured(
                float(chits.mean()),
                n=T,
                se=float(C.mc_se(chits.mean(), T)),
                how="the same with the unoptimised base images",
            ),
            "clean_accuracy_after": C.measured(
                float(np.mean(acc)),
                n=T * int(yt.shape[0]),
                se=_seed_se(acc),
                how="test accuracy of the retrained heads, mean over targets",
            ),
            "feature_distance": float(np.mean(np.asarray(col.feature_distance))),
            "start_feature_distance": float(np.mean(np.asarray(col.start_feature_distance))),
            "input_l2_distance": float(np.mean(np.asarray(col.input_distance))),
        }
        if fig is None:
            fig = (
                np.asarray(xt[tidx]),
                np.asarray(x[bidx[:, 0]]),
                np.asarray(col.x[::k]),
                base_cls,
            )
    return {
        "method": "feature collision (Shafahi et al. 2018), frozen penultimate layer of the "
        "seed-0 clean model, last layer fine-tuned (full-batch Adam) on the clean training "
        "set plus the poisons labelled with the base class",
        "targets": T,
        "beta": s["collision_beta"],
        "steps": s["collision_steps"],
        "by_poisons": by,
        "success": by[str(max(s["collision_poisons"]))]["success"],
    }, fig


def _datasets_and_loop(s, ds, info, dirty0, lc0, test, trig, work, seed):
    """Write the seed-0 poisoned sets as derived datasets; train the dirty-label one with
    the library's training loop and measure attack success on its test_triggered split."""
    from _nonrobust_features_parts import train_model

    names = {}
    for name, p in (("dirty_label", dirty0), ("label_consistent_robust", lc0)):
        names[name] = poison.write_poisoned_dataset(
            work / name,
            p,
            test,
            trigger=trig,
            target=s["target"],
            info=info,
            metadata={"experiment": NAME, "source_dataset": ds, "seed": seed},
        )
    x_back, y_back = load_split(names["dirty_label"], "train")
    roundtrip = bool(
        np.array_equal(x_back, np.asarray(dirty0.x))
        and np.array_equal(y_back, np.asarray(dirty0.y))
    )
    cnn = s.get("architecture", "mlp") != "mlp"
    fn = train_model(
        work / "loop_dirty_label",
        dataset=names["dirty_label"],
        dataset_kwargs={},
        hidden=s["loop_hidden"],
        model=None
        if not cnn
        else {
            "name": s["architecture"],
            "kwargs": s["model_kwargs"],
            "batch_size": s["batch"],
            "learning_rate": s["lr"],
        },
        objective="standard",
        epochs=s["loop_epochs"],
        eps=0.1,
        seed=seed,
    )
    out = {}
    for split in ("test", "test_triggered"):
        xs, ys = load_split(names["dirty_label"], split)
        ok = np.asarray(jnp.argmax(fn(jnp.asarray(xs)), -1)) == ys
        out[split] = C.measured(
            float(ok.mean()),
            n=int(ok.size),
            se=float(C.mc_se(ok.mean(), ok.size)),
            how=f"accuracy on the derived dataset's {split} split "
            "(test_triggered: = attack success); one run, binomial se",
        )
    loop = {
        "what": "the seed-0 dirty-label set trained with jaxrobust.train.loop.train (the "
        "`jaxrobust train` code path): "
        + (
            f"{PP.describe_model(s)}, batch {s['batch']}, learning rate {s['lr']}"
            if cnn
            else f"MLP{tuple(s['loop_hidden'])}, default optimiser"
        )
        + f", {s['loop_epochs']} epochs",
        "clean_accuracy": out["test"],
        "attack_success": out["test_triggered"],
    }
    return {
        "names": {k: str(v) for k, v in names.items()},
        "train_split_roundtrip": roundtrip,
    }, loop


def _figures(out, tag, x, y, dirty0, lc_sets, collision_fig, scores_fig, target):
    """Poisoned examples (rows: clean, dirty-label, LC trigger only, LC standard, LC robust;
    then collision targets, bases, poisons) and the spectral scores."""
    k = 8
    rows = []
    idx = np.asarray(dirty0.indices)[:k]
    rows.append(("original", x[idx], y[idx]))
    rows.append(("dirty label", np.asarray(dirty0.x)[idx], np.asarray(dirty0.y)[idx]))
    for name, sets in lc_sets.items():
        li = np.asarray(sets[0].indices)[:k]
        rows.append(
            (f"LC {name.replace('_', ' ')}", np.asarray(sets[0].x)[li], np.asarray(sets[0].y)[li])
        )
    if collision_fig is not None:
        tx_, bx, px, bc = collision_fig
        rows.append(("FC target", tx_[:k], np.full(len(tx_[:k]), -1)))
        rows.append(("FC base", bx[:k], bc[:k]))
        rows.append(("FC poison", px[:k], bc[:k]))
    cols = max(len(r[1]) for r in rows)
    fig, axes = C.figure(len(rows), cols, (1.1, 1.2))
    for r, (name, xs, ls) in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(xs):
                ax.axis("off")
                continue
            img = np.clip(xs[c], 0, 1)
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            if int(ls[c]) >= 0:
                ax.set_title(f"label {int(ls[c])}", fontsize=6)
            if c == 0:
                ax.set_ylabel(name, fontsize=6)
    fig.suptitle(f"poisoned training examples (target class {target})", fontsize=8)
    C.save(fig, out / f"{tag}.png")

    fig, axes = C.figure(1, len(scores_fig), (4.5, 3.2))
    poisoned = np.asarray(dirty0.poisoned)
    labels = np.asarray(dirty0.y)
    for j, (r, (sc, keep)) in enumerate(sorted(scores_fig.items())):
        ax = axes[0, j]
        sel = (labels == target) & keep
        bins = np.linspace(0, max(float(sc[sel].max()), 1e-6), 30)
        ax.hist(sc[sel & ~poisoned], bins=bins, alpha=0.6, label="clean")
        ax.hist(sc[sel & poisoned], bins=bins, alpha=0.6, label="poison")
        ax.set_title(
            f"round {r + 1}: target-class scores ({'before' if r == 0 else 'after'} removal)",
            fontsize=8,
        )
        ax.set_xlabel("squared projection on the top singular vector")
        ax.legend(fontsize=7)
    C.save(fig, out / f"{tag}_scores.png")


if __name__ == "__main__":
    sys.exit(main())
