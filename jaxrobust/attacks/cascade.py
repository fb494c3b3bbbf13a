"""`evaluate`: a robust accuracy you can publish, and flags when it can't be trusted.

A cascade of attacks (AutoAttack's `standard` suite by default: APGD-CE → APGD-T → FAB-T →
Square) runs on the points every previous attack failed to break; the robust accuracy is
the per-example worst case over the suite. Batches are padded to a few fixed shapes
(multiples of batch_size / 8), so each stage runs on a batch about the size of the set of
still-unbroken points while an attack compiles at most 8 programs; ε is a traced argument,
so an ε sweep reuses them, and the programs are kept across calls in a process (a new
checkpoint of the same architecture compiles nothing). Sanity checks after the cascade
report the classic signs of an unreliable evaluation (Carlini et al. 2019; Athalye et
al. 2018) as flags with explanations; where they find masked gradients, an escalation
(BPDA through the masking operations, a stronger Square) continues the cascade and the
report gives both numbers.

`evaluate` is host-side orchestration (NumPy books, one compiled program per attack and
batch shape): call it from Python, not inside `jax.jit`; it is not differentiable.

Batches are sharded over all devices of all processes (multi-host: every process calls
`evaluate` with the same arguments and data after
`jaxrobust.parallel.initialize_distributed`); results come back replicated, so every
process keeps the same books and returns the same report.

The pieces, each in its own module: `suites` (the attacks and suites by name, EOT),
`eval_plan` (devices, padded chunks, the program cache), this module (input checks, the
cascade loop and its resumable books), `eval_checks` (the sanity checks), `escalation`
and `eval_report` (`EvalReport`, per example, saved as JSON + npz).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.attacks.eval_checks import MASKING_FLAGS, large_eps, sanity_checks
from jaxrobust.attacks.eval_plan import (
    Placement,
    chunks,
    compiled_program,
    granule_for,
    select_mesh,
)
from jaxrobust.attacks.eval_report import CLEAN_WRONG, UNBROKEN, EvalReport, Flag
from jaxrobust.attacks.suites import (
    AttackFn,
    expectation_over_transformation,
    is_randomised,
    resolve_suite,
)
from jaxrobust.errors import InputError, check_batch, check_range
from jaxrobust.parallel import is_primary, process_allgather_json
from jaxrobust.threat import get_threat

Array = jax.Array

STATE_VERSION = 2  # state files record per-example results (`broken_by`) since version 2


def evaluate(
    logits_fn: Callable,
    x: Any,
    y: Any,
    key: Array,
    *,
    threat: str = "linf",
    eps: float | Sequence[float] = 8 / 255,
    attacks: str | Sequence[str | tuple[str, AttackFn]] = "standard",
    batch_size: int = 256,
    lo: float = 0.0,
    hi: float = 1.0,
    checks: bool = True,
    check_examples: int = 256,
    eot_samples: int = 20,
    state_file: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
    devices: int | Sequence[Any] | None = None,
    progress_bar: bool = False,
    escalate: bool = True,
) -> EvalReport:
    """Robust accuracy under a cascade of attacks, per ε, per example, with sanity checks.

    Host-side NumPy orchestration of compiled attack programs: call it eagerly (not inside
    `jax.jit`); it is not differentiable.

    Args:
      logits_fn: the model, x (B, ...) -> logits (B, C); a randomised model takes a key,
        `logits_fn(x, key)`, and is attacked through EOT (`eot_samples` draws). Pass a
        `jax.tree_util.Partial` carrying the weights (what `jr.as_logits_fn` and
        `TrainState.logits_fn` return) so that a new checkpoint reuses compiled programs.
      x: (N, ...) inputs in [lo, hi], N ≥ 1.
      y: (N,) integer labels in [0, C).
      key: PRNG key for the attacks' random starts.
      threat: "linf", "l2" or "l1".
      eps: one finite ε > 0 or several (one pass per ε, compiled once).
      attacks: a suite name (`SUITES`) or a list of attack names (`ATTACKS`) and/or
        (name, attack_fn) pairs with attack_fn(logits_fn, x, y, key, threat) -> Result.
      batch_size: the fixed attack batch (padded); a multiple of the device count shards it
        (with several processes it must be one).
      checks: run the sanity checks (on the first `check_examples` examples).
      state_file: JSON file recording finished (ε, attack) steps; a rerun with the same
        arguments resumes after the last finished step. With several processes, process 0
        writes it and every process reads it (a file system they share).
      progress: optional callback receiving one line per finished step (process 0 only).
      devices: shard batches over these devices (a sequence of `jax.Device`), or the first
        n devices (an int); None: all devices when batch_size is a multiple of their count.
        On CPU, `jaxrobust.parallel.use_cpu_cores_as_devices()` before JAX starts gives one
        device per core (what the `jaxrobust` command does). Results do not depend on it.
      progress_bar: show a tqdm progress bar over the cascade's steps (process 0 only).
      escalate: when the checks find masked gradients (zero gradients, accuracy left at a
        box-covering ε, black-box or single-step attacks stronger than the iterative
        white-box ones), continue with the escalation (`jaxrobust.attacks.escalation`:
        BPDA through the masking operations, a stronger Square) and report it in
        `EvalReport.escalation`; `robust_accuracy` stays the cascade's number.

    Returns:
      `EvalReport`.

    Raises:
      InputError: bad arguments or model outputs; with several processes, a batch_size that
        is not a multiple of the device count, or a `state_file` that the processes read
        differently.
    """
    t_start = time.perf_counter()
    x, y, eps_list, suite = _validate(x, y, eps, threat, lo, hi, batch_size, attacks)
    for name, value in (("check_examples", check_examples), ("eot_samples", eot_samples)):
        if int(value) < 1:
            raise InputError(f"{name} must be >= 1, got {value}")

    randomised = is_randomised(logits_fn)
    model = (
        expectation_over_transformation(logits_fn, jax.random.fold_in(key, 7), eot_samples)
        if randomised
        else logits_fn
    )
    placement = Placement.create(model, select_mesh(batch_size, devices))
    n = len(y)
    clean, compile_seconds = clean_correct(placement, x, y, batch_size)
    cascade = Cascade(placement, suite, threat, lo, hi, batch_size)
    cascade.compile_seconds += compile_seconds
    books = Books.load(state_file, eps_list, [name for name, _ in suite], clean, x)
    cascade.run(x, y, key, eps_list, books, state_file, progress, progress_bar)

    flags: list[Flag] = []
    if cascade.invalid:
        flags.append(
            Flag(
                "invalid_examples",
                f"{cascade.invalid} adversarial examples were outside the ε-ball or the input "
                "range or contained NaN; they were not counted as broken. An attack is "
                "misbehaving.",
            )
        )
    if randomised:
        flags.append(
            Flag(
                "randomised_model",
                "the model takes a key: its logits are random, so it was attacked through EOT "
                f"({eot_samples} samples); report this robust accuracy as an EOT evaluation",
            )
        )
    broken_by = books.broken_by_array()
    report = EvalReport(
        eps=eps_list,
        attacks=[name for name, _ in suite],
        clean_accuracy=float(clean.mean()),
        robust_accuracy=[float(np.mean(r == UNBROKEN)) for r in broken_by],
        per_attack=books.per_attack_list(),
        timings=books.timings,
        compile_seconds=cascade.compile_seconds,
        flags=flags,
        num_examples=n,
        clean_correct=clean,
        broken_by=broken_by,
        x_adv_by_eps=books.x_adv,
    )
    if checks:
        m = check_examples
        sanity_checks(report, logits_fn, placement, x[:m], y[:m], key, threat, lo, hi, randomised)
        masking = [f.name for f in report.flags if f.name in MASKING_FLAGS]
        if escalate and masking:
            from jaxrobust.attacks.escalation import run_escalation

            report.escalation = run_escalation(
                report, cascade, x, y, key, masking, progress=progress
            )
    report.checks["total_seconds"] = time.perf_counter() - t_start
    return report


# ----------------------------------------------------------------------------- inputs


def _validate(x, y, eps, threat, lo, hi, batch_size, attacks):
    """Eager checks of `evaluate`'s arguments; returns (x float32, y, eps list, suite)."""
    try:
        x = np.asarray(x, np.float32)
    except (TypeError, ValueError):
        raise InputError("x must be a numeric array of inputs (N, ...)") from None
    y = np.asarray(y)
    check_batch(x, y)
    if len(y) == 0:
        raise InputError("x and y are empty: give at least one example to evaluate")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InputError(f"the input range must satisfy lo < hi (finite), got [{lo}, {hi}]")
    check_range(x, lo, hi)
    try:
        eps_list = [float(e) for e in np.atleast_1d(np.asarray(eps, np.float64)).ravel()]
    except (TypeError, ValueError):
        raise InputError(f"eps must be a number or a list of numbers, got {eps!r}") from None
    if not eps_list or any(not e > 0 for e in eps_list):
        raise InputError(f"every eps must be > 0, got {eps_list}")
    get_threat(threat, 1.0, lo=lo, hi=hi)
    if any(math.isinf(e) for e in eps_list):
        dim = int(np.prod(x.shape[1:]))
        raise InputError(
            f"eps must be finite, got {eps_list}: the attacks' step sizes scale with ε; "
            f"ε = {large_eps(threat, dim, lo, hi):g} already covers the whole input box "
            f"[{lo}, {hi}] in {threat}"
        )
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return x, y, eps_list, resolve_suite(attacks)


