"""Offline passes: a jitted model and/or a host function over every example of a split, written as a TFDS split.

Pseudo-labelling (SemanticFlow's clusters and rigid fits per sweep pair), NRSeg's per-frame PGCM scores and the
sampling of data generation all run the same loop, :func:`run_offline_pass`::

    source[i] -> example_fn -> batches (last one padded) -> fn(variables, batch) on the mesh -> gathered
              -> host_fn(source[i], outputs of i) -> chunks of chunk_size examples (.npz, atomic)
              -> bevjax_derived/<pass>_<hash> (one split named like the source split, records in its order)

- **Resumable.** Chunk ``k`` (examples ``[k * chunk_size, (k + 1) * chunk_size)``) is written to a temporary
  file and renamed, so a chunk file is whole or absent; a pass stopped anywhere and started again skips the
  finished chunks and gives bit-identical records. The work folder is
  ``<data_dir>/bevjax_derived.work/<pass>_<hash>/`` (chunks and ``pass.json``); it is removed once the split is
  written unless ``keep_chunks=True``.
- **Once.** When the derived split is prepared, a second run only says where it is and opens it.
- **Multi-process.** The batch size is global: each process reads and prepares its ``batch_size //
  jax.process_count()`` examples of every batch (as :func:`bevjax.training.evaluation.eval_batches` does),
  ``shard_batch`` assembles the global batch, and the outputs are gathered on every process
  (``process_allgather``); ``host_fn`` runs on each process's own examples. Only process 0 writes; all processes
  must see the same data dir (as for training).

Reading the outputs back next to the source's examples::

    scores = run_offline_pass(source, "pgcm_scores", {"pgcm": ((), np.float32)}, fn=score_fn, variables=v, ...)
    train = ZipSource(source, scores)          # source[i] plus {"pgcm": ...}; a Grain source as any other
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from bevjax.data import derived
from bevjax.data.base_builder import default_data_dir
from bevjax.data.datasets import open_derived_split
from bevjax.training.sharding import batch_sharding, check_batch_size, make_mesh, replicated, shard_batch

DEFAULT_CHUNK_EXAMPLES = 256  # examples per chunk, rounded up to a multiple of the batch size
WORK_SUFFIX = ".work"  # the chunks live in <data_dir>/bevjax_derived.work/<config name>/

DeviceFn = Callable[[Any, dict], Mapping[str, jax.Array]]
HostFn = Callable[[dict, dict], Mapping[str, Any]]


def source_identity_of(source) -> dict[str, str]:
    """``{dataset, config, split}`` of a prepared split source (or a subset of one, e.g. a nuScenes domain view).

    Args:
      source: a :class:`~bevjax.data.sources.PreparedSplitSource` (its ``data_path`` is
        ``<data_dir>/<dataset>/<config>/<version>``) or a source with ``base`` and ``split`` over one.

    Returns:
      The identity, as :func:`bevjax.data.derived.source_identity`.

    Raises:
      ValueError: the source does not say where it comes from (pass ``source_id=`` to the pass).
    """
    split = getattr(source, "split", None)
    holder = source
    while not hasattr(holder, "data_path") and hasattr(holder, "base"):
        holder = holder.base
    data_path = getattr(holder, "data_path", None)
    if data_path is None or not split:
        raise ValueError(
            f"cannot tell which dataset, config and split {source!r} is: pass "
            "source_id=derived.source_identity(dataset, config, split)"
        )
    path = epath.Path(data_path)
    return derived.source_identity(path.parent.parent.name, path.parent.name, split)


def pass_config(
    source,
    name: str,
    spec: Mapping[str, tuple],
    *,
    source_id: Mapping[str, str] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> derived.DerivedBuilderConfig:
    """The ``bevjax_derived`` config of pass ``name`` over ``source`` (what :func:`run_offline_pass` writes).

    Args:
      source: the source split (its length is part of the config).
      name: the pass name.
      spec: ``{key: (shape, dtype)}`` of one example's outputs.
      source_id: ``{dataset, config, split}``; default :func:`source_identity_of` the source.
      settings: JSON-able settings that change the outputs (checkpoint, thresholds, ...).

    Returns:
      The config, named ``<name>_<hash>``; open the finished pass with
      ``bevjax.data.datasets.open_derived_split(data_dir, config)``.
    """
    ident = dict(source_id) if source_id is not None else source_identity_of(source)
    return derived.make_config(name, spec, ident, len(source), settings)


def work_dir(data_dir: str | epath.PathLike, config: derived.DerivedBuilderConfig) -> epath.Path:
    """The folder of a pass's chunks: ``<data_dir>/bevjax_derived.work/<config name>``."""
    return epath.Path(data_dir) / (derived.DATASET_NAME + WORK_SUFFIX) / config.name


