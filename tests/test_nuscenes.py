"""Tests of the nuScenes reader on the real keyframe in ``../shared/data`` (skipped when it is absent).

Camera projections are checked against an independent float64 reimplementation of the nuScenes devkit's
documented transforms (box global -> ego at the camera timestamp -> camera, ``view_points``,
``box_in_image`` with ``BoxVisibility.ANY``), with quaternions applied as Hamilton products.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bevjax.data.nuscenes import NuScenesTables, load_sample, map_mask, points_in_box
from bevjax.data.nuscenes.preview import save_bev_preview
from bevjax.geometry.grid import BEVGrid
from bevjax.schema import (
    BEV_CLASS_ID,
    DENSE_LABEL_KEYS,
    NUSCENES_CAMERAS,
    check_example,
    example_spec,
    subset_spec,
)

DATAROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nuscenes"
VERSION = "v1.0-test"
GRID = BEVGrid()


@pytest.fixture(scope="module")
def tables(nuscenes_tables) -> NuScenesTables:
    return nuscenes_tables


@pytest.fixture(scope="module")
def token(tables) -> str:
    return next(iter(tables.tables["sample"]))


@pytest.fixture(scope="module")
def example(tables, token) -> dict:
    return load_sample(tables, token, GRID)


# Independent reference: the devkit's Box / view_points conventions in plain float64 NumPy.


def _qmul(a, b):
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([
        w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
        w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
    ])  # fmt: skip


def _qrotate(q, v, inverse=False):
    """Rotates points v [m, 3] by unit quaternion q (w, x, y, z): q v q*."""
    q = np.asarray(q, np.float64) / np.linalg.norm(q)
    if inverse:
        q = q * np.array([1, -1, -1, -1])
    conj = q * np.array([1, -1, -1, -1])
    return np.stack([_qmul(_qmul(q, np.r_[0.0, p]), conj)[1:] for p in v])


def _devkit_corners(ann) -> np.ndarray:
    """[8, 3] box corners in the global frame, devkit corner order."""
    w, length, h = ann["size"]
    x = length / 2 * np.array([1, 1, 1, 1, -1, -1, -1, -1])
    y = w / 2 * np.array([1, -1, -1, 1, 1, -1, -1, 1])
    z = h / 2 * np.array([1, 1, -1, -1, 1, 1, -1, -1])
    return _qrotate(ann["rotation"], np.stack([x, y, z], -1)) + np.asarray(ann["translation"])


def _devkit_camera_view(tables, token, channel):
    """{annotation token: [8, 2] pixels} of the boxes visible (BoxVisibility.ANY) in ``channel``."""
    sd = tables.sample_data(token, channel)
    pose = tables.get("ego_pose", sd["ego_pose_token"])
    calib = tables.get("calibrated_sensor", sd["calibrated_sensor_token"])
    k = np.asarray(calib["camera_intrinsic"], np.float64)
    out = {}
    for ann in tables.annotations(token):
        c = _devkit_corners(ann) - np.asarray(pose["translation"])
        c = _qrotate(pose["rotation"], c, inverse=True) - np.asarray(calib["translation"])
        c = _qrotate(calib["rotation"], c, inverse=True)  # 8 3, camera frame
        uv = c @ k.T
        uv = uv[:, :2] / uv[:, 2:3]
        visible = (uv[:, 0] > 0) & (uv[:, 0] < sd["width"]) & (uv[:, 1] > 0) & (uv[:, 1] < sd["height"])
        visible &= c[:, 2] > 1
        if visible.any() and np.all(c[:, 2] > 0.1):
            out[ann["token"]] = uv
    return out


def _our_camera_view(tables, token, example, channel):
    """Same as ``_devkit_camera_view`` through the loaded sample's intrinsics and cam_to_ego."""
    n = NUSCENES_CAMERAS.index(channel)
    k = example["intrinsics"][n].astype(np.float64)
    ego_from_cam = example["cam_to_ego"][n].astype(np.float64)
    cam_from_ego = np.linalg.inv(ego_from_cam)
    ego_from_global = np.linalg.inv(example["ego_to_world"].astype(np.float64))
    h, w = example["images"].shape[1:3]
    out = {}
    for ann in tables.annotations(token):
        c = _devkit_corners(ann)
        c = c @ (cam_from_ego @ ego_from_global)[:3, :3].T + (cam_from_ego @ ego_from_global)[:3, 3]
        uv = c @ k.T
        uv = uv[:, :2] / uv[:, 2:3]
        visible = (uv[:, 0] > 0) & (uv[:, 0] < w) & (uv[:, 1] > 0) & (uv[:, 1] < h) & (c[:, 2] > 1)
        if visible.any() and np.all(c[:, 2] > 0.1):
            out[ann["token"]] = uv
    return out


