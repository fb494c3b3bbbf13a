"""The `jaxrobust` command: train, eval, attack, certify, experiment and demo.

    jaxrobust train [--config NAME|FILE] [--set key=value ...] [--out DIR] [--step N]
                    [--coordinator HOST:PORT --num-processes N --process-id I]
    jaxrobust eval RUN_DIR|zoo:NAME [--suite standard | --attacks apgd-ce fab-t ...] [--eps 0.1 0.3]
                   [--best | --step N] [--resume]
                   [--coordinator HOST:PORT --num-processes N --process-id I]
    jaxrobust eval --from-torch FILE.pt --arch NAME --eps 0.031 [--dataset cifar10]
                   [--mean M M M --std S S S] [--suite ... | --attacks ...] [--limit N]
    jaxrobust attack RUN_DIR [--eps 0.1] [--num 16] [--out DIR] [--best | --step N]
    jaxrobust certify RUN_DIR --method smoothing [--sigma S] [--n0 N0] [--n N] [--alpha A]
                      [--radii R ...] [--best | --step N] [--limit N] [--resume]
    jaxrobust certify RUN_DIR --method ibp|crown-ibp --eps EPS [--pgd-steps S]
                      [--pgd-restarts R] [--best | --step N] [--split S] [--limit N]
    jaxrobust experiment NAME [--smoke] [--out DIR]
    jaxrobust demo [RUN_DIR] [--best] [--host 127.0.0.1] [--port 8000]

Bad input exits with status 2 and one line naming the problem (no traceback), before
anything is written to disk; configuration errors and `--help` answer without starting JAX.
Ctrl-C exits with status 130 and one line saying where the work so far is kept and how to
go on from it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxrobust.errors import ConfigError, JaxRobustError

# Exit statuses: bad input (argparse uses 2 as well) and Ctrl-C (128 + SIGINT).
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class _Interrupted(Exception):
    """Ctrl-C, with the line that tells the user where their work is and how to go on."""


def _default_out(cfg) -> Path:
    eps = cfg.threat + (f"{cfg.eps:g}" if not cfg.objective.startswith("spatial") else "spatial")
    if cfg.objective == "gaussian_noise":  # trained on noise, no threat model
        eps = f"sigma{cfg.smoothing.sigma:g}"
    if cfg.objective == "smooth_adv":
        eps += f"-sigma{cfg.smoothing.sigma:g}"
    # A derived dataset's name holds its folder's path: name the run after the folder. Runs
    # on the same dataset with other parameters get their own directory.
    dataset = Path(cfg.dataset.removeprefix("derived:")).name or "derived"
    params = "".join(f"-{k}{v}" for k, v in sorted(cfg.dataset_kwargs.to_dict().items()))
    dataset = f"{dataset}{params}"
    return Path("runs") / f"{dataset}_{cfg.objective}_{eps}_seed{cfg.seed}"


# ----------------------------------------------------------------------- argument types
# argparse reports a ValueError/TypeError raised by a `type=` function as
# "argument --x: invalid <name> value" and an ArgumentTypeError with its own message.


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _radius(text: str) -> float:
    """An ε: a finite number >= 0 (infinity is no radius: the attack would be unbounded)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"eps must be a finite number >= 0 (in input units, images in [0, 1]), got {text}"
        )
    return value


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _check_out(path: Path, what: str) -> None:
    """Refuse an output path that cannot become a directory (before anything is written)."""
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{what} {path}: {parent} exists and is not a directory")
            break


def _check_run_dir(run_dir: str) -> Path:
    path = Path(run_dir)
    if not path.is_dir():
        from jaxrobust.errors import CheckpointError

        why = "does not exist" if not path.exists() else "is not a directory"
        raise CheckpointError(f"run directory {path} {why}")
    return path


def _add_distributed_args(p: argparse.ArgumentParser, what: str) -> None:
    """--coordinator, --num-processes, --process-id (read by `_join_processes`)."""
    multi = f"multi-process {what}: run the same command in every process"
    p.add_argument("--coordinator", metavar="HOST:PORT", help=f"{multi}, process 0 serves this")
    p.add_argument("--num-processes", type=_positive_int, metavar="N", help="with --coordinator")
    p.add_argument(
        "--process-id", type=_non_negative_int, metavar="I", help="with --coordinator, 0..N-1"
    )


def _check_distributed_args(args: argparse.Namespace) -> None:
    given = [args.coordinator, args.num_processes, args.process_id]
    if not args.coordinator:
        if any(v is not None for v in given):
            raise ConfigError("--num-processes and --process-id need --coordinator")
        return
    if args.num_processes is None or args.process_id is None:
        raise ConfigError("--coordinator needs --num-processes and --process-id")
    if args.process_id >= args.num_processes:
        raise ConfigError(
            f"--process-id must be in 0..{args.num_processes - 1} (--num-processes "
            f"{args.num_processes}), got {args.process_id}"
        )
    host, _, port = args.coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--coordinator must look like HOST:PORT, got {args.coordinator!r}")


def _join_processes(args: argparse.Namespace) -> None:
    """Join the multi-process job that --coordinator names (nothing without it).

    Call it before anything touches JAX devices (restoring a checkpoint included).
    """
    if not args.coordinator:
        return
    from jaxrobust.parallel import initialize_distributed

    initialize_distributed(args.coordinator, args.num_processes, args.process_id)


def _start_jax() -> None:
    """Set up JAX for a command: the compilation cache and one CPU device per core.

    Called once the arguments are validated, so that bad input never waits for JAX.
    """
    from jaxrobust.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    # One CPU device per core (before JAX starts its backends): jobs shard their batches.
    from jaxrobust.parallel import use_cpu_cores_as_devices

    use_cpu_cores_as_devices()


