"""A PNG picture of an Argoverse 2 sweep pair: BEV labels under the LiDAR, and the points with flow arrows."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from bevjax.geometry.grid import BEVGrid
from bevjax.geometry.transforms import invert_rigid, transform_points
from bevjax.schema import SEMANTIC_CLASS_ID, SEMANTIC_CLASSES
from bevjax.viz import (
    MIN_WIDTH,
    SEMANTIC_PALETTE,
    bev_legend,
    bev_panel_width,
    bev_scale,
    colorize_bev,
    layout,
    points_to_display,
    save_png,
    scatter_points,
    semantic_legend,
)

POINT_COLOUR = (150, 150, 150)
NEXT_SWEEP_COLOUR = (0, 170, 110)
FLOW_COLOUR = (255, 255, 255)
TITLES = (
    "BEV labels (dimmed where no camera sees), sweep t0 as grey dots",
    "sweep t0 (grey, objects by class), t1 (green) in t0's frame, object motion x5 (white)",
)


def pair_panels(example: dict, grid: BEVGrid, scale: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Two [H, W, 3] uint8 top views, ``scale`` pixels per cell. Left: the BEV labels (dimmed outside the
    cameras) with the first sweep as grey dots. Right: the second sweep moved into the first's ego frame
    (green), the first sweep on top (grey, objects in their class colour) and the object motion (ego motion
    removed) as white arrows five times as long."""
    valid = example["lidar_valid"]
    pts = example["lidar_points"][valid].astype(np.float64)
    left = np.ascontiguousarray(
        layout.upscale(colorize_bev(example["bev_labels"], example["bev_visibility"]), scale)
    )
    scatter_points(left, pts, grid, scale, POINT_COLOUR)

    nx, ny, _ = grid.shape
    right = np.full((nx * scale, ny * scale, 3), 20, np.uint8)
    back = invert_rigid(example["next_ego_from_ego"].astype(np.float64))
    nxt = transform_points(back, example["next_lidar_points"][example["next_lidar_valid"]].astype(np.float64))
    scatter_points(right, nxt, grid, scale, NEXT_SWEEP_COLOUR)
    cls = example["lidar_class"][valid]
    colours = np.where((cls == SEMANTIC_CLASS_ID["background"])[:, None], POINT_COLOUR, SEMANTIC_PALETTE[cls])
    scatter_points(right, pts, grid, scale, colours)

    nxt_from = example["next_ego_from_ego"].astype(np.float64)
    flow = example["lidar_flow"][valid].astype(np.float64)
    motion = pts + flow - transform_points(nxt_from, pts)  # zero for static points
    moving = np.flatnonzero(np.linalg.norm(motion[:, :2], axis=-1) > 0.05)[::4]
    pil = Image.fromarray(right)
    draw = ImageDraw.Draw(pil)
    r0, c0, _ = points_to_display(pts[moving], grid, scale)
    r1, c1, _ = points_to_display(pts[moving] + 5.0 * motion[moving], grid, scale)
    for a, b, c, d in zip(c0, r0, c1, r1, strict=True):
        draw.line([(int(a), int(b)), (int(c), int(d))], fill=FLOW_COLOUR, width=max(1, scale // 2))
    return left, np.asarray(pil)


def pair_preview(example: dict, grid: BEVGrid, scale: int = 2) -> np.ndarray:
    """[H, 2 W, 3] uint8: the two panels of :func:`pair_panels` side by side, without titles or legend (those
    are :func:`pair_picture`'s)."""
    return np.concatenate(pair_panels(example, grid, scale), 1)


def pair_picture(example: dict, grid: BEVGrid, title: str = "", scale: int | None = None) -> np.ndarray:
    """The picture of a sweep pair: the panels of :func:`pair_panels` (at least ``viz.MIN_BEV`` pixels each,
    ``scale`` pixels per cell when given) under their titles, with a legend of the BEV classes and the points."""
    if scale is None:
        scale = bev_scale(grid.shape[:2], bev_panel_width(MIN_WIDTH - 2 * layout.MARGIN, 2))
    panels = layout.titled_row(pair_panels(example, grid, scale), TITLES)
    points = [("sweep t0", POINT_COLOUR), ("sweep t1", NEXT_SWEEP_COLOUR), ("object motion x5", FLOW_COLOUR)]
    objects = semantic_legend([c for c in SEMANTIC_CLASSES if c != "background"])
    legends = [("BEV classes:", bev_legend()), ("LiDAR points (objects by class):", points + objects)]
    return layout.figure([panels], title, legends)


def save_pair_preview(example: dict, grid: BEVGrid, path, scale: int | None = None, title: str = "") -> str:
    """Writes :func:`pair_picture` as a PNG and returns the path."""
    return save_png(pair_picture(example, grid, title, scale), str(path))
