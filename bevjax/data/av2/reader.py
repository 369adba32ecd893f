"""Reads one Argoverse 2 sensor log directory (feather files, read with pyarrow).

Layout of ``<split>/<log_id>/``::

    sensors/lidar/<timestamp_ns>.feather   x, y, z (ego frame), intensity, laser_number, offset_ns
    city_SE3_egovehicle.feather            timestamp_ns, qw, qx, qy, qz, tx_m, ty_m, tz_m
    annotations.feather                    timestamp_ns, track_uuid, category, length_m, width_m, height_m,
                                           qw, qx, qy, qz, tx_m, ty_m, tz_m (ego frame), num_interior_pts
    calibration/intrinsics.feather         sensor_name, fx_px, fy_px, cx_px, cy_px, k1, k2, k3, height_px, width_px
    calibration/egovehicle_SE3_sensor.feather  sensor_name, qw, qx, qy, qz, tx_m, ty_m, tz_m
    flow_labels.feather                    (scene-flow data) flow_tx_m, flow_ty_m, flow_tz_m, classes, dynamic,
                                           is_ground_0 for the points of the first sweep
    ego_motion.npz                         (scene-flow data) ego_motion = ego1_SE3_ego0

AV2's ``a_SE3_b`` is bevjax's ``a_from_b`` (``bevjax.schema``); flows follow the same (AV2) convention.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as parquet

from bevjax.geometry.transforms import invert_rigid, quaternion_to_matrix

POSE_COLUMNS = ("qw", "qx", "qy", "qz", "tx_m", "ty_m", "tz_m")
FLOW_COLUMNS = ("flow_tx_m", "flow_ty_m", "flow_tz_m")


class DamagedFileError(OSError):
    """An Argoverse 2 file that exists but cannot be read (truncated, corrupt); the one-line message names the
    file and what to do."""


class MissingEntryError(KeyError, ValueError):
    """A file that lacks a column, array, timestamp or sensor the reader needs. A KeyError as before, and a
    ValueError so that the command lines report it in one line; its text is the message itself, unquoted."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def damaged_file(path: str | Path, reason: str) -> DamagedFileError:
    """The :class:`DamagedFileError` of an Argoverse 2 file that cannot be read (``reason``: what went wrong)."""
    path = Path(path)
    absolute = Path(os.path.normpath(path.absolute()))
    real = path.resolve()
    where = f"{absolute}" + (f" (really {real}, through a link)" if real != absolute else "")
    reason = " ".join(str(reason).split()) or "unreadable"
    return DamagedFileError(
        f"damaged Argoverse 2 file {where}: {reason}; it is incomplete or corrupt (e.g. a download cut short): "
        "download its log again or restore the file from the archive it came from, then run the command again"
    )


