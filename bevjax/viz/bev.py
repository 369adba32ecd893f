"""BEV and camera pictures (NumPy + PIL); their layout (titles, legends, sizes) is :mod:`bevjax.viz.layout`.

BEV pictures put the ego's forward direction (+x) up and its left (+y) to the left, so grid cell (i, j) is
drawn at row ``nx - 1 - i`` and column ``ny - 1 - j``.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from bevjax.geometry.grid import BEVGrid
from bevjax.schema import BEV_CLASSES, SEMANTIC_CLASS_ID, SEMANTIC_CLASSES
from bevjax.viz import layout
from bevjax.viz.layout import upscale

# Drawn in this order, later classes on top.
BEV_PALETTE = {
    "drivable_area": (110, 110, 115),
    "carpark_area": (70, 90, 160),
    "walkway": (210, 170, 120),
    "ped_crossing": (250, 220, 40),
    "stop_line": (230, 40, 40),
    "divider": (250, 250, 250),
    "vehicle": (40, 120, 250),
    "pedestrian": (250, 90, 200),
}
SEMANTIC_PALETTE = np.array(
    [
        (0, 0, 0),  # background
        (110, 110, 115),  # road
        (210, 170, 120),  # sidewalk
        (70, 90, 160),  # parking
        (90, 140, 60),  # terrain
        (40, 120, 250),  # vehicle
        (250, 90, 200),  # pedestrian
        (180, 80, 60),  # building
        (30, 190, 60),  # vegetation
        (250, 220, 40),  # pole
    ],
    np.uint8,
)
assert len(SEMANTIC_PALETTE) == len(SEMANTIC_CLASSES) and set(BEV_PALETTE) == set(BEV_CLASSES)
EGO_COLOUR = (255, 60, 60)
DIM = 0.45  # BEV cells no camera sees are drawn at this brightness


def _to_display(grid_image: np.ndarray) -> np.ndarray:
    return grid_image[::-1, ::-1]  # x forward up, y left to the left


def colorize_bev(labels: np.ndarray, visibility: np.ndarray | None = None) -> np.ndarray:
    """RGB [x, y, 3] uint8 picture of multi-label BEV maps [x, y, k] (``BEV_CLASSES`` order)."""
    out = np.full(labels.shape[:2] + (3,), 30, np.uint8)
    for name, colour in BEV_PALETTE.items():
        out[labels[..., BEV_CLASSES.index(name)] > 0] = colour
    if visibility is not None:
        out = np.where(visibility[..., None] > 0, out, (out * DIM).astype(np.uint8))
    return _to_display(out)


def colorize_semantic(labels: np.ndarray) -> np.ndarray:
    """RGB [..., 3] of semantic class ids (``SEMANTIC_CLASSES``)."""
    return SEMANTIC_PALETTE[np.clip(labels, 0, len(SEMANTIC_PALETTE) - 1)]


def lidar_bev(
    points,
    valid,
    classes,
    grid: BEVGrid,
    scale: int = 2,
    flow=None,
    next_from_this=None,
    flow_stride: int = 4,
    dot: int = 1,
) -> np.ndarray:
    """Bird's-eye view [x*scale, y*scale, 3] of LiDAR points coloured by class (``dot`` x ``dot`` pixels each),
    with optional flow arrows.

    Arrows show the motion of the points themselves (ego motion removed with ``next_from_this`` [4, 4] when
    given), five times longer than the motion, for every ``flow_stride``-th moving point.
    """
    nx, ny, _ = grid.shape
    img = np.zeros((nx * scale, ny * scale, 3), np.uint8)
    cell = grid.resolution[:2] / scale
    p = points[valid]
    i = np.floor((p[:, 0] - grid.xbound[0]) / cell[0]).astype(int)
    j = np.floor((p[:, 1] - grid.ybound[0]) / cell[1]).astype(int)
    ok = (i >= 0) & (i < nx * scale) & (j >= 0) & (j < ny * scale)
    colours = colorize_semantic(classes[valid][ok])
    for di in range(dot):
        for dj in range(dot):
            img[np.minimum(i[ok] + di, nx * scale - 1), np.minimum(j[ok] + dj, ny * scale - 1)] = colours
    img = np.ascontiguousarray(_to_display(img))
    if flow is not None:
        pil = Image.fromarray(img)
        draw = ImageDraw.Draw(pil)
        motion = flow
        if next_from_this is not None:  # the flow of a static point is the ego motion: remove it
            motion = points + flow - (points @ next_from_this[:3, :3].T + next_from_this[:3, 3])
        moving = np.flatnonzero(valid & (np.linalg.norm(motion[:, :2], axis=1) > 0.05))[::flow_stride]
        for k in moving:
            a, b = points[k, :2], points[k, :2] + motion[k, :2] * 5.0
            pa = [((grid.ybound[1] - v[1]) / cell[1], (grid.xbound[1] - v[0]) / cell[0]) for v in (a, b)]
            draw.line(pa, fill=(255, 255, 255), width=max(1, dot // 2))
        img = np.asarray(pil)
    return img


def points_to_display(points: np.ndarray, grid: BEVGrid, scale: int = 1):
    """Display (row, col) pixels of ego-frame points [p, >=2] on a BEV picture ``scale`` pixels per cell, and a
    [p] mask of those inside it."""
    nx, ny, _ = grid.shape
    i = np.floor((points[:, 0] - grid.xbound[0]) / grid.xbound[2] * scale).astype(np.int64)
    j = np.floor((points[:, 1] - grid.ybound[0]) / grid.ybound[2] * scale).astype(np.int64)
    ok = (i >= 0) & (i < nx * scale) & (j >= 0) & (j < ny * scale)
    return nx * scale - 1 - i, ny * scale - 1 - j, ok


def scatter_points(image: np.ndarray, points: np.ndarray, grid: BEVGrid, scale: int, colours) -> np.ndarray:
    """Draws ego-frame points [p, >=2] in place on a displayed BEV picture, one colour or one per point."""
    rows, cols, ok = points_to_display(np.asarray(points), grid, scale)
    colours = np.broadcast_to(np.asarray(colours, np.uint8), (len(points), 3))
    image[rows[ok], cols[ok]] = colours[ok]
    return image


def bev_legend(classes=BEV_CLASSES) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, colour) of the BEV ``classes`` in drawing order (``BEV_PALETTE``), for :func:`layout.legend`."""
    return [(name, colour) for name, colour in BEV_PALETTE.items() if name in classes]


