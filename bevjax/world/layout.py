"""Procedural street layout of one sequence: ground raster, static boxes, moving agents, ego route (NumPy).

The ground is a bit raster on a world-aligned grid (``ix = (x - x0) / res``, ``iy = (y - y0) / res``), drawn
with PIL's ImageDraw. Its bits are the BEV map classes plus road paint, and it is the single source of truth
for rendered ground appearance, LiDAR ground classes and BEV labels:

bit 0 drivable area, 1 ped crossing, 2 walkway, 3 stop line, 4 carpark area, 5 divider, 6 white paint,
7 yellow paint.

Roads are a main road (straights and arcs) that the ego follows, with perpendicular cross roads at
intersections (4-way or T). Intersections have zebra crossings on every arm and stop lines on the incoming
lanes; lane dividers stop at junctions; carparks with painted bays and a driveway sit beside straight parts;
buildings, trees and street lamps line the roads. Agents (cars, trucks, buses, pedestrians) move rigidly
along routes at constant speed; parked and waiting ones have speed 0.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

from bevjax.world.config import Domain, WorldConfig
from bevjax.world.paths import Path, centreline

DRIVABLE, CROSSING, WALKWAY, STOPLINE, CARPARK, DIVIDER, PAINT_WHITE, PAINT_YELLOW = (
    1 << b for b in range(8)
)

# Surface materials of box primitives (the renderer textures them).
MAT_PLAIN, MAT_VEHICLE, MAT_BUILDING, MAT_FOLIAGE, MAT_PERSON, MAT_POLE = range(6)

VEHICLE_TYPES = {  # name: (probability, length range, width range, height range)
    "car": (0.8, (4.0, 4.9), (1.75, 1.95), (1.45, 1.75)),
    "truck": (0.12, (6.5, 9.0), (2.3, 2.55), (2.8, 3.5)),
    "bus": (0.08, (10.5, 12.5), (2.5, 2.6), (3.0, 3.3)),
}


@dataclasses.dataclass
class Agent:
    """A rigid box moving along ``path`` at ``speed`` from arc length ``s0`` (sizes l, w, h in metres)."""

    kind: str  # "vehicle" or "pedestrian"
    path: Path
    s0: float
    speed: float
    size: tuple[float, float, float]
    colour: tuple[float, float, float]

    def pose(self, t) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, yaw) at times ``t`` seconds after the sequence start."""
        return self.path.pose(self.s0 + self.speed * np.asarray(t, np.float64))


@dataclasses.dataclass(eq=False)  # hashed by identity: cached per sequence
class Scene:
    raster: np.ndarray  # uint8 [R, R] ground bits, indexed [ix, iy]
    origin: np.ndarray  # world (x0, y0) of the raster corner
    res: float
    static_boxes: np.ndarray  # float32 [S, 10]: cx cy cz l w h yaw r g b
    static_class: np.ndarray  # uint8 [S] semantic class
    static_material: np.ndarray  # uint8 [S]
    agents: list[Agent]
    ego: Agent
    sun: np.ndarray  # unit vector towards the sun (world frame)
    lamps: np.ndarray  # float32 [L, 3] street-lamp light positions


class _Canvas:
    """Draws world-frame shapes into named PIL layers of the ground raster."""

    def __init__(self, size: int, origin: np.ndarray, res: float):
        self.size, self.origin, self.res = size, origin, res
        self.layers = {}

    def layer(self, bit: int) -> ImageDraw.ImageDraw:
        if bit not in self.layers:
            self.layers[bit] = Image.new("L", (self.size, self.size), 0)
        return ImageDraw.Draw(self.layers[bit])

    def px(self, xy) -> list[tuple[float, float]]:
        # PIL (col, row) = (iy, ix) so that np.asarray(image)[ix, iy] is the world cell (x, y).
        xy = (np.asarray(xy, np.float64).reshape(-1, 2) - self.origin) / self.res
        return [(float(p[1]), float(p[0])) for p in xy]

    def line(self, bit: int, path: Path, width_m: float, value: int = 255):
        """A band of ``width_m`` centred on ``path``, drawn as one polygon (wide PIL lines leave gaps)."""
        left, right = path.offset(width_m / 2).xy, path.offset(-width_m / 2).xy
        self.layer(bit).polygon(self.px(np.concatenate([left, right[::-1]])), fill=value)

    def polygon(self, bit: int, xy, value: int = 255):
        self.layer(bit).polygon(self.px(xy), fill=value)

    def bits(self) -> np.ndarray:
        out = np.zeros((self.size, self.size), np.uint8)
        for bit, image in self.layers.items():
            out |= np.where(np.asarray(image) > 127, bit, 0).astype(np.uint8)
        return out


