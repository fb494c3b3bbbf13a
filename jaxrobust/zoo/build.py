"""Build the zoo: train (or take finished runs), export, evaluate, write the index.

    python -m jaxrobust.zoo.build                      # trains every entry of SPECS
    python -m jaxrobust.zoo.build --run NAME=RUN_DIR   # or take a finished `jaxrobust train` run

Each entry is exported (`jaxrobust.zoo.export`) into jaxrobust/zoo/models/NAME and evaluated
there by the `jaxrobust eval` command, in subprocesses, as a user would: the default
evaluation (the standard suite over the run's eval.eps_list, seed 0, batch 512) and a quick
one (`--attacks pgd-10 --eps <training eps> --no-checks`, what the default test reproduces).
The final evaluation of `jaxrobust train` (PGD-50 × 5 restarts, in the run's metrics.json)
is stated beside them. The index records the git commit of this build (a checkout with
uncommitted changes is refused: every stated number comes from committed code).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxrobust.provenance import git_commit
from jaxrobust.zoo import (
    _FORMAT,
    _VERSION,
    ENTRY_FILE,
    INDEX_PATH,
    Measurement,
    ZooError,
    export,
)

MODELS_DIR = INDEX_PATH.parent / "models"

SPECS: dict[str, dict[str, Any]] = {
    "digits-mlp-pgd-at-linf0.1": {
        "train": [],  # the README's main job: `jaxrobust train` with its defaults
        "description": (
            "512-512 MLP on the UCI digits, PGD adversarial training at l-inf eps = 0.1 "
            "(the main job: `jaxrobust train` defaults, 30 epochs, seed 0)"
        ),
    },
    "digits-mlp-standard": {
        "train": ["--set", "objective=standard"],
        "description": (
            "512-512 MLP on the UCI digits, standard (non-robust) training "
            "(`jaxrobust train --set objective=standard`, 30 epochs, seed 0)"
        ),
    },
}

_SUITE_ATTACK = (
    "standard suite (APGD-CE, APGD-T, FAB-T, Square 5000 queries), per-example worst case"
)
_PGD_ATTACK = "PGD-10, 1 random start, cross-entropy, step 2.5 eps/10"


def _jaxrobust(*args: str) -> None:
    cmd = [sys.executable, "-m", "jaxrobust", *args]
    print("+", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def _se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def _measure(
    kind: str,
    value: float,
    n: int,
    *,
    attack: str,
    attacks: Sequence[str],
    threat: str,
    eps: float,
    seed: int,
    batch_size: int,
    checks: bool,
    command: str,
    commit: str | None,
) -> Measurement:
    return Measurement(
        kind=kind,
        value=value,
        correct=round(value * n),
        n=n,
        se=_se(value, n),
        attack=attack,
        attacks=tuple(attacks),
        threat=threat,
        eps=eps,
        split="test",
        seed=seed,
        batch_size=batch_size,
        checks=checks,
        deterministic=True,
        command=command,
        commit=commit,
    )


def _measurements(
    name: str, entry_dir: Path, run_dir: Path, work: Path, commit: str
) -> list[Measurement]:
    cfg = json.loads((entry_dir / "config.json").read_text())
    train_eps = float(cfg["eps"])
    threat = cfg["threat"]
    out: list[Measurement] = []
    # The default `jaxrobust eval zoo:NAME`.
    std_out = work / "eval-standard"
    _jaxrobust("eval", f"zoo:{entry_dir}", "--out", str(std_out))
    m = json.loads((std_out / "metrics.json").read_text())
    n = int(m["num_examples"])
    common: dict[str, Any] = {"seed": 0, "batch_size": 512, "checks": True, "commit": commit}
    out.append(
        _measure(
            "clean",
            m["clean_accuracy"],
            n,
            attack="none",
            attacks=(),
            threat=m["threat"],
            eps=0.0,
            command=f"jaxrobust eval zoo:{name}",
            **common,
        )
    )
    for eps, acc in zip(m["eps"], m["robust_accuracy"], strict=True):
        if eps > 0:
            out.append(
                _measure(
                    "standard",
                    acc,
                    n,
                    attack=_SUITE_ATTACK,
                    attacks=m["attacks"],
                    threat=m["threat"],
                    eps=eps,
                    command=f"jaxrobust eval zoo:{name}",
                    **common,
                )
            )
    # The quick one the default test reproduces.
    pgd_out = work / "eval-pgd"
    eps_arg = f"{train_eps:g}"
    _jaxrobust(
        "eval", f"zoo:{entry_dir}", "--attacks", "pgd-10", "--eps", eps_arg, "--no-checks", "--out",
        str(pgd_out),
    )  # fmt: skip
    m = json.loads((pgd_out / "metrics.json").read_text())
    (acc,) = [a for e, a in zip(m["eps"], m["robust_accuracy"], strict=True) if e > 0]
    common["checks"] = False
    out.append(
        _measure(
            "pgd-10",
            acc,
            int(m["num_examples"]),
            attack=_PGD_ATTACK,
            attacks=m["attacks"],
            threat=threat,
            eps=train_eps,
            command=f"jaxrobust eval zoo:{name} --attacks pgd-10 --eps {eps_arg} --no-checks",
            **common,
        )
    )
    # `jaxrobust train`'s own final evaluation of the same weights.
    t = json.loads((run_dir / "metrics.json").read_text())
    info = json.loads((run_dir / "run_info.json").read_text())
    for eps, acc in zip(t["curve"]["eps"], t["curve"]["robust_accuracy"], strict=True):
        if eps > 0:
            out.append(
                _measure(
                    "pgd-50x5",
                    acc,
                    int(t["num_test"]),
                    attack="PGD-50, 5 random restarts, cross-entropy, step 2.5 eps/50 "
                    "(the final evaluation of `jaxrobust train`)",
                    attacks=(),
                    threat=threat,
                    eps=eps,
                    seed=int(cfg["seed"]) + 3,
                    batch_size=int(cfg["eval"]["batch_size"]),
                    checks=False,
                    command=" ".join(info.get("command", ["jaxrobust", "train"])),
                    commit=t.get("git_commit"),
                )
            )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxrobust.zoo.build", description=__doc__)
    p.add_argument("--run", action="append", default=[], metavar="NAME=RUN_DIR")
    p.add_argument("--work", default="runs/zoo-build", help="training and evaluation outputs")
    p.add_argument("--only", nargs="+", help="(re)build these entries; keep the others")
    args = p.parse_args(argv)
    commit = git_commit()
    if commit is None or commit.endswith("+dirty"):
        raise ZooError(f"build the zoo from a clean git checkout (commit: {commit})")
    runs = dict(r.split("=", 1) for r in args.run)
    unknown = sorted(set(runs) - set(SPECS))
    if unknown:
        raise ZooError(f"unknown zoo entries {unknown}; SPECS has {sorted(SPECS)}")
    names = args.only or list(SPECS)
    work = Path(args.work)
    old = json.loads(INDEX_PATH.read_text())["models"] if INDEX_PATH.is_file() else {}
    models = {k: v for k, v in old.items() if k not in names and k in SPECS}
    for name in names:
        spec = SPECS[name]
        run_dir = Path(runs[name]) if name in runs else work / name / "run"
        if not (run_dir / "metrics.json").is_file():
            _jaxrobust("train", "--out", str(run_dir), "--quiet", *spec["train"])
        entry_dir = MODELS_DIR / name
        shutil.rmtree(entry_dir, ignore_errors=True)
        shutil.rmtree(work / name / "eval-standard", ignore_errors=True)
        shutil.rmtree(work / name / "eval-pgd", ignore_errors=True)
        entry = export(run_dir, entry_dir, name=name, description=spec["description"])
        metrics = _measurements(name, entry_dir, run_dir, work / name, commit)
        entry["metrics"] = [m.to_dict() for m in metrics]
        entry["evaluated_by"] = {"command": "python -m jaxrobust.zoo.build", "git_commit": commit}
        (entry_dir / ENTRY_FILE).write_text(json.dumps(entry, indent=2) + "\n")
        models[name] = {
            **{k: v for k, v in entry.items() if k not in ("format", "version")},
            "path": f"models/{name}",
        }
    index = {"format": _FORMAT + "-index", "version": _VERSION, "models": models}
    INDEX_PATH.write_text(json.dumps(index, indent=2) + "\n")
    print(f"wrote {INDEX_PATH} ({len(models)} models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
