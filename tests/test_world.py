"""Tests of the embedded driving world: geometry, labels, flow and determinism against independent references."""

import chex
import numpy as np
import pytest

from bevjax.geometry import BEVGrid, invert_rigid, transform_points
from bevjax.schema import BEV_CLASS_ID, SEMANTIC_CLASS_ID, check_example
from bevjax.world import WorldConfig, example_spec_for, parse_domain, render_sample
from bevjax.world import layout as L
from bevjax.world import sample as S
from bevjax.world.raycast import NUM_BOX_FIELDS, F, box_hits
from bevjax.world.rig import camera_rig

CONFIG = WorldConfig(
    cameras=("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK"),
    image_hw=(64, 176),
    grid=BEVGrid((-30.0, 30.0, 0.5), (-30.0, 30.0, 0.5)),
    frames_per_sequence=6,
    lidar_beams=16,
    lidar_azimuths=720,
    raster_size_m=320.0,
    raster_res=0.1,
    max_boxes=128,
)
CASES = [("boston", 0), ("boston", 4), ("singapore", 7), ("boston_night", 2)]


@pytest.fixture(scope="module")
def samples():
    return {case: render_sample(CONFIG, case[0], "train", case[1]) for case in CASES}


def _project(points_ego, intrinsics, cam_to_ego):
    cam = transform_points(invert_rigid(cam_to_ego.astype(np.float64)), points_ego.astype(np.float64))
    uv = cam[:, :2] / np.maximum(cam[:, 2:3], 1e-9) @ intrinsics[:2, :2].T + intrinsics[:2, 2]
    return cam[:, 2], np.round(uv).astype(np.int64)


def test_schema(samples):
    for s in samples.values():
        check_example(s, example_spec_for(CONFIG))


def test_determinism(samples):
    S.scene_for.cache_clear()
    again = render_sample(CONFIG, "boston", "train", 4)
    chex.assert_trees_all_equal(again, samples[("boston", 4)])
    other = render_sample(CONFIG, "boston", "train", 5)
    assert not np.array_equal(other["images"], again["images"])
    assert int(again["sequence_id"]) == 0 and int(again["frame_index"]) == 4
    assert again["timestamp"] == pytest.approx(4 / CONFIG.keyframe_hz)


def test_lidar_vehicle_points_project_onto_vehicle_pixels(samples):
    h, w = CONFIG.image_hw
    hits = total = 0
    for s in samples.values():
        vehicle = s["lidar_valid"] & (s["lidar_class"] == SEMANTIC_CLASS_ID["vehicle"])
        pts = s["lidar_points"][vehicle]
        for k in range(len(CONFIG.cameras)):
            z, uv = _project(pts, s["intrinsics"][k], s["cam_to_ego"][k])
            inside = (z > 0.5) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
            labels = s["pv_labels"][k][uv[inside, 1], uv[inside, 0]]
            hits += int(np.sum(labels == SEMANTIC_CLASS_ID["vehicle"]))
            total += int(inside.sum())
    assert total > 200, total
    assert hits / total > 0.9, (hits, total)


def test_drivable_lidar_points_fall_in_drivable_cells(samples):
    grid = CONFIG.grid
    agree = total = 0
    for s in samples.values():
        road = s["lidar_valid"] & s["lidar_ground"] & (s["lidar_class"] == SEMANTIC_CLASS_ID["road"])
        ij, inside = grid.cell_index(s["lidar_points"][road])
        ij = ij[inside]
        agree += int(s["bev_labels"][ij[:, 0], ij[:, 1], BEV_CLASS_ID["drivable_area"]].sum())
        total += len(ij)
    assert total > 1000
    assert agree / total > 0.97, (agree, total)


def _box_surface_distance(points, row):
    """Distance of world points [p, 3] to the surface of a box row (NumPy, float64)."""
    rel = points - row[0:3]
    c, s = row[F["cos"]], row[F["sin"]]
    local = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], -1)
    half = row[F["hx"] : F["hz"] + 1]
    outside = np.linalg.norm(np.maximum(np.abs(local) - half, 0), axis=1)
    inside = np.min(half - np.abs(local), axis=1)
    return np.where(outside > 0, outside, np.abs(inside))


