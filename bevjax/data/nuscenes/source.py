"""nuScenes keyframes as random-access sources (``len(source)``, ``source[i]`` -> a dict in the batch schema).

- :func:`open_nuscenes_split`: a split of a prepared ``bevjax_nuscenes`` config (:mod:`bevjax.data.nuscenes.builder`):
  a stored one (``train``, ``val``, ``mini_train``, ...) or a domain view (``night_val``, ...). What training reads.
- :class:`NuScenesSource`: the keyframes of a raw dataroot, loaded on access with no preparing (evaluation of a
  checkpoint on a dataroot, pictures).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bevjax.data import sources
from bevjax.data.nuscenes import builder as nb
from bevjax.data.nuscenes import splits as nusc_splits
from bevjax.data.nuscenes.sample import load_sample
from bevjax.data.nuscenes.tables import NuScenesTables, find_version
from bevjax.geometry.grid import BEVGrid
from bevjax.schema import NUSCENES_CAMERAS

__all__ = ["NuScenesSource", "find_version", "open_nuscenes_split"]


def open_nuscenes_split(data_dir, config: str | nb.NuScenesBuilderConfig, split: str):
    """Opens a prepared split: a stored one (``train``, ``val``, ...) or a domain view (``night_val``, ...).

    Args:
      data_dir: the TFDS data dir.
      config: a predefined name, a prepared custom name, or the :class:`NuScenesBuilderConfig` it was prepared
        with.
      split: a stored split or ``<domain>_<train|val>`` with a domain of ``splits.DOMAINS``.

    Returns:
      A random-access source of schema dicts (``spec`` attribute: the decoded spec); records carry
      ``sequence_id`` (the scene's index in its stored split) and ``frame_index`` (the keyframe's in its scene).

    Raises:
      DatasetNotPreparedError: not prepared (the message gives the command), and the errors of
        :func:`bevjax.data.sources.check_prepared`.
    """
    data_dir = str(data_dir)
    cfg = nb.BevjaxNuScenes.resolve_config(data_dir, config)
    builder = nb.BevjaxNuScenes(data_dir=data_dir, config=cfg)
    domain, _, kind = split.rpartition("_")
    base_split = kind if domain in nusc_splits.DOMAINS and kind in ("train", "val") else split
    hint = nb.prepare_command(data_dir, cfg)
    sources.check_prepared(builder, base_split, cfg.stored(), cfg, nb.METADATA_KEY, hint)
    base = sources.PreparedSplitSource(builder, base_split, cfg.spec())
    if base_split == split:
        return base
    meta = builder.info.metadata
    indices = [
        i
        for name, start, n in meta["scenes"][base_split]
        if domain in meta["scene_domains"][name].values()
        for i in range(start, start + n)
    ]
    return sources.SubsetSource(base, indices, split)


class NuScenesSource(Sequence):
    """Keyframes of a nuScenes dataroot in ``sample.json`` order, loaded on access (``len``, ``source[i]``).

    Images keep their stored size (an ``ImageAug`` transform brings them to the network's); labels are on
    ``grid``; ``cameras`` picks and orders the channels.
    """

    def __init__(
        self,
        dataroot: str | Path,
        grid: BEVGrid,
        version: str | None = None,
        cameras: tuple[str, ...] = NUSCENES_CAMERAS,
    ):
        self.tables = NuScenesTables(dataroot, version or find_version(dataroot))
        self.tokens = list(self.tables.tables["sample"])
        self.grid, self.cameras = grid, tuple(cameras)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict:
        return load_sample(self.tables, self.tokens[i], self.grid, cameras=self.cameras)

    @property
    def name(self) -> str:
        return f"nuscenes/{self.tables.version}"
