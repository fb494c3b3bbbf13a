"""The training loop's accuracy evaluator: clean and PGD-attacked accuracy over a whole
split under one fixed attack, per epoch and at the end of training. (`jaxrobust.evaluate`,
in `jaxrobust.attacks.cascade`, is the publishable evaluation: a cascade of attacks with
sanity checks.)

The functions compile once per (model, attack configuration, batch shape): the last batch
is padded to the fixed batch size and masked, and ε is a traced argument, so an ε sweep
reuses one compiled attack. Given a mesh, every batch is sharded over its devices (all
processes' devices in a multi-host job, every process passing the whole split) and the
per-example results come back replicated, so all processes get the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrobust.attacks import fgsm, pgd
from jaxrobust.errors import InputError, check_batch, without_callbacks
from jaxrobust.losses import cross_entropy, margin
from jaxrobust.parallel import shard_global_batch
from jaxrobust.threat import get_threat

Array = jax.Array
ApplyFn = Callable[..., Array]


def _padded_batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        yield start, np.minimum(idx, n - 1), min(batch_size, n - start)


ATTACKS = ("fgsm", "pgd", "pgd_margin")


def _attack(name: str, steps: int, restarts: int):
    """(logits_fn, x, y, key, threat) -> Result for an attack name of `ATTACKS`."""
    if name == "fgsm":
        return lambda f, x, y, key, threat: fgsm(f, x, y, threat=threat)
    if name in ("pgd", "pgd_margin"):
        loss = cross_entropy if name == "pgd" else margin
        return lambda f, x, y, key, threat: pgd(
            f, x, y, key, threat=threat, steps=steps, restarts=restarts, loss=loss
        )
    raise InputError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")


class AccuracyEvaluator:
    """Clean and robust accuracy of `apply_fn(variables, x, train=False)` under one attack.

    Args:
      apply_fn: a Flax `Module.apply`.
      threat: "linf", "l2" or "l1"; inputs in [lo, hi].
      attack: "pgd" (cross-entropy), "pgd_margin" (CW margin loss) or "fgsm".
      steps, restarts: the PGD attack (step size 2.5·ε/steps, random starts).
      batch_size: the fixed evaluation batch shape (rounded up to a multiple of the mesh's
        device count).
      mesh: shard every batch over this 1-D "data" mesh (`jaxrobust.parallel.data_mesh`);
        `variables` must then live on the mesh too (e.g. `replicate`d). None: no sharding.
    """

    def __init__(
        self,
        apply_fn: ApplyFn,
        threat: str = "linf",
        *,
        attack: str = "pgd",
        steps: int = 50,
        restarts: int = 5,
        batch_size: int = 512,
        lo: float = 0.0,
        hi: float = 1.0,
        mesh: Mesh | None = None,
    ):
        if mesh is not None:
            batch_size = -(-batch_size // mesh.devices.size) * mesh.devices.size
        self.batch_size = batch_size
        self._mesh = mesh
        get_threat(threat, 0.0, lo=lo, hi=hi)  # validate the name now, not at the first call
        run_attack = _attack(attack, steps, restarts)

        def logits(variables, x):
            return apply_fn(variables, x, train=False)

        def clean(variables, x, y):
            z = logits(variables, x)
            return jnp.argmax(z, -1) == y, jnp.all(jnp.isfinite(z))

        def robust(variables, x, y, key, eps):
            f = lambda z: logits(variables, z)  # noqa: E731
            result = run_attack(f, x, y, key, get_threat(threat, eps, lo=lo, hi=hi))
            # The clean point is in the ball too: robust means correct on both.
            return (jnp.argmax(f(x), -1) == y) & ~result.success

        # Replicated outputs: each process can read the whole result (np.asarray).
        out: dict[str, Any] = (
            {} if mesh is None else {"out_shardings": NamedSharding(mesh, PartitionSpec())}
        )
        # Traced without host callbacks (persistent-cache friendly); inputs come from the
        # validated data pipeline, and a poisoned attack (non-finite logits) counts every
        # point as broken: accuracy 0, never a confident robust number.
        self._clean = jax.jit(without_callbacks(clean), **out)
        self._robust = jax.jit(without_callbacks(robust), **out)

    def _place(self, x: Any, y: Any) -> tuple[Any, Any]:
        """One padded batch, sharded over the mesh when there is one."""
        if self._mesh is None:
            return x, y
        return shard_global_batch((x, y), self._mesh)

    def clean_correct(self, variables: Any, x: Any, y: Any) -> np.ndarray:
        """Per-example correctness on clean inputs, (N,) bool."""
        check_batch(x, y)
        out = np.zeros(len(y), bool)
        for start, idx, count in _padded_batches(len(y), self.batch_size):
            ok, finite = self._clean(variables, *self._place(x[idx], y[idx]))
            if not bool(finite):
                raise InputError("the model returned non-finite logits (NaN or inf)")
            out[start : start + count] = np.asarray(ok)[:count]
        return out

    def robust_correct(self, variables: Any, x: Any, y: Any, key: Array, eps: float) -> np.ndarray:
        """Per-example correctness under PGD at ε (ε = 0: clean), (N,) bool."""
        if eps < 0:
            raise InputError(f"eps must be >= 0, got {eps}")
        if eps == 0:
            return self.clean_correct(variables, x, y)
        check_batch(x, y)
        out = np.zeros(len(y), bool)
        for i, (start, idx, count) in enumerate(_padded_batches(len(y), self.batch_size)):
            xb, yb = self._place(x[idx], y[idx])
            ok = self._robust(variables, xb, yb, jax.random.fold_in(key, i), eps)
            out[start : start + count] = np.asarray(ok)[:count]
        return out

    def accuracy_curve(
        self, variables: Any, x: Any, y: Any, key: Array, eps_list: Sequence[float]
    ) -> list[float]:
        """Robust accuracy at each ε of `eps_list`."""
        return [float(self.robust_correct(variables, x, y, key, e).mean()) for e in eps_list]
