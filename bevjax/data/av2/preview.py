"""A PNG picture of an Argoverse 2 sweep pair: BEV labels under the LiDAR, and the points with flow arrows."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from bevjax.geometry.grid import BEVGrid
from bevjax.geometry.transforms import invert_rigid, transform_points
from bevjax.schema import SEMANTIC_CLASS_ID
from bevjax.viz import SEMANTIC_PALETTE, colorize_bev, labelled, points_to_display, save_png, scatter_points

POINT_COLOUR = (150, 150, 150)
NEXT_SWEEP_COLOUR = (0, 170, 110)


def pair_preview(example: dict, grid: BEVGrid, scale: int = 2) -> np.ndarray:
    """[H, 2 W, 3] uint8. Left: the BEV labels (dimmed outside the cameras) with the first sweep as grey dots.
    Right: the second sweep moved into the first's ego frame (green), the first sweep on top (grey, objects
    in their class colour) and the object motion (ego motion removed) as white arrows five times as long."""
    valid = example["lidar_valid"]
    pts = example["lidar_points"][valid].astype(np.float64)
    left = np.ascontiguousarray(np.repeat(np.repeat(colorize_bev(example["bev_labels"], example["bev_visibility"]),
                                                    scale, 0), scale, 1))  # fmt: skip
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
        draw.line([(int(a), int(b)), (int(c), int(d))], fill=(255, 255, 255), width=1)
    right = np.asarray(pil)
    return np.concatenate(
        [labelled(left, "BEV labels, sweep t0"), labelled(right, "t0 (objects coloured), t1 green, flow x5")], 1
    )


def save_pair_preview(example: dict, grid: BEVGrid, path, scale: int = 2) -> str:
    """Writes :func:`pair_preview` as a PNG and returns the path."""
    return save_png(pair_preview(example, grid, scale), str(path))
