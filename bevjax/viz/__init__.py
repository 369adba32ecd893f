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
    preview_image,
    save_png,
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
    "preview_image",
    "save_png",
]