def _stack(examples: list[dict]) -> dict:
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


def _check_outputs(values: Mapping[str, Any], spec, n: int, what: str) -> dict[str, np.ndarray]:
    """``{key: [n, ...]}`` of ``spec``'s keys in ``values``, cast to the spec's dtypes (same kind only)."""
    out = {}
    for key, (shape, dtype) in spec.items():
        if key not in values:
            raise ValueError(f"{what} gives no '{key}' of the pass's spec (it gives {sorted(values)})")
        value = np.asarray(values[key])
        if value.shape != (n, *shape):
            raise ValueError(
                f"{what}: '{key}' has shape {value.shape[1:]} per example, the spec says {shape}"
            )
        if value.dtype != dtype and not np.can_cast(value.dtype, dtype, "same_kind"):
            raise ValueError(f"{what}: '{key}' has dtype {value.dtype}, the spec says {dtype}")
        out[key] = value.astype(dtype, copy=False)
    return out


def _write_chunk(path: epath.Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes ``arrays`` to ``path`` as ``.npz`` through a temporary file and a rename: whole or absent."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
    tmp.replace(path)


class _Runner:
    """One pass's batches: the compiled device function (compiled once), the gathering and the host function."""

    def __init__(
        self, source, spec, fn, variables, example_fn, host_fn, mesh, batch_size, variables_sharding
    ):
        self.source, self.spec, self.fn, self.host_fn = source, spec, fn, host_fn
        self.example_fn = example_fn or (lambda ex: ex)
        self.batch_size, self.mesh = batch_size, mesh
        local = batch_size // jax.process_count()
        self.mine = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
        self.compiled = None
        if fn is not None:
            self.var_sharding = replicated(mesh) if variables_sharding is None else variables_sharding
            self.variables = jax.device_put({} if variables is None else variables, self.var_sharding)

    def _device(self, raws: list[dict]) -> dict[str, np.ndarray]:
        """The device function's outputs ``{key: [batch_size, ...]}`` of the global batch, on every process."""
        batch = shard_batch(_stack([self.example_fn(r) for r in raws]), self.mesh)
        if self.compiled is None:
            # Every batch has the same shapes (the last is padded): one compilation for the whole pass.
            jitted = jax.jit(self.fn, in_shardings=(self.var_sharding, batch_sharding(self.mesh)))
            self.compiled = jitted.lower(self.variables, batch).compile()
        outputs = self.compiled(self.variables, batch)
        return {
            k: np.asarray(v) for k, v in multihost_utils.process_allgather(dict(outputs), tiled=True).items()
        }

    def batch(self, indices: list[int]) -> dict[str, np.ndarray]:
        """Outputs ``{key: [len(indices), ...]}`` of the spec for source indices (at most one batch)."""
        m = len(indices)
        padded = indices + [indices[-1]] * (self.batch_size - m)  # the padded rows are dropped below
        raws = [self.source[i] for i in padded[self.mine]]
        device = self._device(raws) if self.fn is not None else {}
        if self.host_fn is None:
            return {k: v[:m] for k, v in _check_outputs(device, self.spec, self.batch_size, "fn").items()}
        local_device = {k: v[self.mine] for k, v in device.items()}
        rows = []
        for j, raw in enumerate(raws):
            outputs = {k: v[j] for k, v in local_device.items()}
            rows.append({**outputs, **self.host_fn(raw, outputs)})
        stacked = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in self.spec if k in rows[0]}
        local = _check_outputs(stacked, self.spec, len(raws), "fn / host_fn")
        gathered = multihost_utils.process_allgather(local, tiled=True)
        return {k: np.asarray(v)[:m] for k, v in gathered.items()}


