"""Tests of the Argoverse 2 log reader on the real sample log in ``../shared/data`` (skipped when it is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bevjax.data.av2 import AV2Log, read_columns
from bevjax.geometry.transforms import points_in_boxes, points_in_each_box, pose2d, transform_points

LOG_DIR = (
    Path(__file__).resolve().parents[1]
    / ".."
    / "shared"
    / "data"
    / "av2"
    / "sensor"
    / "val"
    / "7fab2350-7eaf-3b7e-a39d-6937a4c1bede"
)


@pytest.fixture(scope="module")
def log(av2_log) -> AV2Log:
    return av2_log


@pytest.fixture(scope="module")
def pair(log):
    t0, t1 = log.lidar_timestamps()[:2]
    return {"t0": t0, "t1": t1, "sweep": log.load_sweep(t0), "flow": log.load_flow_labels()}


def test_timestamps_and_shapes(log, pair):
    stamps = log.lidar_timestamps()
    assert stamps.dtype == np.int64 and len(stamps) == 2 and np.all(np.diff(stamps) > 0)
    # The sweeps are 0.1 s apart.
    assert abs((stamps[1] - stamps[0]) * 1e-9 - 0.1) < 0.01
    sweep, flow = pair["sweep"], pair["flow"]
    n = len(sweep["lidar_points"])
    assert n > 1000
    assert sweep["lidar_points"].shape == (n, 3) and sweep["lidar_points"].dtype == np.float32
    assert sweep["intensity"].shape == (n,) and sweep["intensity"].dtype == np.float32
    assert flow["lidar_flow"].shape == (n, 3) and flow["lidar_flow"].dtype == np.float32
    for key in ("category_index", "dynamic", "lidar_ground"):
        assert flow[key].shape == (n,), key
    assert np.all(np.isfinite(sweep["lidar_points"])) and np.all(np.isfinite(flow["lidar_flow"]))
    # A roof-mounted LiDAR: most returns within 100 m, ground near z = 0 in the ego frame.
    assert np.median(np.linalg.norm(sweep["lidar_points"][:, :2], axis=-1)) < 100
    assert abs(np.median(sweep["lidar_points"][flow["lidar_ground"], 2])) < 0.5


def test_pose_ego_motion_matches_stored(log, pair):
    stored = log.load_ego_motion()
    from_poses = log.next_ego_from_ego(pair["t0"], pair["t1"])
    # ego_motion.npz is stored at reduced precision (translations to ~1e-3 m).
    np.testing.assert_allclose(from_poses[:3, :3], stored[:3, :3], atol=1e-5)
    np.testing.assert_allclose(from_poses[:3, 3], stored[:3, 3], atol=2e-3)
    np.testing.assert_allclose(from_poses[3], [0, 0, 0, 1])
    # The rotation is orthonormal.
    np.testing.assert_allclose(from_poses[:3, :3] @ from_poses[:3, :3].T, np.eye(3), atol=1e-9)


def test_background_flow_is_ego_motion(log, pair):
    """points + flow of background points (class 0) = next_ego_from_ego @ points."""
    pts = pair["sweep"]["lidar_points"].astype(np.float64)
    flow = pair["flow"]["lidar_flow"].astype(np.float64)
    background = pair["flow"]["category_index"] == 0
    assert background.mean() > 0.5
    for motion, atol in (
        (log.load_ego_motion(), 1e-4),
        (log.next_ego_from_ego(pair["t0"], pair["t1"]), 2e-3),
    ):
        moved = pts @ motion[:3, :3].T + motion[:3, 3]
        np.testing.assert_allclose(pts[background] + flow[background], moved[background], atol=atol)
    # Background points are never dynamic.
    assert not pair["flow"]["dynamic"][background].any()


def test_cuboids_and_interior_counts(log, pair):
    boxes = log.cuboids(pair["t0"])
    m = len(boxes["category"])
    assert m > 0 and boxes["ego_from_object"].shape == (m, 4, 4) and boxes["size"].shape == (m, 3)
    assert len(boxes["track_id"]) == m and len(set(boxes["track_id"])) == m  # one box per track
    assert np.all(boxes["size"] > 0)
    inside = points_in_boxes(pair["sweep"]["lidar_points"], boxes["ego_from_object"], boxes["size"])
    counts = inside.sum(0)
    if "num_interior_pts" in boxes:
        np.testing.assert_array_equal(counts, boxes["num_interior_pts"])
    # Points inside a box carry an object class in the flow labels (boxes are slightly expanded there).
    in_any = inside.any(1)
    assert np.mean(pair["flow"]["category_index"][in_any] > 0) > 0.95
    assert len(log.cuboids(123)["category"]) == 0  # no annotations at an unknown time


def test_points_in_boxes_brute_force():
    rng = np.random.default_rng(0)
    poses = pose2d([1.0, -3.0], [2.0, 0.5], [0.3, -1.2], [0.5, 1.0])  # m 4 4
    sizes = np.array([[4.0, 2.0, 1.5], [1.0, 0.6, 1.8]])
    # Random points plus points near each box centre, so that both boxes hold some.
    pts = np.concatenate(
        [rng.uniform(-6, 6, (2000, 3))] + [t + rng.normal(0, 0.5, (100, 3)) for t in poses[:, :3, 3]]
    )
    got = points_in_boxes(pts, poses, sizes)
    for j in range(2):
        rot, t = poses[j, :3, :3], poses[j, :3, 3]
        for i in range(0, len(pts), 3):
            local = rot.T @ (pts[i] - t)
            assert got[i, j] == bool(np.all(np.abs(local) <= sizes[j] / 2))
    assert got.any(0).all()  # both boxes catch some points
    # The per-box indices (bounding-sphere prefilter) select exactly the same points, boundary included.
    on_face = transform_points(poses[0], np.array([[2.0, 0.0, 0.0], [2.0 + 1e-9, 0.0, 0.0]]))
    pts = np.concatenate([pts, on_face])
    got = points_in_boxes(pts, poses, sizes)
    for j, idx in enumerate(points_in_each_box(pts, poses, sizes)):
        np.testing.assert_array_equal(idx, np.flatnonzero(got[:, j]))
    assert got[-2, 0] and not got[-1, 0]


def test_cameras(log):
    cams = log.cameras()
    n = len(cams["names"])
    assert "ring_front_center" in cams["names"] and n >= 7
    assert cams["intrinsics"].shape == (n, 3, 3) and cams["cam_to_ego"].shape == (n, 4, 4)
    k = cams["intrinsics"]
    assert np.all(k[:, 0, 0] > 0) and np.all(k[:, 2, 2] == 1)
    hw = cams["image_hw"]
    assert np.all((k[:, 0, 2] > 0) & (k[:, 0, 2] < hw[:, 1]) & (k[:, 1, 2] > 0) & (k[:, 1, 2] < hw[:, 0]))
    front = cams["cam_to_ego"][list(cams["names"]).index("ring_front_center")]
    # The front camera's optical axis (camera z) points along ego x; it is mounted 1-2 m up.
    assert front[:3, 2] @ np.array([1.0, 0, 0]) > 0.95
    assert 1.0 < front[2, 3] < 2.5


def test_poses(log, pair):
    stamps, city_from_ego = log.poses()
    assert city_from_ego.shape == (len(stamps), 4, 4) and np.all(np.diff(stamps) > 0)
    np.testing.assert_allclose(
        log.city_from_ego(pair["t0"]), city_from_ego[np.searchsorted(stamps, pair["t0"])]
    )
    with pytest.raises(KeyError, match="no pose at timestamp"):
        log.city_from_ego(int(stamps[0]) - 1)


def test_clear_errors(log, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        AV2Log(tmp_path / "no_such_log")
    with pytest.raises(FileNotFoundError, match="123.feather"):
        log.load_sweep(123)
    with pytest.raises(KeyError, match="no_such_column"):
        read_columns(LOG_DIR / "flow_labels.feather", ("flow_tx_m", "no_such_column"))
    empty = AV2Log(tmp_path)
    with pytest.raises(FileNotFoundError, match="flow_labels.feather"):
        empty.load_flow_labels()
    with pytest.raises(FileNotFoundError, match="lidar"):
        empty.lidar_timestamps()
