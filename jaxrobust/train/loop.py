"""The training job: data → model → objective → jitted steps → checkpoints → report.

`train(cfg, out_dir)` is what `jaxrobust train` runs. It checkpoints the full state (model,
optimizer, step, PRNG key, data-iterator position, history, early-stopping state) so that
a run killed at any moment and started again with the same command continues to the same
final parameters as an uninterrupted run.

Model selection (Rice, Wong & Kolter 2020, "Overfitting in adversarially robust deep
learning"): with `validation.examples = N > 0` the last N training records are held out
(never trained on) and evaluated, clean and under the during-training PGD, at every
evaluated epoch. With `early_stopping.enabled` the evaluated epoch with the best
`early_stopping.metric` is the model of the final evaluation (metrics.json), the last
epoch's numbers are reported beside it, and with `early_stopping.patience = P > 0`
training stops once P epochs have passed without an improvement.

Multi-host: after `jaxrobust.parallel.initialize_distributed`, every process runs `train`
with the same arguments. Each reads its own shards of the training split, evaluation is
sharded over all devices, checkpoints are saved and restored collectively by orbax, and
only process 0 logs and writes the report files (config.json, metrics.json, PNGs).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from jaxrobust import report
from jaxrobust.attacks import pgd
from jaxrobust.checkpoint import Checkpointer
from jaxrobust.config import FREE_FORM, default_config, validate
from jaxrobust.data import (
    DatasetInfo,
    LoaderState,
    data_source,
    get_info,
    load_split,
    loader_state,
    make_loader,
    restore_loader_state,
)
from jaxrobust.errors import CheckpointError, ConfigError, JaxRobustError
from jaxrobust.models import create_model
from jaxrobust.parallel import (
    data_mesh_for_batch,
    is_primary,
    local_copy,
    process_allgather_json,
    replicate,
    shard_batch,
)
from jaxrobust.provenance import git_commit, run_metadata
from jaxrobust.threat import get_threat, spatial
from jaxrobust.train import objectives
from jaxrobust.train.accuracy import AccuracyEvaluator
from jaxrobust.train.event_log import EventLog
from jaxrobust.train.optim import make_optimizer
from jaxrobust.train.state import TrainState

# Config keys that may change between a run and its resumption (they do not affect training).
_RESUMABLE_CHANGES = ("eval", "checkpoint", "logging")


def build_model(cfg: ml_collections.ConfigDict, info: DatasetInfo):
    """The Flax module named by `cfg.model`, normalising with the dataset's statistics."""
    return create_model(
        cfg.model.name, info.num_classes, mean=info.mean, std=info.std, **cfg.model.kwargs.to_dict()
    )


