"""Tests of the flat-ground homography, BEV -> camera back-projection and the PGCM score (NRSeg, issue 11).

References are independent of the module: analytic pixels of a level camera, direct projection
``K (R p + t) / depth`` in float64, ray-plane intersection ``o + lam d``, LSS lifting (``frustum_to_ego``) and,
end to end, the world's own perspective labels.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bevjax.geometry import BEVGrid, frustum_to_ego, invert_rigid, transform_points
from bevjax.geometry.homography import (
    PGCM_TAU,
    bev_mask_to_camera,
    ground_homography,
    ground_homography_inverse,
    pgcm_score,
    pgcm_weight,
    pixel_ground_points,
)
from bevjax.schema import BEV_CLASS_ID, NUSCENES_CAMERAS, SEMANTIC_CLASS_ID
from bevjax.world import render_sample, tiny_config

# A level front camera 1.5 m above the ground at the ego origin: camera x = -ego y, y = -ego z, z = ego x.
F, CX, CY, HEIGHT = 100.0, 50.0, 40.3, 1.5
K_SIMPLE = np.array([[F, 0, CX], [0, F, CY], [0, 0, 1]])
FRONT = np.eye(4)
FRONT[:3, :3] = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float)
FRONT[:3, 3] = (0.0, 0.0, HEIGHT)


def _rotation(rng, yaw, pitch, roll):
    """cam_to_ego rotation of a camera looking along ego yaw, tilted down by pitch, rolled by roll."""
    base = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float)  # camera axes in a level, forward frame

    def rot(axis, a):
        c, s = np.cos(a), np.sin(a)
        i, j = [(1, 2), (0, 2), (0, 1)][axis]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        return m

    # yaw about ego z, pitch about the camera-right axis (ego -y), roll about the optical axis (ego x).
    return rot(2, yaw) @ rot(1, -pitch) @ rot(0, roll) @ base


def _random_rig(rng, n, hw=(48, 120)):
    """n random cameras 1-2.5 m above the ground, looking 5-25 degrees down, with LSS-like augmentation
    (their images of size ``hw`` see the ground in their lower part)."""
    h, w = hw
    k = np.zeros((n, 3, 3))
    f = rng.uniform(0.4, 1.5, n) * w
    k[:, 0, 0], k[:, 1, 1] = f, f * rng.uniform(0.95, 1.05, n)
    k[:, 0, 2], k[:, 1, 2], k[:, 2, 2] = rng.uniform(0.4, 0.6, n) * w, rng.uniform(0.3, 0.6, n) * h, 1
    c2e = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        c2e[i, :3, :3] = _rotation(
            rng, rng.uniform(-np.pi, np.pi), np.deg2rad(rng.uniform(5, 25)), np.deg2rad(rng.uniform(-5, 5))
        )
    c2e[:, :3, 3] = np.stack([rng.uniform(-2, 2, n), rng.uniform(-1, 1, n), rng.uniform(1, 2.5, n)], -1)
    # LSS augmentation: resize by s, rotate by a degrees about the image centre, crop (translation).
    post_rots, post_trans = np.tile(np.eye(3), (n, 1, 1)), np.zeros((n, 3))
    for i in range(n):
        s, a = rng.uniform(0.8, 1.2), np.deg2rad(rng.uniform(-5.4, 5.4))
        r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        post_rots[i, :2, :2] = r * s
        post_trans[i, :2] = rng.uniform(-0.1, 0.1, 2) * np.array([w, h]) + (1 - s) * np.array([w, h]) / 2
    return k, c2e, post_rots, post_trans


def _project(points, k, c2e, post_rots, post_trans):
    """float64 reference: (u', v', depth) of ego points [p, 3] in one camera, LSS ``post_rots @ (u, v, d) + t``."""
    cam = transform_points(invert_rigid(c2e), points)  # p 3
    depth = cam[:, 2]
    uv = (cam @ k.T)[:, :2] / depth[:, None]
    uvd = np.concatenate([uv, depth[:, None]], -1) @ post_rots.T + post_trans
    return uvd


def test_known_ground_point_lands_on_expected_pixel():
    h = ground_homography(K_SIMPLE[None], FRONT[None])[0]
    for x, y in ((10.0, 0.0), (10.0, 2.0), (20.0, -3.0)):
        q = h @ np.array([x, y, 1.0])
        # Camera coordinates (-y, HEIGHT, x): u = CX - F y / x, v = CY + F HEIGHT / x, depth x.
        np.testing.assert_allclose(q[:2] / q[2], (CX - F * y / x, CY + F * HEIGHT / x), atol=1e-9)
        np.testing.assert_allclose(q[2], x, atol=1e-12)
    # Ground 10 m ahead lies 15 px below the principal point; the horizon is the row v = CY.
    np.testing.assert_allclose(ground_homography(K_SIMPLE, FRONT) @ [10, 0, 1], [10 * CX, 10 * CY + 150, 10])


def test_bev_cell_backprojects_onto_its_pixels():
    """One True cell ([10, 11] x [2, 3] m) lights exactly the pixels whose rays land in it (analytic)."""
    grid = BEVGrid((0.0, 20.0, 1.0), (-10.0, 10.0, 1.0))
    mask = np.zeros(grid.shape[:2], bool)
    mask[10, 12] = True  # centre (10.5, 2.5)
    hw = (80, 100)
    out = np.asarray(bev_mask_to_camera(mask, grid, K_SIMPLE[None], FRONT[None], hw))[0]
    v, u = np.meshgrid(np.arange(hw[0]), np.arange(hw[1]), indexing="ij")
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(v > CY, F * HEIGHT / (v - CY), np.inf)  # ground distance of row v (inf above horizon)
        y = (CX - u) * x / F
    expected = (x >= 10) & (x < 11) & (y >= 2) & (y < 3)
    np.testing.assert_array_equal(out, expected)
    assert 10 < expected.sum() < 40, expected.sum()
    u_c, v_c = CX - F * 2.5 / 10.5, CY + F * HEIGHT / 10.5  # the cell centre's pixel (26.2, 54.6)
    assert out[int(round(v_c)), int(round(u_c))]


def test_homography_matches_direct_projection_with_augmentation():
    rng = np.random.default_rng(0)
    n = 8
    k, c2e, post_rots, post_trans = _random_rig(rng, n)
    for z0 in (0.0, -0.3):
        h = ground_homography(k, c2e, post_rots, post_trans, ground_z=z0)  # NumPy, float64
        h_jax = np.asarray(ground_homography(*(jnp.asarray(a) for a in (k, c2e, post_rots, post_trans)), z0))
        h_inv = ground_homography_inverse(k, c2e, post_rots, post_trans, ground_z=z0)
        assert h.shape == h_inv.shape == (n, 3, 3) and h.dtype == np.float64
        np.testing.assert_allclose(h_inv @ h, np.tile(np.eye(3), (n, 1, 1)), atol=1e-9)
        for i in range(n):
            # Ground points 3-40 m in front of the camera (along its optical axis projected on the ground).
            fwd = c2e[i, :2, 2] / np.linalg.norm(c2e[i, :2, 2])
            side = np.array([-fwd[1], fwd[0]])
            a, b = rng.uniform(3, 40, 64), rng.uniform(-10, 10, 64)
            xy = c2e[i, :2, 3] + a[:, None] * fwd + b[:, None] * side
            pts = np.concatenate([xy, np.full((64, 1), z0)], -1)
            ref = _project(pts, k[i], c2e[i], post_rots[i], post_trans[i])  # u' v' depth
            assert np.all(ref[:, 2] > 0)
            q = np.concatenate([xy, np.ones((64, 1))], -1) @ h[i].T
            np.testing.assert_allclose(q[:, :2] / q[:, 2:], ref[:, :2], rtol=0, atol=1e-9)
            np.testing.assert_allclose(q[:, 2], ref[:, 2], rtol=1e-12)  # third component = z-depth
            q32 = np.concatenate([xy, np.ones((64, 1))], -1) @ h_jax[i].T.astype(np.float64)
            np.testing.assert_allclose(q32[:, :2] / q32[:, 2:], ref[:, :2], rtol=0, atol=2e-2)
            # The inverse maps the pixels back to the ground points, third component 1 / depth.
            g = np.concatenate([ref[:, :2], np.ones((64, 1))], -1) @ h_inv[i].T
            np.testing.assert_allclose(g[:, :2] / g[:, 2:], xy, atol=1e-8)
            np.testing.assert_allclose(g[:, 2], 1 / ref[:, 2], rtol=1e-9)


def test_pixel_ground_points_agree_with_lss_lifting():
    """Ray-plane points of augmented pixels, lifted back by ``frustum_to_ego`` at their depth, lie on z0."""
    rng = np.random.default_rng(1)
    k, c2e, post_rots, post_trans = _random_rig(rng, 3)
    hw = (48, 120)
    xy, hit = pixel_ground_points(k, c2e, hw, post_rots, post_trans, ground_z=0.0)  # n 1 h w 2
    xy, hit = np.asarray(xy)[:, 0], np.asarray(hit)[:, 0]
    v, u = np.meshgrid(np.arange(hw[0], dtype=float), np.arange(hw[1], dtype=float), indexing="ij")
    for i in range(3):
        near = hit[i] & (np.linalg.norm(xy[i] - c2e[i, :2, 3], axis=-1) < 60)
        assert near.sum() > 200, near.sum()
        near &= np.cumsum(near.reshape(-1)).reshape(near.shape) <= 200  # the same shape for every camera
        # Above the horizon: no hit. Reference: the ray direction's ego z must point down for a hit.
        pix = np.stack([u, v, np.ones_like(u)], -1)
        aug = np.eye(3)
        aug[:2, :2], aug[:2, 2] = post_rots[i, :2, :2], post_trans[i, :2]
        d = pix @ (c2e[i, :3, :3] @ np.linalg.inv(k[i]) @ np.linalg.inv(aug)).T
        clear = np.abs(d[..., 2]) > 1e-3 * np.linalg.norm(d, axis=-1)  # leave the horizon row itself out
        np.testing.assert_array_equal(hit[i][clear], (d[..., 2] < 0)[clear])
        # Depth of each ground point, then LSS lifting of (u', v', depth).
        pts = np.concatenate([xy[i][near], np.zeros((near.sum(), 1))], -1)
        depth = transform_points(invert_rigid(c2e[i]), pts)[:, 2]
        frustum = np.stack([u[near], v[near], depth], -1)[:, None, None, :]  # p 1 1 3 (as d fh fw 3)
        lifted = frustum_to_ego(
            frustum, k[i][None, None], c2e[i][None, None], post_rots[i][None, None], post_trans[i][None, None]
        )
        lifted = np.asarray(lifted)[0, 0, :, 0, 0]  # p 3
        error = np.linalg.norm(lifted - pts, axis=-1)  # float32 lifting: relative to the depth
        assert np.all(error < 1e-3 * (1 + depth)), (error / (1 + depth)).max()


def _reference_backprojection(mask, grid, k, c2e, post_rots, post_trans, hw, supersample):
    """float64 NumPy reference: ray o + lam d meets z = 0 at lam = -o_z / d_z > 0; majority of sub-rays."""
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    v, u = np.meshgrid(np.arange(hw[0], dtype=float), np.arange(hw[1], dtype=float), indexing="ij")
    out = []
    for i in range(len(k)):
        aug = np.eye(3)
        aug[:2, :2], aug[:2, 2] = post_rots[i, :2, :2], post_trans[i, :2]
        ray = c2e[i, :3, :3] @ np.linalg.inv(k[i]) @ np.linalg.inv(aug)
        votes = np.zeros(hw)
        for dv in offsets:
            for du in offsets:
                d = np.stack([u + du, v + dv, np.ones_like(u)], -1) @ ray.T  # h w 3
                with np.errstate(divide="ignore", invalid="ignore"):
                    lam = -c2e[i, 2, 3] / d[..., 2]
                front = lam > 0
                p = c2e[i, :2, 3] + np.where(front, lam, 0)[..., None] * d[..., :2]
                ij, inside = grid.cell_index(p)
                ij = np.where((front & inside)[..., None], ij, 0)
                votes += front & inside & mask[ij[..., 0], ij[..., 1]]
        out.append(votes / supersample**2 >= 0.5)
    return np.stack(out)


@pytest.mark.parametrize("supersample", [1, 2])
def test_backprojection_matches_ray_plane_reference(supersample):
    rng = np.random.default_rng(2)
    hw = (40, 96)
    k, c2e, post_rots, post_trans = _random_rig(rng, 4, hw)
    grid = BEVGrid((-20.0, 20.0, 0.5), (-20.0, 20.0, 0.5))
    mask = rng.random(grid.shape[:2]) < 0.5
    mask[20:40, :] = True  # a band, so that runs of pixels read True
    out = np.asarray(
        bev_mask_to_camera(mask, grid, k, c2e, hw, post_rots, post_trans, supersample=supersample)
    )
    ref = _reference_backprojection(mask, grid, k, c2e, post_rots, post_trans, hw, supersample)
    assert out.shape == (4,) + hw and out.dtype == bool
    assert 0.05 < ref.mean() < 0.95, ref.mean()
    # float32 vs float64 may disagree for rays that end on a cell boundary.
    assert np.mean(out != ref) < 2e-3, np.mean(out != ref)


def test_batched_masks_and_cameras():
    rng = np.random.default_rng(3)
    hw = (24, 40)
    k, c2e, post_rots, post_trans = _random_rig(rng, 2, hw)
    grid = BEVGrid((-20.0, 20.0, 1.0), (-20.0, 20.0, 1.0))
    masks = rng.random((3,) + grid.shape[:2]) < 0.5
    single = np.stack([bev_mask_to_camera(m, grid, k, c2e, hw, post_rots, post_trans) for m in masks])
    shared, valid = bev_mask_to_camera(masks, grid, k, c2e, hw, post_rots, post_trans, return_valid=True)
    np.testing.assert_array_equal(np.asarray(shared), single)
    assert valid.shape == (2,) + hw and np.asarray(valid).any()
    assert not np.any(np.asarray(shared) & ~np.asarray(valid)[None])
    frames = [np.stack([a] * 3) for a in (k, c2e, post_rots, post_trans)]  # per-frame cameras, b = 3
    per_frame = bev_mask_to_camera(masks, grid, frames[0], frames[1], hw, frames[2], frames[3])
    np.testing.assert_array_equal(np.asarray(per_frame), single)
    one_mask = bev_mask_to_camera(masks[1], grid, frames[0], frames[1], hw, frames[2], frames[3])
    np.testing.assert_array_equal(np.asarray(one_mask), np.stack([single[1]] * 3))
    with pytest.raises(ValueError, match="grid"):
        bev_mask_to_camera(masks[:, :-1], grid, k, c2e, hw)


# End to end on the embedded world: six cameras at 64 x 176, a 0.5 m grid of 50 m.
WORLD = tiny_config(
    cameras=NUSCENES_CAMERAS, image_hw=(64, 176), grid=BEVGrid((-25.0, 25.0, 0.5), (-25.0, 25.0, 0.5))
)
WORLD_CASES = [("boston", 0), ("singapore", 9), ("boston_synthetic", 1)]
GROUND = [SEMANTIC_CLASS_ID[c] for c in ("road", "sidewalk", "parking", "terrain")]


@pytest.fixture(scope="module")
def world():
    return {case: render_sample(WORLD, case[0], "train", case[1]) for case in WORLD_CASES}


def _world_scores(s, bev_mask=None):
    drivable = s["bev_labels"][..., BEV_CLASS_ID["drivable_area"]] if bev_mask is None else bev_mask
    back, valid = bev_mask_to_camera(
        drivable, WORLD.grid, s["intrinsics"], s["cam_to_ego"], WORLD.image_hw, s["post_rots"], s["post_trans"],
        return_valid=True,
    )  # fmt: skip
    back, valid = np.asarray(back), np.asarray(valid)
    road = s["pv_labels"] == SEMANTIC_CLASS_ID["road"]
    on_ground = np.isin(s["pv_labels"], GROUND)  # leaves out pixels where objects hide the ground
    return float(pgcm_score(road, back, valid)), float(pgcm_score(road, back, valid & on_ground))


def test_backprojected_drivable_area_matches_world_perspective_labels(world):
    """Sign conventions end to end: BEV drivable area through the homography vs the rendered road pixels.

    Measured (``R`` over pixels that see the ground inside the grid / those of them labelled ground):
    boston 0: 0.933 / 0.957, singapore 9: 0.955 / 0.973, boston_synthetic 1 (noise 0.76): 0.968 / 0.968
    (other frames: boston_synthetic 5, noise 0.55: 0.857 / 0.984; singapore_synthetic 2: 0.765 / 0.965; boston
    13: 0.831 / 0.970). The gap between the two is occlusion: vehicles, buildings and trees that stand on (or
    in front of) the road. Wrong conventions score far lower: the transposed mask
    (roads turned by 90 degrees) 0.0-0.22, the left-right mirrored one 0.35-0.43.
    """
    for case, s in world.items():
        r_valid, r_ground = _world_scores(s)
        assert r_ground > 0.9, (case, r_ground)
        assert r_valid > 0.75, (case, r_valid)
        drivable = s["bev_labels"][..., BEV_CLASS_ID["drivable_area"]]
        assert _world_scores(s, drivable.T)[1] < r_ground - 0.15, case
    s = world[("boston", 0)]
    drivable = s["bev_labels"][..., BEV_CLASS_ID["drivable_area"]]
    assert _world_scores(s, drivable[:, ::-1])[1] < 0.75  # left-right mirrored


def test_synthetic_pv_labels_follow_the_true_scene(world):
    """In ``_synthetic`` domains only the images show the perturbed scene: pv_labels, depth and bev_labels
    are the true scene's (``bevjax.world.sample.render_sample``), so the labels agree as well as on clean
    frames whatever the noise level; PGCM's R has to come from a segmenter run on the images."""
    s = world[("boston_synthetic", 1)]
    assert float(s["noise_level"]) > 0.7
    assert _world_scores(s)[1] > 0.9