def test_tables_index_and_errors(tables, token):
    assert set(NUSCENES_CAMERAS) | {"LIDAR_TOP"} <= set(tables.sample_data_by_channel[token])
    assert len(tables.annotations(token)) == 69
    assert tables.log_of(token)["location"] == "singapore-onenorth"
    assert tables.map_path(token).name == "53992ee3023e5494b90c316c183be829.png"
    with pytest.raises(KeyError, match="nope.*sample_data"):
        tables.get("sample_data", "nope")
    with pytest.raises(FileNotFoundError, match="v1.0-nothing"):
        NuScenesTables(DATAROOT, "v1.0-nothing")


def test_sample_follows_schema(example):
    n, h, w = example["images"].shape[:3]
    assert (n, h, w) == (6, 900, 1600)
    spec = subset_spec(example_spec(n, (h, w), GRID.shape[:2], len(example["lidar_points"])), DENSE_LABEL_KEYS)
    check_example(example, spec, "nuscenes")
    assert example["lidar_valid"].sum() == 34688
    r = example["cam_to_ego"][:, :3, :3].astype(np.float64)
    np.testing.assert_allclose(r @ np.swapaxes(r, 1, 2), np.tile(np.eye(3), (n, 1, 1)), atol=1e-5)


def test_resize_scales_intrinsics(tables, token, example):
    small = load_sample(tables, token, BEVGrid((-20.0, 20.0, 1.0), (-20.0, 20.0, 1.0)), image_hw=(225, 400))
    assert small["images"].shape == (6, 225, 400, 3)
    k, k_small = example["intrinsics"][1], small["intrinsics"][1]
    # A point at pixel u of the full image lies at (u + 0.5) / 4 - 0.5 in the small one.
    np.testing.assert_allclose(k_small[0, 0], k[0, 0] / 4, rtol=1e-6)
    np.testing.assert_allclose(k_small[:2, 2], (k[:2, 2] + 0.5) / 4 - 0.5, rtol=1e-6)


@pytest.mark.parametrize("channel", NUSCENES_CAMERAS)
def test_box_projection_matches_devkit(tables, token, example, channel):
    ref = _devkit_camera_view(tables, token, channel)
    ours = _our_camera_view(tables, token, example, channel)
    assert len(ref) > 0
    assert set(ours) == set(ref)
    for ann_token, uv in ref.items():
        np.testing.assert_allclose(ours[ann_token], uv, atol=0.05, err_msg=ann_token)


def _points_per_box(tables, token, example):
    pts = example["lidar_points"][example["lidar_valid"]]
    ego_from_global = np.linalg.inv(example["ego_to_world"].astype(np.float64))
    rows = []
    for ann in tables.annotations(token):
        box = np.eye(4)  # box -> global
        box[:3, :3] = _qrotate(ann["rotation"], np.eye(3)).T
        box[:3, 3] = ann["translation"]
        inside = points_in_box(pts, ego_from_global @ box, ann["size"])
        rows.append((ann, inside))
    return pts, rows


