"""Geometry shared by every method: BEV grids and rigid transforms."""

from bevjax.geometry.grid import BEVGrid
from bevjax.geometry.transforms import invert_rigid, pose2d, transform_points

__all__ = ["BEVGrid", "invert_rigid", "pose2d", "transform_points"]
