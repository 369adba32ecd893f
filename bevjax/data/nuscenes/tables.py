"""A small reader of a nuScenes dataroot: the JSON tables by token and the reverse indexes a sample needs.

Layout of ``<dataroot>``::

    <version>/*.json          the tables (sample, sample_data, sample_annotation, calibrated_sensor, ...)
    samples/<CHANNEL>/*       keyframe files (camera jpg, LiDAR ``.pcd.bin``)
    maps/<token>.png          semantic-prior masks (drivable area, 0.1 m per pixel)

Quaternions are (w, x, y, z); a ``translation`` + ``rotation`` pair maps points of the child frame into the
parent frame (sensor -> ego for calibrated_sensor, ego -> global for ego_pose).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from bevjax.geometry.transforms import quaternion_to_matrix

TABLES = (
    "category",
    "attribute",
    "visibility",
    "instance",
    "sensor",
    "calibrated_sensor",
    "ego_pose",
    "log",
    "scene",
    "sample",
    "sample_data",
    "sample_annotation",
    "map",
)
OPTIONAL_TABLES = ("attribute", "visibility", "map")


class DamagedFileError(OSError):
    """A dataroot file that exists but cannot be read or decoded (truncated, corrupt); the one-line message names
    the file (relative to the dataroot and absolute), what it belongs to and what to do."""


def damaged_file(
    path: str | Path, reason: str, what: str = "", dataroot: str | Path | None = None
) -> DamagedFileError:
    """The :class:`DamagedFileError` of a nuScenes file that cannot be read.

    Args:
      path: the file.
      reason: what went wrong (e.g. the decoder's message).
      what: what the file is (e.g. ``camera CAM_FRONT of sample <token>``), or empty.
      dataroot: the dataroot, to also name the file relative to it.

    Returns:
      The error (one line), to raise.
    """
    absolute = Path(os.path.normpath(Path(path).absolute()))
    name = str(path)
    if dataroot is not None:
        try:
            name = str(absolute.relative_to(os.path.normpath(Path(dataroot).absolute())))
        except ValueError:
            pass
    real = Path(path).resolve()
    where = f"{absolute}" + (f" (really {real}, through a link)" if real != absolute else "")
    reason = " ".join(str(reason).split()) or "unreadable"
    what = f" ({what})" if what else ""
    return DamagedFileError(
        f"damaged nuScenes file {name}{what}: {reason}; the file at {where} is incomplete or corrupt: download it "
        "again or restore it from the nuScenes archive it came from, then run the command again"
    )


def find_version(dataroot: str | Path) -> str:
    """The one version folder (``v1.0-*``) of a dataroot; a clear error when there is none or several."""
    root = Path(dataroot)
    if not root.is_dir():
        raise FileNotFoundError(f"nuScenes dataroot {root} does not exist")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("v1.0-"))
    if len(found) != 1:
        what = f"several ({', '.join(found)}): choose one" if found else "none"
        raise ValueError(f"nuScenes dataroot {root}: expected one v1.0-* version folder, found {what}")
    return found[0]


def rigid_from_pose(record: dict) -> np.ndarray:
    """[4, 4] float64 transform of a record with ``translation`` [3] and ``rotation`` (w, x, y, z)."""
    out = np.eye(4)
    out[:3, :3] = quaternion_to_matrix(record["rotation"])
    out[:3, 3] = record["translation"]
    return out


class NuScenesTables:
    """The tables of ``<dataroot>/<version>`` as ``{table: {token: record}}`` plus reverse indexes.

    Args:
      dataroot: folder holding ``<version>/``, ``samples/`` and ``maps/``.
      version: name of the table folder (``v1.0-trainval``, ``v1.0-mini``, ``v1.0-test``, ...).
    """

    def __init__(self, dataroot, version: str = "v1.0-trainval"):
        self.dataroot = Path(dataroot)
        self.version = version
        folder = self.dataroot / version
        if not folder.is_dir():
            raise FileNotFoundError(f"nuScenes table folder not found: {folder}")
        self.tables: dict[str, dict[str, dict]] = {}
        for name in TABLES:
            path = folder / f"{name}.json"
            if not path.is_file():
                if name in OPTIONAL_TABLES:
                    self.tables[name] = {}
                    continue
                raise FileNotFoundError(f"nuScenes table not found: {path}")
            try:
                with open(path, "rb") as f:
                    self.tables[name] = {r["token"]: r for r in json.load(f)}
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise damaged_file(path, f"not valid JSON ({err})", f"table {name}", self.dataroot) from err
        self._index()

    def _index(self) -> None:
        """Builds sample -> {channel: sample_data}, sample -> [annotation], log -> map filename."""
        self.sample_data_by_channel: dict[str, dict[str, str]] = {t: {} for t in self.tables["sample"]}
        for token, sd in self.tables["sample_data"].items():
            if not sd.get("is_key_frame", True) or sd["sample_token"] not in self.sample_data_by_channel:
                continue
            sensor = self.sensor_of(token)
            self.sample_data_by_channel[sd["sample_token"]][sensor["channel"]] = token
        self.annotations_by_sample: dict[str, list[str]] = {t: [] for t in self.tables["sample"]}
        for token, ann in self.tables["sample_annotation"].items():
            self.annotations_by_sample.setdefault(ann["sample_token"], []).append(token)
        self.map_by_log: dict[str, str] = {}
        for record in self.tables["map"].values():
            for log_token in record.get("log_tokens", []):
                self.map_by_log[log_token] = record["filename"]

    def get(self, table: str, token: str) -> dict:
        """The record ``token`` of ``table``; KeyError names both."""
        if table not in self.tables:
            raise KeyError(f"unknown nuScenes table '{table}'; tables are {sorted(self.tables)}")
        try:
            return self.tables[table][token]
        except KeyError:
            raise KeyError(f"token '{token}' not found in nuScenes table '{table}'") from None

    def sensor_of(self, sample_data_token: str) -> dict:
        """The sensor record (``channel``, ``modality``) of a sample_data."""
        sd = self.get("sample_data", sample_data_token)
        calib = self.get("calibrated_sensor", sd["calibrated_sensor_token"])
        return self.get("sensor", calib["sensor_token"])

    def sample_data(self, sample_token: str, channel: str) -> dict:
        """The keyframe sample_data record of ``channel`` (e.g. ``CAM_FRONT``, ``LIDAR_TOP``) in a sample."""
        channels = self.sample_data_by_channel.get(sample_token)
        if channels is None:
            raise KeyError(f"token '{sample_token}' not found in nuScenes table 'sample'")
        if channel not in channels:
            raise KeyError(
                f"sample '{sample_token}' has no sample_data for channel '{channel}'; has {sorted(channels)}"
            )
        return self.get("sample_data", channels[channel])

    def annotations(self, sample_token: str) -> list[dict]:
        """The sample_annotation records of a sample, each with its ``category_name`` added."""
        self.get("sample", sample_token)
        out = []
        for token in self.annotations_by_sample.get(sample_token, []):
            ann = dict(self.get("sample_annotation", token))
            instance = self.get("instance", ann["instance_token"])
            ann["category_name"] = self.get("category", instance["category_token"])["name"]
            out.append(ann)
        return out

    def ego_to_global(self, sample_data: dict) -> np.ndarray:
        """[4, 4] float64 ego -> global at the timestamp of ``sample_data``."""
        return rigid_from_pose(self.get("ego_pose", sample_data["ego_pose_token"]))

    def sensor_to_ego(self, sample_data: dict) -> np.ndarray:
        """[4, 4] float64 sensor -> ego of ``sample_data`` (calibrated_sensor)."""
        return rigid_from_pose(self.get("calibrated_sensor", sample_data["calibrated_sensor_token"]))

    def camera_intrinsic(self, sample_data: dict) -> np.ndarray:
        """[3, 3] float64 pinhole matrix of a camera sample_data."""
        calib = self.get("calibrated_sensor", sample_data["calibrated_sensor_token"])
        k = np.asarray(calib.get("camera_intrinsic") or [], np.float64)
        if k.shape != (3, 3):
            raise ValueError(f"calibrated_sensor '{calib['token']}' has no 3x3 camera_intrinsic")
        return k

    def scene_of(self, sample_token: str) -> dict:
        return self.get("scene", self.get("sample", sample_token)["scene_token"])

    def log_of(self, sample_token: str) -> dict:
        return self.get("log", self.scene_of(sample_token)["log_token"])

    def map_path(self, sample_token: str) -> Path:
        """Path of the semantic-prior mask PNG of the sample's log."""
        log = self.log_of(sample_token)
        if log["token"] not in self.map_by_log:
            raise KeyError(f"no map record lists log '{log['token']}' ({log.get('location')})")
        path = self.dataroot / self.map_by_log[log["token"]]
        if not path.is_file():
            raise FileNotFoundError(f"nuScenes map mask not found: {path}")
        return path

    def path(self, sample_data: dict) -> Path:
        """Path of a sample_data's file; FileNotFoundError names it when absent."""
        path = self.dataroot / sample_data["filename"]
        if not path.is_file():
            raise FileNotFoundError(f"nuScenes file not found: {path}")
        return path

    def scene_samples(self, scene_token: str) -> list[str]:
        """Sample tokens of a scene in time order (following ``next`` links)."""
        token, out = self.get("scene", scene_token)["first_sample_token"], []
        while token:
            out.append(token)
            token = self.get("sample", token)["next"]
        return out
