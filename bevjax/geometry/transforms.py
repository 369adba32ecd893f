"""Rigid transforms on 4x4 homogeneous matrices (NumPy; work on any leading batch shape)."""

from __future__ import annotations

import numpy as np


def pose2d(x, y, yaw, z=0.0) -> np.ndarray:
    """[..., 4, 4] transform of a yaw rotation about z followed by a translation (x, y, z)."""
    x, y, yaw, z = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in (x, y, yaw, z)))
    out = np.zeros(x.shape + (4, 4))
    c, s = np.cos(yaw), np.sin(yaw)
    out[..., 0, 0], out[..., 0, 1], out[..., 1, 0], out[..., 1, 1] = c, -s, s, c
    out[..., 2, 2] = out[..., 3, 3] = 1.0
    out[..., 0, 3], out[..., 1, 3], out[..., 2, 3] = x, y, z
    return out


def invert_rigid(t: np.ndarray) -> np.ndarray:
    """Inverse of rigid [..., 4, 4] transforms: (R, p) -> (R^T, -R^T p)."""
    t = np.asarray(t)
    rot_t = np.swapaxes(t[..., :3, :3], -1, -2)
    out = np.zeros_like(t)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rot_t, t[..., :3, 3])
    out[..., 3, 3] = 1
    return out


def transform_points(t: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Applies [..., 4, 4] transform ``t`` to points [..., p, 3]."""
    return np.einsum("...ij,...pj->...pi", t[..., :3, :3], points) + t[..., None, :3, 3]


def quaternion_to_matrix(q) -> np.ndarray:
    """Rotation matrix of a unit quaternion (w, x, y, z), the nuScenes / pyquaternion order."""
    w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def points_in_each_box(points, frame_from_box, sizes) -> list[np.ndarray]:
    """Per box, the indices of the points inside it (boundary included), as :func:`points_in_boxes` decides;
    each box tests only the points within its bounding sphere, so large sweeps need no [n, m] matrix.

    Args:
      points: [n, 3] in some frame.
      frame_from_box: [m, 4, 4] box poses in that frame (box frame centred in the box, x along the length).
      sizes: [m, 3] length, width, height in metres.
    """
    pts = np.asarray(points, np.float64)
    poses = np.asarray(frame_from_box, np.float64).reshape(-1, 4, 4)
    sizes = np.asarray(sizes, np.float64).reshape(-1, 3)
    out = []
    for pose, size in zip(poses, sizes, strict=True):
        reach = 0.5 * np.linalg.norm(size)  # points farther from the centre cannot be inside
        near = np.flatnonzero(np.all(np.abs(pts - pose[:3, 3]) <= reach, axis=-1))
        out.append(near[points_in_boxes(pts[near], pose[None], size[None])[:, 0]])
    return out


def points_in_boxes(points, frame_from_box, sizes) -> np.ndarray:
    """[n, m] bool: point i lies inside box j (boundary included).

    Args:
      points: [n, 3] in some frame.
      frame_from_box: [m, 4, 4] box poses in that frame (box frame centred in the box, x along the length).
      sizes: [m, 3] length, width, height in metres.
    """
    pts = np.asarray(points, np.float64)
    box_from_frame = invert_rigid(np.asarray(frame_from_box, np.float64))  # m 4 4
    m = len(box_from_frame)
    rot = box_from_frame[:, :3, :3].reshape(m * 3, 3)  # (m i) j
    local = (pts @ rot.T).reshape(len(pts), m, 3) + box_from_frame[None, :, :3, 3]  # n m 3
    return np.all(np.abs(local) <= 0.5 * np.asarray(sizes, np.float64)[None], axis=-1)