def build_objective(
    cfg: ml_collections.ConfigDict, info: DatasetInfo, steps_per_epoch: int = 0
) -> objectives.Objective:
    """The training objective named by `cfg.objective`.

    `steps_per_epoch` converts the schedules given in epochs (`adversary.eps_warmup_epochs`,
    `bound.warmup_epochs` / `bound.ramp_epochs`) into optimizer steps; it is needed only
    when one of them is on.
    """
    adv = cfg.adversary
    step_size = adv.step_size or None
    if cfg.objective == "standard":
        return objectives.standard()
    if cfg.objective == "gaussian_noise":
        return objectives.gaussian_noise(cfg.smoothing.sigma)
    if cfg.objective.startswith("spatial"):
        shift = adv.max_shift * info.image_shape[0]
        threat = spatial(adv.max_angle, shift)
        if cfg.objective == "spatial_random":
            return objectives.spatial_random(threat)
        return objectives.spatial_worst_of_k(threat, k=adv.worst_of_k)
    if cfg.objective in ("ibp", "crown_ibp"):
        b = cfg.bound
        if (b.warmup_epochs > 0 or b.ramp_epochs > 0) and steps_per_epoch < 1:
            raise ConfigError(
                "bound.warmup_epochs / bound.ramp_epochs need the number of steps per epoch "
                f"(got steps_per_epoch={steps_per_epoch})"
            )
        return objectives.bound_training(
            cfg.eps,
            warmup_steps=round(b.warmup_epochs * steps_per_epoch),
            ramp_steps=round(b.ramp_epochs * steps_per_epoch),
            kappa=b.kappa,
            method=cfg.objective,
            beta_start=b.beta_start,
            beta_end=b.beta_end,
        )
    if cfg.objective not in ("pgd_at", "fast_at", "trades", "smooth_adv"):
        raise ConfigError(f"unknown objective {cfg.objective!r}")
    warmup_steps = round(adv.eps_warmup_epochs * steps_per_epoch)
    if adv.eps_warmup_epochs > 0 and warmup_steps < 1:
        raise ConfigError(
            "adversary.eps_warmup_epochs needs the number of steps per epoch "
            f"(got steps_per_epoch={steps_per_epoch})"
        )

    def make(eps):
        threat = get_threat(cfg.threat, eps)
        step = step_size
        if step_size is not None and cfg.eps > 0:  # set for the full ε: follows the ramp too
            step = step_size * (eps / cfg.eps)
        if cfg.objective == "pgd_at":
            return objectives.pgd_at(threat, steps=adv.steps, step_size=step)
        if cfg.objective == "fast_at":
            return objectives.fast_at(threat, alpha=adv.fast_alpha)
        if cfg.objective == "smooth_adv":
            return objectives.smooth_adv(
                threat,
                cfg.smoothing.sigma,
                samples=cfg.smoothing.samples,
                steps=adv.steps,
                step_size=step,
            )
        return objectives.trades(threat, beta=adv.trades_beta, steps=adv.steps, step_size=step)

    return objectives.eps_warmup(make, cfg.eps, warmup_steps)


# Keys added to the config after a run was saved: a run that predates one of them ran with
# its default, so resuming it with the default is no change of config.
_ADDED_LATER = {
    "adversary.eps_warmup_epochs": 0.0,
    "smoothing": {"sigma": 0.25, "samples": 1},
    "bound": {
        "warmup_epochs": 1.0,
        "ramp_epochs": 10.0,
        "kappa": 0.5,
        "beta_start": 1.0,
        "beta_end": 0.0,
    },
}


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        path = f"{prefix}{k}"
        if prefix == "" and k in _RESUMABLE_CHANGES:
            continue
        va, vb = a.get(k), b.get(k)
        if k not in b and path in _ADDED_LATER and va == _ADDED_LATER[path]:
            continue
        if isinstance(va, dict) and isinstance(vb, dict):
            keys.extend(_config_diff(va, vb, path + "."))
        elif json.dumps(va, default=str) != json.dumps(vb, default=str):
            keys.append(path)
    return keys


def _as_json_config(cfg: ml_collections.ConfigDict) -> dict:
    return json.loads(json.dumps(cfg.to_dict(), default=list))


class _Run:
    """Everything built from a config, shared by train, eval and attack."""

    def __init__(self, cfg: ml_collections.ConfigDict, batch_size: int):
        self.cfg = cfg
        self.info = get_info(cfg.dataset)
        self.data_dir = cfg.data_dir or None
        # The dataset's parameters (e.g. shapes' planted feature), for every read.
        self.dataset_kwargs = cfg.dataset_kwargs.to_dict() or None
        num_records = len(
            data_source(cfg.dataset, "train", self.data_dir, dataset_kwargs=self.dataset_kwargs)
        )
        num_validation = cfg.validation.examples
        if num_validation >= num_records:
            raise ConfigError(
                f"validation.examples={num_validation} leaves no training examples: the "
                f"{cfg.dataset} training split has {num_records} records"
            )
        # Training records first, the held-out validation records are the split's tail.
        self.num_train = num_records - num_validation
        self.train_records = range(self.num_train)
        self.validation_records = range(self.num_train, num_records)
        self.steps_per_epoch = self.num_train // batch_size
        if self.steps_per_epoch < 1:
            held_out = f" ({num_validation} held out for validation)" if num_validation else ""
            raise ConfigError(
                f"batch_size {batch_size} exceeds the {self.num_train} training examples{held_out}"
            )
        self.total_steps = cfg.epochs * self.steps_per_epoch
        tx = make_optimizer(cfg, self.total_steps, self.steps_per_epoch)
        self.mesh = data_mesh_for_batch(batch_size)
        try:
            self.model = build_model(cfg, self.info)
            state = TrainState.create(
                self.model, tx, jax.random.key(cfg.seed), self.info.image_shape
            )
        except JaxRobustError:
            raise
        except Exception as e:  # flax, jax and the model's own errors alike
            # The model's constructor or initialisation refused cfg.model.kwargs.
            raise ConfigError(
                f"model {cfg.model.name!r} with model.kwargs {cfg.model.kwargs.to_dict()} "
                f"cannot be built: {_first_line(e)}"
            ) from None
        self.state = replicate(state, self.mesh)


