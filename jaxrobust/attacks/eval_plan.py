"""Planning for `evaluate`: where batches go (devices), how they are cut into padded
chunks of a few fixed shapes, and the compiled programs, kept across calls.

Programs are cached in this process on their static configuration (attack, threat, input
range, mesh, batch shape) and, for a model that carries its weights as a pytree (a
`jax.tree_util.Partial`, as `as_logits_fn` and `TrainState.logits_fn` return), on the
structure and shapes of those weights only: the weights are program inputs, so every
checkpoint of an architecture reuses the programs compiled for the first. A model given
as another callable is closed over (its arrays become constants), so its programs are
keyed on the callable itself.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrobust.errors import InputError, without_callbacks
from jaxrobust.parallel import data_mesh, replicate, shard_global_batch

Array = jax.Array

REUSE_SLACK = 1.25  # pad a chunk up to an already compiled size at most 25% larger
PROGRAM_CACHE_SIZE = 64  # compiled programs kept per process (least recently used go)


def chunks(
    indices: np.ndarray, batch_size: int, granule: int = 1, reuse: Sequence[int] = ()
) -> Iterator[tuple[np.ndarray, int]]:
    """Equal chunks of `indices`, each padded (by repeating its first index) to one size;
    yields (padded indices, number of real ones).

    The size is the smallest multiple of `granule` (capped at `batch_size`) that splits
    the indices into ceil(len / batch_size) chunks: a cascade stage with 194 examples left
    runs on batches of 225, not 360, and every chunk of a stage shares one compiled shape.
    With granule = batch_size / 8 an attack meets at most 8 shapes, so compilation stays
    bounded (and each shape is cached across runs). A size in `reuse` (the attack's
    sizes so far) at most `REUSE_SLACK` times larger is taken instead: padding 20% more
    examples costs less than tracing, lowering and compiling another program.
    """
    if len(indices) == 0:
        return
    per_chunk = -(-len(indices) // -(-len(indices) // batch_size))  # ceil(len / #chunks)
    size = min(-(-per_chunk // granule) * granule, batch_size)
    near = [r for r in reuse if size <= r <= min(REUSE_SLACK * size, batch_size)]
    size = min(near, default=size)
    for start in range(0, len(indices), size):
        part = indices[start : start + size]
        pad = size - len(part)
        yield np.concatenate([part, np.full(pad, part[0])]), len(part)


def select_mesh(batch_size: int, devices: int | Sequence[Any] | None) -> Mesh | None:
    """The data mesh the cascade shards its batches over, or None (no placement).

    devices None: all devices of all processes when `batch_size` is a multiple of their
    count (else none: one process, unsharded); an int n: the first n devices; a sequence:
    those devices. An explicit choice must divide `batch_size`."""
    if jax.process_count() > 1 and batch_size % jax.device_count():
        # Fewer devices would leave whole processes out of every program (or, unsharded,
        # each process would compute alone on arrays that span all of them).
        raise InputError(
            f"batch_size {batch_size} is not a multiple of the {jax.device_count()} devices of "
            f"the {jax.process_count()} processes: every device takes part in a multi-process "
            "evaluation; choose a multiple of the device count"
        )
    if devices is None:
        return data_mesh() if batch_size % jax.device_count() == 0 else None
    if isinstance(devices, (int, np.integer)):
        available = jax.devices()
        if not 1 <= devices <= len(available):
            raise InputError(
                f"devices must be between 1 and the {len(available)} available, got {devices}"
            )
        devices = available[: int(devices)]
    devices = list(devices)
    if not devices or batch_size % len(devices):
        raise InputError(
            f"batch_size {batch_size} must be a multiple of the {len(devices)} devices chosen"
        )
    if jax.process_count() > 1 and len(devices) != jax.device_count():
        raise InputError("a multi-process evaluation runs on every device of every process")
    return data_mesh(devices)


@dataclass(frozen=True)
class Placement:
    """How the cascade's programs see the model and the data.

    `carried` is the model passed to every program as an argument (a pytree carrying its
    weights; None when the model is closed over instead); `static_model` is what the
    programs' cache key needs of the model (None for a carried one, else the callable)."""

    model: Callable[[Array], Array]
    mesh: Mesh | None
    carried: Any
    static_model: Any

    @classmethod
    def create(cls, model: Callable[[Array], Array], mesh: Mesh | None) -> Placement:
        carried = model if isinstance(model, jax.tree_util.Partial) else None
        if carried is not None and mesh is not None:
            carried = replicate(carried, mesh)
        return cls(model, mesh, carried, None if carried is not None else model)

    def bound(self, m: Any) -> Callable[[Array], Array]:
        """The model inside a program: the carried argument, or the closed-over model."""
        return self.model if m is None else m

    def place(self, t: Any) -> Any:
        """A padded chunk, sharded over the mesh's devices."""
        return jnp.asarray(t) if self.mesh is None else shard_global_batch(t, self.mesh)

    def whole(self, t: Any) -> Any:
        """`t` on every device of the mesh: inputs of any size (the probe, the checks)."""
        return jnp.asarray(t) if self.mesh is None else replicate(t, self.mesh)

    def jit_kwargs(self) -> dict[str, Any]:
        # Replicated outputs: every process reads whole results (np.asarray) and so keeps
        # the same books, chunks and state. Without a mesh nothing is placed (one process).
        if self.mesh is None:
            return {}
        return {"out_shardings": NamedSharding(self.mesh, PartitionSpec())}

    def key(self, *parts: Hashable) -> tuple:
        """A program's cache key: its own static parts and the model's and mesh's."""
        return (*parts, _Identity(self.static_model), self.mesh)


def granule_for(batch_size: int, placement: Placement) -> int:
    """Chunk sizes are multiples of this (divisible by the device count when sharded), so
    later attacks run on smaller compiled batches, at most 8 sizes per attack."""
    devices = placement.mesh.devices.size if placement.mesh is not None else 1
    return min(-(-max(batch_size // 8, 1) // devices) * devices, batch_size)


class _Identity:
    """Hash and compare a callable by identity (lambdas, closures: no reuse by value)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Identity) and other.obj is self.obj


def _signature(args: Any) -> tuple:
    """Tree structure, shapes, dtypes and placements of `args`: what a compiled program
    needs to match (the values don't matter)."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    return treedef, tuple(
        (np.shape(a), jnp.result_type(a), getattr(a, "sharding", None)) for a in leaves
    )


_PROGRAMS: OrderedDict[tuple, Any] = OrderedDict()


def compiled_program(key: tuple, build: Callable[[], Callable], jit_kwargs: dict, args: tuple):
    """The program `jax.jit(build(), **jit_kwargs)` compiled ahead of time for `args`
    (so timings separate compilation), from this process's cache when `key` and the
    arguments' signature have been seen. Returns (compiled, seconds spent compiling)."""
    full_key = (key, _signature(args))
    hit = _PROGRAMS.get(full_key)
    if hit is not None:
        _PROGRAMS.move_to_end(full_key)
        return hit, 0.0
    t0 = time.perf_counter()
    # Traced without host callbacks (persistent-cache friendly): the cascade tests the
    # results for poisoning instead (see jaxrobust.errors).
    program = jax.jit(without_callbacks(build()), **jit_kwargs).lower(*args).compile()
    _PROGRAMS[full_key] = program
    while len(_PROGRAMS) > PROGRAM_CACHE_SIZE:
        _PROGRAMS.popitem(last=False)
    return program, time.perf_counter() - t0


def clear_program_cache() -> None:
    """Forget the compiled programs `evaluate` keeps in this process."""
    _PROGRAMS.clear()
