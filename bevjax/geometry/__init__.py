"""Geometry shared by every method: BEV grids, rigid transforms and the lift-splat-shoot frustum."""

from bevjax.geometry.frustum import create_frustum, frustum_to_ego
from bevjax.geometry.grid import BEVGrid
from bevjax.geometry.homography import (
    PGCM_TAU,
    bev_mask_to_camera,
    ground_homography,
    ground_homography_inverse,
    pgcm_score,
    pgcm_weight,
    pixel_ground_points,
)
from bevjax.geometry.transforms import (
    invert_rigid,
    points_in_boxes,
    points_in_each_box,
    pose2d,
    transform_points,
)

__all__ = [
    "PGCM_TAU",
    "BEVGrid",
    "bev_mask_to_camera",
    "create_frustum",
    "frustum_to_ego",
    "ground_homography",
    "ground_homography_inverse",
    "invert_rigid",
    "pgcm_score",
    "pgcm_weight",
    "pixel_ground_points",
    "points_in_boxes",
    "points_in_each_box",
    "pose2d",
    "transform_points",
]