def restore_run(
    run_dir: str | os.PathLike[str],
    *,
    best: bool = False,
    step: int | None = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[_Run, TrainState, dict]:
    """Rebuild a run from its directory: (run, state, metadata) at a checkpoint.

    The checkpoint is `step` when given, else the best one with `best`, else the newest
    one that reads back intact: damaged newer steps are skipped, each with a `warn(message)`.
    """
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    with Checkpointer(ckpt_dir, keep=1) as ckpt:
        steps = ckpt.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {ckpt_dir}")
        if best:
            step = ckpt.best_step()
            if step is None:
                raise CheckpointError(f"no best checkpoint in {ckpt_dir}")
        elif step is not None and step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {ckpt_dir}; steps: {steps}")
        cfg = load_run_config(run_dir)
        run = _Run(cfg, cfg.batch_size)
        if step is None:
            _, state, metadata, _ = ckpt.restore_newest_intact(run.state, warn=warn)
        else:
            _, state, metadata = ckpt.restore(run.state, step=step)
    return run, state, metadata


def load_run_config(run_dir: str | Path) -> ml_collections.ConfigDict:
    """The validated config of a run directory (its config.json)."""
    config_path = Path(run_dir) / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir} has no config.json: not a jaxrobust run directory")
    cfg = default_config()
    try:
        data = json.loads(config_path.read_text())
        cfg.update_from_flattened_dict(_flatten(data))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{config_path} is corrupt or foreign: {_first_line(e)}") from None
    try:
        validate(cfg)
    except ConfigError as e:
        raise CheckpointError(f"{config_path} holds an invalid config: {e}") from None
    return cfg


RUN_INFO = "run_info.json"


def _record_run_info(path: Path, seed: int, start_step: int) -> None:
    """Write what runs this segment (code, packages, devices, command) to run_info.json;
    a resumed run keeps the first segment's record and appends its own under "resumed"."""
    info = run_metadata(seed=seed)
    if path.exists():
        try:
            first = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            first = {"unreadable_previous_record": True}
        if not isinstance(first, dict):
            first = {"unreadable_previous_record": True}
        first.setdefault("resumed", []).append({**info, "resumed_from_step": start_step})
        info = first
    report.write_json(path, info)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        free = tuple(f"{prefix}{k}".split(".")) in FREE_FORM  # model.kwargs, dataset_kwargs
        if isinstance(v, dict) and not free:
            out.update(_flatten(v, f"{prefix}{k}."))
        elif free:
            out[f"{prefix}{k}"] = ml_collections.ConfigDict(v)
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


