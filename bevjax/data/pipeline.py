"""Grain input pipelines over random-access sources (e.g. :func:`bevjax.data.sources.open_world_split`).

Order of operations in :func:`make_dataset`::

    source -> [windows of T consecutive frames] -> shuffle(seed) -> [process_index::process_count]
           -> repeat(num_epochs) -> transforms (.map / .random_map) -> to_iter_dataset -> batch
           -> [mp_prefetch(worker_count)]

* Shuffling is global and the same on every process (same seed), and a different permutation each epoch; each
  process then takes every ``process_count``-th element, so within an epoch the processes' shards are disjoint and
  together cover the split.
* Everything before ``to_iter_dataset`` is a ``MapDataset``: element ``k`` of the stream is a pure function of
  ``(seed, k)``, so random transforms are reproducible and iterators are checkpointable
  (``get_state`` / ``set_state``), with or without worker processes.
* With ``window=T > 1`` an element is ``T`` consecutive frames of one sequence, arrays stacked on a new leading
  axis (``[T, ...]``; batches are ``[B, T, ...]``), and the windows (not the frames) are shuffled and sharded.
  Windows add ``sequence_start`` [T] bool: True for the first frame of its sequence (``frame_index == 0``), where
  temporal models reset their state; within a window no frame before ``t = 0`` is present either way.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np


class WindowSource:
    """Windows of ``window`` consecutive frames of one sequence of a frame source (random access, picklable).

    Records ``[s * F, (s + 1) * F)`` of ``source`` form sequence ``s`` (``F = frames_per_sequence``). Window ``w``
    is sequence ``w // per_seq``, starting at frame ``(w % per_seq) * stride`` with
    ``per_seq = (F - window) // stride + 1``. A window holds the source's keys stacked ``[T, ...]`` and
    ``sequence_start`` [T] bool, True at the sequence's first frame.
    """

    def __init__(self, source: Sequence[Mapping], window: int, frames_per_sequence: int, stride: int = 1):
        """Args: the frame source, the window length T, the frames per sequence F and the start stride."""
        n, f = len(source), int(frames_per_sequence)
        if window < 1 or stride < 1:
            raise ValueError(f"window ({window}) and window_stride ({stride}) must be >= 1")
        if window > f:
            raise ValueError(f"window={window} is longer than a sequence ({f} frames)")
        if n % f:
            raise ValueError(f"source of {n} records is not a whole number of {f}-frame sequences")
        self.source, self.window, self.frames_per_sequence, self.stride = source, int(window), f, int(stride)
        self.per_sequence = (f - self.window) // self.stride + 1
        self.num_sequences = n // f

    def __len__(self) -> int:
        return self.num_sequences * self.per_sequence

    def start(self, w: int) -> int:
        """The source index of the first frame of window ``w``."""
        seq, k = divmod(int(w), self.per_sequence)
        return seq * self.frames_per_sequence + k * self.stride

    def __getitem__(self, w: int) -> dict:
        if not 0 <= w < len(self):
            raise IndexError(f"window {w} out of range ({len(self)} windows)")
        s = self.start(w)
        frames = [self.source[s + t] for t in range(self.window)]
        out = {k: np.stack([np.asarray(f[k]) for f in frames]) for k in frames[0]}
        offset = s % self.frames_per_sequence  # the window's first frame within its sequence
        out["sequence_start"] = offset + np.arange(self.window) == 0  # t
        return out

    def __repr__(self) -> str:
        return f"WindowSource({self.source!r}, window={self.window}, stride={self.stride})"


def _is_random(transform: Any) -> bool:
    return isinstance(transform, grain.transforms.RandomMap) or (
        not isinstance(transform, grain.transforms.Map) and hasattr(transform, "random_map")
    )


def _derived_seed(*parts: int) -> int:
    return zlib.crc32(np.asarray(parts, np.int64).tobytes())


def _ensure_absl_flags_parsed() -> None:
    # Grain's worker processes read absl flags; outside absl.app.run (pytest, notebooks) they are unparsed and
    # reading them raises UnparsedFlagAccessError. Keep the defaults.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def map_dataset(
    source: Sequence[Mapping],
    *,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    transforms: Sequence[Any] = (),
    window: int = 1,
    window_stride: int = 1,
    frames_per_sequence: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.MapDataset:
    """The random-access part of :func:`make_dataset` (its arguments): windows, shuffle, this process's shard,
    repeat, transforms; before ``to_iter_dataset`` and batching. :mod:`bevjax.data.mixing` zips such streams."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, process_count={process_count})")
    if window > 1 or window_stride != 1:
        frames = frames_per_sequence or getattr(source, "frames_per_sequence", None)
        if frames is None:
            raise ValueError(
                "window > 1 needs frames_per_sequence (or a source with a frames_per_sequence attribute)"
            )
        source = WindowSource(source, window, frames, window_stride)

    ds = grain.MapDataset.source(source).seed(seed)
    if shuffle:
        ds = ds.shuffle()
    if process_count > 1:
        ds = ds[process_index::process_count]
    if len(ds) == 0:
        raise ValueError(f"process {process_index} of {process_count} gets no element of {source!r}")
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)
    if window > 1:  # the same augmentation for every frame of a window
        from bevjax.data.transforms import PerFrame

        transforms = [t if isinstance(t, PerFrame) else PerFrame(t) for t in transforms]
    for i, t in enumerate(transforms):
        if _is_random(t):
            fn = t if isinstance(t, grain.transforms.RandomMap) else t.random_map
            ds = ds.random_map(fn, seed=_derived_seed(seed, process_index, i))
        else:
            ds = ds.map(t)
    return ds