def test_flow_moves_object_points_onto_their_surface_in_next_sweep(samples):
    checked = moving = 0
    for (domain, index), s in samples.items():
        scene = S.scene_for(CONFIG, domain, "train", index // CONFIG.frames_per_sequence)
        t1 = s["timestamp"] + 1.0 / CONFIG.lidar_hz
        ego1 = S.ego_pose(scene, t1)
        agents1 = S.agent_rows(scene, t1)
        moved = transform_points(ego1, (s["lidar_points"] + s["lidar_flow"]).astype(np.float64))
        for inst in np.unique(s["lidar_instance"][s["lidar_valid"] & (s["lidar_instance"] > 0)]):
            sel = s["lidar_valid"] & (s["lidar_instance"] == inst)
            dist = _box_surface_distance(moved[sel], agents1[inst - 1].astype(np.float64))
            np.testing.assert_array_less(dist, 2e-3)
            checked += int(sel.sum())
            moving += int(scene.agents[inst - 1].speed > 0)
    assert checked > 100 and moving > 0


def test_static_flow_is_ego_motion(samples):
    for s in samples.values():
        static = s["lidar_valid"] & (s["lidar_instance"] == 0)
        expected = (
            transform_points(s["next_ego_from_ego"].astype(np.float64), s["lidar_points"][static])
            - s["lidar_points"][static]
        )
        np.testing.assert_allclose(s["lidar_flow"][static], expected, atol=2e-3)


def test_camera_depth_agrees_with_lidar_range(samples):
    h, w = CONFIG.image_hw
    errors = []
    for s in samples.values():
        on_box = s["lidar_valid"] & ~s["lidar_ground"]
        pts = s["lidar_points"][on_box]
        for k in range(len(CONFIG.cameras)):
            z, uv = _project(pts, s["intrinsics"][k], s["cam_to_ego"][k])
            inside = (z > 1.0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
            d = s["depth"][k][uv[inside, 1], uv[inside, 0]]
            errors.append(np.abs(d - z[inside]) / z[inside])
    errors = np.concatenate(errors)
    assert len(errors) > 500
    # Same surface seen by both sensors: depth equals the LiDAR point's camera z up to pixel rounding; the
    # rest are points the camera sees occluded (different viewpoints).
    assert np.median(errors) < 0.02, np.median(errors)
    assert np.mean(errors < 0.05) > 0.85, np.mean(errors < 0.05)


def test_box_hits_match_bruteforce_float64():
    rng = np.random.default_rng(0)
    boxes = np.zeros((12, NUM_BOX_FIELDS), np.float32)
    boxes[:, 0:3] = rng.uniform(-10, 10, (12, 3))
    boxes[:, 3:6] = rng.uniform(0.3, 3, (12, 3))
    yaw = rng.uniform(-np.pi, np.pi, 12)
    boxes[:, F["cos"]], boxes[:, F["sin"]] = np.cos(yaw), np.sin(yaw)
    boxes[:, F["valid"]] = 1
    boxes[3, F["valid"]] = 0
    origin = rng.uniform(-15, 15, (300, 3)).astype(np.float32)
    direction = rng.normal(size=(300, 3)).astype(np.float32)
    aim = boxes[rng.integers(0, 12, 150), 0:3] + rng.normal(0, 1.0, (150, 3))  # half the rays aim at boxes
    direction[:150] = (aim - origin[:150]) / rng.uniform(5, 20, (150, 1))
    t, index = (np.asarray(a) for a in box_hits(origin, direction, boxes))

    # Brute force: march each ray finely (float64) and take the first sample inside a box. Rays that start
    # inside a box are excluded: by design they do not hit it.
    b = boxes.astype(np.float64)
    ts = np.linspace(0.0, 40.0, 40001)
    expected = np.full(len(origin), np.inf)
    starts_inside = np.zeros(len(origin), bool)
    for r in range(len(origin)):
        p = origin[r] + ts[:, None] * direction[r].astype(np.float64)
        for j in range(len(b)):
            if b[j, F["valid"]] == 0:
                continue
            rel = p - b[j, 0:3]
            c, s = b[j, F["cos"]], b[j, F["sin"]]
            loc = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], -1)
            inside = np.all(np.abs(loc) <= b[j, 3:6], axis=1)
            starts_inside[r] |= inside[0]
            if inside.any():
                expected[r] = min(expected[r], ts[np.argmax(inside)])
    keep = ~starts_inside & ((t < 39.0) | ~np.isfinite(t))
    finite = np.isfinite(expected) & keep
    assert finite.sum() > 20
    np.testing.assert_array_equal(np.isfinite(t[keep]), np.isfinite(expected[keep]))
    np.testing.assert_allclose(t[finite], expected[finite], atol=2e-3)
    assert not np.any(index[finite] == 3)