class _ShardBatches:
    """This process's part of every training batch, read from its shards of the split.

    The training records are cut into `count` contiguous shards (`make_loader`'s sharding),
    each batched `batch_size / count` examples at a time; the global batch is all shards'
    batches concatenated in shard order. Process p of P reads shards
    `[p * count / P, (p + 1) * count / P)` and yields their batches concatenated, which is
    its contiguous slice of the global batch (`shard_batch`). So one process with
    `count = N` yields exactly the global batches of an N-process run.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, run: _Run, count: int):
        per_process = count // jax.process_count()
        first = jax.process_index() * per_process
        self.count = count
        self.indices = range(first, first + per_process)
        self._iterators = [
            iter(
                make_loader(
                    cfg.dataset,
                    "train",
                    batch_size=cfg.batch_size // count,
                    seed=cfg.seed,
                    augment=cfg.augment,
                    data_dir=run.data_dir,
                    dataset_kwargs=run.dataset_kwargs,
                    shard_index=i,
                    shard_count=count,
                    records=run.train_records,
                )
            )
            for i in self.indices
        ]

    def __iter__(self) -> _ShardBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        """`{"image": (B / P, H, W, C) float32, "label": (B / P,) int32}` for P processes."""
        parts = [next(it) for it in self._iterators]
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}

    def state(self) -> LoaderState | list[LoaderState]:
        """All shards' positions, in shard order (a collective with several processes).

        One shard: its state as a dict, the format of single-process checkpoints.
        """
        gathered = process_allgather_json([loader_state(it) for it in self._iterators])
        states = [s for per_process in gathered for s in per_process]
        return states[0] if self.count == 1 else states

    def restore(self, saved: LoaderState | list[LoaderState], where: Path) -> None:
        """Move this process's shards to the positions `state()` returned."""
        states = [saved] if isinstance(saved, dict) else list(saved)
        if len(states) != self.count:
            raise CheckpointError(
                f"the checkpoints in {where} were written by a run that read {len(states)} "
                f"data shard(s); this run reads {self.count} ({jax.process_count()} "
                "process(es)): resume with the same number of processes (or data_shards)"
            )
        mine = states[self.indices.start : self.indices.stop]
        for it, s in zip(self._iterators, mine, strict=True):
            restore_loader_state(it, s)


def _epoch_record(sums: dict, count: int, epoch: int) -> dict:
    return {"epoch": epoch, **{f"train_{k}": v / max(count, 1) for k, v in sums.items()}}


# The checkpoint metric that `Checkpointer` ranks its best checkpoint by (and `--best` uses).
_BEST_METRIC = "robust_accuracy"


def best_checkpoint_metric(cfg: Any) -> str:
    """The history record that ranks a run's best checkpoint (what `--best` restores).

    The early-stopping metric when early stopping is on; otherwise the held-out validation
    robust accuracy when records are held out, and the test set's robust accuracy only when
    nothing is (a selection on the test set, as in Rice et al.'s best-checkpoint analysis:
    reported under this name in metrics.json so it cannot pass for an unbiased number).
    """
    if cfg.early_stopping.enabled:
        return cfg.early_stopping.metric
    return "validation_robust_accuracy" if cfg.validation.examples else "test_robust_accuracy"


def _new_early_stopping_state() -> dict[str, Any]:
    """Early-stopping bookkeeping, stored in every checkpoint's metadata for resumption."""
    return {"best_epoch": None, "best_step": None, "best_value": None, "stopped_epoch": None}


def _early_stopping_update(state: dict[str, Any], value: float, epoch: int, step: int) -> bool:
    """Record an evaluated epoch's selection `value` (higher is better); True if it is a new
    best. Only a strict improvement counts, so ties keep the earliest epoch."""
    best = state["best_value"]
    if np.isnan(value) or (best is not None and not value > best):
        return False
    state.update(best_epoch=epoch, best_step=step, best_value=float(value))
    return True


