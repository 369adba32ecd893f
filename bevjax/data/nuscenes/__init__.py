"""nuScenes dataroot reader and keyframes in the batch schema (BEV object and drivable-area labels)."""

from bevjax.data.nuscenes.sample import (
    annotation_boxes,
    bev_class_of,
    box_corners,
    camera_to_lidar_ego,
    drivable_raster,
    load_sample,
    map_mask,
    points_in_box,
)
from bevjax.data.nuscenes.tables import DamagedFileError, NuScenesTables, rigid_from_pose

__all__ = [
    "DamagedFileError",
    "NuScenesTables",
    "annotation_boxes",
    "bev_class_of",
    "box_corners",
    "camera_to_lidar_ego",
    "drivable_raster",
    "load_sample",
    "map_mask",
    "points_in_box",
    "rigid_from_pose",
]
