"""Sparse LiDAR depth images against a point-by-point float64 loop and a round trip through the LSS geometry."""

import numpy as np
import pytest

from bevjax.data.lidar_depth import LidarDepth, lidar_depth_image
from bevjax.geometry.frustum import frustum_to_ego
from bevjax.schema import NUSCENES_CAMERAS
from bevjax.world.rig import camera_rig

HW = (32, 96)


def _augmentation(rng, n):
    """Per camera a scale + rotation + shift of the image plane (as ImageAug's post_rots / post_trans)."""
    rots, trans = [], []
    for _ in range(n):
        a, s = rng.uniform(-0.1, 0.1), rng.uniform(0.8, 1.2)
        r = np.eye(3)
        r[:2, :2] = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        rots.append(r)
        trans.append([rng.uniform(-5, 5), rng.uniform(-5, 5), 0.0])
    return np.array(rots, np.float32), np.array(trans, np.float32)


def loop_reference(points, valid, intrinsics, cam_to_ego, post_rots, post_trans, hw):
    h, w = hw
    out = np.zeros((len(intrinsics), h, w))
    for cam in range(len(intrinsics)):
        for p, ok in zip(points, valid, strict=True):
            if not ok:
                continue
            q = np.linalg.solve(cam_to_ego[cam].astype(np.float64), np.append(p, 1.0))[:3]
            if q[2] <= 0.1:
                continue
            u, v = (intrinsics[cam] @ q)[:2] / q[2]
            a = post_rots[cam] @ np.array([u, v, q[2]]) + post_trans[cam]
            col, row = int(np.floor(a[0] + 0.5)), int(np.floor(a[1] + 0.5))
            if 0 <= row < h and 0 <= col < w and (out[cam, row, col] == 0 or q[2] < out[cam, row, col]):
                out[cam, row, col] = q[2]
    return out


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(0)
    intrinsics, cam_to_ego = camera_rig(NUSCENES_CAMERAS, HW)
    post_rots, post_trans = _augmentation(rng, len(NUSCENES_CAMERAS))
    points = np.concatenate([rng.uniform(-40, 40, (3000, 2)), rng.uniform(-2, 3, (3000, 1))], 1).astype(np.float32)
    valid = rng.random(3000) < 0.9
    return points, valid, intrinsics, cam_to_ego, post_rots, post_trans


def test_equals_the_point_by_point_loop(scene):
    got = lidar_depth_image(*scene, HW)
    want = loop_reference(*scene, HW)
    assert got.shape == (6, *HW) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert (got > 0).sum() > 300  # every camera sees points


def test_pixels_unproject_to_their_points(scene):
    """A point's (u', v', depth) put through frustum_to_ego (LSS get_geometry) gives the point back, up to the
    half-pixel rounding; checked without rounding by projecting the points themselves."""
    points, valid, intrinsics, cam_to_ego, post_rots, post_trans = scene
    depth = lidar_depth_image(*scene, HW)
    cam, row, col = np.argwhere(depth > 0)[0]
    frustum = np.array([[[[col, row, depth[cam, row, col]]]]], np.float32)  # d=1 h=1 w=1 3
    ego = np.asarray(
        frustum_to_ego(frustum, intrinsics[None], cam_to_ego[None], post_rots[None], post_trans[None])
    )[0, cam, 0, 0, 0]
    nearest = np.linalg.norm(points[valid] - ego, axis=1).min()
    assert nearest < 0.05 * depth[cam, row, col]  # within the pixel's footprint at that depth


def test_transform_adds_depth_only_where_missing(scene):
    points, valid, intrinsics, cam_to_ego, post_rots, post_trans = scene
    example = dict(images=np.zeros((6, *HW, 3), np.uint8), lidar_points=points, lidar_valid=valid,
                   intrinsics=intrinsics, cam_to_ego=cam_to_ego, post_rots=post_rots, post_trans=post_trans)  # fmt: skip
    out = LidarDepth()(example)
    np.testing.assert_array_equal(out["depth"], lidar_depth_image(*scene, HW))
    world = {**example, "depth": np.ones((6, *HW), np.float32)}
    assert LidarDepth()(world) is world
