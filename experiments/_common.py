"""Helpers shared by the synthetic-data experiments (not an experiment: the leading `_`
keeps it out of `jaxrobust experiment`'s list).

Binary problems here use labels y ∈ {±1}; the library's classifiers want integer classes,
so class 1 means y = +1 and a linear score z = ⟨w, x⟩ + b becomes the logits (−z/2, z/2):
softmax cross-entropy is then exactly the logistic loss log(1 + e^{−yz}).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import jaxrobust as jr
from jaxrobust import report
from jaxrobust.provenance import git_commit

Array = jax.Array

# Gaussian inputs are unbounded; the threat models' default box is [0, 1], so every
# attack here declares a box wide enough never to bind.
WIDE = 1e6

# The commit of the code this process imported, read once at import: an experiment rewrites
# its own tracked results files before `finish` runs, so reading it there would mark every
# committed result "+dirty".
_COMMIT_AT_IMPORT = git_commit()


def parse_args(
    name: str,
    argv: Sequence[str] | None,
    doc: str | None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """The common command line: --smoke, --out (default runs/experiments/NAME), --seed,
    plus whatever `extra(parser)` adds (an experiment's own options)."""
    parser = argparse.ArgumentParser(
        prog=f"jaxrobust experiment {name}",
        description=(doc or "").split("\n\n")[0],
    )
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (tests, CI)")
    parser.add_argument("--out", default=f"runs/experiments/{name}", help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed")
    if extra is not None:
        extra(parser)
    return parser.parse_args(list(argv) if argv is not None else sys.argv[1:])


def result_tag(dataset: str, model: str = "mlp", smoke: bool = False) -> str:
    """The stem of an experiment's result files: "shapes_bn_cnn", "digits_smoke", ..."""
    return dataset + ("" if model == "mlp" else f"_{model}") + ("_smoke" if smoke else "")


def wide_linf(eps: Any) -> jr.ThreatModel:
    """ℓ∞ ball of radius eps with a box that never binds (Gaussian data)."""
    return jr.linf(eps, lo=-WIDE, hi=WIDE)


def wide_l2(eps: Any) -> jr.ThreatModel:
    """ℓ2 ball of radius eps with a box that never binds (Gaussian data)."""
    return jr.l2(eps, lo=-WIDE, hi=WIDE)


def to_class(y_pm: Array) -> Array:
    """Labels ±1 -> integer classes {0, 1} (class 1 is y = +1)."""
    return (y_pm > 0).astype(jnp.int32)


def binary_logits(z: Array) -> Array:
    """Scores z (B,) -> logits (B, 2) whose cross-entropy is the logistic loss of y·z."""
    return jnp.stack([-0.5 * z, 0.5 * z], axis=-1)


def linear_logits_fn(w: Array, b: Array | float = 0.0) -> Callable[[Array], Array]:
    """The linear classifier sign(⟨w, x⟩ + b) as a library model: x (B, d) -> logits (B, 2)."""
    return lambda x: binary_logits(x @ w + b)


def pgd_error(
    logits_fn: Callable[[Array], Array],
    x: Array,
    y_pm: Array,
    key: Array,
    threat: jr.ThreatModel,
    steps: int = 5,
) -> Array:
    """Fraction of (x, y) the library's PGD misclassifies within `threat` (a scalar).

    For a linear model the ℓ∞ worst case is the corner −y·ε·sign(w) and the ℓ2 worst case
    the point −y·ε·w/‖w‖₂. Steps of size 2ε from the random start reach the ℓ∞ corner in one
    step; for ℓ2 each step shrinks the off-direction part of the start by a factor >= 2, so
    5 steps leave cos(δ, worst) > 1 − 1e-5: on the sample this is the exact robust error.
    (The default 2.5ε/steps is too short for ℓ2: after 5 steps δ still carries ~3% less
    margin than the worst case.) The margin (CW) loss, not cross-entropy: with |logit gaps|
    in the hundreds (d = 1e5) the float32 softmax saturates, the cross-entropy gradient is
    exactly 0 and PGD never moves.
    """
    res = jr.pgd(
        logits_fn,
        x,
        to_class(y_pm),
        key,
        threat=threat,
        steps=steps,
        step_size=2.0 * jnp.asarray(threat.eps),
        loss=jr.margin,
    )
    return jnp.mean(res.success.astype(jnp.float32))


def mc_se(p: Any, m: Any) -> np.ndarray:
    """Monte-Carlo standard error of a proportion p estimated from m samples."""
    p = np.asarray(p, dtype=float)
    return np.sqrt(np.clip(p * (1 - p), 0.0, None) / np.asarray(m, dtype=float))


def agrees(measured: Any, exact: Any, m: Any, *, pp: float = 0.01, k: float = 3.0) -> np.ndarray:
    """|measured − exact| <= max(pp, k·SE) with SE the binomial standard error at `exact`."""
    tol = np.maximum(pp, k * mc_se(exact, m))
    return np.abs(np.asarray(measured, float) - np.asarray(exact, float)) <= tol


def figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (5.5, 4.0)):
    """A pyplot-free Figure on an Agg canvas and its axes array (always 2-D)."""
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save(fig: Figure, path: Path) -> Path:
    """Write a figure as PNG (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    return path


# ------------------------------------------------------------------- provenance of numbers
# Every headline number in an experiment's JSON is one of these dicts, so a reader (and the
# claims tests) can tell how it was obtained: measured on samples (with the sample size and a
# standard error), computed in closed form, or true by an argument (with the argument).

METHODS = ("measured", "closed_form", "by_argument")


def measured(value: Any, *, n: int, se: Any = None, how: str) -> dict:
    """A number estimated from `n` samples (examples, draws, seeds: `how` says which and by
    what: attack, trained model), with its standard error `se` where one is defined."""
    if int(n) < 1:
        raise ValueError(f"a measured number needs n >= 1 samples, got {n}")
    return {
        "value": jsonable(value),
        "method": "measured",
        "n": int(n),
        "se": jsonable(se),
        "how": how,
    }


def closed_form(value: Any, *, how: str) -> dict:
    """A number computed exactly from a formula (`how` names the formula)."""
    return {"value": jsonable(value), "method": "closed_form", "how": how}


def by_argument(value: Any, *, why: str) -> dict:
    """A number that holds by an argument, not by a computation or a measurement."""
    return {"value": jsonable(value), "method": "by_argument", "why": why}


def header(name: str, smoke: bool, seed: int, settings: dict) -> dict:
    """The leading fields of every experiment's JSON: which experiment, at which size, from
    which seed, with which settings."""
    return {"experiment": name, "smoke": smoke, "seed": seed, "settings": settings}


def run_info() -> dict:
    """Library version and git commit of the code that produced a result, read when the
    experiment's code was imported (commit None outside a git checkout; '+dirty' when the work
    tree then had uncommitted changes to tracked files)."""
    return {"jaxrobust_version": jr.__version__, "git_commit": _COMMIT_AT_IMPORT}


def finish(out: Path, name: str, data: dict, t0: float, lines: Sequence[str]) -> Path:
    """Add the wall time, library version and git commit, write out/NAME.json, print a short
    summary; returns the JSON path."""
    data["wall_time_s"] = round(time.perf_counter() - t0, 2)
    data.update(run_info())
    path = report.write_json(out / f"{name}.json", data)
    print(f"[{name}] " + "\n  ".join([*lines, f"wall time {data['wall_time_s']:.1f} s -> {path}"]))
    return path


def jsonable(x: Any) -> Any:
    """JSON-friendly builtins; non-finite floats become None (strict JSON has no NaN/inf)."""
    obj = report.to_builtin(x)
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
