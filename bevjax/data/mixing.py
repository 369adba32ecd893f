"""Several Grain streams in one checkpointable dataset: batches of a main stream with the batches of other streams
(e.g. an unlabelled target domain) nested under their names.

:func:`map_stream` builds one stream as :func:`bevjax.data.pipeline.make_dataset` does up to its
``MapDataset`` (windows, shuffle with the stream's seed, process shard, repeat forever, transforms);
:func:`zip_streams` batches every stream on its own (``MapDataset.batch``), zips the batched streams by index and
nests them::

    batch = {**main_batch, name: other_batch, ...}

:class:`ConcatStreams` (a ``post`` of :func:`zip_streams`) instead appends a nested stream's examples to the main
batch (e.g. labelled synthetic windows after the real ones: one labelled batch of ``b_real + b_synthetic``).

Everything before ``to_iter_dataset`` is a ``MapDataset``, so batch ``k`` is a pure function of the seeds and
``k``: one iterator state (``get_state`` / ``set_state``) covers all the streams and a resumed run draws the same
batches. With the main stream's seed the main batches are those of ``make_dataset`` with the same arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from grain.experimental import ZipMapDataset

from bevjax.data.pipeline import _derived_seed, _ensure_absl_flags_parsed, map_dataset


def stream_seed(seed: int, name: str) -> int:
    """A stream's seed derived from the run's seed and the stream's name (independent shuffles)."""
    return _derived_seed(seed, *name.encode())


def map_stream(
    source: Sequence[Mapping],
    *,
    seed: int,
    transforms: Sequence[Any] = (),
    window: int = 1,
    frames_per_sequence: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    shuffle: bool = True,
) -> grain.MapDataset:
    """One stream, repeated forever, as :func:`make_dataset` builds it before ``to_iter_dataset``."""
    return map_dataset(
        source,
        seed=seed,
        shuffle=shuffle,
        num_epochs=None,
        transforms=transforms,
        window=window,
        frames_per_sequence=frames_per_sequence,
        process_index=process_index,
        process_count=process_count,
    )


class _Nest:
    """``(main, *others)`` -> ``{**main, name: other, ...}`` (picklable)."""

    def __init__(self, names: Sequence[str]):
        self.names = tuple(names)

    def __call__(self, batches) -> dict:
        main, *others = batches
        clash = [n for n in self.names if n in main]
        if clash:
            raise ValueError(f"stream names {clash} are keys of the main stream's batch")
        return {**main, **dict(zip(self.names, others, strict=True))}


class ConcatStreams:
    """``{**main, name: other}`` -> ``main`` with ``other``'s examples appended along the batch axis, for each
    name in ``names`` (picklable; a ``post`` of :func:`zip_streams`)."""

    def __init__(self, names: Sequence[str]):
        self.names = tuple(names)

    def __call__(self, batch: dict) -> dict:
        batch = dict(batch)
        for name in self.names:
            other = batch.pop(name)
            main_keys = {k for k, v in batch.items() if not isinstance(v, Mapping)}  # not the nested streams
            if set(other) != main_keys:
                raise ValueError(
                    f"stream '{name}' has keys {sorted(other)}, the main stream {sorted(main_keys)}: give both the "
                    "same keys to append one to the other"
                )
            batch.update({k: np.concatenate([batch[k], other[k]], 0) for k in other})
        return batch


def zip_streams(
    main: grain.MapDataset,
    main_batch_size: int,
    others: Mapping[str, tuple[grain.MapDataset, int]],
    *,
    post: Callable[[dict], dict] | None = None,
    worker_count: int = 0,
    worker_buffer_size: int = 2,
    read_threads: int = 4,
    prefetch_buffer_size: int = 16,
) -> grain.IterDataset:
    """Batches of ``main`` with the batches of every ``others[name] = (stream, batch_size)`` under ``name``."""
    batched = [main.batch(main_batch_size, drop_remainder=True)]
    batched += [ds.batch(bs, drop_remainder=True) for ds, bs in others.values()]
    n = min(len(b) for b in batched)
    ds = ZipMapDataset([b[:n] for b in batched]).map(_Nest(list(others)))
    if post is not None:
        ds = ds.map(post)
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_buffer_size)
    )
    if worker_count > 0:
        _ensure_absl_flags_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=worker_buffer_size)
        )
    return it