def test_front_camera_sees_point_ahead_near_principal_point():
    intrinsics, cam_to_ego = camera_rig(("CAM_FRONT",), (128, 352))
    np.testing.assert_allclose(intrinsics[0, 0, 0], 1266.417 * 0.22, rtol=1e-4)
    z, uv = _project(np.array([[30.0, 0.0, 1.5]]), intrinsics[0], cam_to_ego[0])
    assert z[0] == pytest.approx(28.3, abs=0.1)
    assert abs(uv[0, 0] - intrinsics[0, 0, 2]) < 3 and abs(uv[0, 1] - intrinsics[0, 1, 2]) < 3
    np.testing.assert_allclose(np.linalg.det(cam_to_ego[0, :3, :3]), 1.0, atol=1e-5)


def test_bev_labels_are_consistent(samples):
    for s in samples.values():
        lab = s["bev_labels"]
        for sub in ("ped_crossing", "stop_line"):
            on_sub = lab[..., BEV_CLASS_ID[sub]] > 0
            if on_sub.any():
                assert np.mean(lab[..., BEV_CLASS_ID["drivable_area"]][on_sub]) > 0.75, sub
        assert not np.any(lab[..., BEV_CLASS_ID["drivable_area"]] & lab[..., BEV_CLASS_ID["walkway"]])
        assert s["bev_visibility"].mean() > 0.05
    assert any(s["bev_labels"][..., BEV_CLASS_ID["vehicle"]].any() for s in samples.values())


def test_domains_differ_and_parse():
    with pytest.raises(ValueError, match="unknown world domain 'paris'"):
        parse_domain("paris")
    assert parse_domain("singapore_night_rain").city.left_hand_traffic


def test_night_is_darker(samples):
    assert samples[("boston_night", 2)]["images"].mean() < 0.5 * samples[("boston", 0)]["images"].mean()


def test_synthetic_perturbation_scales_with_level():
    scene = S.scene_for(CONFIG, "boston", "train", 0)
    ego = S.ego_pose(scene, 0.0)
    rows = np.concatenate([S.agent_rows(scene, 0.0), S.static_rows(scene)])
    same, warp = S.perturb(rows, scene, ego, 0.0, np.random.default_rng(0))
    np.testing.assert_allclose(same, rows, atol=1e-6)
    assert np.all(warp["amp"] == 0)
    noisy, warp = S.perturb(rows, scene, ego, 1.0, np.random.default_rng(0))
    objects = rows[:, F["inst"]] > 0
    shift = np.linalg.norm(noisy[: len(rows)][objects, 0:2] - rows[objects, 0:2], axis=1)
    assert shift.mean() > 0.5 and np.all(warp["amp"] == 1.5)
    assert np.mean(noisy[: len(rows)][objects, F["valid"]] == 0) > 0.2
    s = render_sample(CONFIG, "boston_synthetic", "train", 1)
    assert 0.0 <= float(s["noise_level"]) <= 1.0


def test_ground_raster_bits_exclusive():
    scene = S.scene_for(CONFIG, "singapore", "train", 1)
    r = scene.raster
    assert not np.any((r & L.DRIVABLE) & (r & L.WALKWAY))
    assert not np.any(((r & L.CROSSING) > 0) & ((r & L.DRIVABLE) == 0))
    assert (r & L.CROSSING).any() or (r & L.CARPARK).any()
