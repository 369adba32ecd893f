"""A PNG picture of a loaded nuScenes sample: BEV labels with the LiDAR sweep drawn over them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bevjax.geometry.grid import BEVGrid
from bevjax.schema import BEV_CLASS_ID

COLOURS = {
    "drivable_area": (70, 70, 90),
    "vehicle": (40, 120, 255),
    "pedestrian": (255, 120, 40),
}
LIDAR_COLOUR = (230, 230, 230)


def bev_preview(example: dict, grid: BEVGrid, scale: int = 2) -> np.ndarray:
    """[H, W, 3] uint8 top view (ego x up, y left) of ``bev_labels`` with valid LiDAR points as dots."""
    labels = example["bev_labels"]  # x y k
    rgb = np.zeros(labels.shape[:2] + (3,), np.uint8)
    for name, colour in COLOURS.items():
        rgb[labels[..., BEV_CLASS_ID[name]] > 0] = colour
    rgb[example["bev_visibility"] == 0] //= 2
    pts = example["lidar_points"][example["lidar_valid"]]
    ij, inside = grid.cell_index(pts)
    rgb[ij[inside, 0], ij[inside, 1]] = LIDAR_COLOUR
    top_view = rgb[::-1, ::-1]  # rows: x decreasing (forward is up); columns: y decreasing (left is left)
    return np.repeat(np.repeat(top_view, scale, 0), scale, 1)


def save_bev_preview(example: dict, grid: BEVGrid, path, scale: int = 2) -> Path:
    """Writes ``bev_preview`` as a PNG at ``path`` and returns the path."""
    path = Path(path)
    Image.fromarray(bev_preview(example, grid, scale)).save(path)
    return path
