"""Tests of the blockwise nearest neighbours against brute-force NumPy float64 and scipy's cKDTree."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from scipy.spatial import cKDTree

from bevjax.ops.neighbors import NO_NEIGHBOR, chamfer_distances, knn, nearest_neighbor

# Small blocks so that the small sets span several blocks in both dimensions; N, M are not multiples of them.
QB, RB = 64, 48
N, M, K = 203, 157, 5
BLOCKS = dict(query_block=QB, reference_block=RB)

# Compiled once for the module and reused with the fixed shapes above.
NN = jax.jit(functools.partial(nearest_neighbor, **BLOCKS))
KNN = jax.jit(functools.partial(knn, **BLOCKS), static_argnames=("k", "exclude_self"))
CHAMFER = jax.jit(functools.partial(chamfer_distances, **BLOCKS))


def random_set(rng, n, invalid_fraction=0.2, scale=50.0):
    """float32 [n, 3] points in a ``2 * scale`` m cube and a [n] bool mask; invalid rows hold garbage (NaN, huge,
    or a copy of a valid point's neighbourhood at distance 0) that must never be returned."""
    points = rng.uniform(-scale, scale, (n, 3)).astype(np.float32)
    valid = rng.random(n) >= invalid_fraction
    bad = np.flatnonzero(~valid)
    points[bad[0::3]] = np.nan
    points[bad[1::3]] = 1e30
    points[bad[2::3]] = 0.0  # a plausible position, closer to many queries than their true neighbour
    return points, valid


def brute_dist2(q, r, q_valid, r_valid):
    """float64 [n, m] squared distances, inf for invalid pairs."""
    q, r = np.asarray(q, np.float64), np.asarray(r, np.float64)
    d2 = np.sum((q[:, None] - r[None]) ** 2, axis=-1)  # n m
    return np.where(q_valid[:, None] & r_valid[None], d2, np.inf)


def brute_knn(q, r, q_valid, r_valid, k, exclude_self=False):
    """float64 [n, k] ascending distances and [n, k] indices, lowest index first among ties, -1 / inf when short."""
    d2 = brute_dist2(q, r, q_valid, r_valid)
    if exclude_self:
        np.fill_diagonal(d2, np.inf)
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]  # stable: ties by index
    dist = np.take_along_axis(d2, order, axis=1)
    index = np.where(np.isfinite(dist), order, NO_NEIGHBOR)
    if order.shape[1] < k:  # fewer references than k
        pad = k - order.shape[1]
        dist = np.pad(dist, [(0, 0), (0, pad)], constant_values=np.inf)
        index = np.pad(index, [(0, 0), (0, pad)], constant_values=NO_NEIGHBOR)
    return dist, index


def gathered_dist2_f64(q, r, index):
    """float64 distances of the returned neighbours (inf for -1), to check a neighbour is a true nearest."""
    q, r = np.asarray(q, np.float64), np.asarray(r, np.float64)
    index = np.asarray(index)
    q = q.reshape(q.shape[:1] + (1,) * (index.ndim - 1) + (3,))
    d2 = np.sum((q - r[np.maximum(index, 0)]) ** 2, axis=-1)
    return np.where(index >= 0, d2, np.inf)


