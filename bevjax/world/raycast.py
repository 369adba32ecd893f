"""Ray casting against the world: oriented boxes (slab test) and the flat, rasterised ground (JAX).

Everything here is jit-compatible with static shapes. A ray is ``origin + t * direction``; directions need
not be unit length, so with camera rays built as ``R K^-1 [u, v, 1]`` the hit parameter ``t`` is the camera
z-depth, and with unit LiDAR rays it is the range.

Boxes are rows of ``BOX_FIELDS`` float32 values; rows with ``valid = 0`` never hit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# cx cy cz: centre; hx hy hz: half sizes; cos sin: yaw; r g b: colour; sem: semantic class;
# inst: instance id (0 for stuff); mat: material; valid.
BOX_FIELDS = (
    "cx",
    "cy",
    "cz",
    "hx",
    "hy",
    "hz",
    "cos",
    "sin",
    "r",
    "g",
    "b",
    "sem",
    "inst",
    "mat",
    "valid",
    "pad",
)
F = {name: i for i, name in enumerate(BOX_FIELDS)}
NUM_BOX_FIELDS = len(BOX_FIELDS)

KIND_SKY, KIND_GROUND, KIND_BOX = 0, 1, 2
_EPS = 1e-4


def _to_local(v, cos, sin):
    """Rotates world vectors [..., 3] into box frames by -yaw (broadcasting cos/sin)."""
    return jnp.stack([cos * v[..., 0] + sin * v[..., 1], -sin * v[..., 0] + cos * v[..., 1], v[..., 2]], -1)


def _slabs(origin, direction, boxes):
    """Per-axis entry/exit parameters of rays [r, 3] against boxes [B, F] in box frames: [r, B, 3] each."""
    cos, sin = boxes[:, F["cos"]], boxes[:, F["sin"]]
    half = boxes[:, F["hx"] : F["hz"] + 1]  # B 3
    lo = _to_local(origin[:, None, :] - boxes[None, :, 0:3], cos, sin)  # r B 3
    ld = _to_local(jnp.broadcast_to(direction[:, None, :], lo.shape), cos, sin)  # r B 3
    ld = jnp.where(jnp.abs(ld) < 1e-12, 1e-12, ld)
    t1, t2 = (-half - lo) / ld, (half - lo) / ld
    return jnp.minimum(t1, t2), jnp.maximum(t1, t2)


def box_hits(origin, direction, boxes, t_max=jnp.inf):
    """Nearest box hit of each ray.

    Args:
      origin, direction: [r, 3] rays (world frame).
      boxes: [B, NUM_BOX_FIELDS] box rows.
      t_max: hits beyond this parameter are ignored.

    Returns:
      (t [r], index [r]): parameter and row of the nearest hit; t = inf where there is none.
    """
    tmin, tmax = _slabs(origin, direction, boxes)
    t_near, t_far = tmin.max(-1), tmax.min(-1)  # r B
    hit = (boxes[None, :, F["valid"]] > 0) & (t_far >= t_near) & (t_near > _EPS) & (t_near < t_max)
    t = jnp.where(hit, t_near, jnp.inf)
    return t.min(-1), jnp.argmin(t, -1)


def any_box_hit(origin, direction, boxes, t_max=jnp.inf):
    """[r] bool: whether each ray hits any box before ``t_max`` (shadow rays)."""
    t, _ = box_hits(origin, direction, boxes, t_max)
    return jnp.isfinite(t)


def box_surface(origin, direction, t, box):
    """Local hit point [r, 3], world normal [r, 3] and face axis [r] on the given boxes [r, F]."""
    cos, sin = box[:, F["cos"]], box[:, F["sin"]]
    half = box[:, F["hx"] : F["hz"] + 1]
    lo = _to_local(origin - box[:, 0:3], cos, sin)
    ld = _to_local(direction, cos, sin)
    ld_safe = jnp.where(jnp.abs(ld) < 1e-12, 1e-12, ld)
    tmin = jnp.minimum((-half - lo) / ld_safe, (half - lo) / ld_safe)
    axis = jnp.argmax(tmin, -1)
    onehot = jax.nn.one_hot(axis, 3, dtype=origin.dtype)
    local_n = -jnp.sign(jnp.sum(ld * onehot, -1, keepdims=True)) * onehot
    world_n = jnp.stack(
        [
            cos * local_n[:, 0] - sin * local_n[:, 1],
            sin * local_n[:, 0] + cos * local_n[:, 1],
            local_n[:, 2],
        ],
        -1,
    )
    return lo + t[:, None] * ld, world_n, axis


def ground_lookup(raster, origin_xy, res, xy):
    """Ground bits (uint8) of the raster [S, S] at world points [..., 2]; 0 outside."""
    size = raster.shape[0]
    idx = jnp.floor((xy - origin_xy) / res).astype(jnp.int32)
    inside = jnp.all((idx >= 0) & (idx < size), -1)
    idx = jnp.clip(idx, 0, size - 1)
    return jnp.where(inside, raster[idx[..., 0], idx[..., 1]], 0).astype(jnp.uint8)


def cast(origin, direction, boxes, far):
    """Primary hits: parameter t [r], kind [r] (sky / ground / box) and box row [r]."""
    t_box, index = box_hits(origin, direction, boxes, far)
    dz = direction[:, 2]
    t_ground = jnp.where(dz < -1e-9, -origin[:, 2] / jnp.where(dz < -1e-9, dz, -1.0), jnp.inf)
    t_ground = jnp.where(t_ground < far, t_ground, jnp.inf)
    kind = jnp.where(t_box < t_ground, KIND_BOX, jnp.where(jnp.isfinite(t_ground), KIND_GROUND, KIND_SKY))
    t = jnp.where(kind == KIND_BOX, t_box, jnp.where(kind == KIND_GROUND, t_ground, 0.0))
    return t, kind, index


def chunked(fn, chunk: int, *arrays):
    """Applies ``fn`` to row chunks of equally long arrays (bounds the [r, B] working set)."""
    n = arrays[0].shape[0]
    pad = (-n) % chunk
    padded = [jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) for a in arrays]
    split = [a.reshape((-1, chunk) + a.shape[1:]) for a in padded]  # c r ...
    out = jax.lax.map(lambda xs: fn(*xs), split)
    return jax.tree.map(lambda y: y.reshape((-1,) + y.shape[2:])[:n], out)
