"""Data parallelism through `jax.sharding`: a 1-D mesh over all devices, batches sharded
along it, state replicated. XLA inserts the collectives; the same code runs on one CPU,
several simulated CPU devices (`--xla_force_host_platform_device_count`), accelerators, or
several processes joined by `initialize_distributed` (multi-host: every process runs the
same program on its own devices and passes its own part of each batch).
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrobust.errors import InputError

DATA_AXIS = "data"


def initialize_distributed(
    coordinator_address: str,
    num_processes: int,
    process_id: int,
    *,
    cpu_collectives: str = "gloo",
) -> None:
    """Join a multi-process JAX job (`jax.distributed.initialize`), CPU collectives included.

    Call it in every process, before anything else touches JAX devices; afterwards
    `jax.devices()` (and so `data_mesh()`) spans the devices of all processes.

    Args:
      coordinator_address: "host:port" of the coordinator, which process 0 serves, e.g.
        "localhost:12345" for processes on one machine.
      num_processes: how many processes take part (>= 1).
      process_id: this process's index in [0, num_processes); process 0 is the one that
        writes reports and logs.
      cpu_collectives: cross-process collectives of the CPU backend ("gloo" over TCP, or
        "mpi"); without them a CPU all-reduce across processes fails. Used only when no
        implementation was configured (`jax_cpu_collectives_implementation`), and harmless
        on accelerator hosts, whose collectives are the accelerator's own.

    Raises:
      InputError: num_processes < 1 or process_id out of range.
    """
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise InputError(
            f"need num_processes >= 1 and 0 <= process_id < num_processes, got "
            f"num_processes={num_processes}, process_id={process_id}"
        )
    # The flag is read when the CPU client is created, i.e. after initialize: set it first.
    # jax.config's flags are attributes made at run time, which its stubs do not declare.
    if jax.config.jax_cpu_collectives_implementation is None:  # type: ignore[attr-defined]
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )


CPU_DEVICES_ENV = "JAXROBUST_CPU_DEVICES"


def use_cpu_cores_as_devices(count: int | None = None) -> int | None:
    """Give the CPU backend one XLA device per core, so data-parallel programs run one
    shard per core. Returns the device count set, or None where it left JAX as it was.

    Every jaxrobust job shards its batch over `data_mesh()`, so with N CPU devices each
    core runs its own slice of the batch. XLA:CPU spreads one program's convolutions over
    cores poorly: on 2 cores, PGD on PreActResNet-18 runs 7.8 -> 10.5 images/s and on the
    Madry CNN 53 -> 76 images/s with 2 devices instead of 1, with identical adversarial
    examples (benchmarks/scaling.py). The `jaxrobust` commands call this at start-up;
    library functions never do (it is process-wide configuration).

    From Python, call it first thing, before any JAX computation (creating an array, a
    `jax.random.key`, `jax.devices()`): JAX creates its backends then, and the device count
    is fixed from that moment on.

        import jaxrobust as jr
        jr.use_cpu_cores_as_devices()  # before anything else touches JAX
        x, y = jr.shard_examples(x, y)  # then spread each batch over the devices

    It changes nothing (returns None) when the backends exist already (with a
    `RuntimeWarning` when the CPU is the default backend and has another device count: the
    call came too late), or when the user chose a CPU device count already (`XLA_FLAGS` with
    `--xla_force_host_platform_device_count`, `JAX_NUM_CPU_DEVICES` or the
    `jax_num_cpu_devices` option). Accelerator backends are unaffected: the option only
    shapes the CPU backend, which is not the default where an accelerator is present.

    Args:
      count: devices to create; default `$JAXROBUST_CPU_DEVICES`, else the number of cores
        this process may run on. 1 keeps JAX's default single CPU device.

    Raises:
      InputError: count (or the environment variable) is not a positive integer.
    """
    raw = count if count is not None else os.environ.get(CPU_DEVICES_ENV)
    if raw is None:
        raw = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ) or 1
    try:
        n = int(raw)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise InputError(f"the CPU device count must be a positive integer, got {raw!r}")
    from jax._src import xla_bridge  # no public query for "backends already created"

    if (
        "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
        or jax.config.jax_num_cpu_devices >= 0  # type: ignore[attr-defined]  # flag, no stub
    ):
        return None
    if xla_bridge.backends_are_initialized():
        if jax.default_backend() == "cpu" and jax.local_device_count() != n:
            warnings.warn(
                f"use_cpu_cores_as_devices({n}) came after JAX created its backends, so the "
                f"CPU keeps {jax.local_device_count()} device(s): call it before any JAX "
                "computation (first thing after the imports), or set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before starting Python",
                RuntimeWarning,
                stacklevel=2,
            )
        return None
    jax.config.update("jax_num_cpu_devices", n)
    return n


def is_primary() -> bool:
    """True in the process that writes files and logs (process 0; the only one without
    `initialize_distributed`)."""
    return jax.process_index() == 0


def data_mesh(devices: Any = None) -> Mesh:
    """A 1-D mesh named "data" over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_mesh_for_batch(batch_size: int) -> Mesh:
    """`data_mesh()` over as many devices as divide `batch_size` evenly (all of them when
    they do), so a batch size that is not a multiple of the device count still runs, on
    fewer devices. With several processes every device must take part: the batch must
    divide (`shard_batch` says so otherwise)."""
    devices = jax.devices()
    if jax.process_count() > 1 or batch_size % len(devices) == 0:
        return data_mesh(devices)
    n = max(d for d in range(1, len(devices) + 1) if batch_size % d == 0)
    return data_mesh(devices[:n])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf on every device of the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def _local_device_count(mesh: Mesh) -> int:
    return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def _check_divisible(batch: Any, n: int, what: str) -> None:
    for leaf in jax.tree.leaves(batch):
        if np.shape(leaf)[0] % n:
            raise InputError(
                f"batch size {np.shape(leaf)[0]} is not divisible by the {n} {what}; "
                "choose a batch size that is a multiple of the device count"
            )


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Build global arrays sharded along the leading (batch) axis from this process's part.

    Each process passes its own slice of the global batch (all of it with one process);
    the global batch is the processes' slices concatenated in process order.
    """
    _check_divisible(batch, _local_device_count(mesh), "local devices")
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, a), batch)


def shard_global_batch(batch: Any, mesh: Mesh) -> Any:
    """Build global arrays sharded along the leading (batch) axis from the whole batch.

    Unlike `shard_batch`, every process passes the same, whole batch (e.g. an evaluation
    set each process loaded in full) and places only its own devices' slices. With one
    process the two are the same.
    """
    _check_divisible(batch, mesh.devices.size, "devices of the mesh")
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))

    def place(a: Any) -> jax.Array:
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(place, batch)


def shard_examples(*batches: Any, mesh: Mesh | None = None) -> Any:
    """Spread a batch over the devices, for a user's own jitted attack or model.

    A jitted function given arrays sharded along their batch axis runs one slice per device
    (XLA partitions the program): with `use_cpu_cores_as_devices()` that is one slice per CPU
    core. Per-example results are those of one device (up to float rounding).

        x, y = jr.shard_examples(x, y)
        result = attack(jr.as_logits_fn(model, variables), x, y, key)  # a jitted attack

    The model's weights need no placing: uncommitted arrays (as `init` returns them) go where
    the program runs. Weights already placed elsewhere (e.g. on one device by
    `jax.device_put(w, device)`) must be replicated over the same mesh:
    `jaxrobust.parallel.replicate(logits_fn, mesh)`.

    Args:
      *batches: arrays (or pytrees of arrays) with the same leading batch size B, the whole
        batch (with several processes, every process passes the same, whole batch).
      mesh: a 1-D mesh with axis "data"; default `data_mesh_for_batch(B)`: all devices, or
        as many as divide B evenly.
    Returns:
      The inputs as global `jax.Array`s sharded along axis 0: one value for one input, a
      tuple otherwise.
    Raises:
      InputError: no input, leading sizes that differ, or (with `mesh`) a batch size not
        divisible by the mesh's device count.
    """
    leaves = jax.tree.leaves(batches)
    if not leaves:
        raise InputError("shard_examples needs at least one array")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise InputError(
            "every input must be an array with the same leading batch axis, got leading "
            f"sizes {sorted(map(str, sizes))}"
        )
    size = sizes.pop()
    assert size is not None  # excluded just above
    mesh = data_mesh_for_batch(size) if mesh is None else mesh
    out = shard_global_batch(batches, mesh)
    return out[0] if len(out) == 1 else out


def local_copy(tree: Any) -> Any:
    """Process-local copies of replicated global arrays (e.g. a multi-host TrainState).

    A leaf that spans other processes' devices but is fully replicated becomes its copy on
    this process's first device, so single-process work on it (plots, a single-device
    attack) launches no cross-process computation that the other processes would have to
    join. Fully addressable leaves (every leaf with one process) are returned as they are.

    Raises:
      InputError: a leaf is sharded across processes (no process holds all of it).
    """

    def copy(x: Any) -> Any:
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return x
        if not x.is_fully_replicated:
            raise InputError(
                f"an array of shape {x.shape} is sharded across processes; only "
                "replicated arrays have a process-local copy"
            )
        return x.addressable_data(0)

    return jax.tree.map(copy, tree)


def process_allgather_json(value: Any) -> list[Any]:
    """Every process's JSON-serialisable `value`, in process order (a collective).

    All processes must call it together; with one process it returns `[value]` (a JSON
    round trip, so tuples come back as lists) and communicates nothing.
    """
    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    if jax.process_count() == 1:
        return [json.loads(data.tobytes())]
    from jax.experimental import multihost_utils

    # Byte strings of different lengths: gather the lengths, then zero-padded bytes.
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int32)))
    sizes = sizes.reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded))  # (processes, max size)
    return [json.loads(row[:n].tobytes()) for row, n in zip(rows, sizes, strict=True)]


def sync_processes(name: str) -> None:
    """Barrier: return once every process has reached `sync_processes(name)`.

    A no-op with one process. Used around file-system changes that one process makes and
    the others must see (or must have finished reading) before going on.
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