def read_arrow_table(path: Path) -> pa.Table:
    """The table of a feather (Arrow IPC) or ``.parquet`` file, read whole: every Argoverse 2 table read goes
    through here.

    Raises:
      FileNotFoundError: naming the file when it is absent.
      DamagedFileError: (an OSError) naming the file when pyarrow cannot read it (truncated, corrupt).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Argoverse 2 file not found: {path}")
    try:
        if path.suffix == ".parquet":
            table = parquet.read_table(path)
        else:
            table = feather.read_table(path)
        table.validate()
        return table
    except PermissionError:
        raise  # names the file already, and is no damage
    except (pa.ArrowException, OSError) as err:
        size = path.stat().st_size
        raise damaged_file(
            path, f"pyarrow cannot read it ({type(err).__name__}: {err}; the file has {size} bytes)"
        ) from err


def read_columns(path: Path, columns, optional=()) -> dict[str, np.ndarray]:
    """``{column: [rows] array}`` of a feather file, plus those of ``optional`` that the file has.

    FileNotFoundError / MissingEntryError (a KeyError) name the missing file or columns; DamagedFileError (an
    OSError) names a file that cannot be read (:func:`read_arrow_table`).
    """
    path = Path(path)
    table = read_arrow_table(path)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise MissingEntryError(f"{path}: missing columns {missing}; it has {table.column_names}")
    present = [c for c in optional if c in table.column_names]
    try:
        return {c: table.column(c).to_numpy() for c in (*columns, *present)}
    except pa.ArrowException as err:
        raise damaged_file(path, f"pyarrow cannot convert its columns ({type(err).__name__}: {err})") from err


def se3_from_columns(cols: dict[str, np.ndarray]) -> np.ndarray:
    """[r, 4, 4] float64 rigid transforms from quaternion (qw, qx, qy, qz) and translation (tx_m, ty_m, tz_m) columns."""
    quats = np.stack([cols[c] for c in ("qw", "qx", "qy", "qz")], -1).astype(np.float64)  # r 4
    out = np.zeros((len(quats), 4, 4))
    out[:, :3, :3] = np.reshape([quaternion_to_matrix(q) for q in quats], (-1, 3, 3))
    out[:, :3, 3] = np.stack([cols[c] for c in ("tx_m", "ty_m", "tz_m")], -1)
    out[:, 3, 3] = 1.0
    return out


class AV2Log:
    """One Argoverse 2 sensor log: sweeps, poses, cuboids, calibration and (where present) scene-flow labels."""

    def __init__(self, log_dir):
        self.log_dir = Path(log_dir)
        if not self.log_dir.is_dir():
            raise FileNotFoundError(f"Argoverse 2 log directory not found: {self.log_dir}")
        self.log_id = self.log_dir.name
        self._poses = None

    # LiDAR -----------------------------------------------------------------------------------------------------

    def lidar_timestamps(self) -> np.ndarray:
        """[t] int64 nanosecond timestamps of the LiDAR sweeps, ascending."""
        lidar_dir = self.log_dir / "sensors" / "lidar"
        if not lidar_dir.is_dir():
            raise FileNotFoundError(f"Argoverse 2 LiDAR directory not found: {lidar_dir}")
        return np.array(sorted(int(p.stem) for p in lidar_dir.glob("*.feather")), np.int64)

    def load_sweep(self, timestamp_ns: int) -> dict[str, np.ndarray]:
        """One sweep: ``lidar_points`` [n, 3] float32 (ego frame), ``intensity`` [n] float32, ``laser_number``
        [n] uint8 and ``offset_ns`` [n] int64 (time of the point relative to the sweep timestamp)."""
        path = self.log_dir / "sensors" / "lidar" / f"{int(timestamp_ns)}.feather"
        cols = read_columns(path, ("x", "y", "z", "intensity", "laser_number", "offset_ns"))
        return {
            "lidar_points": np.stack([cols[c] for c in "xyz"], -1).astype(np.float32),  # n 3
            "intensity": cols["intensity"].astype(np.float32),
            "laser_number": cols["laser_number"].astype(np.uint8),
            "offset_ns": cols["offset_ns"].astype(np.int64),
        }

    def load_flow_labels(self) -> dict[str, np.ndarray]:
        """Scene-flow labels of the first sweep of the pair: ``lidar_flow`` [n, 3] float32 (ego motion included),
        ``category_index`` [n] uint8 (0 background, av2 category index otherwise), ``dynamic`` [n] bool,
        ``lidar_ground`` [n] bool."""
        cols = read_columns(
            self.log_dir / "flow_labels.feather", FLOW_COLUMNS + ("classes", "dynamic", "is_ground_0")
        )
        return {
            "lidar_flow": np.stack([cols[c] for c in FLOW_COLUMNS], -1).astype(np.float32),  # n 3
            "category_index": cols["classes"].astype(np.uint8),
            "dynamic": cols["dynamic"].astype(bool),
            "lidar_ground": cols["is_ground_0"].astype(bool),
        }

    def load_ego_motion(self) -> np.ndarray:
        """[4, 4] float64 ego1_SE3_ego0 stored with the flow labels (``ego_motion.npz``)."""
        path = self.log_dir / "ego_motion.npz"
        if not path.is_file():
            raise FileNotFoundError(f"Argoverse 2 file not found: {path}")
        try:
            with np.load(path) as data:
                if "ego_motion" not in data:
                    raise MissingEntryError(f"{path}: missing array 'ego_motion'; it has {list(data.keys())}")
                return np.asarray(data["ego_motion"], np.float64).reshape(4, 4)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise damaged_file(path, f"numpy cannot read it ({type(err).__name__}: {err})") from err

    # Poses ------------------------------------------------------------------------------------------------------

    def poses(self) -> tuple[np.ndarray, np.ndarray]:
        """``(timestamps [t] int64, city_from_ego [t, 4, 4] float64)`` of every pose in the log, ascending."""
        if self._poses is None:
            cols = read_columns(
                self.log_dir / "city_SE3_egovehicle.feather", ("timestamp_ns",) + POSE_COLUMNS
            )
            order = np.argsort(cols["timestamp_ns"])
            self._poses = cols["timestamp_ns"][order].astype(np.int64), se3_from_columns(cols)[order]
        return self._poses

    def city_from_ego(self, timestamp_ns: int) -> np.ndarray:
        """[4, 4] float64 ego -> city pose at exactly ``timestamp_ns`` (KeyError if the log has none)."""
        stamps, poses = self.poses()
        i = np.searchsorted(stamps, int(timestamp_ns))
        if i == len(stamps) or stamps[i] != int(timestamp_ns):
            raise MissingEntryError(
                f"{self.log_dir / 'city_SE3_egovehicle.feather'}: no pose at timestamp {timestamp_ns}"
            )
        return poses[i]

    def next_ego_from_ego(self, timestamp_ns: int, next_timestamp_ns: int) -> np.ndarray:
        """[4, 4] float64 ego frame at ``timestamp_ns`` -> ego frame at ``next_timestamp_ns`` (ego1_SE3_ego0)."""
        return invert_rigid(self.city_from_ego(next_timestamp_ns)) @ self.city_from_ego(timestamp_ns)

    # Annotations and calibration --------------------------------------------------------------------------------

    def cuboids(self, timestamp_ns: int) -> dict:
        """3D boxes annotated at ``timestamp_ns``, in its ego frame.

        Returns:
          ``ego_from_object`` [m, 4, 4] float64 (box centre, x along the length), ``center`` [m, 3],
          ``size`` [m, 3] (length, width, height), ``category`` [m] str, ``track_id`` [m] str and, when the file
          has it, ``num_interior_pts`` [m] int64.
        """
        path = self.log_dir / "annotations.feather"
        table_cols = (
            "timestamp_ns",
            "track_uuid",
            "category",
            "length_m",
            "width_m",
            "height_m",
        ) + POSE_COLUMNS
        cols = read_columns(path, table_cols, optional=("num_interior_pts",))
        keep = cols["timestamp_ns"] == int(timestamp_ns)
        cols = {k: v[keep] for k, v in cols.items()}
        ego_from_object = se3_from_columns(cols)
        out = {
            "ego_from_object": ego_from_object,
            "center": ego_from_object[:, :3, 3].copy(),
            "size": np.stack([cols[c] for c in ("length_m", "width_m", "height_m")], -1).astype(np.float64),
            "category": cols["category"].astype(str),
            "track_id": cols["track_uuid"].astype(str),
        }
        if "num_interior_pts" in cols:
            out["num_interior_pts"] = cols["num_interior_pts"].astype(np.int64)
        return out

    def cameras(self) -> dict:
        """Calibration of the cameras named in ``calibration/intrinsics.feather``.

        Returns:
          ``names`` [n] str, ``intrinsics`` [n, 3, 3] float32, ``cam_to_ego`` [n, 4, 4] float32,
          ``image_hw`` [n, 2] int64, ``distortion`` [n, 3] float64 (k1, k2, k3).
        """
        calib = self.log_dir / "calibration"
        intr = read_columns(
            calib / "intrinsics.feather",
            ("sensor_name", "fx_px", "fy_px", "cx_px", "cy_px", "k1", "k2", "k3", "height_px", "width_px"),
        )
        extr = read_columns(calib / "egovehicle_SE3_sensor.feather", ("sensor_name",) + POSE_COLUMNS)
        names = intr["sensor_name"].astype(str)
        ego_from_sensor = dict(zip(extr["sensor_name"].astype(str), se3_from_columns(extr), strict=True))
        missing = [n for n in names if n not in ego_from_sensor]
        if missing:
            raise MissingEntryError(f"{calib / 'egovehicle_SE3_sensor.feather'}: no extrinsics for sensors {missing}")
        k = np.zeros((len(names), 3, 3), np.float32)
        k[:, 0, 0], k[:, 1, 1] = intr["fx_px"], intr["fy_px"]
        k[:, 0, 2], k[:, 1, 2], k[:, 2, 2] = intr["cx_px"], intr["cy_px"], 1.0
        return {
            "names": names,
            "intrinsics": k,
            "cam_to_ego": np.stack([ego_from_sensor[n] for n in names]).astype(np.float32),
            "image_hw": np.stack([intr["height_px"], intr["width_px"]], -1).astype(np.int64),
            "distortion": np.stack([intr[c] for c in ("k1", "k2", "k3")], -1).astype(np.float64),
        }
