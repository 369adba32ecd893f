"""Device mesh and shardings: the batch is split over a ``data`` axis, parameters are replicated.

One code path for 1 CPU, 8 GPUs or a TPU pod (after ``jax.distributed.initialize()``): every process feeds its
local slice of the global batch and ``shard_batch`` assembles the global array.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over ``num_devices`` (default: all) devices with axis name ``data``."""
    n = num_devices or jax.device_count()
    # Auto axis types: shardings propagate through the step as XLA decides (no explicit-sharding typing).
    return jax.make_mesh((n,), ("data",), devices=jax.devices()[:n], axis_types=(jax.sharding.AxisType.Auto,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``."""
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
    """Raises a clear error when the batch does not split evenly over devices and processes."""
    n = mesh.devices.size
    if global_batch % n or global_batch % jax.process_count():
        raise ValueError(
            f"batch_size={global_batch} must be divisible by the {n} devices and {jax.process_count()} processes"
        )


def shard_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Global arrays from this process's slice of the batch (leading axis), sharded over ``data``."""
    sharding = data_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )


def replicate(tree, mesh: Mesh):
    """Places a pytree on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
