"""TensorBoard event files for a training run (`--set logging.tensorboard=True`).

The JSON files stay the record of a run; the event files are a view of the same numbers
for TensorBoard users: every epoch's history record (train loss and accuracy, the
during-training clean and PGD accuracies) at its step, the final evaluation at the last
step, and the config as text. Written by process 0 only, through tensorboardX (the
`tensorboard` extra), which needs no TensorFlow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jaxrobust.errors import ConfigError

EVENTS_DIR = "tensorboard"
# Final-evaluation fields written as scalars (the rest of metrics.json is not a scalar or
# is in the history already).
_FINAL_SCALARS = ("clean_accuracy", "robust_accuracy", "train_seconds", "eval_seconds")


class EventLog:
    """Writes scalars to `out_dir/tensorboard`; a no-op when disabled.

    log = EventLog(out, enabled=cfg.logging.tensorboard, config=config_json)
    log.epoch(record, step)  # each epoch's history record
    log.final(metrics, step)
    log.close()
    """

    def __init__(self, out_dir: Path, *, enabled: bool, config: dict | None = None):
        self._writer = None
        if not enabled:
            return
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ConfigError(
                "logging.tensorboard=True needs tensorboardX: pip install 'jaxrobust[tensorboard]'"
            ) from None
        self.directory = Path(out_dir) / EVENTS_DIR
        self._writer = SummaryWriter(logdir=str(self.directory))
        if config is not None:
            text = json.dumps(config, indent=2, default=str)
            # Markdown code block: TensorBoard's text plugin renders markdown.
            self._writer.add_text("config", "```\n" + text + "\n```", 0)

    def epoch(self, record: dict[str, Any], step: int) -> None:
        """Every numeric field of a history record except `epoch`, as `epoch/<name>`."""
        if self._writer is None:
            return
        for name, value in record.items():
            if name != "epoch" and _is_scalar(value):
                self._writer.add_scalar(f"epoch/{name}", float(value), step)
        self._writer.flush()  # an interrupted run keeps every finished epoch's events

    def final(self, metrics: dict[str, Any], step: int) -> None:
        """The final evaluation (`final/...`) and its accuracy-vs-ε curve (`final/curve`)."""
        if self._writer is None:
            return
        for name in _FINAL_SCALARS:
            if _is_scalar(metrics.get(name)):
                self._writer.add_scalar(f"final/{name}", float(metrics[name]), step)
        curve = metrics.get("curve") or {}
        for eps, acc in zip(curve.get("eps", ()), curve.get("robust_accuracy", ()), strict=False):
            self._writer.add_scalar(f"final/robust_accuracy_at_eps_{eps:g}", float(acc), step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _is_scalar(value: Any) -> bool:
    # NaN and inf are written too: a diverging loss should show in TensorBoard.
    return isinstance(value, int | float) and not isinstance(value, bool)
