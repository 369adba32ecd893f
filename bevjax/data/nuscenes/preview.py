"""A PNG picture of a loaded nuScenes sample: BEV labels with the LiDAR sweep drawn over them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bevjax.geometry.grid import BEVGrid
from bevjax.viz import bev_legend, colorize_bev, layout, save_png, scatter_points

LIDAR_COLOUR = (235, 235, 235)
TITLE = "BEV labels (dimmed where no camera sees) with the LiDAR sweep (light dots)"


def bev_preview(example: dict, grid: BEVGrid, scale: int = 2) -> np.ndarray:
    """[H, W, 3] uint8 top view (ego x up, y left) of ``bev_labels`` (``viz.BEV_PALETTE``; dimmed where no camera
    sees) with the valid LiDAR points as light dots, ``scale`` pixels per cell; no title or legend."""
    rgb = np.ascontiguousarray(
        layout.upscale(colorize_bev(example["bev_labels"], example["bev_visibility"]), scale)
    )
    return scatter_points(rgb, example["lidar_points"][example["lidar_valid"]], grid, scale, LIDAR_COLOUR)


def bev_legend_entries() -> list[tuple[str, tuple[int, int, int]]]:
    """The legend of :func:`bev_preview`: the BEV classes and the LiDAR points."""
    return bev_legend() + [("LiDAR point", LIDAR_COLOUR)]


def save_bev_preview(example: dict, grid: BEVGrid, path, scale: int = 2) -> Path:
    """Writes ``bev_preview`` as a PNG at ``path`` and returns the path."""
    return Path(save_png(bev_preview(example, grid, scale), str(path)))
