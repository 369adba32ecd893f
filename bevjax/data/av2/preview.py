"""A PNG picture of an Argoverse 2 sweep pair: BEV labels under the LiDAR, and the points with flow arrows."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from bevjax.geometry.grid import BEVGrid
from bevjax.geometry.transforms import invert_rigid, transform_points
from bevjax.schema import SEMANTIC_CLASS_ID
from bevjax.viz import SEMANTIC_PALETTE, colorize_bev, labelled, save_png

POINT_COLOUR = (150, 150, 150)
NEXT_SWEEP_COLOUR = (0, 170, 110)


def _pixels(points: np.ndarray, grid: BEVGrid, scale: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Display (row, col) of ego points (forward up, left to the left) and which fall inside the picture."""
    nx, ny, _ = grid.shape
    i = np.floor((points[:, 0] - grid.xbound[0]) / grid.xbound[2] * scale).astype(np.int64)
    j = np.floor((points[:, 1] - grid.ybound[0]) / grid.ybound[2] * scale).astype(np.int64)
    ok = (i >= 0) & (i < nx * scale) & (j >= 0) & (j < ny * scale)
    return nx * scale - 1 - i, ny * scale - 1 - j, ok


def _dots(image: np.ndarray, points: np.ndarray, grid: BEVGrid, scale: int, colours) -> None:
    rows, cols, ok = _pixels(points, grid, scale)
    image[rows[ok], cols[ok]] = np.broadcast_to(np.asarray(colours, np.uint8), points.shape[:1] + (3,))[ok]


def pair_preview(example: dict, grid: BEVGrid, scale: int = 2) -> np.ndarray:
    """[H, 2 W, 3] uint8. Left: the BEV labels (dimmed outside the cameras) with the first sweep as grey dots.
    Right: the second sweep moved into the first's ego frame (green), the first sweep on top (grey, objects
    in their class colour) and the object motion (ego motion removed) as white arrows five times as long."""
    valid = example["lidar_valid"]
    pts = example["lidar_points"][valid].astype(np.float64)
    left = np.ascontiguousarray(np.repeat(np.repeat(colorize_bev(example["bev_labels"], example["bev_visibility"]),
                                                    scale, 0), scale, 1))  # fmt: skip
    _dots(left, pts, grid, scale, POINT_COLOUR)

    nx, ny, _ = grid.shape
    right = np.full((nx * scale, ny * scale, 3), 20, np.uint8)
    back = invert_rigid(example["next_ego_from_ego"].astype(np.float64))
    nxt = transform_points(back, example["next_lidar_points"][example["next_lidar_valid"]].astype(np.float64))
    _dots(right, nxt, grid, scale, NEXT_SWEEP_COLOUR)
    cls = example["lidar_class"][valid]
    colours = np.where((cls == SEMANTIC_CLASS_ID["background"])[:, None], POINT_COLOUR, SEMANTIC_PALETTE[cls])
    _dots(right, pts, grid, scale, colours)

    nxt_from = example["next_ego_from_ego"].astype(np.float64)
    flow = example["lidar_flow"][valid].astype(np.float64)
    motion = pts + flow - transform_points(nxt_from, pts)  # zero for static points
    moving = np.flatnonzero(np.linalg.norm(motion[:, :2], axis=-1) > 0.05)[::4]
    pil = Image.fromarray(right)
    draw = ImageDraw.Draw(pil)
    r0, c0, _ = _pixels(pts[moving], grid, scale)
    r1, c1, _ = _pixels(pts[moving] + 5.0 * motion[moving], grid, scale)
    for a, b, c, d in zip(c0, r0, c1, r1, strict=True):
        draw.line([(int(a), int(b)), (int(c), int(d))], fill=(255, 255, 255), width=1)
    right = np.asarray(pil)
    return np.concatenate(
        [labelled(left, "BEV labels, sweep t0"), labelled(right, "t0 (objects coloured), t1 green, flow x5")], 1
    )


def save_pair_preview(example: dict, grid: BEVGrid, path, scale: int = 2) -> str:
    """Writes :func:`pair_preview` as a PNG and returns the path."""
    return save_png(pair_preview(example, grid, scale), str(path))
