"""One rendered world sample in the batch schema (the public entry point of the world).

Sample ``index`` of a split is keyframe ``index % frames_per_sequence`` of sequence
``index // frames_per_sequence``; the sequence's layout is drawn from a generator seeded by
``(config.seed, domain, split, sequence)`` and per-frame randomness (sensor noise, synthetic perturbations) from
one seeded by the index too, so every sample is a pure function of ``(config, domain, split, index)``.
"""

from __future__ import annotations

import functools
import zlib

import jax
import numpy as np

from bevjax.geometry.transforms import invert_rigid, pose2d, transform_points
from bevjax.schema import BEV_CLASS_ID, SEMANTIC_CLASS_ID, example_spec
from bevjax.world import layout as L
from bevjax.world.config import Domain, WorldConfig, parse_domain, sequence_rng
from bevjax.world.raycast import NUM_BOX_FIELDS, F
from bevjax.world.render import lidar_scan, render_cameras
from bevjax.world.rig import LIDAR_POSITION, camera_rig, lidar_directions

MAX_LAMPS = 32


def example_spec_for(config: WorldConfig) -> dict:
    """Schema shapes and dtypes of the samples ``config`` renders."""
    return example_spec(len(config.cameras), config.image_hw, config.grid.shape[:2], config.num_points)


@functools.lru_cache(maxsize=4)
def scene_for(config: WorldConfig, domain: str, split: str, sequence_id: int) -> L.Scene:
    """The (cached) layout of one sequence."""
    return L.generate_scene(config, parse_domain(domain), sequence_rng(config, domain, split, sequence_id))


def ego_pose(scene: L.Scene, t: float) -> np.ndarray:
    """ego_to_world [4, 4] (float64) at time t."""
    x, y, yaw = scene.ego.pose(t)
    return pose2d(x, y, yaw)


def agent_rows(scene: L.Scene, t: float) -> np.ndarray:
    """Box rows [K, F] of the agents at time t; agent k has instance id k + 1."""
    rows = np.zeros((len(scene.agents), NUM_BOX_FIELDS), np.float32)
    for k, agent in enumerate(scene.agents):
        x, y, yaw = agent.pose(t)
        length, width, height = agent.size
        is_vehicle = agent.kind == "vehicle"
        rows[k] = (
            x, y, height / 2, length / 2, width / 2, height / 2, np.cos(yaw), np.sin(yaw), *agent.colour,
            SEMANTIC_CLASS_ID["vehicle" if is_vehicle else "pedestrian"], k + 1,
            L.MAT_VEHICLE if is_vehicle else L.MAT_PERSON, 1.0, 0.0,
        )  # fmt: skip
    return rows


def static_rows(scene: L.Scene) -> np.ndarray:
    """Box rows [S, F] of buildings, vegetation and poles (instance 0)."""
    b = scene.static_boxes
    rows = np.zeros((len(b), NUM_BOX_FIELDS), np.float32)
    rows[:, 0:3] = b[:, 0:3]
    rows[:, 3:6] = b[:, 3:6] / 2
    rows[:, F["cos"]], rows[:, F["sin"]] = np.cos(b[:, 6]), np.sin(b[:, 6])
    rows[:, F["r"] : F["b"] + 1] = b[:, 7:10]
    rows[:, F["sem"]] = scene.static_class
    rows[:, F["mat"]] = scene.static_material
    rows[:, F["valid"]] = 1.0
    return rows


def nearest_rows(rows: np.ndarray, centre_xy: np.ndarray, budget: int) -> np.ndarray:
    """The ``budget`` rows nearest ``centre_xy`` (by distance minus half diagonal), padded with invalid rows."""
    out = np.zeros((budget, NUM_BOX_FIELDS), np.float32)
    reach = np.linalg.norm(rows[:, 0:2] - centre_xy, axis=1) - np.linalg.norm(rows[:, 3:5], axis=1)
    keep = np.sort(np.argsort(reach, kind="stable")[:budget])
    out[: len(keep)] = rows[keep]
    return out


