"""Sensor rig of the world: the nuScenes six-camera rig and a spinning LiDAR.

Camera poses and 1600x900 intrinsics are those of the nuScenes calibration (scene-0061, Singapore one-north):
translation (m) and rotation quaternion (w, x, y, z) of camera -> ego, focal length and principal point (px).
The world renders at a smaller size the way lift-splat-shoot feeds images to its network: scale so that the
width fits, then crop rows near the bottom (test-time crop of LSS), and shift the principal point accordingly.
"""

from __future__ import annotations

import numpy as np

from bevjax.geometry.transforms import quaternion_to_matrix

NUSCENES_IMAGE_HW = (900, 1600)

# name: (translation, quaternion wxyz, (fx, cx, cy))
NUSCENES_RIG = {
    "CAM_FRONT": (
        (1.70079, 0.01595, 1.51096),
        (0.49980, -0.50303, 0.49978, -0.49737),
        (1266.417, 816.267, 491.507),
    ),
    "CAM_FRONT_RIGHT": (
        (1.55085, -0.49340, 1.49575),
        (0.20603, -0.20269, 0.68245, -0.67136),
        (1260.847, 807.968, 495.334),
    ),
    "CAM_BACK_RIGHT": (
        (1.01488, -0.48057, 1.56240),
        (0.12281, -0.13240, -0.70043, 0.69050),
        (1259.514, 807.253, 501.196),
    ),
    "CAM_BACK": (
        (0.02833, 0.00345, 1.57910),
        (0.50379, -0.49740, -0.49419, 0.50455),
        (809.221, 829.220, 481.778),
    ),
    "CAM_BACK_LEFT": (
        (1.03569, 0.48480, 1.59097),
        (0.69242, -0.70316, -0.11648, 0.11203),
        (1256.741, 792.113, 492.776),
    ),
    "CAM_FRONT_LEFT": (
        (1.52388, 0.49463, 1.50933),
        (0.67573, -0.67363, 0.21214, -0.21123),
        (1272.598, 826.615, 479.752),
    ),
}

# nuScenes LIDAR_TOP mounting (ego frame); the world's LiDAR is level.
LIDAR_POSITION = np.array([0.943713, 0.0, 1.84023], np.float32)


def lss_resize_crop(image_hw: tuple[int, int], src_hw=NUSCENES_IMAGE_HW) -> tuple[float, int, int]:
    """(scale, crop_top, crop_left) that turns a src image into ``image_hw`` like LSS at test time."""
    h, w = image_hw
    scale = max(h / src_hw[0], w / src_hw[1])
    new_h, new_w = int(src_hw[0] * scale), int(src_hw[1] * scale)
    crop_top = max(0, min(int((1 - 0.11) * new_h) - h, new_h - h))
    crop_left = max(0, (new_w - w) // 2)
    return scale, crop_top, crop_left


def camera_rig(cameras, image_hw) -> tuple[np.ndarray, np.ndarray]:
    """Intrinsics [n, 3, 3] at ``image_hw`` and cam_to_ego [n, 4, 4] (float32) of the named cameras."""
    scale, top, left = lss_resize_crop(image_hw)
    intrinsics, cam_to_ego = [], []
    for name in cameras:
        if name not in NUSCENES_RIG:
            raise ValueError(f"unknown camera '{name}'; choose from {sorted(NUSCENES_RIG)}")
        trans, quat, (f, cx, cy) = NUSCENES_RIG[name]
        k = np.array([[f * scale, 0, cx * scale - left], [0, f * scale, cy * scale - top], [0, 0, 1]])
        t = np.eye(4)
        t[:3, :3] = quaternion_to_matrix(quat)
        t[:3, 3] = trans
        intrinsics.append(k)
        cam_to_ego.append(t)
    return np.array(intrinsics, np.float32), np.array(cam_to_ego, np.float32)


def lidar_directions(beams: int, azimuths: int, elevation_deg: tuple[float, float]) -> np.ndarray:
    """[beams * azimuths, 3] unit ray directions of one sweep in the ego frame (beam-major order)."""
    elev = np.deg2rad(np.linspace(elevation_deg[1], elevation_deg[0], beams))
    azim = np.arange(azimuths) * (2 * np.pi / azimuths)
    e, a = np.meshgrid(elev, azim, indexing="ij")
    dirs = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1)
    return dirs.reshape(-1, 3).astype(np.float32)
