"""`evaluate`: a robust accuracy you can publish, and flags when it can't be trusted.

A cascade of attacks (AutoAttack's `standard` suite by default: APGD-CE → APGD-T → FAB-T →
Square) runs on the points every previous attack failed to break; the robust accuracy is
the per-example worst case over the suite. Batches are padded to a few fixed shapes
(multiples of batch_size / 8), so each stage runs on a batch about the size of the set of
still-unbroken points while an attack compiles at most 8 programs; ε is a traced argument,
so an ε sweep reuses them. Sanity checks after the cascade
report the classic signs of an unreliable evaluation (Carlini et al. 2019; Athalye et
al. 2018) as flags with explanations.

Batches are sharded over all devices of all processes (multi-host: every process calls
`evaluate` with the same arguments and data after
`jaxrobust.parallel.initialize_distributed`); results come back replicated, so every
process keeps the same books and returns the same report.
"""

from __future__ import annotations

import inspect
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxrobust.attacks.pgd import fgsm, pgd
from jaxrobust.errors import InputError, check_batch, check_range
from jaxrobust.losses import cross_entropy, margin
from jaxrobust.optimize import Result
from jaxrobust.parallel import (
    data_mesh,
    is_primary,
    local_copy,
    process_allgather_json,
    replicate,
    shard_global_batch,
)
from jaxrobust.threat import ThreatModel, get_threat

Array = jax.Array
LogitsFn = Callable[[Array], Array]
AttackFn = Callable[[LogitsFn, Array, Array, Array, ThreatModel], Result]


# ----------------------------------------------------------------------------- attacks


def _apgd(loss: str, restarts: int = 1) -> AttackFn:
    from jaxrobust.attacks.apgd import apgd

    return lambda f, x, y, k, t: apgd(f, x, y, k, threat=t, steps=100, loss=loss, restarts=restarts)


def _apgd_t(f, x, y, k, t):
    from jaxrobust.attacks.apgd import apgd_targeted

    return apgd_targeted(f, x, y, k, threat=t, steps=100)


def _fab_t(f, x, y, k, t):
    from jaxrobust.attacks.fab import fab_targeted

    return fab_targeted(f, x, y, k, threat=t, steps=100)


def _fab(f, x, y, k, t):
    from jaxrobust.attacks.fab import fab

    return fab(f, x, y, k, threat=t, steps=100, restarts=5)


def _square(f, x, y, k, t):
    from jaxrobust.attacks.square import square

    return square(f, x, y, k, threat=t, queries=5000)


ATTACKS: dict[str, AttackFn] = {
    "apgd-ce": _apgd("ce"),
    "apgd-dlr": _apgd("dlr"),
    "apgd-ce-5": _apgd("ce", restarts=5),
    "apgd-t": _apgd_t,
    "fab": _fab,
    "fab-t": _fab_t,
    "square": _square,
    "pgd": lambda f, x, y, k, t: pgd(f, x, y, k, threat=t, steps=50),
    "pgd-10": lambda f, x, y, k, t: pgd(f, x, y, k, threat=t, steps=10),
    "pgd-margin": lambda f, x, y, k, t: pgd(f, x, y, k, threat=t, steps=50, loss=margin),
    "pgd-100x2": lambda f, x, y, k, t: pgd(f, x, y, k, threat=t, steps=100, restarts=2),
    "fgsm": lambda f, x, y, k, t: fgsm(f, x, y, threat=t),
}
BLACK_BOX = ("square",)

SUITES: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce-5", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    # For randomised models: the model is wrapped with EOT (expectation over its randomness).
    "rand": ("apgd-ce", "apgd-dlr"),
    "fast": ("apgd-ce", "apgd-t"),
}


def expectation_over_transformation(
    logits_fn: Callable[[Array, Array], Array], key: Array, samples: int = 20
) -> LogitsFn:
    """A deterministic model from a randomised one `logits_fn(x, key)`: the mean of the
    log-softmax over `samples` fixed draws. Cross-entropy is linear in log-probabilities,
    so attacking this model follows the EOT gradient E_k ∇CE(f(x, k), y).

    Returns a `jax.tree_util.Partial` carrying the draws' keys and, when `logits_fn` is a
    Partial itself, its weights: passed to a jitted function they are inputs, so a new
    checkpoint of the same architecture reuses the compiled programs (as in `evaluate`)."""
    keys = jax.random.split(key, samples)
    if isinstance(logits_fn, jax.tree_util.Partial):
        return jax.tree_util.Partial(_eot_logits, logits_fn, keys)
    return jax.tree_util.Partial(partial(_eot_logits, logits_fn), keys)


