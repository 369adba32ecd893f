"""Tests of the LSS splat (voxel pooling) against a brute-force NumPy scatter in the LSS layout."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from bevjax.geometry import BEVGrid
from bevjax.ops import splat, splat_indices

# 4 x 6 x 2 cells: two z bins test the LSS channel order (z * C + c).
GRID = BEVGrid(xbound=(-2.0, 2.0, 1.0), ybound=(-1.5, 1.5, 0.5), zbound=(-1.0, 1.0, 1.0))
SHAPE = (2, 2, 3, 4, 5)  # b n d fh fw
C = 3


def random_inputs(seed=0):
    """Features [b, n, d, fh, fw, c] and points well inside cells (no boundary ties) with cell indices drawn one
    or two cells beyond the grid on every side, plus the true integer cells [..., 3]."""
    rng = np.random.default_rng(seed)
    dims = np.array(GRID.shape)
    cells = rng.integers(-2, dims + 2, size=(*SHAPE, 3))
    # Force voxels shared by several points.
    cells[:, :, 1] = cells[:, :, 0]
    points = GRID.lower + (cells + rng.uniform(0.05, 0.95, cells.shape)) * GRID.resolution
    features = rng.normal(size=(*SHAPE, C))
    return features.astype(np.float32), points.astype(np.float32), cells


def reference_splat(features, cells):
    """LSS voxel_pooling in float64: final [B, C, Z, X, Y] += x, then cat(final.unbind(dim=2), 1), channels-last."""
    nx, ny, nz = GRID.shape
    b = features.shape[0]
    final = np.zeros((b, C, nz, nx, ny))
    flat_f = features.reshape(b, -1, C).astype(np.float64)
    flat_c = cells.reshape(b, -1, 3)
    for bi in range(b):
        for f, (x, y, z) in zip(flat_f[bi], flat_c[bi], strict=True):
            if 0 <= x < nx and 0 <= y < ny and 0 <= z < nz:
                final[bi, :, z, x, y] += f
    lss = np.concatenate([final[:, :, z] for z in range(nz)], axis=1)  # B (Z C) X Y
    return lss.transpose(0, 2, 3, 1)  # B X Y (Z C)


def reference_grad(upstream, cells):
    """d sum(splat * upstream) / d features: upstream gathered at each point's voxel, 0 outside the grid."""
    nx, ny, nz = GRID.shape
    grad = np.zeros((*cells.shape[:-1], C))
    for idx in np.ndindex(*cells.shape[:-1]):
        x, y, z = cells[idx]
        if 0 <= x < nx and 0 <= y < ny and 0 <= z < nz:
            grad[idx] = upstream[idx[0], x, y, z * C : (z + 1) * C]
    return grad


class SplatTest(chex.TestCase):
    def test_inputs_exercise_every_case(self):
        _, _, cells = random_inputs()
        dims = np.array(GRID.shape)
        for axis in range(3):
            assert np.any(cells[..., axis] < 0) and np.any(cells[..., axis] >= dims[axis])
        inside = np.all((cells >= 0) & (cells < dims), -1)
        assert 0 < inside.sum() < inside.size
        flat = [tuple(c) for c in cells[0][inside[0]]]
        assert len(set(flat)) < len(flat)  # shared voxels
        assert len({c[2] for c in flat}) == 2  # both z bins used

    @chex.variants(with_jit=True, without_jit=True)
    def test_splat_equals_numpy_scatter(self):
        features, points, cells = random_inputs()
        out = self.variant(lambda f, p: splat(f, p, GRID))(features, points)
        chex.assert_shape(out, (SHAPE[0], 4, 6, 2 * C))
        chex.assert_type(out, jnp.float32)
        np.testing.assert_allclose(np.asarray(out), reference_splat(features, cells), rtol=1e-5, atol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_splat_gradient_is_a_gather(self):
        features, points, cells = random_inputs(1)
        upstream = np.random.default_rng(2).normal(size=(SHAPE[0], 4, 6, 2 * C)).astype(np.float32)
        grad_fn = self.variant(jax.grad(lambda f, p: jnp.sum(splat(f, p, GRID) * upstream)))
        grad = grad_fn(features, points)
        chex.assert_shape(grad, features.shape)
        np.testing.assert_allclose(np.asarray(grad), reference_grad(upstream, cells), rtol=1e-6, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_splat_indices(self):
        _, points, cells = random_inputs(3)
        flat_ids, valid = self.variant(lambda p: splat_indices(p, GRID))(points)
        nx, ny, nz = GRID.shape
        b = SHAPE[0]
        batch = np.broadcast_to(np.arange(b).reshape(b, 1, 1, 1, 1), SHAPE)
        inside = np.all((cells >= 0) & (cells < np.array(GRID.shape)), -1)
        ids = ((batch * nx + cells[..., 0]) * ny + cells[..., 1]) * nz + cells[..., 2]
        np.testing.assert_array_equal(np.asarray(valid), inside.reshape(-1))
        np.testing.assert_array_equal(
            np.asarray(flat_ids), np.where(inside, ids, b * nx * ny * nz).reshape(-1)
        )


def test_splat_boundaries_and_non_finite_points():
    # Lower bounds are inside (cell 0), upper bounds outside; half a cell below the lower bound is dropped
    # (floor, not LSS's truncating .long()); NaN / inf points are dropped.
    pts = np.array(
        [
            [-2.0, -1.5, -1.0],  # lower corner -> cell (0, 0, 0)
            [1.999, 1.499, 0.999],  # just inside the upper corner -> (3, 5, 1)
            [2.0, 0.0, 0.0],  # x upper bound -> out
            [0.0, 1.5, 0.0],  # y upper bound -> out
            [0.0, 0.0, 1.0],  # z upper bound -> out
            [-2.5, 0.0, 0.0],  # half a cell below x lower -> out
            [np.nan, 0.0, 0.0],
            [np.inf, 0.0, 0.0],
        ],
        np.float32,
    ).reshape(1, 8, 3)
    feats = np.arange(1, 9, dtype=np.float32).reshape(1, 8, 1)
    out = jax.jit(splat, static_argnames="grid")(feats, pts, grid=GRID)
    expected = np.zeros((1, 4, 6, 2), np.float32)
    expected[0, 0, 0, 0] = 1.0
    expected[0, 3, 5, 1] = 2.0
    np.testing.assert_array_equal(np.asarray(out), expected)
    _, valid = splat_indices(pts, GRID)
    np.testing.assert_array_equal(np.asarray(valid), [True, True] + [False] * 6)
    grad = jax.grad(lambda f: jnp.sum(splat(f, pts, GRID)))(feats)
    np.testing.assert_array_equal(np.asarray(grad).reshape(-1), [1, 1, 0, 0, 0, 0, 0, 0])
