"""Checkpoints: orbax pytrees with an integrity manifest, the last few plus the best.

Layout of a checkpoint directory (one orbax `CheckpointManager`)::

    directory/
      <step>/                      one finished save (orbax renames it into place when done)
        state/                     the pytree (orbax `StandardSave`: OCDBT/zarr, no pickles)
        metadata/                  the caller's JSON dict (config, iterator state, history)
        manifest/                  jaxrobust's JSON manifest: per leaf path, shape, dtype, sha256
        metrics/                   the metrics JSON passed to `save` (orbax's own item)
        commit_success.txt         orbax's commit marker
      <step>.orbax-checkpoint-tmp-<timestamp>/   a save in progress (or killed): ignored

Retention uses one manager with a preservation policy, which this orbax version (0.12.x)
supports cleanly: `AnyPreservationPolicy([LatestN(keep), BestN(n=1)])` keeps the last `keep`
steps and, in addition, the single best step by `metrics[best_metric]`. One directory means one
step namespace and a single atomic commit per save, instead of two managers that could disagree
after a crash.

Robustness:

* A save is synchronous (`save` returns only when the step is committed on disk).
* A step counts as a checkpoint only when it is committed (its directory carries the commit
  marker) and holds the jaxrobust manifest; leftovers of a killed save are ignored, and removed
  before the next save so that they never take a slot of the retention policy.
* Before any array is read, the template is compared with the manifest (tree paths, shapes,
  dtypes), so a foreign checkpoint raises `CheckpointError` saying what differs.
* After reading, each leaf's sha256 is compared with the manifest, so corrupt data raises
  `CheckpointError` instead of returning wrong numbers; any orbax/tensorstore failure is turned
  into a `CheckpointError` naming the directory and step.
* Restoring reads only JSON and array data: it never executes code (no pickles).

Restoring reads each step on its own (a plain orbax `Checkpointer`), not through the manager:
the manager reads every step's metrics when it opens, so one damaged old step would otherwise
make the newest one unreadable too, and a reader process would never delete anything a
concurrent writer is still producing.

Multi-host (`jax.distributed`): every process calls `save` and `restore` with the same
arguments. orbax coordinates the save (each array written once, the JSON items by process
0, one commit), process 0 alone removes leftovers, and replicated arrays (data-parallel
state) get their checksums like local ones; only arrays sharded across processes have none.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import math
import operator
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxrobust.errors import CheckpointError, ConfigError
from jaxrobust.parallel import is_primary, sync_processes

PyTree = Any

__all__ = ["Checkpointer"]

_STATE = "state"
_METADATA = "metadata"
_MANIFEST = "manifest"
_METRICS = "metrics"  # orbax's reserved item name; the JSON file inside has the same name
_COMMIT_MARKER = "commit_success.txt"
_TMP_MARKER = ".orbax-checkpoint-tmp"
_FORMAT = "jaxrobust-checkpoint"
_VERSION = 1


class _CorruptCheckpointError(CheckpointError):
    """A checkpoint step whose files are damaged (as opposed to a foreign or missing one)."""


_log = logging.getLogger(__name__)


def _key_name(key: Any) -> str:
    """One component of a leaf path, readable: `params/Dense_0/kernel`, `opt_state/1/mu`."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _leaf_path(path: tuple[Any, ...]) -> str:
    return "/".join(_key_name(k) for k in path) or "<root>"


