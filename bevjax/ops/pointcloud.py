"""LiDAR sweep preprocessing for SemanticFlow: ego-motion compensation, range crop, ground removal, pillars.

SemanticFlow (``METHODS.md`` section 5) takes two sweeps ``pc0``, ``pc1`` with the ego motion between
them, removes the ego motion (the network predicts the *residual* flow), removes the ground, crops a range
and embeds both sweeps in 0.2 m pillars over +-51.2 m. Everything here is JAX with static shapes (masks, never
boolean indexing; pooling by ``jax.ops.segment_*`` with a dump segment), so it runs inside a jitted step;
every function also takes NumPy arrays. ``ego_flow``, ``compensate``, ``residual_flow`` and ``range_mask``
stay in NumPy (and in the inputs' precision, float64 included) when all their inputs are NumPy, so the offline
pseudo-label pass (:mod:`bevjax.ops.freespace`) uses them without a device round trip.

Flow convention (``bevjax.schema``, Argoverse 2): ``points + flow`` lies in the *next* sweep's ego frame, so a
static point has the flow ``next_ego_from_ego @ p - p`` (``ego_flow``) and the network's target is
``flow - ego_flow(points, next_ego_from_ego)`` (``residual_flow``), the motion of the point itself.

Ground: use the dataset's flags where it has them. The world gives ``lidar_ground`` (exact: the ray hit the
ground surface) for the first sweep only; Argoverse 2 examples give ``lidar_ground`` for the first sweep (the
log's own ``is_ground_0`` flags, else the map's ground-height rule ``AV2Map.is_ground``: within 0.3 m of the
ground-height raster or below it). The second sweep has no flags in the schema: on Argoverse 2 apply
``AV2Map.is_ground`` to it in the city frame ``ego_to_world @ inv(next_ego_from_ego)``; elsewhere use
:func:`estimate_ground` (a lowest-z grid, documented there).

Pillars (``SEMANTICFLOW_PILLARS``): the DeFlow / SeFlow configurations SemanticFlow builds on, 0.2 m pillars
over ``x, y`` in [-51.2, 51.2) m (512 x 512) and one z slab [-3, 3) m. The grid is a :class:`BEVGrid` with a
single z cell, so :func:`bevjax.ops.splat.splat_indices` gives the flat pillar index ``ix * ny + iy`` (the
``[x, y]`` raster order of ``bev_labels``) and the dump index ``nx * ny``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bevjax.geometry.grid import BEVGrid
from bevjax.ops.splat import splat_indices

# 0.2 m pillars over +-51.2 m, one z slab of [-3, 3) m (DeFlow / SeFlow point_cloud_range, voxel_size).
SEMANTICFLOW_PILLARS = BEVGrid(xbound=(-51.2, 51.2, 0.2), ybound=(-51.2, 51.2, 0.2), zbound=(-3.0, 3.0, 6.0))
# The ground estimator's cells: 0.8 m, 128 x 128 over the same extent.
GROUND_CELLS = BEVGrid(xbound=(-51.2, 51.2, 0.8), ybound=(-51.2, 51.2, 0.8), zbound=(-3.0, 3.0, 6.0))


def _xp(*arrays):
    """``jnp`` if any input is a JAX array (tracers included), else ``np``: NumPy stays NumPy, dtype kept."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


# Ego motion -------------------------------------------------------------------------------------------------


def compensate(points, next_ego_from_ego):
    """[p, 3] sweep-0 points expressed in sweep 1's ego frame: ``R p + t`` of ``next_ego_from_ego``.

    Where a static point is at sweep 1; a moving point is off from its sweep-1 position by its residual flow.

    Args:
      points: [p, 3] in sweep 0's ego frame.
      next_ego_from_ego: [4, 4] sweep 0's ego frame -> sweep 1's ego frame.
    """
    xp = _xp(points, next_ego_from_ego)
    points, t = xp.asarray(points), xp.asarray(next_ego_from_ego)
    return points @ t[:3, :3].T + t[:3, 3]  # p 3


def ego_flow(points, next_ego_from_ego):
    """[p, 3] the flow a static point has under the ego motion: ``next_ego_from_ego @ p - p``.

    Args:
      points: [p, 3] in sweep 0's ego frame.
      next_ego_from_ego: [4, 4] sweep 0's ego frame -> sweep 1's ego frame.
    """
    return compensate(points, next_ego_from_ego) - points