def train(
    cfg: ml_collections.ConfigDict,
    out_dir: str | Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    data_shards: int | None = None,
    resume_step: int | None = None,
) -> dict[str, Any]:
    """Train, checkpoint and evaluate; write `out_dir/metrics.json` and PNGs. Returns metrics.

    Starting again on an `out_dir` that holds checkpoints resumes the run (same config
    required, except for the `eval`, `checkpoint` and `logging` sections); a run that stopped early
    stays stopped.

    With `early_stopping.enabled`, the returned metrics (and metrics.json) evaluate the
    selected epoch's checkpoint, and `metrics["early_stopping"]` holds the selected and last
    epochs and both models' final-evaluation accuracies; otherwise it is None.

    `data_shards` (default: the process count, a multiple of it) is how many shards the
    training split is read as (see `_ShardBatches`): one process with `data_shards=N` trains
    on the same global batches as N processes, so it reproduces a multi-host run's data
    stream on one machine. Every process returns the same metrics; process 0 alone logs
    (`log`, `progress`) and writes files, apart from the collective checkpoints.

    Resuming restores the newest checkpoint that reads back intact: damaged newer steps are
    set aside (moved to `checkpoints.set-aside/`, never deleted) with a warning.
    `resume_step` resumes from that step instead, setting aside the steps after it.

    Timing fields of the returned metrics add up over resumed segments: `train_seconds` and
    `wall_seconds` count each segment up to its last checkpoint (work after it was lost
    and redone), `segments` lists the steps each segment started from.
    """
    validate(cfg)
    num_shards = jax.process_count() if data_shards is None else data_shards
    if num_shards < 1 or num_shards % jax.process_count() or cfg.batch_size % num_shards:
        raise ConfigError(
            f"batch_size={cfg.batch_size} must be a multiple of the data shards ({num_shards}), "
            f"which must be a multiple of the {jax.process_count()} process(es)"
        )
    if not is_primary():
        progress, log = False, lambda message: None
    out = Path(out_dir)
    t_start = time.perf_counter()
    run = _Run(cfg, cfg.batch_size)
    state = run.state
    x_test, y_test = load_split(
        cfg.dataset, "test", data_dir=run.data_dir, dataset_kwargs=run.dataset_kwargs
    )
    step_fn = objectives.make_train_step(build_objective(cfg, run.info, run.steps_per_epoch))
    batches = _ShardBatches(cfg, run, num_shards)
    during = AccuracyEvaluator(
        run.model.apply,
        cfg.eval.threat or cfg.threat,
        steps=cfg.eval.during_steps,
        restarts=1,
        batch_size=cfg.eval.batch_size,
        mesh=run.mesh,
    )
    n_during = cfg.eval.during_examples or len(y_test)
    # What is evaluated (clean and under PGD-`during_steps`) at every evaluated epoch; the
    # record keys are f"{name}_clean_accuracy" and f"{name}_robust_accuracy".
    during_sets = {"test": (x_test[:n_during], y_test[:n_during])}
    if cfg.validation.examples:
        during_sets["validation"] = load_split(
            cfg.dataset,
            "train",
            data_dir=run.data_dir,
            records=run.validation_records,
            dataset_kwargs=run.dataset_kwargs,
        )
    n_train_subset = min(cfg.eval.during_train_examples, run.num_train)
    if n_train_subset:
        during_sets["train_subset"] = load_split(
            cfg.dataset,
            "train",
            data_dir=run.data_dir,
            limit=n_train_subset,
            dataset_kwargs=run.dataset_kwargs,
        )
    es = cfg.early_stopping
    eval_eps = cfg.eval.eps or cfg.eps
    co_batch = load_split(
        cfg.dataset,
        "train",
        data_dir=run.data_dir,
        limit=cfg.batch_size,
        dataset_kwargs=run.dataset_kwargs,
    )
    check_co = cfg.objective == "fast_at" and cfg.eval.co_check

    config_json = _as_json_config(cfg)
    ckpt = Checkpointer(out / "checkpoints", keep=cfg.checkpoint.keep)
    history: list[dict] = []
    sums: dict[str, float] = {}
    count, train_seconds, co_best, co_event = 0, 0.0, -1.0, None
    wall_before, segments = 0.0, []  # earlier segments' wall time and their first steps
    es_state = _new_early_stopping_state()
    if resume_step is not None and resume_step not in ckpt.steps():
        raise CheckpointError(
            f"--step {resume_step}: no checkpoint for that step in {out / 'checkpoints'}; "
            f"steps: {ckpt.steps() or 'none'}"
        )
    if ckpt.latest_step() is not None:
        if resume_step is None:
            step, state, meta, damaged = ckpt.restore_newest_intact(state, warn=log)
            later = damaged
        else:
            step, state, meta = ckpt.restore(state, step=resume_step)
            later = [s for s in ckpt.steps() if s > resume_step]
        diff = _config_diff(config_json, meta.get("config", {}))
        if diff:
            raise CheckpointError(
                f"the checkpoints in {out / 'checkpoints'} belong to a run with a different "
                f"config (differs in: {', '.join(diff)}); use another --out or the same config"
            )
        batches.restore(meta["loader"], out / "checkpoints")
        history, sums, count = meta["history"], meta["epoch_sums"], meta["epoch_count"]
        train_seconds, co_best = meta["train_seconds"], meta["co_best"]
        wall_before = meta.get("wall_seconds", train_seconds)
        segments = meta.get("segments", [0])
        es_state = meta.get("early_stopping", es_state)
        for s in later:  # damaged steps, or those after --step: out of the way of new saves
            why = "damaged" if resume_step is None else f"after --step {resume_step}"
            ckpt.set_aside(s, why)
        log(f"resumed from step {step} in {out / 'checkpoints'}")
        if es_state["stopped_epoch"] is not None:
            log(f"the run had stopped early at epoch {es_state['stopped_epoch']}")
    if is_primary():
        # The first file of a run: written once every input has been checked.
        out.mkdir(parents=True, exist_ok=True)
        report.write_json(out / "config.json", config_json)
        _record_run_info(out / RUN_INFO, cfg.seed, int(state.step))
    events = EventLog(out, enabled=is_primary() and cfg.logging.tensorboard, config=config_json)

    def save(step: int, metrics: dict | None = None) -> None:
        meta = {
            "config": config_json,
            "loader": batches.state(),
            "history": history,
            "epoch_sums": sums,
            "epoch_count": count,
            "train_seconds": train_seconds + time.perf_counter() - t_segment,
            "wall_seconds": wall_before + time.perf_counter() - t_start,
            "segments": segments,
            "co_best": co_best,
            "early_stopping": es_state,
        }
        ckpt.save(step, state, metadata=meta, metrics=metrics, force=True)

    start, saved = int(state.step), -1
    segments = [*segments, start] if segments else [start]
    # A run that stopped early is finished: resuming it goes straight to the evaluation.
    stop = start if es_state["stopped_epoch"] is not None else run.total_steps
    t_segment = time.perf_counter()
    bar = tqdm(
        total=run.total_steps, initial=start, disable=not progress, desc="train", unit="step"
    )
    for step in range(start, stop):
        batch = shard_batch(next(batches), run.mesh)
        state, metrics = step_fn(state, batch)
        metrics = jax.device_get(metrics)
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        count += 1
        bar.update(1)
        done = step + 1
        if done % run.steps_per_epoch == 0:
            epoch = done // run.steps_per_epoch
            record = _epoch_record(sums, count, epoch)
            sums, count = {}, 0
            ckpt_metrics = None
            evaluated = epoch % cfg.eval.every_epochs == 0 or epoch == cfg.epochs
            stopping = False
            if evaluated:
                variables = state.variables()
                key = jax.random.key(cfg.seed + 1)
                for name, (x_set, y_set) in during_sets.items():
                    record[f"{name}_clean_accuracy"] = float(
                        during.clean_correct(variables, x_set, y_set).mean()
                    )
                    record[f"{name}_robust_accuracy"] = float(
                        during.robust_correct(variables, x_set, y_set, key, eval_eps).mean()
                    )
                if es.enabled:
                    # Only improvements carry the ranking metric, so the Checkpointer's best
                    # checkpoint is exactly the selected epoch (ties: the earliest).
                    ckpt_metrics = {es.metric: record[es.metric]}
                    if _early_stopping_update(es_state, record[es.metric], epoch, done):
                        ckpt_metrics[_BEST_METRIC] = record[es.metric]
                    since = epoch - (es_state["best_epoch"] or 0)
                    if es.patience and since >= es.patience and epoch < cfg.epochs:
                        es_state["stopped_epoch"] = epoch
                        stopping = True
                        log(
                            f"early stopping at epoch {epoch}: {es.metric} has not improved "
                            f"for {since} epochs (best {es_state['best_value']} at epoch "
                            f"{es_state['best_epoch']})"
                        )
                else:
                    ckpt_metrics = {_BEST_METRIC: record[best_checkpoint_metric(cfg)]}
            if check_co:
                co_acc = float(
                    during.robust_correct(
                        state.variables(), *co_batch, jax.random.key(cfg.seed + 2), cfg.eps
                    ).mean()
                )
                record["co_check_robust_accuracy"] = co_acc
                if co_acc < co_best - 0.2:
                    co_event = {"epoch": epoch, "before": co_best, "after": co_acc}
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k != "epoch"})
            history.append(record)
            events.epoch(record, done)
            if co_event is not None:
                log(
                    f"catastrophic overfitting at epoch {epoch}: PGD accuracy on a training "
                    f"batch fell from {co_best:.3f} to {co_event['after']:.3f}; stopping and "
                    "keeping the previous epoch's model"
                )
                prev = ckpt.latest_step()
                if prev is not None:
                    _, state, _ = ckpt.restore(state, step=prev)
                break
            co_best = max(co_best, record.get("co_check_robust_accuracy", -1.0))
            # Early stopping needs every evaluated epoch on disk (it may be the selected one).
            if cfg.checkpoint.every_steps == 0 or (es.enabled and evaluated):
                save(done, ckpt_metrics)
                saved = done
            if stopping:
                break
        if cfg.checkpoint.every_steps and done % cfg.checkpoint.every_steps == 0:
            if saved != done:
                save(done)
    bar.close()
    train_seconds += time.perf_counter() - t_segment
    last_state = state
    if es.enabled and es_state["best_step"] not in (None, int(state.step)):
        _, state, _ = ckpt.restore(state, step=es_state["best_step"])
    ckpt.close()

    t_eval = time.perf_counter()
    final = AccuracyEvaluator(
        run.model.apply,
        cfg.eval.threat or cfg.threat,
        steps=cfg.eval.steps,
        restarts=cfg.eval.restarts,
        batch_size=cfg.eval.batch_size,
        mesh=run.mesh,
    )
    variables = state.variables()
    key = jax.random.key(cfg.seed + 3)
    clean = float(final.clean_correct(variables, x_test, y_test).mean())
    robust = float(final.robust_correct(variables, x_test, y_test, key, eval_eps).mean())
    eps_list = [float(e) for e in cfg.eval.eps_list]
    curve = final.accuracy_curve(variables, x_test, y_test, key, eps_list)
    early_stopping = None
    if es.enabled:
        if last_state is state:
            last_clean, last_robust = clean, robust
        else:
            last_vars = last_state.variables()
            last_clean = float(final.clean_correct(last_vars, x_test, y_test).mean())
            last_robust = float(
                final.robust_correct(last_vars, x_test, y_test, key, eval_eps).mean()
            )
        by_epoch = {r["epoch"]: r for r in history}
        early_stopping = {
            "metric": es.metric,
            "patience": es.patience,
            "selected_epoch": es_state["best_epoch"],
            "selected_step": int(state.step),
            "selected_value": es_state["best_value"],
            "stopped_early": es_state["stopped_epoch"] is not None,
            "last_epoch": history[-1]["epoch"] if history else 0,
            "last_step": int(last_state.step),
            # Final-evaluation numbers (PGD-steps×restarts on the test split) of both models.
            "selected": {
                "clean_accuracy": clean,
                "robust_accuracy": robust,
                "history": by_epoch.get(es_state["best_epoch"]),
            },
            "last": {
                "clean_accuracy": last_clean,
                "robust_accuracy": last_robust,
                "history": history[-1] if history else None,
            },
        }
    eval_seconds = time.perf_counter() - t_eval

    threat_name = cfg.eval.threat or cfg.threat
    metrics_out = {
        "dataset": cfg.dataset,
        "dataset_kwargs": run.dataset_kwargs or {},
        "model": cfg.model.name,
        "objective": cfg.objective,
        "threat": threat_name,
        "eps": eval_eps,
        "train_eps": cfg.eps,
        "clean_accuracy": clean,
        "robust_accuracy": robust,
        "attack": {
            "name": "pgd",
            "steps": cfg.eval.steps,
            "restarts": cfg.eval.restarts,
            "step_size": "2.5*eps/steps",
            "loss": "cross_entropy",
            "random_start": True,
        },
        "curve": {"eps": eps_list, "robust_accuracy": curve},
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "wall_seconds": wall_before + time.perf_counter() - t_start,
        "segments": segments,
        "epochs": cfg.epochs,
        "steps": int(last_state.step),
        "num_train": run.num_train,
        "num_validation": len(run.validation_records),
        "num_test": len(y_test),
        "seed": cfg.seed,
        "catastrophic_overfitting": co_event,
        "early_stopping": early_stopping,
        "best_checkpoint_ranked_by": best_checkpoint_metric(cfg),
        "history": history,
        "devices": [str(d) for d in run.mesh.devices.flat],  # the devices it trained on
        "processes": jax.process_count(),
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        "git_commit": git_commit(),  # more in run_info.json
    }
    events.final(metrics_out, int(last_state.step))
    events.close()
    if is_primary():
        report.write_json(out / "metrics.json", metrics_out)
        # A process-local copy of the (replicated) state: the figures' attack runs in this
        # process alone, with no computation that the other processes would have to join.
        threat = get_threat(threat_name, eval_eps)
        _write_figures(out, local_copy(state), metrics_out, x_test, y_test, threat)
    selected = ""
    if early_stopping is not None:
        selected = (
            f" at the selected epoch {early_stopping['selected_epoch']} (last epoch "
            f"{early_stopping['last_epoch']}: clean {early_stopping['last']['clean_accuracy']:.4f}"
            f", robust {early_stopping['last']['robust_accuracy']:.4f})"
        )
    log(
        f"clean accuracy {clean:.4f}, robust accuracy {robust:.4f}{selected} "
        f"(PGD-{cfg.eval.steps}×{cfg.eval.restarts}, {threat_name} ε={eval_eps}); "
        f"trained in {train_seconds:.1f} s; report in {out}"
    )
    return metrics_out