def _eot_logits(logits_fn: Callable[[Array, Array], Array], keys: Array, x: Array) -> Array:
    """Mean log-softmax of `logits_fn(x, k)` over the keys (samples, ...): (B, num_classes)."""
    return jnp.mean(jax.vmap(lambda k: jax.nn.log_softmax(logits_fn(x, k)))(keys), axis=0)


# ----------------------------------------------------------------------------- report


@dataclass
class Flag:
    """One sanity-check finding: a short name and what it means for the evaluation."""

    name: str
    message: str


@dataclass
class EvalReport:
    """Outcome of `evaluate`. Accuracies are fractions of all examples.

    robust_accuracy[i] is the per-example worst case over the suite at eps[i];
    per_attack[name][i] the accuracy after that attack in the cascade; timings in seconds.
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
    x_adv: np.ndarray | None = None  # adversarial inputs at eps[-1] (clean where unbroken)

    @property
    def trusted(self) -> bool:
        return not self.flags

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("x_adv")
        d["flags"] = [asdict(f) for f in self.flags]
        return d


# ----------------------------------------------------------------------------- helpers


REUSE_SLACK = 1.25  # pad a chunk up to an already compiled size at most 25% larger


def _chunks(indices: np.ndarray, batch_size: int, granule: int = 1, reuse: Sequence[int] = ()):
    """Equal chunks of `indices`, each padded (by repeating its first index) to one size.

    The size is the smallest multiple of `granule` (capped at `batch_size`) that splits
    the indices into ceil(len / batch_size) chunks: a cascade stage with 194 examples left
    runs on batches of 225, not 360, and every chunk of a stage shares one compiled shape.
    With granule = batch_size / 8 an attack meets at most 8 shapes, so compilation stays
    bounded (and each shape is cached across runs). A size in `reuse` (the attack's
    compiled sizes) at most `REUSE_SLACK` times larger is taken instead: padding 20% more
    examples costs less than tracing, lowering and compiling another program.
    """
    if len(indices) == 0:
        return
    per_chunk = -(-len(indices) // -(-len(indices) // batch_size))  # ceil(len / #chunks)
    size = min(-(-per_chunk // granule) * granule, batch_size)
    near = [r for r in reuse if size <= r <= min(REUSE_SLACK * size, batch_size)]
    size = min(near, default=size)
    for start in range(0, len(indices), size):
        part = indices[start : start + size]
        pad = size - len(part)
        yield np.concatenate([part, np.full(pad, part[0])]), len(part)


def _norm(delta: np.ndarray, name: str) -> np.ndarray:
    flat = delta.reshape(len(delta), -1)
    if name == "linf":
        return np.abs(flat).max(1)
    if name == "l2":
        return np.sqrt((flat.astype(np.float64) ** 2).sum(1))
    return np.abs(flat).sum(1)


def _large_eps(name: str, dim: int, lo: float, hi: float) -> float:
    """An ε at which every input can reach every other: accuracy must be ~0 there."""
    return {"linf": hi - lo, "l2": math.sqrt(dim) * (hi - lo), "l1": dim * (hi - lo)}[name]


def _is_randomised(logits_fn: Callable) -> bool:
    try:
        params = inspect.signature(logits_fn).parameters.values()
    except (TypeError, ValueError):
        return False
    required = [
        p
        for p in params
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(required) >= 2


def _atomic_write(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- evaluate


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
) -> EvalReport:
    """Robust accuracy under a cascade of attacks, per ε, with sanity checks.

    Args:
      logits_fn: the model, x (B, ...) -> logits (B, C); a randomised model takes a key,
        `logits_fn(x, key)`, and is attacked through EOT (`eot_samples` draws).
      x: (N, ...) inputs in [lo, hi]; y: (N,) integer labels.
      key: PRNG key for the attacks' random starts.
      threat: "linf", "l2" or "l1".
      eps: one ε > 0 or several (one pass per ε, compiled once).
      attacks: a suite name (`SUITES`) or a list of attack names (`ATTACKS`) and/or
        (name, attack_fn) pairs with attack_fn(logits_fn, x, y, key, threat) -> Result.
      batch_size: the fixed attack batch (padded); a multiple of the device count shards it
        (with several processes it must be one).
      checks: run the sanity checks (on the first `check_examples` examples).
      state_file: JSON file recording finished (ε, attack) steps; a rerun with the same
        arguments resumes after the last finished step. With several processes, process 0
        writes it and every process reads it (a file system they share).
      progress: optional callback receiving one line per finished step (process 0 only).

    Returns:
      `EvalReport`.

    Raises:
      InputError: bad arguments or model outputs; with several processes, a batch_size that
        is not a multiple of the device count, or a `state_file` that the processes read
        differently.
    """
    t_start = time.perf_counter()
    x, y = np.asarray(x, np.float32), np.asarray(y)
    check_batch(x, y)
    check_range(x, lo, hi)
    eps_list = [float(e) for e in np.atleast_1d(np.asarray(eps, np.float64))]
    if not eps_list or any(not e > 0 for e in eps_list):
        raise InputError(f"every eps must be > 0, got {eps_list}")
    get_threat(threat, 1.0, lo=lo, hi=hi)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    suite = _resolve(attacks)
    flags: list[Flag] = []

    randomised = _is_randomised(logits_fn)
    model: LogitsFn = (
        expectation_over_transformation(logits_fn, jax.random.fold_in(key, 7), eot_samples)
        if randomised
        else logits_fn
    )
    n = len(y)
    if jax.process_count() > 1 and batch_size % jax.device_count():
        # Fewer devices would leave whole processes out of every program (or, unsharded,
        # each process would compute alone on arrays that span all of them).
        raise InputError(
            f"batch_size {batch_size} is not a multiple of the {jax.device_count()} devices of "
            f"the {jax.process_count()} processes: every device takes part in a multi-process "
            "evaluation; choose a multiple of the device count"
        )
    mesh = data_mesh() if batch_size % jax.device_count() == 0 else None
    # Every process passes the whole (same) x and y; each places its devices' slices.
    # Replicated outputs: every process reads whole results (np.asarray) and so keeps the
    # same books, chunks and state. Without a mesh nothing is placed (one process).
    replicated_out = {} if mesh is None else {"out_shardings": NamedSharding(mesh, PartitionSpec())}
    # A model that carries its weights as a pytree (a `jax.tree_util.Partial`, as
    # `as_logits_fn` and `TrainState.logits_fn` return) goes into every compiled program as
    # an argument: its weights are inputs, not constants, so the programs stay small and a
    # warm compilation cache serves every checkpoint of the architecture. Other callables
    # are closed over (their arrays become constants of each program).
    carried = model if isinstance(model, jax.tree_util.Partial) else None
    if carried is not None and mesh is not None:
        carried = replicate(carried, mesh)

    def bound(m: LogitsFn | None) -> LogitsFn:
        return model if m is None else m

    def place(t: Any) -> Any:
        return jnp.asarray(t) if mesh is None else shard_global_batch(t, mesh)

    def whole(t: Any) -> Any:
        """`t` on every device of the mesh: inputs of any size (the probe, the checks)."""
        return jnp.asarray(t) if mesh is None else replicate(t, mesh)

    logits_jit = jax.jit(lambda m, a: bound(m)(a), **replicated_out)
    probe = logits_jit(carried, whole(x[: min(n, batch_size)]))
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

    # Cascade stages shrink: chunk sizes are multiples of `granule` (divisible by the
    # device count when sharded), so later attacks run on smaller compiled batches.
    devices = jax.device_count() if mesh is not None else 1
    granule = min(-(-max(batch_size // 8, 1) // devices) * devices, batch_size)

    clean = np.zeros(n, bool)
    for idx, count in _chunks(np.arange(n), batch_size, granule):
        # Host-side checks: eager jnp ops would each compile a tiny program per process.
        z = np.asarray(logits_jit(carried, place(x[idx])))
        if not np.all(np.isfinite(z)):
            raise InputError("the model returned non-finite logits (NaN or inf)")
        clean[idx[:count]] = (np.argmax(z, -1) == y[idx])[:count]

    compiled: dict[str, Callable] = {}
    compile_seconds = 0.0

    def attack_fn(name: str, fn: AttackFn, args: tuple) -> Callable:
        """Compile once per attack and batch shape (ahead of time, so timings separate
        compilation)."""
        nonlocal compile_seconds
        cache_key = f"{name}/{args[0].shape[0]}"
        if cache_key not in compiled:

            def run(xb, yb, base_key, ei, start, e, m):
                # The chunk's key is derived inside the program (no eager fold_in programs).
                k = jax.random.fold_in(jax.random.fold_in(base_key, ei), start)
                t = get_threat(threat, e, lo=lo, hi=hi)
                f = bound(m)
                r = fn(f, xb, yb, k, t)
                return r.x_adv, jnp.argmax(f(r.x_adv), -1) != yb

            t0 = time.perf_counter()
            compiled[cache_key] = jax.jit(run, **replicated_out).lower(*args).compile()
            compile_seconds += time.perf_counter() - t0
        return compiled[cache_key]

    state = _load_state(state_file, eps_list, [name for name, _ in suite], n)
    if jax.process_count() > 1 and state_file is not None:
        # Processes that resumed from different steps would run different programs and
        # wait for each other forever: check that they all read the same state. (Each read
        # it before this collective; process 0 writes it only after.)
        seen = process_allgather_json({k: state[k] for k in ("done", "robust")})
        if any(s != seen[0] for s in seen):
            raise InputError(
                f"the processes read different evaluation states from {state_file}: it must "
                "lie on a file system that every process shares"
            )
    robust_by_eps: dict[str, list[bool]] = state["robust"]
    per_attack: dict[str, list[float]] = {name: [] for name, _ in suite}
    timings = dict.fromkeys(per_attack, 0.0)
    timings.update(state["timings"])
    x_adv_last = x.copy()
    invalid = 0
    for ei, e in enumerate(eps_list):
        robust = np.array(robust_by_eps.get(str(ei), clean), bool)
        for ai, (name, fn) in enumerate(suite):
            done = state["done"].get(str(ei), -1)
            if ai <= done:
                per_attack[name].append(state["per_attack"][name][ei])
                continue
            t0 = time.perf_counter()
            sizes = [int(k.rsplit("/", 1)[1]) for k in compiled if k.startswith(name + "/")]
            for idx, count in _chunks(np.flatnonzero(robust), batch_size, granule, sizes):
                xb, yb = place(x[idx]), place(y[idx])
                args = (xb, yb, key, np.int32(ei), np.int32(idx[0]), np.float32(e), carried)
                c0 = compile_seconds
                xa, broke = attack_fn(name, fn, args)(*args)
                t0 += compile_seconds - c0  # per-attack timings exclude compilation
                xa, broke = np.asarray(xa)[:count], np.array(broke)[:count]
                ids = idx[:count]
                ok = _valid(xa, x[ids], threat, e, lo, hi)
                invalid += int((~ok).sum())
                broke &= ok  # an example outside the threat model does not count
                robust[ids[broke]] = False
                if ei == len(eps_list) - 1:
                    x_adv_last[ids[broke]] = xa[broke]
            timings[name] += time.perf_counter() - t0
            per_attack[name].append(float(robust.mean()))
            robust_by_eps[str(ei)] = robust.tolist()
            state["done"][str(ei)] = ai
            state["per_attack"].setdefault(name, [None] * len(eps_list))[ei] = float(robust.mean())
            state["timings"] = timings
            if state_file is not None and is_primary():
                _atomic_write(Path(state_file), state)
            if progress is not None and is_primary():
                progress(f"eps={e:g} {name}: robust accuracy {robust.mean():.4f}")
        robust_by_eps[str(ei)] = robust.tolist()
    robust_acc = [float(np.mean(robust_by_eps[str(i)])) for i in range(len(eps_list))]

    if invalid:
        flags.append(
            Flag(
                "invalid_examples",
                f"{invalid} adversarial examples were outside the ε-ball or the input range or "
                "contained NaN; they were not counted as broken. An attack is misbehaving.",
            )
        )
    report = EvalReport(
        eps=eps_list,
        attacks=[name for name, _ in suite],
        clean_accuracy=float(clean.mean()),
        robust_accuracy=robust_acc,
        per_attack=per_attack,
        timings=timings,
        compile_seconds=compile_seconds,
        flags=flags,
        num_examples=n,
        x_adv=x_adv_last,
    )
    if randomised:
        flags.append(
            Flag(
                "randomised_model",
                "the model takes a key: its logits are random, so it was attacked through EOT "
                f"({eot_samples} samples); report this robust accuracy as an EOT evaluation",
            )
        )
    if checks:
        _sanity_checks(
            report,
            logits_fn,
            bound,
            carried,
            whole,
            x,
            y,
            key,
            threat,
            lo,
            hi,
            check_examples,
            randomised,
        )
    report.checks["total_seconds"] = time.perf_counter() - t_start
    return report


def _resolve(attacks) -> list[tuple[str, AttackFn]]:
    if isinstance(attacks, str):
        if attacks not in SUITES:
            raise InputError(f"unknown suite {attacks!r}; known suites: {', '.join(SUITES)}")
        attacks = SUITES[attacks]
    out = []
    for a in attacks:
        if isinstance(a, tuple):
            out.append(a)
        elif a in ATTACKS:
            out.append((a, ATTACKS[a]))
        else:
            raise InputError(
                f"unknown attack {a!r}; known attacks: {', '.join(ATTACKS)} "
                f"(or pass (name, attack_fn) pairs)"
            )
    if not out:
        raise InputError("give at least one attack")
    return out


def _valid(xa: np.ndarray, x: np.ndarray, threat: str, eps: float, lo: float, hi: float):
    finite = np.isfinite(xa.reshape(len(xa), -1)).all(1)
    in_box = ((xa >= lo - 1e-6) & (xa <= hi + 1e-6)).reshape(len(xa), -1).all(1)
    in_ball = _norm(np.nan_to_num(xa - x), threat) <= eps * (1 + 1e-4) + 1e-6
    return finite & in_box & in_ball


def _load_state(path, eps_list, names, n) -> dict:
    fresh = {
        "eps": eps_list,
        "attacks": names,
        "n": n,
        "done": {},
        "robust": {},
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
    return state


# ----------------------------------------------------------------------------- checks


def _sanity_checks(
    report, raw_fn, bound, carried, whole, x, y, key, threat, lo, hi, m, randomised
) -> None:
    """Append flags and numbers to `report`. `bound(carried)` is the attacked model (as in
    `evaluate`'s programs); `whole` places the check inputs (any number) on every device
    of the mesh, so the checks' outputs are readable in every process."""
    flags, checks = report.flags, report.checks
    xs, ys = whole(x[:m]), whole(y[:m])
    dim = int(np.prod(x.shape[1:]))

    # 1. Accuracy must not rise with ε.
    accs = [a for _, a in sorted(zip(report.eps, report.robust_accuracy, strict=True))]
    if any(b > a + 1e-9 for a, b in itertools.pairwise(accs)):
        flags.append(
            Flag(
                "non_monotone",
                "robust accuracy rises with ε somewhere: the attacks "
                "are failing to find adversarial examples they should find",
            )
        )

    # The four check attacks as one program, their step loops rolled: on a few examples
    # their run time is small, and a small program traces, lowers and loads from the
    # compilation cache faster (what a warm `jaxrobust eval` spends its time on).
    big, e0 = _large_eps(threat, dim, lo, hi), min(report.eps)
    check_attacks = (
        (lambda f, a, b, k, t: pgd(f, a, b, k, threat=t, steps=50, unroll=1), big),
        (lambda f, a, b, k, t: pgd(f, a, b, k, threat=t, steps=10, unroll=1), e0),
        (ATTACKS["pgd-100x2"], e0),
        (ATTACKS["fgsm"], e0),
    )

    def robust_accuracies(a, b, carried_model):
        f = bound(carried_model)
        clean_ok = jnp.argmax(f(a), -1) == b

        def accuracy(fn, e):
            r = fn(f, a, b, key, get_threat(threat, e, lo=lo, hi=hi))
            return jnp.mean(clean_ok & (jnp.argmax(f(r.x_adv), -1) == b))

        return jnp.stack([accuracy(fn, e) for fn, e in check_attacks])

    accuracies = np.asarray(jax.jit(robust_accuracies)(xs, ys, carried))
    large, pgd10, pgd100, single = (float(v) for v in accuracies)

    # 2. At an ε that covers the whole input box accuracy must be ~0.
    checks["large_eps"] = big
    checks["large_eps_accuracy"] = large
    if checks["large_eps_accuracy"] > 0.01:
        flags.append(
            Flag(
                "large_eps_not_broken",
                f"PGD leaves {checks['large_eps_accuracy']:.1%} "
                f"accuracy at ε = {big:g}, where any input can be turned into any "
                "other: gradients are masked or obfuscated",
            )
        )

    checks.update(
        {
            "pgd10_accuracy": pgd10,
            "pgd100x2_accuracy": pgd100,
            "fgsm_accuracy": single,
            "check_eps": e0,
            "check_examples": len(ys),
        }
    )
    # 3. Iterative attacks must be at least as strong as a single step.
    if single < min(pgd10, pgd100) - 0.005:
        flags.append(
            Flag(
                "single_step_stronger",
                f"FGSM ({single:.1%}) beats iterative PGD "
                f"({min(pgd10, pgd100):.1%}) at ε = {e0:g}: the loss surface is "
                "masked (e.g. gradient shattering)",
            )
        )
    # 4. More steps and restarts must not raise accuracy.
    if pgd100 > pgd10 + 0.005:
        flags.append(
            Flag(
                "more_steps_weaker",
                f"PGD-100×2 ({pgd100:.1%}) is weaker than PGD-10 "
                f"({pgd10:.1%}): the optimisation is unstable",
            )
        )
    # 5. A black-box attack must not beat the white-box ones.
    names = report.attacks
    for i, name in enumerate(names):
        if name in BLACK_BOX and i > 0:
            drop = max(
                before - after
                for before, after in zip(
                    report.per_attack[names[i - 1]], report.per_attack[name], strict=True
                )
            )
            checks[f"{name}_extra_breaks"] = drop
            if drop > 0.005:
                flags.append(
                    Flag(
                        "black_box_stronger",
                        f"{name} broke {drop:.1%} of the examples "
                        "that every white-box attack missed: gradients are masked",
                    )
                )

    # 6. Zero or vanishing input gradients.
    def loss(a, carried_model):
        f = bound(carried_model)
        return jnp.sum(cross_entropy(f(a), ys))

    grads = jax.jit(jax.grad(loss))(xs, carried)
    gnorm = np.sqrt((np.asarray(grads, np.float64).reshape(len(ys), -1) ** 2).sum(1))
    checks["zero_gradient_fraction"] = float(np.mean(gnorm < 1e-12))
    if checks["zero_gradient_fraction"] > 0.05:
        flags.append(
            Flag(
                "zero_gradients",
                f"the loss gradient is zero for "
                f"{checks['zero_gradient_fraction']:.0%} of the inputs (stop_gradient, "
                "a saturated softmax or a non-differentiable layer): gradient attacks "
                "are blind there; trust only the gradient-free results",
            )
        )
    # 7. Non-deterministic logits.
    if not randomised:
        # Eagerly, on this process's copy of the weights: op-by-op programs on arrays that
        # span processes would each be a collective. (With one process local_copy changes
        # nothing.)
        local_fn, xl = local_copy(raw_fn), jnp.asarray(x[:m])
        a, b = np.asarray(local_fn(xl)), np.asarray(local_fn(xl))
        if not np.array_equal(a, b):
            flags.append(
                Flag(
                    "nondeterministic",
                    "the model returns different logits for the "
                    "same input: it is randomised; pass it as logits_fn(x, key) so "
                    "evaluate attacks it with EOT (suite 'rand')",
                )
            )
    # 8. Probabilities instead of logits.
    z = a if not randomised else None  # model is raw_fn when not randomised
    if z is not None and z.min() >= 0 and z.max() <= 1 and np.allclose(z.sum(1), 1, atol=1e-3):
        flags.append(
            Flag(
                "softmax_outputs",
                "the model's outputs are probabilities, not logits: "
                "cross-entropy on them has tiny gradients; return the logits",
            )
        )
