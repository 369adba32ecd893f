"""The training data of a config: ``config.data.dataset`` names it, :func:`open_splits` opens its splits.

- ``world``: the embedded driving world (:mod:`bevjax.data.world_data`), rendered on first use.
- ``nuscenes``: a prepared ``bevjax_nuscenes`` config matching the task's grid and ``config.data.world.cameras``
  (which also picks the nuScenes channels), prepared on first use from ``config.data.nuscenes.dataroot``.
  Splits: ``train``, ``val``, ``mini_train``, ``mini_val`` and the domain views such as ``night_val``.
"""

from __future__ import annotations

import ml_collections

from bevjax.data import world_data
from bevjax.data.prepare import default_data_dir
from bevjax.data.sources import DatasetNotPreparedError
from bevjax.geometry.grid import BEVGrid

DATASETS = ("world", "nuscenes")


def nuscenes_config(cfg: ml_collections.ConfigDict, grid: BEVGrid):
    """The ``NuScenesBuilderConfig`` of ``config.data`` (``nuscenes.config`` with the run's grid and cameras)."""
    from bevjax.data.nuscenes import builder as nb

    n = cfg.nuscenes
    image_hw = tuple(n.image_hw)
    return nb.make_config(
        n.config,
        grid=grid,
        image_hw=None if image_hw == nb.NUSCENES_IMAGE_HW else image_hw,  # the stored size: the files' bytes
        num_points=int(n.num_points),
        num_sweeps=int(n.num_sweeps),
        cameras=tuple(cfg.world.cameras),
    )


def _open_nuscenes(cfg: ml_collections.ConfigDict, grid: BEVGrid, splits, progress: bool) -> dict:
    from bevjax.data.nuscenes.builder import open_nuscenes_split
    from bevjax.data.prepare import prepare_nuscenes

    data_dir = cfg.data_dir or default_data_dir()
    bcfg = nuscenes_config(cfg, grid)
    try:
        return {s: open_nuscenes_split(data_dir, bcfg, s) for s in splits}
    except DatasetNotPreparedError:
        if not cfg.nuscenes.dataroot:
            raise DatasetNotPreparedError(
                f"bevjax_nuscenes/{bcfg.name} is not prepared in {data_dir}: set "
                "--config.data.nuscenes.dataroot=/path/to/nuscenes to prepare it on first use"
            ) from None
        print(f"preparing nuScenes dataset {bcfg.name} in {data_dir} (first use)", flush=True)
        prepare_nuscenes(cfg.nuscenes.dataroot, data_dir, bcfg, workers=cfg.nuscenes.workers, progress=progress)
        return {s: open_nuscenes_split(data_dir, bcfg, s) for s in splits}


def open_splits(cfg: ml_collections.ConfigDict, grid: BEVGrid, splits, progress: bool = True) -> dict:
    """``{split: source}`` of ``config.data`` (``cfg``) for the task's grid, prepared on first use."""
    if cfg.dataset == "world":
        return world_data.open_splits(cfg, grid, splits, progress)
    if cfg.dataset == "nuscenes":
        return _open_nuscenes(cfg, grid, splits, progress)
    raise ValueError(f"config.data.dataset='{cfg.dataset}': choose from {DATASETS}")