def rect(centre, direction, length: float, width: float) -> np.ndarray:
    """Corners [4, 2] of a rectangle with its length along unit ``direction``."""
    d = np.asarray(direction, np.float64)
    n = np.array([-d[1], d[0]])
    c = np.asarray(centre, np.float64)
    return np.array(
        [c + a * d * length / 2 + b * n * width / 2 for a, b in ((1, 1), (1, -1), (-1, -1), (-1, 1))]
    )


def _unit(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw), np.sin(yaw)])


@dataclasses.dataclass
class _Road:
    path: Path
    lanes: int  # per direction
    lane_width: float
    parking: bool  # a parking lane on each side (counted in the half width)

    @property
    def half_width(self) -> float:
        return self.lanes * self.lane_width + (2.3 if self.parking else 0.0)


def _main_pieces(rng, length: float):
    pieces, total = [("straight", rng.uniform(70, 110))], 0.0
    total = pieces[0][1]
    while total < length:
        if rng.random() < 0.45:
            radius, angle = (
                rng.uniform(50, 110),
                np.deg2rad(rng.uniform(25, 80)) * rng.choice([-1, 1]),
            )
            pieces.append(("arc", radius, angle))
            total += radius * abs(angle)
        else:
            seg = rng.uniform(60, 120)
            pieces.append(("straight", seg))
            total += seg
    return pieces


def _straight_spans(pieces) -> list[tuple[float, float]]:
    spans, s = [], 0.0
    for p in pieces:
        length = p[1] if p[0] == "straight" else p[1] * abs(p[2])
        if p[0] == "straight":
            spans.append((s, s + length))
        s += length
    return spans


