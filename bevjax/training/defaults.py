"""The config sections every task's config has for the engine: ``train``, ``mesh`` and ``init_from``."""

from __future__ import annotations

import ml_collections


def add_engine_sections(c: ml_collections.ConfigDict, **train) -> ml_collections.ConfigDict:
    """Adds ``c.train`` (defaults overridden by ``train``), ``c.mesh`` and ``c.init_from`` to a config; returns it.

    - ``train``: ``batch_size``, ``steps``, ``log_every``, ``checkpoint_every``, ``eval_every`` (0: only at the
      end), ``keep_checkpoints``, ``accumulate`` (micro-batches per step: ``batch_size / accumulate`` at a time)
      and ``nan_at_step`` (> 0: that step's parameters and loss become NaN, to test the non-finite stop).
    - ``mesh``: a (``data``, ``fsdp``) device mesh, -1 = the remaining devices; parameters are split over fsdp
      by ``rules`` ((regex on state paths, spec), ...) or, from ``min_shard_size`` elements, by size.
    - ``init_from``: an earlier run's ``workdir``, its ``step`` (-1: the newest readable) and ``mapping``
      ((source path prefix, target path prefix), ...) over the saved state (``params/...``,
      ``model_state/batch_stats/...``); an empty workdir starts from the initialisation.
    """
    fields = dict(
        batch_size=4,
        steps=400,
        log_every=25,
        checkpoint_every=100,
        eval_every=0,
        keep_checkpoints=2,
        accumulate=1,
        nan_at_step=0,
    )
    unknown = sorted(set(train) - set(fields))
    if unknown:
        raise ValueError(f"unknown train fields {unknown}; fields are {sorted(fields)}")
    c.train = ml_collections.ConfigDict({**fields, **train})
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, rules=(), min_shard_size=2**14))
    c.init_from = ml_collections.ConfigDict(
        dict(workdir="", step=-1, mapping=(("params", "params"), ("model_state", "model_state")))
    )
    return c
