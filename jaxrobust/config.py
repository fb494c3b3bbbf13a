"""Job configurations: one `ml_collections.ConfigDict` per job, with a `smoke` variant.

The defaults are the main job: PGD adversarial training (Madry et al. 2018) of a 512-512
MLP on the offline UCI digits at ℓ∞ ε = 0.1, evaluated with PGD-50 × 5 restarts.
Override any key from the command line with `--set key=value` (dotted paths); unknown keys
are errors, never silently ignored.
"""

from __future__ import annotations

import ast
import json
import math
import runpy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ml_collections

from jaxrobust.errors import ConfigError

OBJECTIVES = (
    "standard",
    "pgd_at",
    "fast_at",
    "trades",
    "spatial_worst_of_k",
    "spatial_random",
    "gaussian_noise",
    "smooth_adv",
    "ibp",
    "crown_ibp",
)
# The models that bound-propagation training (objective ibp / crown_ibp) supports.
BOUND_MODELS = ("mlp", "small_cnn", "madry_cnn")
EARLY_STOPPING_METRICS = ("validation_robust_accuracy", "validation_clean_accuracy")


def default_config() -> ml_collections.ConfigDict:
    """The main job: `jaxrobust train` with no arguments runs exactly this."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dataset = "digits"
    # The dataset's parameters (free-form, checked by the dataset), e.g. for shapes
    # `--set dataset_kwargs.planted=True --set dataset_kwargs.planted_norm=0.25`.
    c.dataset_kwargs = ml_collections.ConfigDict()
    c.data_dir = ""  # "" = $JAXROBUST_DATA_DIR or ~/.cache/jaxrobust/tensorflow_datasets
    c.augment = False

    c.model = ml_collections.ConfigDict()
    c.model.name = "mlp"
    c.model.kwargs = ml_collections.ConfigDict({"hidden": (512, 512)})

    c.objective = "pgd_at"
    c.threat = "linf"  # linf | l2 | l1 for the pixel objectives
    c.eps = 0.1  # training ε, in input units ([0, 1] images)

    # The training adversary (pgd_at, trades): `steps` steps of `step_size` (0 = ε/4).
    c.adversary = ml_collections.ConfigDict()
    c.adversary.steps = 10
    c.adversary.step_size = 0.0
    c.adversary.trades_beta = 6.0
    c.adversary.fast_alpha = 1.25  # FGSM-RS step in units of ε (Wong et al. 2020)
    c.adversary.max_angle = 30.0  # spatial objectives: degrees
    c.adversary.max_shift = 0.1  # spatial objectives: fraction of the image side
    c.adversary.worst_of_k = 10
    # pgd_at, fast_at, trades: ramp the training ε linearly from 0 over this many epochs
    # (a curriculum against collapse to a constant prediction on hard data); 0 = off.
    c.adversary.eps_warmup_epochs = 0.0

    # Randomized smoothing (objective gaussian_noise): train on x + N(0, sigma^2 I); the
    # `jaxrobust certify --method smoothing` default sigma for the run.
    c.smoothing = ml_collections.ConfigDict()
    c.smoothing.sigma = 0.25  # input units ([0, 1] images)
    # smooth_adv (Salman et al. 2019): PGD (adversary.steps, threat, eps) on the smoothed
    # classifier estimated over `samples` noise draws, then training on those noisy copies.
    c.smoothing.samples = 1

    # Bound-propagation training (objective ibp | crown_ibp; Gowal et al. 2018, Zhang et al.
    # 2020): natural training for warmup_epochs, then ε ramps linearly from 0 to `eps` and κ
    # from 1 to `kappa` over ramp_epochs; loss = κ·CE(clean) + (1 − κ)·CE(−margin bounds).
    # crown_ibp mixes β·CROWN-IBP + (1 − β)·IBP bounds, β from beta_start to beta_end.
    c.bound = ml_collections.ConfigDict()
    c.bound.warmup_epochs = 1.0
    c.bound.ramp_epochs = 10.0
    c.bound.kappa = 0.5
    c.bound.beta_start = 1.0
    c.bound.beta_end = 0.0

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adam"  # adam | adamw | sgd
    c.optimizer.learning_rate = 2e-3
    c.optimizer.schedule = "cosine"  # constant | piecewise | cosine | cyclic
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 0.0
    c.optimizer.warmup_epochs = 0.0
    c.optimizer.grad_clip = 0.0  # global-norm clip; 0 = off

    c.epochs = 30
    c.batch_size = 64

    c.eval = ml_collections.ConfigDict()
    c.eval.threat = ""  # "" = the training threat
    c.eval.eps = 0.0  # 0 = the training ε: the headline robust accuracy
    c.eval.eps_list = (0.0, 0.05, 0.1, 0.2, 0.3)
    c.eval.steps = 50
    c.eval.restarts = 5
    c.eval.every_epochs = 5  # during training: clean and PGD accuracy on the test set
    c.eval.during_steps = 10
    c.eval.during_examples = 0  # 0 = the whole test split
    c.eval.during_train_examples = 0  # > 0: also evaluate the first N training records
    c.eval.batch_size = 512
    c.eval.co_check = True  # fast_at: PGD check for catastrophic overfitting each epoch

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.keep = 3
    c.checkpoint.every_steps = 0  # 0 = at the end of every epoch

    # A validation set held out from the training split (Rice et al. 2020): the last
    # `examples` training records, never trained on, evaluated clean and under the
    # during-training PGD (eval.during_steps) every eval.every_epochs epochs.
    c.validation = ml_collections.ConfigDict()
    c.validation.examples = 0  # 0 = no validation set: train on the whole training split

    # Early stopping on the validation set (needs validation.examples > 0): the evaluated
    # epoch with the best `metric` (the first one, on ties) is the model that the final
    # evaluation and `--best` use; the last epoch's numbers are reported beside it.
    c.early_stopping = ml_collections.ConfigDict()
    c.early_stopping.enabled = False
    c.early_stopping.metric = "validation_robust_accuracy"  # | validation_clean_accuracy
    c.early_stopping.patience = 0  # stop after this many epochs without improvement; 0 = never

    # What a run writes besides config.json, run_info.json, metrics.json and its PNGs.
    # tensorboard: event files in out_dir/tensorboard (per-epoch history, final metrics);
    # needs the `tensorboard` extra (tensorboardX). May change when a run is resumed.
    c.logging = ml_collections.ConfigDict()
    c.logging.tensorboard = False
    return c


def smoke_config() -> ml_collections.ConfigDict:
    """A few-second variant of the main job for tests and CI."""
    c = default_config()
    c.model.kwargs = ml_collections.ConfigDict({"hidden": (32,)})
    c.epochs = 2
    c.batch_size = 128
    c.adversary.steps = 3
    c.eval.eps_list = (0.0, 0.1)
    c.eval.steps = 5
    c.eval.restarts = 1
    c.eval.every_epochs = 1
    c.eval.during_steps = 3
    c.eval.during_examples = 128
    return c


CONFIGS = {"default": default_config, "smoke": smoke_config}


def _parse_value(text: str) -> Any:
    if text in ("true", "false"):  # JSON spelling, as in config files
        return text == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as dataset=cifar10


# Free-form sub-dicts: any key may be set below them (their consumer checks the keys).
FREE_FORM = (("model", "kwargs"), ("dataset_kwargs",))


def _known_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items():
        path = f"{prefix}{k}"
        free = tuple(path.split(".")) in FREE_FORM
        if isinstance(v, ml_collections.ConfigDict) and not free:
            keys.extend(_known_keys(v, path + "."))
        else:
            keys.append(path)
    return keys


def set_value(cfg: ml_collections.ConfigDict, path: str, value: Any) -> None:
    """Set a dotted `path` in `cfg`, raising `ConfigError` for unknown keys or bad types.

    Keys under `model.kwargs` and `dataset_kwargs` are free-form (passed to the model
    constructor or the dataset, which check them); every other key must already exist.
    """
    parts = path.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise ConfigError(_unknown(cfg, path))
        node = node[part]
        if tuple(parts[: i + 1]) in FREE_FORM:
            break
    leaf = parts[-1]
    free_form = tuple(parts[:-1]) in FREE_FORM
    if leaf not in node and not free_form:
        raise ConfigError(_unknown(cfg, path))
    if free_form:
        if isinstance(value, list):
            value = tuple(value)
        with node.unlocked():
            try:
                node[leaf] = value
            except TypeError:  # ml_collections keeps the type of an existing key
                old = node[leaf]
                raise ConfigError(
                    f"config key {path!r} expects a {type(old).__name__} such as {old!r}, "
                    f"got {value!r} ({type(value).__name__})"
                ) from None
        return
    old, original = node[leaf], value
    if isinstance(old, ml_collections.ConfigDict) and isinstance(value, dict):
        node[leaf] = ml_collections.ConfigDict(value)  # e.g. model.kwargs={"depth": 16}
        return
    if isinstance(old, tuple) and isinstance(value, int | float):
        value = (value,)
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, tuple) and not isinstance(value, tuple):
        value = None  # not a sequence: reported below
    if old is not None and type(old) is not type(value):
        raise ConfigError(
            f"config key {path!r} expects a {type(old).__name__}, got {original!r} "
            f"({type(original).__name__})"
        )
    if isinstance(old, tuple) and old and all(_is_number(v) for v in old):
        if not all(_is_number(v) for v in value):
            raise ConfigError(f"config key {path!r} expects a tuple of numbers, got {original!r}")
        value = tuple(float(v) if isinstance(old[0], float) else v for v in value)
    node[leaf] = value


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _unknown(cfg: ml_collections.ConfigDict, path: str) -> str:
    return f"unknown config key {path!r}; known keys: {', '.join(_known_keys(cfg))}"


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
    """Apply `key=value` strings (values parsed as Python literals, else strings)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, text = item.split("=", 1)
        set_value(cfg, key.strip(), _parse_value(text.strip()))


