"""One nuScenes keyframe in the batch schema of ``bevjax.schema``.

The sample's ego frame is the ego pose at the LIDAR_TOP timestamp. Each camera was captured at its own
timestamp with its own ego pose, so its extrinsics are chained through the global frame,
ego_lidar <- global <- ego_cam <- cam. Labels come from the sample_annotation boxes (global frame) and the
map expansion's vector layers of the log's location (six map classes) or, without them, the log's
semantic-prior mask (drivable area only).
Perspective labels and dense depth are left out (``schema.DENSE_LABEL_KEYS``); scene flow and the next
sweep, which keyframes do not carry, are zeros with ``next_lidar_valid`` all False.
"""

from __future__ import annotations

import contextlib
import functools
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from bevjax.data import raster
from bevjax.data.nuscenes.map_expansion import MapExpansion
from bevjax.data.nuscenes.tables import NuScenesTables, damaged_file, rigid_from_pose
from bevjax.geometry.grid import BEVGrid
from bevjax.geometry.transforms import invert_rigid, points_in_boxes, points_in_each_box, transform_points
from bevjax.schema import BEV_CLASS_ID, NUM_BEV_CLASSES, NUSCENES_CAMERAS, SEMANTIC_CLASS_ID, pad_points

MAP_RESOLUTION = 0.1  # metres per pixel of the semantic-prior masks
LIDAR_CHANNEL = "LIDAR_TOP"


def bev_class_of(category: str) -> str | None:
    """The schema's BEV object class of a nuScenes category name, or None."""
    if category.startswith("vehicle."):
        return "vehicle"
    if category.startswith("human.pedestrian."):
        return "pedestrian"
    return None


def box_to_frame(frame_from_global: np.ndarray, ann: dict) -> np.ndarray:
    """[4, 4] box -> frame transform of a global-frame annotation (box frame: x along length, y width)."""
    return frame_from_global @ rigid_from_pose(ann)


def box_corners(box_to: np.ndarray, size) -> np.ndarray:
    """[8, 3] corners of a box of nuScenes ``size`` (width, length, height) placed by ``box_to`` [4, 4]."""
    w, length, h = size
    signs = np.array([[sx, sy, sz] for sx in (1, -1) for sy in (1, -1) for sz in (1, -1)], np.float64)
    return transform_points(box_to, signs * np.array([length, w, h]) / 2)


def points_in_box(points: np.ndarray, box_to: np.ndarray, size) -> np.ndarray:
    """[p] bool: points [p, 3] inside the box (``box_to`` [4, 4] maps box frame -> the points' frame)."""
    w, length, h = size  # nuScenes order
    return points_in_boxes(points, np.asarray(box_to)[None], [[length, w, h]])[:, 0]


def read_lidar(path: Path, what: str = "LiDAR sweep", dataroot: Path | None = None) -> np.ndarray:
    """[p, 5] float32 (x, y, z, intensity, ring) of a ``.pcd.bin`` in the sensor frame.

    Raises:
      DamagedFileError: (an OSError) naming the file when its size is not a whole number of points.
    """
    size = Path(path).stat().st_size
    if size % 20:
        raise damaged_file(
            path,
            f"{size} bytes, not a whole number of points (5 float32 each: x, y, z, intensity, ring)",
            what,
            dataroot,
        )
    return np.fromfile(path, np.float32).reshape(-1, 5)


# What PIL raises on a file it cannot decode (truncated, corrupt, not an image).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, Image.DecompressionBombError)


@contextlib.contextmanager
def _strict_decoding():
    """Within the block PIL raises on a truncated image (``ImageFile.LOAD_TRUNCATED_IMAGES`` False, its default,
    which another library may have changed)."""
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        yield
        return
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = True


def _decode_reason(err: BaseException) -> str:
    if isinstance(err, UnidentifiedImageError):
        return "not an image file PIL can identify (empty, cut short at the start, or not a JPEG/PNG)"
    return f"cannot be decoded: {err}"


