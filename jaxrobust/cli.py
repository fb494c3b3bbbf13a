"""The `jaxrobust` command: train, eval and attack.

    jaxrobust train [--config NAME|FILE] [--set key=value ...] [--out DIR]
                    [--coordinator HOST:PORT --num-processes N --process-id I]
    jaxrobust eval RUN_DIR [--suite standard | --attacks apgd-ce fab-t ...] [--eps 0.1 0.3]
                   [--coordinator HOST:PORT --num-processes N --process-id I]
    jaxrobust attack RUN_DIR [--eps 0.1] [--num 16] [--out DIR]
    jaxrobust experiment NAME [--smoke] [--out DIR]

Bad input exits with status 2 and one line naming the problem (no traceback).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxrobust.errors import JaxRobustError


def _default_out(cfg) -> Path:
    eps = f"{cfg.eps:g}" if not cfg.objective.startswith("spatial") else "spatial"
    return Path("runs") / f"{cfg.dataset}_{cfg.objective}_{cfg.threat}{eps}_seed{cfg.seed}"


def _add_distributed_args(p: argparse.ArgumentParser, what: str) -> None:
    """--coordinator, --num-processes, --process-id (read by `_join_processes`)."""
    multi = f"multi-process {what}: run the same command in every process"
    p.add_argument("--coordinator", metavar="HOST:PORT", help=f"{multi}, process 0 serves this")
    p.add_argument("--num-processes", type=int, metavar="N", help="with --coordinator")
    p.add_argument("--process-id", type=int, metavar="I", help="with --coordinator, 0..N-1")


def _join_processes(args: argparse.Namespace) -> None:
    """Join the multi-process job that --coordinator names (nothing without it).

    Call it before anything touches JAX devices (restoring a checkpoint included).
    """
    if not args.coordinator:
        return
    from jaxrobust.errors import ConfigError

    if args.num_processes is None or args.process_id is None:
        raise ConfigError("--coordinator needs --num-processes and --process-id")
    from jaxrobust.parallel import initialize_distributed

    initialize_distributed(args.coordinator, args.num_processes, args.process_id)


def _cmd_train(args: argparse.Namespace) -> int:
    from jaxrobust.config import load_config
    from jaxrobust.train.loop import train

    cfg = load_config(args.config, args.set or [])
    _join_processes(args)
    out = Path(args.out) if args.out else _default_out(cfg)
    train(cfg, out, progress=not args.quiet)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import jax

    from jaxrobust import report
    from jaxrobust.attacks.cascade import evaluate
    from jaxrobust.parallel import is_primary
    from jaxrobust.train.loop import best_checkpoint_metric, restore_run

    _join_processes(args)
    # Several processes: each restores the (replicated) weights collectively, loads the
    # whole split and runs `evaluate` with the same arguments; process 0 alone writes the
    # report and prints (every process computes the same numbers).
    primary = is_primary()
    run, state, _ = restore_run(args.run_dir, best=args.best)
    cfg = run.cfg
    x, y = _load_split_of_run(run, args.split, args.limit)
    threat = args.threat or cfg.eval.threat or cfg.threat
    eps_list = args.eps if args.eps else [float(e) for e in cfg.eval.eps_list]
    attacked = [e for e in eps_list if e != 0]  # ε = 0 is the clean accuracy
    out = Path(args.out) if args.out else Path(args.run_dir) / "eval"
    if primary:
        out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = evaluate(
        state.logits_fn(),
        x,
        y,
        jax.random.key(args.seed),
        threat=threat,
        eps=attacked,
        attacks=args.attacks or args.suite,
        batch_size=args.batch_size,
        checks=not args.no_checks,
        state_file=out / "eval_state.json" if args.resume else None,
        progress=print,  # evaluate reports from process 0 only
    )
    by_eps = dict(zip(result.eps, result.robust_accuracy, strict=True))
    curve = [result.clean_accuracy if e == 0 else by_eps[e] for e in eps_list]
    per_attack = {
        name: [result.clean_accuracy if e == 0 else accs[result.eps.index(e)] for e in eps_list]
        for name, accs in result.per_attack.items()
    }
    metrics = {
        "run": str(args.run_dir),
        "checkpoint": "best" if args.best else "latest",
        "checkpoint_ranked_by": best_checkpoint_metric(cfg) if args.best else None,
        "dataset": cfg.dataset,
        "split": args.split,
        "num_examples": len(y),
        "threat": threat,
        "suite": args.suite if not args.attacks else None,
        "attacks": result.attacks,
        "eps": eps_list,
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": curve,
        "per_attack_cascade": per_attack,
        "timings": result.timings,
        "compile_seconds": result.compile_seconds,
        "eval_seconds": time.perf_counter() - t0,
        "flags": [{"name": f.name, "message": f.message} for f in result.flags],
        "checks": result.checks,
        "processes": jax.process_count(),
    }
    if not primary:
        return 0
    report.write_json(out / "metrics.json", metrics)
    curves = {f"after {name}": (eps_list, accs) for name, accs in per_attack.items()}
    curves["worst case"] = (eps_list, curve)
    title = f"{cfg.dataset} ({threat})"
    report.plot_accuracy_vs_eps(curves, out / "accuracy_vs_eps.png", title=title)
    for e, acc in zip(eps_list, curve, strict=True):
        print(f"eps={e:g}: robust accuracy {acc:.4f}")
    for flag in result.flags:
        print(f"FLAG {flag.name}: {flag.message}")
    print(f"clean accuracy {result.clean_accuracy:.4f}; report in {out}")
    return 0


def _load_split_of_run(run: Any, split: str, limit: int | None) -> tuple[Any, Any]:
    """(x, y) of `split` as the run saw it: "train" without the held-out validation tail,
    "validation" that tail, any other name the dataset's split of that name."""
    from jaxrobust.data import load_split
    from jaxrobust.errors import ConfigError

    records = None
    if split == "train":
        records = run.train_records
    elif split == "validation":
        if not len(run.validation_records):
            raise ConfigError(
                "--split validation: this run held out no validation examples "
                "(validation.examples = 0)"
            )
        split, records = "train", run.validation_records
    return load_split(run.cfg.dataset, split, data_dir=run.data_dir, limit=limit, records=records)


