"""The interactive demo's model side: class probabilities and targeted ℓ2 steps on one image.

A `DemoModel` wraps any `logits_fn(x (B, H, W, C) in [0, 1]) -> logits (B, K)` (a run's
checkpoint through `from_run`, or the default robust digits model of `default_model`) with
two jitted functions, compiled once (`warm_up`) and reused for every request:

- `predict(image)`: softmax probabilities (K,) of one image (H, W, C).
- `step(image, target, away, steps, step_size)`: `steps` normalised-gradient ℓ2 steps of
  the `jaxrobust.optimize` engine on one image, each one step of `optimize` with the
  `unconstrained(step_norm="l2")` threat model (the box [0, 1], no ball): x moves by
  `step_size` (ℓ2 norm over the whole image, input units) along the normalised gradient of
  log p(target | x) (toward the class), or of −log p(target | x) with `away` (away from
  it), then is clipped to [0, 1]. Deterministic: no random start, no randomness at all.

Steps run as a Python loop over the one-step jitted program (on CPU a loop over a jitted
step is faster than a `lax.scan` of steps; DESIGN.md), so any step count shares one
compiled program and the page can show every intermediate image.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.errors import InputError
from jaxrobust.losses import cross_entropy
from jaxrobust.optimize import optimize
from jaxrobust.threat import unconstrained

Array = jax.Array
LogitsFn = Callable[[Array], Array]

# The bounds every request is held to (the server checks them before anything runs).
MAX_STEPS = 100
# The default step size is this fraction of sqrt(H·W·C), the ℓ2 norm of an all-ones image
# (0.24 for 8×8 digits, 1.66 for 32×32×3 images); the largest allowed is the full sqrt.
DEFAULT_STEP_FRACTION = 0.03
# Examples shown on the page: this many test images of each class.
EXAMPLES_PER_CLASS = 2

_STEP_THREAT = unconstrained(step_norm="l2")
_NO_KEY = jax.random.key(0)  # the threat model has no random start here: unused


@jax.jit
def _probabilities(logits_fn: LogitsFn, x: Array) -> Array:
    """x (H, W, C) -> softmax probabilities (K,)."""
    return jax.nn.softmax(logits_fn(x[None]).astype(jnp.float32), axis=-1)[0]


@jax.jit
def _one_step(
    logits_fn: LogitsFn, x: Array, target: Array, away: Array, step_size: Array
) -> tuple[Array, Array]:
    """One targeted (or, with `away`, untargeted from `target`) normalised ℓ2 step.

    x (H, W, C) in [0, 1]; target () int32; away () bool; step_size () float32, the ℓ2
    length of the step in input units. Returns (new image (H, W, C), its probabilities (K,)).
    """
    labels = target[None]

    def objective(x_adv: Array) -> Array:
        ce = cross_entropy(logits_fn(x_adv), labels)
        return jnp.where(away, ce, -ce)  # maximised: log p(target) up, or down with away

    result = optimize(
        objective,
        x[None],
        _NO_KEY,
        threat=_STEP_THREAT,
        steps=1,
        step_size=step_size,
        random_start=False,
        keep_best=False,
    )
    new = result.x_adv[0]
    return new, _probabilities(logits_fn, new)


@dataclass
class DemoModel:
    """A model the demo serves, with what the page shows about it.

    Attributes:
      logits_fn: x (B, H, W, C) in [0, 1] -> logits (B, K); a pytree (e.g. a
        `jax.tree_util.Partial`, as `TrainState.logits_fn()` returns) or a plain function.
      image_shape: (H, W, C).
      class_names: K names, one per class.
      examples: (N, H, W, C) float32 images in [0, 1] the page offers as starting points.
      example_labels: (N,) int their labels.
      description: one line saying which model this is (shown on the page).
    """

    logits_fn: LogitsFn
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    examples: np.ndarray
    example_labels: np.ndarray
    description: str

    def __post_init__(self) -> None:
        # Its length is checked just below.
        self.image_shape = cast(tuple[int, int, int], tuple(int(s) for s in self.image_shape))
        if len(self.image_shape) != 3 or min(self.image_shape) < 1:
            raise InputError(f"image_shape must be (H, W, C) >= 1, got {self.image_shape}")
        self.class_names = tuple(str(c) for c in self.class_names)
        if len(self.class_names) < 2:
            raise InputError(f"need at least 2 classes, got {len(self.class_names)}")
        self.examples = np.asarray(self.examples, np.float32).reshape(-1, *self.image_shape)
        self.example_labels = np.asarray(self.example_labels, np.int64).reshape(-1)
        if len(self.examples) != len(self.example_labels):
            raise InputError(f"{len(self.examples)} examples but {len(self.example_labels)} labels")
        self.default_step_size = round(DEFAULT_STEP_FRACTION * self.max_step_size, 2)
        # Pytree models go to the jitted functions as arguments (their arrays are program
        # inputs; one compilation per architecture); a plain function is closed over.
        if not jax.tree_util.tree_leaves(self.logits_fn):
            fn = self.logits_fn
            self._probs = jax.jit(lambda _, x: _probabilities(fn, x))
            self._step = jax.jit(lambda _, *a: _one_step(fn, *a))
        else:
            self._probs, self._step = _probabilities, _one_step

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def max_step_size(self) -> float:
        """sqrt(H·W·C): the ℓ2 norm of an all-ones image, the largest step allowed."""
        return float(np.sqrt(np.prod(self.image_shape)))

    def warm_up(self) -> None:
        """Compile both programs now (at server start), so no request waits for XLA."""
        x = np.zeros(self.image_shape, np.float32)
        self.predict(x)
        self.step(x, 0, False, 1, self.default_step_size)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities (K,) float64 of one image (H, W, C) in [0, 1]."""
        x = jnp.asarray(image, jnp.float32).reshape(self.image_shape)
        return np.asarray(self._probs(self.logits_fn, x), np.float64)

    def step(
        self, image: np.ndarray, target: int, away: bool, steps: int, step_size: float
    ) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """`steps` ℓ2 steps of length `step_size` toward class `target` (away: from it).

        Returns (image (H, W, C) float32 in [0, 1], its probabilities (K,), the target's
        probability after each step (steps,)). Arguments are checked by the server.
        """
        x = jnp.asarray(image, jnp.float32).reshape(self.image_shape)
        t = jnp.asarray(target, jnp.int32)
        a = jnp.asarray(bool(away))
        s = jnp.asarray(step_size, jnp.float32)
        trace = []
        probs = None
        for _ in range(steps):
            x, probs = self._step(self.logits_fn, x, t, a, s)
            trace.append(probs[target])
        if probs is None:
            probs = self._probs(self.logits_fn, x)
        return (
            np.asarray(x, np.float32),
            np.asarray(probs, np.float64),
            [float(p) for p in jax.device_get(trace)],
        )