def _logits_program(static_model: Any):
    return lambda m, a: (static_model if m is None else m)(a)


def clean_correct(
    placement: Placement, x: np.ndarray, y: np.ndarray, batch_size: int
) -> tuple[np.ndarray, float]:
    """Per-example correctness on clean inputs, (N,) bool, after checking the model's
    output shape, finiteness and the labels' range. Returns it and compile seconds."""
    n = len(y)
    static, kw = placement.static_model, placement.jit_kwargs()
    build = lambda: _logits_program(static)  # noqa: E731
    args = (placement.carried, placement.whole(x[: min(n, batch_size)]))
    program, seconds = compiled_program(placement.key("logits"), build, kw, args)
    probe = program(*args)
    if probe.ndim != 2 or probe.shape[0] != min(n, batch_size):
        raise InputError(
            f"the model must return logits of shape (batch, num_classes), got {probe.shape} "
            f"for a batch of {min(n, batch_size)}"
        )
    num_classes = probe.shape[1]
    if y.min() < 0 or y.max() >= num_classes:
        raise InputError(
            f"labels must lie in [0, {num_classes}) for a model with {num_classes} outputs, "
            f"got [{y.min()}, {y.max()}]"
        )
    clean = np.zeros(n, bool)
    for idx, count in chunks(np.arange(n), batch_size, granule_for(batch_size, placement)):
        args = (placement.carried, placement.place(x[idx]))
        program, more = compiled_program(placement.key("logits"), build, kw, args)
        seconds += more
        # Host-side checks: eager jnp ops would each compile a tiny program per process.
        z = np.asarray(program(*args))
        if not np.all(np.isfinite(z)):
            raise InputError("the model returned non-finite logits (NaN or inf)")
        clean[idx[:count]] = (np.argmax(z, -1) == y[idx])[:count]
    return clean, seconds