def _cmd_attack(args: argparse.Namespace) -> int:
    import numpy as np

    from jaxrobust import report
    from jaxrobust.threat import get_threat
    from jaxrobust.train.loop import restore_run, save_adversarial_grid

    run, state, _ = restore_run(args.run_dir, best=args.best)
    cfg = run.cfg
    x, y = _load_split_of_run(run, args.split, args.num)
    threat_name = args.threat or cfg.eval.threat or cfg.threat
    eps = cfg.eps if args.eps is None else args.eps
    threat = get_threat(threat_name, eps)
    out = Path(args.out) if args.out else Path(args.run_dir) / "attack"
    out.mkdir(parents=True, exist_ok=True)
    adv = save_adversarial_grid(
        state, x, y, threat, out / "adversarial_examples.png", steps=args.steps
    )
    np.savez_compressed(out / "adversarial_examples.npz", x=x, y=y, **adv)
    fooled = float(np.mean(adv["pred_adv"] != y))
    report.write_json(
        out / "metrics.json",
        {
            "threat": threat_name,
            "eps": eps,
            "steps": args.steps,
            "num_examples": len(y),
            "clean_accuracy": float(np.mean(adv["pred_clean"] == y)),
            "adversarial_accuracy": 1.0 - fooled,
        },
    )
    print(
        f"{len(y)} adversarial examples ({threat_name}, eps={eps:g}) in {out}; fooled {fooled:.1%}"
    )
    return 0


def experiments_dir() -> Path:
    """The repository's experiments/ folder (experiments ship with the source checkout)."""
    return Path(__file__).resolve().parents[1] / "experiments"


def _cmd_experiment(args: argparse.Namespace) -> int:
    import importlib.util

    from jaxrobust.errors import ConfigError

    folder = experiments_dir()
    known = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
    path = folder / f"{args.name}.py"
    if args.name not in known:
        raise ConfigError(
            f"unknown experiment {args.name!r}; known: {', '.join(known) or 'none'} (in {folder})"
        )
    # Experiments share helpers (experiments/_common.py) by plain import, as when run as
    # scripts: their folder goes on the path.
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(f"jaxrobust_experiment_{args.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.main(args.rest) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxrobust", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (default: PGD-AT on the offline digits)")
    p.add_argument("--config", help="'default', 'smoke', or a .json / .py (get_config) file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", help="run directory (default: runs/<dataset>_<objective>_...)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_distributed_args(p, "training")
    p.set_defaults(fn=_cmd_train)

    for name, fn, helptext in (
        ("eval", _cmd_eval, "evaluate a run's checkpoint against attacks and ε values"),
        ("attack", _cmd_attack, "save adversarial examples of a run's model and an image grid"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("run_dir", help="a directory written by `jaxrobust train`")
        p.add_argument("--best", action="store_true", help="use the best checkpoint")
        p.add_argument("--threat", choices=("linf", "l2", "l1"), help="default: the run's")
        p.add_argument(
            "--split",
            default="test",
            help="test (default), train (without held-out records) or validation (them)",
        )
        p.add_argument("--out", help=f"output directory (default: RUN_DIR/{name})")
        p.set_defaults(fn=fn)
        if name == "eval":
            p.add_argument("--suite", default="standard", help="standard | plus | rand | fast")
            p.add_argument("--attacks", nargs="+", help="attack names instead of a suite")
            p.add_argument("--eps", type=float, nargs="+", help="default: the run's eps_list")
            p.add_argument("--limit", type=int, help="evaluate the first N examples")
            p.add_argument("--batch-size", type=int, default=512)
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--no-checks", action="store_true", help="skip the sanity checks")
            p.add_argument("--resume", action="store_true", help="resume from OUT/eval_state.json")
            _add_distributed_args(p, "evaluation")
        else:
            p.add_argument("--steps", type=int, default=50)
            p.add_argument("--eps", type=float, help="default: the run's training ε")
            p.add_argument("--num", type=int, default=16, help="number of examples")
    p = sub.add_parser("experiment", help="run a paper reproduction from experiments/")
    p.add_argument("name", help="experiment module name, e.g. sample_complexity")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="its own options (--smoke, --out)")
    p.set_defaults(fn=_cmd_experiment)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from jaxrobust.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    # One CPU device per core (before JAX starts its backends): jobs shard their batches.
    from jaxrobust.parallel import use_cpu_cores_as_devices

    use_cpu_cores_as_devices()
    try:
        return args.fn(args)
    except JaxRobustError as e:
        print(f"jaxrobust {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