def lighting(domain: Domain, scene: L.Scene, ego_to_world: np.ndarray, noise_std: float) -> dict:
    """Light, sky, fog and city colours of the renderer for one frame."""
    city = domain.city
    if domain.night:
        light = dict(ambient=0.05, sun_strength=0.0, sky_zenith=(0.01, 0.015, 0.04), sky_horizon=(0.05, 0.05, 0.08),
                     fog_dist=160.0, fog_colour=(0.03, 0.03, 0.05), noise_std=0.03)  # fmt: skip
    else:
        light = dict(ambient=0.45, sun_strength=0.75, sky_zenith=(0.35, 0.55, 0.85), sky_horizon=(0.78, 0.85, 0.92),
                     fog_dist=380.0, fog_colour=(0.78, 0.85, 0.92), noise_std=0.01)  # fmt: skip
    if domain.rain:
        scale = 0.35 if domain.night else 1.0
        light.update(ambient=0.55 * scale if not domain.night else 0.06, sun_strength=0.12 * (not domain.night),
                     sky_zenith=tuple(scale * c for c in (0.42, 0.44, 0.47)),
                     sky_horizon=tuple(scale * c for c in (0.58, 0.6, 0.62)), fog_dist=110.0,
                     fog_colour=tuple(scale * c for c in (0.55, 0.57, 0.6)), noise_std=0.04)  # fmt: skip
    ego_xy = ego_to_world[:2, 3]
    lamps = np.zeros((MAX_LAMPS, 3), np.float32)
    near = scene.lamps[np.argsort(np.linalg.norm(scene.lamps[:, :2] - ego_xy, axis=1))[:MAX_LAMPS]]
    lamps[: len(near)] = near
    heading = ego_to_world[:3, 0]
    light.update(
        sun=scene.sun,
        night=float(domain.night),
        rain=float(domain.rain),
        asphalt=city.asphalt,
        sidewalk=city.sidewalk,
        terrain=city.terrain,
        lamps=lamps,
        lamp_valid=(np.arange(MAX_LAMPS) < len(near)).astype(np.float32),
        head_pos=transform_points(ego_to_world, np.array([[3.6, 0.0, 0.7]]))[0],
        head_dir=heading,
    )
    light["noise_std"] = max(light["noise_std"], noise_std)
    return {k: np.asarray(v, np.float32) for k, v in light.items()}


def _frame_rng(config: WorldConfig, domain: str, split: str, index: int) -> np.random.Generator:
    entropy = [
        config.seed,
        zlib.crc32(domain.encode()),
        zlib.crc32(split.encode()),
        1 << 20,
        int(index),
    ]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def perturb(rows, scene, ego_to_world, level, rng):
    """Synthetic-noise mode: the scene the image shows differs from the labelled one by ``level`` in [0, 1].

    Each object is dropped with probability 0.5 level, shifted by N(0, (1.5 level m)^2) and turned by
    N(0, (0.25 level rad)^2); Poisson(4 level) vehicles that have no label are added on the drivable area
    near the ego; the ground texture is read through a smooth warp of amplitude 1.5 level m, which moves road
    edges and markings in the image.
    """
    rows = rows.copy()
    objects = rows[:, F["inst"]] > 0
    drop = objects & (rng.random(len(rows)) < 0.5 * level)
    rows[drop, F["valid"]] = 0.0
    rows[objects, 0:2] += rng.normal(0, 1.5 * level, (objects.sum(), 2))
    yaw = np.arctan2(rows[:, F["sin"]], rows[:, F["cos"]]) + objects * rng.normal(0, 0.25 * level, len(rows))
    rows[:, F["cos"]], rows[:, F["sin"]] = np.cos(yaw), np.sin(yaw)
    extra = []
    for _ in range(rng.poisson(4 * level)):
        for _try in range(20):
            p = transform_points(ego_to_world, np.array([[rng.uniform(-35, 35), rng.uniform(-35, 35), 0.0]]))[
                0
            ]
            if L.lookup(scene, p[None, :2])[0] & L.DRIVABLE:
                a = rng.uniform(-np.pi, np.pi)
                size = (rng.uniform(4.0, 4.8), rng.uniform(1.75, 1.95), rng.uniform(1.45, 1.7))
                extra.append([p[0], p[1], size[2] / 2, size[0] / 2, size[1] / 2, size[2] / 2, np.cos(a), np.sin(a),
                              *rng.uniform(0.1, 0.9, 3), SEMANTIC_CLASS_ID["vehicle"], 0, L.MAT_VEHICLE, 1, 0])  # fmt: skip
                break
    if extra:
        rows = np.concatenate([rows, np.array(extra, np.float32)])
    direction = rng.normal(size=(2, 2))
    wavelength = rng.uniform(15, 40, 2)
    warp = dict(
        amp=np.full(2, 1.5 * level),
        freq=direction / np.linalg.norm(direction, axis=0) * (2 * np.pi / wavelength),
        phase=rng.uniform(0, 2 * np.pi, 2),
    )
    return rows, {k: np.asarray(v, np.float32) for k, v in warp.items()}


