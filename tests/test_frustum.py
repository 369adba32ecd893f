"""Tests of the lift-splat-shoot frustum and its camera -> ego geometry against independent NumPy projections."""

import chex
import jax
import numpy as np

from bevjax.geometry import create_frustum, frustum_to_ego
from bevjax.schema import NUSCENES_CAMERAS
from bevjax.world.rig import camera_rig

HW = (128, 352)
DBOUND = (4.0, 45.0, 1.0)


def project(intrinsics, cam_to_ego, points):
    """Independent float64 projection of ego points [p, 3]: pixels (u, v) [p, 2] and camera depth z [p]."""
    ego_to_cam = np.linalg.inv(np.asarray(cam_to_ego, np.float64))
    cam = np.asarray(points, np.float64) @ ego_to_cam[:3, :3].T + ego_to_cam[:3, 3]
    pix = cam @ np.asarray(intrinsics, np.float64).T
    return pix[:, :2] / pix[:, 2:3], cam[:, 2]


def augmentation(scale, angle_deg, shift):
    """LSS-style (post_rots [3, 3], post_trans [3]): 2D scale * rotation and shift of (u, v), depth untouched."""
    a = np.deg2rad(angle_deg)
    post_rots = np.eye(3)
    post_rots[:2, :2] = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return post_rots.astype(np.float32), np.array([shift[0], shift[1], 0.0], np.float32)


def identity_aug(b, n):
    return np.broadcast_to(np.eye(3, dtype=np.float32), (b, n, 3, 3)), np.zeros((b, n, 3), np.float32)


def test_create_frustum_is_the_lss_lattice():
    # H, W = 8, 12, downsample 4: fh, fw = 2, 3; u = linspace(0, 11, 3), v = linspace(0, 7, 2), d = arange.
    frustum = create_frustum((8, 12), 4, (1.0, 3.5, 1.0))
    expected = np.array(
        [
            [[[0.0, 0.0, d], [5.5, 0.0, d], [11.0, 0.0, d]], [[0.0, 7.0, d], [5.5, 7.0, d], [11.0, 7.0, d]]]
            for d in (1.0, 2.0, 3.0)
        ],
        np.float32,
    )
    assert frustum.dtype == np.float32
    np.testing.assert_array_equal(frustum, expected)

    # The LSS nuScenes config: final_dim (128, 352), downsample 16, dbound [4, 45, 1].
    lss = create_frustum(HW, 16, DBOUND)
    chex.assert_shape(lss, (41, 8, 22, 3))
    np.testing.assert_allclose(lss[0, 0, :, 0], np.linspace(0, 351, 22), rtol=1e-6)
    np.testing.assert_allclose(lss[0, :, 0, 1], np.linspace(0, 127, 8), rtol=1e-6)
    np.testing.assert_array_equal(lss[:, 0, 0, 2], np.arange(4, 45, dtype=np.float32))


def test_known_point_lands_back_in_ego():
    intrinsics, cam_to_ego = camera_rig(("CAM_FRONT",), HW)
    points = np.array([[12.0, 1.5, 0.3], [30.0, -4.0, 1.2], [8.0, 0.5, 0.3]])
    (uv, z) = project(intrinsics[0], cam_to_ego[0], points)
    assert np.all(z > 0) and np.all((uv >= 0) & (uv <= np.array(HW[::-1]) - 1))

    augs = [identity_aug(1, 1), tuple(a[None, None] for a in augmentation(1.3, 7.0, (-25.0, 12.5)))]
    for post_rots, post_trans in augs:
        # Augmented pixel and depth: post_rots @ (u, v, z) + post_trans (depth row of post_rots is (0, 0, 1)).
        uvz = np.concatenate([uv, z[:, None]], -1)
        aug = uvz @ post_rots[0, 0].astype(np.float64).T + post_trans[0, 0]
        np.testing.assert_allclose(aug[:, 2], z)
        for point, pixel in zip(points, aug, strict=True):
            frustum = pixel.astype(np.float32).reshape(1, 1, 1, 3)  # one-pixel frustum at (u, v, z)
            ego = frustum_to_ego(frustum, intrinsics[None], cam_to_ego[None], post_rots, post_trans)
            chex.assert_shape(ego, (1, 1, 1, 1, 1, 3))
            np.testing.assert_allclose(np.asarray(ego).reshape(3), point, atol=1e-3)


