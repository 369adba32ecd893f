"""Pictures: BEV label maps, LiDAR bird's-eye views and camera mosaics as uint8 RGB arrays / PNG files.

One palette per class set (``BEV_PALETTE``, ``SEMANTIC_PALETTE``), one layout (:mod:`bevjax.viz.layout`: every
picture at least ``MIN_WIDTH`` wide, BEV panels at least ``MIN_BEV``, titles wrapped, colour legends).
"""

from bevjax.viz import layout
from bevjax.viz.bev import (
    BEV_PALETTE,
    DIM,
    EGO_COLOUR,
    SEMANTIC_PALETTE,
    bev_legend,
    bev_panel_width,
    bev_scale,
    camera_mosaic,
    colorize_bev,
    colorize_semantic,
    fit_height,
    labelled,
    lidar_bev,
    points_to_display,
    prediction_picture,
    preview_image,
    save_png,
    scatter_points,
    semantic_legend,
    stack_rows,
)
from bevjax.viz.layout import MIN_BEV, MIN_CAMERA_WIDTH, MIN_WIDTH, figure, legend, titled, upscale

__all__ = [
    "layout",
    "MIN_BEV",
    "MIN_CAMERA_WIDTH",
    "MIN_WIDTH",
    "figure",
    "legend",
    "titled",
    "upscale",
    "camera_mosaic",
    "fit_height",
    "labelled",
    "stack_rows",
    "BEV_PALETTE",
    "DIM",
    "EGO_COLOUR",
    "SEMANTIC_PALETTE",
    "bev_legend",
    "bev_panel_width",
    "bev_scale",
    "semantic_legend",
    "colorize_bev",
    "colorize_semantic",
    "lidar_bev",
    "points_to_display",
    "prediction_picture",
    "scatter_points",
    "preview_image",
    "save_png",
]