def test_points_in_boxes_match_num_lidar_pts(tables, token, example):
    _, rows = _points_per_box(tables, token, example)
    counts = np.array([inside.sum() for _, inside in rows])
    expected = np.array([ann["num_lidar_pts"] for ann, _ in rows])
    close = np.abs(counts - expected) <= np.maximum(2, 0.1 * expected)
    print(f"points-in-box vs num_lidar_pts: {close.sum()}/{len(close)} within max(2, 10%); "
          f"exact {np.sum(counts == expected)}; max |diff| {np.abs(counts - expected).max()}")  # fmt: skip
    assert close.mean() >= 0.9


def test_vehicle_points_fall_in_vehicle_cells(tables, token, example):
    pts, rows = _points_per_box(tables, token, example)
    in_vehicle = np.zeros(len(pts), bool)
    for ann, inside in rows:
        if ann["category_name"].startswith("vehicle."):
            in_vehicle |= inside
    ij, ok = GRID.cell_index(pts[in_vehicle])
    layer = example["bev_labels"][..., BEV_CLASS_ID["vehicle"]]
    hit = layer[ij[ok, 0], ij[ok, 1]] > 0
    print(f"vehicle points in vehicle cells: {hit.mean():.4f} of {hit.size}")
    assert hit.size > 100 and hit.mean() > 0.9
    assert example["bev_labels"][..., BEV_CLASS_ID["pedestrian"]].any()


def test_drivable_area_matches_cropped_mask(tables, token, example):
    """Independent of the loader: PIL crops the PNG around the ego and turns the crop by the ego's yaw."""
    Image.MAX_IMAGE_PIXELS = None
    ego = example["ego_to_world"].astype(np.float64)
    yaw = np.degrees(np.arctan2(ego[1, 0], ego[0, 0]))
    radius = 800  # pixels (80 m) around the ego
    with Image.open(tables.map_path(token)) as png:
        col, row = int(ego[0, 3] / 0.1), int(png.height - ego[1, 3] / 0.1)
        crop = png.convert("L").crop((col - radius, row - radius, col + radius, row + radius))
    # Turn the crop so that ego x points right and ego y up (PIL turns counter-clockwise).
    aligned = np.asarray(crop.rotate(-yaw, resample=Image.NEAREST)) > 127
    assert map_mask(tables.map_path(token)).shape == (png.height, png.width)
    centres = GRID.cell_centers().astype(np.float64)  # x y 2
    c = np.floor(radius + centres[..., 0] / 0.1).astype(int)
    r = np.floor(radius - centres[..., 1] / 0.1).astype(int)
    ref = aligned[r, c]
    ours = example["bev_labels"][..., BEV_CLASS_ID["drivable_area"]] > 0
    agree = np.mean(ref == ours)
    print(f"drivable area agreement with the rotated crop: {agree:.4f}; drivable fraction {ours.mean():.3f}")
    assert 0.05 < ours.mean() < 0.95
    assert agree > 0.97


def test_visibility_and_preview(example, tmp_path):
    vis = example["bev_visibility"]
    assert 0.3 < vis.mean() < 1.0
    path = save_bev_preview(example, GRID, tmp_path / "bev.png")
    img = np.asarray(Image.open(path))
    assert img.shape == (2 * GRID.shape[0], 2 * GRID.shape[1], 3)
    assert img.max() > 0


def test_source_and_version_errors(tmp_path):
    from bevjax.data.nuscenes.source import NuScenesSource, find_version

    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_version(tmp_path / "nope")
    with pytest.raises(ValueError, match="found none"):
        find_version(tmp_path)
    (tmp_path / "v1.0-mini").mkdir()
    (tmp_path / "v1.0-test").mkdir()
    with pytest.raises(ValueError, match="several"):
        find_version(tmp_path)
    if not DATAROOT.is_dir():
        pytest.skip(f"real nuScenes sample not found at {DATAROOT} (shared test data absent)")
    source = NuScenesSource(DATAROOT, BEVGrid(), cameras=("CAM_FRONT", "CAM_BACK"))
    assert len(source) == 1 and source.name == "nuscenes/v1.0-test"
    assert source[0]["images"].shape[0] == 2