def _merge(cfg: ml_collections.ConfigDict, data: dict, prefix: str = "") -> None:
    for k, v in data.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and tuple(path.split(".")) not in FREE_FORM:
            _merge(cfg, v, path + ".")
        else:  # a free-form dict (model.kwargs, dataset_kwargs) is replaced whole
            set_value(cfg, path, v)


def load_config(
    source: str | None = None, overrides: Iterable[str] = ()
) -> ml_collections.ConfigDict:
    """Build a config from a name ("default", "smoke"), a JSON file, or a Python file that
    defines `get_config()`; then apply overrides. Unknown keys raise `ConfigError`."""
    cfg = default_config()
    if source:
        if source in CONFIGS:
            cfg = CONFIGS[source]()
        else:
            path = Path(source)
            if not path.is_file():
                raise ConfigError(
                    f"config {source!r} is neither a file nor one of {sorted(CONFIGS)}"
                )
            if path.suffix == ".json":
                try:
                    data = json.loads(path.read_text())
                except json.JSONDecodeError as e:
                    raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
                _merge(cfg, data)
            elif path.suffix == ".py":
                module = runpy.run_path(str(path))
                if "get_config" not in module:
                    raise ConfigError(f"config file {path} must define get_config()")
                loaded = module["get_config"]()
                _merge(cfg, loaded.to_dict() if hasattr(loaded, "to_dict") else dict(loaded))
            else:
                raise ConfigError(f"config file {path} must be .json or .py")
    apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