def run_offline_pass(
    source,
    name: str,
    spec: Mapping[str, tuple],
    *,
    fn: DeviceFn | None = None,
    variables: Any = None,
    example_fn: Callable[[dict], dict] | None = None,
    host_fn: HostFn | None = None,
    data_dir: str | epath.PathLike | None = None,
    source_id: Mapping[str, str] | None = None,
    settings: Mapping[str, Any] | None = None,
    mesh=None,
    variables_sharding=None,
    batch_size: int = 8,
    chunk_size: int | None = None,
    keep_chunks: bool = False,
    max_chunks: int | None = None,
    progress: bool = True,
):
    """Runs a pass over every example of ``source`` and writes its outputs as a ``bevjax_derived`` split.

    Each example's outputs are the spec's keys taken from ``host_fn``'s result, else from ``fn``'s; other keys
    of either are dropped. Values are cast to the spec's dtypes when of the same kind (float64 -> float32),
    and a missing key or another shape is an error naming it.

    Args:
      source: random access to schema examples (``len``, ``source[i]`` -> dict of arrays), e.g. a split of
        ``bevjax.data.datasets.open_splits``.
      name: the pass name (lowercase, digits, underscores), e.g. ``pgcm_scores``.
      spec: ``{key: (shape, dtype)}`` of one example's outputs.
      fn: ``fn(variables, batch) -> {key: [b, ...]}``, jitted over ``mesh``; None for a host-only pass.
      variables: ``fn``'s first argument (model variables), placed on ``variables_sharding``.
      example_fn: ``source[i] -> the inputs of fn`` for one example (e.g. a task's ``eval_example``);
        default the example itself.
      host_fn: ``host_fn(source[i], outputs of fn for i) -> {key: array}``, NumPy work that is not jittable
        (clustering, fits); None for a device-only pass.
      data_dir: the TFDS data dir (default :func:`~bevjax.data.base_builder.default_data_dir`).
      source_id: ``{dataset, config, split}`` of the source (:func:`bevjax.data.derived.source_identity`);
        default read from a prepared split source. It is recorded in the metadata, names the derived split
        and enters the config's name.
      settings: JSON-able settings that change the outputs (checkpoint path and step, thresholds); part of the
        config's name, so that another model or threshold writes elsewhere.
      mesh: the device mesh (default all devices, batch split over them).
      variables_sharding: sharding of ``variables`` (a sharding or a matching pytree); default replicated.
      batch_size: the global batch size, divisible by the processes and, with ``fn``, the mesh's batch devices.
      chunk_size: examples per chunk file, a multiple of ``batch_size`` (default the multiple next to 256).
      keep_chunks: keep the work folder of chunks after the split is written (default: removed).
      max_chunks: stop after computing this many chunks (the rest is computed by the next run).
      progress: a progress bar (on process 0; plain lines in a log, :mod:`bevjax.progress`) over the examples,
        with ETA, starting at the finished count.

    Returns:
      The derived split (:class:`~bevjax.data.sources.PreparedSplitSource`: record ``i`` holds the outputs of
      ``source[i]``), or None when ``max_chunks`` stopped the pass before its end.

    Raises:
      ValueError: neither ``fn`` nor ``host_fn``, an empty source, sizes that do not divide, a work folder
        written with another chunk size, outputs that do not match ``spec``.
    """
    if fn is None and host_fn is None:
        raise ValueError(f"offline pass '{name}': give fn (on the devices), host_fn (on the host) or both")
    n = len(source)
    if n == 0:
        raise ValueError(f"offline pass '{name}': the source {source!r} is empty")
    spec = derived.normalize_spec(spec)
    data_dir = str(data_dir or default_data_dir())
    cfg = pass_config(source, name, spec, source_id=source_id, settings=settings)
    builder = derived.BevjaxDerived(data_dir=data_dir, config=cfg)
    is_main = jax.process_index() == 0
    if builder.is_prepared():
        if is_main:
            print(
                f"{name}: already done: {n} records in {builder.data_path} (split '{cfg.split}')", flush=True
            )
        return open_derived_split(data_dir, cfg)

    mesh = make_mesh() if mesh is None else mesh
    if batch_size < 1:
        raise ValueError(f"offline pass '{name}': batch_size={batch_size} must be positive")
    if fn is not None:
        check_batch_size(batch_size, mesh)
    elif batch_size % jax.process_count():
        raise ValueError(f"batch_size={batch_size} must divide over the {jax.process_count()} processes")
    if chunk_size is None:
        chunk_size = batch_size * math.ceil(DEFAULT_CHUNK_EXAMPLES / batch_size)
    if chunk_size < 1 or chunk_size % batch_size:
        raise ValueError(
            f"offline pass '{name}': chunk_size={chunk_size} must be a multiple of batch_size={batch_size}"
        )

    chunks_dir = work_dir(data_dir, cfg)
    num_chunks = math.ceil(n / chunk_size)
    if is_main:
        _open_work_dir(chunks_dir, cfg, chunk_size)
    # Process 0 decides what is finished, so that every process computes the same chunks.
    done = np.zeros(num_chunks, bool)
    if is_main:
        done[:] = [derived.chunk_path(chunks_dir, k).exists() for k in range(num_chunks)]
    done = np.asarray(multihost_utils.broadcast_one_to_all(done), bool)
    finished = sum(min(chunk_size, n - k * chunk_size) for k in range(num_chunks) if done[k])

    runner = _Runner(source, spec, fn, variables, example_fn, host_fn, mesh, batch_size, variables_sharding)
    bar = None
    if progress and is_main:
        from bevjax.progress import progress_bar

        bar = progress_bar(f"{name} {cfg.split}", "example", total=n, initial=finished)
    computed = 0
    try:
        for k in range(num_chunks):
            if done[k]:
                continue
            if max_chunks is not None and computed >= max_chunks:
                break
            start, stop = k * chunk_size, min((k + 1) * chunk_size, n)
            parts = []
            for b in range(start, stop, batch_size):
                parts.append(runner.batch(list(range(b, min(b + batch_size, stop)))))
                if bar is not None:
                    bar.update(len(range(b, min(b + batch_size, stop))))
            if is_main:
                _write_chunk(
                    derived.chunk_path(chunks_dir, k),
                    {key: np.concatenate([p[key] for p in parts]) for key in spec},
                )
            done[k] = True
            computed += 1
    finally:
        if bar is not None:
            bar.close()
    if not done.all():
        if is_main:
            print(
                f"{name}: stopped with {int(done.sum())} of {num_chunks} chunks in {chunks_dir}; run again to resume",
                flush=True,
            )
        return None

    if is_main:
        builder.prepare(progress=progress, chunks_dir=str(chunks_dir), chunk_size=chunk_size)
        if not keep_chunks:
            chunks_dir.rmtree()
        print(f"{name}: wrote {n} records to {builder.data_path} (split '{cfg.split}')", flush=True)
    multihost_utils.sync_global_devices(f"offline pass {cfg.name} written")
    return open_derived_split(data_dir, cfg)


def _open_work_dir(chunks_dir: epath.Path, cfg: derived.DerivedBuilderConfig, chunk_size: int) -> None:
    """Creates the work folder (or checks the one of an earlier run) and removes half-written chunk files."""
    chunks_dir.mkdir(parents=True, exist_ok=True)
    info_path = chunks_dir / "pass.json"
    if info_path.exists():
        earlier = json.loads(info_path.read_text())
        if earlier.get("chunk_size") != chunk_size:
            raise ValueError(
                f"the chunks in {chunks_dir} were written with chunk_size={earlier.get('chunk_size')}: pass that "
                "chunk_size to resume, or delete the folder to start again"
            )
    else:
        info_path.write_text(
            json.dumps({"config": cfg.to_json(), "chunk_size": chunk_size}, indent=2, default=str)
        )
    for tmp in chunks_dir.glob("*.tmp"):
        tmp.unlink()  # a chunk whose writing was cut: computed again
