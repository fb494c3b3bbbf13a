"""Load a run that `jaxrobust train` (or `jaxrobust.train.loop.train`) wrote, from Python."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax

from jaxrobust.models.adapters import LogitsFn


class LoadedRun(NamedTuple):
    """A training run restored from its directory.

    Attributes:
      state: the `jaxrobust.train.TrainState` at the restored checkpoint (parameters,
        BatchNorm statistics, optimizer state, step), replicated over the run's devices.
      config: the run's configuration (an `ml_collections.ConfigDict`, as in config.json).
      step: the training step of the restored checkpoint.
      metadata: what was saved with the checkpoint (e.g. its metrics and history).
    """

    state: Any
    config: Any
    step: int
    metadata: dict

    def logits_fn(self) -> LogitsFn:
        """The model in inference mode, `x (B, H, W, C) in [0, 1] -> logits (B, classes)`:
        `state.logits_fn()`, the same pytree structure for every checkpoint of the run's
        architecture, so a jitted function that takes it compiles once for all of them."""
        return self.state.logits_fn()

    def features_fn(self) -> Callable[[jax.Array], dict[str, jax.Array]]:
        """The model's sown representations in inference mode, `x -> {name: array}`
        ("features": the penultimate layer, (B, D)); see `as_features_fn`."""
        return self.state.features_fn()


def load_run(
    run_dir: str | os.PathLike[str], *, best: bool = False, step: int | None = None
) -> LoadedRun:
    """Restore a training run: its state at a checkpoint, and its configuration.

        run = jr.load_run("runs/digits-pgd_at")  # the latest checkpoint
        report = jr.evaluate(run.logits_fn(), x, y, key, eps=0.1)

    Args:
      run_dir: the run's directory (holding config.json and checkpoints/).
      best: restore the best checkpoint instead of the latest, the one `jaxrobust eval
        --best` evaluates (metrics.json names the metric that ranks it).
      step: restore the checkpoint of this training step instead (see
        `jaxrobust.checkpoint.Checkpointer.steps()` for those on disk); not with `best`.
    Returns:
      `LoadedRun(state, config, step, metadata)`; `.logits_fn()` is the model.
    Raises:
      CheckpointError: not a run directory, no (best) checkpoint, no checkpoint at `step`, a
        corrupt checkpoint or config.
      InputError: both `best` and `step` given.
    """
    from jaxrobust.checkpoint import Checkpointer
    from jaxrobust.errors import InputError
    from jaxrobust.train.loop import restore_run

    if best and step is not None:
        raise InputError("give either best=True or a step, not both")
    run, state, metadata = restore_run(run_dir, best=best)
    if step is not None and step != int(jax.device_get(state.step)):
        # The template (structure, shapes, sharding) is the run's freshly built state.
        with Checkpointer(Path(run_dir) / "checkpoints", keep=1) as ckpt:
            step, state, metadata = ckpt.restore(run.state, step=step)
    return LoadedRun(state, run.cfg, int(jax.device_get(state.step)), metadata)
