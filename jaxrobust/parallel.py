"""Data parallelism through `jax.sharding`: a 1-D mesh over all devices, batches sharded
along it, state replicated. XLA inserts the collectives; the same code runs on one CPU,
several simulated CPU devices (`--xla_force_host_platform_device_count`) or accelerators.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrobust.errors import InputError

DATA_AXIS = "data"


def data_mesh(devices: Any = None) -> Mesh:
    """A 1-D mesh named "data" over `devices` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf on every device of the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Build global arrays sharded along the leading (batch) axis from this process's part.

    Each process passes its own slice of the global batch (all of it with one process).
    """
    local = len([d for d in mesh.devices.flat if d.process_index == jax.process_index()])
    for leaf in jax.tree.leaves(batch):
        if np.shape(leaf)[0] % local:
            raise InputError(
                f"batch size {np.shape(leaf)[0]} is not divisible by the {local} local "
                "devices; choose a batch size that is a multiple of the device count"
            )
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, a), batch)
