"""The Argoverse 2 per-log vector map and ground-height raster, and their BEV labels.

Layout of ``<log_dir>/map/``::

    log_map_archive_<log_id>____<CITY>_city_<n>.json   drivable_areas (area_boundary), pedestrian_crossings
                                                      (edge1, edge2), lane_segments (left/right_lane_boundary
                                                      with *_lane_mark_type, *_neighbor_id, lane_type)
    <log_id>_ground_height_surface____<CITY>.npy       ground height (metres, city frame), NaN where unknown
    <log_id>___img_Sim2_city.json                      R, t, s: raster (column, row) = s (R city_xy + t)

All coordinates are in the city frame. BEV classes drawn from it: ``drivable_area`` (the drivable-area polygons),
``ped_crossing`` (the polygon between a crossing's two edges) and ``divider``: painted lane boundaries
(mark type other than NONE / UNKNOWN) that separate two lanes, i.e. with a neighbouring lane on that side or a
yellow marking (a centre line between opposite directions). White edge lines at the kerb are not dividers, as in
nuScenes. Walkways, stop lines and car parks are not in the Argoverse 2 map.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bevjax.data import raster
from bevjax.geometry.grid import BEVGrid

GROUND_HEIGHT_THRESHOLD_M = 0.3  # the av2 map API's ground rule: |z - ground| <= 0.3 m, or below the ground
UNPAINTED = ("NONE", "UNKNOWN")
MAP_CLASSES = ("drivable_area", "ped_crossing", "divider")


def _xyz(points: list[dict]) -> np.ndarray:
    return np.array([[p["x"], p["y"], p.get("z", 0.0)] for p in points], np.float64).reshape(-1, 3)


def _is_divider(lane: dict, side: str) -> bool:
    mark = str(lane.get(f"{side}_lane_mark_type", "NONE"))
    if mark in UNPAINTED:
        return False
    return lane.get(f"{side}_neighbor_id") is not None or "YELLOW" in mark


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise FileNotFoundError(f"Argoverse 2 map: expected one {pattern} in {folder}, found {len(found)}")
    return found[0]


@dataclass
class AV2Map:
    """One log's map: polygons and lines in the city frame, the ground-height raster and its Sim(2).

    Attributes:
      drivable_areas: [m, 3] boundary rings.
      ped_crossings: [m, 3] rings (edge1 then edge2 reversed).
      dividers: [m, 3] polylines (see the module docstring).
      ground_height: [H, W] float32 or None; ``ground_sim2``: (R [2, 2], t [2], s) city -> raster.
    """

    drivable_areas: list[np.ndarray]
    ped_crossings: list[np.ndarray]
    dividers: list[np.ndarray]
    ground_height: np.ndarray | None = None
    ground_sim2: tuple[np.ndarray, np.ndarray, float] | None = None

    @classmethod
    def load(cls, log_dir) -> AV2Map:
        """Reads ``<log_dir>/map``; errors name the missing file or key."""
        folder = Path(log_dir) / "map"
        if not folder.is_dir():
            raise FileNotFoundError(f"Argoverse 2 map folder not found: {folder}")
        path = _one(folder, "log_map_archive_*.json")
        with open(path) as f:
            data = json.load(f)
        for key in ("drivable_areas", "pedestrian_crossings", "lane_segments"):
            if key not in data:
                raise KeyError(f"{path}: missing '{key}'; it has {sorted(data)}")
        areas = [_xyz(a["area_boundary"]) for a in data["drivable_areas"].values()]
        crossings = [
            np.concatenate([_xyz(c["edge1"]), _xyz(c["edge2"])[::-1]])
            for c in data["pedestrian_crossings"].values()
        ]
        dividers = [
            _xyz(lane[f"{side}_lane_boundary"])
            for lane in data["lane_segments"].values()
            for side in ("left", "right")
            if _is_divider(lane, side)
        ]
        height = sim2 = None
        heights = sorted(folder.glob("*_ground_height_surface____*.npy"))
        if heights:
            height = np.load(heights[0]).astype(np.float32)
            with open(_one(folder, "*___img_Sim2_city.json")) as f:
                d = json.load(f)
            sim2 = (np.asarray(d["R"], np.float64).reshape(2, 2), np.asarray(d["t"], np.float64), float(d["s"]))
        return cls(areas, crossings, dividers, height, sim2)

    def raster(self, ego_to_city: np.ndarray, grid: BEVGrid, divider_width_m: float | None = None) -> dict:
        """``{class: [x, y] uint8}`` for ``MAP_CLASSES`` around the ego pose ``ego_to_city`` [4, 4]."""

        def ego(rings):
            return [raster.to_ego(r, ego_to_city) for r in rings]  # with z: the ego frame is tilted

        return {
            "drivable_area": raster.fill_polygons(ego(self.drivable_areas), grid),
            "ped_crossing": raster.fill_polygons(ego(self.ped_crossings), grid),
            "divider": raster.draw_polylines(ego(self.dividers), grid, divider_width_m),
        }

    def ground_height_at(self, points_city: np.ndarray) -> np.ndarray:
        """[p] float64 ground height under city-frame points [p, >=2]; NaN outside the raster or where unknown."""
        if self.ground_height is None:
            raise FileNotFoundError("this Argoverse 2 map has no ground-height raster")
        rot, t, s = self.ground_sim2
        colrow = (s * (np.asarray(points_city, np.float64)[:, :2] @ rot.T + t)).astype(np.int64)
        h, w = self.ground_height.shape
        inside = (colrow[:, 0] >= 0) & (colrow[:, 0] < w) & (colrow[:, 1] >= 0) & (colrow[:, 1] < h)
        out = np.full(len(colrow), np.nan)
        out[inside] = self.ground_height[colrow[inside, 1], colrow[inside, 0]]
        return out

    def is_ground(self, points_city: np.ndarray) -> np.ndarray:
        """[p] bool: within 0.3 m of the ground surface or below it (False where the height is unknown)."""
        z = np.asarray(points_city, np.float64)[:, 2]
        ground = self.ground_height_at(points_city)
        with np.errstate(invalid="ignore"):
            return (np.abs(z - ground) <= GROUND_HEIGHT_THRESHOLD_M) | (z < ground)