def semantic_legend(classes=SEMANTIC_CLASSES) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, colour) of the semantic ``classes`` (``SEMANTIC_PALETTE``), for :func:`layout.legend`."""
    return [(name, tuple(int(c) for c in SEMANTIC_PALETTE[SEMANTIC_CLASS_ID[name]])) for name in classes]


def _ego_marker(image: np.ndarray, grid: BEVGrid, scale: int = 1) -> np.ndarray:
    """Draws the ego footprint (4.1 x 1.85 m, rear axle at the origin) on a displayed BEV picture ``scale``
    pixels per cell."""
    pil = Image.fromarray(np.ascontiguousarray(image))
    res = grid.resolution
    col = lambda y: (grid.ybound[1] - y) / res[1] * scale  # noqa: E731
    row = lambda x: (grid.xbound[1] - x) / res[0] * scale  # noqa: E731
    width = max(1, scale // 3)
    ImageDraw.Draw(pil).rectangle(
        [col(0.92), row(3.3), col(-0.92), row(-0.8)], outline=EGO_COLOUR, width=width
    )
    return np.asarray(pil)


def labelled(image: np.ndarray, text: str) -> np.ndarray:
    """The picture with ``text`` in a band above it, wrapped to the picture's width (never clipped)."""
    return layout.titled(image, text)


def bev_scale(cells: tuple[int, int], width: int = 0) -> int:
    """Integer pixels per cell for a BEV panel of ``cells`` (rows, columns): at least ``layout.MIN_BEV`` pixels
    on its shorter side and at least ``width`` pixels wide."""
    return max(layout.scale_factor(min(cells), layout.MIN_BEV), layout.scale_factor(cells[1], width))


