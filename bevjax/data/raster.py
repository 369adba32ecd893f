"""BEV label rasters of real datasets: polygons, polylines and box footprints on a ``BEVGrid``, drawn with PIL.

Cell (i, j) of the grid is pixel (row i, column j) of an ``L`` image of size ``(ny, nx)``. PIL puts pixel centres at
integer coordinates, so an ego-frame point (x, y) is at column ``(y - ymin) / step_y - 0.5`` and row
``(x - xmin) / step_x - 0.5``; a polygon covers the cells whose centres it contains (PIL's fill rule on edges).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from bevjax.geometry.grid import BEVGrid
from bevjax.geometry.transforms import invert_rigid, transform_points


def pixel_coords(xy: np.ndarray, grid: BEVGrid) -> list[tuple[float, float]]:
    """PIL (column, row) coordinates of ego-frame points [m, >=2] on ``grid``'s image."""
    xy = np.asarray(xy, np.float64)
    col = (xy[:, 1] - grid.ybound[0]) / grid.ybound[2] - 0.5
    row = (xy[:, 0] - grid.xbound[0]) / grid.xbound[2] - 0.5
    return list(zip(col.tolist(), row.tolist(), strict=True))


def _canvas(grid: BEVGrid) -> Image.Image:
    nx, ny, _ = grid.shape
    return Image.new("L", (ny, nx), 0)


def fill_polygons(
    polygons: Iterable[np.ndarray],
    grid: BEVGrid,
    holes: Iterable[np.ndarray] = (),
) -> np.ndarray:
    """[x, y] uint8: 1 inside any of ``polygons`` and outside all ``holes`` (each [m, >=2] ego-frame rings)."""
    img = _canvas(grid)
    draw = ImageDraw.Draw(img)
    for ring in polygons:
        if len(ring) >= 3:
            draw.polygon(pixel_coords(ring, grid), fill=1)
    for ring in holes:
        if len(ring) >= 3:
            draw.polygon(pixel_coords(ring, grid), fill=0)
    return np.asarray(img, np.uint8)


def draw_polylines(lines: Iterable[np.ndarray], grid: BEVGrid, width_m: float | None = None) -> np.ndarray:
    """[x, y] uint8: 1 on the cells the polylines (each [m, >=2] ego-frame points) pass through.

    Lines are ``max(1, round(width_m / step))`` cells wide (default: one cell).
    """
    width = 1 if width_m is None else max(1, int(round(width_m / grid.xbound[2])))
    img = _canvas(grid)
    draw = ImageDraw.Draw(img)
    for line in lines:
        if len(line) >= 2:
            draw.line(pixel_coords(line, grid), fill=1, width=width)
    return np.asarray(img, np.uint8)


def box_footprints(ego_from_box: np.ndarray, length_width: np.ndarray) -> np.ndarray:
    """[m, 4, 2] ego-frame (x, y) corners, in ring order, of boxes placed by ``ego_from_box`` [m, 4, 4] with
    ``length_width`` [m, 2] (x along the length)."""
    ego_from_box = np.asarray(ego_from_box, np.float64).reshape(-1, 4, 4)
    half = 0.5 * np.asarray(length_width, np.float64).reshape(-1, 2)
    signs = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]], np.float64)
    local = signs[None] * half[:, None]  # m 4 2
    local = np.concatenate([local, np.zeros(local.shape[:2] + (1,))], -1)
    return transform_points(ego_from_box, local)[..., :2]


def fill_boxes(ego_from_box: np.ndarray, length_width: np.ndarray, grid: BEVGrid) -> np.ndarray:
    """[x, y] uint8 footprints of the boxes (see :func:`box_footprints`) filled on ``grid``."""
    return fill_polygons(list(box_footprints(ego_from_box, length_width)), grid)


def to_ego(points_global: np.ndarray, ego_to_global: np.ndarray) -> np.ndarray:
    """[m, 3] points of a global (city) frame in the ego frame; 2-D input gets z = 0."""
    pts = np.asarray(points_global, np.float64)
    if pts.shape[-1] == 2:
        pts = np.concatenate([pts, np.zeros(pts.shape[:-1] + (1,))], -1)
    return transform_points(invert_rigid(np.asarray(ego_to_global, np.float64)), pts)


def frustum_visibility(
    intrinsics: Sequence[np.ndarray],
    cam_to_ego: Sequence[np.ndarray],
    image_hw: Sequence[tuple[int, int]] | tuple[int, int],
    grid: BEVGrid,
) -> np.ndarray:
    """[x, y] uint8: 1 where the cell centre (z = 0) projects inside some camera's image, in front of it.

    Args:
      intrinsics: [n, 3, 3] pinhole matrices.
      cam_to_ego: [n, 4, 4] camera -> ego.
      image_hw: one (h, w) for all cameras or one per camera.
      grid: the BEV grid.
    """
    centres = grid.cell_centers()
    nx, ny = centres.shape[:2]
    pts = np.concatenate([centres.reshape(-1, 2), np.zeros((nx * ny, 1))], -1).astype(np.float64)
    sizes = np.broadcast_to(np.asarray(image_hw, np.int64).reshape(-1, 2), (len(intrinsics), 2))
    seen = np.zeros(len(pts), bool)
    for k_mat, c2e, (h, w) in zip(intrinsics, cam_to_ego, sizes, strict=True):
        cam = transform_points(invert_rigid(np.asarray(c2e, np.float64)), pts)  # p 3
        z = cam[:, 2]
        uv = cam @ np.asarray(k_mat, np.float64).T
        uv = uv[:, :2] / np.maximum(z[:, None], 1e-6)
        seen |= (
            (z > 0.1) & (uv[:, 0] >= -0.5) & (uv[:, 0] < w - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] < h - 0.5)
        )
    return seen.reshape(nx, ny).astype(np.uint8)