def _checkpoint_line(ckpt_dir: Path) -> str:
    """Where the newest checkpoint of a run is, for the Ctrl-C message."""
    steps = sorted(
        int(p.name)
        for p in (ckpt_dir.iterdir() if ckpt_dir.is_dir() else ())
        if p.name.isdigit() and (p / "commit_success.txt").is_file()
    )
    if not steps:
        return f"no checkpoint was saved yet in {ckpt_dir}"
    return f"the last checkpoint is step {steps[-1]} in {ckpt_dir}"


# ----------------------------------------------------------------------------- commands


def _cmd_train(args: argparse.Namespace) -> int:
    from jaxrobust.config import load_config

    _check_distributed_args(args)
    cfg = load_config(args.config, args.set or [])
    out = Path(args.out) if args.out else _default_out(cfg)
    _check_out(out, "--out")
    _start_jax()
    _join_processes(args)
    from jaxrobust.train.loop import train

    try:
        train(cfg, out, progress=not args.quiet, resume_step=args.step)
    except KeyboardInterrupt:
        raise _Interrupted(
            f"{_checkpoint_line(out / 'checkpoints')}: run the same command to resume from it"
        ) from None
    return 0


def _check_eval_args(args: argparse.Namespace) -> None:
    """Everything about `eval`'s arguments that can be checked before reading the run."""
    if args.eps is not None and not any(e > 0 for e in args.eps):
        raise ConfigError(
            f"--eps {' '.join(f'{e:g}' for e in args.eps)}: give at least one eps > 0 "
            "(eps 0 is the clean accuracy, which is always reported)"
        )
    from jaxrobust.attacks.suites import ATTACKS, SUITES

    if args.attacks:
        unknown = [a for a in args.attacks if a not in ATTACKS]
        if unknown:
            raise ConfigError(
                f"unknown attack {unknown[0]!r} in --attacks; known attacks: {', '.join(ATTACKS)}"
            )
    elif args.suite not in SUITES:
        raise ConfigError(f"unknown suite {args.suite!r}; known suites: {', '.join(SUITES)}")


