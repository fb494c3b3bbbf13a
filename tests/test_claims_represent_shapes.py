"""The README's numbers on the full `--dataset shapes` runs of the representations and
synthesis experiments (section "Representations and synthesis with one robust classifier")
are tests: each fragment is checked against the committed runs
(experiments/results/{representations,synthesis}/shapes.json), and the same fragment made
from a copy of the JSONs with every number moved (`perturb_numbers`) is not in the README."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from claims_helpers import perturb_numbers
from test_claims_represent import _acceptance_consistent

ROOT = Path(__file__).resolve().parent.parent
RESULTS = {
    "representations": ROOT / "experiments" / "results" / "representations" / "shapes.json",
    "synthesis": ROOT / "experiments" / "results" / "synthesis" / "shapes.json",
}


def _readme() -> str:
    return re.sub(r"\s+", " ", (ROOT / "README.md").read_text())


def _load() -> dict:
    return {k: json.loads(p.read_text()) for k, p in RESULTS.items()}


def _pse(e: dict) -> str:
    """A measured rate as the README prints it: '14.1% ± 1.1'."""
    return f"{100 * e['value']:.1f}% ± {100 * e['se']:.1f}"


def _pct(e: dict) -> str:
    return f"{100 * e['value']:.1f}%"


def _v(e: dict, digits: int = 2) -> str:
    return f"{e['value']:.{digits}f}"


def _vse(e: dict, digits: int = 2) -> str:
    return f"{e['value']:.{digits}f} ± {e['se']:.{digits}f}"


def _settings(name: str) -> dict:
    """The committed full digits settings of an experiment (the digits JSON's header)."""
    path = ROOT / "experiments" / "results" / name / "digits.json"
    return json.loads(path.read_text())["settings"]


DIGITS = {name: _settings(name) for name in RESULTS}

# The ℓ2 sizes (pixel units) that the shapes settings scale from the digits ones.
L2_SIZES = {
    "representations": ("invert_step_size", "vis_step_size", "manip_eps"),
    "synthesis": (
        "gen_step_size",
        "gen_eps",
        "inpaint_step_size",
        "sr_eps",
        "translate_eps",
        "sketch_eps",
        "step_size",
    ),
}


def _experiment_settings(name: str) -> dict:
    """SETTINGS["shapes"]["full"] of experiments/NAME.py as committed here."""
    import importlib.util
    import sys

    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        path = ROOT / "experiments" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"_claims_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    return module.SETTINGS["shapes"]["full"]


def _train_steps(r: dict) -> int:
    """The training steps. Results written before the header kept them (the committed ones:
    `steps` there holds a description of the tasks' steps, now `task_steps`) take the number
    from the experiment's settings, which the JSON's other settings must equal
    (`test_results_match_the_committed_settings`)."""
    settings = r["representations"]["settings"]
    if "task_steps" in settings:
        return settings["steps"]
    return _experiment_settings("representations")["steps"]


def _models(r: dict, m: str) -> dict:
    return r["representations"]["models"][m]


# (README fragment with {} placeholders, the values from the JSONs as printed)
CLAIMS: dict[str, tuple[str, Callable[[dict], tuple]]] = {
    "sizes": (
        "{} generated training and {} test images of 32×32×3",
        lambda r: tuple(
            r["representations"]["settings"]["shapes_kwargs"][k] for k in ("num_train", "num_test")
        ),
    ),
    "training": (
        "same {} MLP, {} Adam steps of batch {}, ℓ2 ε_train = {} with {} PGD steps",
        lambda r: (
            "-".join(str(h) for h in r["representations"]["settings"]["hidden"]),
            _train_steps(r),
            r["representations"]["settings"]["batch"],
            r["representations"]["settings"]["eps_train"],
            r["representations"]["settings"]["pgd_steps"],
        ),
    ),
    "scale": (
        "every ℓ2 size scaled by {}, e.g. inpainting of the centre {}×{} pixels",
        lambda r: (
            f"{_scale(r):g}",
            r["synthesis"]["settings"]["mask"][1] - r["synthesis"]["settings"]["mask"][0],
            r["synthesis"]["settings"]["mask"][1] - r["synthesis"]["settings"]["mask"][0],
        ),
    ),
    "seeds": (
        "the blocky {}×{}-upscaled seeds",
        lambda r: (32 // r["synthesis"]["settings"]["gauss_factor"],) * 2,
    ),
    "wall": (
        "runs took {} s (representations) and {} s (synthesis)",
        lambda r: (
            f"{r['representations']['wall_time_s']:.0f}",
            f"{r['synthesis']['wall_time_s']:.0f}",
        ),
    ),
    "robust_train_seconds": (
        "robust training alone {} s",
        lambda r: (f"{_models(r, 'robust')['train_seconds']:.0f}",),
    ),
    "models": (
        "standard {} clean, {} under ℓ2 PGD-{} at ε = {}; robust {} clean, {} (n = {};",
        lambda r: (
            _pse(_models(r, "standard")["clean_accuracy"]),
            _pse(_models(r, "standard")["robust_accuracy"]),
            r["representations"]["settings"]["eval_steps"],
            r["representations"]["settings"]["eps_train"],
            _pse(_models(r, "robust")["clean_accuracy"]),
            _pse(_models(r, "robust")["robust_accuracy"]),
            _models(r, "robust")["clean_accuracy"]["n"],
        ),
    ),
    "synthesis_models": (
        "(the synthesis run's models, retrained with the same seed: standard {} clean, robust {})",
        lambda r: (
            _pct(r["synthesis"]["models"]["standard"]["clean_accuracy"]),
            _pct(r["synthesis"]["models"]["robust"]["clean_accuracy"]),
        ),
    ),
    "robust_dead": (
        "relative feature error of its inversions is {}, its visualised units' activation {} "
        "and the visible-pixel ℓ2 change of its inpaintings {}",
        lambda r: (
            _v(r["representations"]["inversion"]["robust"]["relative_feature_error"]),
            _v(r["representations"]["visualization"]["robust"]["activation_from_image"]),
            _v(r["synthesis"]["inpainting"]["robust"]["visible_l2_change"]),
        ),
    ),
    "judge": (
        "pixel {}-NN judge is {} accurate on the shapes test images",
        lambda r: (
            re.search(r"(\d+)-NN", r["synthesis"]["settings"]["judge"]).group(1),  # type: ignore[union-attr]
            _pse(r["synthesis"]["settings"]["judge_test_accuracy"]),
        ),
    ),
    "inversion": (
        "Inversion from noise ({} images, {} steps of {} decaying to 0): mean pixel ℓ2 "
        "distance to the source standard {}, robust {}, the noise starts {}; judged as the "
        "source's class standard {}, robust {}.",
        lambda r: (
            r["representations"]["inversion"]["robust"]["mean_l2_to_source"]["n"],
            r["representations"]["settings"]["invert_steps"],
            r["representations"]["settings"]["invert_step_size"],
            _vse(r["representations"]["inversion"]["standard"]["mean_l2_to_source"]),
            _vse(r["representations"]["inversion"]["robust"]["mean_l2_to_source"]),
            _v(r["representations"]["inversion"]["start_mean_l2_to_source"]),
            _pct(r["representations"]["inversion"]["standard"]["judged_as_source_class"]),
            _pct(r["representations"]["inversion"]["robust"]["judged_as_source_class"]),
        ),
    ),
    "generation": (
        "Generation from another class's seeds, judged as the target: standard {}, robust {} "
        "(n = {}), the seeds alone {}.",
        lambda r: (
            _pct(r["synthesis"]["generation"]["standard"]["from_other_class_judged_as_target"]),
            _pct(r["synthesis"]["generation"]["robust"]["from_other_class_judged_as_target"]),
            r["synthesis"]["generation"]["robust"]["from_other_class_judged_as_target"]["n"],
            _pct(r["synthesis"]["generation"]["seeds_other_class_judged_as_target"]),
        ),
    ),
    "inpainting": (
        "Inpainting, masked-region MSE: standard {}, robust {}, per-pixel training-mean fill {} "
        "(n = {}).",
        lambda r: (
            _v(r["synthesis"]["inpainting"]["standard"]["masked_mse"], 4),
            _v(r["synthesis"]["inpainting"]["robust"]["masked_mse"], 4),
            _v(r["synthesis"]["inpainting"]["mean_fill"], 4),
            r["synthesis"]["inpainting"]["mean_fill"]["n"],
        ),
    ),
}


def _scale(r: dict) -> float:
    """The factor from the digits full settings to the shapes ones, the same for every ℓ2
    size (checked in `test_every_l2_size_scales_by_the_same_factor`)."""
    return round(r["synthesis"]["settings"]["gen_eps"] / DIGITS["synthesis"]["gen_eps"], 6)


def _fragment(name: str, r: dict) -> str:
    template, values = CLAIMS[name]
    return template.format(*values(r))


def test_results_are_full_shapes_runs_of_committed_code():
    for name, r in _load().items():
        assert r["smoke"] is False, name
        assert r["settings"]["dataset"] == "shapes", name
        assert r["git_commit"] and not r["git_commit"].endswith("+dirty"), name
        # Sized to stay under 12 minutes on the shared 2-core CPU.
        assert r["wall_time_s"] < 12 * 60, name


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_readme_fragment_matches_the_results(name):
    assert _fragment(name, _load()) in _readme(), _fragment(name, _load())


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_readme_fragment_fails_on_other_numbers(name):
    assert _fragment(name, perturb_numbers(_load())) not in _readme()


def test_every_l2_size_scales_by_the_same_factor():
    r = _load()
    for name, keys in L2_SIZES.items():
        for k in keys:
            assert r[name]["settings"][k] == pytest.approx(_scale(r) * DIGITS[name][k]), (name, k)
    # The interpolation's step, 0.5 on digits (the code's default), scales the same way.
    assert r["representations"]["settings"]["interp_step_size"] == pytest.approx(_scale(r) * 0.5)


def test_none_of_the_issue_bars_is_met_and_the_flags_follow_from_the_numbers():
    """The README says none of the issue's bars is met on shapes: every acceptance flag is
    False, and the flags are what the numbers give (the digits claims' check)."""
    r = _load()
    assert _acceptance_consistent(r)
    for name in RESULTS:
        assert r[name]["acceptance"] and not any(r[name]["acceptance"].values()), name
    assert "None of the issue's bars is met on shapes" in _readme()


def test_results_match_the_committed_settings():
    r = _load()
    for name in RESULTS:
        want = _experiment_settings(name)
        got = r[name]["settings"]
        for k, v in want.items():
            # Results written before `task_steps` hold the tasks' description under `steps`.
            if k != "steps" or "task_steps" in got:
                assert got[k] == v, (name, k)
    assert _experiment_settings("synthesis")["steps"] == _train_steps(r)
