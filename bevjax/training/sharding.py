"""Device mesh and shardings: the batch over every device, parameters split over ``fsdp`` (FSDP style).

One code path for 1 CPU, 8 GPUs or a TPU pod (after ``jax.distributed.initialize()``).

**Mesh.** Two axes, ``data`` and ``fsdp`` (:func:`make_mesh`, :func:`mesh_from_config` from ``config.mesh``);
``-1`` stands for the devices the other axis leaves. With ``fsdp=1`` (the default) this is plain data
parallelism: parameters replicated, the batch split over ``data``.

**Batch.** Its leading axis is split over both axes, ``P(('data', 'fsdp'))``: every device gets its own
examples (:func:`batch_sharding`). Every process feeds its local slice of the global batch and
:func:`shard_batch` assembles the global arrays (``[b, ...]`` examples or ``[b, t, ...]`` windows alike).

**State.** :func:`state_shardings` gives every leaf of the train state a ``NamedSharding`` from its path (the
'/'-joined key path, e.g. ``params/camencode/trunk/kernel`` or ``opt_state/0/mu/camencode/trunk/kernel``):

- the first *rule* whose regex matches the path (``re.search``) gives its ``PartitionSpec``, written as a tuple
  of axis names or ``None`` per dimension (``(r'.*/kernel$', (None, 'fsdp'))``); a spec that does not divide
  the leaf's shape is an error naming the path;
- otherwise leaves with at least ``min_size`` elements split their largest dimension divisible by the ``fsdp``
  size over ``fsdp`` (the later dimension on a tie); the others (scalars, small biases, step counters, rng keys)
  are replicated.

The optimiser state mirrors the parameters without further work: optax's moments (``mu``, ``nu``) have the
parameters' shapes and their paths end with the parameters' paths, so the default gives them the same specs, and
so does a rule written on the path's tail (``r'trunk/kernel$'``; a rule anchored at ``^params/`` would not reach
the optimiser's copies). Rules come from the config as ``config.mesh.rules = ((regex, spec), ...)`` with
``config.mesh.min_shard_size``.

**Step.** :func:`place` puts a host (or replicated) pytree onto its shardings; :func:`step_shardings` gives the
``in_shardings`` / ``out_shardings`` of ``state, metrics = step(state, batch, rng)``. jit keeps the parameters
sharded between steps; XLA gathers them where a layer needs them whole and reduce-scatters their gradients.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bevjax.training.optim import param_path

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # the batch's leading axis is split over both: each device has its own examples
MIN_SHARD_SIZE = 2**14  # leaves smaller than this stay replicated (gathering them costs more than it saves)

# A rule: (regex on the '/'-joined key path, spec as a tuple with an axis name, a tuple of names or None per dim).
Rule = tuple[str, Sequence[Any]]


# -- mesh ------------------------------------------------------------------------------------------------------


def mesh_sizes(num_devices: int, data: int = -1, fsdp: int = 1) -> tuple[int, int]:
    """The ``(data, fsdp)`` sizes for ``num_devices``, ``-1`` standing for the devices the other axis leaves.

    Raises:
      ValueError: naming the sizes, when they do not divide or multiply to the device count.
    """
    data, fsdp = int(data), int(fsdp)
    asked = f"mesh data={data}, fsdp={fsdp}"
    if data == -1 and fsdp == -1:
        raise ValueError(f"{asked}: at most one axis may be -1 (the rest of the {num_devices} devices)")
    for name, size in (("data", data), ("fsdp", fsdp)):
        if size == 0 or size < -1:
            raise ValueError(f"{asked}: {name} must be a positive size or -1")
    known = max(data, 1) * max(fsdp, 1)
    if num_devices % known:
        raise ValueError(f"{asked} does not divide the {num_devices} devices")
    if data == -1:
        data = num_devices // known
    elif fsdp == -1:
        fsdp = num_devices // known
    if data * fsdp != num_devices:
        raise ValueError(
            f"{asked} makes {data * fsdp} devices, but there are {num_devices}: make the product {num_devices} "
            "or set one axis to -1"
        )
    return data, fsdp


def make_mesh(num_devices: int | None = None, *, data: int = -1, fsdp: int = 1) -> Mesh:
    """A ``(data, fsdp)`` mesh over the first ``num_devices`` devices (default: all).

    Args:
      num_devices: how many devices (default all of them, over all processes).
      data: the ``data`` axis size, ``-1`` for the devices ``fsdp`` leaves.
      fsdp: the ``fsdp`` axis size (parameters are split over it), ``-1`` for the devices ``data`` leaves.
    """
    n = num_devices or jax.device_count()
    sizes = mesh_sizes(n, data, fsdp)
    # Auto axis types: shardings propagate through the step as XLA decides (no explicit-sharding typing).
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(sizes, MESH_AXES, devices=jax.devices()[:n], axis_types=auto)


def mesh_from_config(mesh_config=None, num_devices: int | None = None) -> Mesh:
    """The mesh of ``config.mesh`` (fields ``data``, ``fsdp``; absent: ``data=-1, fsdp=1``)."""
    cfg = mesh_config if mesh_config is not None else {}
    return make_mesh(num_devices, data=cfg.get("data", -1), fsdp=cfg.get("fsdp", 1))


def _batch_axes(mesh) -> tuple[str, ...]:
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_devices(mesh) -> int:
    """How many ways the batch is split: the product of the mesh's batch axes."""
    return math.prod(mesh.shape[a] for a in _batch_axes(mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split over ``data`` and ``fsdp``; the other axes whole."""
    return NamedSharding(mesh, P(_batch_axes(mesh)))


data_sharding = batch_sharding  # the name of the data-parallel-only days


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
    """Raises a clear error when the batch does not split evenly over the batch axes and the processes."""
    n = batch_devices(mesh)
    sizes = ", ".join(f"{a}={mesh.shape[a]}" for a in _batch_axes(mesh))
    if global_batch % n or global_batch % jax.process_count():
        raise ValueError(
            f"batch_size={global_batch} must be divisible by the {n} devices of the mesh ({sizes}) and the "
            f"{jax.process_count()} processes"
        )


def shard_batch(local_batch, mesh: Mesh):
    """Global arrays from this process's slice of the batch (leading axis), split over ``data`` and ``fsdp``.

    Every leaf has the batch as its leading axis (``[b, ...]``, or ``[b, t, ...]`` for windows); the other axes
    stay whole on each device.
    """
    sharding = batch_sharding(mesh)
    local = batch_devices(mesh) // jax.process_count()  # the devices this process feeds

    def one(path, x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % local:
            raise ValueError(
                f"batch leaf '{param_path(path)}' of shape {x.shape}: its leading (batch) axis must split over "
                f"this process's {local} devices"
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree_util.tree_map_with_path(one, local_batch)


def replicate(tree, mesh: Mesh):
    """Places a pytree on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


# -- state shardings -------------------------------------------------------------------------------------------


def _as_spec(spec) -> P:
    if isinstance(spec, P):
        return spec
    if spec is None or isinstance(spec, str):
        raise ValueError(f"a rule's spec is a tuple with one entry per dimension, not {spec!r}")
    return P(*(tuple(s) if isinstance(s, list) else s for s in spec))


def parse_rules(rules: Sequence[Rule] | None) -> list[tuple[re.Pattern, P]]:
    """``((regex, spec), ...)`` (from code or a config: specs as tuples or lists) as compiled patterns and specs.

    Parsed rules pass through unchanged, so the functions below take either form."""
    parsed = []
    for rule in rules or ():
        if len(rule) != 2:
            raise ValueError(f"a sharding rule is (regex, spec), got {rule!r}")
        pattern, spec = rule
        parsed.append((re.compile(pattern), _as_spec(spec)))
    return parsed


def _spec_axes(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _check_spec(path: str, shape: tuple[int, ...], spec: P, sizes: Mapping[str, int], pattern: str) -> None:
    where = f"sharding rule {pattern!r} gives '{path}' of shape {shape} the spec {spec}"
    if len(spec) > len(shape):
        raise ValueError(f"{where}: more entries than the leaf has dimensions")
    for dim, entry in zip(shape[: len(spec)], spec, strict=True):
        axes = _spec_axes(entry)
        unknown = [a for a in axes if a not in sizes]
        if unknown:
            raise ValueError(f"{where}: the mesh has no axis {unknown[0]!r} (axes {tuple(sizes)})")
        ways = math.prod(sizes[a] for a in axes)
        if dim % ways:
            mesh = ", ".join(f"{a}={sizes[a]}" for a in axes)
            raise ValueError(f"{where}: dimension {dim} does not divide over {mesh}")


def default_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int = MIN_SHARD_SIZE) -> P:
    """``fsdp`` on the largest dimension it divides (the later one on a tie) for leaves of ``min_size``
    elements or more; replicated otherwise (and always when ``fsdp_size`` is 1)."""
    if fsdp_size <= 1 or math.prod(shape) < min_size:
        return P()
    fits = [(d, i) for i, d in enumerate(shape) if d % fsdp_size == 0]
    if not fits:
        return P()
    _, axis = max(fits)
    return P(*(("fsdp" if i == axis else None) for i in range(axis + 1)))


def leaf_spec(path: str, shape: tuple[int, ...], mesh, rules=(), min_size: int = MIN_SHARD_SIZE) -> P:
    """The ``PartitionSpec`` of one leaf: the first matching rule's, else :func:`default_spec`.

    Args:
      path: the '/'-joined key path.
      shape: the leaf's shape.
      mesh: a ``Mesh`` or ``AbstractMesh`` (only its axis sizes are read).
      rules: as :func:`parse_rules` returns them, or ``((regex, spec), ...)``.
      min_size: the smallest leaf the default splits.
    """
    sizes = dict(mesh.shape)
    for pattern, spec in parse_rules(rules):
        if pattern.search(path):
            _check_spec(path, shape, spec, sizes, pattern.pattern)
            return spec
    return default_spec(shape, sizes.get("fsdp", 1), min_size)


def _rules_and_min_size(rules, min_size):
    """``(rules, min_size)`` from explicit arguments or from a mesh config (``rules``, ``min_shard_size``)."""
    if rules is not None and hasattr(rules, "get") and not isinstance(rules, (tuple, list)):
        cfg = rules
        rules = cfg.get("rules", ())
        if min_size is None:
            min_size = cfg.get("min_shard_size", MIN_SHARD_SIZE)
    return parse_rules(rules), MIN_SHARD_SIZE if min_size is None else int(min_size)


def partition_specs(tree, mesh, rules=None, min_size: int | None = None):
    """The ``PartitionSpec`` of every leaf of ``tree`` (see the module docstring).

    Args:
      tree: a pytree of arrays or ``jax.ShapeDtypeStruct`` (e.g. ``jax.eval_shape`` of the state's set-up).
      mesh: a ``Mesh`` or an ``AbstractMesh`` (specs need no devices).
      rules: ``((regex, spec), ...)``, or a mesh config whose ``rules`` and ``min_shard_size`` are used.
      min_size: the smallest leaf the default splits (default ``min_shard_size`` of the config, else 2**14).

    Returns:
      A pytree of ``PartitionSpec`` with the structure of ``tree``.
    """
    parsed, min_size = _rules_and_min_size(rules, min_size)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: leaf_spec(param_path(path), tuple(np.shape(x)), mesh, parsed, min_size), tree
    )


def state_shardings(state, mesh: Mesh, rules=None, min_size: int | None = None):
    """A ``NamedSharding`` for every leaf of the (abstract) train state: parameters and their optimiser state
    split over ``fsdp`` by rules and size, the rest replicated.

    Args:
      state: the train state (arrays or ``jax.ShapeDtypeStruct``); static fields stay as they are.
      mesh: the device mesh.
      rules: ``((regex, spec), ...)``, or the mesh config (``config.mesh``: its ``rules``, ``min_shard_size``).
      min_size: the smallest leaf the default splits (overrides the config's).

    Returns:
      A pytree of ``NamedSharding`` with the structure of ``state``, for ``jax.jit``, :func:`place` and Orbax.
    """
    specs = partition_specs(state, mesh, rules, min_size)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, P))


def place(tree, shardings):
    """``tree`` (host arrays or arrays on other devices) moved onto ``shardings`` (a matching pytree)."""
    return jax.device_put(tree, shardings)


def abstract(tree, shardings):
    """``jax.ShapeDtypeStruct`` leaves carrying ``shardings``: a restore target or an AOT-compile argument."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)


def step_shardings(shardings, mesh: Mesh):
    """``(in_shardings, out_shardings)`` for ``state, metrics = step(state, batch, rng)``: the state keeps its
    shardings, the batch is split over the batch axes, the rng and the metrics are replicated."""
    repl = replicated(mesh)
    return (shardings, batch_sharding(mesh), repl), (shardings, repl)


def describe(shardings) -> str:
    """One line per sharded leaf (``path: spec``): what a run's log says about its parameter split."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(
        shardings, is_leaf=lambda s: isinstance(s, NamedSharding)
    )
    return "\n".join(f"{param_path(p)}: {s.spec}" for p, s in leaves if any(e is not None for e in s.spec))
