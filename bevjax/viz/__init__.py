"""Pictures: BEV label maps, LiDAR bird's-eye views and camera mosaics as uint8 RGB arrays / PNG files."""

from bevjax.viz.bev import (
    BEV_PALETTE,
    SEMANTIC_PALETTE,
    colorize_bev,
    colorize_semantic,
    lidar_bev,
    preview_image,
    save_png,
)

__all__ = [
    "BEV_PALETTE",
    "SEMANTIC_PALETTE",
    "colorize_bev",
    "colorize_semantic",
    "lidar_bev",
    "preview_image",
    "save_png",
]