def residual_flow(points, flow, next_ego_from_ego):
    """[p, 3] the point's own motion: ``flow - ego_flow(points, next_ego_from_ego)`` (the network's target).

    Args:
      points: [p, 3] sweep 0, ego frame; flow: [p, 3] Argoverse 2 flow (ego motion included).
      next_ego_from_ego: [4, 4].
    """
    return flow - ego_flow(points, next_ego_from_ego)


# Range crop -------------------------------------------------------------------------------------------------


def range_mask(points, valid=None, *, min_range=2.0, max_range=50.0, max_xy=51.2, z_range=(-3.0, 3.0)):
    """[p] bool: the points SemanticFlow keeps.

    A point is kept when it is valid, its horizontal distance from the ego origin ``hypot(x, y)`` lies in
    ``[min_range, max_range]`` (the paper's 2..50 m; ``min_range`` drops returns from the ego vehicle itself),
    ``|x| < max_xy`` and ``|y| < max_xy`` (strictly inside the +-51.2 m pillar grid) and ``z_range[0] <= z <
    z_range[1]`` (the pillar grid's z slab). Pass ``max_range=inf`` for the square crop alone.

    Args:
      points: [p, 3] ego frame.
      valid: optional [p] bool (padding False); default all valid.
      min_range, max_range: metres, horizontal radius.
      max_xy: metres, half-size of the square crop.
      z_range: (low, high) metres in the ego frame (origin on the ground).
    """
    xp = _xp(points, valid)
    points = xp.asarray(points)
    radius = xp.hypot(points[:, 0], points[:, 1])  # p
    keep = (radius >= min_range) & (radius <= max_range)
    keep &= (xp.abs(points[:, 0]) < max_xy) & (xp.abs(points[:, 1]) < max_xy)
    keep &= (points[:, 2] >= z_range[0]) & (points[:, 2] < z_range[1])
    return keep if valid is None else keep & xp.asarray(valid, bool)


# Ground estimate --------------------------------------------------------------------------------------------


def estimate_ground(points, valid=None, *, grid: BEVGrid = GROUND_CELLS, threshold=0.3, window=2):
    """[p] bool ground estimate for sweeps without ground flags: lowest z in a window of grid cells.

    Per ``grid`` cell the lowest z of the valid points in it (``segment_min``); the local ground height of a
    cell is the minimum of those over the ``(2 window + 1)^2`` cells around it (so cells covered by an object,
    whose own lowest point is the object's underside, take the height of the ground seen next to it); a point
    is ground when ``z <= local ground + threshold``. The defaults (0.8 m cells, a 5 x 5 window = 4 m,
    threshold 0.3 m as the Argoverse 2 map's ground rule) suit roads with slopes up to ~7 % (the window's
    lowest point is at most 2 cells = 1.6 m away, 0.11 m lower at 7 %) and cars (~1.8 m wide). Objects lower
    than ``threshold`` (kerbs, the lowest 0.3 m of walls and wheels) count as ground; points outside the
    grid's x-y extent, and invalid points, are not ground.

    Args:
      points: [p, 3] ego frame.
      valid: optional [p] bool; default all valid.
      grid: the cells (static; its z bound is ignored).
      threshold: metres above the local ground height.
      window: half-width of the window, in cells (static).

    Returns:
      [p] bool.
    """
    points = jnp.asarray(points)
    valid = jnp.ones(points.shape[:1], bool) if valid is None else jnp.asarray(valid, bool)
    nx, ny, _ = grid.shape
    lower, res = jnp.asarray(grid.lower[:2], points.dtype), jnp.asarray(grid.resolution[:2], points.dtype)
    cells = (points[:, :2] - lower) / res  # p 2
    inside = valid & jnp.all((cells >= 0) & (cells < jnp.array([nx, ny])), axis=-1)  # p
    cells = jnp.where(inside[:, None], jnp.floor(cells), 0).astype(jnp.int32)  # p 2
    flat = jnp.where(inside, cells[:, 0] * ny + cells[:, 1], nx * ny)  # p; nx * ny is the dump
    z = jnp.where(inside, points[:, 2], jnp.inf)
    lowest = jax.ops.segment_min(z, flat, num_segments=nx * ny + 1)[: nx * ny].reshape(nx, ny)  # x y
    k = 2 * window + 1
    local = jax.lax.reduce_window(lowest, jnp.inf, jax.lax.min, (k, k), (1, 1), "SAME")  # x y
    height = local.reshape(-1)[jnp.minimum(flat, nx * ny - 1)]  # p
    return inside & (points[:, 2] <= height + threshold)