NO_WARP = {
    "amp": np.zeros(2, np.float32),
    "freq": np.eye(2, dtype=np.float32),
    "phase": np.zeros(2, np.float32),
}


def object_footprints(config: WorldConfig, ego_to_world, agents: np.ndarray) -> list:
    """Cells covered by each agent box: a list of (instance, bev class, (i0, i1, j0, j1), mask).

    Vehicles cover a cell when its centre lies inside the box footprint, pedestrians (smaller than a cell)
    when any of 5x5 points spread over the cell does.
    """
    grid = config.grid
    nx, ny, _ = grid.shape
    res = grid.resolution[:2]
    centres, pts = grid.cell_centers(), _cell_samples(grid)
    world_to_ego = invert_rigid(ego_to_world)
    ego_yaw = np.arctan2(ego_to_world[1, 0], ego_to_world[0, 0])
    out = []
    for row in agents:
        c = transform_points(world_to_ego, row[None, 0:3])[0]
        rel_yaw = np.arctan2(row[F["sin"]], row[F["cos"]]) - ego_yaw
        reach = np.hypot(row[F["hx"]], row[F["hy"]]) + res.max()
        (i0, j0), _ = grid.cell_index(np.array([c[0] - reach, c[1] - reach]))
        (i1, j1), _ = grid.cell_index(np.array([c[0] + reach, c[1] + reach]))
        i0, j0, i1, j1 = max(i0, 0), max(j0, 0), min(i1 + 1, nx), min(j1 + 1, ny)
        if i0 >= i1 or j0 >= j1:
            continue
        is_vehicle = row[F["sem"]] == SEMANTIC_CLASS_ID["vehicle"]
        p = (centres[i0:i1, j0:j1, None] if is_vehicle else pts[i0:i1, j0:j1]) - c[:2]  # x y s 2
        cos, sin = np.cos(rel_yaw), np.sin(rel_yaw)
        lx, ly = cos * p[..., 0] + sin * p[..., 1], -sin * p[..., 0] + cos * p[..., 1]
        mask = np.any((np.abs(lx) <= row[F["hx"]]) & (np.abs(ly) <= row[F["hy"]]), axis=-1)
        if mask.any():
            k = BEV_CLASS_ID["vehicle" if is_vehicle else "pedestrian"]
            out.append((int(row[F["inst"]]), k, (i0, i1, j0, j1), mask))
    return out


def _cell_samples(grid) -> np.ndarray:
    """[x, y, 25, 2] ego-frame points spread over every cell (5x5, the centre is number 12)."""
    res = grid.resolution[:2]
    sub = (np.arange(5) + 0.5) / 5 - 0.5
    offsets = np.stack(np.meshgrid(sub * res[0], sub * res[1], indexing="ij"), -1).reshape(-1, 2)  # s 2
    return grid.cell_centers()[:, :, None, :] + offsets


