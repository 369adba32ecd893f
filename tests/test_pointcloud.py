"""Tests of SemanticFlow's sweep preprocessing: ego motion, range crop, ground estimate, pillar indices."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bevjax.geometry import BEVGrid
from bevjax.geometry.transforms import quaternion_to_matrix, transform_points
from bevjax.ops.pointcloud import (
    SEMANTICFLOW_PILLARS,
    compensate,
    ego_flow,
    estimate_ground,
    pillar_index,
    range_mask,
    residual_flow,
)
from bevjax.world import WorldConfig, render_sample

# A dyadic grid: cell edges and test points are exact in float32, so boundary points have one right answer.
SMALL = BEVGrid(xbound=(-2.0, 2.0, 0.25), ybound=(-1.0, 1.5, 0.25), zbound=(-1.0, 1.0, 2.0))


def random_rigid(seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.eye(4)
    t[:3, :3] = quaternion_to_matrix(rng.normal(size=4))
    t[:3, 3] = rng.normal(size=3) * 2.0
    return t


@functools.lru_cache(maxsize=1)
def world_pair() -> dict:
    """One rendered sweep pair (one small camera: the LiDAR is the default 32 x 1024)."""
    return render_sample(WorldConfig(cameras=("CAM_FRONT",), image_hw=(32, 88)), "boston", "train", 0)


class EgoMotionTest(chex.TestCase):
    def test_numpy_float64_matches_transforms(self):
        t = random_rigid()
        points = np.random.default_rng(1).uniform(-50, 50, (257, 3))
        moved = compensate(points, t)
        self.assertIsInstance(moved, np.ndarray)
        self.assertEqual(moved.dtype, np.float64)
        np.testing.assert_allclose(moved, transform_points(t, points), rtol=0, atol=1e-12)
        np.testing.assert_allclose(
            ego_flow(points, t), transform_points(t, points) - points, rtol=0, atol=1e-12
        )
        flow = np.random.default_rng(2).normal(size=points.shape)
        np.testing.assert_allclose(
            residual_flow(points, flow, t), flow - (transform_points(t, points) - points), rtol=0, atol=1e-12
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_jax_float32_matches_transforms(self):
        t = random_rigid(3)
        points = np.random.default_rng(4).uniform(-50, 50, (100, 3))
        out = self.variant(ego_flow)(jnp.asarray(points, jnp.float32), jnp.asarray(t, jnp.float32))
        self.assertIsInstance(out, jax.Array)
        chex.assert_shape(out, (100, 3))
        np.testing.assert_allclose(out, transform_points(t, points) - points, atol=1e-4)

    def test_world_static_points_have_the_ego_flow(self):
        ex = world_pair()
        static = ex["lidar_valid"] & (ex["lidar_instance"] == 0)
        moving = ex["lidar_valid"] & (ex["lidar_instance"] > 0)
        self.assertGreater(static.sum(), 10_000)
        flow = ego_flow(ex["lidar_points"], ex["next_ego_from_ego"])
        self.assertGreater(np.abs(flow[static]).max(), 0.1)  # the ego does move
        np.testing.assert_allclose(flow[static], ex["lidar_flow"][static], atol=1e-4)
        residual = residual_flow(ex["lidar_points"], ex["lidar_flow"], ex["next_ego_from_ego"])
        self.assertGreater(np.linalg.norm(residual[moving], axis=-1).max(), 0.3)  # and so do some agents
        np.testing.assert_allclose(
            compensate(ex["lidar_points"], ex["next_ego_from_ego"]), ex["lidar_points"] + flow
        )


class RangeMaskTest(chex.TestCase):
    POINTS = np.array(
        [
            [1.9, 0.0, 0.0],  # closer than 2 m
            [0.0, 2.0, 0.0],  # exactly 2 m: kept
            [30.0, 40.0, 1.0],  # exactly 50 m: kept
            [30.0, 40.1, 1.0],  # beyond 50 m
            [-10.0, 5.0, -3.0],  # z at the lower bound: kept
            [-10.0, 5.0, 3.0],  # z at the upper bound: dropped
            [10.0, 5.0, 0.5],  # kept but invalid
            [51.3, 0.0, 0.0],  # beyond the square (needs max_range = inf to matter)
            [51.1, -51.1, 0.0],  # inside the square
        ],
        np.float32,
    )
    VALID = np.array([1, 1, 1, 1, 1, 1, 0, 1, 1], bool)

    @chex.variants(with_jit=True, without_jit=True)
    def test_analytic_case(self):
        keep = self.variant(lambda p, v: range_mask(p, v))(jnp.asarray(self.POINTS), jnp.asarray(self.VALID))
        np.testing.assert_array_equal(keep, [0, 1, 1, 0, 1, 0, 0, 0, 0])
        square = self.variant(lambda p, v: range_mask(p, v, max_range=np.inf))(
            jnp.asarray(self.POINTS), jnp.asarray(self.VALID)
        )
        np.testing.assert_array_equal(square, [0, 1, 1, 1, 1, 0, 0, 0, 1])

    def test_numpy_in_numpy_out(self):
        keep = range_mask(self.POINTS)  # valid defaults to all
        self.assertIsInstance(keep, np.ndarray)
        np.testing.assert_array_equal(keep, [0, 1, 1, 0, 1, 0, 1, 0, 0])


def plane_and_objects():
    """Ground z = 0.1 + 0.03 x - 0.02 y on a 0.4 m lattice (none under the car), a car and a wall.

    Returns points [p, 3], the true ground flags [p] and valid [p] (with a few invalid and far points).
    """
    height = lambda x, y: 0.1 + 0.03 * x - 0.02 * y  # noqa: E731
    g = np.arange(-40.0, 40.0, 0.4) + 0.13
    gx, gy = (a.ravel() for a in np.meshgrid(g, g, indexing="ij"))
    under_car = (np.abs(gx - 10.0) < 2.25) & (np.abs(gy - 5.0) < 0.9)
    gx, gy = gx[~under_car], gy[~under_car]
    ground = np.stack([gx, gy, height(gx, gy)], -1)
    # Car 4.5 x 1.8 m centred at (10, 5): its sides and roof, from 0.45 m to 1.5 m above the ground.
    s = np.linspace(0, 1, 12)
    u, w = (a.ravel() for a in np.meshgrid(s, s, indexing="ij"))
    sides = [
        np.stack([7.75 + 4.5 * u, np.full_like(u, 4.1), 0.45 + 1.05 * w], -1),
        np.stack([7.75 + 4.5 * u, np.full_like(u, 5.9), 0.45 + 1.05 * w], -1),
        np.stack([np.full_like(u, 7.75), 4.1 + 1.8 * u, 0.45 + 1.05 * w], -1),
        np.stack([7.75 + 4.5 * u, 4.1 + 1.8 * w, np.full_like(u, 1.5)], -1),  # roof
    ]
    car = np.concatenate(sides)
    car[:, 2] += height(car[:, 0], car[:, 1])
    # A wall 20 m long, 0.4 m to 6 m above the ground (the bottom 0.3 m of a wall counts as ground).
    wall = np.stack([np.full_like(u, -20.0), -10 + 20 * u, 0.4 + 5.6 * w], -1)
    wall[:, 2] += height(wall[:, 0], wall[:, 1])
    extra = np.array([[60.0, 0.0, 0.0], [1.0, 1.0, height(1.0, 1.0)]])  # outside the grid; ground but invalid
    points = np.concatenate([ground, car, wall, extra]).astype(np.float32)
    truth = np.concatenate([np.ones(len(ground), bool), np.zeros(len(car) + len(wall) + 2, bool)])
    valid = np.ones(len(points), bool)
    valid[-1] = False
    return points, truth, valid


class GroundEstimateTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_plane_with_objects(self):
        points, truth, valid = plane_and_objects()
        ground = np.asarray(self.variant(estimate_ground)(points, valid))
        chex.assert_shape(ground, truth.shape)
        np.testing.assert_array_equal(ground, truth)

    def test_window_is_what_reaches_past_the_car(self):
        # Without the window, the car's cells (no ground seen in them) take the car's lowest points as ground.
        points, truth, valid = plane_and_objects()
        ground = np.asarray(estimate_ground(points, valid, window=0))
        self.assertTrue(np.all(ground[truth]))
        self.assertGreater(np.sum(ground & ~truth), 20)


def brute_force_pillars(points, valid, grid):
    """Per point, (ix, iy) by testing every cell's half-open interval in float64; -1 for dump points; and
    the offsets from the pillar centre and from the pillar's mean.

    The edges ``min + i * size`` are rounded to float32 as the points are (-51.2 m is the float32 -51.2 of a
    float32 point at -51.2 m); on a dyadic grid that changes nothing."""
    nx, ny, _ = grid.shape
    lo, res = np.array(grid.lower, np.float64), np.array(grid.resolution, np.float64)
    xe = (grid.xbound[0] + np.arange(nx + 1) * grid.xbound[2]).astype(np.float32).astype(np.float64)
    ye = (grid.ybound[0] + np.arange(ny + 1) * grid.ybound[2]).astype(np.float32).astype(np.float64)
    p64 = points.astype(np.float64)
    ij = np.full((len(points), 2), -1)
    for n, (x, y, z) in enumerate(p64):
        if not (valid[n] and grid.zbound[0] <= z < grid.zbound[1]):
            continue
        ix = [i for i in range(nx) if xe[i] <= x < xe[i + 1]]
        iy = [j for j in range(ny) if ye[j] <= y < ye[j + 1]]
        if ix and iy:
            ij[n] = ix[0], iy[0]
    inside = ij[:, 0] >= 0
    centre = np.concatenate(
        [lo[:2] + (ij + 0.5) * res[:2], np.full((len(points), 1), lo[2] + 0.5 * res[2])], -1
    )
    center_offset = np.where(inside[:, None], p64 - centre, 0)
    mean_offset = np.zeros_like(p64)
    for n in np.flatnonzero(inside):
        same = inside & np.all(ij == ij[n], axis=-1)
        mean_offset[n] = p64[n] - p64[same].mean(0)
    return ij, center_offset, mean_offset


class PillarTest(chex.TestCase):
    def small_points(self):
        """Points on every cell edge, on the grid's outer edges, outside, beyond z, invalid, non-finite."""
        rng = np.random.default_rng(0)
        xs = np.concatenate([np.arange(-2.0, 2.01, 0.25), [-2.25, 2.5, 0.1, 1.3]])
        ys = np.concatenate([np.arange(-1.0, 1.51, 0.25), [-1.25, 1.75, 0.3]])
        x, y = (a.ravel() for a in np.meshgrid(xs, ys, indexing="ij"))
        z = rng.choice([-1.0, -0.5, 0.0, 0.999, 1.0, 1.5], size=x.shape)
        points = np.stack([x, y, z], -1)
        points = np.concatenate([points, [[np.nan, 0.0, 0.0], [0.1, np.inf, 0.0]]]).astype(np.float32)
        valid = rng.random(len(points)) > 0.1
        return points, valid

    def test_small_points_cover_every_case(self):
        points, valid = self.small_points()
        ij, _, _ = brute_force_pillars(points, valid, SMALL)
        self.assertTrue(np.any(points[:, 0] == 2.0) and np.any(points[:, 0] == -2.0))  # the outer edges
        self.assertGreater(np.sum(ij[:, 0] >= 0), 100)
        self.assertGreater(np.sum((ij[:, 0] < 0) & valid), 50)
        counts = np.unique(ij[ij[:, 0] >= 0], axis=0, return_counts=True)[1]
        self.assertGreater(counts.max(), 1)  # several points per pillar (the mean offset is non-trivial)

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_brute_force_on_boundaries(self):
        points, valid = self.small_points()
        out = self.variant(functools.partial(pillar_index, grid=SMALL))(points, valid)
        ij, center_offset, mean_offset = brute_force_pillars(points, valid, SMALL)
        nx, ny, _ = SMALL.shape
        inside = ij[:, 0] >= 0
        np.testing.assert_array_equal(out.ij, ij)
        np.testing.assert_array_equal(out.inside, inside)
        np.testing.assert_array_equal(out.flat, np.where(inside, ij[:, 0] * ny + ij[:, 1], nx * ny))
        np.testing.assert_allclose(out.center_offset, center_offset, atol=1e-6)
        np.testing.assert_allclose(out.mean_offset, mean_offset, atol=1e-6)
        expected_counts = np.bincount(np.asarray(out.flat), minlength=nx * ny + 1)
        np.testing.assert_array_equal(out.counts, expected_counts)
        self.assertEqual(int(out.counts[-1]), int(np.sum(~inside)))

    @chex.variants(with_jit=True, without_jit=True)
    def test_default_grid_and_pseudo_image(self):
        # Random points away from cell edges (float32 and float64 floors then agree), plus the outer edges.
        rng = np.random.default_rng(1)
        points = rng.uniform([-60, -60, -4], [60, 60, 4], (600, 3))
        frac = (points[:, :2] + 51.2) / 0.2 % 1.0
        points = points[np.all((frac > 1e-3) & (frac < 1 - 1e-3), axis=-1)]
        edges = [
            [-51.2, -51.2, 0.0],
            [51.2, 0.0, 0.0],
            [0.0, 51.2, 0.0],
            [-51.2, 51.1, 0.0],
            [0.1, 0.1, -3.0],
        ]
        points = np.concatenate([points, edges]).astype(np.float32)
        valid = np.ones(len(points), bool)
        out = self.variant(pillar_index)(points, valid)
        ij, center_offset, _ = brute_force_pillars(points, valid, SEMANTICFLOW_PILLARS)
        nx, ny, _ = SEMANTICFLOW_PILLARS.shape
        self.assertEqual((nx, ny), (512, 512))
        np.testing.assert_array_equal(out.ij, ij)
        np.testing.assert_array_equal(out.ij[-5:], [[0, 0], [-1, -1], [-1, -1], [0, 511], [256, 256]])
        np.testing.assert_allclose(out.center_offset, center_offset, atol=1e-5)
        # The flat index feeds segment_sum with the dump segment last.
        image = jax.ops.segment_sum(jnp.ones(len(points)), out.flat, num_segments=nx * ny + 1)[:-1]
        image = np.asarray(image).reshape(nx, ny)  # x y
        expected = np.zeros((nx, ny))
        for i, j in ij[ij[:, 0] >= 0]:
            expected[i, j] += 1
        np.testing.assert_array_equal(image, expected)

    def test_rejects_grid_with_z_cells(self):
        with pytest.raises(ValueError, match="one z cell"):
            pillar_index(np.zeros((3, 3)), grid=BEVGrid(zbound=(-1.0, 1.0, 0.5)))