def verify_image(
    data: bytes | Path, path: Path, what: str = "", dataroot: Path | None = None
) -> tuple[int, int]:
    """Decodes an image file's whole content (at 1/8 scale for JPEGs: all the compressed data is read, at a third
    of the cost of full size) and returns its ``(height, width)``.

    Args:
      data: the file's bytes, or the path to read.
      path: the file (for the message).
      what: what the file is, for the message (e.g. ``camera CAM_FRONT of sample <token>``).
      dataroot: the dataroot, to name the file relative to it.

    Raises:
      DamagedFileError: (an OSError) naming the file when it is truncated or corrupt.
    """
    try:
        with _strict_decoding(), Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            hw = (img.height, img.width)
            img.draft("RGB", (max(img.width // 8, 1), max(img.height // 8, 1)))
            img.load()
    except PermissionError:
        raise  # names the file already, and is no damage
    except DECODE_ERRORS as err:
        raise damaged_file(path, _decode_reason(err), what, dataroot) from err
    return hw


class MapMask:
    """A semantic-prior mask [H, W] kept as packed bits (about 40 MB for a 15856 x 20250 map)."""

    def __init__(self, mask: np.ndarray):
        self.shape = tuple(mask.shape)
        self.bits = np.packbits(mask, axis=1)  # H ceil(W / 8)

    def at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """[...] bool mask values at integer pixels; False outside the mask."""
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        inside = (rows >= 0) & (rows < self.shape[0]) & (cols >= 0) & (cols < self.shape[1])
        r, c = np.where(inside, rows, 0), np.where(inside, cols, 0)
        return inside & ((self.bits[r, c >> 3] >> (7 - (c & 7))) & 1).astype(bool)


@functools.lru_cache(maxsize=4)  # one per nuScenes location
def map_mask(path: Path) -> MapMask:
    """The semantic-prior mask of ``path``, decoded once and kept packed."""
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the masks are 15856 x 20250 pixels
    try:
        with _strict_decoding(), Image.open(path) as img:
            return MapMask(np.asarray(img.convert("L")) > 127)
    except PermissionError:
        raise  # names the file already, and is no damage
    except DECODE_ERRORS as err:
        raise damaged_file(path, _decode_reason(err), "semantic-prior map mask") from err
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def global_to_map_pixel(xy: np.ndarray, mask_height: int) -> np.ndarray:
    """[..., 2] integer (row, col) pixels of global (x, y) in a mask (the devkit's ``MapMask`` convention).

    Column ``x / 0.1``, row ``H - y / 0.1`` (the image's top row is the map's largest y), truncated.
    """
    col = xy[..., 0] / MAP_RESOLUTION
    row = mask_height - xy[..., 1] / MAP_RESOLUTION
    return np.stack([row, col], -1).astype(np.int64)


def drivable_raster(mask: MapMask, ego_to_global: np.ndarray, grid: BEVGrid) -> np.ndarray:
    """[x, y] uint8: 1 where the cell centre (z = 0) lies on the drivable-area mask."""
    centres = grid.cell_centers()  # x y 2
    nx, ny = centres.shape[:2]
    pts = np.concatenate([centres.reshape(-1, 2), np.zeros((nx * ny, 1))], -1).astype(np.float64)
    rc = global_to_map_pixel(transform_points(ego_to_global, pts)[:, :2], mask.shape[0])
    return mask.at(rc[:, 0], rc[:, 1]).reshape(nx, ny).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _expansion(dataroot: Path, location: str) -> MapExpansion | None:
    return MapExpansion.find(dataroot, location)


def map_layers(tables: NuScenesTables, sample_token: str, ego_to_global: np.ndarray, grid: BEVGrid) -> dict:
    """``{class: [x, y] uint8}`` map labels of a sample: the six map classes from the map expansion of the log's
    location when ``maps/expansion/<location>.json`` exists, else drivable area from the semantic-prior mask."""
    expansion = _expansion(tables.dataroot, tables.log_of(sample_token)["location"])
    if expansion is not None:
        return expansion.raster(ego_to_global, grid)
    # Keyed by the real file: one decoding per mask, whatever links lead to it.
    mask = map_mask(tables.map_path(sample_token).resolve())
    return {"drivable_area": drivable_raster(mask, ego_to_global, grid)}


def object_raster(boxes: list[tuple[str, np.ndarray, list]], grid: BEVGrid) -> np.ndarray:
    """[x, y, k] uint8 object layers: box footprints (ego frame) drawn as filled polygons.

    Args:
      boxes: (bev class, box -> ego [4, 4], size (w, l, h)) per object.
    """
    nx, ny, _ = grid.shape
    out = np.zeros((nx, ny, NUM_BEV_CLASSES), np.uint8)
    for name in {b[0] for b in boxes}:
        mine = [b for b in boxes if b[0] == name]
        poses = np.stack([b[1] for b in mine])
        length_width = np.array([[b[2][1], b[2][0]] for b in mine], np.float64)  # nuScenes size is (w, l, h)
        out[..., BEV_CLASS_ID[name]] = raster.fill_boxes(poses, length_width, grid)
    return out


def load_image(
    path: Path, intrinsic: np.ndarray, image_hw, what: str = "camera image", dataroot: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """[h, w, 3] uint8 image, resized to ``image_hw`` when given, and its [3, 3] intrinsics scaled to match.

    Pixel centres sit at integer coordinates, so u' = s (u + 0.5) - 0.5.

    Raises:
      DamagedFileError: (an OSError) naming the file (relative to ``dataroot`` too, and ``what`` it is) when it
        is truncated or corrupt.
    """
    try:
        with _strict_decoding(), Image.open(path) as src:
            img = src.convert("RGB")
    except PermissionError:
        raise  # names the file already, and is no damage
    except DECODE_ERRORS as err:
        raise damaged_file(path, _decode_reason(err), what, dataroot) from err
    k = intrinsic.copy()
    if image_hw is not None and tuple(image_hw) != (img.height, img.width):
        h, w = image_hw
        sx, sy = w / img.width, h / img.height
        k[0] *= sx
        k[1] *= sy
        k[0, 2] += 0.5 * sx - 0.5
        k[1, 2] += 0.5 * sy - 0.5
        img = img.resize((w, h), Image.BILINEAR)
    return np.asarray(img, np.uint8), k


def image_size(path: Path, what: str = "", dataroot: Path | None = None) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header; DamagedFileError naming it when that is unreadable."""
    try:
        with Image.open(path) as header:
            return header.height, header.width
    except PermissionError:
        raise  # names the file already, and is no damage
    except DECODE_ERRORS as err:
        raise damaged_file(path, _decode_reason(err), what, dataroot) from err


def camera_jpeg(tables: NuScenesTables, sample_token: str, channel: str) -> tuple[bytes, tuple[int, int]]:
    """The bytes of a keyframe's camera file, checked to decode whole, and its ``(height, width)``.

    Raises:
      DamagedFileError: (an OSError) naming the file (relative to the dataroot and absolute), the sample and the
        camera when the file is truncated or corrupt.
    """
    path = tables.path(tables.sample_data(sample_token, channel))
    data = path.read_bytes()
    return data, verify_image(data, path, f"camera {channel} of sample {sample_token}", tables.dataroot)


def lidar_sweeps(tables: NuScenesTables, lidar_sd: dict, num_sweeps: int) -> list[dict]:
    """Up to ``num_sweeps`` earlier LiDAR sample_data of a keyframe's, newest first (following ``prev``)."""
    out, token = [], lidar_sd.get("prev", "")
    while token and len(out) < num_sweeps:
        sd = tables.get("sample_data", token)
        out.append(sd)
        token = sd.get("prev", "")
    return out


def lidar_in_ego(tables: NuScenesTables, sd: dict, key_sd: dict) -> np.ndarray:
    """[p, 3] float64 points of a LiDAR sample_data in the ego frame at ``key_sd``'s timestamp:
    ego_key <- global <- ego_sweep <- sensor."""
    what = f"{LIDAR_CHANNEL} of sample {sd['sample_token']}"
    raw = read_lidar(tables.path(sd), what, tables.dataroot)[:, :3].astype(np.float64)
    if sd["token"] == key_sd["token"]:
        return transform_points(tables.sensor_to_ego(sd), raw)
    key_from_sweep = invert_rigid(tables.ego_to_global(key_sd)) @ tables.ego_to_global(sd)
    return transform_points(key_from_sweep @ tables.sensor_to_ego(sd), raw)


def camera_to_lidar_ego(tables: NuScenesTables, cam_sd: dict, lidar_sd: dict) -> np.ndarray:
    """[4, 4] float64 camera -> ego at the LiDAR timestamp: ego_lidar <- global <- ego_cam <- cam."""
    global_from_cam = tables.ego_to_global(cam_sd) @ tables.sensor_to_ego(cam_sd)
    return invert_rigid(tables.ego_to_global(lidar_sd)) @ global_from_cam


def annotation_boxes(tables: NuScenesTables, sample_token: str, ego_from_global: np.ndarray) -> list[dict]:
    """The sample's annotations with ``box_to_ego`` [4, 4] and ``bev_class`` (None for other categories)."""
    out = []
    for ann in tables.annotations(sample_token):
        ann["box_to_ego"] = box_to_frame(ego_from_global, ann)
        ann["bev_class"] = bev_class_of(ann["category_name"])
        out.append(ann)
    return out


def _lidar_labels(points: np.ndarray, boxes: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """[p] uint8 semantic class and [p] int32 instance (annotation index + 1) of points inside object boxes."""
    cls = np.zeros(len(points), np.uint8)
    inst = np.zeros(len(points), np.int32)
    objects = [(n, b) for n, b in enumerate(boxes) if b["bev_class"] is not None]
    if not objects:
        return cls, inst
    poses = np.stack([b["box_to_ego"] for _, b in objects])
    sizes = np.array([[b["size"][1], b["size"][0], b["size"][2]] for _, b in objects])  # (w, l, h) -> l, w, h
    for (n, box), inside in zip(objects, points_in_each_box(points, poses, sizes), strict=True):
        cls[inside] = SEMANTIC_CLASS_ID[box["bev_class"]]
        inst[inside] = n + 1
    return cls, inst


def load_sample(
    tables: NuScenesTables,
    sample_token: str,
    grid: BEVGrid | None = None,
    image_hw: tuple[int, int] | None = None,
    num_points: int | None = None,
    cameras: tuple[str, ...] = NUSCENES_CAMERAS,
    num_sweeps: int = 0,
    decode_images: bool = True,
) -> dict:
    """One keyframe as a dict of NumPy arrays following ``bevjax.schema``.

    Args:
      tables: the dataroot's tables.
      sample_token: the keyframe.
      grid: BEV grid of the labels (default ``BEVGrid()``).
      image_hw: resize images (and scale intrinsics) to this size; None keeps the stored size.
      num_points: pad (or cut) the LiDAR points to this many; None keeps them all.
      cameras: camera channels in order.
      num_sweeps: also merge up to this many earlier LiDAR sweeps (fewer where the scene starts), moved
        into the keyframe's ego frame after the keyframe's own points; ``lidar_class`` / ``lidar_instance``
        of all points come from the keyframe's boxes (moving objects smear over the sweeps).
      decode_images: False leaves out ``images`` (for callers that copy the JPEG files); needs ``image_hw=None``.

    Returns:
      The schema's keys; ``lidar_points`` [p, 3] in the ego frame at the LiDAR timestamp.
    """
    grid = grid or BEVGrid()
    sample = tables.get("sample", sample_token)
    lidar_sd = tables.sample_data(sample_token, LIDAR_CHANNEL)
    ego_to_global = tables.ego_to_global(lidar_sd)
    ego_from_global = invert_rigid(ego_to_global)

    if not decode_images and image_hw is not None:
        raise ValueError("load_sample: decode_images=False keeps the stored size; it needs image_hw=None")
    images, intrinsics, cam_to_ego, sizes = [], [], [], set()
    for channel in cameras:
        sd = tables.sample_data(sample_token, channel)
        what = f"camera {channel} of sample {sample_token}"
        if decode_images:
            img, k = load_image(tables.path(sd), tables.camera_intrinsic(sd), image_hw, what, tables.dataroot)
            images.append(img)
            sizes.add(img.shape[:2])
        else:
            k = tables.camera_intrinsic(sd)
            sizes.add(image_size(tables.path(sd), what, tables.dataroot))
        intrinsics.append(k)
        cam_to_ego.append(camera_to_lidar_ego(tables, sd, lidar_sd))
    if len(sizes) != 1:
        raise ValueError(
            f"sample '{sample_token}': cameras {cameras} have different image sizes {sorted(sizes)}"
        )
    hw = sizes.pop()

    sweeps = [lidar_sd] + lidar_sweeps(tables, lidar_sd, num_sweeps)
    points = np.concatenate([lidar_in_ego(tables, sd, lidar_sd) for sd in sweeps])  # p 3
    p = len(points) if num_points is None else int(num_points)
    boxes = annotation_boxes(tables, sample_token, ego_from_global)
    lidar_class, lidar_instance = _lidar_labels(points, boxes)

    objects = [(b["bev_class"], b["box_to_ego"], b["size"]) for b in boxes if b["bev_class"] is not None]
    bev = object_raster(objects, grid)
    for name, layer in map_layers(tables, sample_token, ego_to_global, grid).items():
        bev[..., BEV_CLASS_ID[name]] = layer
    n = len(cameras)
    scene_samples = tables.scene_samples(sample["scene_token"])
    first = tables.get("sample", scene_samples[0])
    f32 = np.float32
    out = {"images": np.stack(images)} if decode_images else {}
    return out | {
        "intrinsics": np.stack(intrinsics).astype(f32),
        "cam_to_ego": np.stack(cam_to_ego).astype(f32),
        "ego_to_world": ego_to_global.astype(f32),
        "post_rots": np.tile(np.eye(3, dtype=f32), (n, 1, 1)),
        "post_trans": np.zeros((n, 3), f32),
        "bev_labels": bev,
        "bev_visibility": raster.frustum_visibility(intrinsics, cam_to_ego, hw, grid),
        "lidar_points": pad_points(points.astype(f32), p),
        "lidar_valid": np.arange(p) < len(points),
        "lidar_class": pad_points(lidar_class, p),
        "lidar_instance": pad_points(lidar_instance, p),
        "lidar_ground": np.zeros(p, bool),
        "lidar_flow": np.zeros((p, 3), f32),
        "next_ego_from_ego": np.eye(4, dtype=f32),
        "next_lidar_points": np.zeros((p, 3), f32),
        "next_lidar_valid": np.zeros(p, bool),
        "sequence_id": np.int32(list(tables.tables["scene"]).index(sample["scene_token"])),
        "frame_index": np.int32(scene_samples.index(sample_token)),
        "timestamp": np.float64((sample["timestamp"] - first["timestamp"]) * 1e-6),
        "noise_level": f32(0.0),
    }


__all__ = [
    "annotation_boxes",
    "bev_class_of",
    "box_corners",
    "camera_jpeg",
    "camera_to_lidar_ego",
    "drivable_raster",
    "load_sample",
    "map_mask",
    "points_in_box",
    "verify_image",
]
