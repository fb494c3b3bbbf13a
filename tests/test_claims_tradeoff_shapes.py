"""The README's paragraph "The trade-off on shapes" is a test: every number it prints is
formatted from the committed results (experiments/results/tradeoff/tradeoff_shapes.json,
written by `jaxrobust experiment tradeoff --dataset shapes`), the property each sentence
states is checked on the JSON, and a perturbed copy of the JSON changes every number."""

from __future__ import annotations

import json
import re
from pathlib import Path

from claims_helpers import perturb_numbers

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "tradeoff" / "tradeoff_shapes.json"


def _readme() -> str:
    return re.sub(r"\s+", " ", (ROOT / "README.md").read_text())


def _r() -> dict:
    return json.loads(RESULTS.read_text())


# Positions in the sweeps (checked by the first test): planted ε_train 0, 0.5, 1.5; plain 0, 1.5.
PLANTED = {0.0: 0, 0.5: 1, 1.5: 2}
PLAIN = {0.0: 0, 1.5: 1}


def _at(variant: dict, key: str, eps: float, split: str | None = None) -> tuple[float, float]:
    """(mean over seeds, SE over seeds) of `key` (`accuracy` needs a split) at ε_train = eps."""
    i = (PLANTED if len(variant["eps_train"]) == 3 else PLAIN)[eps]
    m = variant[key][split] if split else variant[key]
    return m["value"][i], m["se"][i]


def _pse(m: tuple[float, float]) -> str:
    return f"{100 * m[0]:.1f}% ± {100 * m[1]:.1f}"


def _p(m: tuple[float, float]) -> str:
    return f"{100 * m[0]:.1f}%"


def fragments(r: dict) -> list[str]:
    """The paragraph's numbers as the README prints them."""
    pl, pn, s = r["planted"], r["plain"], r["settings"]
    drop = pl["reliance_drop_pp"]
    i05 = PLANTED[0.5]
    train = (pl["train_seconds"] + pn["train_seconds"]) / 60
    return [
        f"on {s['num_train']} training images with the pattern (norm {s['planted_norm']:.1f})",
        f"{s['epochs']} epochs of batch {s['batch_size']}",
        f"ramped up over the first {s['eps_warmup_epochs']:g} epochs; {s['seeds']} training seeds "
        f"per point; every accuracy on the same {s['num_test']} test images",
        f"accuracy on `test` is {_pse(_at(pl, 'accuracy', 0.0, 'test'))} at ε_train = 0, "
        f"{_pse(_at(pl, 'accuracy', 0.5, 'test'))} at 0.5 and "
        f"{_pse(_at(pl, 'accuracy', 1.5, 'test'))} at 1.5",
        f"({_p(_at(pl, 'accuracy', 0.0, 'test_clean'))} on `test_clean`, a "
        f"{drop['value'][0]:.1f}-point drop under the shuffle)",
        f"(a {drop['value'][i05]:.1f} ± {drop['se'][i05]:.1f}-point drop)",
        f"({_p(_at(pl, 'accuracy', 0.5, 'test_clean'))} on `test_clean`)",
        f"the standard models score {_pse(_at(pn, 'accuracy', 0.0, 'test'))} and those trained "
        f"at 1.5 score {_pse(_at(pn, 'accuracy', 1.5, 'test'))}",
        f"({_p(_at(pl, 'accuracy', 0.0, 'test'))} against {_p(_at(pn, 'accuracy', 0.0, 'test'))} "
        "at ε_train = 0)",
        f"keep {_p(_at(pl, 'robust_accuracy_own_eps', 0.5))} (0.5) and "
        f"{_p(_at(pl, 'robust_accuracy_own_eps', 1.5))} (1.5, planted)",
        f"The {sum(len(v['eps_train']) for v in (pl, pn)) * s['seeds']} runs took {train:.1f} "
        f"minutes of training ({r['wall_time_s'] / 60:.1f} minutes of wall time",
    ]


def test_the_run_is_the_full_sweep_from_committed_code():
    r = _r()
    s = r["settings"]
    assert r["smoke"] is False and not r["git_commit"].endswith("+dirty")
    assert s["model"] == "bn_cnn" and s["objective"] == "pgd_at" and s["adversary_steps"] == 1
    assert s["step_factor"] == 1.0 and s["learning_rate"] == 2e-3
    assert r["planted"]["eps_train"] == [0.0, 0.5, 1.5] and r["plain"]["eps_train"] == [0.0, 1.5]
    assert all(len(row) == s["seeds"] >= 3 for row in r["planted"]["accuracy_per_seed"]["test"])
    assert r["planted"]["dataset_kwargs"]["planted"] is True
    assert not r["plain"]["dataset_kwargs"].get("planted", False)


def test_what_the_paragraph_says_holds():
    r = _r()
    pl, pn = r["planted"], r["plain"]
    # the bar, and the JSON's own flag
    assert r["acceptance"]["planted_clean_falls_past_pattern_norm"] is True
    # the standard models rely on the pattern (>= 20-point drop), those at 0.5 do not (< 5)
    drop = pl["reliance_drop_pp"]["value"]
    assert drop[0] >= 20 and abs(drop[1]) < 5
    # past the norm planted and plain meet: within 2 SE of the difference
    a, b = _at(pl, "accuracy", 1.5, "test"), _at(pn, "accuracy", 1.5, "test")
    assert abs(a[0] - b[0]) < 2 * (a[1] ** 2 + b[1] ** 2) ** 0.5
    # plain falls too
    assert r["acceptance"]["plain_clean_falls_past_pattern_norm"] is True


def test_readme_prints_the_numbers_and_they_move_with_the_json():
    text = _readme()
    r = _r()
    assert [f for f in fragments(r) if f not in text] == []
    moved = fragments(perturb_numbers(r))
    assert [f for f in moved if f in text] == []
