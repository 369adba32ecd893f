"""One Argoverse 2 LiDAR sweep pair in the batch schema (``bevjax.schema``, keys ``AV2_KEYS``).

The example's ego frame is the ego pose at the first sweep. Scene flow follows the Argoverse 2 definition
(``av2.torch.structures.flow.Flow.from_sweep_pair``): every point gets the ego-motion flow
``next_ego_from_ego p - p``; a point inside a cuboid of the first sweep (length and width grown by 0.2 m) whose
track is annotated in the second sweep gets the cuboid's motion ``ego1_from_box1 box0_from_ego0 p - p`` instead.
Points of tracks that end at the first sweep keep the ego-motion flow (Argoverse 2 marks them invalid; the
schema has no flow-validity key, so :func:`cuboid_flow` returns the mask for callers that need it). Where the
log stores its own labels for the pair (``flow_labels.feather``: flow, categories, ground), those are used.

``lidar_class`` maps the cuboid categories to ``SEMANTIC_CLASSES`` (``AV2_SEMANTIC``); points in no cuboid are
``background``, i.e. unlabelled, since Argoverse 2 has no per-point semantics. ``lidar_ground`` is the map's
ground-height rule. BEV labels: ``vehicle`` / ``pedestrian`` cuboid footprints and the map classes of
:mod:`bevjax.data.av2.map`; ``bev_visibility`` is the union of the ring cameras' frusta. Argoverse 2 has no
walkway, stop-line or car-park labels: those layers are zero.
"""

from __future__ import annotations

import numpy as np

from bevjax.data import raster
from bevjax.data.av2.map import AV2Map
from bevjax.data.av2.reader import AV2Log
from bevjax.geometry.grid import BEVGrid
from bevjax.geometry.transforms import invert_rigid, points_in_each_box, transform_points
from bevjax.metrics.scene_flow import AV2_CATEGORIES, DYNAMIC_THRESHOLD
from bevjax.schema import BEV_CLASS_ID, NUM_BEV_CLASSES, SEMANTIC_CLASS_ID, pad_points

BOX_EXPANSION_M = 0.2  # Argoverse 2 grows cuboid length and width by this when assigning points to objects
RING_CAMERAS = (
    "ring_front_center",
    "ring_front_left",
    "ring_front_right",
    "ring_side_left",
    "ring_side_right",
    "ring_rear_left",
    "ring_rear_right",
)
AV2_LABELLED_BEV_CLASSES = ("drivable_area", "ped_crossing", "divider", "vehicle", "pedestrian")

# Argoverse 2 cuboid category -> schema semantic class. Cyclists and motorcyclists ride inside nuScenes'
# bicycle / motorcycle boxes (vehicle); scooters, skateboards and their riders are nuScenes "personal mobility"
# (pedestrian); street furniture goes to pole; animals stay background.
_GROUPS = {
    "vehicle": (
        "ARTICULATED_BUS", "BICYCLE", "BICYCLIST", "BOX_TRUCK", "BUS", "LARGE_VEHICLE", "MESSAGE_BOARD_TRAILER",
        "MOTORCYCLE", "MOTORCYCLIST", "RAILED_VEHICLE", "REGULAR_VEHICLE", "SCHOOL_BUS", "TRAFFIC_LIGHT_TRAILER",
        "TRUCK", "TRUCK_CAB", "VEHICULAR_TRAILER",
    ),
    "pedestrian": ("OFFICIAL_SIGNALER", "PEDESTRIAN", "STROLLER", "WHEELCHAIR", "WHEELED_DEVICE", "WHEELED_RIDER"),
    "pole": (
        "BOLLARD", "CONSTRUCTION_BARREL", "CONSTRUCTION_CONE", "MOBILE_PEDESTRIAN_CROSSING_SIGN", "SIGN", "STOP_SIGN",
    ),
    "background": ("ANIMAL", "DOG"),
}  # fmt: skip
AV2_SEMANTIC: dict[str, str] = {cat: cls for cls, cats in _GROUPS.items() for cat in cats}
assert sorted(AV2_SEMANTIC) == sorted(AV2_CATEGORIES)


