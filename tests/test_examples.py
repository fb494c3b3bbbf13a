"""Every script in examples/ runs at its small size and prints what it promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))
# What each example's output must contain (a number in [0, 1] where a group captures one).
EXPECTED = {
    "adversarial_training_optax": r"PGD-50 robust accuracy (\d\.\d+)",
    "attack_equinox": r"clean accuracy (\d\.\d+), APGD-CE-20 robust accuracy (\d\.\d+)",
    "attack_flax_linen": r"evaluate: robust accuracy (\d\.\d+), flags",
    "attack_flax_nnx": r"largest l2 perturbation (\d\.\d+)",
    "attack_plain_function": r"no certified example was broken",
    "evaluate_checkpoints": r"seed1\s+(\d\.\d+)\s+(\d\.\d+)",
}


def test_every_example_has_an_expectation():
    assert sorted(p.stem for p in EXAMPLES) == sorted(EXPECTED)


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(path):
    out = subprocess.run(
        [sys.executable, str(path), "--small"], capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stdout + out.stderr
    match = re.search(EXPECTED[path.stem], out.stdout)
    assert match, out.stdout
    for value in match.groups():
        assert 0.0 <= float(value) <= 1.0 + 1e-6, out.stdout