# ----------------------------------------------------------------------------- books


class Books:
    """What the cascade has established so far, per ε and example, and its state file.

    broken_by[i] (N,) int per ε index: the first attack that broke each example
    (`UNBROKEN`, `CLEAN_WRONG`); x_adv (E, N, ...) the inputs that broke them; done[i] the
    index of the last finished attack at ε i; per_attack[name][i] the accuracy after it."""

    def __init__(self, state: dict, clean: np.ndarray, x: np.ndarray):
        self.state = state
        fresh = np.where(clean, UNBROKEN, CLEAN_WRONG)
        e = len(state["eps"])
        self.broken_by = [np.array(state["broken_by"].get(str(i), fresh)) for i in range(e)]
        self.x_adv = np.repeat(x[None], e, axis=0)
        for i, b in enumerate(self.broken_by):
            # Points broken in an earlier run: their adversarial inputs were not kept.
            self.x_adv[i][b >= 0] = np.nan
        self.timings: dict[str, float] = dict.fromkeys(state["attacks"], 0.0)
        self.timings.update(state["timings"])

    @classmethod
    def load(cls, path, eps_list, names, clean, x) -> Books:
        state = _load_state(path, eps_list, names, len(clean))
        if jax.process_count() > 1 and path is not None:
            # Processes that resumed from different steps would run different programs and
            # wait for each other forever: check that they all read the same state. (Each
            # read it before this collective; process 0 writes it only after.)
            seen = process_allgather_json({k: state[k] for k in ("done", "broken_by")})
            if any(s != seen[0] for s in seen):
                raise InputError(
                    f"the processes read different evaluation states from {path}: it must "
                    "lie on a file system that every process shares"
                )
        return cls(state, clean, x)

    def done(self, ei: int) -> int:
        return self.state["done"].get(str(ei), -1)

    def record(self, ei: int, ai: int, name: str, state_file) -> float:
        """Mark attack `ai` at ε index `ei` finished; write the state file. Returns the
        robust accuracy after it."""
        acc = float(np.mean(self.broken_by[ei] == UNBROKEN))
        s = self.state
        s["broken_by"][str(ei)] = self.broken_by[ei].tolist()
        s["robust"][str(ei)] = (self.broken_by[ei] == UNBROKEN).tolist()
        s["done"][str(ei)] = ai
        s["per_attack"].setdefault(name, [None] * len(s["eps"]))[ei] = acc
        s["timings"] = self.timings
        if state_file is not None and is_primary():
            _atomic_write(Path(state_file), s)
        return acc

    def per_attack_list(self) -> dict[str, list[float]]:
        return {name: list(self.state["per_attack"][name]) for name in self.state["attacks"]}

    def broken_by_array(self) -> np.ndarray:
        return np.stack(self.broken_by).astype(np.int32)


