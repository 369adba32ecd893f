"""World data for training configs: the builder config a run needs, prepared on first use, and its splits."""

from __future__ import annotations

import ml_collections

from bevjax.data import world_builder as wb
from bevjax.data.prepare import default_data_dir, prepare_world
from bevjax.data.sources import DatasetNotPreparedError, open_world_split
from bevjax.geometry.grid import BEVGrid
from bevjax.world.config import WorldConfig


def world_config(cfg: ml_collections.ConfigDict, grid: BEVGrid) -> WorldConfig:
    """The ``WorldConfig`` of ``config.data.world`` (cameras, image size, sequence length, LiDAR size)."""
    w = cfg.world
    return WorldConfig(
        seed=int(w.get("seed", 0)),
        cameras=tuple(w.cameras),
        image_hw=tuple(w.image_hw),
        grid=grid,
        frames_per_sequence=int(w.frames_per_sequence),
        lidar_beams=int(w.lidar_beams),
        lidar_azimuths=int(w.lidar_azimuths),
    )


def builder_config(cfg: ml_collections.ConfigDict, grid: BEVGrid) -> wb.WorldBuilderConfig:
    return wb.make_builder_config(
        "default",
        world=world_config(cfg, grid),
        domains=tuple(cfg.domains),
        train_sequences=int(cfg.train_sequences),
        val_sequences=int(cfg.val_sequences),
    )


def open_splits(cfg: ml_collections.ConfigDict, grid: BEVGrid, splits, progress: bool = True) -> dict:
    """Opens ``splits`` of the run's world dataset, preparing it first if it is missing (with progress)."""
    data_dir = cfg.data_dir or default_data_dir()
    bcfg = builder_config(cfg, grid)
    for split in splits:
        if split not in bcfg.split_names():
            raise ValueError(
                f"config.data split '{split}' is not in this world dataset: choose from {bcfg.split_names()}"
            )
    try:
        return {s: open_world_split(data_dir, bcfg, s) for s in splits}
    except DatasetNotPreparedError:
        print(f"preparing world dataset {bcfg.name} in {data_dir} (first use)", flush=True)
        prepare_world(data_dir, bcfg, progress=progress)
        return {s: open_world_split(data_dir, bcfg, s) for s in splits}
