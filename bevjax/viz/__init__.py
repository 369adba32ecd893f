"""Pictures: BEV label maps, LiDAR bird's-eye views and camera mosaics as uint8 RGB arrays / PNG files."""

from bevjax.viz.bev import (
    BEV_PALETTE,
    SEMANTIC_PALETTE,
    camera_mosaic,
    colorize_bev,
    colorize_semantic,
    fit_height,
    labelled,
    lidar_bev,
    points_to_display,
    preview_image,
    save_png,
    scatter_points,
    stack_rows,
)

__all__ = [
    "camera_mosaic",
    "fit_height",
    "labelled",
    "stack_rows",
    "BEV_PALETTE",
    "SEMANTIC_PALETTE",
    "colorize_bev",
    "colorize_semantic",
    "lidar_bev",
    "points_to_display",
    "scatter_points",
    "preview_image",
    "save_png",
]