def generate_scene(config: WorldConfig, domain: Domain, rng: np.random.Generator) -> Scene:
    """Draws one sequence's world from ``rng`` (see the module docstring)."""
    city = domain.city
    duration = (config.frames_per_sequence - 1) / config.keyframe_hz + 1.0 / config.lidar_hz
    ego_speed = 0.0 if rng.random() < 0.08 else rng.uniform(3.0, 8.0)
    behind, ahead = 60.0, 110.0
    travel = ego_speed * duration
    pieces = _main_pieces(rng, behind + travel + ahead)
    main = _Road(
        centreline(pieces, start_yaw=rng.uniform(-np.pi, np.pi)),
        lanes=int(rng.choice([1, 2], p=[0.6, 0.4])),
        lane_width=city.lane_width,
        parking=bool(rng.random() < 0.5),
    )
    # The raster is centred on the part of the route the sensors see.
    ego_s0 = behind
    lo_s, hi_s = max(0.0, ego_s0 - behind), min(main.path.length, ego_s0 + travel + ahead)
    seen = main.path.between(lo_s, hi_s).xy
    centre = (seen.min(0) + seen.max(0)) / 2
    size = config.raster_cells
    origin = centre - size * config.raster_res / 2
    canvas = _Canvas(size, origin, config.raster_res)

    # Intersections on straight parts, within sight of the route.
    junctions = []
    for a, b in _straight_spans(pieces):
        for s in np.arange(a + 25.0, b - 25.0, 45.0):
            if lo_s + 15 < s < hi_s - 20 and rng.random() < 0.55:
                if all(abs(s - j) > 50 for j, *_ in junctions):
                    kind = rng.choice(["cross", "t_left", "t_right"], p=[0.5, 0.25, 0.25])
                    junctions.append((float(s), kind))
    roads = [main]
    arms = []  # (junction centre, outward unit vector, road, main half width at the junction)
    for s, kind in junctions:
        x, y, yaw = main.path.pose(s)
        c, t = np.array([x, y]), _unit(float(yaw))
        n = np.array([-t[1], t[0]])
        cross_lanes = int(rng.choice([1, 2], p=[0.7, 0.3]))
        for sign in [1, -1] if kind == "cross" else [1] if kind == "t_left" else [-1]:
            out = sign * n
            arm_path = Path.from_points([c + out * r for r in np.arange(0.0, 120.0, 0.5)])
            road = _Road(arm_path, cross_lanes, city.lane_width, parking=False)
            roads.append(road)
            arms.append((c, out, road, main.half_width))
        for sign in (1, -1):  # the main road's own arms at the junction
            arms.append((c, sign * t, main, roads[-1].half_width))

    sw = city.sidewalk_width
    for road in roads:
        canvas.line(WALKWAY, road.path, 2 * (road.half_width + sw))
    for road in roads:
        canvas.line(DRIVABLE, road.path, 2 * road.half_width)

    # Carparks beside straight parts of the main road, away from junctions.
    carparks = []
    for a, b in _straight_spans(pieces):
        s = a + rng.uniform(10, 30)
        while s + 45 < b and len(carparks) < 3:
            length, depth = rng.uniform(20, 40), rng.uniform(14, 22)
            near_junction = any(abs(s + length / 2 - j) < length / 2 + 25 for j, _ in junctions)
            if lo_s < s < hi_s and not near_junction and rng.random() < 0.4:
                side = float(rng.choice([-1, 1]))
                x, y, yaw = main.path.pose(s + length / 2)
                t = _unit(float(yaw))
                n = np.array([-t[1], t[0]]) * side
                edge = main.half_width + sw
                c = np.array([x, y]) + n * (edge + 0.5 + depth / 2)
                canvas.polygon(CARPARK, rect(c, t, length, depth))
                drive = np.array([x, y]) + n * (edge + 0.5) / 2
                canvas.polygon(DRIVABLE, rect(drive, n, edge + 0.8, 6.0))
                carparks.append((c, t, n, length, depth))
            s += length + rng.uniform(20, 50)

    # Crossings, stop lines and the junction zones where dividers stop.
    left_hand = city.left_hand_traffic
    zones, marks = [], []  # marks: crossing stripes and stop-line paint, drawn last
    for c, out, road, other_hw in arms:
        start = other_hw + 1.0
        mid = c + out * (start + 2.0)
        canvas.polygon(CROSSING, rect(mid, out, 4.0, 2 * road.half_width))
        across = np.array([-out[1], out[0]])
        for k in np.arange(-road.half_width + 0.25, road.half_width - 0.25, 1.0):
            marks.append(rect(mid + across * (k + 0.25), out, 4.0, 0.5))
        # Incoming traffic drives along -out, on its right (right-hand traffic) = left of ``out``.
        side = -1.0 if left_hand else 1.0
        lane_span = road.lanes * road.lane_width
        stop = c + out * (start + 4.5) + across * side * lane_span / 2
        canvas.polygon(STOPLINE, rect(stop, out, 0.5, lane_span))
        marks.append(rect(stop, out, 0.4, lane_span))
        zones.append(rect(c + out * (start + 4.75) / 2, out, start + 4.75, 2 * road.half_width + 0.5))

    # Dividers: the centre line and lane lines; labels are continuous, paint may be dashed; both stop at
    # junctions.
    centre_paint = PAINT_YELLOW if city.centre_line_yellow else PAINT_WHITE
    for road in roads:
        canvas.line(DIVIDER, road.path, 0.3)
        for off in (-0.12, 0.12) if city.centre_line_yellow else (0.0,):
            canvas.line(centre_paint, road.path.offset(off), 0.12)
        for k in range(1, road.lanes):
            for side in (-1, 1):
                lane_line = road.path.offset(side * k * road.lane_width)
                canvas.line(DIVIDER, lane_line, 0.3)
                for s in np.arange(0.0, lane_line.length - 3.0, 9.0):
                    canvas.line(PAINT_WHITE, lane_line.between(s, s + 3.0), 0.15)
    for zone in zones:
        for bit in (DIVIDER, PAINT_YELLOW, PAINT_WHITE):
            canvas.polygon(bit, zone, value=0)
    for mark in marks:
        canvas.polygon(PAINT_WHITE, mark)
    for c, t, n, length, depth in carparks:
        for k in np.arange(-length / 2 + 2.5, length / 2, 2.5):
            for d in (-1, 1):
                canvas.polygon(PAINT_WHITE, rect(c + t * k + n * d * depth / 4, n, depth / 2 - 0.5, 0.12))

    raster = canvas.bits()
    # Walkway, carpark and drivable area exclude each other (drivable wins, then carpark); markings
    # exist only on their surfaces.
    drivable, carpark = (raster & DRIVABLE) > 0, (raster & CARPARK) > 0
    clear = np.zeros_like(raster)
    clear |= np.where(drivable, WALKWAY | CARPARK, 0).astype(np.uint8)
    clear |= np.where(carpark & ~drivable, WALKWAY, 0).astype(np.uint8)
    clear |= np.where(~drivable, CROSSING | STOPLINE | DIVIDER | PAINT_YELLOW, 0).astype(np.uint8)
    clear |= np.where(~drivable & ~carpark, PAINT_WHITE, 0).astype(np.uint8)
    raster = raster & ~clear

    scene = Scene(
        raster=raster,
        origin=origin.astype(np.float64),
        res=config.raster_res,
        static_boxes=np.zeros((0, 10), np.float32),
        static_class=np.zeros((0,), np.uint8),
        static_material=np.zeros((0,), np.uint8),
        agents=[],
        ego=None,
        sun=np.zeros(3),
        lamps=np.zeros((0, 3), np.float32),
    )
    _place_static(scene, roads, arms, city, rng)
    _place_agents(scene, main, roads, arms, carparks, junctions, city, rng, ego_s0, ego_speed)
    elevation, azimuth = np.deg2rad(rng.uniform(25, 65)), rng.uniform(-np.pi, np.pi)
    scene.sun = np.array(
        [
            np.cos(elevation) * np.cos(azimuth),
            np.cos(elevation) * np.sin(azimuth),
            np.sin(elevation),
        ]
    )
    return scene