def test_pgcm_score_and_weight_against_numpy():
    rng = np.random.default_rng(4)
    pred = rng.random((3, 6, 16, 24)) < 0.4
    back = pred ^ (rng.random(pred.shape) < 0.2)
    valid = rng.random((6, 16, 24)) < 0.8
    r = pgcm_score(pred, back, valid)
    p, b = pred & valid, back & valid
    expected = [np.sum(p[i] & b[i]) / np.sum(p[i] | b[i]) for i in range(3)]
    np.testing.assert_allclose(r, expected, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(jax.jit(pgcm_score)(pred, back, valid)), expected, rtol=1e-6)
    np.testing.assert_allclose(
        pgcm_score(pred[0], back[0]), np.sum(pred[0] & back[0]) / np.sum(pred[0] | back[0])
    )
    # Empty union: R = 1; one empty mask against a non-empty one: R = 0.
    empty = np.zeros((6, 16, 24), bool)
    assert pgcm_score(empty, empty) == 1.0 and float(pgcm_score(jnp.asarray(empty), empty)) == 1.0
    assert pgcm_score(empty, pred[0]) == 0.0
    assert pgcm_score(pred[0], back[0], np.zeros_like(valid)) == 1.0  # nothing valid: nothing disagrees

    scores = np.array([0.0, 0.3, 0.85, 0.850001, 0.9, 0.95, 1.0])
    for tau in (PGCM_TAU["default"], PGCM_TAU["day_night"], PGCM_TAU["dry_rain"]):
        expected = np.array([1.0 if x > tau else x for x in scores])
        np.testing.assert_array_equal(pgcm_weight(scores, tau), expected)
        np.testing.assert_allclose(np.asarray(pgcm_weight(jnp.asarray(scores), tau)), expected, rtol=1e-6)
    assert PGCM_TAU == {"default": 0.85, "day_night": 0.9, "dry_rain": 1.0}
    np.testing.assert_array_equal(pgcm_weight(scores, 1.0), scores)  # dry -> rain: w = R