# ------------------------------------------------------------------------------ sources


def _class_names(dataset: str, num_classes: int) -> tuple[str, ...]:
    if dataset == "shapes":
        from jaxrobust.data.shapes import CLASS_NAMES

        if len(CLASS_NAMES) == num_classes:
            return tuple(CLASS_NAMES)
    return tuple(str(i) for i in range(num_classes))


def pick_examples(
    x: np.ndarray, y: np.ndarray, num_classes: int, per_class: int = EXAMPLES_PER_CLASS
) -> tuple[np.ndarray, np.ndarray]:
    """The first `per_class` images of each class (in record order), class by class."""
    chosen = [i for c in range(num_classes) for i in np.flatnonzero(y == c)[:per_class]]
    return x[chosen], y[chosen]


def _single_device(tree: Any) -> Any:
    """A copy of `tree` on the first device (a run's state may be replicated on several)."""
    return jax.device_put(jax.device_get(tree), jax.devices()[0])


def from_run(run_dir: str | os.PathLike[str], *, best: bool = False) -> DemoModel:
    """The demo model of a `jaxrobust train` run: its newest (or best) checkpoint, the image
    shape and classes of its dataset, examples from the dataset's test split.

    Raises: CheckpointError (not a run directory, no checkpoint), as `jaxrobust.load_run`.
    """
    from jaxrobust.data import get_info, load_split
    from jaxrobust.runs import load_run

    run = load_run(run_dir, best=best)
    cfg = run.config
    info = get_info(cfg.dataset)
    x, y = load_split(
        cfg.dataset,
        "test",
        data_dir=cfg.data_dir or None,
        dataset_kwargs=cfg.dataset_kwargs.to_dict() or None,
    )
    ex, ey = pick_examples(x, y, info.num_classes)
    threat = "spatial" if cfg.objective.startswith("spatial") else f"{cfg.threat} ε={cfg.eps:g}"
    return DemoModel(
        logits_fn=_single_device(run.logits_fn()),
        image_shape=info.image_shape,
        class_names=_class_names(cfg.dataset, info.num_classes),
        examples=ex,
        example_labels=ey,
        description=(
            f"{Path(run_dir).name}: {cfg.model.name} trained with {cfg.objective} "
            f"({threat}) on {cfg.dataset}, checkpoint step {run.step}"
        ),
    )


