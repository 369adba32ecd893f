"""Prepared Argoverse 2 sweep pairs as a random-access source (``len(source)``, ``source[i]`` -> schema dict)."""

from __future__ import annotations

from bevjax.data import sources
from bevjax.data.av2 import builder as ab


def open_av2_split(data_dir, config: str | ab.AV2BuilderConfig, split: str) -> sources.PreparedSplitSource:
    """Opens a prepared ``train`` / ``val`` split of sweep pairs.

    Args:
      data_dir: the TFDS data dir.
      config: a predefined name, a prepared custom name, or the :class:`~bevjax.data.av2.builder.AV2BuilderConfig`.
      split: ``train`` or ``val``.

    Returns:
      The source; records carry ``sequence_id`` (the log's index in its split) and ``frame_index`` (the first
      sweep's index in its log).

    Raises:
      DatasetNotPreparedError: not prepared (with the command); SplitNotFoundError (with the available splits);
        SchemaMismatchError / ConfigMismatchError: the prepared data differs from the config.
    """
    data_dir = str(data_dir)
    cfg = ab.BevjaxAV2.resolve_config(data_dir, config)
    builder = ab.BevjaxAV2(data_dir=data_dir, config=cfg)
    hint = ab.prepare_command(data_dir, cfg)
    sources.check_prepared(builder, split, cfg.stored(), cfg, ab.METADATA_KEY, hint)
    return sources.PreparedSplitSource(builder, split, cfg.spec())
