"""Robust representations (Engstrom et al. 2019, "Adversarial robustness as a prior for
learned representations"): inversion, interpolation, feature visualisation and
manipulation, feature sensitivity and input-gradient saliency, for a standard and a robust
(ℓ2 PGD-trained) model of the same architecture, with the same budget for both.

The judge of what an image looks like is a pixel-space 5-nearest-neighbour classifier fitted
on the training images (it shares no features with the networks).

- Inversion: the penultimate ("features") representation of test images, inverted from
  noise (N(0.5, 0.05²) per pixel, clipped to [0, 1]) with `jaxrobust.represent.invert`:
  mean pixel ℓ2 distance to the source image and the judge's agreement with the source's
  class, per model; the robust/standard distance ratio.
- Interpolation (`interpolate`) between test images of different classes: the endpoint
  error (0: the ends are the inputs) and the interpolants' feature error (steps of
  `interp_step_size`, 0.5 unless a setting names it, decaying to 0).
- Feature visualisation (`visualize_feature`) of penultimate units from noise and from an
  image, feature manipulation (`add_feature`, an ℓ2 ball around a test image), and
  sensitivity maps (`sensitivity`, ∇ₓ of a unit): activations reached, image grids.
- Saliency (`input_gradient`): alignment of |∇ₓ CE| with the image per model.

    jaxrobust experiment representations [--smoke] [--dataset digits|shapes] [--out DIR]
        [--seed S]

Writes DIR/<dataset>.json and DIR/<dataset>_{inversion,interpolation,visualization,
saliency}.png (`_smoke` added to the names at smoke size). Sizes and budgets: `SETTINGS`.
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

NAME = "representations"
SETTINGS = {
    "digits": {
        "full": {
            **RC.TRAIN_FULL,
            "hidden": [256, 32],
            "eps_train": 0.5,
            "n_invert": 360,
            # Many small normalised steps, as Engstrom et al. 2019 invert (here 0.05, about
            # 1.3% of a test digit's l2 norm, decaying to 0), instead of 200 steps of 0.5.
            "invert_steps": 1000,
            "invert_step_size": 0.05,
            "n_pairs": 6,
            "interp_num": 8,
            "interp_steps": 200,
            "n_units": 8,
            "vis_steps": 100,
            "vis_step_size": 0.1,
            "manip_eps": 1.0,
            "n_saliency": 360,
        },
        "smoke": {
            **RC.TRAIN_SMOKE,
            "hidden": [32, 16],
            "eps_train": 0.5,
            "n_invert": 20,
            "invert_steps": 10,
            "invert_step_size": 0.5,
            "n_pairs": 2,
            "interp_num": 4,
            "interp_steps": 5,
            "n_units": 3,
            "vis_steps": 5,
            "vis_step_size": 0.1,
            "manip_eps": 1.0,
            "n_saliency": 20,
        },
    },
    "shapes": {
        # 32x32x3 images (l2 norm about 31, vs about 3.8 for an 8x8 digit): the digits full
        # budgets with every l2 size scaled by about sqrt(3072 / 64) ~ 7 (normalised steps of
        # the same relative length); 1000 training steps on 5000 generated images and 100
        # inversions keep a full run near 10 minutes on the shared 2-core CPU.
        "full": {
            **RC.TRAIN_SHAPES_FULL,
            "n_invert": 100,
            "invert_steps": 1000,
            "invert_step_size": 0.35,
            "n_pairs": 4,
            "interp_num": 8,
            "interp_steps": 200,
            "interp_step_size": 3.5,
            "n_units": 8,
            "vis_steps": 100,
            "vis_step_size": 0.7,
            "manip_eps": 7.0,
            "n_saliency": 1000,
        },
        "smoke": {
            **RC.TRAIN_SHAPES_SMOKE,
            "n_invert": 10,
            "invert_steps": 10,
            "invert_step_size": 1.0,
            "n_pairs": 2,
            "interp_num": 4,
            "interp_steps": 5,
            "n_units": 3,
            "vis_steps": 5,
            "vis_step_size": 0.5,
            "manip_eps": 2.0,
            "n_saliency": 20,
        },
    },
}


def noise_like(key: jax.Array, x: jax.Array) -> jax.Array:
    """The inversions' start: N(0.5, 0.05²) per pixel, clipped to [0, 1] (the start of the
    robustness library's inversion examples)."""
    return jnp.clip(0.5 + 0.05 * jax.random.normal(key, x.shape), 0.0, 1.0)