def _cmd_eval(args: argparse.Namespace) -> int:
    if _wants_from_torch(args):
        return _eval_from_torch(args)
    _check_distributed_args(args)
    zoo_model = _zoo_eval_target(args)
    run_dir = _check_run_dir(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "eval"
    _check_out(out, "--out")
    _start_jax()
    _check_eval_args(args)
    _join_processes(args)
    import jax

    from jaxrobust import report
    from jaxrobust.parallel import is_primary, sync_processes
    from jaxrobust.train.loop import best_checkpoint_metric, restore_run

    # Several processes: each restores the (replicated) weights collectively, loads the
    # whole split and runs `evaluate` with the same arguments; process 0 alone writes the
    # report and prints (every process computes the same numbers).
    primary = is_primary()
    run, state, _ = restore_run(run_dir, best=args.best, step=args.step, warn=_warn)
    cfg = run.cfg
    x, y = _load_split_of_run(run, args.split, args.limit)
    threat = args.threat or cfg.eval.threat or cfg.threat
    eps_list = args.eps if args.eps else [float(e) for e in cfg.eval.eps_list]
    attacked = [e for e in eps_list if e != 0]  # ε = 0 is the clean accuracy
    if not attacked:
        raise ConfigError(
            f"the run's eval.eps_list {eps_list} has no eps > 0: pass --eps with one or more"
        )
    # Finished (ε, attack) steps are always recorded, so that an interrupted evaluation can
    # go on with --resume; without it an evaluation starts afresh.
    state_file = out / "eval_state.json"
    if primary:
        out.mkdir(parents=True, exist_ok=True)
        if not args.resume:
            state_file.unlink(missing_ok=True)
    sync_processes("jaxrobust-eval-state")
    t0 = time.perf_counter()
    result = _evaluate_resumably(
        state.logits_fn(), x, y, args, threat, attacked, state_file, primary
    )
    by_eps = dict(zip(result.eps, result.robust_accuracy, strict=True))
    curve = [result.clean_accuracy if e == 0 else by_eps[e] for e in eps_list]
    per_attack = {
        name: [result.clean_accuracy if e == 0 else accs[result.eps.index(e)] for e in eps_list]
        for name, accs in result.per_attack.items()
    }
    metrics = {
        "run": str(args.run_dir),
        "checkpoint": "best" if args.best else "latest" if args.step is None else "step",
        "checkpoint_step": int(state.step),
        "checkpoint_ranked_by": best_checkpoint_metric(cfg) if args.best else None,
        "dataset": cfg.dataset,
        "dataset_kwargs": run.dataset_kwargs or {},
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
        "escalation": None if result.escalation is None else result.escalation.to_dict(),
        "per_example": "report.json / report.npz (EvalReport.load)",
        "checks": result.checks,
        "processes": jax.process_count(),
    }
    if not primary:
        return 0
    report.write_json(out / "metrics.json", metrics)
    result.save(out / "report")  # per-example outcomes and adversarial inputs
    curves = {f"after {name}": (eps_list, accs) for name, accs in per_attack.items()}
    curves["worst case"] = (eps_list, curve)
    title = f"{cfg.dataset} ({threat})"
    report.plot_accuracy_vs_eps(curves, out / "accuracy_vs_eps.png", title=title)
    for e, acc in zip(eps_list, curve, strict=True):
        print(f"eps={e:g}: robust accuracy {acc:.4f}")
    for flag in result.flags:
        print(f"FLAG {flag.name}: {flag.message}")
    if result.escalation is not None:
        esc = result.escalation
        escalated = ", ".join(
            f"eps={e:g}: {acc:.4f}" for e, acc in zip(result.eps, esc.robust_accuracy, strict=True)
        )
        print(f"ESCALATED ({', '.join(esc.attacks)}): robust accuracy {escalated}")
    print(f"clean accuracy {result.clean_accuracy:.4f}; report in {out}")
    if zoo_model is not None:
        for line in zoo_model.compare(
            metrics, seed=args.seed, batch_size=args.batch_size, checks=not args.no_checks
        ):
            print(line)
    return 0


def _evaluate_resumably(
    logits_fn: Any,
    x: Any,
    y: Any,
    args: argparse.Namespace,
    threat: str,
    attacked: list[float],
    state_file: Path,
    primary: bool,
) -> Any:
    """`evaluate` with the command's attack options, recording finished (eps, attack) steps
    in `state_file`; Ctrl-C says where they are kept and how to go on (--resume)."""
    import jax  # after _start_jax (device settings)

    from jaxrobust.attacks.cascade import evaluate

    try:
        return evaluate(
            logits_fn,
            x,
            y,
            jax.random.key(args.seed),
            threat=threat,
            eps=attacked,
            attacks=args.attacks or args.suite,
            batch_size=args.batch_size,
            checks=not args.no_checks,
            state_file=state_file,
            progress=print,  # evaluate reports from process 0 only
            progress_bar=primary and sys.stderr.isatty(),
        )
    except KeyboardInterrupt:
        kept = "the finished (eps, attack) steps are" if state_file.is_file() else "nothing is"
        raise _Interrupted(
            f"{kept} kept in {state_file}: run the same command with --resume to go on"
        ) from None


def _zoo_eval_target(args: argparse.Namespace) -> Any:
    """`eval zoo:REF`: REF is a zoo name, a run directory or an http(s) URL
    (`jaxrobust.zoo.resolve`, checksums verified); evaluate its run directory, with the
    report in runs/zoo/NAME/eval by default (never inside the installed package). Returns
    the resolved entry (its `compare` lines follow the report) or None for a plain RUN_DIR."""
    if not str(args.run_dir).startswith("zoo:"):
        return None
    from jaxrobust import zoo

    resolved = zoo.resolve(str(args.run_dir).removeprefix("zoo:"))
    args.run_dir = str(resolved.run_dir)
    if args.out is None:
        args.out = str(Path("runs") / "zoo" / resolved.name / "eval")
    return resolved


def _add_from_torch_args(p: argparse.ArgumentParser) -> None:
    """`eval --from-torch FILE.pt --arch NAME`: a PyTorch checkpoint instead of a run."""
    p.add_argument(
        "--from-torch",
        metavar="FILE.pt",
        help="evaluate a PyTorch checkpoint (state dict) instead of a run; needs --arch, "
        "--eps and the torch extra (pip install 'jaxrobust[torch]'); the report goes to "
        "FILE_eval/ beside it unless --out",
    )
    p.add_argument(
        "--arch",
        help="with --from-torch: preact_resnet18, resnet18, resnet50, wrn-28-10, wrn-34-10, "
        "wrn-70-16 (or wrn-DEPTH-WIDTH)",
    )
    p.add_argument(
        "--dataset",
        help="with --from-torch: a dataset of 32x32x3 images (default cifar10; shapes is offline)",
    )
    p.add_argument(
        "--mean",
        type=float,
        nargs="+",
        help="with --from-torch: input normalisation mean in [0, 1] units (default: the "
        "checkpoint's normalizer, else none)",
    )
    p.add_argument("--std", type=float, nargs="+", help="with --from-torch: likewise the std")


def _wants_from_torch(args: argparse.Namespace) -> bool:
    """Whether `eval` reads a PyTorch checkpoint; refuses its options beside a RUN_DIR."""
    if args.from_torch is not None or args.run_dir is None:
        return True
    for flag in ("arch", "dataset", "mean", "std"):
        if getattr(args, flag) is not None:
            raise ConfigError(f"--{flag} applies to --from-torch only; a run knows its own")
    return False


def _check_from_torch_args(args: argparse.Namespace) -> tuple[Path, Path]:
    """Everything about `eval --from-torch` that can be checked before starting JAX."""
    if args.from_torch is None:
        raise ConfigError("give a RUN_DIR, or --from-torch FILE.pt --arch NAME")
    if args.run_dir is not None:
        raise ConfigError(f"give either RUN_DIR ({args.run_dir}) or --from-torch, not both")
    for flag, given in (
        ("--best", args.best),
        ("--step", args.step is not None),
        ("--coordinator", args.coordinator is not None),
    ):
        if given:
            raise ConfigError(f"{flag} is for runs; it does not apply to --from-torch")
    if args.arch is None:
        from jaxrobust.models.from_torch import ARCHS

        raise ConfigError(f"--from-torch needs --arch, one of: {', '.join(ARCHS)}")
    from jaxrobust.models.from_torch import resolve_arch

    resolve_arch(args.arch)
    if not args.eps:
        raise ConfigError("--from-torch needs --eps (a PyTorch checkpoint carries no ε)")
    from jaxrobust.data import get_info
    from jaxrobust.models.layers import check_stats

    for flag, stat in (("--mean", args.mean), ("--std", args.std)):
        if stat is not None and len(stat) not in (1, 3):
            raise ConfigError(f"{flag} takes 1 or 3 values (one per channel), got {len(stat)}")
        if stat is not None and not all(math.isfinite(v) for v in stat):
            raise ConfigError(f"{flag} must be finite numbers, got {' '.join(map(str, stat))}")
    check_stats(args.mean or 0.0, args.std or 1.0)
    args.dataset = args.dataset or "cifar10"
    info = get_info(args.dataset)
    if tuple(info.image_shape) != (32, 32, 3):
        shape = "x".join(map(str, info.image_shape))
        raise ConfigError(
            f"--dataset {args.dataset} has {shape} images; the PyTorch architectures take "
            "32x32x3 (CIFAR-shaped) inputs: use cifar10, cifar100, svhn or shapes"
        )
    path = Path(args.from_torch)
    if not path.is_file():
        from jaxrobust.errors import CheckpointError

        raise CheckpointError(f"no PyTorch checkpoint file at {path}")
    out = Path(args.out) if args.out else path.parent / f"{path.stem}_eval"
    _check_out(out, "--out")
    return path, out


def _eval_from_torch(args: argparse.Namespace) -> int:
    """`jaxrobust eval --from-torch FILE.pt --arch NAME --eps ...`: convert, load, evaluate."""
    path, out = _check_from_torch_args(args)
    _check_eval_args(args)
    from jaxrobust.models.from_torch import convert, load_torch_state_dict

    sd = load_torch_state_dict(path)  # before JAX: a refused file answers at once
    _start_jax()

    from jaxrobust import report
    from jaxrobust.data import get_info, load_split
    from jaxrobust.models import as_logits_fn

    mean = None if args.mean is None else tuple(args.mean)
    std = None if args.std is None else tuple(args.std)
    model, variables = convert(sd, args.arch, mean=mean, std=std)
    info = get_info(args.dataset)
    if model.num_classes != info.num_classes:
        raise ConfigError(
            f"{path} has {model.num_classes} classes, --dataset {args.dataset} has "
            f"{info.num_classes}"
        )
    x, y = load_split(args.dataset, args.split, limit=args.limit)
    threat = args.threat or "linf"
    attacked = [e for e in args.eps if e != 0]
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / "eval_state.json"
    if not args.resume:
        state_file.unlink(missing_ok=True)
    t0 = time.perf_counter()
    result = _evaluate_resumably(
        as_logits_fn(model, variables), x, y, args, threat, attacked, state_file, True
    )
    by_eps = dict(zip(result.eps, result.robust_accuracy, strict=True))
    curve = [result.clean_accuracy if e == 0 else by_eps[e] for e in args.eps]
    metrics = {
        "from_torch": str(path),
        "arch": args.arch,
        "mean": model.mean,
        "std": model.std,
        "dataset": args.dataset,
        "split": args.split,
        "num_examples": len(y),
        "threat": threat,
        "suite": args.suite if not args.attacks else None,
        "attacks": result.attacks,
        "eps": list(args.eps),
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": curve,
        "eval_seconds": time.perf_counter() - t0,
        "flags": [{"name": f.name, "message": f.message} for f in result.flags],
        "per_example": "report.json / report.npz (EvalReport.load)",
        "checks": result.checks,
    }
    report.write_json(out / "metrics.json", metrics)
    result.save(out / "report")
    for e, acc in zip(args.eps, curve, strict=True):
        print(f"eps={e:g}: robust accuracy {acc:.4f}")
    for flag in result.flags:
        print(f"FLAG {flag.name}: {flag.message}")
    print(f"clean accuracy {result.clean_accuracy:.4f} ({len(y)} examples); report in {out}")
    return 0


def _warn(message: str) -> None:
    print(f"jaxrobust: warning: {message}", file=sys.stderr)


def _load_split_of_run(run: Any, split: str, limit: int | None) -> tuple[Any, Any]:
    """(x, y) of `split` as the run saw it: "train" without the held-out validation tail,
    "validation" that tail, any other name the dataset's split of that name."""
    from jaxrobust.data import load_split

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
    return load_split(
        run.cfg.dataset,
        split,
        data_dir=run.data_dir,
        limit=limit,
        records=records,
        dataset_kwargs=run.dataset_kwargs,
    )


def _cmd_attack(args: argparse.Namespace) -> int:
    run_dir = _check_run_dir(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "attack"
    _check_out(out, "--out")
    if args.eps is not None and args.eps == 0:
        raise ConfigError("--eps must be > 0 for an attack (eps 0 leaves every input unchanged)")
    _start_jax()
    import numpy as np

    from jaxrobust import report
    from jaxrobust.threat import get_threat
    from jaxrobust.train.loop import restore_run, save_adversarial_grid

    run, state, _ = restore_run(run_dir, best=args.best, step=args.step, warn=_warn)
    cfg = run.cfg
    x, y = _load_split_of_run(run, args.split, args.num)
    threat_name = args.threat or cfg.eval.threat or cfg.threat
    eps = cfg.eps if args.eps is None else args.eps
    if not eps > 0:
        raise ConfigError(f"the run's training eps is {eps:g}: pass --eps > 0 to attack it")
    threat = get_threat(threat_name, eps)
    out.mkdir(parents=True, exist_ok=True)
    adv = save_adversarial_grid(
        state, x, y, threat, out / "adversarial_examples.png", steps=args.steps
    )
    np.savez_compressed(out / "adversarial_examples.npz", x=x, y=y, **adv)
    correct = adv["pred_clean"] == y
    fooled = correct & (adv["pred_adv"] != y)
    # The success rate counts only examples the model got right before the attack: an
    # example that was misclassified already was not "fooled" by it.
    success = float(fooled.sum() / correct.sum()) if correct.any() else None
    report.write_json(
        out / "metrics.json",
        {
            "threat": threat_name,
            "eps": eps,
            "steps": args.steps,
            "num_examples": len(y),
            "clean_accuracy": float(np.mean(correct)),
            "adversarial_accuracy": float(np.mean(adv["pred_adv"] == y)),
            "num_correct_before_attack": int(correct.sum()),
            "attack_success_rate": success,
            "attack_success_rate_counts": "examples correctly classified before the attack",
        },
    )
    rate = (
        f"fooled {fooled.sum()} of the {correct.sum()} correctly classified ({success:.1%})"
        if success is not None
        else "none was correctly classified before the attack"
    )
    print(f"{len(y)} adversarial examples ({threat_name}, eps={eps:g}) in {out}; {rate}")
    return 0


def _unit_interval(text: str) -> float:
    """alpha: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def _positive_number(text: str) -> float:
    """sigma: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


CERTIFY_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
"""The ℓ2 radii `jaxrobust certify --method smoothing` reports by default."""


def _cmd_certify(args: argparse.Namespace) -> int:
    from jaxrobust.certify import method_module

    run_dir = _check_run_dir(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "certify"
    _check_out(out, "--out")
    method_module(args.method)  # unknown or not in this build: a ConfigError, before JAX
    _check_certify_args(args)
    _start_jax()
    return _CERTIFIERS[args.method](args, run_dir, out)


# Options of one family of methods only (None: not given), and the batch size per method.
_SMOOTHING_ONLY = ("sigma", "radii")
_BOUND_ONLY = ("eps", "pgd_steps", "pgd_restarts")
_CERTIFY_BATCH = {"smoothing": 32, "ibp": 256, "crown-ibp": 256}
CERTIFY_PGD = {"pgd_steps": 50, "pgd_restarts": 3}
"""The PGD cross-check of `jaxrobust certify --method ibp|crown-ibp` by default."""


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_certify_args(args: argparse.Namespace) -> None:
    """The options of `certify` that belong to another method, or are missing (before JAX)."""
    smoothing = args.method == "smoothing"
    wrong = [n for n in (_BOUND_ONLY if smoothing else _SMOOTHING_ONLY) if getattr(args, n)]
    if wrong:
        what = "the l-inf bound methods ibp and crown-ibp" if smoothing else "--method smoothing"
        raise ConfigError(f"{_option(wrong[0])} is an option of {what}, not --method {args.method}")
    if not smoothing:
        if args.eps is None:
            raise ConfigError(
                f"--method {args.method} needs --eps EPS: the l-inf radius to certify, in input "
                "units (images in [0, 1]), e.g. --eps 0.1"
            )
        for name, default in CERTIFY_PGD.items():
            if getattr(args, name) is None:
                setattr(args, name, default)
    if args.batch_size is None:
        args.batch_size = _CERTIFY_BATCH[args.method]


def _certify_smoothing(args: argparse.Namespace, run_dir: Path, out: Path) -> int:
    """Randomized smoothing: certify the run's model as the base classifier."""
    import jax
    import numpy as np

    from jaxrobust import report
    from jaxrobust.certify import smoothing
    from jaxrobust.train.loop import restore_run

    run, state, _ = restore_run(run_dir, best=args.best, step=args.step, warn=_warn)
    cfg = run.cfg
    sigma = args.sigma if args.sigma is not None else float(cfg.smoothing.sigma)
    if args.sigma is None and cfg.objective not in ("gaussian_noise", "smooth_adv"):
        _warn(
            f"the run was trained with objective {cfg.objective!r}, not gaussian_noise: "
            f"certifying with its config's smoothing.sigma = {sigma:g} (pass --sigma)"
        )
    radii = sorted(set(args.radii if args.radii else CERTIFY_RADII))
    x, y = _load_split_of_run(run, args.split, args.limit)
    # Finished batches are always recorded, so that an interrupted run can go on with
    # --resume; without it a run starts afresh.
    state_file = out / "certify_state.json"
    out.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        state_file.unlink(missing_ok=True)
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(y), desc="certify", unit="example")

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.update(done - bar.n)

    t0 = time.perf_counter()
    try:
        cert = smoothing.certify(
            state.logits_fn(),
            x,
            jax.random.key(args.seed),
            sigma=sigma,
            n0=args.n0,
            n=args.n,
            alpha=args.alpha,
            batch_size=args.batch_size,
            chunk=args.chunk,
            state_file=state_file,
            progress=progress,
        )
    except KeyboardInterrupt:
        kept = "the finished batches are" if state_file.is_file() else "nothing is"
        raise _Interrupted(
            f"{kept} kept in {state_file}: run the same command with --resume to go on"
        ) from None
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    accuracy = smoothing.certified_accuracy(cert, y, radii)
    curve_r, curve_acc = smoothing.certified_accuracy_curve(cert, y)
    abstained = cert.prediction == smoothing.ABSTAIN
    metrics = {
        "run": str(args.run_dir),
        "checkpoint": "best" if args.best else "latest" if args.step is None else "step",
        "checkpoint_step": int(state.step),
        "dataset": cfg.dataset,
        "split": args.split,
        "num_examples": len(y),
        "method": "smoothing",
        "smoothing": {
            "sigma": sigma,
            "n0": args.n0,
            "n": args.n,
            "alpha": args.alpha,
            "seed": args.seed,
            "certified_accuracy": {
                f"{r:g}": float(a) for r, a in zip(radii, accuracy, strict=True)
            },
            "certified_accuracy_means": (
                "fraction of the num_examples examples whose smoothed prediction is the label "
                "and whose certified l2 radius (Cohen et al. 2019 CERTIFY, one-sided "
                "Clopper-Pearson bound at level 1 - alpha) is >= the radius"
            ),
            "abstain_rate": float(abstained.mean()),
            "smoothed_accuracy": float(np.mean(cert.prediction == y)),
            "max_certifiable_radius": smoothing.max_radius(args.n, args.alpha, sigma),
            "mean_certified_radius_of_correct": (
                float(cert.radius[cert.prediction == y].mean())
                if np.any(cert.prediction == y)
                else 0.0
            ),
            "curve": {"radius": curve_r.tolist(), "certified_accuracy": curve_acc.tolist()},
        },
        "seconds": seconds,
        "devices": jax.device_count(),
    }
    report.write_json(out / "metrics.json", metrics)
    np.savez_compressed(
        out / "certificates.npz",
        prediction=cert.prediction,
        radius=cert.radius,
        p_a_lower=cert.p_a_lower,
        count=cert.count,
        label=np.asarray(y),
    )
    report.plot_accuracy_vs_eps(
        {f"smoothing σ={sigma:g} (n={args.n}, α={args.alpha:g})": (curve_r, curve_acc)},
        out / "certified_accuracy_vs_radius.png",
        title=f"{cfg.dataset}: certified accuracy ({len(y)} examples)",
        xlabel="ℓ2 radius",
    )
    for r, a in zip(radii, accuracy, strict=True):
        print(f"radius={r:g}: certified accuracy {a:.4f}")
    print(
        f"smoothing sigma={sigma:g}, n0={args.n0}, n={args.n}, alpha={args.alpha:g}: "
        f"{len(y)} examples in {seconds:.1f} s, abstained on {abstained.mean():.1%}; "
        f"report in {out}"
    )
    return 0


def _in_batches(fn: Any, x: Any, y: Any, size: int) -> list:
    """fn(x_batch, y_batch) -> tuple of (b,) arrays, over batches of `size` examples, as numpy
    arrays of the whole set. Every batch has the same shape (the last one padded with its
    first example, the padding dropped after): one compiled program."""
    import numpy as np

    parts: list = []
    size = min(size, len(y))
    for s in range(0, len(y), size):
        xb, yb = x[s : s + size], y[s : s + size]
        keep = len(yb)
        if keep < size:
            xb = np.concatenate([xb, np.repeat(xb[:1], size - keep, axis=0)])
            yb = np.concatenate([yb, np.repeat(yb[:1], size - keep, axis=0)])
        parts.append([np.asarray(a)[:keep] for a in fn(xb, yb)])
    return [np.concatenate(col) for col in zip(*parts, strict=True)]


def _fraction(v: Any, how: str) -> dict:
    """A fraction of examples with its n and binomial standard error sqrt(p(1 - p)/n)."""
    import numpy as np

    p = float(np.mean(v))
    return {"value": p, "n": len(v), "se": float(np.sqrt(p * (1 - p) / len(v))), "how": how}


def _certify_bounds(args: argparse.Namespace, run_dir: Path, out: Path) -> int:
    """IBP or CROWN-IBP: verified accuracy at l-inf --eps, next to the clean accuracy and the
    PGD robust accuracy on the same examples (a verified example that PGD breaks is a flag)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxrobust as jr
    from jaxrobust import report
    from jaxrobust.certify import ibp
    from jaxrobust.train.loop import restore_run

    method = args.method.replace("-", "_")  # "ibp" | "crown_ibp", as in margin_bounds
    run, state, _ = restore_run(run_dir, best=args.best, step=args.step, warn=_warn)
    cfg = run.cfg
    # A model bound propagation does not know: UnsupportedLayerError (a ConfigError) names
    # the supported ones, before any data is read.
    try:
        # None too (no linen module): from_flax then names the models it supports.
        module: Any = getattr(state.apply_fn, "__self__", None)
        net = ibp.from_flax(module, state.variables())
    except ibp.UnsupportedLayerError as e:
        raise ibp.UnsupportedLayerError(f"--method {args.method}: {e}") from None
    if args.resume:
        _warn(f"--method {args.method} runs in one pass and keeps no state: --resume is ignored")
    x, y = _load_split_of_run(run, args.split, args.limit)
    x, y = np.asarray(x), np.asarray(y)
    eps = float(args.eps)
    threat = jr.linf(eps)
    lo, hi = threat.box
    logits_fn = state.logits_fn()

    @jax.jit
    def bounds(xb, yb):
        ok = ibp.verified(net, xb, yb, eps, method=method, lo=lo, hi=hi)
        return ok, jnp.argmax(logits_fn(xb), -1) == yb

    def pgd(xb, yb, key):
        broken = jnp.zeros(len(yb), bool)
        for loss, k in zip((jr.cross_entropy, jr.margin), jax.random.split(key), strict=True):
            res = jr.pgd(
                logits_fn,
                jnp.asarray(xb),
                jnp.asarray(yb),
                k,
                threat=threat,
                steps=args.pgd_steps,
                step_size=eps / 4,
                restarts=args.pgd_restarts,
                loss=loss,
            )
            broken |= res.success
        return (broken,)

    t0 = time.perf_counter()
    verified, correct = _in_batches(bounds, x, y, args.batch_size)
    t_bounds = time.perf_counter() - t0
    t0 = time.perf_counter()
    if eps > 0:
        keys = iter(jax.random.split(jax.random.key(args.seed), -(-len(y) // args.batch_size)))
        (broken,) = _in_batches(lambda xb, yb: pgd(xb, yb, next(keys)), x, y, args.batch_size)
    else:  # eps 0: the ball is the point itself
        broken = np.zeros(len(y), bool)
    t_pgd = time.perf_counter() - t0
    robust = correct & ~broken
    violations = int(np.sum(verified & ~robust))
    n = len(y)
    attack = (
        f"PGD-{args.pgd_steps} x {args.pgd_restarts} restarts, step eps/4, cross-entropy and "
        "margin losses (robust: broken by neither)"
    )
    where = f"{n} {cfg.dataset} {args.split} examples, l-inf eps = {eps:g} within [{lo:g}, {hi:g}]"
    bound = {
        "ibp": "IBP margin bounds (last layer merged into the specification)",
        "crown_ibp": "CROWN-IBP margin bounds (elementwise best of CROWN-IBP and IBP)",
    }[method]
    section: dict[str, Any] = {
        "eps": eps,
        "verified_accuracy": _fraction(verified, f"{bound}, {where}"),
        "clean_accuracy": _fraction(correct, f"clean accuracy, {where}"),
        "pgd_accuracy": _fraction(robust, f"{attack}, {where}"),
        "violations": violations,
        "violations_means": "examples verified but broken by PGD: must be 0 (sound bounds)",
        "verified_le_pgd_le_clean": bool(np.mean(verified) <= np.mean(robust) <= np.mean(correct)),
        "pgd": {"steps": args.pgd_steps, "restarts": args.pgd_restarts, "seed": args.seed},
        "seconds": {"bounds": t_bounds, "pgd": t_pgd},
    }
    metrics = {
        "run": str(args.run_dir),
        "checkpoint": "best" if args.best else "latest" if args.step is None else "step",
        "checkpoint_step": int(state.step),
        "dataset": cfg.dataset,
        "split": args.split,
        "num_examples": n,
        "method": args.method,
        method: section,
        "devices": jax.device_count(),
    }
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "metrics.json", metrics)
    np.savez_compressed(
        out / "certificates.npz", verified=verified, correct=correct, pgd_robust=robust, label=y
    )
    v, p, c = (section[k]["value"] for k in ("verified_accuracy", "pgd_accuracy", "clean_accuracy"))
    print(
        f"{args.method} at l-inf eps={eps:g} on {n} examples: verified {v:.4f}, "
        f"PGD robust {p:.4f}, clean {c:.4f}; report in {out}"
    )
    if violations:
        _warn(
            f"FLAG {violations} example(s) verified by {args.method} but broken by PGD at "
            f"eps={eps:g}: unsound bounds or an attack outside the ball (see {out})"
        )
    elif not section["verified_le_pgd_le_clean"]:
        _warn("FLAG verified <= PGD robust <= clean accuracy does not hold")
    return 0


# `--method` name -> its certifier (method availability: jaxrobust.certify.METHODS).
_CERTIFIERS = {
    "smoothing": _certify_smoothing,
    "ibp": _certify_bounds,
    "crown-ibp": _certify_bounds,
}


def experiments_dir() -> Path:
    """The repository's experiments/ folder (experiments ship with the source checkout)."""
    return Path(__file__).resolve().parents[1] / "experiments"


def _cmd_experiment(args: argparse.Namespace) -> int:
    import importlib.util

    folder = experiments_dir()
    known = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
    path = folder / f"{args.name}.py"
    if args.name not in known:
        raise ConfigError(
            f"unknown experiment {args.name!r}; known: {', '.join(known) or 'none'} (in {folder})"
        )
    _start_jax()
    # Experiments share helpers (experiments/_common.py) by plain import, as when run as
    # scripts: their folder goes on the path.
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(f"jaxrobust_experiment_{args.name}", path)
    assert spec is not None and spec.loader is not None  # a .py file always has a loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.main(args.rest) or 0)


def _port(text: str) -> int:
    """A TCP port: 0 (pick a free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 0..65535 (0 picks a free port), got {value}")
    return value


def _cmd_demo(args: argparse.Namespace) -> int:
    run_dir = _check_run_dir(args.run_dir) if args.run_dir else None
    if run_dir is not None and not (run_dir / "config.json").is_file():
        from jaxrobust.errors import CheckpointError

        raise CheckpointError(f"{run_dir} is not a run directory (no config.json)")
    if run_dir is None and args.best:
        raise ConfigError("--best needs a RUN_DIR (the default model has one checkpoint)")
    from jaxrobust.compilation_cache import enable_compilation_cache

    # One device (not one per core, as the other commands): a demo step is one image.
    enable_compilation_cache()
    from jaxrobust.demo import model as demo_model
    from jaxrobust.demo.server import make_server

    if run_dir is None:
        model = demo_model.default_model(progress=not args.quiet)
    else:
        model = demo_model.from_run(run_dir, best=args.best)
    print(f"compiling the model's step ({model.description})", flush=True)
    server = make_server(model, args.host, args.port)
    if not server.loopback_only:
        _warn(f"--host {args.host} is not a loopback address: whoever reaches it can use the demo")
    try:
        print(f"jaxrobust demo: serving at {server.url} (Ctrl-C to stop)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        print("\njaxrobust demo: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with one line for a malformed command line (the usage is one --help away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxrobust", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (default: PGD-AT on the offline digits)")
    p.add_argument("--config", help="'default', 'smoke', or a .json / .py (get_config) file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", help="run directory (default: runs/<dataset>_<objective>_...)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--step",
        type=_non_negative_int,
        metavar="N",
        help="resume from checkpoint step N (later checkpoints are set aside, not deleted)",
    )
    _add_distributed_args(p, "training")
    p.set_defaults(fn=_cmd_train)

    for name, fn, helptext in (
        ("eval", _cmd_eval, "evaluate a run's checkpoint against attacks and ε values"),
        ("attack", _cmd_attack, "save adversarial examples of a run's model and an image grid"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument(
            "run_dir",
            nargs="?" if name == "eval" else None,
            help="a directory written by `jaxrobust train`"
            + (", or zoo:NAME | zoo:PATH | zoo:URL (jaxrobust.zoo)" if name == "eval" else ""),
        )
        which = p.add_mutually_exclusive_group()
        which.add_argument("--best", action="store_true", help="use the best checkpoint")
        which.add_argument(
            "--step",
            type=_non_negative_int,
            metavar="N",
            help="use checkpoint step N (default: the newest intact one)",
        )
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
            p.add_argument(
                "--eps", type=_radius, nargs="+", help="default: the run's eval.eps_list"
            )
            p.add_argument("--limit", type=_positive_int, help="evaluate the first N examples")
            p.add_argument("--batch-size", type=_positive_int, default=512)
            p.add_argument("--seed", type=_non_negative_int, default=0)
            p.add_argument("--no-checks", action="store_true", help="skip the sanity checks")
            p.add_argument(
                "--resume",
                action="store_true",
                help="go on from OUT/eval_state.json (finished (eps, attack) steps)",
            )
            _add_distributed_args(p, "evaluation")
            _add_from_torch_args(p)
        else:
            p.add_argument("--steps", type=_positive_int, default=50)
            p.add_argument("--eps", type=_radius, help="default: the run's training ε")
            p.add_argument("--num", type=_positive_int, default=16, help="number of examples")
    p = sub.add_parser(
        "certify",
        help="certified robustness of a run's model (smoothing, ibp, crown-ibp)",
        description=(
            "smoothing: randomized smoothing, certified l2 radii (resumable with --resume). "
            "ibp | crown-ibp: verified accuracy at l-inf --eps by interval bound propagation "
            "(or CROWN-IBP), beside the clean and PGD robust accuracy of the same examples; "
            "one fast pass, no --resume."
        ),
    )
    p.add_argument("run_dir", help="a directory written by `jaxrobust train`")
    p.add_argument(
        "--method",
        default="smoothing",
        help="smoothing (randomized smoothing, l2), ibp or crown-ibp (l-inf; need --eps)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--best", action="store_true", help="use the best checkpoint")
    which.add_argument("--step", type=_non_negative_int, metavar="N", help="checkpoint step N")
    p.add_argument(
        "--split", default="test", help="test (default), train (without held-out) or validation"
    )
    p.add_argument("--limit", type=_positive_int, help="certify the first N examples")
    p.add_argument("--out", help="output directory (default: RUN_DIR/certify)")
    p.add_argument(
        "--sigma", type=_positive_number, help="smoothing: noise std (default: the run's)"
    )
    p.add_argument("--n0", type=_positive_int, default=100, help="smoothing: selection samples")
    p.add_argument("--n", type=_positive_int, default=10_000, help="smoothing: estimation samples")
    p.add_argument(
        "--alpha", type=_unit_interval, default=0.001, help="smoothing: failure probability"
    )
    p.add_argument(
        "--radii",
        type=_radius,
        nargs="+",
        help=f"smoothing: l2 radii to report (default {CERTIFY_RADII})",
    )
    p.add_argument(
        "--eps", type=_radius, help="ibp / crown-ibp (required): the l-inf radius to certify"
    )
    p.add_argument(
        "--pgd-steps",
        type=_positive_int,
        help=f"ibp / crown-ibp: steps of the PGD cross-check (default {CERTIFY_PGD['pgd_steps']})",
    )
    p.add_argument(
        "--pgd-restarts",
        type=_positive_int,
        help=f"ibp / crown-ibp: PGD restarts per loss (default {CERTIFY_PGD['pgd_restarts']})",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        help="examples per batch (default: "
        + ", ".join(f"{k} {v}" for k, v in _CERTIFY_BATCH.items())
        + ")",
    )
    p.add_argument(
        "--chunk", type=_positive_int, default=1000, help="smoothing: samples per model pass"
    )
    p.add_argument("--seed", type=_non_negative_int, default=0, help="noise / PGD random starts")
    p.add_argument(
        "--resume",
        action="store_true",
        help="smoothing: go on from OUT/certify_state.json (finished batches); ibp and "
        "crown-ibp run in one pass and do not resume",
    )
    p.set_defaults(fn=_cmd_certify)

    p = sub.add_parser("experiment", help="run a paper reproduction from experiments/")
    p.add_argument("name", help="experiment module name, e.g. sample_complexity")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="its own options (--smoke, --out)")
    p.set_defaults(fn=_cmd_experiment)

    p = sub.add_parser(
        "demo",
        help="interactive image class manipulation in the browser (a local web page)",
        description=(
            "Serve a page where you draw an image and watch a robust model move it toward a "
            "class, step by step, with live class probabilities. Without RUN_DIR: a robust "
            "(l2 PGD-AT) digits model, trained once into ~/.cache/jaxrobust/demo "
            "($JAXROBUST_DEMO_DIR) and loaded from there afterwards."
        ),
    )
    p.add_argument("run_dir", nargs="?", help="a directory written by `jaxrobust train`")
    p.add_argument("--best", action="store_true", help="use the run's best checkpoint")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--port", type=_port, default=8000, help="port (default 8000; 0 picks a free one)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar while training")
    p.set_defaults(fn=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `jaxrobust` command; returns the exit status (0, 2 bad input, 130 Ctrl-C)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a malformed command line (2): argparse printed it
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    where = f"jaxrobust {args.command}"
    try:
        return args.fn(args)
    except JaxRobustError as e:
        print(f"{where}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except _Interrupted as e:
        print(f"\n{where}: interrupted; {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"\n{where}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:  # a file system refusing: permissions, a full disk, a bad path
        print(f"{where}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
