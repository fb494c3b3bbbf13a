"""mkdocs hook: serve the committed experiment figures from experiments/results/.

Each `experiments/results/NAME/FILE.png` becomes `figures/NAME/FILE.png` in the site, so
the experiment pages show the figures the runs committed (nothing is copied into docs/ and
nothing is run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[2] / "experiments" / "results"


def on_files(files: Files, config: Any) -> Files:
    for png in sorted(RESULTS.rglob("*.png")):
        uri = "figures/" + png.relative_to(RESULTS).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(png)))
    return files