# What a training batch's inputs are under each objective: train_loss and train_accuracy
# are measured on them, not on the clean inputs.
_TRAINING_INPUTS = {
    "standard": "clean inputs",
    "pgd_at": "PGD adversarial inputs",
    "fast_at": "FGSM-RS adversarial inputs",
    "trades": "TRADES adversarial inputs",
    "spatial_worst_of_k": "worst-of-k rotated/shifted inputs",
    "spatial_random": "randomly rotated/shifted inputs",
    "gaussian_noise": "Gaussian-noise inputs",
    "smooth_adv": "Gaussian noise on SmoothAdv adversarial inputs",
    "ibp": "clean inputs",
    "crown_ibp": "clean inputs",
}


def training_curve_labels(objective: str) -> dict[str, str]:
    """Legend labels of the training curves that say what train_* was measured on."""
    inputs = _TRAINING_INPUTS.get(objective)
    if inputs is None:
        return {}
    labels = {
        "train_accuracy": f"train_accuracy (on {inputs})",
        "train_loss": f"train_loss (on {inputs})",
    }
    if objective == "trades":  # TRADES logs the clean batch's accuracy as well
        labels["train_loss"] = "train_loss (TRADES: clean CE + beta * KL)"
        labels["train_clean_accuracy"] = "train_clean_accuracy (on clean inputs)"
    return labels