def category_index(category: str) -> int:
    """The Argoverse 2 scene-flow category index (0 background, ``AV2_CATEGORIES`` position + 1)."""
    if category not in AV2_SEMANTIC:
        raise KeyError(f"unknown Argoverse 2 category '{category}'; known: {sorted(AV2_SEMANTIC)}")
    return AV2_CATEGORIES.index(category) + 1


def semantic_class(category: str) -> int:
    """The ``SEMANTIC_CLASSES`` index of an Argoverse 2 cuboid category."""
    category_index(category)  # raises on unknown names
    return SEMANTIC_CLASS_ID[AV2_SEMANTIC[category]]


def cuboid_flow(
    points: np.ndarray, cuboids0: dict, cuboids1: dict, next_ego_from_ego: np.ndarray
) -> dict[str, np.ndarray]:
    """Argoverse 2 scene-flow labels of the first sweep of a pair from the cuboids of both sweeps.

    Args:
      points: [p, 3] first sweep, ego frame.
      cuboids0, cuboids1: :meth:`AV2Log.cuboids` of the two sweeps.
      next_ego_from_ego: [4, 4] ego0 -> ego1.

    Returns:
      ``lidar_flow`` [p, 3] float32 (ego motion included), ``flow_valid`` [p] bool, ``category_index`` [p] uint8,
      ``track`` [p] int32 (cuboid index in ``cuboids0`` + 1, 0 outside), ``dynamic`` [p] bool.
    """
    pts = np.asarray(points, np.float64)
    ego_flow = transform_points(np.asarray(next_ego_from_ego, np.float64), pts) - pts
    flow = ego_flow.copy()
    valid = np.ones(len(pts), bool)
    cat = np.zeros(len(pts), np.uint8)
    track = np.zeros(len(pts), np.int32)
    grown = cuboids0["size"] + np.array([BOX_EXPANSION_M, BOX_EXPANSION_M, 0.0])
    later = {t: i for i, t in enumerate(cuboids1["track_id"])}
    members = points_in_each_box(pts, cuboids0["ego_from_object"], grown)
    for m, (track_id, mask) in enumerate(zip(cuboids0["track_id"], members, strict=True)):
        box = cuboids0["ego_from_object"][m]  # later boxes overwrite earlier ones, as in av2
        if not len(mask):
            continue
        cat[mask] = category_index(cuboids0["category"][m])
        track[mask] = m + 1
        if track_id in later:
            motion = cuboids1["ego_from_object"][later[track_id]] @ invert_rigid(box)
            flow[mask] = transform_points(motion, pts[mask]) - pts[mask]
        else:
            flow[mask] = ego_flow[mask]
            valid[mask] = False
    dynamic = np.linalg.norm(flow - ego_flow, axis=-1) >= DYNAMIC_THRESHOLD
    return {
        "lidar_flow": flow.astype(np.float32),
        "flow_valid": valid,
        "category_index": cat,
        "track": track,
        "dynamic": dynamic,
    }


def official_labels(log: AV2Log, t0: int, num_points: int) -> dict | None:
    """``AV2Log.load_flow_labels()`` when the log stores scene-flow labels for the pair starting at ``t0``
    (``flow_labels.feather`` describes the log's first sweep, one row per point), else None."""
    if not (log.log_dir / "flow_labels.feather").is_file() or int(t0) != int(log.lidar_timestamps()[0]):
        return None
    labels = log.load_flow_labels()
    if len(labels["lidar_flow"]) != num_points:
        raise ValueError(
            f"{log.log_dir / 'flow_labels.feather'}: {len(labels['lidar_flow'])} rows for a first sweep of "
            f"{num_points} points"
        )
    return labels


def object_raster(cuboids: dict, grid: BEVGrid) -> dict[str, np.ndarray]:
    """``{'vehicle': [x, y], 'pedestrian': [x, y]}`` uint8 footprints of the (ego-frame) cuboids."""
    out = {}
    for name in ("vehicle", "pedestrian"):
        keep = np.array([AV2_SEMANTIC[c] == name for c in cuboids["category"]], bool)
        if keep.any():
            out[name] = raster.fill_boxes(cuboids["ego_from_object"][keep], cuboids["size"][keep, :2], grid)
        else:
            out[name] = np.zeros(grid.shape[:2], np.uint8)
    return out


