"""Does a model trained on planted `shapes` rely on the planted pattern? (issue 14)

    python experiments/_shapes_reliance.py NAME --set KEY=VALUE ... [--out FILE]

Trains one model with the library's own training (`jaxrobust.train.loop.train`, a config
from `jaxrobust.config.load_config` plus `--set` overrides, e.g.
`--set objective=standard --set dataset_kwargs.planted_norm=2.0`), then evaluates the
final model on `test`, `test_clean` and `test_shuffled` (the reliance drop is
test - test_shuffled) with binomial standard errors. The train loop's own final
evaluation gives the l2 PGD robust accuracy at `eval.eps` (steps/restarts as set).
The record (settings, accuracies, SEs, wall time) is added under NAME to the JSON file
`--out` (default experiments/results/shapes_reliance.json, under "runs").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _shapes_runs import train_and_measure  # experiments/ is on sys.path (script dir)

# Every reliance run is on planted shapes (BASE of _shapes_runs adds the rest).
PLANTED = ["dataset_kwargs.planted=True"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--out", default="experiments/results/shapes_reliance.json")
    p.add_argument("--run-dir", default="")
    args = p.parse_args(argv)
    run_dir = args.run_dir or tempfile.mkdtemp(prefix=f"shapes-reliance-{args.name}-")
    record = train_and_measure(PLANTED + args.overrides, run_dir)
    record["overrides"] = args.overrides
    print(json.dumps({k: v for k, v in record.items() if k != "history"}, indent=1), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    allres = json.loads(out.read_text()) if out.exists() else {}
    allres.setdefault("runs", {})[args.name] = record
    out.write_text(json.dumps(allres, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