# Pillars ----------------------------------------------------------------------------------------------------


class Pillars(NamedTuple):
    """Per-point pillar assignment (a pytree; ``p`` points, ``P = nx * ny`` pillars, index ``P`` the dump).

    Attributes:
      ij: [p, 2] int32 pillar (ix, iy), cell ``ix`` spanning ``[x_min + ix * size, x_min + (ix + 1) size)``;
        (-1, -1) for points in the dump.
      flat: [p] int32 ``ix * ny + iy``, or the dump ``nx * ny`` for invalid points and points outside the
        grid; ``jax.ops.segment_sum(x, flat, num_segments=nx * ny + 1)[:-1].reshape(nx, ny, ...)`` is a
        pseudo-image.
      inside: [p] bool, not in the dump.
      center_offset: [p, 3] point minus its pillar's centre ``(x_c, y_c, z_c)`` (``z_c`` the z slab's middle);
        0 in the dump.
      mean_offset: [p, 3] point minus the mean of the points in its pillar; 0 in the dump.
      counts: [P + 1] int32 points per pillar, the dump's count last.
    """

    ij: jax.Array
    flat: jax.Array
    inside: jax.Array
    center_offset: jax.Array
    mean_offset: jax.Array
    counts: jax.Array


def pillar_index(points, valid=None, *, grid: BEVGrid = SEMANTICFLOW_PILLARS) -> Pillars:
    """Pillar of every point with static shapes, and the offsets PointPillars-style embeddings take.

    Cells are ``floor((p - lower) / size)`` in the points' precision (``splat_indices``), so the grid is
    half-open: ``x = x_min`` is in pillar 0, ``x = x_max`` in the dump; z outside the grid's single z slab
    goes to the dump too.

    Args:
      points: [p, 3] ego frame.
      valid: optional [p] bool; default all valid.
      grid: a :class:`BEVGrid` with one z cell (static).

    Returns:
      :class:`Pillars`.
    """
    nx, ny, nz = grid.shape
    if nz != 1:
        raise ValueError(
            f"pillar_index: the grid must have one z cell (pillars), got grid.shape={grid.shape}"
        )
    points = jnp.asarray(points)
    num = nx * ny
    flat, inside = splat_indices(points[None], grid)  # p, p; flat = ix * ny + iy (nz = 1)
    if valid is not None:
        inside &= jnp.asarray(valid, bool)
        flat = jnp.where(inside, flat, num)
    ij = jnp.where(inside[:, None], jnp.stack([flat // ny, flat % ny], -1), -1).astype(jnp.int32)  # p 2
    lower, res = jnp.asarray(grid.lower, points.dtype), jnp.asarray(grid.resolution, points.dtype)
    centre_xy = lower[:2] + (ij.astype(points.dtype) + 0.5) * res[:2]  # p 2
    centre = jnp.concatenate(
        [centre_xy, jnp.broadcast_to(lower[2] + 0.5 * res[2], centre_xy[:, :1].shape)], -1
    )
    masked = jnp.where(inside[:, None], points, 0)  # p 3
    center_offset = jnp.where(inside[:, None], points - centre, 0)  # p 3
    counts = jax.ops.segment_sum(jnp.ones_like(flat), flat, num_segments=num + 1)  # P+1
    sums = jax.ops.segment_sum(masked, flat, num_segments=num + 1)  # P+1 3
    means = sums / jnp.maximum(counts, 1)[:, None].astype(points.dtype)  # P+1 3
    mean_offset = jnp.where(inside[:, None], points - means[flat], 0)  # p 3
    return Pillars(ij, flat.astype(jnp.int32), inside, center_offset, mean_offset, counts.astype(jnp.int32))