def lookup(scene: Scene, xy: np.ndarray) -> np.ndarray:
    """Ground bits at world points [..., 2] (0 outside the raster)."""
    idx = np.floor((np.asarray(xy) - scene.origin) / scene.res).astype(np.int64)
    size = scene.raster.shape[0]
    inside = np.all((idx >= 0) & (idx < size), axis=-1)
    idx = np.clip(idx, 0, size - 1)
    return np.where(inside, scene.raster[idx[..., 0], idx[..., 1]], 0).astype(np.uint8)


class _Occupancy:
    """Footprints already taken (ground bits in use, boxes placed) for rejection sampling."""

    def __init__(self, scene: Scene):
        self.scene = scene
        self.boxes = []

    def free(self, corners: np.ndarray, margin: float = 0.5) -> bool:
        c = corners.mean(0)
        u, v = corners[1] - corners[2], corners[3] - corners[2]  # sides of the rectangle
        a, b = np.meshgrid(np.linspace(-0.5, 0.5, 7), np.linspace(-0.5, 0.5, 7))
        pts = (
            c
            + a.reshape(-1, 1) * u * (1 + margin / np.linalg.norm(u))
            + b.reshape(-1, 1) * v * (1 + margin / np.linalg.norm(v))
        )
        if np.any(lookup(self.scene, pts) & (DRIVABLE | WALKWAY | CARPARK)):
            return False
        for other in self.boxes:
            oc, r = other
            if np.linalg.norm(c - oc) < r + 0.5 * max(np.linalg.norm(u), np.linalg.norm(v)) + margin:
                return False
        return True

    def take(self, corners: np.ndarray):
        c = corners.mean(0)
        self.boxes.append(
            (
                c,
                0.5 * max(np.linalg.norm(corners[0] - corners[1]), np.linalg.norm(corners[1] - corners[2])),
            )
        )