@pytest.fixture(scope="module")
def augmented_root(tables, tmp_path_factory):
    """A copy of the real dataroot with one earlier LiDAR sweep (the keyframe's file, recorded 1 m behind and
    turned 5 degrees) and a map-expansion file for its location (a square road, a walkway and a divider)."""
    import json
    import shutil

    root = tmp_path_factory.mktemp("nuscenes_aug") / "nuscenes"
    shutil.copytree(DATAROOT, root)
    version = root / VERSION
    sd_rows = json.loads((version / "sample_data.json").read_text())
    poses = json.loads((version / "ego_pose.json").read_text())
    token = next(iter(tables.tables["sample"]))
    key = dict(tables.sample_data(token, "LIDAR_TOP"))
    key_pose = tables.get("ego_pose", key["ego_pose_token"])
    half = np.radians(5.0) / 2
    turn = np.array([np.cos(half), 0, 0, np.sin(half)])
    sweep_pose = {
        "token": "sweep_pose",
        "timestamp": key["timestamp"] - 50_000,
        "rotation": list(_qmul(key_pose["rotation"], turn)),
        "translation": list(np.asarray(key_pose["translation"]) + _qrotate(key_pose["rotation"], [[-1.0, 0, 0]])[0]),
    }
    poses.append(sweep_pose)
    sweep_file = "sweeps/LIDAR_TOP/sweep.pcd.bin"
    (root / "sweeps" / "LIDAR_TOP").mkdir(parents=True)
    shutil.copy(DATAROOT / key["filename"], root / sweep_file)
    sweep = dict(key, token="sweep_sd", ego_pose_token="sweep_pose", is_key_frame=False, filename=sweep_file,
                 prev="", next=key["token"], timestamp=sweep_pose["timestamp"])  # fmt: skip
    for row in sd_rows:
        if row["token"] == key["token"]:
            row["prev"] = "sweep_sd"
    sd_rows.append(sweep)
    (version / "sample_data.json").write_text(json.dumps(sd_rows))
    (version / "ego_pose.json").write_text(json.dumps(poses))

    x, y = key_pose["translation"][:2]
    nodes = {"a": (x - 30, y - 30), "b": (x + 30, y - 30), "c": (x + 30, y + 30), "d": (x - 30, y + 30),
             "e": (x - 30, y + 32), "f": (x + 30, y + 32), "g": (x + 30, y + 36), "h": (x - 30, y + 36),
             "i": (x - 30, y), "j": (x + 30, y)}  # fmt: skip
    expansion = {
        "node": [{"token": k, "x": v[0], "y": v[1]} for k, v in nodes.items()],
        "line": [{"token": "l0", "node_tokens": ["i", "j"]}],
        "polygon": [
            {"token": "p0", "exterior_node_tokens": list("abcd"), "holes": []},
            {"token": "p1", "exterior_node_tokens": list("efgh"), "holes": []},
        ],
        "drivable_area": [{"token": "da", "polygon_tokens": ["p0"]}],
        "walkway": [{"token": "w", "polygon_token": "p1"}],
        "road_divider": [{"token": "rd", "line_token": "l0"}],
        "lane_divider": [],
        "ped_crossing": [],
        "stop_line": [],
        "carpark_area": [],
    }
    location = tables.log_of(token)["location"]
    (root / "maps" / "expansion").mkdir(parents=True)
    (root / "maps" / "expansion" / f"{location}.json").write_text(json.dumps(expansion))
    return root


