"""Tests of the grid DBSCAN against scikit-learn's DBSCAN (labels equal exactly, not up to relabelling).

References: ``sklearn.cluster.DBSCAN(eps, min_samples)`` (KD-tree for 12 points or more; below that it uses a
brute-force distance formula whose rounding differs at ``eps``, so the small hand-made cases avoid ties),
hand-computed labels for the tie rules (``<= eps``, which cluster a shared border point takes), and
``scipy.sparse.csgraph.connected_components`` for the union-find.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import DBSCAN

from bevjax.ops import dbscan as dbscan_module
from bevjax.ops.dbscan import NOISE, dbscan


def sklearn_dbscan(points, eps, min_samples) -> tuple[np.ndarray, np.ndarray]:
    """(labels [n] int, core [n] bool) of scikit-learn's DBSCAN (euclidean, algorithm='auto')."""
    model = DBSCAN(eps=eps, min_samples=min_samples, metric="euclidean").fit(points)
    core = np.zeros(len(points), bool)
    core[model.core_sample_indices_] = True
    return model.labels_, core


def assert_same_as_sklearn(points, eps, min_samples, **kwargs) -> np.ndarray:
    """Checks labels and core mask against scikit-learn exactly; returns the labels."""
    labels, core = dbscan(points, eps, min_samples, return_core=True, **kwargs)
    want_labels, want_core = sklearn_dbscan(points, eps, min_samples)
    assert labels.dtype == np.int32 and labels.shape == (len(points),)
    np.testing.assert_array_equal(core, want_core, err_msg="core points differ")
    np.testing.assert_array_equal(labels, want_labels, err_msg="labels differ")
    return labels


def lidar_like(rng, n_objects=12, points_per_object=300, n_background=800, extent=30.0) -> np.ndarray:
    """float32 [n, 3]: car-sized boxes (4.5 x 1.9 x 1.5 m) sampled on their surfaces, some touching, plus
    scattered background points; shuffled so that clusters do not start in index order."""
    centres = rng.uniform(-extent, extent, (n_objects, 3)) * [1, 1, 0.05]
    centres[1] = centres[0] + [4.9, 0.0, 0.0]  # two cars bumper to bumper: shared border points
    parts = []
    for c in centres:
        local = rng.uniform(-0.5, 0.5, (points_per_object, 3))
        axis = rng.integers(0, 3, points_per_object)
        local[np.arange(points_per_object), axis] = np.sign(local[np.arange(points_per_object), axis]) * 0.5
        parts.append(c + local * [4.5, 1.9, 1.5])
    parts.append(rng.uniform(-extent, extent, (n_background, 3)) * [1, 1, 0.1])
    points = np.concatenate(parts)
    return points[rng.permutation(len(points))].astype(np.float32)


# Random sets, compared with scikit-learn ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, dim, extent, eps, min_samples, dtype",
    [
        (3000, 3, (10.0, 10.0, 3.0), 0.7, 12, np.float64),  # about 14 neighbours each: core, border, noise
        (3000, 3, (10.0, 10.0, 3.0), 0.7, 12, np.float32),
        (2000, 3, (20.0, 20.0, 20.0), 2.0, 4, np.float64),
        (1500, 2, (10.0, 10.0), 0.4, 5, np.float64),
        (800, 1, (10.0,), 0.01, 3, np.float64),
        (400, 3, (1e4, 1e4, 1e4), 900.0, 2, np.float64),  # far from the origin and spread out
    ],
)
def test_uniform_random_sets(n, dim, extent, eps, min_samples, dtype):
    rng = np.random.default_rng(n + dim)
    points = (rng.random((n, dim)) * np.asarray(extent)).astype(dtype)
    labels = assert_same_as_sklearn(points, eps, min_samples)
    assert labels.max() >= 1 and (labels == NOISE).any()  # the case is not trivial


def test_offset_coordinates():
    """Points 100 km from the origin (UTM-like): float64 distances still agree exactly."""
    rng = np.random.default_rng(1)
    points = rng.random((3000, 3)) * [10.0, 10.0, 3.0] + [4.5e5, 5.4e6, 230.0]
    assert_same_as_sklearn(points, 0.7, 12)


def test_lidar_like_blobs():
    points = lidar_like(np.random.default_rng(2))
    labels = assert_same_as_sklearn(points, 0.7, 20)
    assert labels.max() >= 8


@pytest.mark.parametrize(
    "cells_per_eps, segment, block_elements",
    [(2.0, 255, 1 << 17), (1.8, 7, 64), (3.0, 16, 1 << 10), (2.5, 3, 1)],
)
def test_grid_parameters(monkeypatch, cells_per_eps, segment, block_elements):
    """Same labels for coarser and finer grids (reach 2 or 3 cells), cells split into small segments and
    partial blocks chunked down to one pair."""
    monkeypatch.setattr(dbscan_module, "CELLS_PER_EPS", cells_per_eps)
    monkeypatch.setattr(dbscan_module, "SEGMENT", segment)
    monkeypatch.setattr(dbscan_module, "BLOCK_ELEMENTS", block_elements)
    rng = np.random.default_rng(3)
    points = lidar_like(rng, n_objects=6, points_per_object=200, n_background=300, extent=10.0)
    assert_same_as_sklearn(points, 0.7, 15)