# Numeric keys and their smallest allowed value (each must also be finite).
_LOWER_BOUNDS: dict[str, float] = {
    "seed": 0,
    "epochs": 1,
    "batch_size": 1,
    "adversary.steps": 1,
    "adversary.step_size": 0,
    "adversary.trades_beta": 0,
    "adversary.fast_alpha": 0,
    "adversary.max_angle": 0,
    "adversary.max_shift": 0,
    "adversary.worst_of_k": 1,
    "adversary.eps_warmup_epochs": 0,
    "smoothing.samples": 1,
    "bound.warmup_epochs": 0,
    "bound.ramp_epochs": 0,
    "bound.kappa": 0,
    "bound.beta_start": 0,
    "bound.beta_end": 0,
    "optimizer.learning_rate": 0,
    "optimizer.momentum": 0,
    "optimizer.weight_decay": 0,
    "optimizer.warmup_epochs": 0,
    "optimizer.grad_clip": 0,
    "eval.steps": 1,
    "eval.restarts": 1,
    "eval.every_epochs": 1,
    "eval.during_steps": 1,
    "eval.during_examples": 0,
    "eval.during_train_examples": 0,
    "eval.batch_size": 1,
    "checkpoint.keep": 1,
    "checkpoint.every_steps": 0,
    "validation.examples": 0,
    "early_stopping.patience": 0,
}


def _finite_at_least(value: Any, low: float) -> bool:
    return _is_number(value) and math.isfinite(value) and value >= low