def bev_panel_width(canvas: int, panels: int) -> int:
    """The width each of ``panels`` BEV panels side by side gets on a ``canvas`` pixels wide."""
    return max(layout.MIN_BEV, (canvas - layout.GAP * (panels - 1)) // panels)


def camera_mosaic(
    images: np.ndarray, pv_labels: np.ndarray | None = None, names=None, cols: int = 3, sizes: bool = True
) -> np.ndarray:
    """Cameras [n, h, w, 3] in rows of ``cols`` at a readable width (:func:`layout.readable_camera`: small
    images enlarged by nearest neighbour, large ones shrunk), each with its name (and, with ``sizes``, its size
    and scaling) in a band above and its perspective labels (nearest neighbour) below it when given."""
    n = images.shape[0]
    names = list(names) if names is not None and len(names) == n else [f"cam {k}" for k in range(n)]
    tiles, titles = [], []
    for k in range(n):
        tile, how = layout.readable_camera(np.asarray(images[k]))
        if pv_labels is not None:
            labels = colorize_semantic(np.asarray(pv_labels[k]))
            labels = layout.resize_width(labels, tile.shape[1], smooth=False)
            tile = np.concatenate([tile, labels], 0)
        h, w = images.shape[1:3]
        text = f"{names[k]} ({w}x{h}{', shown ' + how if how else ''})" if sizes else names[k]
        tiles.append(tile)
        titles.append(text)
    return layout.grid_of(tiles, cols, titles=titles)


def stack_rows(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Two pictures one above the other, the narrower padded with black on the right."""
    width = max(top.shape[1], bottom.shape[1])
    pad = lambda a: np.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0)))  # noqa: E731
    return np.concatenate([pad(top), pad(bottom)], 0)


def fit_height(image: np.ndarray, height: int) -> np.ndarray:
    """Nearest-neighbour resize to ``height`` rows keeping the aspect ratio."""
    w = max(1, round(image.shape[1] * height / image.shape[0]))
    return np.asarray(Image.fromarray(image).resize((w, height), Image.NEAREST))


def preview_image(example: dict, grid: BEVGrid, camera_names=None, title: str = "") -> np.ndarray:
    """One picture of a sample: cameras (with their perspective labels), BEV labels and LiDAR BEV, with
    legends of both palettes."""
    cams = camera_mosaic(example["images"], example.get("pv_labels"), camera_names)
    canvas = max(layout.MIN_WIDTH - 2 * layout.MARGIN, cams.shape[1])
    lidar = "lidar_points" in example
    nx, ny, _ = grid.shape
    k = bev_scale((nx, ny), bev_panel_width(canvas, 2))
    bev = upscale(colorize_bev(example["bev_labels"], example.get("bev_visibility")), k)
    panels = [_ego_marker(bev, grid, k)]
    titles = ["BEV labels (dimmed where no camera sees; red box: ego car)"]
    if lidar:
        cloud = lidar_bev(
            example["lidar_points"], example["lidar_valid"], example["lidar_class"], grid, scale=k,
            flow=example.get("lidar_flow"), next_from_this=example.get("next_ego_from_ego"), dot=max(1, k // 2),
        )  # fmt: skip
        panels.append(cloud)
        titles.append("LiDAR from above, points by class (white: object motion x5)")
    legends = [("BEV classes:", bev_legend() + [("ego car", EGO_COLOUR)])]
    legends.append(("Camera labels" + (" and LiDAR points:" if lidar else ":"), semantic_legend()))
    return layout.figure([cams, layout.titled_row(panels, titles)], title, legends)


def prediction_picture(
    images: np.ndarray,
    prediction: np.ndarray,
    truth: np.ndarray,
    classes=BEV_CLASSES,
    visibility: np.ndarray | None = None,
    camera_names=None,
    source_images: np.ndarray | None = None,
    prediction_title: str = "prediction",
    title: str = "",
) -> np.ndarray:
    """Cameras above the predicted and true BEV maps (multi-label [x, y, k], ``BEV_CLASSES`` order) with a
    legend of ``classes``. The cameras are ``source_images`` when given (the full-size images the model input
    [n, h, w, 3] ``images`` was made from), else the model input itself, at a readable size either way."""
    shown = images if source_images is None else source_images
    cams = camera_mosaic(np.asarray(shown), names=camera_names)
    h, w = images.shape[1:3]
    what = "model input" if source_images is None else f"camera images (the model saw {w}x{h})"
    canvas = max(layout.MIN_WIDTH - 2 * layout.MARGIN, cams.shape[1])
    k = bev_scale(prediction.shape[:2], bev_panel_width(canvas, 2))
    bev = layout.titled_row(
        [upscale(colorize_bev(prediction), k), upscale(colorize_bev(truth, visibility), k)],
        [prediction_title, "ground truth (dimmed where no camera sees)"],
    )
    text = f"Top: {what}. Below: predicted and true BEV, forward up, ego at the centre."
    caption = layout.text_band(text, max(canvas, bev.shape[1]))
    return layout.figure([cams, caption, bev], title, [("BEV classes:", bev_legend(classes))])


def save_png(image: np.ndarray, path: str) -> str:
    """Writes a uint8 RGB array as PNG (creating the folder) and returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(path)
    return path