def test_duplicate_coordinates():
    """Many exact duplicates and exact ties: 60 positions on a 0.1 m lattice, each repeated 1 to 40 times,
    with cells of more than 255 points (split into segments)."""
    rng = np.random.default_rng(4)
    sites = np.round(rng.uniform(0, 3.0, (60, 3)), 1)
    points = np.repeat(sites, rng.integers(1, 40, len(sites)), axis=0)
    points = np.concatenate([points, np.repeat(sites[:2], 300, axis=0)])  # two cells of > 255 points
    points = points[rng.permutation(len(points))]
    for min_samples in (1, 5, 30, 200):
        assert_same_as_sklearn(points, 0.7, min_samples)
    assert_same_as_sklearn(np.zeros((50, 3)), 0.7, 50)  # all in one place: one cluster
    assert_same_as_sklearn(np.zeros((50, 3)), 0.7, 51)  # one short: all noise


# Boundary and tie rules ----------------------------------------------------------------------------------------


def test_points_exactly_eps_apart_are_neighbours():
    """A line of points 0.5 apart, eps = 0.5: each inner point has exactly 3 points within ``<= eps`` (itself
    and both neighbours), so it is core at min_samples 3; the ends are border points. With ``< eps`` all would
    be noise."""
    points = np.zeros((20, 3))
    points[:, 0] = 0.5 * np.arange(20)
    labels, core = dbscan(points, 0.5, 3, return_core=True)
    np.testing.assert_array_equal(core, np.r_[False, np.ones(18, bool), False])
    np.testing.assert_array_equal(labels, np.zeros(20))
    assert (dbscan(points, 0.5, 4) == NOISE).all()
    assert_same_as_sklearn(points, 0.5, 3)


@pytest.mark.parametrize(
    "eps, spacing, min_samples",
    [
        (0.5, 0.5, (3, 5, 7)),
        (0.25, 0.25, (3, 5, 7)),
        (0.7, 0.7, (3, 5, 7)),
        (1.0, 0.5, (5, 10, 20)),
        (0.5, 0.125, (60, 100, 140)),  # several points per cell: ties inside the point-distance blocks
    ],
)
def test_lattice_at_eps(eps, spacing, min_samples):
    """A 3D lattice (60 % of its sites) with many pairs exactly ``eps`` apart: along the axes, and with the
    finer spacings along diagonals too (e.g. 0.3^2 + 0.4^2 = 0.5^2 on the 0.1 m lattice)."""
    rng = np.random.default_rng(5)
    grid = np.stack(np.meshgrid(*[np.arange(8)] * 3, indexing="ij"), -1).reshape(-1, 3) * spacing
    points = grid[rng.random(len(grid)) < 0.6]
    noise = [(assert_same_as_sklearn(points, eps, ms) == NOISE).mean() for ms in min_samples]
    assert noise[0] < 0.5 and noise[-1] > 0  # from mostly clustered to some noise


def test_dyadic_points_with_many_ties():
    """Points on a 1/16 m lattice with eps 0.5 m: every distance is exact, so pairs exactly eps apart abound,
    also where two cells' point boxes are exactly eps apart (the box pruning must keep those)."""
    rng = np.random.default_rng(10)
    points = rng.integers(0, 40, (1500, 3)) / 16.0
    for min_samples in (2, 6, 12):
        assert_same_as_sklearn(points, 0.5, min_samples)