def test_sweeps_move_into_the_keyframe_ego_frame(tables, augmented_root):
    aug = NuScenesTables(augmented_root, VERSION)
    token = next(iter(aug.tables["sample"]))
    one = load_sample(aug, token, GRID, num_sweeps=0)
    two = load_sample(aug, token, GRID, num_sweeps=10)  # only one earlier sweep exists
    n = int(one["lidar_valid"].sum())
    assert int(two["lidar_valid"].sum()) == 2 * n
    np.testing.assert_allclose(two["lidar_points"][:n], one["lidar_points"][:n])
    # Independent: sensor -> ego_sweep -> global -> ego_key with Hamilton products, in float64.
    key = aug.sample_data(token, "LIDAR_TOP")
    calib = aug.get("calibrated_sensor", key["calibrated_sensor_token"])
    raw = np.fromfile(augmented_root / "sweeps/LIDAR_TOP/sweep.pcd.bin", np.float32).reshape(-1, 5)[:, :3]
    ego_sweep = _qrotate(calib["rotation"], raw.astype(np.float64)) + calib["translation"]
    pose_s, pose_k = aug.get("ego_pose", "sweep_pose"), aug.get("ego_pose", key["ego_pose_token"])
    world = _qrotate(pose_s["rotation"], ego_sweep) + pose_s["translation"]
    expect = _qrotate(pose_k["rotation"], world - pose_k["translation"], inverse=True)
    np.testing.assert_allclose(two["lidar_points"][n:], expect, atol=2e-3)
    # The sweep was recorded 1 m behind: its points sit ~1 m further back than the same returns at the key.
    shift = np.median(two["lidar_points"][n:, 0] - one["lidar_points"][:n, 0])
    assert -1.5 < shift < -0.5


def test_map_expansion_layers_replace_the_mask(augmented_root):
    aug = NuScenesTables(augmented_root, VERSION)
    example = load_sample(aug, next(iter(aug.tables["sample"])), GRID)
    bev = example["bev_labels"]
    centres = GRID.cell_centers()
    # Axis-aligned squares in the global frame, seen from the ego: test cell centres turned into it.
    ego = example["ego_to_world"].astype(np.float64)
    world = centres @ ego[:2, :2].T + ego[:2, 3]
    rel = world - ego[:2, 3]
    inside = (np.abs(rel[..., 0]) < 29.5) & (np.abs(rel[..., 1]) < 29.5)
    outside = (np.abs(rel[..., 0]) > 30.5) | (np.abs(rel[..., 1]) > 30.5)
    road = bev[..., BEV_CLASS_ID["drivable_area"]] > 0
    assert road[inside].all() and not road[outside].any()
    walk = bev[..., BEV_CLASS_ID["walkway"]] > 0
    assert walk.sum() > 100 and np.all((rel[walk][:, 1] > 31) & (rel[walk][:, 1] < 37))
    divider = bev[..., BEV_CLASS_ID["divider"]] > 0
    assert divider.sum() > 50 and np.all(np.abs(rel[divider][:, 1]) < 0.75)
    assert bev[..., BEV_CLASS_ID["ped_crossing"]].sum() == 0


def test_packed_mask_lookup():
    from bevjax.data.nuscenes.sample import MapMask

    rng = np.random.default_rng(0)
    mask = rng.random((37, 53)) < 0.3
    packed = MapMask(mask)
    rows, cols = rng.integers(-5, 60, 500), rng.integers(-5, 60, 500)
    inside = (rows >= 0) & (rows < 37) & (cols >= 0) & (cols < 53)
    expect = np.zeros(500, bool)
    expect[inside] = mask[rows[inside], cols[inside]]
    np.testing.assert_array_equal(packed.at(rows, cols), expect)


def test_without_decoding_images(tables, token, example):
    plain = load_sample(tables, token, GRID, decode_images=False)
    assert "images" not in plain and sorted(plain) == sorted(k for k in example if k != "images")
    np.testing.assert_array_equal(plain["bev_visibility"], example["bev_visibility"])
    np.testing.assert_array_equal(plain["intrinsics"], example["intrinsics"])
    with pytest.raises(ValueError, match="needs image_hw=None"):
        load_sample(tables, token, GRID, image_hw=(90, 160), decode_images=False)