def _decay(size: float, steps: int):
    return lambda i: size * (1.0 - i / steps)


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
    models = RC.train_models(data, s, args.seed, work=out / "work" / tag)
    judge = RC.Judge(data["x"], data["y"])
    x_test, y_test = data["x_test"], data["y_test"]
    yt = np.asarray(y_test)
    key = jax.random.key(args.seed + 10)
    seconds: dict[str, float] = {}
    res: dict = C.header(NAME, args.smoke, args.seed, {**s, "dataset": args.dataset})
    res["settings"].update(
        judge=judge.describe(int(data["x"].shape[0])),
        judge_test_accuracy=RC.proportion(
            judge(x_test) == yt, "the judge's accuracy on the test split"
        ),
        models=RC.describe_models(s),
        task_steps="every task: normalised l2 steps (each moves the example by step_size, pixel "
        "units) on jaxrobust.optimize; the same budget for both models",
    )
    res["models"] = RC.model_summary(models)
    fns = {m: models[m]["features_fn"] for m in RC.MODELS}
    logits = {m: models[m]["logits_fn"] for m in RC.MODELS}

    # ------------------------------------------------------------------ inversion
    t = time.perf_counter()
    n = min(s["n_invert"], int(x_test.shape[0]))
    xs, ys = x_test[:n], yt[:n]
    start = noise_like(jax.random.fold_in(key, 1), xs)
    steps = s["invert_steps"]

    @jax.jit
    def inv(f, x, x0):
        target = R.layer_features(f, x)
        return R.invert(
            f, target, x0, key, steps=steps, step_size=_decay(s["invert_step_size"], steps)
        )

    inversion, inv_images = {}, {}
    for m in RC.MODELS:
        r = inv(fns[m], xs, start)
        d = RC.l2_dist(r.x_adv, xs)
        inv_images[m] = np.asarray(r.x_adv)
        inversion[m] = {
            "mean_l2_to_source": RC.mean_of(
                d, "pixel l2 distance between the inversion and its source test image"
            ),
            "judged_as_source_class": RC.proportion(
                judge(r.x_adv) == ys, "the judge's class of the inversion equals the source's"
            ),
            "relative_feature_error": RC.mean_of(
                np.asarray(r.value), "||phi(x) - phi(source)|| / ||phi(source)|| at the inversion"
            ),
        }
    d0 = RC.l2_dist(start, xs)
    inversion["start_mean_l2_to_source"] = RC.mean_of(d0, "the noise starts' distance")
    ratio = (
        inversion["robust"]["mean_l2_to_source"]["value"]
        / inversion["standard"]["mean_l2_to_source"]["value"]
    )
    inversion["distance_ratio_robust_over_standard"] = ratio
    res["inversion"] = inversion
    seconds["inversion"] = time.perf_counter() - t

    # ------------------------------------------------------------- interpolation
    t = time.perf_counter()
    idx = RC.pick_per_class(yt, 1, data["num_classes"])
    pairs = min(s["n_pairs"], len(idx) // 2)
    xa, xb = x_test[idx[:pairs]], x_test[idx[pairs : 2 * pairs]]
    isteps = s["interp_steps"]

    @jax.jit
    def interp(f, a, b):
        return R.interpolate(
            f,
            a,
            b,
            key,
            num=s["interp_num"],
            steps=isteps,
            step_size=_decay(s.get("interp_step_size", 0.5), isteps),
        )

    interpolation, interp_images = {}, {}
    for m in RC.MODELS:
        r = interp(fns[m], xa, xb)
        end_err = max(
            float(jnp.max(jnp.abs(r.x_adv[0] - xa))), float(jnp.max(jnp.abs(r.x_adv[-1] - xb)))
        )
        interp_images[m] = np.asarray(r.x_adv)
        interpolation[m] = {
            "endpoint_max_abs_error": C.by_argument(
                end_err, why="the ends start at the inputs with feature error 0"
            ),
            "relative_feature_error": RC.mean_of(
                np.asarray(r.value[1:-1]), "interior interpolants' relative feature error"
            ),
        }
    res["interpolation"] = interpolation
    seconds["interpolation"] = time.perf_counter() - t

    # ------------------------------------- visualisation, manipulation, sensitivity
    t = time.perf_counter()
    k = s["n_units"]
    units = jnp.arange(k, dtype=jnp.int32)
    vsteps, vsize = s["vis_steps"], s["vis_step_size"]
    x_img = jnp.repeat(x_test[:1], k, axis=0)
    x_noise = noise_like(jax.random.fold_in(key, 2), x_img)

    @jax.jit
    def vis(f, x0):
        return R.visualize_feature(f, x0, units, key, steps=vsteps, step_size=vsize)

    @jax.jit
    def manip(f, x0):
        return R.add_feature(f, x0, units, key, eps=s["manip_eps"], steps=vsteps, step_size=vsize)

    visualization, vis_images = {}, {}
    for m in RC.MODELS:
        f = fns[m]
        before = jnp.take_along_axis(R.layer_features(f, x_img), units[:, None], 1)[:, 0]
        rn, ri, rm = vis(f, x_noise), vis(f, x_img), manip(f, x_img)
        sens = R.sensitivity(f, x_img, units)
        big = jnp.max(jnp.abs(sens), axis=(1, 2, 3), keepdims=True)
        vis_images[m] = {
            "from noise": rn.x_adv,
            "from image": ri.x_adv,
            f"add (eps {s['manip_eps']})": rm.x_adv,
            "sensitivity": sens / jnp.where(big > 0, big, 1.0),
        }
        visualization[m] = {
            "activation_before": RC.mean_of(before, "the units' activation on the image"),
            "activation_from_noise": RC.mean_of(rn.value, "activation reached from noise"),
            "activation_from_image": RC.mean_of(ri.value, "activation reached from the image"),
            "activation_added": RC.mean_of(
                rm.value - before, f"activation gained within l2 eps {s['manip_eps']}"
            ),
        }
    res["visualization"] = visualization
    seconds["visualization"] = time.perf_counter() - t

    # ----------------------------------------------------------------- saliency
    t = time.perf_counter()
    ns = min(s["n_saliency"], int(x_test.shape[0]))
    saliency, sal_images = {}, {}
    grad = jax.jit(R.input_gradient)
    for m in RC.MODELS:
        g = grad(logits[m], x_test[:ns], y_test[:ns])
        sal_images[m] = np.asarray(-g[:10]) / np.maximum(
            np.abs(np.asarray(g[:10])).max(axis=(1, 2, 3), keepdims=True), 1e-30
        )
        saliency[m] = {
            "alignment_with_image": RC.mean_of(
                R.alignment(g, x_test[:ns]),
                "Pearson correlation over pixels of |grad_x CE(f(x), y)| and the image",
            )
        }
    res["saliency"] = saliency
    seconds["saliency"] = time.perf_counter() - t

    # --------------------------------------------------------------- acceptance
    inv_r, inv_s = inversion["robust"], inversion["standard"]
    res["acceptance"] = {
        "inversion_distance_ratio_at_most_0.8": bool(ratio <= 0.8),
        "robust_inversions_judged_as_source_at_least_0.95": bool(
            inv_r["judged_as_source_class"]["value"] >= 0.95
        ),
    }
    res["seconds"] = {k2: round(v, 2) for k2, v in seconds.items()}

    # ------------------------------------------------------------------- figures
    out.mkdir(parents=True, exist_ok=True)
    cols = min(10, n)
    RC.grid(
        [("source", xs[:cols]), ("noise start", start[:cols])]
        + [(f"{m} inversion", inv_images[m][:cols]) for m in RC.MODELS],
        out / f"{tag}_inversion.png",
        f"{args.dataset}: penultimate representation inverted from noise",
    )
    rows = []
    for m in RC.MODELS:
        for p in range(pairs):
            rows.append((f"{m} {p}", interp_images[m][:, p]))
    RC.grid(
        rows,
        out / f"{tag}_interpolation.png",
        f"{args.dataset}: interpolation through the representation (left: x_a, right: x_b)",
    )
    rows, signed = [], []
    for m in RC.MODELS:
        for what, images in vis_images[m].items():
            rows.append((f"{m}: {what}", images))
            signed.append(what == "sensitivity")
    RC.grid(
        rows,
        out / f"{tag}_visualization.png",
        f"{args.dataset}: penultimate units 0..{k - 1} (columns) maximised",
        signed=signed,
    )
    RC.grid(
        [("image", x_test[:10])] + [(f"{m} -grad", sal_images[m]) for m in RC.MODELS],
        out / f"{tag}_saliency.png",
        f"{args.dataset}: loss-decreasing input gradient (red +, blue -)",
        signed=[False, True, True],
    )
    lines = [
        f"inversion l2 to source: standard {inv_s['mean_l2_to_source']['value']:.3f}, robust "
        f"{inv_r['mean_l2_to_source']['value']:.3f} (ratio {ratio:.3f}); judged as source: "
        f"standard {inv_s['judged_as_source_class']['value']:.3f}, robust "
        f"{inv_r['judged_as_source_class']['value']:.3f}",
        f"saliency alignment: standard "
        f"{saliency['standard']['alignment_with_image']['value']:.3f}, robust "
        f"{saliency['robust']['alignment_with_image']['value']:.3f}",
    ]
    C.finish(out, tag, C.jsonable(res), t0, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
