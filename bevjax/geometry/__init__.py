"""Geometry shared by every method: BEV grids, rigid transforms and the lift-splat-shoot frustum."""

from bevjax.geometry.frustum import create_frustum, frustum_to_ego
from bevjax.geometry.grid import BEVGrid
from bevjax.geometry.transforms import (
    invert_rigid,
    points_in_boxes,
    points_in_each_box,
    pose2d,
    transform_points,
)

__all__ = [
    "BEVGrid",
    "create_frustum",
    "frustum_to_ego",
    "invert_rigid",
    "points_in_boxes",
    "points_in_each_box",
    "pose2d",
    "transform_points",
]