def bev_labels(config: WorldConfig, scene: L.Scene, ego_to_world, footprints) -> np.ndarray:
    """Multi-label BEV raster [x, y, k] of the true scene around the ego.

    Area classes (drivable, ped crossing, walkway, carpark) label a cell when its centre lies on them; thin
    classes (stop line, divider) when any of 5x5 points spread over the cell does; objects from
    ``object_footprints``.
    """
    pts = _cell_samples(config.grid)  # x y s 2
    nx, ny, s = pts.shape[:3]
    flat = np.concatenate([pts.reshape(-1, 2), np.zeros((nx * ny * s, 1))], -1)
    world = transform_points(ego_to_world, flat)[:, :2].reshape(nx, ny, s, 2)
    bits = L.lookup(scene, world)  # x y s
    centre_bits = bits[:, :, s // 2]
    out = np.zeros((nx, ny, len(BEV_CLASS_ID)), np.uint8)
    for name, bit in (("drivable_area", L.DRIVABLE), ("ped_crossing", L.CROSSING), ("walkway", L.WALKWAY),
                      ("carpark_area", L.CARPARK)):  # fmt: skip
        out[..., BEV_CLASS_ID[name]] = (centre_bits & bit) > 0
    for name, bit in (("stop_line", L.STOPLINE), ("divider", L.DIVIDER)):
        out[..., BEV_CLASS_ID[name]] = np.any(bits & bit, axis=-1)
    for _, k, (i0, i1, j0, j1), mask in footprints:
        out[i0:i1, j0:j1, k] |= mask.astype(np.uint8)
    return out


def bev_visibility(config, intrinsics, cam_to_ego, depth, instance, footprints) -> np.ndarray:
    """[x, y] uint8: 1 where a camera sees the cell's ground point, or a visible object covering it.

    A ground point (cell centre, z = 0) is seen when it projects inside an image in front of the camera and
    the rendered depth there is not closer than the point (tolerance 0.3 m + 2 %); an object is visible
    when any pixel shows it.
    """
    grid = config.grid
    nx, ny, _ = grid.shape
    centres = grid.cell_centers().reshape(-1, 2)
    pts = np.concatenate([centres, np.zeros((len(centres), 1), np.float32)], -1)
    h, w = config.image_hw
    seen = np.zeros(len(pts), bool)
    for k in range(len(intrinsics)):
        cam = transform_points(invert_rigid(cam_to_ego[k].astype(np.float64)), pts)
        z = cam[:, 2]
        uv = cam[:, :2] / np.maximum(z[:, None], 1e-6) @ intrinsics[k][:2, :2].T + intrinsics[k][:2, 2]
        u, v = np.round(uv[:, 0]).astype(np.int64), np.round(uv[:, 1]).astype(np.int64)
        ok = (z > 0.1) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        d = depth[k][np.clip(v, 0, h - 1), np.clip(u, 0, w - 1)]
        seen |= ok & ((d == 0) | (d >= z - 0.3 - 0.02 * z))
    out = seen.reshape(nx, ny)
    visible_ids = set(np.unique(instance[instance > 0]).tolist())
    for inst_id, _, (i0, i1, j0, j1), mask in footprints:
        if inst_id in visible_ids:
            out[i0:i1, j0:j1] |= mask
    return out.astype(np.uint8)


def scene_flow(points_ego, instance, valid, agents_now, agents_next, ego_now, ego_next) -> np.ndarray:
    """Ground-truth flow [p, 3] of ego-frame points to the next sweep (Argoverse 2 convention).

    A point on agent k moves with the agent's rigid motion, T_k(t1) T_k(t0)^-1; every point is then expressed
    in the next ego frame, so static points get the ego motion: flow = ego1_from_ego0 p - p.
    """
    world = transform_points(ego_now, points_ego.astype(np.float64))
    moved = world.copy()
    for k in np.unique(instance[valid & (instance > 0)]):
        a0, a1 = agents_now[k - 1], agents_next[k - 1]
        t0 = pose2d(a0[0], a0[1], np.arctan2(a0[F["sin"]], a0[F["cos"]]), a0[2])
        t1 = pose2d(a1[0], a1[1], np.arctan2(a1[F["sin"]], a1[F["cos"]]), a1[2])
        sel = valid & (instance == k)
        moved[sel] = transform_points(t1 @ invert_rigid(t0), world[sel])
    nxt = transform_points(invert_rigid(ego_next), moved)
    return np.where(valid[:, None], nxt - points_ego, 0.0).astype(np.float32)


def _lidar(config, scene, ego_to_world, rows):
    origin = transform_points(ego_to_world, LIDAR_POSITION[None].astype(np.float64))[0]
    dirs = lidar_directions(config.lidar_beams, config.lidar_azimuths, config.lidar_elevation_deg)
    dirs_world = dirs @ ego_to_world[:3, :3].T
    pts, valid, label, inst, ground, _ = lidar_scan(
        np.float32(origin), np.float32(dirs_world), rows, _scene_arrays(scene),
        np.float32(config.lidar_max_range), far=float(config.far),
    )  # fmt: skip
    valid = np.asarray(valid)
    ego = transform_points(invert_rigid(ego_to_world), np.asarray(pts, np.float64))
    ego = np.where(valid[:, None], ego, 0.0).astype(np.float32)
    zero = lambda a: np.where(valid, np.asarray(a), 0)  # noqa: E731
    return (
        ego,
        valid,
        zero(label).astype(np.uint8),
        zero(inst).astype(np.int32),
        np.asarray(ground) & valid,
    )


@functools.lru_cache(maxsize=4)
def _scene_arrays(scene: L.Scene) -> dict:
    """The renderer's view of a scene's ground raster (on device once per sequence)."""
    return {
        "raster": jax.device_put(scene.raster),
        "origin": np.asarray(scene.origin, np.float32),
        "res": np.float32(scene.res),
    }


def render_sample(config: WorldConfig, domain: str, split: str, index: int) -> dict:
    """Sample ``index`` of ``split`` in ``domain``: a dict of NumPy arrays following ``bevjax.schema``."""
    dom = parse_domain(domain)
    seq, frame = divmod(int(index), config.frames_per_sequence)
    scene = scene_for(config, domain, split, seq)
    rng = _frame_rng(config, domain, split, index)
    t0 = frame / config.keyframe_hz
    t1 = t0 + 1.0 / config.lidar_hz
    ego0, ego1 = ego_pose(scene, t0), ego_pose(scene, t1)
    statics = static_rows(scene)
    agents0, agents1 = agent_rows(scene, t0), agent_rows(scene, t1)
    rows0 = nearest_rows(np.concatenate([agents0, statics]), ego0[:2, 3], config.max_boxes)
    rows1 = nearest_rows(np.concatenate([agents1, statics]), ego1[:2, 3], config.max_boxes)

    intrinsics, cam_to_ego = camera_rig(config.cameras, config.image_hw)
    cam_to_world = (ego0 @ cam_to_ego.astype(np.float64)).astype(np.float32)
    level = float(rng.uniform(*dom.noise_range)) if dom.synthetic else 0.0
    light = lighting(dom, scene, ego0, noise_std=0.0)
    key = jax.random.PRNGKey(int(rng.integers(1 << 31)))
    arrays = _scene_arrays(scene)
    render = functools.partial(
        render_cameras, intrinsics, cam_to_world, scene=arrays, light=light, key=key,
        image_hw=tuple(config.image_hw), supersample=config.supersample, far=float(config.far),
    )  # fmt: skip
    rgb, depth, labels, instance = (np.asarray(a) for a in render(rows0, warp=NO_WARP))
    if dom.synthetic:
        shown, warp = perturb(np.concatenate([agents0, statics]), scene, ego0, level, rng)
        rgb = np.asarray(render(nearest_rows(shown, ego0[:2, 3], config.max_boxes), warp=warp)[0])

    footprints = object_footprints(config, ego0, agents0)
    points, valid, lidar_class, lidar_instance, ground = _lidar(config, scene, ego0, rows0)
    next_points, next_valid, *_ = _lidar(config, scene, ego1, rows1)
    flow = scene_flow(points, lidar_instance, valid, agents0, agents1, ego0, ego1)
    p = config.num_points
    return {
        "images": rgb,
        "intrinsics": intrinsics,
        "cam_to_ego": cam_to_ego,
        "ego_to_world": ego0.astype(np.float32),
        "post_rots": np.tile(np.eye(3, dtype=np.float32), (len(config.cameras), 1, 1)),
        "post_trans": np.zeros((len(config.cameras), 3), np.float32),
        "bev_labels": bev_labels(config, scene, ego0, footprints),
        "bev_visibility": bev_visibility(config, intrinsics, cam_to_ego, depth, instance, footprints),
        "pv_labels": labels.astype(np.uint8),
        "depth": depth.astype(np.float32),
        "lidar_points": points.reshape(p, 3),
        "lidar_valid": valid,
        "lidar_class": lidar_class,
        "lidar_instance": lidar_instance,
        "lidar_ground": ground,
        "lidar_flow": flow,
        "next_ego_from_ego": (invert_rigid(ego1) @ ego0).astype(np.float32),
        "next_lidar_points": next_points,
        "next_lidar_valid": next_valid,
        "sequence_id": np.int32(seq),
        "frame_index": np.int32(frame),
        "timestamp": np.float64(t0),
        "noise_level": np.float32(level),
    }
