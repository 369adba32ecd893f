"""Jit-compiled camera and LiDAR rendering of a world state (JAX).

Cameras: one primary ray per pixel (``supersample**2`` for colour), textured ground and boxes, Lambertian sun
light with ray-cast shadows, sky gradient and distance fog; at night street lamps, the ego's headlights and
emissive windows and vehicle lights; rain darkens, wets the road (sky reflection at grazing angles), adds streaks
and sensor noise. Labels (class, instance, z-depth) come from the centre ray of each pixel.

LiDAR: unit rays from the sensor; returns world hit points with class, instance and a ground flag.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bevjax.schema import SEMANTIC_CLASS_ID as SEM
from bevjax.world import layout as L
from bevjax.world.raycast import (
    KIND_BOX,
    KIND_GROUND,
    KIND_SKY,
    F,
    any_box_hit,
    box_surface,
    cast,
    chunked,
    ground_lookup,
)

_CHUNK = 2048


def _hash(ix, iy, seed):
    """Uniform [0, 1) float per integer lattice point (uint32 mixing)."""
    h = ix.astype(jnp.uint32) * jnp.uint32(0x8DA6B343)
    h = h ^ (iy.astype(jnp.uint32) * jnp.uint32(0xD8163841)) ^ (jnp.uint32(seed) * jnp.uint32(0xCB1AB31F))
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0x5BD1E995)
    h = h ^ (h >> 15)
    return (h >> 8).astype(jnp.float32) / float(1 << 24)


def value_noise(xy, scale, seed=0):
    """Smooth value noise in [0, 1) of world points [..., 2] with feature size ``scale`` metres."""
    p = xy / scale
    i = jnp.floor(p)
    f = p - i
    f = f * f * (3 - 2 * f)
    ix, iy = i[..., 0].astype(jnp.int32), i[..., 1].astype(jnp.int32)
    a, b = _hash(ix, iy, seed), _hash(ix + 1, iy, seed)
    c, d = _hash(ix, iy + 1, seed), _hash(ix + 1, iy + 1, seed)
    fx, fy = f[..., 0], f[..., 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _ground_colour(xy, bits, light):
    n1 = value_noise(xy, 0.35, 1)
    n2 = value_noise(xy, 4.0, 2)
    asphalt = light["asphalt"] * (0.8 + 0.25 * n1 + 0.2 * n2)[..., None]
    tile = ((jnp.mod(xy[..., 0], 0.8) < 0.05) | (jnp.mod(xy[..., 1], 0.8) < 0.05))[..., None]
    sidewalk = light["sidewalk"] * (0.9 + 0.15 * n1)[..., None] * jnp.where(tile, 0.75, 1.0)
    carpark = light["asphalt"] * (1.05 + 0.2 * n1)[..., None]
    terrain = light["terrain"] * (0.6 + 0.5 * value_noise(xy, 0.7, 3) + 0.3 * n2)[..., None]
    white = jnp.array([0.85, 0.85, 0.82]) * (0.85 + 0.15 * n1)[..., None]
    yellow = jnp.array([0.85, 0.68, 0.12]) * (0.85 + 0.15 * n1)[..., None]

    def has(bit):
        return ((bits & bit) > 0)[..., None]

    colour = jnp.where(has(L.WALKWAY), sidewalk, terrain)
    colour = jnp.where(has(L.CARPARK), carpark, colour)
    colour = jnp.where(has(L.DRIVABLE), asphalt, colour)
    colour = jnp.where(has(L.PAINT_WHITE), white, colour)
    return jnp.where(has(L.PAINT_YELLOW), yellow, colour)


def ground_class(bits):
    """Semantic class of ground points from their raster bits."""
    return jnp.where(
        (bits & L.DRIVABLE) > 0,
        SEM["road"],
        jnp.where(
            (bits & L.WALKWAY) > 0,
            SEM["sidewalk"],
            jnp.where((bits & L.CARPARK) > 0, SEM["parking"], SEM["terrain"]),
        ),
    ).astype(jnp.uint8)


def _box_colour(local, axis, box, world_z, light):
    """Albedo [r, 3] and emission [r, 3] of box surfaces from their material and local hit point."""
    half = box[:, F["hx"] : F["hz"] + 1]
    base = box[:, F["r"] : F["b"] + 1]
    mat = box[:, F["mat"]].astype(jnp.int32)
    zrel = (local[:, 2] + half[:, 2]) / (2 * half[:, 2])  # 0 at the bottom, 1 at the top
    side = axis != 2
    front = (axis == 0) & (local[:, 0] > 0)
    back = (axis == 0) & (local[:, 0] < 0)
    edge = jnp.abs(local[:, 1]) > 0.6 * half[:, 1]
    night = light["night"]
    dark = jnp.array([0.06, 0.07, 0.09])

    # Vehicles: windows in the upper band, dark underbody, head/tail lights.
    window = side & (zrel > 0.62) & (zrel < 0.95)
    vehicle = jnp.where(window[:, None], dark + 0.1 * light["sky_horizon"], base)
    vehicle = jnp.where((zrel < 0.18)[:, None], dark, vehicle)
    lamp_band = (zrel > 0.4) & (zrel < 0.55) & edge
    head = front & lamp_band
    tail = back & lamp_band
    vehicle = jnp.where(head[:, None], jnp.array([0.9, 0.9, 0.8]), vehicle)
    vehicle = jnp.where(tail[:, None], jnp.array([0.7, 0.05, 0.05]), vehicle)
    vehicle_emit = night * (
        head[:, None] * jnp.array([1.5, 1.4, 1.1]) + tail[:, None] * jnp.array([1.2, 0.1, 0.1])
    )

    # Buildings: a grid of windows on the walls, some lit at night.
    u = jnp.where(axis == 0, local[:, 1], local[:, 0])
    floor, column = jnp.floor(world_z / 3.2), jnp.floor(u / 2.6)
    fz, fu = jnp.mod(world_z, 3.2) / 3.2, jnp.mod(u, 2.6) / 2.6
    pane = side & (fz > 0.3) & (fz < 0.8) & (fu > 0.22) & (fu < 0.78) & (world_z > 1.5)
    lit = (
        _hash(
            floor.astype(jnp.int32),
            column.astype(jnp.int32) + (box[:, F["cx"]] * 7).astype(jnp.int32),
            5,
        )
        < 0.35
    )
    building = jnp.where(pane[:, None], dark + 0.25 * light["sky_horizon"] * (1 - night), base)
    building_emit = night * (pane & lit)[:, None] * jnp.array([1.0, 0.8, 0.45])

    foliage = base * (0.55 + 0.9 * value_noise(local[:, 0:2] * 1.3 + local[:, 2:3], 0.4, 7))[:, None]
    person = jnp.where((zrel > 0.86)[:, None], jnp.array([0.78, 0.58, 0.45]), base)
    person = jnp.where((zrel < 0.47)[:, None], base * 0.35, person)
    pole_emit = night * ((box[:, F["hz"]] < 0.2) & (axis == 2) & (local[:, 2] < 0))[:, None] * 3.0

    albedo = jnp.select(
        [mat[:, None] == m for m in (L.MAT_VEHICLE, L.MAT_BUILDING, L.MAT_FOLIAGE, L.MAT_PERSON)],
        [vehicle, building, foliage, person],
        base,
    )
    emit = jnp.select(
        [mat[:, None] == m for m in (L.MAT_VEHICLE, L.MAT_BUILDING, L.MAT_POLE)],
        [vehicle_emit, building_emit, pole_emit],
        jnp.zeros_like(base),
    )
    return albedo, emit


def _sky(direction, light):
    up = direction[:, 2] / (jnp.linalg.norm(direction, axis=-1) + 1e-9)
    a = jnp.clip(up * 3.0, 0.0, 1.0)[:, None]
    return light["sky_horizon"] * (1 - a) + light["sky_zenith"] * a


def _lighting(point, normal, boxes, light):
    """Irradiance [r] at surface points: ambient + shadowed sun + lamps and headlights at night."""
    sun = light["sun"]
    lambert = jnp.maximum(normal @ sun, 0.0)
    shadow = any_box_hit(point + 0.02 * normal, jnp.broadcast_to(sun, point.shape), boxes, 500.0)
    irr = light["ambient"] + light["sun_strength"] * lambert * (1.0 - shadow)
    # Street lamps (inverse-square falloff, no shadows).
    to_lamp = light["lamps"][None] - point[:, None, :]  # r l 3
    dist2 = jnp.sum(to_lamp**2, -1) + 1e-3
    cos = jnp.maximum(jnp.sum(to_lamp * normal[:, None], -1), 0.0) / jnp.sqrt(dist2)
    irr += light["night"] * jnp.sum(light["lamp_valid"] * 30.0 * cos / (dist2 + 20.0), -1)
    # Ego headlights: a cone along the ego heading.
    v = point - light["head_pos"]
    dist = jnp.linalg.norm(v, axis=-1) + 1e-6
    cone = jnp.clip((v @ light["head_dir"] / dist - 0.88) / 0.08, 0.0, 1.0)
    facing = jnp.maximum(-jnp.sum(v * normal, -1) / dist, 0.0)
    irr += light["night"] * 3.0 * cone * facing / (1.0 + (dist / 18.0) ** 2)
    return irr


def _shade(origin, direction, boxes, scene, light, warp, far):
    """Colour and labels of one chunk of rays."""
    t, kind, index = cast(origin, direction, boxes, far)
    point = origin + t[:, None] * direction
    box = boxes[index]
    local, box_normal, axis = box_surface(origin, direction, t, box)
    # Synthetic-noise mode distorts where the ground texture is read (road edges move in the image).
    xy = point[:, 0:2]
    warped = xy + warp["amp"] * jnp.sin(xy @ warp["freq"] + warp["phase"])
    bits = ground_lookup(scene["raster"], scene["origin"], scene["res"], warped)
    is_box, is_ground = (kind == KIND_BOX)[:, None], (kind == KIND_GROUND)[:, None]
    normal = jnp.where(is_box, box_normal, jnp.array([0.0, 0.0, 1.0]))
    albedo_box, emit = _box_colour(local, axis, box, point[:, 2], light)
    albedo = jnp.where(is_box, albedo_box, _ground_colour(warped, bits, light))
    colour = albedo * _lighting(point, normal, boxes, light)[:, None] + emit * is_box
    # Wet road: a sky reflection that grows at grazing angles.
    cos_view = jnp.abs(direction[:, 2]) / (jnp.linalg.norm(direction, axis=-1) + 1e-9)
    wet = light["rain"] * is_ground[:, 0] * (0.15 + 0.55 * (1 - cos_view) ** 4)
    colour = colour * (1 - wet[:, None]) + _sky(-direction * jnp.array([1, 1, -1]), light) * wet[:, None]
    dist = t * jnp.linalg.norm(direction, axis=-1)
    fog = jnp.exp(-dist / light["fog_dist"])[:, None]
    colour = colour * fog + light["fog_colour"] * (1 - fog)
    colour = jnp.where((kind == KIND_SKY)[:, None], _sky(direction, light), colour)

    label = jnp.where(
        kind == KIND_BOX,
        box[:, F["sem"]].astype(jnp.uint8),
        jnp.where(kind == KIND_GROUND, ground_class(bits), jnp.uint8(SEM["background"])),
    )
    instance = jnp.where(kind == KIND_BOX, box[:, F["inst"]].astype(jnp.int32), 0)
    return colour, t, label, instance


@functools.partial(jax.jit, static_argnames=("image_hw", "supersample", "far"))
def render_cameras(intrinsics, cam_to_world, boxes, scene, light, warp, key, *, image_hw, supersample, far):
    """Renders n pinhole cameras.

    Args:
      intrinsics: [n, 3, 3]; cam_to_world: [n, 4, 4] (OpenCV camera frames).
      boxes: [B, NUM_BOX_FIELDS] box rows in the world frame.
      scene: dict with ``raster`` uint8 [S, S], ``origin`` [2] and ``res`` [] of the ground raster.
      light: dict of lighting and city colours (see ``bevjax.world.sample``); warp: ground-texture warp.
      key: PRNG key for sensor noise.
      image_hw, supersample, far: static render size, rays per pixel side, far clip (m).

    Returns:
      rgb uint8 [n, h, w, 3], depth float32 [n, h, w] (camera z, 0 where sky), labels uint8 [n, h, w],
      instance int32 [n, h, w].
    """
    h, w = image_hw
    n = intrinsics.shape[0]
    ss = supersample
    offsets = (jnp.arange(ss) + 0.5) / ss - 0.5
    sub = jnp.stack(jnp.meshgrid(offsets, offsets, indexing="ij"), -1).reshape(-1, 2)  # s 2 (dv, du)
    centre = int(ss * ss // 2) if ss % 2 else None
    v, u = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    pix = jnp.stack(
        [
            u[None] + sub[:, 1, None, None],
            v[None] + sub[:, 0, None, None],
            jnp.ones((ss * ss, h, w)),
        ],
        -1,
    )
    if centre is None:  # even supersampling: labels come from an extra exact-centre ray
        pix = jnp.concatenate([pix, jnp.stack([u, v, jnp.ones_like(u)], -1)[None]], 0)
        centre = ss * ss
    rays_cam = jnp.einsum("nij,shwj->nshwi", jnp.linalg.inv(intrinsics), pix)  # n s h w 3
    dirs = jnp.einsum("nij,nshwj->nshwi", cam_to_world[:, :3, :3], rays_cam)
    origins = jnp.broadcast_to(cam_to_world[:, None, None, None, :3, 3], dirs.shape)
    shape = dirs.shape[:-1]  # n s h w
    colour, t, label, instance = chunked(
        lambda o, d: _shade(o, d, boxes, scene, light, warp, far),
        _CHUNK,
        origins.reshape(-1, 3),
        dirs.reshape(-1, 3),
    )
    colour = colour.reshape(shape + (3,))
    samples = pix.shape[0]
    rgb = colour[:, : ss * ss].mean(1) if samples > ss * ss else colour.mean(1)  # n h w 3
    depth, label, instance = (a.reshape(shape)[:, centre] for a in (t, label, instance))

    # Sensor effects: rain streaks and Gaussian noise.
    k_noise, k_streak = jax.random.split(key)
    seed = jax.random.randint(k_streak, (), 0, 1 << 30)
    col = jnp.arange(w)[None, None, :]
    row = jnp.arange(h)[None, :, None]
    streak = _hash(
        col + 0 * row,
        jnp.floor((row + 0.35 * col) / 7.0).astype(jnp.int32) + 13 * jnp.arange(n)[:, None, None],
        seed,
    )
    rgb = rgb + light["rain"] * 0.2 * (streak < 0.025)[..., None]
    rgb = rgb + light["noise_std"] * jax.random.normal(k_noise, rgb.shape)
    rgb = jnp.clip(rgb * 255.0 + 0.5, 0, 255).astype(jnp.uint8)
    return rgb, depth.astype(jnp.float32), label, instance


@functools.partial(jax.jit, static_argnames=("far",))
def lidar_scan(origin, directions, boxes, scene, max_range, *, far):
    """Casts unit LiDAR rays [p, 3] from ``origin`` [3] (world frame).

    Returns:
      points [p, 3] (world), valid [p] (hit within ``max_range``), label uint8 [p], instance int32 [p],
      ground bool [p], box row int32 [p] (meaningful where the point is on a box).
    """
    origins = jnp.broadcast_to(origin, directions.shape)

    def one(o, d):
        t, kind, index = cast(o, d, boxes, far)
        point = o + t[:, None] * d
        bits = ground_lookup(scene["raster"], scene["origin"], scene["res"], point[:, 0:2])
        label = jnp.where(
            kind == KIND_BOX,
            boxes[index, F["sem"]].astype(jnp.uint8),
            jnp.where(kind == KIND_GROUND, ground_class(bits), jnp.uint8(SEM["background"])),
        )
        instance = jnp.where(kind == KIND_BOX, boxes[index, F["inst"]].astype(jnp.int32), 0)
        valid = (kind != KIND_SKY) & (t <= max_range)
        return point, valid, label, instance, kind == KIND_GROUND, index.astype(jnp.int32)

    return chunked(one, _CHUNK, origins, directions)
