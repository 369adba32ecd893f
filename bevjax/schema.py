"""The one batch schema shared by every bevjax method, and the class names.

Frames
------
- ego: x forward, y left, z up; origin on the ground under the rear axle (nuScenes convention).
- camera: x right, y down, z forward (OpenCV); pixel (u, v) has its centre at integer coordinates.
- All rigid transforms are 4x4 float32 matrices ``a_from_b`` (or ``b_to_a``) mapping homogeneous points of
  frame b into frame a.

Per example (dimension letters: n cameras, h w image, x y BEV grid, k classes, p LiDAR points)
-----------------------------------------------------------------------------------------------
=====================  =================  ========  ===========================================================
key                    shape              dtype     meaning
=====================  =================  ========  ===========================================================
images                 [n, h, w, 3]       uint8     RGB camera images
intrinsics             [n, 3, 3]          float32   pinhole matrices of the images as stored
cam_to_ego             [n, 4, 4]          float32   camera -> ego
ego_to_world           [4, 4]             float32   ego -> world (city) frame at the keyframe
post_rots              [n, 3, 3]          float32   image augmentation: aug_pixel = post_rots @ pixel + post_trans
post_trans             [n, 3]             float32   (identity / zero for unaugmented images; LSS convention)
bev_labels             [x, y, k]          uint8     multi-label BEV raster, cell (i, j) centred at
                                                    (x_min + (i + 0.5) res, y_min + (j + 0.5) res); ``BEV_CLASSES``
bev_visibility         [x, y]             uint8     1 where any camera sees the cell
pv_labels              [n, h, w]          uint8     perspective semantic labels, ``SEMANTIC_CLASSES``
depth                  [n, h, w]          float32   z-depth in the camera frame, metres; 0 where nothing is hit
lidar_points           [p, 3]             float32   LiDAR sweep in the ego frame, padded to a fixed p
lidar_valid            [p]                bool      real points
lidar_class            [p]                uint8     ``SEMANTIC_CLASSES`` per point
lidar_instance         [p]                int32     0 for stuff, object id >= 1 for things
lidar_ground           [p]                bool      point lies on the ground surface
lidar_flow             [p, 3]             float32   scene flow to the next sweep, Argoverse 2 convention:
                                                    ``lidar_points + lidar_flow`` is where the surface point
                                                    lies at the next sweep, in the next sweep's ego frame (so
                                                    the flow includes ego motion)
next_ego_from_ego      [4, 4]             float32   this sweep's ego frame -> next sweep's ego frame
next_lidar_points      [p, 3]             float32   the next sweep (the flow target), in its own ego frame
next_lidar_valid       [p]                bool
sequence_id            []                 int32     sequence (scene) index within the split
frame_index            []                 int32     keyframe index within the sequence
timestamp              []                 float64   seconds since the sequence start
noise_level            []                 float32   label/image disagreement of synthetic frames (0 if clean)
=====================  =================  ========  ===========================================================

Batches add a leading ``b`` dimension to every key (and ``t`` after it for sequence windows).

Real datasets carry a subset of the keys: nuScenes keyframes ``subset_spec(spec, DENSE_LABEL_KEYS)`` (no
perspective labels or dense depth), Argoverse 2 sweep pairs ``subset_spec(spec)`` (no camera images either).
"""

from __future__ import annotations

import numpy as np

# BEV map and object classes (multi-label: a ped crossing also lies on drivable area).
BEV_CLASSES: tuple[str, ...] = (
    "drivable_area",
    "ped_crossing",
    "walkway",
    "stop_line",
    "carpark_area",
    "divider",
    "vehicle",
    "pedestrian",
)
BEV_CLASS_ID = {name: i for i, name in enumerate(BEV_CLASSES)}
NUM_BEV_CLASSES = len(BEV_CLASSES)

# Semantic classes of surfaces, shared by perspective labels and LiDAR points.
SEMANTIC_CLASSES: tuple[str, ...] = (
    "background",  # sky, nothing hit
    "road",  # drivable surface and its markings, ped crossings included
    "sidewalk",
    "parking",
    "terrain",
    "vehicle",
    "pedestrian",
    "building",
    "vegetation",
    "pole",  # poles, traffic lights and signs
)
SEMANTIC_CLASS_ID = {name: i for i, name in enumerate(SEMANTIC_CLASSES)}
NUM_SEMANTIC_CLASSES = len(SEMANTIC_CLASSES)

