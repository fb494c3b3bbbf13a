"""Writing a benchmark report: OUT.json (through `jaxrobust.report.write_json`), OUT.md
and, for the scripts that draw one, OUT.png — the same files for every benchmark."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from jaxrobust import report


def write_report(
    out: str | Path,
    payload: dict,
    markdown: str,
    plot: Callable[[dict, Path], None] | None = None,
) -> Path:
    """Write `payload` to OUT.json, `markdown` to OUT.md and `plot(payload, OUT.png)`.

    `out` is the report's path with or without the .json suffix; parents are created.
    Returns the JSON path.
    """
    base = Path(out).with_suffix("")
    path = report.write_json(base.with_suffix(".json"), payload)
    base.with_suffix(".md").write_text(markdown)
    if plot is not None:
        plot(payload, base.with_suffix(".png"))
    return path
