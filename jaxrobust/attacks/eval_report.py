"""`EvalReport`: what `evaluate` measured, per ε, per attack and per example, with a
JSON + npz round trip."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jaxrobust.errors import InputError

CLEAN_WRONG = -2
"""`broken_by` value of an example the model misclassifies without any attack."""
UNBROKEN = -1
"""`broken_by` value of an example no attack broke (robust)."""
BY_CASCADE = -3
"""`Escalation.broken_by` value of an example the cascade had broken already."""

_ARRAYS = ("broken_by", "x_adv_by_eps", "clean_correct")


@dataclass
class Flag:
    """One sanity-check finding: a short name and what it means for the evaluation."""

    name: str
    message: str


@dataclass
class Escalation:
    """A second evaluation, run because the sanity checks found masked gradients.

    attacks: its attacks (the white-box ones take their gradients from a differentiable
    surrogate of the model; success is always decided by the model itself); reason: the
    flags that triggered it. `robust_accuracy[i]` is the per-example worst case over the
    cascade *and* these attacks at `eps[i]`; `per_attack[name][i]` the accuracy after that
    attack. broken_by (E, N) int: the index into `attacks` of the escalation attack that
    broke a point the cascade had left unbroken; `UNBROKEN` (-1) where none did,
    `BY_CASCADE` (-3) where the cascade broke it, `CLEAN_WRONG` (-2).
    """

    attacks: list[str]
    reason: list[str]
    robust_accuracy: list[float]
    per_attack: dict[str, list[float]]
    timings: dict[str, float]
    broken_by: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("broken_by")
        return d


@dataclass
class EvalReport:
    """Outcome of `evaluate`. Accuracies are fractions of all `num_examples` examples.

    `robust_accuracy[i]` is the per-example worst case over the suite at `eps[i]`;
    `per_attack[name][i]` the accuracy after that attack in the cascade; timings in seconds
    (attacking, without compilation; compile_seconds separately).

    Per example (N = num_examples, E = len(eps)):
      clean_correct: (N,) bool, correct on the clean input.
      broken_by: (E, N) int, the index into `attacks` of the first attack that broke the
        example at eps[i]; `UNBROKEN` (-1) where none did (robust), `CLEAN_WRONG` (-2)
        where the clean input is misclassified already.
      x_adv_by_eps: (E, N, ...) the adversarial input that broke it (the clean input where
        unbroken or clean-wrong; NaN for points broken in an earlier run of a resumed
        evaluation, whose inputs were not kept).
    escalation: the escalated evaluation when the checks found masked gradients
      (`Escalation`), else None; `robust_accuracy` stays the cascade's number.
    """

    eps: list[float]
    attacks: list[str]
    clean_accuracy: float
    robust_accuracy: list[float]
    per_attack: dict[str, list[float]]
    timings: dict[str, float]
    compile_seconds: float
    flags: list[Flag] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    num_examples: int = 0
    clean_correct: np.ndarray | None = None
    broken_by: np.ndarray | None = None
    x_adv_by_eps: np.ndarray | None = None
    escalation: Escalation | None = None

    @property
    def trusted(self) -> bool:
        return not self.flags

    @property
    def x_adv(self) -> np.ndarray | None:
        """Adversarial inputs at eps[-1], (N, ...) (clean where unbroken)."""
        return None if self.x_adv_by_eps is None else self.x_adv_by_eps[-1]

    @property
    def robust(self) -> np.ndarray | None:
        """(E, N) bool: correct under every attack of the cascade at eps[i]."""
        return None if self.broken_by is None else self.broken_by == UNBROKEN

    @property
    def final_robust_accuracy(self) -> list[float]:
        """The escalated robust accuracy when there was an escalation, else the cascade's."""
        return list(self.escalation.robust_accuracy if self.escalation else self.robust_accuracy)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able part: every number, no per-example arrays."""
        d = {k: v for k, v in asdict(self).items() if k not in (*_ARRAYS, "escalation")}
        d["flags"] = [asdict(f) for f in self.flags]
        d["escalation"] = None if self.escalation is None else self.escalation.to_dict()
        return d

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write `PATH.json` (the numbers) and `PATH.npz` (the per-example arrays);
        a `.json` suffix on `path` is dropped first. Returns the two paths."""
        base = _base(path)
        base.parent.mkdir(parents=True, exist_ok=True)
        json_path, npz_path = base.with_suffix(".json"), base.with_suffix(".npz")
        json_path.write_text(json.dumps(self.to_dict(), indent=1))
        arrays = {k: getattr(self, k) for k in _ARRAYS if getattr(self, k) is not None}
        if self.escalation is not None and self.escalation.broken_by is not None:
            arrays["escalation_broken_by"] = self.escalation.broken_by
        np.savez_compressed(npz_path, **arrays)
        return json_path, npz_path

    @classmethod
    def load(cls, path: str | Path) -> EvalReport:
        """The report `save(path)` wrote."""
        base = _base(path)
        json_path, npz_path = base.with_suffix(".json"), base.with_suffix(".npz")
        try:
            d = json.loads(json_path.read_text())
            with np.load(npz_path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except FileNotFoundError as e:
            raise InputError(
                f"no saved evaluation report at {base}: {e.filename} is missing"
            ) from None
        except (json.JSONDecodeError, ValueError, OSError) as e:
            raise InputError(f"the evaluation report at {base} is corrupt ({e})") from None
        d["flags"] = [Flag(**f) for f in d["flags"]]
        esc = d.pop("escalation", None)
        if esc is not None:
            esc = Escalation(**esc, broken_by=arrays.pop("escalation_broken_by", None))
        array_fields: dict[str, Any] = {k: arrays.get(k) for k in _ARRAYS}
        return cls(**d, **array_fields, escalation=esc)


def _base(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".json", ".npz") else path
