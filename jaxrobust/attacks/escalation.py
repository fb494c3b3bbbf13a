"""The escalation `evaluate` runs when its sanity checks find masked gradients.

A model whose gradients are masked (a `stop_gradient`, input quantisation, a `sign`, a
saturated layer) blinds the cascade's white-box attacks, and its robust accuracy comes out
too high even when the flags fire. The escalation continues the cascade on the points it
left unbroken, per ε:

1. BPDA (Athalye et al. 2018): each white-box attack of the suite again, with gradients
   from `straight_through(model)` (`jaxrobust.attacks.bpda`: the same forward values, the
   gradient of every masking operation replaced by the identity), the adversarial input
   judged on the model itself: a point counts as broken only if the model misclassifies it;
2. Square with 4× the queries in 2 restarts (a gradient-free search that masking cannot
   blind, given more budget than the cascade's).

Every adversarial input is checked as the cascade's are (in the ε-ball, in the box,
finite). The report keeps both numbers: `EvalReport.robust_accuracy` (the cascade's) and
`EvalReport.escalation.robust_accuracy` (the worst case over cascade and escalation),
with the attack that broke each point.

What it cannot catch: masking that `straight_through` does not see through (host
callbacks, custom derivative rules returning zero, thresholds built from comparisons,
lookup tables; see `jaxrobust.attacks.bpda`), where only the stronger Square search
helps, and a model that is flat for reasons no surrogate gradient fixes; randomised models
are attacked through EOT first. An escalated number is an upper bound on robust accuracy,
as every attack's number is, not a certificate.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import numpy as np

from jaxrobust.attacks.bpda import bpda
from jaxrobust.attacks.eval_report import (
    BY_CASCADE,
    CLEAN_WRONG,
    UNBROKEN,
    Escalation,
    EvalReport,
    Flag,
)
from jaxrobust.attacks.suites import ATTACKS, BLACK_BOX, AttackFn
from jaxrobust.parallel import is_primary

ESCALATION_KEY = 0x35CA  # folded into the evaluation's key: draws independent of the cascade's
SQUARE_QUERIES = 20000  # 4x the standard suite's Square, per restart
SQUARE_RESTARTS = 2


def _square_more(f, x, y, k, t):
    from jaxrobust.attacks.square import square

    return square(f, x, y, k, threat=t, queries=SQUARE_QUERIES, restarts=SQUARE_RESTARTS)


STRONGER_SQUARE = f"square-{SQUARE_QUERIES // 1000}k-x{SQUARE_RESTARTS}"
_BPDA: dict[AttackFn, AttackFn] = {}  # one BPDA wrapper per attack: stable program keys


def escalation_attacks(suite: list[tuple[str, AttackFn]]) -> list[tuple[str, AttackFn]]:
    """The escalation of a cascade: `bpda-NAME` for each of its white-box attacks (in
    order; PGD-50 when it has none), then Square with more queries and restarts."""
    white = [(name, fn) for name, fn in suite if name not in BLACK_BOX]
    white = white or [("pgd", ATTACKS["pgd"])]
    out = []
    for name, fn in white:
        if fn not in _BPDA:
            _BPDA[fn] = bpda(fn)
        out.append((f"bpda-{name}", _BPDA[fn]))
    return [*out, (STRONGER_SQUARE, _square_more)]


def run_escalation(
    report: EvalReport,
    cascade,
    x: np.ndarray,
    y: np.ndarray,
    key: jax.Array,
    reasons: list[str],
    progress: Callable[[str], None] | None = None,
) -> Escalation:
    """Continue `cascade` (the `jaxrobust.attacks.cascade.Cascade` that produced `report`)
    with the escalation attacks on the points it left unbroken, per ε. Fills the
    adversarial inputs it finds into `report.x_adv_by_eps`; returns the `Escalation`."""
    from jaxrobust.attacks.cascade import Cascade

    attacks = escalation_attacks(cascade.suite)
    esc = Cascade(
        cascade.placement, attacks, cascade.threat, cascade.lo, cascade.hi, cascade.batch_size
    )
    x_adv_by_eps = report.x_adv_by_eps
    assert x_adv_by_eps is not None  # a cascade's report always carries its inputs
    cascade_broken = report.broken_by
    broken_by = np.where(
        cascade_broken == UNBROKEN,
        UNBROKEN,
        np.where(cascade_broken == CLEAN_WRONG, CLEAN_WRONG, BY_CASCADE),
    ).astype(np.int32)
    ekey = jax.random.fold_in(key, ESCALATION_KEY)
    per_attack: dict[str, list[float]] = {name: [] for name, _ in attacks}
    timings = dict.fromkeys(per_attack, 0.0)
    for ei, e in enumerate(report.eps):
        row = broken_by[ei]
        for ai, (name, fn) in enumerate(attacks):
            t0, c0 = time.perf_counter(), esc.compile_seconds
            remaining = np.flatnonzero(row == UNBROKEN)
            for ids, xa, broke in esc.attack(name, fn, x, y, remaining, ekey, ei, e):
                row[ids[broke]] = ai
                x_adv_by_eps[ei][ids[broke]] = xa[broke]
            timings[name] += time.perf_counter() - t0 - (esc.compile_seconds - c0)
            per_attack[name].append(float(np.mean(row == UNBROKEN)))
            if progress is not None and is_primary():
                progress(f"eps={e:g} escalation {name}: robust accuracy {per_attack[name][-1]:.4f}")
    report.compile_seconds += esc.compile_seconds
    if esc.invalid:
        report.flags.append(
            Flag(
                "invalid_examples_escalation",
                f"{esc.invalid} adversarial examples of the escalation were outside the "
                "ε-ball or the input range or contained NaN; they were not counted as broken",
            )
        )
    return Escalation(
        attacks=[name for name, _ in attacks],
        reason=list(reasons),
        robust_accuracy=[float(np.mean(r == UNBROKEN)) for r in broken_by],
        per_attack=per_attack,
        timings=timings,
        broken_by=broken_by,
    )