def _write_figures(out: Path, state: TrainState, metrics: dict, x, y, threat) -> None:
    c = metrics["curve"]
    report.plot_accuracy_vs_eps(
        {
            f"{metrics['objective']} (PGD-{metrics['attack']['steps']})": (
                c["eps"],
                c["robust_accuracy"],
            )
        },
        out / "accuracy_vs_eps.png",
        title=f"{metrics['dataset']}: robust accuracy ({metrics['threat']})",
    )
    if metrics["history"]:
        report.plot_training_curves(
            metrics["history"],
            out / "training_curves.png",
            labels=training_curve_labels(metrics["objective"]),
        )
    save_adversarial_grid(state, x[:16], y[:16], threat, out / "adversarial_examples.png")


def save_adversarial_grid(state: TrainState, x, y, threat, path: Path, *, steps: int = 50) -> dict:
    """Attack a few examples with PGD and save clean / adversarial / perturbation rows."""
    f = state.logits_fn()
    x, y = jax.numpy.asarray(x), jax.numpy.asarray(y)
    result = jax.jit(lambda x, y: pgd(f, x, y, jax.random.key(0), threat=threat, steps=steps))(x, y)
    pred_clean = np.asarray(jax.numpy.argmax(f(x), -1))
    pred_adv = np.asarray(jax.numpy.argmax(f(result.x_adv), -1))
    report.save_image_grid(
        np.asarray(x),
        np.asarray(result.x_adv),
        path,
        labels=np.asarray(y),
        pred_clean=pred_clean,
        pred_adv=pred_adv,
    )
    return {"x_adv": np.asarray(result.x_adv), "pred_clean": pred_clean, "pred_adv": pred_adv}