def _atomic_write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _load_state(path, eps_list, names, n) -> dict:
    fresh = {
        "version": STATE_VERSION,
        "eps": eps_list,
        "attacks": names,
        "n": n,
        "done": {},
        "robust": {},
        "broken_by": {},
        "per_attack": {},
        "timings": {},
    }
    if path is None or not Path(path).is_file():
        return fresh
    try:
        state = json.loads(Path(path).read_text())
    except json.JSONDecodeError:
        raise InputError(
            f"evaluation state file {path} is corrupt; delete it to start over"
        ) from None
    if [state.get(k) for k in ("eps", "attacks", "n")] != [eps_list, names, n]:
        raise InputError(
            f"evaluation state file {path} belongs to another evaluation (different eps, "
            "attacks or data); delete it or pass another state_file"
        )
    if state.get("version") != STATE_VERSION:
        raise InputError(
            f"evaluation state file {path} was written by an older jaxrobust (no per-example "
            "results); delete it to start over"
        )
    return state


# ----------------------------------------------------------------------------- the cascade


def _attack_program(name: str, fn: AttackFn, static_model: Any, threat: str, lo, hi):
    def run(xb, yb, base_key, ei, start, e, m):
        # The chunk's key is derived inside the program (no eager fold_in programs).
        k = jax.random.fold_in(jax.random.fold_in(base_key, ei), start)
        t = get_threat(threat, e, lo=lo, hi=hi)
        f = static_model if m is None else m
        r = fn(f, xb, yb, k, t)
        return r.x_adv, jnp.argmax(f(r.x_adv), -1) != yb

    return run


def _norm(delta: np.ndarray, name: str) -> np.ndarray:
    flat = delta.reshape(len(delta), -1)
    if name == "linf":
        return np.abs(flat).max(1)
    if name == "l2":
        return np.sqrt((flat.astype(np.float64) ** 2).sum(1))
    return np.abs(flat).sum(1)


def valid(xa: np.ndarray, x: np.ndarray, threat: str, eps: float, lo: float, hi: float):
    """(B,) bool: adversarial inputs that are finite, in the box and in the ε-ball."""
    finite = np.isfinite(xa.reshape(len(xa), -1)).all(1)
    in_box = ((xa >= lo - 1e-6) & (xa <= hi + 1e-6)).reshape(len(xa), -1).all(1)
    in_ball = _norm(np.nan_to_num(xa - x), threat) <= eps * (1 + 1e-4) + 1e-6
    return finite & in_box & in_ball