def load_pair(
    log: AV2Log,
    t0: int,
    t1: int,
    grid: BEVGrid | None = None,
    num_points: int | None = None,
    av2_map: AV2Map | None = None,
    cameras: tuple[str, ...] = RING_CAMERAS,
    sequence_id: int = 0,
) -> dict:
    """The sweep pair (t0, t1) of a log as a dict of NumPy arrays with the keys ``AV2_KEYS`` of the schema.

    Args:
      log: the sensor log.
      t0, t1: nanosecond timestamps of the two sweeps (the flow goes from t0 to t1).
      grid: BEV grid of the labels (default ``BEVGrid()``).
      num_points: pad (or cut) both sweeps to this many points; None keeps them all (the longer one's count).
      av2_map: the log's map (default: loaded from ``log.log_dir``).
      cameras: camera names for ``intrinsics`` / ``cam_to_ego`` and the visibility.
      sequence_id: the log's index in its split.
    """
    grid = grid or BEVGrid()
    av2_map = av2_map or AV2Map.load(log.log_dir)
    sweep0, sweep1 = log.load_sweep(t0), log.load_sweep(t1)
    pts0, pts1 = sweep0["lidar_points"], sweep1["lidar_points"]
    p = max(len(pts0), len(pts1)) if num_points is None else int(num_points)
    next_from = log.next_ego_from_ego(t0, t1)
    city_from_ego = log.city_from_ego(t0)
    cub0, cub1 = log.cuboids(t0), log.cuboids(t1)
    flow = cuboid_flow(pts0, cub0, cub1, next_from)
    official = official_labels(log, t0, len(pts0))
    if official is not None:  # the log's own scene-flow labels of this pair
        flow["lidar_flow"], flow["category_index"] = official["lidar_flow"], official["category_index"]
        ground = official["lidar_ground"]
    else:
        ground = av2_map.is_ground(transform_points(city_from_ego, pts0.astype(np.float64)))
    semantic = np.array([0] + [SEMANTIC_CLASS_ID[AV2_SEMANTIC[c]] for c in AV2_CATEGORIES], np.uint8)
    lidar_class = semantic[flow["category_index"]]

    bev = np.zeros(grid.shape[:2] + (NUM_BEV_CLASSES,), np.uint8)
    for name, layer in {**av2_map.raster(city_from_ego, grid), **object_raster(cub0, grid)}.items():
        bev[..., BEV_CLASS_ID[name]] = layer

    calib = log.cameras()
    order = []
    for name in cameras:
        if name not in list(calib["names"]):
            raise KeyError(f"{log.log_dir / 'calibration'}: no camera '{name}'; it has {list(calib['names'])}")
        order.append(list(calib["names"]).index(name))
    intrinsics, cam_to_ego = calib["intrinsics"][order], calib["cam_to_ego"][order]
    stamps = log.lidar_timestamps()
    f32 = np.float32
    return {
        "intrinsics": intrinsics,
        "cam_to_ego": cam_to_ego,
        "ego_to_world": city_from_ego.astype(f32),
        "bev_labels": bev,
        "bev_visibility": raster.frustum_visibility(intrinsics, cam_to_ego, calib["image_hw"][order], grid),
        "lidar_points": pad_points(pts0.astype(f32), p),
        "lidar_valid": np.arange(p) < len(pts0),
        "lidar_class": pad_points(lidar_class, p),
        "lidar_instance": pad_points(flow["track"], p),
        "lidar_ground": pad_points(ground, p),
        "lidar_flow": pad_points(flow["lidar_flow"], p),
        "next_ego_from_ego": next_from.astype(f32),
        "next_lidar_points": pad_points(pts1.astype(f32), p),
        "next_lidar_valid": np.arange(p) < len(pts1),
        "sequence_id": np.int32(sequence_id),
        "frame_index": np.int32(np.searchsorted(stamps, t0)),
        "timestamp": np.float64((int(t0) - int(stamps[0])) * 1e-9),
        "noise_level": f32(0.0),
    }
