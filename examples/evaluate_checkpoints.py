"""`jr.evaluate` over a list of checkpoints: train a few runs (or point at your own run
directories), then evaluate each with the same attack cascade. The second and later
checkpoints of an architecture reuse the compiled attacks.

    python examples/evaluate_checkpoints.py [--small] [RUN_DIR ...]
"""

import argparse
import math
import tempfile
import time
from pathlib import Path

import jax

import jaxrobust as jr
from jaxrobust.config import load_config
from jaxrobust.data import load_split
from jaxrobust.train.loop import train


def main(small: bool, run_dirs: list[str]) -> None:
    if not run_dirs:  # two seeds of a short PGD-trained run, in a temporary folder
        root = Path(tempfile.mkdtemp(prefix="jaxrobust-example-"))
        for seed in (0, 1):
            cfg = load_config("smoke" if small else "default", [f"seed={seed}", "epochs=3"])
            train(cfg, root / f"seed{seed}", progress=False, log=lambda line: None)
            run_dirs.append(str(root / f"seed{seed}"))
    x, y = load_split("digits", "test", limit=64 if small else None)
    print(f"{'run':40s} clean  robust (ℓ∞ 0.1)  ±SE    seconds")
    for run_dir in run_dirs:
        run = jr.load_run(run_dir)
        t0 = time.perf_counter()
        report = jr.evaluate(
            run.logits_fn(), x, y, jax.random.key(0), threat="linf", eps=0.1,
            attacks="fast" if small else "standard",
        )  # fmt: skip
        acc = report.robust_accuracy[0]
        se = math.sqrt(acc * (1 - acc) / len(y))  # binomial standard error over len(y) images
        print(
            f"{Path(run_dir).name:40s} {report.clean_accuracy:.3f}  {acc:.3f}"
            f"            {se:.3f}  {time.perf_counter() - t0:.1f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="smoke-size runs, 64 test images")
    parser.add_argument("run_dirs", nargs="*", help="run directories (default: train two)")
    args = parser.parse_args()
    main(args.small, args.run_dirs)
