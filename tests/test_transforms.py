"""Tests of the Grain example transforms against independent geometric references."""

import pickle

import chex
import grain
import numpy as np
import pytest
from PIL import Image

from bevjax.data.transforms import (
    AugParams,
    BEVFlip,
    ColorJitter,
    ImageAug,
    SelectCameras,
    apply_image_aug,
    mirror_example,
    warp_image,
)
from bevjax.geometry import BEVGrid, invert_rigid, pose2d, transform_points
from bevjax.schema import NUM_BEV_CLASSES, NUSCENES_CAMERAS
from bevjax.world.rig import camera_rig

CAMS = ("CAM_FRONT", "CAM_BACK_LEFT")
H, W = 90, 160
FINAL = (32, 88)
S_E = np.diag([1.0, -1.0, 1.0, 1.0])
# Blue blocks of 9x9 px centred on a lattice, each with its own blue level.
BLOCK_CENTRES = [(x, y) for y in range(10, H - 5, 20) for x in range(10, W - 5, 20)]
BLOCK_VALUES = [60 + 6 * k for k in range(len(BLOCK_CENTRES))]


def _source_label(cam: int) -> np.ndarray:
    v, u = np.mgrid[0:H, 0:W]  # [h, w]
    return (((u // 7) + 3 * (v // 5) + 11 * cam) % 250 + 1).astype(np.uint8)


def _ramp_example(cams=CAMS, lidar_points: int = 64, seed: int = 0) -> dict:
    """Images whose red / green encode the source column / row, blue blocks, labels and depth encoding the pixel."""
    rng = np.random.default_rng(seed)
    n = len(cams)
    intrinsics, cam_to_ego = camera_rig(cams, (H, W))
    v, u = np.mgrid[0:H, 0:W]  # [h, w]
    blue = np.zeros((H, W))
    for (x, y), value in zip(BLOCK_CENTRES, BLOCK_VALUES, strict=True):
        blue[y - 4 : y + 5, x - 4 : x + 5] = value
    image = np.stack([np.rint(u * 255 / (W - 1)), np.rint(v * 255 / (H - 1)), blue], -1).astype(np.uint8)
    grid = BEVGrid()
    gx, gy, _ = grid.shape
    points = rng.uniform(-40, 40, (lidar_points, 3)).astype(np.float32)
    next_from_this = pose2d(1.5, 0.3, 0.1).astype(np.float32)
    return {
        "images": np.repeat(image[None], n, 0),  # [n, h, w, 3]
        "intrinsics": intrinsics,
        "cam_to_ego": cam_to_ego,
        "ego_to_world": pose2d(100.0, -20.0, 0.7, 0.5).astype(np.float32),
        "post_rots": np.tile(np.eye(3, dtype=np.float32), (n, 1, 1)),
        "post_trans": np.zeros((n, 3), np.float32),
        "pv_labels": np.stack([_source_label(i) for i in range(n)]),  # [n, h, w]
        "depth": np.repeat((v * W + u + 1).astype(np.float32)[None], n, 0),  # [n, h, w] pixel index + 1
        "bev_labels": rng.integers(0, 2, (gx, gy, NUM_BEV_CLASSES)).astype(np.uint8),
        "bev_visibility": rng.integers(0, 2, (gx, gy)).astype(np.uint8),
        "lidar_points": points,
        "lidar_valid": np.ones(lidar_points, bool),
        "lidar_flow": (transform_points(next_from_this, points) - points).astype(np.float32),
        "next_ego_from_ego": next_from_this,
        "next_lidar_points": rng.uniform(-40, 40, (lidar_points, 3)).astype(np.float32),
        "frame_index": np.int32(3),
    }


def _random_example(n: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ex = _ramp_example(CAMS[:n], seed=seed)
    ex["images"] = rng.integers(0, 256, ex["images"].shape).astype(np.uint8)
    return ex


def _forward(params: AugParams, final_hw, uv: np.ndarray) -> np.ndarray:
    """Augmented position of source points [m, 2], reasoned step by step (independent of ``aug_affine``)."""
    fh, fw = final_hw
    # A pixel centre u sits half a pixel from the image's left edge; resizing scales distances from that edge.
    x = (uv[:, 0] + 0.5) * params.resize - 0.5 - params.crop[0]
    y = (uv[:, 1] + 0.5) * params.resize - 0.5 - params.crop[1]
    if params.flip:
        x = (fw - 1) - x
    # Counter-clockwise as displayed = counter-clockwise in a y-up frame: multiply (dx, -dy) by e^{i theta}.
    cx, cy = (fw - 1) / 2, (fh - 1) / 2
    z = ((x - cx) - 1j * (y - cy)) * np.exp(1j * np.deg2rad(params.rotate_deg))
    return np.stack([cx + z.real, cy - z.imag], -1)


def _undo(post_rot: np.ndarray, post_tran: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Source pixel [..., 2] of augmented pixels [..., 2]: inv(post_rots) @ ([u', v', 1] - post_trans)."""
    homog = np.concatenate([uv, np.ones(uv.shape[:-1] + (1,))], -1) - post_tran
    return (homog @ np.linalg.inv(post_rot.astype(np.float64)).T)[..., :2]


def _ego_rays(intrinsics: np.ndarray, cam_to_ego: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Unit ego-frame ray directions [m, 3] of pixels [m, 2]."""
    homog = np.concatenate([uv, np.ones((len(uv), 1))], -1)
    rays = homog @ np.linalg.inv(intrinsics.astype(np.float64)).T @ cam_to_ego[:3, :3].astype(np.float64).T
    return rays / np.linalg.norm(rays, axis=-1, keepdims=True)


def _project(intrinsics, cam_to_ego, points_ego):
    cam = transform_points(invert_rigid(cam_to_ego.astype(np.float64)), points_ego.astype(np.float64))
    uvw = cam @ intrinsics.astype(np.float64).T
    return uvw[:, :2] / uvw[:, 2:3], cam[:, 2]


AUGS = {
    "shrink": ImageAug(FINAL, (0.5, 0.7), (0.0, 0.22), (-10.0, 10.0), True, True),
    "shrink_no_antialias": ImageAug(
        FINAL, (0.5, 0.7), (0.0, 0.22), (-10.0, 10.0), True, True, antialias=False
    ),
    "strong_shrink": ImageAug(FINAL, (0.3, 0.4), (0.0, 0.22), (-20.0, 20.0), True, True),
    "grow": ImageAug(FINAL, (1.1, 1.4), (0.0, 0.3), (-10.0, 10.0), True, True),
    "test": ImageAug(FINAL, (0.5, 0.7), (0.0, 0.22), (-10.0, 10.0), True, False),
}


@pytest.mark.parametrize("name", sorted(AUGS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_aug_rays_match_independent_forward_map(name, seed):
    aug, ex = AUGS[name], _ramp_example()
    out = aug.random_map(ex, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    params = [aug.sample_params((H, W), rng) for _ in CAMS]
    chex.assert_shape(out["images"], (len(CAMS), *FINAL, 3))
    assert out["post_rots"].dtype == np.float32 and out["post_trans"].dtype == np.float32
    chex.assert_trees_all_equal(out["intrinsics"], ex["intrinsics"])
    src = np.random.default_rng(100 + seed).uniform([0, 0], [W - 1, H - 1], (400, 2))
    checked = 0
    for i in range(len(CAMS)):
        q = _forward(params[i], FINAL, src)  # where each source point lands
        seen = (q[:, 0] >= 0) & (q[:, 0] <= FINAL[1] - 1) & (q[:, 1] >= 0) & (q[:, 1] <= FINAL[0] - 1)
        back = _undo(out["post_rots"][i], out["post_trans"][i], q[seen])
        rays_aug = _ego_rays(ex["intrinsics"][i], ex["cam_to_ego"][i], back)
        rays_src = _ego_rays(ex["intrinsics"][i], ex["cam_to_ego"][i], src[seen])
        np.testing.assert_allclose(rays_aug, rays_src, atol=1e-5)
        checked += seen.sum()
    assert checked > 50


@pytest.mark.parametrize("name", sorted(AUGS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_aug_content_follows_post_rots(name, seed):
    aug, ex = AUGS[name], _ramp_example()
    out = aug.random_map(ex, np.random.default_rng(seed))
    fv, fu = np.mgrid[0 : FINAL[0], 0 : FINAL[1]]  # [h, w]
    grid = np.stack([fu, fv], -1).astype(np.float64)  # [h, w, 2]
    blocks_checked = 0
    for i in range(len(CAMS)):
        img = out["images"][i].astype(np.float64)
        src = _undo(
            out["post_rots"][i], out["post_trans"][i], grid
        )  # [h, w, 2] source position of each pixel
        # Ramp: red / green decode the source column / row (bilinear interpolation keeps linear ramps).
        decoded = np.stack([img[..., 0] * (W - 1) / 255, img[..., 1] * (H - 1) / 255], -1)
        interior = (src[..., 0] > 3) & (src[..., 0] < W - 4) & (src[..., 1] > 3) & (src[..., 1] < H - 4)
        assert interior.sum() > 100
        err = decoded[interior] - src[interior]
        assert np.abs(err).max() < 1.0, np.abs(err).max(0)
        assert np.all(np.abs(err.mean(0)) < 0.15), err.mean(0)  # no half-pixel bias
        outside = (
            (src[..., 0] < -1.5) | (src[..., 0] > W + 0.5) | (src[..., 1] < -1.5) | (src[..., 1] > H + 0.5)
        )
        assert np.all(img[outside] == 0)
        # Blocks: each block's own colour at the position post_rots predicts for the block centre, where the
        # 9x9 block stays at least 4.5 px wide (smaller ones blur into their surroundings).
        scale = np.sqrt(abs(np.linalg.det(out["post_rots"][i][:2, :2].astype(np.float64))))
        for (x, y), value in zip(BLOCK_CENTRES, BLOCK_VALUES, strict=True):
            q = out["post_rots"][i] @ np.array([x, y, 1.0]) + out["post_trans"][i]
            qu, qv = np.rint(q[:2]).astype(int)
            if scale >= 0.5 and 1 <= qu < FINAL[1] - 1 and 1 <= qv < FINAL[0] - 1:
                assert abs(img[qv, qu, 2] - value) <= 3, (i, x, y, img[qv, qu, 2], value)
                blocks_checked += 1
        # Labels and depth: nearest source pixel, aligned with each other and with the image.
        depth, labels = out["depth"][i], out["pv_labels"][i]
        hit = depth > 0
        idx = depth[hit].astype(np.int64) - 1
        iv, iu = idx // W, idx % W
        np.testing.assert_array_equal(labels[hit], _source_label(i)[iv, iu])
        assert np.all(labels[~hit] == 0)
        assert np.abs(np.stack([iu, iv], -1) - src[hit]).max() <= 0.5 + 1e-3
        in_source = (
            (src[..., 0] > -0.49)
            & (src[..., 0] < W - 0.51)
            & (src[..., 1] > -0.49)
            & (src[..., 1] < H - 0.51)
        )
        assert not np.any(in_source & ~hit)
        both = hit & interior
        assert np.abs(decoded[both] - np.stack([iu, iv], -1)[interior[hit]]).max() < 1.5
    assert blocks_checked >= 4 or name == "strong_shrink"


def test_image_aug_composes_with_existing_post_rots():
    ex = _ramp_example()
    first = ImageAug((60, 120), (0.7, 0.9), (0.0, 0.2), (-8.0, 8.0), True, True)
    second = ImageAug(FINAL, (0.6, 0.8), (0.0, 0.2), (-8.0, 8.0), True, True)
    mid = first.random_map(ex, np.random.default_rng(5))
    out = second.random_map(mid, np.random.default_rng(6))
    # The second augmentation alone: post_rots of the intermediate image.
    alone = second.random_map({"images": mid["images"]}, np.random.default_rng(6))
    second_rots, second_trans = alone["post_rots"], alone["post_trans"]
    np.testing.assert_allclose(out["post_rots"], second_rots @ mid["post_rots"], atol=1e-5)
    fv, fu = np.mgrid[0 : FINAL[0], 0 : FINAL[1]]  # [h, w]
    grid = np.stack([fu, fv], -1).astype(np.float64)
    for i in range(len(CAMS)):
        src = _undo(out["post_rots"][i], out["post_trans"][i], grid)
        hit = out["depth"][i] > 0
        idx = out["depth"][i][hit].astype(np.int64) - 1
        # Two nearest-neighbour steps: half a pixel in the source plus half an intermediate pixel (scale >= 0.7).
        assert np.abs(np.stack([idx % W, idx // W], -1) - src[hit]).max() <= 0.5 + 0.5 / 0.7 + 1e-3
        img = out["images"][i].astype(np.float64)
        decoded = np.stack([img[..., 0] * (W - 1) / 255, img[..., 1] * (H - 1) / 255], -1)
        between = _undo(second_rots[i], second_trans[i], grid)  # [h, w, 2] position in the intermediate image
        interior = (src[..., 0] > 4) & (src[..., 0] < W - 5) & (src[..., 1] > 4) & (src[..., 1] < H - 5)
        interior &= (
            (between[..., 0] > 2) & (between[..., 0] < 117) & (between[..., 1] > 2) & (between[..., 1] < 57)
        )
        assert interior.sum() > 100
        err = decoded[interior] - src[interior]
        assert np.abs(err).max() < 1.6 and np.all(np.abs(err.mean(0)) < 0.2)


def test_image_aug_test_time_is_lss_crop():
    aug = ImageAug(FINAL, (0.5, 0.7), (0.0, 0.22), (-10.0, 10.0), True, False)
    # LSS: resize = max(32 / 90, 88 / 160) = 0.55 -> 49 x 88; top = int(0.89 * 49) - 32 = 11; centred: left = 0.
    assert aug.sample_params((H, W), np.random.default_rng(0)) == AugParams(0.55, (0, 11), False, 0.0)
    # Same size in and out: the identity (the world renders at the LSS test crop already).
    ident = ImageAug((H, W), (0.5, 0.7), (0.0, 0.22), (-10.0, 10.0), True, False)
    ex = _random_example()
    out = ident.random_map(ex, np.random.default_rng(0))
    chex.assert_trees_all_equal(out["images"], ex["images"])
    chex.assert_trees_all_equal(out["depth"], ex["depth"])
    np.testing.assert_allclose(out["post_rots"], ex["post_rots"], atol=1e-6)
    np.testing.assert_allclose(out["post_trans"], 0.0, atol=1e-6)


def test_warp_rotation_and_flip_match_pil():
    img = np.random.default_rng(0).integers(0, 256, (40, 40, 3)).astype(np.uint8)
    a = np.array(
        [[np.cos(np.deg2rad(17)), np.sin(np.deg2rad(17))], [-np.sin(np.deg2rad(17)), np.cos(np.deg2rad(17))]]
    )
    params = AugParams(1.0, (0, 0), False, 17.0)
    out = apply_image_aug({"images": img[None]}, [params], (40, 40))
    np.testing.assert_allclose(out["post_rots"][0, :2, :2], a, atol=1e-6)
    pil = np.asarray(Image.fromarray(img).rotate(17, resample=Image.Resampling.BILINEAR))
    assert np.abs(out["images"][0].astype(int) - pil).max() <= 1
    flipped = apply_image_aug({"images": img[None]}, [AugParams(1.0, (0, 0), True, 0.0)], (40, 40))
    np.testing.assert_array_equal(flipped["images"][0], img[:, ::-1])
    np.testing.assert_array_equal(warp_image(img, np.eye(2), np.zeros(2), (40, 40)), img)


def test_image_aug_skips_absent_keys():
    ex = _random_example()
    minimal = {k: ex[k] for k in ("images", "intrinsics", "cam_to_ego")}
    out = ImageAug(FINAL, (0.5, 0.7)).random_map(minimal, np.random.default_rng(0))
    assert set(out) == {"images", "intrinsics", "cam_to_ego", "post_rots", "post_trans"}
    only_depth = ImageAug(FINAL, (0.5, 0.7)).random_map({"depth": ex["depth"]}, np.random.default_rng(0))
    chex.assert_shape(only_depth["depth"], (2, *FINAL))
    with pytest.raises(ValueError):
        ImageAug(FINAL).random_map({"intrinsics": ex["intrinsics"]}, np.random.default_rng(0))
    with pytest.raises(ValueError):
        ImageAug(FINAL, resize_lim=(1.0, 0.5))


def test_bev_flip_projection_is_mirrored():
    ex = _ramp_example()
    out = mirror_example(ex)
    rng = np.random.default_rng(0)
    for i in range(len(CAMS)):
        k, t = ex["intrinsics"][i], ex["cam_to_ego"][i]
        k2, t2 = out["intrinsics"][i], out["cam_to_ego"][i]
        rot = t2[:3, :3].astype(np.float64)
        np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-5)
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-5)
        # Mirrored ego points P (in front of the mirrored camera) and their un-mirrored originals S_e P.
        uv = rng.uniform([0, 0], [W - 1, H - 1], (200, 2))
        cam = np.concatenate([uv, np.ones((200, 1))], -1) @ np.linalg.inv(k2.astype(np.float64)).T
        points = transform_points(t2.astype(np.float64), cam * rng.uniform(2, 40, (200, 1)))  # P
        uv2, z2 = _project(k2, t2, points)
        uv1, z1 = _project(k, t, transform_points(S_E, points))
        np.testing.assert_allclose(uv2, uv, atol=1e-3)
        np.testing.assert_allclose(uv2[:, 0], W - 1 - uv1[:, 0], atol=1e-3)
        np.testing.assert_allclose(uv2[:, 1], uv1[:, 1], atol=1e-3)
        np.testing.assert_allclose(z2, z1, rtol=1e-5)
        # The pixel content moved with the projection.
        pu, pv = np.rint(uv1).astype(int).T
        np.testing.assert_array_equal(out["images"][i][pv, W - 1 - pu], ex["images"][i][pv, pu])
        np.testing.assert_array_equal(out["depth"][i][pv, W - 1 - pu], ex["depth"][i][pv, pu])
        np.testing.assert_array_equal(out["pv_labels"][i][pv, W - 1 - pu], ex["pv_labels"][i][pv, pu])


def test_bev_flip_labels_lidar_and_poses():
    ex = _ramp_example(lidar_points=128)
    out = mirror_example(ex)
    grid = BEVGrid()
    xy = np.random.default_rng(1).uniform(-49.9, 49.9, (500, 2))
    ij, inside = grid.cell_index(xy)
    ij2, inside2 = grid.cell_index(xy * [1, -1])
    assert inside.all() and inside2.all()
    np.testing.assert_array_equal(
        out["bev_labels"][ij2[:, 0], ij2[:, 1]], ex["bev_labels"][ij[:, 0], ij[:, 1]]
    )
    np.testing.assert_array_equal(
        out["bev_visibility"][ij2[:, 0], ij2[:, 1]], ex["bev_visibility"][ij[:, 0], ij[:, 1]]
    )
    s = np.array([1.0, -1.0, 1.0])
    np.testing.assert_allclose(out["lidar_points"], ex["lidar_points"] * s)
    np.testing.assert_allclose(out["next_lidar_points"], ex["next_lidar_points"] * s)
    np.testing.assert_allclose(
        out["lidar_points"] + out["lidar_flow"], (ex["lidar_points"] + ex["lidar_flow"]) * s, atol=1e-5
    )
    # The static-scene flow is still the ego motion of the mirrored poses.
    moved = transform_points(
        out["next_ego_from_ego"].astype(np.float64), out["lidar_points"].astype(np.float64)
    )
    np.testing.assert_allclose(moved, out["lidar_points"] + out["lidar_flow"], atol=1e-4)
    # A mirrored ego point lies at the mirrored world point.
    world = transform_points(out["ego_to_world"].astype(np.float64), out["lidar_points"].astype(np.float64))
    world_ref = transform_points(ex["ego_to_world"].astype(np.float64), ex["lidar_points"].astype(np.float64))
    np.testing.assert_allclose(world, world_ref * s, atol=1e-3)
    for key in ("next_ego_from_ego", "ego_to_world"):
        np.testing.assert_allclose(np.linalg.det(out[key][:3, :3].astype(np.float64)), 1.0, atol=1e-5)
        assert out[key].dtype == np.float32
    chex.assert_trees_all_equal(out["lidar_valid"], ex["lidar_valid"])


def test_bev_flip_twice_is_identity_and_probability():
    ex = _random_example()
    chex.assert_trees_all_close(mirror_example(mirror_example(ex)), ex, atol=1e-4)
    chex.assert_trees_all_equal(BEVFlip(p=0.0).random_map(ex, np.random.default_rng(0)), ex)
    chex.assert_trees_all_equal(BEVFlip(p=1.0).random_map(ex, np.random.default_rng(0)), mirror_example(ex))
    flips = [
        not np.array_equal(BEVFlip(0.5).random_map(ex, np.random.default_rng(s))["images"], ex["images"])
        for s in range(20)
    ]
    assert 0 < sum(flips) < 20


def test_bev_flip_rejects_augmented_images_and_asymmetric_grid():
    ex = ImageAug(FINAL, (0.5, 0.7)).random_map(_random_example(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="before ImageAug"):
        BEVFlip(p=1.0).random_map(ex, np.random.default_rng(0))
    with pytest.raises(ValueError):
        BEVFlip(grid=BEVGrid(ybound=(-10.0, 30.0, 0.5)))
    BEVFlip(grid=BEVGrid())
    lidar_only = {k: _random_example()[k] for k in ("lidar_points", "lidar_flow", "bev_labels")}
    assert set(mirror_example(lidar_only)) == set(lidar_only)


def test_color_jitter():
    ex = _random_example()
    ident = ColorJitter((1.0, 1.0), (1.0, 1.0), (1.0, 1.0), (0.0, 0.0))
    chex.assert_trees_all_equal(ident.random_map(ex, np.random.default_rng(0)), ex)
    jitter = ColorJitter((0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1))
    out = jitter.random_map(ex, np.random.default_rng(0))
    assert out["images"].dtype == np.uint8 and out["images"].shape == ex["images"].shape
    assert not np.array_equal(out["images"], ex["images"])
    assert not np.array_equal(out["images"][0] - ex["images"][0], out["images"][1] - ex["images"][1])
    chex.assert_trees_all_equal(
        {k: v for k, v in out.items() if k != "images"}, {k: v for k, v in ex.items() if k != "images"}
    )
    half = ColorJitter((0.5, 0.5), (1.0, 1.0), (1.0, 1.0)).random_map(ex, np.random.default_rng(0))
    assert np.abs(half["images"].astype(int) - np.rint(ex["images"] * 0.5)).max() <= 1
    grey = ColorJitter((1.0, 1.0), (1.0, 1.0), (0.0, 0.0)).random_map(ex, np.random.default_rng(0))
    assert np.abs(np.diff(grey["images"].astype(int), axis=-1)).max() <= 1
    hue = ColorJitter((1.0, 1.0), (1.0, 1.0), (1.0, 1.0), (0.2, 0.2)).random_map(ex, np.random.default_rng(0))
    luma = np.array([0.299, 0.587, 0.114])
    inner = (ex["images"].min(-1) > 60) & (ex["images"].max(-1) < 190)  # no clipping of the rotated chroma
    assert np.abs(hue["images"] @ luma - ex["images"] @ luma)[inner].max() < 1.0
    assert ColorJitter().random_map({"depth": ex["depth"]}, np.random.default_rng(0)).keys() == {"depth"}


def test_select_cameras_keeps_per_camera_keys_together():
    cams = NUSCENES_CAMERAS
    n = len(cams)
    intrinsics, cam_to_ego = camera_rig(cams, (H, W))
    ex = {
        "images": np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 8, 12, 3)).copy(),
        "intrinsics": intrinsics,
        "cam_to_ego": cam_to_ego,
        "post_rots": np.eye(3, dtype=np.float32) * np.arange(1, n + 1, dtype=np.float32)[:, None, None],
        "post_trans": np.arange(3 * n, dtype=np.float32).reshape(n, 3),
        "pv_labels": np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, 8, 12)).copy(),
        "depth": np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, 8, 12)).copy(),
        "bev_visibility": np.ones((4, 4), np.uint8),
    }
    subsets = set()
    for seed in range(10):
        out = SelectCameras(num=5).random_map(ex, np.random.default_rng(seed))
        keep = out["images"][:, 0, 0, 0].astype(int)
        assert len(set(keep)) == 5 and np.all(np.diff(keep) > 0)
        subsets.add(tuple(keep))
        for key in ("images", "intrinsics", "cam_to_ego", "post_rots", "post_trans", "pv_labels", "depth"):
            np.testing.assert_array_equal(out[key], ex[key][keep])
        chex.assert_trees_all_equal(out["bev_visibility"], ex["bev_visibility"])
    assert len(subsets) > 1
    first = SelectCameras(num=3, train=False).random_map(ex, np.random.default_rng(0))
    np.testing.assert_array_equal(first["intrinsics"], intrinsics[:3])
    np.testing.assert_array_equal(first["images"][:, 0, 0, 0], [0, 1, 2])
    with pytest.raises(ValueError):
        SelectCameras(num=7).random_map(ex, np.random.default_rng(0))
    with pytest.raises(ValueError):
        SelectCameras(num=2).random_map({**ex, "depth": ex["depth"][:4]}, np.random.default_rng(0))


TRANSFORMS = [
    ImageAug(FINAL, (0.5, 0.7), (0.0, 0.22), (-10.0, 10.0)),
    BEVFlip(p=0.5, grid=BEVGrid()),
    ColorJitter(hue=(-0.1, 0.1)),
    SelectCameras(num=1),
]


@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: type(t).__name__)
def test_pickle_and_determinism(transform):
    ex = _random_example()
    again = pickle.loads(pickle.dumps(transform))
    assert again == transform and isinstance(again, grain.transforms.RandomMap)
    a = transform.random_map(ex, np.random.default_rng(7))
    b = again.random_map(ex, np.random.default_rng(7))
    chex.assert_trees_all_equal(a, b)
    outputs = [transform.random_map(ex, np.random.default_rng(s)) for s in range(8)]
    assert any(not np.array_equal(o["images"], outputs[0]["images"]) for o in outputs[1:])
    # Through a Grain pipeline: same seed, same result; the input example is not modified.
    before = {k: np.copy(v) for k, v in ex.items()}
    ds = grain.MapDataset.source([ex]).random_map(transform, seed=3)
    chex.assert_trees_all_equal(ds[0], ds[0])
    chex.assert_trees_all_equal(ex, before)