def _get(cfg: ml_collections.ConfigDict, path: str) -> Any:
    node = cfg
    for part in path.split("."):
        node = node[part]
    return node


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Reject values that would fail later or give silently wrong numbers."""
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {cfg.objective!r}; known: {', '.join(OBJECTIVES)}")
    if cfg.threat not in ("linf", "l2", "l1"):
        raise ConfigError(f"unknown threat {cfg.threat!r}; known: linf, l2, l1")
    if cfg.objective in ("ibp", "crown_ibp"):
        if cfg.threat != "linf":
            raise ConfigError(
                f"objective {cfg.objective} certifies linf balls, got threat {cfg.threat!r}"
            )
        if cfg.model.name not in BOUND_MODELS:
            raise ConfigError(
                f"objective {cfg.objective} needs a model bound propagation supports "
                f"({', '.join(BOUND_MODELS)}), got {cfg.model.name!r}"
            )
        for key in ("bound.kappa", "bound.beta_start", "bound.beta_end"):
            if _is_number(_get(cfg, key)) and _get(cfg, key) > 1:
                raise ConfigError(f"{key} must lie in [0, 1], got {_get(cfg, key)!r}")
    if cfg.eval.threat not in ("", "linf", "l2", "l1"):
        raise ConfigError(
            f"unknown eval.threat {cfg.eval.threat!r}; known: linf, l2, l1 ('' = threat)"
        )
    for key in ("eps", "eval.eps"):
        if not _finite_at_least(_get(cfg, key), 0):
            raise ConfigError(
                f"{key} must be >= 0 and finite (a radius in input units, images in "
                f"[0, 1]), got {_get(cfg, key)!r}"
            )
    eps_list = cfg.eval.eps_list
    if not isinstance(eps_list, tuple | list) or not eps_list:
        raise ConfigError(f"eval.eps_list must be a non-empty tuple of numbers, got {eps_list!r}")
    if any(not _finite_at_least(e, 0) for e in eps_list):
        raise ConfigError(
            f"eval.eps_list must hold finite numbers >= 0 (0 = clean accuracy), got {eps_list}"
        )
    sigma = cfg.smoothing.sigma
    if not _finite_at_least(sigma, 0) or sigma == 0:
        raise ConfigError(
            f"smoothing.sigma must be a finite number > 0 (the noise's standard deviation, "
            f"in input units), got {sigma!r}"
        )
    for key, low in _LOWER_BOUNDS.items():
        if not _finite_at_least(_get(cfg, key), low):
            raise ConfigError(f"{key} must be >= {low} and finite, got {_get(cfg, key)!r}")
    if cfg.seed >= 2**32:
        raise ConfigError(f"seed must be < 2**32, got {cfg.seed}")
    if not cfg.dataset or not isinstance(cfg.dataset, str):
        raise ConfigError(f"dataset must be a dataset name, got {cfg.dataset!r}")
    if not isinstance(cfg.dataset_kwargs, ml_collections.ConfigDict):
        raise ConfigError(
            f"dataset_kwargs must be a mapping of the dataset's parameters, such as "
            f'{{"planted": True}}, got {cfg.dataset_kwargs!r}'
        )
    if cfg.optimizer.name not in ("adam", "adamw", "sgd"):
        raise ConfigError(f"unknown optimizer {cfg.optimizer.name!r}; known: adam, adamw, sgd")
    if cfg.optimizer.schedule not in ("constant", "piecewise", "cosine", "cyclic"):
        raise ConfigError(
            f"unknown schedule {cfg.optimizer.schedule!r}; "
            "known: constant, piecewise, cosine, cyclic"
        )
    if not isinstance(cfg.logging.tensorboard, bool):
        raise ConfigError(
            f"logging.tensorboard must be true or false, got {cfg.logging.tensorboard!r}"
        )
    es = cfg.early_stopping
    if es.metric not in EARLY_STOPPING_METRICS:
        raise ConfigError(
            f"unknown early_stopping.metric {es.metric!r}; known: "
            f"{', '.join(EARLY_STOPPING_METRICS)}"
        )
    if es.enabled and cfg.validation.examples == 0:
        raise ConfigError(
            "early_stopping.enabled needs a validation set: set validation.examples > 0 "
            "(the last N training records are then held out)"
        )