def assert_dist_close(actual, expected, rtol=1e-5, atol=1e-6):
    """Same inf pattern, finite values close (float32 rounding of the coordinates' differences)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    np.testing.assert_array_equal(np.isinf(actual), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=rtol, atol=atol)


def unambiguous(sorted_d2, rel=1e-4):
    """[n, k] bool: the slot's reference distance is separated from its neighbouring slots by ``rel``.

    ``sorted_d2`` is [n, k + 1] ascending (one slot beyond the compared ones); float32 may swap near ties.
    """
    d = sorted_d2
    gap = rel * np.maximum(d, 1e-12)
    with np.errstate(invalid="ignore"):
        above = (d[:, 1:] - d[:, :-1]) > gap[:, :-1]  # n k: slot j vs slot j + 1
    below = np.concatenate([np.ones((d.shape[0], 1), bool), above[:, :-1]], axis=1)  # slot j vs slot j - 1
    return above & below


class NeighborsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_nearest_neighbor_matches_brute_force(self):
        rng = np.random.default_rng(0)
        q, qv = random_set(rng, N)
        r, rv = random_set(rng, M)
        dist, index = self.variant(functools.partial(nearest_neighbor, **BLOCKS))(q, r, qv, rv)
        chex.assert_shape((dist, index), (N,))
        chex.assert_type((dist, index), (jnp.float32, jnp.int32))
        ref_dist, ref_index = brute_knn(q, r, qv, rv, 1)
        np.testing.assert_array_equal(index, ref_index[:, 0])
        assert_dist_close(dist, ref_dist[:, 0])
        dist, index = np.asarray(dist), np.asarray(index)
        assert np.all(rv[index[qv]]), "an invalid reference was returned"
        assert np.all(index[~qv] == NO_NEIGHBOR) and np.all(np.isinf(dist[~qv]))

    @chex.variants(with_jit=True, without_jit=True)
    def test_knn_matches_brute_force_sorted_without_self(self):
        rng = np.random.default_rng(1)
        p, v = random_set(rng, N)
        dist, index = self.variant(functools.partial(knn, k=K, **BLOCKS))(p, valid=v)
        chex.assert_shape((dist, index), (N, K))
        ref_dist, ref_index = brute_knn(p, p, v, v, K, exclude_self=True)
        np.testing.assert_array_equal(index, ref_index)
        assert_dist_close(dist, ref_dist)
        dist, index = np.asarray(dist), np.asarray(index)
        assert np.all(np.diff(dist[v], axis=1) >= 0), "not sorted by distance"
        assert not np.any(index == np.arange(N)[:, None]), "a point is its own neighbour"
        assert np.all(v[index[index >= 0]]), "an invalid point was returned"

    @chex.variants(with_jit=True, without_jit=True)
    def test_chamfer_distances_both_directions(self):
        rng = np.random.default_rng(2)
        pc0, v0 = random_set(rng, N)
        pc1, v1 = random_set(rng, M)
        out = self.variant(functools.partial(chamfer_distances, **BLOCKS))(pc0, pc1, v0, v1)
        chex.assert_shape((out.dist0to1, out.index0to1), (N,))
        chex.assert_shape((out.dist1to0, out.index1to0), (M,))
        d01, i01 = brute_knn(pc0, pc1, v0, v1, 1)
        d10, i10 = brute_knn(pc1, pc0, v1, v0, 1)
        np.testing.assert_array_equal(out.index0to1, i01[:, 0])
        np.testing.assert_array_equal(out.index1to0, i10[:, 0])
        assert_dist_close(out.dist0to1, d01[:, 0])
        assert_dist_close(out.dist1to0, d10[:, 0])

    def test_jit_and_eager_agree(self):
        rng = np.random.default_rng(3)
        q, qv = random_set(rng, N)
        r, rv = random_set(rng, M)
        eager = nearest_neighbor(q, r, qv, rv, **BLOCKS)
        chex.assert_trees_all_close(NN(q, r, qv, rv), eager, rtol=1e-6)
        eager_knn = knn(q, K, qv, **BLOCKS)
        chex.assert_trees_all_close(KNN(q, k=K, valid=qv), eager_knn, rtol=1e-6)

    @parameterized.parameters(1, 2, 3)
    def test_ties_go_to_the_lowest_index(self, seed):
        # Integer coordinates in a tiny cube: float32 distances are exact and most of them tie, so the indices
        # must equal NumPy's stable argsort exactly, across blocks of 8 and 12.
        rng = np.random.default_rng(seed)
        q = rng.integers(0, 3, (37, 3)).astype(np.float32)
        r = rng.integers(0, 3, (53, 3)).astype(np.float32)
        qv, rv = rng.random(37) > 0.1, rng.random(53) > 0.1
        blocks = dict(query_block=8, reference_block=12)
        _, ref_index = brute_knn(q, r, qv, rv, 4)
        _, index = nearest_neighbor(q, r, qv, rv, **blocks)
        np.testing.assert_array_equal(index, ref_index[:, 0])
        _, ref_index = brute_knn(r, r, rv, rv, 4, exclude_self=True)
        _, index = knn(r, 4, rv, **blocks)
        np.testing.assert_array_equal(index, ref_index)

    def test_knn_with_self_and_short_sets(self):
        rng = np.random.default_rng(4)
        p, _ = random_set(rng, N, invalid_fraction=0.0)
        v = np.zeros(N, bool)
        v[[3, 77, 150]] = True  # three valid points: two neighbours each without self, then -1 / inf
        dist, index = KNN(p, k=K, valid=v)
        ref_dist, ref_index = brute_knn(p, p, v, v, K, exclude_self=True)
        np.testing.assert_array_equal(index, ref_index)
        assert_dist_close(dist, ref_dist)
        np.testing.assert_array_equal(np.asarray(index)[v, 2:], NO_NEIGHBOR)
        # With self: every valid point is its own first neighbour, at distance 0.
        dist, index = KNN(p, k=K, valid=np.ones(N, bool), exclude_self=False)
        np.testing.assert_array_equal(np.asarray(index)[:, 0], np.arange(N))
        np.testing.assert_array_equal(np.asarray(dist)[:, 0], 0.0)
        # More neighbours than points: the extra slots are empty.
        dist, index = knn(p[:6], 9, **BLOCKS)
        np.testing.assert_array_equal(np.asarray(index)[:, 5:], NO_NEIGHBOR)
        assert np.all(np.isinf(np.asarray(dist)[:, 5:])) and np.all(np.asarray(index)[:, :5] >= 0)

    def test_all_invalid_reference_and_empty_sets(self):
        rng = np.random.default_rng(5)
        q, qv = random_set(rng, N)
        r, _ = random_set(rng, M)
        dist, index = NN(q, r, qv, np.zeros(M, bool))
        np.testing.assert_array_equal(index, NO_NEIGHBOR)
        np.testing.assert_array_equal(dist, np.inf)
        dist, index = KNN(r, k=K, valid=np.zeros(M, bool))
        np.testing.assert_array_equal(index, NO_NEIGHBOR)
        np.testing.assert_array_equal(dist, np.inf)
        # Non-finite points flagged valid are invalid all the same.
        r_nan = np.full_like(r, np.nan)
        dist, index = NN(q, r_nan, qv, np.ones(M, bool))
        np.testing.assert_array_equal(index, NO_NEIGHBOR)
        # A NaN point among finite ones in a block must not hide them (a NaN minimum would).
        r_nan[1::2] = r[1::2]
        _, index = NN(q, r_nan, qv, np.ones(M, bool))
        _, ref_index = brute_knn(q, r_nan, qv, np.isfinite(r_nan).all(-1), 1)
        np.testing.assert_array_equal(index, ref_index[:, 0])
        dist, index = nearest_neighbor(q, np.zeros((0, 3), np.float32))
        chex.assert_shape((dist, index), (N,))
        np.testing.assert_array_equal(index, NO_NEIGHBOR)
        dist, index = nearest_neighbor(np.zeros((0, 3), np.float32), r)
        chex.assert_shape((dist, index), (0,))
        dist, index = knn(np.zeros((0, 3), np.float32), 3)
        chex.assert_shape((dist, index), (0, 3))

    def test_large_sets_many_blocks_against_kdtree(self):
        # 20k x 18k through 20 x 24 blocks; cKDTree on the valid references only.
        rng = np.random.default_rng(6)
        q, qv = random_set(rng, 20_003, invalid_fraction=0.1)
        r, rv = random_set(rng, 18_001, invalid_fraction=0.1)
        dist, index = nearest_neighbor(q, r, qv, rv, query_block=1024, reference_block=768)
        dist, index = np.asarray(dist), np.asarray(index)
        kept = np.flatnonzero(rv)
        ref_dist, ref_pos = cKDTree(r[kept].astype(np.float64)).query(q[qv].astype(np.float64), k=2)
        ref_index = kept[ref_pos]  # valid queries, 2
        assert np.all(index[~qv] == NO_NEIGHBOR) and np.all(index[qv] >= 0)
        # Every returned neighbour is a nearest one (up to float32 rounding) ...
        np.testing.assert_allclose(
            gathered_dist2_f64(q, r, index)[qv], ref_dist[:, 0] ** 2, rtol=1e-5, atol=1e-6
        )
        assert_dist_close(dist[qv], ref_dist[:, 0] ** 2)
        # ... and it is the reference's one wherever the second nearest is not a near tie.
        clear = unambiguous(ref_dist**2)[:, 0]
        assert clear.mean() > 0.99
        np.testing.assert_array_equal(index[qv][clear], ref_index[clear, 0])

    def test_large_knn_against_kdtree(self):
        rng = np.random.default_rng(7)
        p, v = random_set(rng, 6_007, invalid_fraction=0.1)
        dist, index = knn(p, 8, v, query_block=256, reference_block=1000)
        dist, index = np.asarray(dist), np.asarray(index)
        kept = np.flatnonzero(v)
        ref_dist, ref_pos = cKDTree(p[kept].astype(np.float64)).query(p[kept].astype(np.float64), k=10)
        # Drop self (slot 0: random floats have no duplicates).
        ref_dist, ref_index = ref_dist[:, 1:], kept[ref_pos[:, 1:]]
        assert_dist_close(dist[kept], ref_dist[:, :8] ** 2)
        clear = unambiguous(ref_dist**2)[:, :8]
        assert clear.mean() > 0.99
        np.testing.assert_array_equal(index[kept][clear], ref_index[:, :8][clear])
        np.testing.assert_array_equal(index[~v], NO_NEIGHBOR)

    def test_chamfer_gradient_matches_float64_finite_differences(self):
        rng = np.random.default_rng(8)
        pc0 = rng.uniform(0, 1, (29, 3)).astype(np.float32)
        pc1 = rng.uniform(0, 1, (23, 3)).astype(np.float32)
        v0, v1 = rng.random(29) > 0.2, rng.random(23) > 0.2
        pc0[~v0] = np.nan  # must get a zero gradient, not NaN
        w0, w1 = rng.uniform(0.5, 2.0, 29), rng.uniform(0.5, 2.0, 23)

        def loss(a, b):
            out = chamfer_distances(a, b, v0, v1, **BLOCKS)
            loss0 = jnp.sum(jnp.where(v0, w0 * out.dist0to1, 0.0))
            return loss0 + jnp.sum(jnp.where(v1, w1 * out.dist1to0, 0.0))

        def loss64(a, b):  # brute force, float64
            d2 = brute_dist2(a, b, v0, v1)
            return np.sum(w0[v0] * d2[v0].min(1)) + np.sum(w1[v1] * d2[:, v1].min(0))

        g0, g1 = jax.jit(jax.grad(loss, argnums=(0, 1)))(pc0, pc1)
        a, b = np.where(v0[:, None], pc0, 0.0).astype(np.float64), pc1.astype(np.float64)
        for x, g, valid in ((a, g0, v0), (b, g1, v1)):
            fd = np.zeros_like(x)
            for idx in np.ndindex(*x.shape):
                if not valid[idx[0]]:
                    continue
                plus, minus = x.copy(), x.copy()
                plus[idx] += 1e-5
                minus[idx] -= 1e-5
                args_p, args_m = ((plus, b), (minus, b)) if x is a else ((a, plus), (a, minus))
                fd[idx] = (loss64(*args_p) - loss64(*args_m)) / 2e-5
            np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-4, atol=1e-5)
        assert np.all(np.asarray(g0)[~v0] == 0.0)

    def test_knn_gradient_matches_analytic(self):
        # d/dp sum_ij w_ij |p_i - p_j(i)|^2 = sum_j 2 w_ij (p_i - p_j) at i, minus the same at j(i).
        rng = np.random.default_rng(9)
        p = rng.uniform(0, 1, (N, 3)).astype(np.float32)
        v = rng.random(N) > 0.2
        w = rng.uniform(0.5, 2.0, (N, K))

        def loss(x):
            dist, index = knn(x, K, v, **BLOCKS)
            return jnp.sum(jnp.where(index >= 0, w * dist, 0.0))

        grad = jax.jit(jax.grad(loss))(p)
        _, index = brute_knn(p, p, v, v, K, exclude_self=True)
        x = p.astype(np.float64)
        expected = np.zeros_like(x)
        rows, slots = np.nonzero(index >= 0)
        diff = 2 * w[rows, slots, None] * (x[rows] - x[index[rows, slots]])  # pairs 3
        np.add.at(expected, rows, diff)
        np.add.at(expected, index[rows, slots], -diff)
        np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-4, atol=1e-5)

    def test_memory_stays_bounded_at_100k_points(self):
        # Compiled, not run: 100k x 100k must not hold anything n x m (40 GB in float32), and doubling the
        # sets must not grow the temporaries beyond the linear O(n + m) buffers.
        points = lambda n: jax.ShapeDtypeStruct((n, 3), jnp.float32)
        mask = lambda n: jax.ShapeDtypeStruct((n,), jnp.bool_)

        def temp_bytes(fn, *args):
            analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
            if analysis is None:
                pytest.skip("no compiled memory analysis on this backend")
            return analysis.temp_size_in_bytes

        n = 100_000
        out = jax.eval_shape(chamfer_distances, points(n), points(n), mask(n), mask(n))
        chex.assert_shape((out.dist0to1, out.index0to1, out.dist1to0, out.index1to0), (n,))
        assert out.dist0to1.dtype == jnp.float32 and out.index0to1.dtype == jnp.int32
        knn16 = lambda x, valid: knn(x, 16, valid)
        dist, index = jax.eval_shape(knn16, points(n), mask(n))
        chex.assert_shape((dist, index), (n, 16))
        cases = {
            "nearest_neighbor": (nearest_neighbor, lambda n: (points(n), points(n), mask(n), mask(n))),
            "chamfer_distances": (chamfer_distances, lambda n: (points(n), points(n), mask(n), mask(n))),
            "knn k=16": (knn16, lambda n: (points(n), mask(n))),
        }
        for name, (fn, args) in cases.items():
            small, big = temp_bytes(fn, *args(n)), temp_bytes(fn, *args(2 * n))
            assert small < 64 * 2**20, f"{name}: {small / 2**20:.1f} MiB of temporaries at 100k"
            # Linear parts only: at most ~200 bytes per extra point (knn keeps k = 16 candidates per point).
            assert big - small < 200 * n, f"{name}: temporaries grow {small} -> {big} bytes from 100k to 200k"


class InputErrorsTest(parameterized.TestCase):
    def test_bad_inputs_name_the_input(self):
        p = np.zeros((10, 3), np.float32)
        with pytest.raises(ValueError, match="query"):
            nearest_neighbor(np.zeros(10), p)
        with pytest.raises(ValueError, match="reference .* same number of coordinates"):
            nearest_neighbor(p, np.zeros((10, 2)))
        with pytest.raises(ValueError, match="reference_valid must be bool"):
            nearest_neighbor(p, p, None, np.ones(9, bool))
        with pytest.raises(ValueError, match="valid must be bool"):
            knn(p, 2, np.ones(10, np.int32))
        with pytest.raises(ValueError, match="valid1"):
            chamfer_distances(p, p, None, np.ones(3, bool))
        with pytest.raises(ValueError, match="k must be a positive int"):
            knn(p, 0)
        with pytest.raises(ValueError, match="reference_block"):
            nearest_neighbor(p, p, reference_block=0)
