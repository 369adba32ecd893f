"""BEV label rasters of real datasets: polygons, polylines and box footprints on a ``BEVGrid``, drawn with PIL.

Cell (i, j) of the grid is pixel (row i, column j) of an ``L`` image of size ``(ny, nx)``. PIL puts pixel centres at
integer coordinates, so an ego-frame point (x, y) is at column ``(y - ymin) / step_y - 0.5`` and row
``(x - xmin) / step_x - 0.5``. PIL truncates vertex coordinates to whole pixels and fills a polygon's outline
too, so polygons are drawn on an image ``SUPERSAMPLE`` times finer, with rounded vertices, and read back at the
cell centres: a cell is set when its centre lies in the polygon, up to about a third of a cell at the edges.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from bevjax.geometry.grid import BEVGrid
from bevjax.geometry.transforms import invert_rigid, transform_points

SUPERSAMPLE = 3
Polygon = np.ndarray | tuple[np.ndarray, Sequence[np.ndarray]]  # a ring [m, >=2], or (exterior, holes)


def pixel_coords(xy: np.ndarray, grid: BEVGrid, scale: int = 1) -> list[tuple[int, int]]:
    """PIL (column, row) pixels, rounded, of ego-frame points [m, >=2] on an image of ``scale`` pixels per cell."""
    xy = np.asarray(xy, np.float64)
    col = scale * (xy[:, 1] - grid.ybound[0]) / grid.ybound[2] - 0.5
    row = scale * (xy[:, 0] - grid.xbound[0]) / grid.xbound[2] - 0.5
    rounded = np.floor(np.stack([col, row]) + 0.5).astype(np.int64)
    return list(zip(*rounded.tolist(), strict=True))


def fill_polygons(polygons: Iterable[Polygon], grid: BEVGrid) -> np.ndarray:
    """[x, y] uint8: 1 where the cell centre lies inside any of ``polygons``.

    Each polygon is an ego-frame ring [m, >=2] or ``(exterior ring, [hole rings])``; a hole only cuts its own
    polygon, never another one that overlaps it.
    """
    nx, ny, _ = grid.shape
    s = SUPERSAMPLE
    canvas = Image.new("L", (ny * s, nx * s), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        exterior, holes = polygon if isinstance(polygon, tuple) else (polygon, ())
        if len(exterior) < 3:
            continue
        ring = pixel_coords(exterior, grid, s)
        if not holes:
            draw.polygon(ring, fill=1)
            continue
        cols, rows = zip(*ring, strict=True)
        c0, r0 = max(min(cols), 0), max(min(rows), 0)
        c1, r1 = min(max(cols), ny * s - 1), min(max(rows), nx * s - 1)
        if c0 > c1 or r0 > r1:
            continue
        patch = Image.new("L", (c1 - c0 + 1, r1 - r0 + 1), 0)  # the holes are cut here, then pasted
        pdraw = ImageDraw.Draw(patch)
        pdraw.polygon([(c - c0, r - r0) for c, r in ring], fill=255)
        for hole in holes:
            if len(hole) >= 3:
                pdraw.polygon([(c - c0, r - r0) for c, r in pixel_coords(hole, grid, s)], fill=0)
        canvas.paste(1, (c0, r0, c1 + 1, r1 + 1), patch)
    return np.ascontiguousarray(np.asarray(canvas)[s // 2 :: s, s // 2 :: s], np.uint8)


def draw_polylines(lines: Iterable[np.ndarray], grid: BEVGrid, width_m: float | None = None) -> np.ndarray:
    """[x, y] uint8: 1 on the cells the polylines (each [m, >=2] ego-frame points) pass through.

    Lines are ``max(1, round(width_m / step))`` cells wide, ``step`` the smaller grid step (default: one cell,
    the thinnest line that stays connected).
    """
    step = min(grid.xbound[2], grid.ybound[2])
    width = 1 if width_m is None else max(1, int(round(width_m / step)))
    nx, ny, _ = grid.shape
    img = Image.new("L", (ny, nx), 0)
    draw = ImageDraw.Draw(img)
    for line in lines:
        if len(line) >= 2:
            draw.line(pixel_coords(line, grid), fill=1, width=width, joint="curve" if width > 2 else None)
    return np.asarray(img, np.uint8).copy()


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
    """[m, 3] points of a global (city) frame in the ego frame; 2-D input gets z = 0.

    Pass map heights where the map has them: a pitched ego frame 70 m above the city origin moves a
    z = 0 point by about a metre per degree of pitch.
    """
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