def make_dataset(
    source: Sequence[Mapping],
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    transforms: Sequence[Any] = (),
    window: int = 1,
    window_stride: int = 1,
    frames_per_sequence: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    drop_remainder: bool = True,
    worker_count: int = 0,
    worker_buffer_size: int = 2,
    read_threads: int = 4,
    prefetch_buffer_size: int = 16,
) -> grain.IterDataset:
    """A batched Grain dataset over ``source`` for this process.

    Args:
      source: random-access source of schema dicts (``len``, ``__getitem__``), e.g. ``open_world_split(...)``.
      batch_size: examples (or windows) per batch on this process.
      seed: shuffle and transform seed (use the same on every process).
      shuffle: shuffle globally, differently each epoch.
      num_epochs: passes over the data; None repeats forever.
      transforms: applied in order to every example (window): ``grain.transforms.RandomMap`` instances (or
        objects with a ``random_map(element, rng)`` method) through ``.random_map``, anything else (a
        ``grain.transforms.Map`` or a one-argument callable) through ``.map``. Must be picklable when
        ``worker_count > 0``. With ``window > 1`` each is wrapped in
        :class:`bevjax.data.transforms.PerFrame`: every frame of a window gets the same random draws.
      window: T > 1 yields windows of T consecutive frames of one sequence stacked on a new leading axis.
      window_stride: frames between the starts of consecutive windows of a sequence.
      frames_per_sequence: frames per sequence of ``source`` (default: ``source.frames_per_sequence``); only
        needed when ``window > 1``.
      process_index, process_count: this process's shard (default ``jax.process_index()`` /
        ``jax.process_count()``).
      drop_remainder: drop the last incomplete batch (of the whole stream when ``num_epochs`` is finite).
      worker_count: Grain worker processes (``mp_prefetch``); 0 reads in this process (with threads).
      worker_buffer_size: batches each worker buffers.
      read_threads, prefetch_buffer_size: threads and element buffer of ``to_iter_dataset``'s prefetch.

    Returns:
      A ``grain.IterDataset`` of batches: dicts whose arrays have a leading batch axis (then ``T`` for windows).
    """
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    ds = map_dataset(
        source,
        seed=seed,
        shuffle=shuffle,
        num_epochs=num_epochs,
        transforms=transforms,
        window=window,
        window_stride=window_stride,
        frames_per_sequence=frames_per_sequence,
        process_index=process_index,
        process_count=process_count,
    )
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_buffer_size)
    )
    it = it.batch(batch_size, drop_remainder=drop_remainder)
    if worker_count > 0:
        _ensure_absl_flags_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=worker_buffer_size)
        )
    return it


def make_iterator(dataset: grain.IterDataset, state: Mapping | None = None) -> grain.DatasetIterator:
    """A checkpointable iterator over ``dataset``, optionally restored to a saved state.

    Args:
      dataset: e.g. from :func:`make_dataset`.
      state: a value returned by ``iterator.get_state()`` of an iterator over the same pipeline (same source,
        arguments and worker count); None starts at the beginning.

    Returns:
      A ``grain.DatasetIterator``: ``next(it)``, ``it.get_state()``, ``it.set_state(state)``.
    """
    iterator = iter(dataset)
    if state is not None:
        iterator.set_state(state)
    return iterator