def _place_static(scene: Scene, roads, arms, city, rng):
    from bevjax.schema import SEMANTIC_CLASS_ID as SEM

    boxes, classes, materials, lamps = [], [], [], []
    occ = _Occupancy(scene)

    def add(c, size, yaw, colour, cls, mat, z0=0.0):
        boxes.append([c[0], c[1], z0 + size[2] / 2, *size, yaw, *colour])
        classes.append(SEM[cls])
        materials.append(mat)

    sw = city.sidewalk_width
    for road in roads:
        for side in (-1, 1):
            # Buildings behind the sidewalk.
            s = rng.uniform(0, 10)
            while s < road.path.length:
                width, depth = rng.uniform(8, 28), rng.uniform(8, 20)
                height = rng.uniform(5, 30) * (1.4 if city.building_density > 4 else 1.0)
                x, y, yaw = road.path.pose(s + width / 2)
                t = _unit(float(yaw))
                n = np.array([-t[1], t[0]]) * side
                off = road.half_width + sw + city.setback + depth / 2 + rng.uniform(0, 3)
                c = np.array([x, y]) + n * off
                corners = rect(c, t, width, depth)
                if rng.random() < city.building_density / 6 and occ.free(corners):
                    occ.take(corners)
                    colour = np.array(city.building_palette[rng.integers(len(city.building_palette))])
                    colour = np.clip(colour * rng.uniform(0.85, 1.15), 0, 1)
                    add(c, (width, depth, height), float(yaw), colour, "building", MAT_BUILDING)
                s += width + rng.uniform(1, 12) * 5 / city.building_density
            # Trees and street lamps along the curb.
            for s in np.arange(rng.uniform(0, 12), road.path.length, 100.0 / city.vegetation_density):
                x, y, yaw = road.path.pose(s + rng.uniform(-2, 2))
                t = _unit(float(yaw))
                n = np.array([-t[1], t[0]]) * side
                off = road.half_width + (sw + 1.5 if city.setback >= 3 else sw - 0.45)
                c = np.array([x, y]) + n * off
                if np.any(lookup(scene, c[None] + n * 0.3 * np.array([[0], [1], [-1]])) & DRIVABLE):
                    continue
                crown = rng.uniform(2.5, 4.5)
                trunk_h = rng.uniform(2.2, 3.2)
                green = np.array([0.16, 0.36, 0.12]) * rng.uniform(0.7, 1.3) + [0.0, 0.05, 0.0]
                add(c, (0.35, 0.35, trunk_h + 0.3), 0.0, (0.3, 0.22, 0.15), "vegetation", MAT_PLAIN)
                add(
                    c,
                    (crown, crown, crown * rng.uniform(0.8, 1.3)),
                    float(rng.uniform(0, np.pi)),
                    np.clip(green, 0, 1),
                    "vegetation",
                    MAT_FOLIAGE,
                    z0=trunk_h,
                )
            for s in np.arange(rng.uniform(5, 20), road.path.length, 32.0):
                x, y, yaw = road.path.pose(s)
                n = np.array([-np.sin(yaw), np.cos(yaw)]) * side
                c = np.array([x, y]) + n * (road.half_width + 0.4)
                if np.any(lookup(scene, c[None]) & DRIVABLE):
                    continue
                add(c, (0.18, 0.18, 6.5), 0.0, (0.4, 0.4, 0.42), "pole", MAT_POLE)
                head = c - n * 0.9
                add(
                    head,
                    (1.6, 0.3, 0.2),
                    float(yaw) + np.pi / 2,
                    (0.9, 0.9, 0.8),
                    "pole",
                    MAT_POLE,
                    z0=6.3,
                )
                lamps.append([head[0], head[1], 6.2])
    # Traffic lights at the junction corners.
    for c, out, road, other_hw in arms:
        across = np.array([-out[1], out[0]])
        p = c + out * (other_hw + 0.5) + across * (road.half_width + 0.6)
        if not np.any(lookup(scene, p[None]) & DRIVABLE):
            add(p, (0.2, 0.2, 4.0), 0.0, (0.2, 0.2, 0.2), "pole", MAT_POLE)
            add(p, (0.35, 0.35, 1.0), 0.0, (0.15, 0.15, 0.1), "pole", MAT_POLE, z0=4.0)
    scene.static_boxes = np.array(boxes, np.float32).reshape(-1, 10)
    scene.static_class = np.array(classes, np.uint8)
    scene.static_material = np.array(materials, np.uint8)
    scene.lamps = np.array(lamps, np.float32).reshape(-1, 3)