def _is_prng_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _shape_dtype(x: Any) -> tuple[list[int], str]:
    """Shape and dtype of a leaf: arrays, ShapeDtypeStructs, Python and NumPy scalars."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return [int(d) for d in x.shape], str(x.dtype)
    arr = np.asarray(x)
    return list(arr.shape), str(arr.dtype)


def _digest(x: Any) -> str | None:
    """sha256 of a leaf's bytes; None when this process cannot see the whole array.

    A replicated multi-host array (e.g. data-parallel training state) has a full copy in
    every process, so it is digested like a local one and gets the same checksum.
    """
    if isinstance(x, jax.Array):
        if not (x.is_fully_addressable or x.is_fully_replicated):
            return None  # sharded across processes: no single process holds it all
        if _is_prng_key(x):
            x = jax.random.key_data(x)
    arr = np.ascontiguousarray(np.asarray(x))
    return hashlib.sha256(arr.view(np.uint8).reshape(-1).data).hexdigest()


def _manifest(state: PyTree) -> dict[str, Any]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(state)
    entries = []
    for path, leaf in leaves:
        shape, dtype = _shape_dtype(leaf)
        entries.append(
            {"path": _leaf_path(path), "shape": shape, "dtype": dtype, "sha256": _digest(leaf)}
        )
    return {"format": _FORMAT, "version": _VERSION, "leaves": entries}


def _to_json(obj: Any) -> Any:
    """Plain-Python copy of `obj` for JSON: NumPy/JAX scalars and arrays become numbers/lists."""
    if isinstance(obj, Mapping):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_json(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | jax.Array):
        return np.asarray(obj).tolist()
    return obj


def _jsonable(obj: Any, what: str) -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{what} must be a dict, got {type(obj).__name__}")
    out = _to_json(obj)
    try:
        json.dumps(out)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{what} must be JSON-serialisable: {e}") from None
    return out


def _short(e: BaseException) -> str:
    """First line of an exception, bounded: tensorstore messages embed whole specs."""
    lines = str(e).strip().splitlines()
    msg = lines[0] if lines else ""
    if len(msg) > 300:
        msg = msg[:300] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _shape_str(shape: list[int], dtype: str) -> str:
    return f"{tuple(shape)} {dtype}"


class _NeverRetrievedFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "exception was never retrieved" not in record.getMessage()


def _is_read_echo(unraisable: Any) -> bool:
    """Whether an unraisable exception is an echo of a failed orbax read (see `_read`)."""
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc):
        return True
    # orbax's `_read_array_index_and_device_put` turns *any* BaseException, the
    # GeneratorExit of a coroutine being closed included, into an Exception that embeds the
    # whole TensorStore spec: Python reports it as "Exception ignored in: <coroutine ...>".
    return isinstance(exc.__cause__, GeneratorExit | asyncio.CancelledError) or (
        getattr(unraisable.object, "__qualname__", "") == "_read_array_index_and_device_put"
    )


def _read(fn: Callable[[], Any]) -> tuple[Any, str | None]:
    """`(fn(), None)`, or `(None, one-line reason)` when orbax/tensorstore fail to read.

    When tensorstore fails on one array, orbax stops waiting for the others: their
    coroutines are closed later (GeneratorExit, re-raised by orbax as an Exception embedding
    a TensorStore spec, ~60 lines each) or finish on a closed event loop ("RuntimeError: Event
    loop is closed", "Future exception was never retrieved"). Python prints each of those
    echoes when the coroutine is garbage-collected, typically after the `CheckpointError`
    was already raised: 124-252 lines of tracebacks after one failed read. So the failure is
    reduced to a string here, the exception (whose traceback keeps the coroutines alive) is
    dropped, and the coroutines are collected while exactly these echoes are muted.
    """
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not _is_read_echo(unraisable):
            previous(unraisable)

    log_filter = _NeverRetrievedFilter()
    asyncio_logger = logging.getLogger("asyncio")
    sys.unraisablehook = hook
    asyncio_logger.addFilter(log_filter)
    reason = None
    try:
        try:
            return fn(), None
        except Exception as e:  # tensorstore raises plain Exception and ValueError
            reason = _short(e)
        # `e` is gone: the failed read's coroutines are garbage now. Let the stragglers
        # finish and collect them while muted.
        for _ in range(3):
            time.sleep(0.05)
            gc.collect()
        return None, reason
    finally:
        if sys.unraisablehook is hook:
            sys.unraisablehook = previous
        asyncio_logger.removeFilter(log_filter)


class Checkpointer:
    """Save and restore training state: the last `keep` checkpoints plus the best one.

    Args:
      directory: where the checkpoints live; created on the first `save`.
      keep: how many of the most recent checkpoints to keep (>= 1).
      best_metric: key of `metrics` (passed to `save`) that ranks checkpoints; the best one is
        kept besides the last `keep`. Checkpoints saved without it (or with a NaN value) are
        never "best". None keeps only the last `keep`.
      best_mode: "max" (higher is better, e.g. robust accuracy) or "min" (e.g. a loss).

    Usable as a context manager (`close` on exit). One process (or one set of processes of a
    multi-host job, all calling `save` together) should write to a directory at a time; any
    number may read.

    Example::

        with Checkpointer(workdir / "ckpt", keep=2) as ckpt:
            if ckpt.latest_step() is not None:
                step, state, meta = ckpt.restore(state)
            ...
            ckpt.save(step, state, metadata={"config": cfg}, metrics={"robust_accuracy": 0.47})
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        keep: int = 3,
        best_metric: str | None = "robust_accuracy",
        best_mode: str = "max",
    ) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ConfigError(f"keep must be an integer >= 1, got {keep!r}")
        if best_mode not in ("max", "min"):
            raise ConfigError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        self.directory = Path(directory).expanduser().absolute()
        self.keep = keep
        self.best_metric = best_metric
        self.best_mode = best_mode
        self._manager: ocp.CheckpointManager | None = None
        self._reader: ocp.Checkpointer | None = None

    # ------------------------------------------------------------------ queries

    def _rank(self, metrics: Any) -> float:
        """Ranking value of a metrics dict, larger is better; -inf when it cannot be ranked."""
        if self.best_metric is None or not isinstance(metrics, Mapping):
            return -math.inf
        try:
            value = float(metrics[self.best_metric])
        except (KeyError, TypeError, ValueError):
            return -math.inf
        if math.isnan(value):
            return -math.inf
        return value if self.best_mode == "max" else -value

    def _is_complete(self, path: Path) -> bool:
        return (
            path.is_dir()
            and (path / _COMMIT_MARKER).is_file()
            and (path / _MANIFEST).is_dir()
            and (path / _STATE).is_dir()
        )

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, ascending (read fresh on every call)."""
        if not self.directory.is_dir():
            return []
        found = []
        for p in self.directory.iterdir():
            if p.name.isdigit() and self._is_complete(p):
                found.append(int(p.name))
        return sorted(found)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None when there is none."""
        steps = self.steps()
        return steps[-1] if steps else None

    def metrics(self, step: int) -> dict[str, Any] | None:
        """The metrics saved with `step` (None when none were saved or they are unreadable)."""
        path = self.directory / str(step) / _METRICS / _METRICS
        try:
            out = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return out if isinstance(out, dict) else None

    def best_step(self) -> int | None:
        """The complete checkpoint with the best `metrics[best_metric]` (ties: the newest).

        None when `best_metric` is None or no checkpoint was saved with that metric.
        """
        if self.best_metric is None:
            return None
        best, best_value = None, -math.inf
        for step in self.steps():
            value = self._rank(self.metrics(step))
            if value > -math.inf and value >= best_value:
                best, best_value = step, value
        return best

    # ------------------------------------------------------------------ saving

    def _policy(self) -> Any:
        policies = ocp.checkpoint_managers
        latest = policies.LatestN(n=self.keep)
        if self.best_metric is None:
            return latest
        # BestN sorts ascending by the metric and keeps the tail; `_rank` is "larger is better"
        # in both modes, and unranked checkpoints (-inf) never win over a ranked one.
        best = policies.BestN(get_metric_fn=self._rank, n=1, keep_checkpoints_without_metrics=False)
        return policies.AnyPreservationPolicy([latest, best])

    def _prepare_directory(self) -> None:
        """Create the directory, remove leftovers of killed saves and set aside committed steps
        whose metrics orbax could not read (writer only, once).

        Done before the first save rather than on opening, so that a reader never deletes the
        temporary directory of a save that another process is still writing. In a
        multi-process job every process calls it (as every process calls `save`): all check
        the committed steps (and so fail together), process 0 removes the leftovers, and no
        process opens the manager before that is done.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        entries = [p for p in self.directory.iterdir() if p.is_dir() and not p.is_symlink()]
        committed = [p for p in entries if p.name.isdigit() and (p / _COMMIT_MARKER).exists()]
        if is_primary():
            for p in entries:
                if _TMP_MARKER in p.name or (p.name.isdigit() and p not in committed):
                    shutil.rmtree(p, ignore_errors=True)
        sync_processes("jaxrobust-checkpoint-prepare")
        for p in committed:
            # The manager reads every step's metrics when it opens, and fails on bad JSON.
            metrics_file = p / _METRICS / _METRICS
            if metrics_file.exists():
                try:
                    json.loads(metrics_file.read_text())
                except (OSError, ValueError):
                    self.set_aside(int(p.name), f"unreadable metrics file {metrics_file}")

    def _get_manager(self) -> ocp.CheckpointManager:
        if self._manager is None:
            self._prepare_directory()
            options = ocp.CheckpointManagerOptions(
                # best_fn makes orbax write the metrics item; retention is `_policy`.
                best_fn=self._rank,
                best_mode="max",
                preservation_policy=self._policy(),
                enable_async_checkpointing=False,  # a returned save is on disk
                create=True,
                cleanup_tmp_directories=False,  # done by `_prepare_directory`, writer only
            )
            try:
                self._manager = ocp.CheckpointManager(self.directory, options=options)
            except Exception as e:
                raise CheckpointError(
                    f"cannot open checkpoint directory {self.directory}: {_short(e)}"
                ) from None
        return self._manager

    def save(
        self,
        step: int,
        state: PyTree,
        *,
        metadata: dict | None = None,
        metrics: dict | None = None,
        force: bool = False,
    ) -> None:
        """Save `state` as checkpoint `step`; return once it is committed on disk.

        Args:
          step: a non-negative integer; saving a step older than the latest is allowed.
          state: a pytree of arrays (jax/numpy arrays, scalars, typed PRNG keys).
          metadata: JSON dict saved alongside (NumPy/JAX scalars and arrays are converted).
          metrics: JSON dict of numbers; `metrics[best_metric]` ranks the checkpoint.
          force: overwrite an existing checkpoint for `step` (otherwise that is an error).

        After the save, checkpoints beyond the last `keep` and the best one are deleted.
        """
        try:
            step = operator.index(step)
        except TypeError:
            raise CheckpointError(f"step must be an integer, got {step!r}") from None
        if step < 0:
            raise CheckpointError(f"step must be >= 0, got {step}")
        metadata = _jsonable({} if metadata is None else metadata, "metadata")
        metrics = None if metrics is None else _jsonable(metrics, "metrics")
        manifest = _manifest(state)
        manager = self._get_manager()
        existing = self.directory / str(step)
        if existing.exists():
            if not force:
                raise CheckpointError(
                    f"a checkpoint for step {step} already exists in {self.directory}; "
                    "pass force=True to overwrite it"
                )
            # Every process has seen the old step before process 0 deletes it, and sees it
            # gone before the manager re-reads the directory.
            sync_processes(f"jaxrobust-checkpoint-overwrite:{step}")
            if is_primary():
                shutil.rmtree(existing)
            sync_processes(f"jaxrobust-checkpoint-overwritten:{step}")
            manager.reload()
        args = ocp.args.Composite(
            **{
                _STATE: ocp.args.StandardSave(state),
                _METADATA: ocp.args.JsonSave(metadata),
                _MANIFEST: ocp.args.JsonSave(manifest),
            }
        )
        try:
            # force: this wrapper saves whenever asked (orbax would skip steps <= its latest).
            # metrics={} rather than None: orbax warns on every save without metrics.
            manager.save(step, args=args, metrics=metrics or {}, force=True)
            manager.wait_until_finished()
        except Exception as e:
            raise CheckpointError(
                f"could not save checkpoint step {step} to {self.directory}: {_short(e)}"
            ) from None

    # ------------------------------------------------------------------ restoring

    def _get_reader(self) -> ocp.Checkpointer:
        if self._reader is None:
            self._reader = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
        return self._reader

    def _corrupt(self, step: int, detail: str) -> CheckpointError:
        others = [s for s in self.steps() if s != step]
        hint = f"; other checkpoints: steps {others} (choose one with --step)" if others else ""
        return _CorruptCheckpointError(
            f"checkpoint step {step} in {self.directory} is corrupt or unreadable ({detail}){hint}"
        )

    def set_aside(self, step: int, reason: str) -> Path:
        """Move checkpoint `step` out of the directory (writer only); returns where it went.

        For a damaged step that would block saving, or steps after the one a run resumes
        from: nothing is deleted, the step goes to `<directory>.set-aside/<step>-<time>`.
        """
        src = self.directory / str(step)
        dest = self.directory.with_name(self.directory.name + ".set-aside")
        dest = dest / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if is_primary():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(src, dest)
        sync_processes(f"jaxrobust-checkpoint-set-aside:{step}")
        _log.warning("checkpoint step %s set aside (%s): moved to %s", step, reason, dest)
        if self._manager is not None:
            self._manager.reload()
        return dest

    def _read_json_item(self, step: int, item: str) -> Any:
        out, reason = _read(
            lambda: self._get_reader().restore(
                self.directory / str(step),
                args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}),
            )
        )
        if reason is not None:
            where = self.directory / str(step) / item / "metadata"  # JsonSave's file name
            raise self._corrupt(step, f"file {where}: {reason}")
        return out[item]

    def _check_template(self, step: int, manifest: Any, template: PyTree) -> list[dict]:
        """Compare `template` with the saved manifest; return the manifest's leaf entries."""
        if (
            not isinstance(manifest, dict)
            or manifest.get("format") != _FORMAT
            or not isinstance(manifest.get("leaves"), list)
        ):
            raise self._corrupt(step, "manifest is not a jaxrobust checkpoint manifest")
        version = manifest.get("version")
        if not isinstance(version, int) or version > _VERSION:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} has format version {version!r}, "
                f"this jaxrobust reads up to {_VERSION}: upgrade jaxrobust"
            )
        saved = manifest["leaves"]
        try:
            saved_paths = [e["path"] for e in saved]
            found = {e["path"]: (list(e["shape"]), str(e["dtype"])) for e in saved}
        except (KeyError, TypeError):
            raise self._corrupt(step, "malformed manifest") from None
        leaves, _ = jax.tree_util.tree_flatten_with_path(template)
        expected = [(_leaf_path(p), *_shape_dtype(x)) for p, x in leaves]
        where = f"checkpoint step {step} in {self.directory} does not match the template"
        exp_paths = [p for p, _, _ in expected]
        if exp_paths != saved_paths:
            missing = [p for p in exp_paths if p not in found]
            exp_set = set(exp_paths)
            extra = [p for p in saved_paths if p not in exp_set]
            parts = [f"template has {len(exp_paths)} leaves, checkpoint has {len(saved_paths)}"]
            if missing:
                parts.append(f"missing from the checkpoint: {missing[:5]}")
            if extra:
                parts.append(f"only in the checkpoint: {extra[:5]}")
            if not missing and not extra:
                parts.append("same leaves in a different order")
            raise CheckpointError(f"{where} (a different tree structure): " + "; ".join(parts))
        for path, shape, dtype in expected:
            saved_shape, saved_dtype = found[path]
            if (shape, dtype) != (saved_shape, saved_dtype):
                n_bad = sum(
                    1 for p, s, d in expected if (s, d) != tuple(found[p])
                )  # how widespread the mismatch is helps tell a config slip from another model
                raise CheckpointError(
                    f"{where}: leaf '{path}' expected {_shape_str(shape, dtype)}, found "
                    f"{_shape_str(saved_shape, saved_dtype)} ({n_bad} of {len(expected)} leaves "
                    "differ); is it a checkpoint of another model or config?"
                )
        return saved

    def restore_newest_intact(
        self, template: PyTree, *, warn: Any = None
    ) -> tuple[int, PyTree, dict, list[int]]:
        """Restore the newest checkpoint that reads back intact, falling back past damaged ones.

        Each damaged step is reported through `warn(message)` (default: a logging warning).
        A checkpoint that does not match `template` (another model or config) is an error,
        not a reason to fall back.

        Returns:
          (step, state, metadata, damaged steps newer than `step`).

        Raises:
          CheckpointError: no checkpoint, or none of them is intact.
        """
        warn = warn or _log.warning
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        damaged: list[int] = []
        reasons: list[str] = []
        for step in reversed(steps):
            try:
                restored = self.restore(template, step)
            except _CorruptCheckpointError as e:
                damaged.append(step)
                reasons.append(str(e).split("; other checkpoints")[0])
                continue
            # Warned only once an intact step is found: otherwise the error says it all.
            tried_next = [*damaged[1:], step]  # the step tried after each damaged one
            for reason, older in zip(reasons, tried_next[: len(reasons)], strict=True):
                warn(f"{reason}; trying step {older}")
            return (*restored, damaged)
        raise CheckpointError(
            f"no intact checkpoint in {self.directory}: all of steps {steps} are corrupt "
            f"(the newest: {reasons[0]})"
        )

    def restore(self, template: PyTree, step: int | None = None) -> tuple[int, PyTree, dict]:
        """Restore checkpoint `step` (None: the latest) into the structure of `template`.

        Args:
          template: a pytree with the expected structure, shapes and dtypes (e.g. a freshly
            initialised TrainState); leaves come back as the template's types (jax arrays with
            the template's sharding, numpy arrays, Python scalars).
          step: which checkpoint; None for the latest complete one.

        Returns:
          (step, state, metadata).

        Raises:
          CheckpointError: no checkpoint, a missing step, a corrupt checkpoint, or one whose
            tree structure, shapes or dtypes differ from the template.
        """
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise CheckpointError(
                f"no complete checkpoint for step {step} in {self.directory}; "
                f"available steps: {steps}"
            )
        saved = self._check_template(step, self._read_json_item(step, _MANIFEST), template)
        metadata = self._read_json_item(step, _METADATA)
        args = ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(template)})
        out, reason = _read(
            lambda: self._get_reader().restore(self.directory / str(step), args=args)
        )
        if reason is not None:
            raise self._corrupt(step, f"in {self.directory / str(step) / _STATE}: {reason}")
        state = out[_STATE]
        restored, _ = jax.tree_util.tree_flatten_with_path(state)
        if [_leaf_path(p) for p, _ in restored] != [e["path"] for e in saved]:
            raise self._corrupt(step, "restored tree differs from its manifest")
        for (_, leaf), entry in zip(restored, saved, strict=True):
            want = entry.get("sha256")
            if want is not None and _digest(leaf) not in (want, None):
                raise self._corrupt(step, f"checksum mismatch in leaf '{entry['path']}'")
        if not isinstance(metadata, dict):
            raise self._corrupt(step, "metadata is not a JSON object")
        return step, state, metadata

    def restore_best(self, template: PyTree) -> tuple[int, PyTree, dict]:
        """Restore the best checkpoint (see `best_step`); (step, state, metadata)."""
        if self.best_metric is None:
            raise CheckpointError(
                f"no best checkpoint in {self.directory}: this Checkpointer ranks none "
                "(best_metric=None)"
            )
        step = self.best_step()
        if step is None:
            if not self.steps():
                raise CheckpointError(f"no checkpoint in {self.directory}")
            raise CheckpointError(
                f"no checkpoint in {self.directory} was saved with metric {self.best_metric!r}"
            )
        return self.restore(template, step)

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Wait for pending work and release orbax resources (idempotent)."""
        if self._manager is not None:
            self._manager.wait_until_finished()
            self._manager.close()
            self._manager = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Checkpointer({str(self.directory)!r}, keep={self.keep}, "
            f"best_metric={self.best_metric!r}, best_mode={self.best_mode!r})"
        )
