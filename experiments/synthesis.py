"""Image synthesis with a single (robust) classifier (Santurkar et al. 2019): generation,
inpainting, super-resolution, image-to-image translation and sketch-to-image, for a standard
and a robust (ℓ2 PGD-trained) model of the same architecture, with the same budget for both.

The judge of what an image looks like is a pixel-space 5-nearest-neighbour classifier fitted
on the training images (it shares no features with the networks).

- Generation (`jaxrobust.represent.generate`): seeds from a class-conditional Gaussian
  fitted on the training images (full covariance; on digits the 8x8 images themselves, on
  shapes 8x8 downscaled ones), then targeted steps. Seeds of *another* class (the target
  plus a random offset in 1..C−1) and, for the grid, of the class itself. Measured: the
  fraction judged as the target (and as the seed's class for the seeds alone).
- Inpainting (`inpaint`): a centre square of each test image missing (filled with the
  per-pixel training mean to start); the masked-region MSE to the true pixels, against
  filling with the per-pixel training mean.
- Super-resolution (`super_resolve`): test images average-pooled by 2, upsampled, CE toward
  the true class in a small ℓ2 ball; judged class and MSE to the original vs nearest-
  neighbour upsampling.
- Translation (`translate`): test images moved to the class y+1 in an ℓ2 ball; judged.
- Sketch-to-image (`sketch_to_image`): crude sketches (test images binarised at 0.5 with a
  third of the stroke pixels dropped) moved toward their class in an ℓ2 ball; judged.

    jaxrobust experiment synthesis [--smoke] [--dataset digits|shapes] [--out DIR] [--seed S]

Writes DIR/<dataset>.json and DIR/<dataset>_{generation,inpainting,super_resolution,
translation,sketch}.png (`_smoke` added at smoke size). Sizes and budgets: `SETTINGS`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import _represent_common as RC
import jax
import jax.numpy as jnp
import numpy as np

import jaxrobust.represent as R

NAME = "synthesis"
SETTINGS = {
    "digits": {
        "full": {
            **RC.TRAIN_FULL,
            "hidden": [256, 32],
            "eps_train": 0.5,
            "gauss_factor": 1,
            "gen_per_class": 30,
            "gen_steps": 40,
            "gen_step_size": 0.1,
            "gen_eps": 2.0,
            "n_inpaint": 360,
            "mask": [2, 6],
            "inpaint_steps": 100,
            "inpaint_step_size": 0.1,
            "inpaint_weight": 10.0,
            "n_sr": 360,
            "sr_factor": 2,
            "sr_eps": 1.0,
            "sr_steps": 40,
            "n_translate": 360,
            "translate_eps": 2.0,
            "translate_steps": 40,
            "sketch_eps": 2.0,
            "sketch_steps": 40,
            "step_size": 0.1,
        },
        "smoke": {
            **RC.TRAIN_SMOKE,
            "hidden": [32, 16],
            "eps_train": 0.5,
            "gauss_factor": 1,
            "gen_per_class": 2,
            "gen_steps": 5,
            "gen_step_size": 0.1,
            "gen_eps": 2.0,
            "n_inpaint": 20,
            "mask": [2, 6],
            "inpaint_steps": 5,
            "inpaint_step_size": 0.1,
            "inpaint_weight": 10.0,
            "n_sr": 20,
            "sr_factor": 2,
            "sr_eps": 1.0,
            "sr_steps": 5,
            "n_translate": 20,
            "translate_eps": 2.0,
            "translate_steps": 5,
            "sketch_eps": 2.0,
            "sketch_steps": 5,
            "step_size": 0.1,
        },
    },
    "shapes": {
        # 32x32x3 images (l2 norm about 31, vs about 3.8 for an 8x8 digit): the digits full
        # budgets with every l2 size scaled by about sqrt(3072 / 64) ~ 7; the centre 16x16
        # square (a quarter of the image, as digits' 4x4) is inpainted; 1000 training steps
        # on 5000 generated images keep a full run near 10 minutes on the shared 2-core CPU.
        "full": {
            **RC.TRAIN_SHAPES_FULL,
            "gauss_factor": 4,
            "gen_per_class": 10,
            "gen_steps": 40,
            "gen_step_size": 0.7,
            "gen_eps": 14.0,
            "n_inpaint": 200,
            "mask": [8, 24],
            "inpaint_steps": 100,
            "inpaint_step_size": 0.7,
            "inpaint_weight": 10.0,
            "n_sr": 200,
            "sr_factor": 2,
            "sr_eps": 7.0,
            "sr_steps": 40,
            "n_translate": 200,
            "translate_eps": 14.0,
            "translate_steps": 40,
            "sketch_eps": 14.0,
            "sketch_steps": 40,
            "step_size": 0.7,
        },
        "smoke": {
            **RC.TRAIN_SHAPES_SMOKE,
            "gauss_factor": 4,
            "gen_per_class": 1,
            "gen_steps": 5,
            "gen_step_size": 0.5,
            "gen_eps": 4.0,
            "n_inpaint": 10,
            "mask": [10, 22],
            "inpaint_steps": 5,
            "inpaint_step_size": 0.5,
            "inpaint_weight": 10.0,
            "n_sr": 10,
            "sr_factor": 2,
            "sr_eps": 2.0,
            "sr_steps": 5,
            "n_translate": 10,
            "translate_eps": 4.0,
            "translate_steps": 5,
            "sketch_eps": 4.0,
            "sketch_steps": 5,
            "step_size": 0.5,
        },
    },
}


def sketches(key: jax.Array, x: jax.Array) -> jax.Array:
    """Crude drawings of images x: binarised at 0.5 (strokes 1, background 0), with a third
    of the stroke pixels dropped at random."""
    strokes = (x.mean(-1, keepdims=True) > 0.5).astype(x.dtype)
    keep = jax.random.bernoulli(key, 2 / 3, strokes.shape).astype(x.dtype)
    return jnp.broadcast_to(strokes * keep, x.shape)


def main(argv: Sequence[str] | None = None) -> int:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dataset", choices=RC.DATASETS, default="digits")
        parser.add_argument("--model", choices=RC.ARCHITECTURES, default="mlp",
                            help="bn_cnn: the conv-BN CNNs (shapes)")  # fmt: skip

    args = C.parse_args(NAME, argv, __doc__, extra)
    size = "smoke" if args.smoke else "full"
    s = RC.settings_for(SETTINGS, args.dataset, size, args.model)
    t0 = time.perf_counter()
    out = Path(args.out)
    tag = C.result_tag(args.dataset, args.model, args.smoke)
    data = RC.load_data(args.dataset, args.smoke, s)
    nc = data["num_classes"]
    models = RC.train_models(data, s, args.seed, work=out / "work" / tag)
    judge = RC.Judge(data["x"], data["y"])
    x_test, y_test = data["x_test"], data["y_test"]
    yt = np.asarray(y_test)
    key = jax.random.key(args.seed + 20)
    ss = s["step_size"]
    seconds: dict[str, float] = {}
    res: dict = C.header(NAME, args.smoke, args.seed, {**s, "dataset": args.dataset})
    res["settings"].update(
        judge=judge.describe(int(data["x"].shape[0])),
        judge_test_accuracy=RC.proportion(
            judge(x_test) == yt, "the judge's accuracy on the test split"
        ),
        models=RC.describe_models(s),
        task_steps="every task: normalised l2 steps (each moves the example by step_size, pixel "
        "units) on jaxrobust.optimize, best iterate kept (classified as the target first, "
        "then lowest objective); the same budget for both models",
    )
    res["models"] = RC.model_summary(models)
    logits = {m: models[m]["logits_fn"] for m in RC.MODELS}
    images: dict[str, dict] = {}

    # ----------------------------------------------------------------- generation
    t = time.perf_counter()
    gauss = R.fit_class_gaussian(data["x"], data["y"], nc, factor=s["gauss_factor"])
    target = jnp.repeat(jnp.arange(nc, dtype=jnp.int32), s["gen_per_class"])
    offset = jax.random.randint(jax.random.fold_in(key, 1), target.shape, 1, nc)
    other = ((target + offset) % nc).astype(jnp.int32)
    k_gen = jax.random.fold_in(key, 2)

    @jax.jit
    def gen(f, tgt, seed_classes):
        return R.generate(
            f,
            gauss,
            tgt,
            k_gen,
            steps=s["gen_steps"],
            step_size=s["gen_step_size"],
            seed_classes=seed_classes,
            eps=s["gen_eps"],
        )

    seeds_other = R.sample_seeds(gauss, other, k_gen)
    seeds_same = R.sample_seeds(gauss, target, k_gen)
    tnp = np.asarray(target)
    generation: dict = {
        "seeds_other_class_judged_as_target": RC.proportion(
            judge(seeds_other) == tnp, "the seeds alone (another class's Gaussian)"
        ),
        "seeds_other_class_judged_as_seed_class": RC.proportion(
            judge(seeds_other) == np.asarray(other), "the seeds alone, judged as their class"
        ),
        "seeds_same_class_judged_as_target": RC.proportion(
            judge(seeds_same) == tnp, "the seeds alone (the target class's Gaussian)"
        ),
    }
    images["generation"] = {"seed (other class)": seeds_other}
    for m in RC.MODELS:
        r_other = gen(logits[m], target, other)
        r_same = gen(logits[m], target, target)
        generation[m] = {
            "from_other_class_judged_as_target": RC.proportion(
                judge(r_other.x_adv) == tnp, "generated from another class's seed"
            ),
            "from_other_class_model_predicts_target": RC.proportion(
                r_other.success, "the model's own prediction equals the target"
            ),
            "from_same_class_judged_as_target": RC.proportion(
                judge(r_same.x_adv) == tnp, "generated from the target class's seed"
            ),
        }
        images["generation"][f"{m} (other)"] = r_other.x_adv
        images["generation"][f"{m} (same)"] = r_same.x_adv
    images["generation"]["seed (same class)"] = seeds_same
    res["generation"] = generation
    seconds["generation"] = time.perf_counter() - t

    # ----------------------------------------------------------------- inpainting
    t = time.perf_counter()
    n = min(s["n_inpaint"], int(x_test.shape[0]))
    xs, ys = x_test[:n], y_test[:n]
    a, b = s["mask"]
    h, w, kch = x_test.shape[1:]
    mask = jnp.zeros((h, w, 1)).at[a:b, a:b].set(1.0)
    mean_img = data["x"].mean(0)
    corrupted = xs * (1 - mask) + mean_img * mask
    npix = float(mask.sum()) * kch

    def masked_mse(z):
        return np.asarray(jnp.sum(((z - xs) * mask) ** 2, axis=(1, 2, 3)) / npix)

    @jax.jit
    def inp(f, x):
        return R.inpaint(
            f,
            x,
            mask,
            ys,
            key,
            steps=s["inpaint_steps"],
            step_size=s["inpaint_step_size"],
            weight=s["inpaint_weight"],
        )

    inpainting = {
        "mean_fill": RC.mean_of(
            masked_mse(corrupted), "masked-region MSE of per-pixel training-mean fill"
        )
    }
    images["inpainting"] = {"original": xs[:10], "corrupted": corrupted[:10]}
    mse = {}
    for m in RC.MODELS:
        r = inp(logits[m], corrupted)
        mse[m] = masked_mse(r.x_adv)
        vis_change = np.asarray(
            jnp.sqrt(jnp.sum(((r.x_adv - corrupted) * (1 - mask)) ** 2, axis=(1, 2, 3)))
        )
        inpainting[m] = {
            "masked_mse": RC.mean_of(mse[m], "masked-region MSE to the true pixels"),
            "visible_l2_change": RC.mean_of(vis_change, "l2 change of the visible pixels"),
        }
        images["inpainting"][m] = r.x_adv[:10]
    inpainting["paired_robust_minus_standard"] = RC.mean_of(
        mse["robust"] - mse["standard"], "per-image masked MSE, robust minus standard (paired)"
    )
    inpainting["paired_robust_minus_mean_fill"] = RC.mean_of(
        mse["robust"] - masked_mse(corrupted), "per-image masked MSE, robust minus mean fill"
    )
    res["inpainting"] = inpainting
    seconds["inpainting"] = time.perf_counter() - t

    # ------------------------------------------------------------ super-resolution
    t = time.perf_counter()
    n = min(s["n_sr"], int(x_test.shape[0]))
    xs, ys = x_test[:n], y_test[:n]
    fct = s["sr_factor"]
    low = R.downsample(xs, fct)
    up = R.upsample(low, fct)

    @jax.jit
    def sr(f, lo_img):
        return R.super_resolve(
            f, lo_img, ys, key, factor=fct, eps=s["sr_eps"], steps=s["sr_steps"], step_size=ss
        )

    def mse_to(z):
        return np.asarray(jnp.mean((z - xs) ** 2, axis=(1, 2, 3)))

    yn = np.asarray(ys)
    superres = {
        "nearest_upsampling": {
            "judged_as_true_class": RC.proportion(judge(up) == yn, "nearest upsampling"),
            "mse_to_original": RC.mean_of(mse_to(up), "per-pixel MSE to the original"),
        }
    }
    images["super_resolution"] = {"original": xs[:10], "nearest": up[:10]}
    for m in RC.MODELS:
        r = sr(logits[m], low)
        back = R.downsample(r.x_adv, fct)
        superres[m] = {
            "judged_as_true_class": RC.proportion(judge(r.x_adv) == yn, "super-resolved"),
            "mse_to_original": RC.mean_of(mse_to(r.x_adv), "per-pixel MSE to the original"),
            "max_l2_downsample_to_low": C.by_argument(
                float(RC.l2_dist(back, low).max()),
                why=f"<= eps/factor = {s['sr_eps'] / fct} (pooling shrinks l2 by the factor)",
            ),
        }
        images["super_resolution"][m] = r.x_adv[:10]
    res["super_resolution"] = superres
    seconds["super_resolution"] = time.perf_counter() - t

    # ------------------------------------------------------ translation, sketches
    t = time.perf_counter()
    n = min(s["n_translate"], int(x_test.shape[0]))
    xs, ys = x_test[:n], y_test[:n]
    to = ((ys + 1) % nc).astype(jnp.int32)
    sk = sketches(jax.random.fold_in(key, 3), xs)

    @jax.jit
    def trans(f, x):
        return R.translate(
            f, x, to, key, eps=s["translate_eps"], steps=s["translate_steps"], step_size=ss
        )

    @jax.jit
    def sketch(f, x):
        return R.sketch_to_image(
            f, x, ys, key, eps=s["sketch_eps"], steps=s["sketch_steps"], step_size=ss
        )

    translation = {
        "source_judged_as_target": RC.proportion(judge(xs) == np.asarray(to), "the sources")
    }
    sketch_res = {
        "sketch_judged_as_class": RC.proportion(judge(sk) == np.asarray(ys), "the sketches")
    }
    images["translation"] = {"source": xs[:10]}
    images["sketch"] = {"sketch": sk[:10]}
    for m in RC.MODELS:
        r = trans(logits[m], xs)
        translation[m] = {
            "judged_as_target": RC.proportion(
                judge(r.x_adv) == np.asarray(to), "translated to class y+1"
            )
        }
        images["translation"][f"{m} -> y+1"] = r.x_adv[:10]
        r = sketch(logits[m], sk)
        sketch_res[m] = {
            "judged_as_class": RC.proportion(judge(r.x_adv) == np.asarray(ys), "from sketches")
        }
        images["sketch"][m] = r.x_adv[:10]
    res["translation"] = translation
    res["sketch_to_image"] = sketch_res
    seconds["translation_and_sketch"] = time.perf_counter() - t

    # --------------------------------------------------------------- acceptance
    g_r = generation["robust"]["from_other_class_judged_as_target"]["value"]
    g_s = generation["standard"]["from_other_class_judged_as_target"]["value"]
    mse_r = inpainting["robust"]["masked_mse"]["value"]
    res["acceptance"] = {
        "generation_other_class_robust_at_least_0.95": bool(g_r >= 0.95),
        "generation_other_class_robust_above_standard": bool(g_r > g_s),
        "inpainting_robust_below_standard": bool(
            mse_r < inpainting["standard"]["masked_mse"]["value"]
        ),
        "inpainting_robust_below_mean_fill": bool(mse_r < inpainting["mean_fill"]["value"]),
    }
    res["seconds"] = {k2: round(v, 2) for k2, v in seconds.items()}

    # ------------------------------------------------------------------- figures
    out.mkdir(parents=True, exist_ok=True)
    cols = np.arange(nc) * s["gen_per_class"]  # the first image of each target class
    RC.grid(
        [(name, np.asarray(v)[cols]) for name, v in images["generation"].items()],
        out / f"{tag}_generation.png",
        f"{args.dataset}: class-conditional generation, target class = column",
        col_titles=[str(int(c)) for c in tnp[cols]],
    )
    for task in ("inpainting", "super_resolution", "translation", "sketch"):
        RC.grid(
            list(images[task].items()),
            out / f"{tag}_{task}.png",
            f"{args.dataset}: {task.replace('_', ' ')}",
        )
    lines = [
        f"generation from another class's seeds, judged as target: standard {g_s:.3f}, "
        f"robust {g_r:.3f}",
        f"inpainting masked MSE: mean fill {inpainting['mean_fill']['value']:.4f}, standard "
        f"{inpainting['standard']['masked_mse']['value']:.4f}, robust {mse_r:.4f}",
    ]
    C.finish(out, tag, C.jsonable(res), t0, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