def _vehicle(rng, city) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    names = list(VEHICLE_TYPES)
    probs = np.array([VEHICLE_TYPES[n][0] for n in names])
    _, lr, wr, hr = VEHICLE_TYPES[names[rng.choice(len(names), p=probs / probs.sum())]]
    colour = np.array(city.vehicle_palette[rng.integers(len(city.vehicle_palette))])
    if rng.random() < 0.3:
        colour = rng.uniform(0.1, 0.9, 3)
    size = (rng.uniform(*lr), rng.uniform(*wr), rng.uniform(*hr))
    return size, tuple(np.clip(colour * rng.uniform(0.85, 1.15), 0, 1))


def _pedestrian(rng) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    size = (rng.uniform(0.45, 0.7), rng.uniform(0.5, 0.75), rng.uniform(1.5, 1.9))
    return size, tuple(rng.uniform(0.1, 0.8, 3))


def _lane(road: _Road, k: int, forward: bool, left_hand: bool) -> Path:
    """Centre of lane k (0 next to the centre line) driving forward along or against the road path."""
    side = 1.0 if left_hand else -1.0  # forward traffic keeps left (left-hand traffic) or right
    if not forward:
        return _flip_lane(road, k, left_hand)
    return road.path.offset(side * (k + 0.5) * road.lane_width)


def _flip_lane(road: _Road, k: int, left_hand: bool) -> Path:
    """Centre of lane k of the traffic driving against the road path's direction."""
    side = -1.0 if left_hand else 1.0
    return road.path.offset(side * (k + 0.5) * road.lane_width).reversed()


def _platoon(rng, lane: Path, s_lo: float, s_hi: float, speed: float, city, density: float) -> list[Agent]:
    """Vehicles spaced along one lane between s_lo and s_hi, all at the lane's speed (no collisions)."""
    agents, s = [], s_lo + rng.uniform(0, 15)
    while s < s_hi:
        size, colour = _vehicle(rng, city)
        if rng.random() < density:
            agents.append(Agent("vehicle", lane, s + size[0] / 2, speed, size, colour))
        s += size[0] + rng.uniform(6, 25)
    return agents