def test_border_point_takes_first_cluster():
    """A border point within eps of a core of two clusters takes the one whose smallest core index comes first
    (hand-computed; 1D, eps 0.5, min_samples 4)."""
    left = [0.0, 0.1, 0.2, 0.3]  # 0.3 sees 0.0 .. 0.3 and the border point: core
    right = [1.2, 1.3, 1.4, 1.5]
    border = [0.75]  # 0.45 from 0.3 and from 1.2: 3 neighbours, not core
    points = np.array(right + left + border)[:, None]
    labels, core = dbscan(points, 0.5, 4, return_core=True)
    np.testing.assert_array_equal(labels, [0, 0, 0, 0, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(core, [True] * 8 + [False])
    points = np.array(left + right + border)[:, None]
    np.testing.assert_array_equal(dbscan(points, 0.5, 4), [0, 0, 0, 0, 1, 1, 1, 1, 0])
    points = np.array(border + right + left)[:, None]  # the border point's index does not matter
    np.testing.assert_array_equal(dbscan(points, 0.5, 4), [0, 0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(sklearn_dbscan(points, 0.5, 4)[0], [0, 0, 0, 0, 0, 1, 1, 1, 1])


def test_min_samples_one_and_all_noise():
    rng = np.random.default_rng(6)
    points = rng.random((2000, 3)) * 10.0
    labels = assert_same_as_sklearn(points, 0.5, 1)  # every point is core: components of the eps graph
    assert (labels != NOISE).all() and labels.max() > 10
    labels, core = dbscan(points, 0.5, 10_000, return_core=True)
    assert (labels == NOISE).all() and not core.any()
    assert_same_as_sklearn(points, 0.5, 10_000)


# Masks, empty input, errors -----------------------------------------------------------------------------------


def test_empty_input():
    for points, valid in ((np.zeros((0, 3)), None), (np.full((5, 3), np.nan), np.zeros(5, bool))):
        labels, core = dbscan(points, 0.7, 20, valid, return_core=True)
        assert labels.dtype == np.int32 and core.dtype == np.bool_
        assert labels.shape == core.shape == (len(points),)
        assert (labels == NOISE).all() and not core.any()


def test_valid_mask():
    """Invalid rows (NaN, huge, or copies of valid points that would make them core) are noise and nobody's
    neighbours: the labels of the valid rows are scikit-learn's on the valid rows alone."""
    rng = np.random.default_rng(7)
    points = lidar_like(rng, n_objects=8, points_per_object=150, n_background=400, extent=15.0)
    valid = rng.random(len(points)) > 0.25
    bad = np.flatnonzero(~valid)
    points[bad[0::3]] = np.nan
    points[bad[1::3]] = 1e30
    points[bad[2::3]] = points[np.flatnonzero(valid)[: len(bad[2::3])]]
    labels, core = dbscan(points, 0.7, 12, valid, return_core=True)
    want_labels, want_core = sklearn_dbscan(points[valid], 0.7, 12)
    np.testing.assert_array_equal(labels[valid], want_labels)
    np.testing.assert_array_equal(core[valid], want_core)
    assert (labels[~valid] == NOISE).all() and not core[~valid].any()
    # Padding a set to a fixed size leaves its labels unchanged.
    padded = np.concatenate([points[valid], np.zeros((100, 3), np.float32)])
    mask = np.r_[np.ones(valid.sum(), bool), np.zeros(100, bool)]
    np.testing.assert_array_equal(dbscan(padded, 0.7, 12, mask)[: valid.sum()], want_labels)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(points=np.zeros((4, 4))), "points must be"),
        (dict(points=np.zeros(4)), "points must be"),
        (dict(eps=0.0), "eps must be"),
        (dict(eps=float("nan")), "eps must be"),
        (dict(min_samples=0), "min_samples must be"),
        (dict(min_samples=2.5), "min_samples must be"),
        (dict(valid=np.ones(3, bool)), "valid must be"),
        (dict(valid=np.ones(4)), "valid must be"),
        (dict(points=np.array([[0.0, 0, 0], [np.nan, 0, 0], [1, 1, 1], [2, 2, 2]])), r"non-finite .*\[1\]"),
    ],
)
def test_errors_name_the_input(kwargs, match):
    args = dict(points=np.zeros((4, 3)), eps=0.7, min_samples=2, valid=None) | kwargs
    with pytest.raises(ValueError, match=match):
        dbscan(**args)


# Union-find and real data ---------------------------------------------------------------------------------


def test_components_match_scipy():
    rng = np.random.default_rng(8)
    for num_nodes, num_edges in ((1, 0), (50, 0), (1000, 700), (1000, 3000), (5000, 20000)):
        u, v = rng.integers(0, num_nodes, (2, num_edges))
        root = dbscan_module._components(num_nodes, u, v)
        graph = coo_matrix((np.ones(num_edges), (u, v)), shape=(num_nodes, num_nodes))
        _, component = connected_components(graph, directed=False)
        # The root is the component's smallest node: same partition, canonical representative.
        smallest = np.full(component.max() + 1, num_nodes)
        np.minimum.at(smallest, component, np.arange(num_nodes))
        np.testing.assert_array_equal(root, smallest[component])
    path = np.arange(4999)[np.random.default_rng(9).permutation(4999)]  # a long path in scrambled order
    np.testing.assert_array_equal(dbscan_module._components(5000, path, path + 1), np.zeros(5000))


def test_real_argoverse2_sweep(av2_log):
    """The sample log's first sweep: non-ground points (82k) and, as SemanticFlow clusters them, the dynamic
    points alone, at eps 0.7 m and min_samples 20."""
    sweep = av2_log.load_sweep(av2_log.lidar_timestamps()[0])
    flow = av2_log.load_flow_labels()
    points = sweep["lidar_points"][~flow["lidar_ground"]]
    labels = assert_same_as_sklearn(points, 0.7, 20)
    assert labels.max() > 50
    dynamic = sweep["lidar_points"][flow["dynamic"]]
    assert assert_same_as_sklearn(dynamic, 0.7, 20).max() >= 1