def default_cache_dir() -> Path:
    """Where the default demo model is trained once and kept: `$JAXROBUST_DEMO_DIR`, else
    `~/.cache/jaxrobust/demo`."""
    env = os.environ.get("JAXROBUST_DEMO_DIR")
    return Path(env).expanduser() if env else Path("~/.cache/jaxrobust/demo").expanduser()


DEFAULT_RUN_NAME = "digits_pgd_at_l2-1.5"


def default_config():
    """The default demo model: an MLP adversarially trained (PGD-AT, ℓ2 ε = 1.5, 7 steps)
    on the digits for 20 epochs, one to three minutes on 2 CPU cores. Robust models have
    gradients that look like the classes (Tsipras et al. 2019), which the demo shows."""
    from jaxrobust.config import default_config as base

    c = base()
    c.threat = "l2"
    c.eps = 1.5
    c.model.kwargs.hidden = (256, 256)
    c.adversary.steps = 7
    c.epochs = 20
    c.eval.eps_list = (0.0, 0.5, 1.0, 1.5)
    c.eval.steps = 20
    c.eval.restarts = 1
    c.eval.every_epochs = 10
    return c


def default_model(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> DemoModel:
    """The default demo model: load the robust digits run in `cache_dir` (default
    `default_cache_dir()`), training it there first when it has no finished checkpoint
    (an interrupted training resumes)."""
    from jaxrobust.train.loop import train

    run_dir = Path(cache_dir or default_cache_dir()) / DEFAULT_RUN_NAME
    if not (run_dir / "metrics.json").is_file():
        log(f"training the demo's robust digits model once, into {run_dir} (one to three minutes)")
        train(default_config(), run_dir, progress=progress, log=log)
    return from_run(run_dir)


def tiny_model(
    examples: np.ndarray,
    labels: np.ndarray,
    num_classes: int = 10,
    hidden: Sequence[int] = (16,),
    seed: int = 0,
) -> DemoModel:
    """An untrained MLP with the examples' image shape (for tests and trying the page)."""
    from jaxrobust.models import as_logits_fn, create_model

    examples = np.asarray(examples, np.float32)
    shape = examples.shape[1:]
    module = create_model("mlp", num_classes=num_classes, hidden=tuple(hidden))
    variables = jax.jit(module.init)(jax.random.key(seed), jnp.zeros((1, *shape)))
    ex, ey = pick_examples(examples, np.asarray(labels), num_classes)
    return DemoModel(
        logits_fn=as_logits_fn(module, variables),
        image_shape=shape,
        class_names=tuple(str(i) for i in range(num_classes)),
        examples=ex,
        example_labels=ey,
        description=f"untrained MLP {tuple(hidden)} (seed {seed})",
    )
