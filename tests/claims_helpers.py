"""Shared by the claims tests: a claim must fail when its numbers move."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def shrink(x: float) -> float:
    """The default move of a claimed number: 10% smaller, and 0 becomes 0.05 (so a claim
    that a rate is 0, or that a count is none, fails too)."""
    return x * 0.9 if x else 0.05


def perturb_numbers(o: Any, move: Callable[[float], float] = shrink) -> Any:
    """A copy of a results tree (dicts, lists, scalars from a JSON file) with every number
    passed through `move`; booleans, strings and None are kept. A claims test asserts that
    its claim no longer holds on the result."""
    if isinstance(o, dict):
        return {k: perturb_numbers(v, move) for k, v in o.items()}
    if isinstance(o, list):
        return [perturb_numbers(v, move) for v in o]
    if isinstance(o, bool) or not isinstance(o, int | float):
        return o
    return move(o)