def _place_agents(scene, main, roads, arms, carparks, junctions, city, rng, ego_s0, ego_speed):
    left = city.left_hand_traffic
    agents = []
    ego_lane_k = int(rng.integers(main.lanes))
    ego_lane = _lane(main, ego_lane_k, True, left)
    # Arc length on the lane of the ego's start (lanes are offset copies with their own arc length).
    x0, y0, _ = main.path.pose(ego_s0)
    s_ego = float(ego_lane.s[np.argmin(np.linalg.norm(ego_lane.xy - [x0, y0], axis=1))])
    ego = Agent("vehicle", ego_lane, s_ego, ego_speed, (4.1, 1.85, 1.6), (0.5, 0.5, 0.5))
    density = rng.uniform(0.25, 0.8)
    for k in range(main.lanes):
        lane = _lane(main, k, True, left)
        if k == ego_lane_k:
            ahead = _platoon(rng, lane, s_ego + 16.0, lane.length, ego_speed, city, density)
            behind = _platoon(rng, lane, 0.0, s_ego - 12.0, ego_speed, city, density)
            agents += ahead + [a for a in behind if a.s0 + a.size[0] / 2 < s_ego - 8.0]
        else:
            agents += _platoon(rng, lane, 0.0, lane.length, rng.uniform(0, 10), city, density)
        oncoming = _flip_lane(main, k, left)
        agents += _platoon(rng, oncoming, 0.0, oncoming.length, rng.uniform(0, 10), city, density)
    # Parked cars in the parking lanes.
    if main.parking:
        for side in (-1, 1):
            lane = main.path.offset(side * (main.lanes * main.lane_width + 1.15))
            for a in _platoon(rng, lane, 0.0, lane.length, 0.0, city, 0.5):
                ok = all(abs(a.s0 - j) > 25 for j, _ in junctions) and a.size[0] < 5.5
                if ok:
                    agents.append(a)
    # Cross roads: a queue waiting at the stop line and traffic leaving the junction.
    for _, _, road, other_hw in arms:
        if road is main:
            continue
        stop = other_hw + 1.0 + 5.0
        for k in range(road.lanes):
            incoming = _flip_lane(road, k, left)  # arm paths run outward: flipped = towards the junction
            queue = [a for a in _platoon(rng, incoming.reversed(), stop + 1.0, 90.0, 0.0, city, density)]
            for a in queue:  # re-express on the incoming direction, parked
                agents.append(Agent("vehicle", incoming, incoming.length - a.s0, 0.0, a.size, a.colour))
            leaving = _lane(road, k, True, left)
            agents += _platoon(rng, leaving, stop + 8.0, 80.0, rng.uniform(3, 9), city, density * 0.5)
    # Cars in the carparks' bays.
    for c, t, n, length, depth in carparks:
        for k in np.arange(-length / 2 + 3.75, length / 2 - 1, 2.5):
            for d in (-1, 1):
                if rng.random() < 0.45:
                    size, colour = _vehicle(rng, city)
                    if size[0] > 5.2:
                        continue
                    p = c + t * k + n * d * depth / 4
                    yaw = float(np.arctan2(n[1], n[0])) + (np.pi if rng.random() < 0.5 else 0.0)
                    path = Path.from_points([p, p + _unit(yaw) * 0.1])
                    agents.append(Agent("vehicle", path, 0.0, 0.0, size, colour))
    # Pedestrians on the sidewalks and on crossings of the cross roads.
    sw = city.sidewalk_width
    for road in roads:
        for side in (-1, 1):
            walk = road.path.offset(side * (road.half_width + sw * rng.uniform(0.3, 0.55)))
            for s in np.arange(rng.uniform(0, 20), walk.length, rng.uniform(12, 40)):
                size, colour = _pedestrian(rng)
                speed = 0.0 if rng.random() < 0.3 else rng.uniform(0.8, 1.6)
                path = walk if rng.random() < 0.5 else walk.reversed()
                s_start = s if path is walk else walk.length - s
                agents.append(Agent("pedestrian", path, s_start, speed, size, colour))
    for c, out, road, other_hw in arms:
        if road is main or rng.random() < 0.4:
            continue
        across = np.array([-out[1], out[0]])
        mid = c + out * (other_hw + 3.0)
        span = road.half_width + sw * 0.5
        start, end = (mid - across * span, mid + across * span)
        if rng.random() < 0.5:
            start, end = end, start
        size, colour = _pedestrian(rng)
        path = Path.from_points([start + (end - start) * f for f in np.linspace(0, 1, 20)])
        agents.append(
            Agent(
                "pedestrian",
                path,
                rng.uniform(0, path.length / 2),
                rng.uniform(0.8, 1.4),
                size,
                colour,
            )
        )
    scene.agents = agents
    scene.ego = ego
