"""Scene-flow pictures: a LiDAR sweep pair from above, flow arrows coloured by instance, prediction beside truth.

Both panels show sweep 0's evaluated points (valid, not ground) in its ego frame, forward up (the BEV
convention of :mod:`bevjax.viz.bev`). Arrows are the motion of the points themselves, the ego motion removed,
drawn ``ARROW_SCALE`` times longer than one sweep pair's motion, for every ``stride``-th moving point (at least
``DYNAMIC_THRESHOLD`` m). Left: the prediction (moving points and arrows coloured by predicted instance slot);
right: the truth (object points coloured by instance id, arrows of the true motion). The two panels' colours
are not matched: slot 3 and object 3 need not be the same object.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from bevjax.geometry.grid import BEVGrid
from bevjax.metrics.scene_flow import DYNAMIC_THRESHOLD
from bevjax.ops.pointcloud import residual_flow
from bevjax.viz import layout
from bevjax.viz.bev import points_to_display

ARROW_SCALE = 5.0
STATIC_COLOUR = (150, 150, 150)
CANVAS = (25, 25, 25)
# Twelve distinct colours for instance ids (id modulo 12).
INSTANCE_PALETTE = np.array(
    [
        (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
        (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    ],
    np.uint8,
)  # fmt: skip
DISPLAY = BEVGrid(xbound=(-35.0, 35.0, 0.1), ybound=(-35.0, 35.0, 0.1), zbound=(-3.0, 3.0, 6.0))


def instance_colours(ids) -> np.ndarray:
    """[p, 3] uint8 colour of each integer id (``INSTANCE_PALETTE``, id modulo its length)."""
    return INSTANCE_PALETTE[np.mod(np.asarray(ids, np.int64), len(INSTANCE_PALETTE))]


def flow_panel(points, motion, colours, moving, grid: BEVGrid = DISPLAY, stride: int = 2) -> np.ndarray:
    """One panel [x, y, 3]: ``points`` [p, 3] as dots of ``colours`` [p, 3], arrows of ``motion`` [p, 3] for the
    ``moving`` [p] points (every ``stride``-th), in the point's colour."""
    nx, ny, _ = grid.shape
    image = np.empty((nx, ny, 3), np.uint8)
    image[...] = CANVAS
    rows, cols, ok = points_to_display(np.asarray(points), grid)
    for dr in (0, 1):  # 2 x 2 pixel dots
        for dc in (0, 1):
            image[np.minimum(rows[ok] + dr, nx - 1), np.minimum(cols[ok] + dc, ny - 1)] = colours[ok]
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    tips = np.asarray(points) + ARROW_SCALE * np.asarray(motion)
    trow, tcol, _ = points_to_display(tips, grid)
    for k in np.flatnonzero(moving & ok)[::stride]:
        draw.line([(cols[k], rows[k]), (tcol[k], trow[k])], fill=tuple(int(v) for v in colours[k]), width=1)
    return np.asarray(pil)


def flow_picture(example: dict, predicted_residual, predicted_ids, grid: BEVGrid | None = None,
                 title: str = "") -> np.ndarray:  # fmt: skip
    """Prediction beside truth for one sweep pair (module docstring).

    Args:
      example: a schema sweep pair (``lidar_points``, ``lidar_valid``, ``lidar_ground``, ``lidar_flow``,
        ``lidar_instance``, ``next_ego_from_ego``).
      predicted_residual: [p, 3] the predicted motion beyond the ego motion.
      predicted_ids: [p] int predicted instance slot per point.
      grid: the model's pillar grid, outlined when it is smaller than the display.
      title: a line above the panels.

    Returns:
      [h, w, 3] uint8.
    """
    points = np.asarray(example["lidar_points"], np.float64)
    keep = np.asarray(example["lidar_valid"], bool) & ~np.asarray(example["lidar_ground"], bool)
    t = np.asarray(example["next_ego_from_ego"], np.float64)
    pts = points[keep]
    pred = np.asarray(predicted_residual, np.float64)[keep]
    true = residual_flow(pts, np.asarray(example["lidar_flow"], np.float64)[keep], t)
    instance = np.asarray(example["lidar_instance"])[keep]
    pred_moving = np.linalg.norm(pred, axis=-1) >= DYNAMIC_THRESHOLD
    true_moving = np.linalg.norm(true, axis=-1) >= DYNAMIC_THRESHOLD
    pred_colours = np.where(
        pred_moving[:, None], instance_colours(np.asarray(predicted_ids)[keep]), STATIC_COLOUR
    )
    true_colours = np.where((instance > 0)[:, None], instance_colours(instance), STATIC_COLOUR)
    panels = [flow_panel(pts, pred, pred_colours.astype(np.uint8), pred_moving),
              flow_panel(pts, true, true_colours.astype(np.uint8), true_moving)]  # fmt: skip
    titles = [
        f"prediction: {int(pred_moving.sum())} moving points, coloured by instance slot",
        f"ground truth: {int(true_moving.sum())} moving points, objects coloured by id",
    ]
    row = layout.titled_row(panels, titles)
    extent = DISPLAY.xbound[1]
    text = (
        f"Sweep 0 from above (+-{extent:g} m, forward up, ground removed); arrows: the motion beyond the ego "
        f"motion x{ARROW_SCALE:g}, every 2nd moving point (>= {DYNAMIC_THRESHOLD} m per 0.1 s); grey: static "
        "or background. Slot and id colours are not matched between the panels."
    )
    if grid is not None and grid.xbound[1] < extent:
        text += f" The network sees +-{grid.xbound[1]:g} m."
    caption = layout.text_band(text, row.shape[1])
    return layout.figure([row, caption], title)
