"""World configuration and domain presets.

A domain name composes a city with optional modifiers: ``<city>[_night][_rain][_synthetic]``, e.g. ``boston``,
``singapore_night``, ``boston_rain_synthetic``. Cities differ in traffic side, road markings, textures, colours and
how densely buildings and vegetation line the road; night and rain change lighting and add sensor noise;
``_synthetic`` renders the images from a perturbed copy of the scene while the labels stay those of the true scene
(a "world model" whose output disagrees with its conditioning by a recorded amount).
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from bevjax.geometry.grid import BEVGrid
from bevjax.schema import NUSCENES_CAMERAS


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Everything that fixes the shapes and the content of rendered samples.

    Sample ``i`` of a split is a pure function of ``(config, domain, split, i)``: ``seed`` is the world seed.
    """

    seed: int = 0
    cameras: tuple[str, ...] = NUSCENES_CAMERAS
    image_hw: tuple[int, int] = (128, 352)
    grid: BEVGrid = BEVGrid()
    # Sequences: keyframes at ``keyframe_hz``; the LiDAR spins at ``lidar_hz`` and each keyframe carries the
    # sweep pair (t, t + 1 / lidar_hz).
    frames_per_sequence: int = 40
    keyframe_hz: float = 2.0
    lidar_hz: float = 10.0
    # Spinning LiDAR (nuScenes HDL-32E-like): beams spread between the elevation limits.
    lidar_beams: int = 32
    lidar_azimuths: int = 1024
    lidar_elevation_deg: tuple[float, float] = (-30.67, 10.67)
    lidar_max_range: float = 70.0
    # Scene representation: ground raster around the route and a fixed budget of box primitives.
    raster_size_m: float = 384.0
    raster_res: float = 0.1
    max_boxes: int = 192
    far: float = 250.0
    # Pixels are shaded from ``supersample**2`` rays (anti-aliasing); labels use the centre ray.
    supersample: int = 1

    @property
    def num_points(self) -> int:
        return self.lidar_beams * self.lidar_azimuths

    @property
    def raster_cells(self) -> int:
        return int(round(self.raster_size_m / self.raster_res))

    def replace(self, **kwargs) -> WorldConfig:
        return dataclasses.replace(self, **kwargs)


def tiny_config(**kwargs) -> WorldConfig:
    """A world small enough to render in a few milliseconds: for tests and smoke runs."""
    base = dict(
        cameras=("CAM_FRONT", "CAM_BACK"),
        image_hw=(32, 88),
        grid=BEVGrid((-25.0, 25.0, 1.0), (-25.0, 25.0, 1.0)),
        frames_per_sequence=4,
        lidar_beams=8,
        lidar_azimuths=256,
        raster_size_m=256.0,
        raster_res=0.2,
        max_boxes=96,
    )
    base.update(kwargs)
    return WorldConfig(**base)


@dataclasses.dataclass(frozen=True)
class City:
    name: str
    left_hand_traffic: bool
    centre_line_yellow: bool
    asphalt: tuple[float, float, float]
    sidewalk: tuple[float, float, float]
    terrain: tuple[float, float, float]
    building_palette: tuple[tuple[float, float, float], ...]
    vehicle_palette: tuple[tuple[float, float, float], ...]
    building_density: float  # buildings per 100 m of roadside
    vegetation_density: float  # trees per 100 m of roadside
    lane_width: float
    sidewalk_width: float
    setback: float  # gap between sidewalk and building fronts


CITIES = {
    "boston": City(
        name="boston",
        left_hand_traffic=False,
        centre_line_yellow=True,
        asphalt=(0.33, 0.33, 0.35),
        sidewalk=(0.62, 0.58, 0.52),
        terrain=(0.36, 0.42, 0.25),
        building_palette=(
            (0.55, 0.27, 0.2),
            (0.62, 0.36, 0.26),
            (0.45, 0.4, 0.38),
            (0.7, 0.62, 0.5),
        ),
        vehicle_palette=((0.1, 0.1, 0.12), (0.8, 0.8, 0.82), (0.6, 0.1, 0.1), (0.15, 0.25, 0.5)),
        building_density=5.0,
        vegetation_density=3.0,
        lane_width=3.5,
        sidewalk_width=3.0,
        setback=1.0,
    ),
    "singapore": City(
        name="singapore",
        left_hand_traffic=True,
        centre_line_yellow=False,
        asphalt=(0.24, 0.25, 0.24),
        sidewalk=(0.72, 0.66, 0.6),
        terrain=(0.22, 0.5, 0.2),
        building_palette=((0.85, 0.85, 0.8), (0.7, 0.78, 0.82), (0.9, 0.8, 0.6), (0.6, 0.65, 0.7)),
        vehicle_palette=((0.9, 0.9, 0.9), (0.2, 0.2, 0.22), (0.75, 0.7, 0.2), (0.3, 0.45, 0.3)),
        building_density=2.5,
        vegetation_density=8.0,
        lane_width=3.2,
        sidewalk_width=2.5,
        setback=4.0,
    ),
}


@dataclasses.dataclass(frozen=True)
class Domain:
    name: str
    city: City
    night: bool = False
    rain: bool = False
    synthetic: bool = False
    # Synthetic-noise mode: per-frame noise level drawn uniformly in this range.
    noise_range: tuple[float, float] = (0.0, 1.0)


def parse_domain(name: str) -> Domain:
    """Builds a Domain from a name ``<city>[_night][_rain][_synthetic]``."""
    parts = name.split("_")
    city, mods = parts[0], parts[1:]
    allowed = ("night", "rain", "synthetic")
    if city not in CITIES or any(m not in allowed for m in mods) or len(set(mods)) != len(mods):
        raise ValueError(
            f"unknown world domain '{name}': expected <city>[_night][_rain][_synthetic] with city in "
            f"{sorted(CITIES)}, e.g. 'boston', 'singapore_night', 'boston_rain_synthetic'"
        )
    return Domain(
        name=name,
        city=CITIES[city],
        night="night" in mods,
        rain="rain" in mods,
        synthetic="synthetic" in mods,
    )


DEFAULT_DOMAINS = ("boston", "singapore", "boston_night", "boston_rain", "boston_synthetic")


def sequence_rng(config: WorldConfig, domain: str, split: str, sequence_id: int) -> np.random.Generator:
    """The generator every random choice of one sequence draws from (a pure function of its arguments)."""
    entropy = [
        config.seed,
        zlib.crc32(domain.encode()),
        zlib.crc32(split.encode()),
        int(sequence_id),
    ]
    return np.random.default_rng(np.random.SeedSequence(entropy))