class Cascade:
    """Runs attacks, in order, on the points every earlier attack left unbroken, on padded
    chunks of a few compiled shapes (`eval_plan.chunks`), and counts only adversarial
    inputs inside the threat model."""

    def __init__(
        self,
        placement: Placement,
        suite: list[tuple[str, AttackFn]],
        threat: str,
        lo: float,
        hi: float,
        batch_size: int,
    ):
        self.placement, self.suite = placement, suite
        self.threat, self.lo, self.hi, self.batch_size = threat, lo, hi, batch_size
        self.granule = granule_for(batch_size, placement)
        self.compile_seconds = 0.0
        self.invalid = 0
        self._sizes: dict[str, list[int]] = {}  # chunk sizes each attack ran on, this call

    def attack(self, name: str, fn: AttackFn, x, y, indices: np.ndarray, key, ei: int, e: float):
        """Run one attack on x[indices]; yields (example ids, x_adv, broke) per chunk,
        `broke` true only for valid adversarial inputs the model misclassifies."""
        p = self.placement
        sizes = self._sizes.setdefault(name, [])
        for idx, count in chunks(indices, self.batch_size, self.granule, sizes):
            if len(idx) not in sizes:
                sizes.append(len(idx))
            args: tuple[Any, ...] = (
                p.place(x[idx]),
                p.place(y[idx]),
                key,
                np.int32(ei),
                np.int32(idx[0]),
            )
            args = (*args, np.float32(e), p.carried)
            program, seconds = compiled_program(
                p.key("attack", name, fn, self.threat, self.lo, self.hi),
                lambda: _attack_program(name, fn, p.static_model, self.threat, self.lo, self.hi),
                p.jit_kwargs(),
                args,
            )
            self.compile_seconds += seconds
            xa, broke = program(*args)
            xa, broke = np.asarray(xa)[:count], np.array(broke)[:count]
            ids = idx[:count]
            poisoned = np.isnan(xa.reshape(count, -1)).all(axis=1)
            if poisoned.any():  # a traced check failed inside the attack (jaxrobust.errors)
                raise InputError(
                    f"{name} at eps={e:g}: the attack's checks failed on {int(poisoned.sum())} "
                    "example(s) (non-finite logits from the model, or inputs outside the "
                    "threat model's range); no robust accuracy can be reported"
                )
            ok = valid(xa, x[ids], self.threat, e, self.lo, self.hi)
            self.invalid += int((~ok).sum())
            yield ids, xa, broke & ok

    def run(self, x, y, key, eps_list, books: Books, state_file, progress, progress_bar):
        """Every (ε, attack) step not finished in `books`, recording as it goes."""
        bar = None
        if progress_bar and is_primary():
            from tqdm.auto import tqdm

            bar = tqdm(total=len(eps_list) * len(self.suite), desc="evaluate", unit="attack")
        for ei, e in enumerate(eps_list):
            broken_by = books.broken_by[ei]
            for ai, (name, fn) in enumerate(self.suite):
                if bar is not None:
                    bar.set_postfix_str(f"ε={e:g} {name}")
                if ai <= books.done(ei):
                    if bar is not None:
                        bar.update()
                    continue
                t0 = time.perf_counter()
                c0 = self.compile_seconds
                remaining = np.flatnonzero(broken_by == UNBROKEN)
                for ids, xa, broke in self.attack(name, fn, x, y, remaining, key, ei, e):
                    broken_by[ids[broke]] = ai
                    books.x_adv[ei][ids[broke]] = xa[broke]
                # per-attack timings exclude compilation
                books.timings[name] += time.perf_counter() - t0 - (self.compile_seconds - c0)
                acc = books.record(ei, ai, name, state_file)
                if bar is not None:
                    bar.update()
                if progress is not None and is_primary():
                    progress(f"eps={e:g} {name}: robust accuracy {acc:.4f}")
        if bar is not None:
            bar.close()
