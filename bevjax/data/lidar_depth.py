"""Sparse camera depth from LiDAR points, for depth supervision on real data (nuScenes keyframes carry LiDAR
points but no dense ``depth``; the world renders ``depth`` itself).

Each valid point ``p`` (ego frame) goes into every camera as LSS's geometry takes it back out
(:func:`bevjax.geometry.frustum.frustum_to_ego`, inverted)::

    q = inv(cam_to_ego) @ p                        camera frame, z = q_z > 0 in front of the camera
    (u, v) = (K q)_xy / z                          pixel of the image before augmentation
    (u', v', z) = post_rots @ (u, v, z) + post_trans   pixel of the augmented image (depth unchanged)

and lands in pixel ``(row, col) = (floor(v' + 1/2), floor(u' + 1/2))`` (pixel ``j`` is centred on coordinate ``j``,
as the LSS frustum places its points); when several points land in one pixel the nearest is kept. Pixels
without a point are 0, the "no depth" of :func:`bevjax.losses.nrseg.downsample_depth`.
"""

from __future__ import annotations

import numpy as np


def lidar_depth_image(
    points: np.ndarray,
    valid: np.ndarray | None,
    intrinsics: np.ndarray,
    cam_to_ego: np.ndarray,
    post_rots: np.ndarray,
    post_trans: np.ndarray,
    image_hw: tuple[int, int],
    min_depth: float = 0.1,
) -> np.ndarray:
    """[n, h, w] float32 depth (metres along the optical axis, 0 = none) of ``points`` [p, 3] (ego frame; rows
    with ``valid`` [p] False are skipped) seen by ``n`` cameras (``intrinsics`` [n, 3, 3], ``cam_to_ego``
    [n, 4, 4], ``post_rots`` [n, 3, 3], ``post_trans`` [n, 3]) in images of ``image_hw``; points nearer than
    ``min_depth`` are dropped."""
    h, w = int(image_hw[0]), int(image_hw[1])
    points = np.asarray(points, np.float64)
    if valid is not None:
        points = points[np.asarray(valid, bool)]
    n = len(intrinsics)
    out = np.zeros((n, h, w), np.float32)
    if not len(points):
        return out
    ego_to_cam = np.linalg.inv(np.asarray(cam_to_ego, np.float64))  # n 4 4
    q = np.einsum("nij,pj->npi", ego_to_cam[:, :3, :3], points) + ego_to_cam[:, None, :3, 3]  # n p 3
    z = q[..., 2]
    front = z > min_depth
    pix = np.einsum("nij,npj->npi", np.asarray(intrinsics, np.float64), q)  # n p 3
    with np.errstate(divide="ignore", invalid="ignore"):
        uvz = np.stack([pix[..., 0] / z, pix[..., 1] / z, z], -1)  # n p 3
    aug = np.einsum("nij,npj->npi", np.asarray(post_rots, np.float64), uvz) + np.asarray(post_trans)[:, None]
    col = np.floor(aug[..., 0] + 0.5)
    row = np.floor(aug[..., 1] + 0.5)
    inside = front & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    for cam in range(n):
        m = inside[cam]
        r, c, d = row[cam, m].astype(np.int64), col[cam, m].astype(np.int64), z[cam, m]
        order = np.argsort(-d)  # far first: the nearest point is written last and stays
        flat = np.full(h * w, np.inf)
        flat[r[order] * w + c[order]] = d[order]
        out[cam] = np.where(np.isfinite(flat), flat, 0.0).reshape(h, w)
    return out


class LidarDepth:
    """A Grain map: adds ``depth`` [n, h, w] from the example's LiDAR points (:func:`lidar_depth_image`) when the
    example has ``lidar_points`` and no ``depth``; place it after the image augmentation (it reads the final
    ``post_rots`` / ``post_trans`` and image size). Picklable."""

    def __call__(self, example: dict) -> dict:
        if "depth" in example or "lidar_points" not in example:
            return example
        images = np.asarray(example["images"])  # n h w 3
        depth = lidar_depth_image(
            example["lidar_points"],
            example.get("lidar_valid"),
            example["intrinsics"],
            example["cam_to_ego"],
            example["post_rots"],
            example["post_trans"],
            images.shape[1:3],
        )
        return {**example, "depth": depth}