# Classes that carry instance ids.
THING_CLASSES = ("vehicle", "pedestrian")

# The nuScenes camera rig order used by default.
NUSCENES_CAMERAS: tuple[str, ...] = (
    "CAM_FRONT_LEFT",
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_LEFT",
    "CAM_BACK",
    "CAM_BACK_RIGHT",
)


def example_spec(
    num_cameras: int,
    image_hw: tuple[int, int],
    bev_xy: tuple[int, int],
    num_points: int,
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes of one unbatched example, keyed as documented above."""
    n, (h, w), (gx, gy), p = num_cameras, image_hw, bev_xy, num_points
    f32, u8 = np.dtype(np.float32), np.dtype(np.uint8)
    return {
        "images": ((n, h, w, 3), u8),
        "intrinsics": ((n, 3, 3), f32),
        "cam_to_ego": ((n, 4, 4), f32),
        "ego_to_world": ((4, 4), f32),
        "post_rots": ((n, 3, 3), f32),
        "post_trans": ((n, 3), f32),
        "bev_labels": ((gx, gy, NUM_BEV_CLASSES), u8),
        "bev_visibility": ((gx, gy), u8),
        "pv_labels": ((n, h, w), u8),
        "depth": ((n, h, w), f32),
        "lidar_points": ((p, 3), f32),
        "lidar_valid": ((p,), np.dtype(np.bool_)),
        "lidar_class": ((p,), u8),
        "lidar_instance": ((p,), np.dtype(np.int32)),
        "lidar_ground": ((p,), np.dtype(np.bool_)),
        "lidar_flow": ((p, 3), f32),
        "next_ego_from_ego": ((4, 4), f32),
        "next_lidar_points": ((p, 3), f32),
        "next_lidar_valid": ((p,), np.dtype(np.bool_)),
        "sequence_id": ((), np.dtype(np.int32)),
        "frame_index": ((), np.dtype(np.int32)),
        "timestamp": ((), np.dtype(np.float64)),
        "noise_level": ((), f32),
    }


# Per-pixel keys of the world that real datasets do not label (nuScenes keyframes carry all other keys).
DENSE_LABEL_KEYS = ("pv_labels", "depth")
# Keys of datasets without camera images (Argoverse 2 LiDAR sweep pairs): calibration, BEV labels, LiDAR, poses.
CAMERA_IMAGE_KEYS = ("images", "post_rots", "post_trans", *DENSE_LABEL_KEYS)


def subset_spec(spec: dict, drop: tuple[str, ...] = CAMERA_IMAGE_KEYS) -> dict:
    """``spec`` without the keys in ``drop`` (by default the per-pixel camera keys)."""
    unknown = sorted(set(drop) - set(spec))
    if unknown:
        raise ValueError(f"subset_spec: keys {unknown} are not in the spec")
    return {k: v for k, v in spec.items() if k not in drop}


def pad_points(a: np.ndarray, p: int) -> np.ndarray:
    """The first ``p`` rows of ``a`` [m, ...], zero-padded to ``p`` rows (per-point keys have a fixed length)."""
    out = np.zeros((p,) + a.shape[1:], a.dtype)
    out[: min(p, len(a))] = a[:p]
    return out


def check_example(example: dict, spec: dict, where: str = "example") -> None:
    """Raises ValueError naming the first key whose presence, shape or dtype differs from ``spec``."""
    missing = sorted(set(spec) - set(example))
    if missing:
        raise ValueError(f"{where}: missing keys {missing}; expected keys {sorted(spec)}")
    for key, (shape, dtype) in spec.items():
        value = np.asarray(example[key])
        if tuple(value.shape) != tuple(shape) or value.dtype != dtype:
            raise ValueError(
                f"{where}: key '{key}' has shape {tuple(value.shape)} dtype {value.dtype}, "
                f"expected shape {tuple(shape)} dtype {dtype}"
            )