def test_frustum_points_lie_in_the_camera_view():
    intrinsics, cam_to_ego = camera_rig(NUSCENES_CAMERAS, HW)
    n = len(NUSCENES_CAMERAS)
    frustum = create_frustum(HW, 16, DBOUND)
    post_rots, post_trans = identity_aug(1, n)
    ego = np.asarray(
        jax.jit(frustum_to_ego)(frustum, intrinsics[None], cam_to_ego[None], post_rots, post_trans)
    )
    chex.assert_shape(ego, (1, n, *frustum.shape))
    for cam in range(n):
        uv, z = project(intrinsics[cam], cam_to_ego[cam], ego[0, cam].reshape(-1, 3))
        assert np.all(z > 0)
        np.testing.assert_allclose(z, frustum[..., 2].reshape(-1), rtol=1e-5)
        np.testing.assert_allclose(uv, frustum[..., :2].reshape(-1, 2), atol=2e-2)
        tol = 2e-2
        assert np.all((uv >= -tol) & (uv <= np.array(HW[::-1]) - 1 + tol))


def test_augmented_frustum_undoes_the_augmentation():
    # With an augmentation, frustum pixels are augmented-image pixels: projecting the ego points with the
    # original camera gives the pre-augmentation pixels inv(post_rots) @ (aug - post_trans).
    intrinsics, cam_to_ego = camera_rig(("CAM_FRONT_LEFT", "CAM_BACK"), HW)
    frustum = create_frustum(HW, 16, (4.0, 12.0, 2.0))
    post_rot, post_tran = augmentation(0.8, -5.0, (10.0, -3.0))
    post_rots, post_trans = np.stack([post_rot] * 2)[None], np.stack([post_tran] * 2)[None]
    ego = np.asarray(frustum_to_ego(frustum, intrinsics[None], cam_to_ego[None], post_rots, post_trans))
    for cam in range(2):
        uv, z = project(intrinsics[cam], cam_to_ego[cam], ego[0, cam].reshape(-1, 3))
        flat = frustum.reshape(-1, 3).astype(np.float64)
        original = (flat - post_trans[0, cam]) @ np.linalg.inv(post_rots[0, cam].astype(np.float64)).T
        np.testing.assert_allclose(z, flat[:, 2], rtol=1e-5)
        np.testing.assert_allclose(uv, original[:, :2], atol=2e-2)


def test_frustum_to_ego_batch_shapes():
    b, n = 2, 3
    frustum = create_frustum((64, 96), 8, (2.0, 10.0, 2.0))
    intrinsics, cam_to_ego = camera_rig(NUSCENES_CAMERAS[:n], (64, 96))
    intrinsics, cam_to_ego = (np.broadcast_to(a, (b, *a.shape)) for a in (intrinsics, cam_to_ego))
    post_rots, post_trans = identity_aug(b, n)
    post_trans = post_trans + np.array([[[3.0, -2.0, 0.0]]], np.float32) * np.arange(b)[:, None, None]
    ego = jax.jit(frustum_to_ego)(frustum, intrinsics, cam_to_ego, post_rots, post_trans)
    chex.assert_shape(ego, (b, n, 4, 8, 12, 3))
    chex.assert_type(ego, np.float32)
    eager = frustum_to_ego(frustum, intrinsics, cam_to_ego, post_rots, post_trans)
    np.testing.assert_allclose(np.asarray(ego), np.asarray(eager), atol=1e-4)
    # Batch 0 is unaugmented, batch 1 shifted: the two must differ, and camera 1 equals the one-camera call.
    assert not np.allclose(ego[0], ego[1])
    one = frustum_to_ego(
        frustum, intrinsics[1:, 1:2], cam_to_ego[1:, 1:2], post_rots[1:, 1:2], post_trans[1:, 1:2]
    )
    np.testing.assert_allclose(np.asarray(one[0, 0]), np.asarray(ego[1, 1]), atol=1e-4)
