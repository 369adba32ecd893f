"""SemanticFlow's coarse segmentation and pseudo-labels of a LiDAR sweep pair (NumPy, an offline pass).

SemanticFlow (``METHODS.md`` section 5) trains its flow and instance heads without labels from a coarse
segmentation computed once per sweep pair: which points are dynamic, which points form one object, and one rigid
motion per moving object. Per pair (sweep 0 ``pc0`` and sweep 1 ``pc1``, each in its own ego frame, with the ego
motion ``next_ego_from_ego``)::

    ground:      lidar_ground for pc0 (the dataset's flags), estimate_ground for pc1 (the schema has none)
    range:       range_mask (2..50 m, inside the +-51.2 m pillar grid)
    free space:  dynamic_by_free_space: a point is *seen through* when the other sweep's rays pass behind it
    clusters:    DBSCAN (eps 0.7 m) over the non-ground points in range of each sweep, pc0 in pc1's frame
    dynamic:     a cluster of at least min_cluster_size points, at most max_extent across, with at least
                 dynamic_fraction of its points (and min_votes) seen through
    both sweeps: a kept cluster whose nearest kept cluster of the other sweep (by centroid, within
                 max_displacement) is dynamic becomes dynamic too (``cross_sweep``): free space flags the
                 objects that recede in sweep 0 and those that approach in sweep 1
    matching:    each dynamic pc0 cluster -> the nearest dynamic pc1 cluster by centroid, within
                 max_displacement (metres per sweep pair)
    rigid fit:   ICP of the pc0 cluster onto the points of its pc1 cluster: nearest neighbours (restricted to
                 that cluster), trimmed at max_correspondence, a weighted Kabsch fit of every cluster at once
                 (fit_clusters_np, SVD with the determinant correction); started from zero motion and from the
                 centroid offset, the fit with more inliers (then the lower RMS) kept
    pseudo-flow: R c + t - c for the points c of a fitted cluster (the residual flow after ego motion, the
                 network's target); a fit with fewer than min_inlier_fraction inliers gives no pseudo-flow
                 (the cluster stays dynamic without a target); a fit that moves the cluster by less than
                 min_motion on average turns it static

Why clusters over all non-ground points rather than over the seen-through points alone: free space finds only
the part of an object that the other sweep sees through, its trailing (pc0) or leading (pc1) metre at 10 Hz
(``tests/test_freespace.py`` measures a recall of 0.22 at a precision of 0.99 on world pairs), so the clusters
of the whole scene carry that evidence over each object, as SeFlow's clusters (HDBSCAN over the sweep) do with
its dynamic labels. Static structure that a moving object touches within ``eps`` merges with it; ``max_extent``
and ``dynamic_fraction`` keep such clusters (walls, rows of parked cars) static.

DBSCAN (``bevjax.ops.dbscan``, labels equal to scikit-learn's) takes ``min_samples`` points within ``eps`` for a
core point; clusters smaller than ``min_cluster_size`` (20 by default, ``METHODS.md``'s minimum cluster) are
dropped. The default ``min_samples = 10`` is lower than 20 because a 32-beam sweep has about 0.7 m between rows at
30 m: a car there has few points within 0.7 m of each other.

Outputs per pair (static shapes: the sweeps' padded size ``p``), :func:`output_spec`:

- ``pseudo_dynamic0`` / ``pseudo_dynamic1`` [p] bool: the point lies in a dynamic cluster;
- ``pseudo_cluster0`` / ``pseudo_cluster1`` [p] int32: the point's cluster, -1 for none (ground, out of range,
  DBSCAN noise, small clusters); dynamic clusters are numbered first (0 .. D - 1, in DBSCAN's order), then
  the static ones, so that a loss over at most ``C`` clusters sees the dynamic ones. Sweep 1's dynamic cluster
  ids do not correspond to sweep 0's;
- ``pseudo_flow0`` [p, 3] float32: the residual flow of sweep-0 points (0 for static points and where
  ``pseudo_flow_valid0`` is False);
- ``pseudo_flow_valid0`` [p] bool: a rigid fit gave this point's pseudo-flow (static points: True, flow 0);
- ``next_lidar_ground`` [p] bool: the ground estimate of sweep 1 used here.

:func:`pseudo_label_split` runs this over every pair of a split as an offline pass
(:func:`bevjax.training.offline.run_offline_pass`: a progress bar with ETA, resumable, stored beside the split as
a ``bevjax_derived`` split and reused by every run with the same split and settings).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import numpy as np

from bevjax.geometry.kabsch import fit_clusters_np
from bevjax.ops.dbscan import dbscan
from bevjax.ops.freespace import dynamic_by_free_space
from bevjax.ops.neighbors import NO_NEIGHBOR, nearest_neighbor
from bevjax.ops.pointcloud import compensate, estimate_ground, range_mask

PASS_NAME = "flow_pseudo_labels"
INPUT_KEYS = (
    "lidar_points",
    "lidar_valid",
    "lidar_ground",
    "next_lidar_points",
    "next_lidar_valid",
    "next_ego_from_ego",
)
# A cluster id enters the nearest-neighbour search as a 4th coordinate times this: points of two different
# clusters are then >= 1e4 m apart, so every query finds its neighbour in its own cluster (float32 keeps the
# xyz part exact: equal 4th coordinates subtract to exactly 0).
_CLUSTER_SEPARATION = 1.0e4


@dataclasses.dataclass(frozen=True)
class PseudoLabelSettings:
    """Settings of the coarse segmentation (module docstring); every field enters the pass's name.

    ``origins``: the LiDAR origin(s) in the ego frame, [3] or [s, 3] (the world:
    ``bevjax.world.rig.LIDAR_POSITION``; Argoverse 2: the mean of its two roof LiDARs, see
    ``bevjax.ops.freespace``).
    """

    origins: tuple = ((0.943713, 0.0, 1.84023),)
    min_range: float = 2.0
    max_range: float = 50.0
    # Free space (bevjax.ops.freespace.dynamic_by_free_space).
    azimuth_bins: int = 1024
    elevation_bins: int = 32
    margin: float = 0.5
    # Clusters.
    eps: float = 0.7
    min_samples: int = 10
    min_cluster_size: int = 20
    max_extent: float = 20.0  # metres, the diagonal of a cluster's x-y bounding box
    dynamic_fraction: float = 0.05
    min_votes: int = 3
    # Rigid fits.
    max_displacement: float = 3.0  # metres per sweep pair: 30 m/s at 10 Hz
    icp_iterations: int = 10
    max_correspondence: float = 0.5
    min_inlier_fraction: float = 0.5
    # Fits in the ground plane (yaw and x-y translation): ICP between sweeps whose rings hit an object at
    # different heights otherwise slides it up or down by ~0.2 m. False: full 6-DoF Kabsch.
    planar: bool = True
    min_motion: float = 0.05  # metres per pair: the Argoverse 2 dynamic threshold
    # Free space sees receding objects in sweep 0 and approaching ones in sweep 1: a kept cluster whose
    # nearest kept cluster of the other sweep (by centroid, within max_displacement) is dynamic becomes
    # dynamic too. False: each sweep's own evidence only.
    cross_sweep: bool = True

    def __post_init__(self):
        origins = np.asarray(self.origins, np.float64).reshape(-1, 3)
        object.__setattr__(self, "origins", tuple(tuple(float(v) for v in o) for o in origins))
        for name in ("eps", "max_extent", "max_displacement", "max_correspondence", "margin"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PseudoLabelSettings.{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 <= self.dynamic_fraction <= 1 or not 0 <= self.min_inlier_fraction <= 1:
            raise ValueError(
                "PseudoLabelSettings.dynamic_fraction and min_inlier_fraction must lie in [0, 1], got "
                f"{self.dynamic_fraction!r} and {self.min_inlier_fraction!r}"
            )
        if self.min_samples < 1 or self.min_cluster_size < 1 or self.icp_iterations < 1:
            raise ValueError(
                "PseudoLabelSettings.min_samples, min_cluster_size and icp_iterations must be >= 1"
            )

    def to_json(self) -> dict:
        return {k: (list(map(list, v)) if k == "origins" else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_config(cls, cfg) -> PseudoLabelSettings:
        """From a mapping (e.g. ``config.pseudo``, an ml_collections ConfigDict) with a subset of the fields."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ValueError(f"unknown pseudo-label settings {unknown}; known: {sorted(fields)}")
        return cls(**values)


def output_spec(num_points: int) -> dict:
    """``{key: (shape, dtype)}`` of one pair's pseudo-labels, sweeps padded to ``num_points``."""
    p = int(num_points)
    return {
        "pseudo_dynamic0": ((p,), np.bool_),
        "pseudo_cluster0": ((p,), np.int32),
        "pseudo_flow0": ((p, 3), np.float32),
        "pseudo_flow_valid0": ((p,), np.bool_),
        "pseudo_dynamic1": ((p,), np.bool_),
        "pseudo_cluster1": ((p,), np.int32),
        "next_lidar_ground": ((p,), np.bool_),
    }


# Clusters -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Clusters:
    """DBSCAN clusters of one sweep's kept points and their per-cluster statistics."""

    label: np.ndarray  # [p] int, -1 or the DBSCAN cluster of the point (after the size / extent filters)
    count: np.ndarray  # [k] points
    votes: np.ndarray  # [k] seen-through points
    centroid: np.ndarray  # [k, 3]
    dynamic: np.ndarray  # [k] bool
    kept: np.ndarray  # [k] bool, passed the size and extent filters


def _per_point(flags: np.ndarray, label: np.ndarray) -> np.ndarray:
    """[p] bool: the cluster flag of each point's cluster, False for points in none (label -1); safe with no
    clusters."""
    if not len(flags):
        return np.zeros(label.shape, bool)
    return (label >= 0) & flags[np.maximum(label, 0)]


def _clusters(points, keep, seen, s: PseudoLabelSettings) -> _Clusters:
    label = dbscan(points, s.eps, s.min_samples, valid=keep).astype(np.int64)  # p
    k = int(label.max()) + 1
    inside = label >= 0
    lab = label[inside]
    count = np.bincount(lab, minlength=k)
    votes = np.bincount(lab, weights=seen[inside], minlength=k)
    centroid = (
        np.stack([np.bincount(lab, points[inside, c], k) for c in range(3)], 1)
        / np.maximum(count, 1)[:, None]
    )
    lo = np.full((k, 2), np.inf)
    hi = np.full((k, 2), -np.inf)
    np.minimum.at(lo, lab, points[inside, :2])
    np.maximum.at(hi, lab, points[inside, :2])
    extent = np.hypot(*(hi - lo).T) if k else np.zeros(0)
    big_enough = (count >= s.min_cluster_size) & (extent <= s.max_extent)
    label = np.where(inside & _per_point(big_enough, label), label, -1)
    dynamic = big_enough & (votes >= s.min_votes) & (votes >= s.dynamic_fraction * count)
    return _Clusters(label, count, votes, centroid, dynamic, big_enough)


def _partner_dynamic(a: _Clusters, b: _Clusters, s: PseudoLabelSettings) -> np.ndarray:
    """[k_a] bool: kept clusters of ``a`` whose nearest kept cluster of ``b`` (centroid distance within
    ``max_displacement``) is dynamic. A static object is its own nearest partner (the same place in both
    sweeps), so the flag crosses only to objects near a moving one of the other sweep: its earlier or later
    self."""
    out = np.zeros(len(a.count), bool)
    ka, kb = np.flatnonzero(a.kept), np.flatnonzero(b.kept)
    if not len(ka) or not len(kb):
        return out
    gap = np.linalg.norm(a.centroid[ka][:, None, :2] - b.centroid[kb][None, :, :2], axis=-1)  # ka kb
    best = np.argmin(gap, 1)
    near = gap[np.arange(len(ka)), best] <= s.max_displacement
    out[ka] = near & b.dynamic[kb[best]]
    return out


# ICP ----------------------------------------------------------------------------------------------------------


def _bucket(n: int) -> int:
    """Padded size for the jitted nearest-neighbour search: a power of two >= 256 (few compilations)."""
    return max(256, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


@functools.cache
def _nearest_fn():
    return jax.jit(lambda q, r, qv, rv: nearest_neighbor(q, r, qv, rv))


def _pad(x: np.ndarray, n: int, value: float = 0.0) -> np.ndarray:
    out = np.full((n, *x.shape[1:]), value, np.float32)
    out[: len(x)] = x
    return out


def nearest_in_cluster(query, query_cluster, reference, reference_cluster) -> tuple[np.ndarray, np.ndarray]:
    """For each query point, the nearest reference point with the same cluster id (squared distance, index).

    Jitted blockwise search (:func:`bevjax.ops.neighbors.nearest_neighbor`) on 4-d points whose 4th coordinate
    is the cluster id times 1e4 m, padded to powers of two. Queries whose cluster has no reference point get
    their nearest point of another cluster at a squared distance >= 1e8: trimmed away by any threshold.

    Args:
      query: [q, 3]; query_cluster: [q] int >= 0; reference: [r, 3]; reference_cluster: [r] int >= 0.

    Returns:
      ``(dist2 [q] float64, index [q] int64)``; index -1 and dist2 inf when ``reference`` is empty.
    """
    q, r = len(query), len(reference)
    if q == 0:
        return np.zeros(0), np.zeros(0, np.int64)
    if r == 0:
        return np.full(q, np.inf), np.full(q, NO_NEIGHBOR, np.int64)
    nq, nr = _bucket(q), _bucket(r)
    q4 = _pad(np.concatenate([query, _CLUSTER_SEPARATION * np.asarray(query_cluster)[:, None]], 1), nq)
    r4 = _pad(
        np.concatenate([reference, _CLUSTER_SEPARATION * np.asarray(reference_cluster)[:, None]], 1), nr
    )
    dist2, index = _nearest_fn()(q4, r4, np.arange(nq) < q, np.arange(nr) < r)
    index = np.asarray(index)[:q].astype(np.int64)
    # Recompute in float64 from the chosen neighbour's xyz: the 4th coordinate adds 0 within one cluster.
    d = np.asarray(query, np.float64) - np.asarray(reference, np.float64)[index]
    same = np.asarray(reference_cluster)[index] == np.asarray(query_cluster)
    return np.where(same, np.sum(d * d, 1), np.inf), index


def fit_clusters_planar_np(
    source, target, labels, weights, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-cluster weighted rigid fits in the ground plane: a rotation about z and an x-y translation.

    Minimises ``sum_i w_i ||R(theta) x_i + t - y_i||^2`` over the x-y coordinates with ``t_z = 0``. With the
    weighted centroids ``x_bar, y_bar`` and the centred points ``a_i = x_i - x_bar``, ``b_i = y_i - y_bar``
    (x-y), the optimum is ``theta = atan2(sum w (a x b), sum w (a . b))`` (the 2-d Kabsch solution, which is a
    rotation by construction) and ``t = y_bar - R x_bar``. Vectorised over clusters with ``np.bincount``.

    Args:
      source, target: [n, 3] corresponding points; labels: [n] int in [0, k), negative ignored;
      weights: [n] >= 0; k: number of clusters.

    Returns:
      ``(rotation [k, 3, 3], translation [k, 3], rms [k])``; clusters without weight get the identity, and
      ``rms`` is over the x-y residuals (inf without weight).
    """
    keep = labels >= 0
    lab, w = labels[keep], weights[keep]
    x, y = source[keep, :2], target[keep, :2]
    total = np.bincount(lab, w, k)
    safe = np.where(total > 0, total, 1.0)
    x_bar = np.stack([np.bincount(lab, w * x[:, c], k) for c in range(2)], 1) / safe[:, None]  # k 2
    y_bar = np.stack([np.bincount(lab, w * y[:, c], k) for c in range(2)], 1) / safe[:, None]
    a, b = x - x_bar[lab], y - y_bar[lab]  # n 2
    cross = np.bincount(lab, w * (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]), k)
    dot = np.bincount(lab, w * (a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1]), k)
    theta = np.where(total > 0, np.arctan2(cross, dot), 0.0)
    cos, sin = np.cos(theta), np.sin(theta)
    rotation = np.zeros((k, 3, 3))
    rotation[:, 0, 0], rotation[:, 0, 1], rotation[:, 1, 0], rotation[:, 1, 1] = cos, -sin, sin, cos
    rotation[:, 2, 2] = 1.0
    translation = np.zeros((k, 3))
    translation[:, :2] = y_bar - np.einsum("kij,kj->ki", rotation[:, :2, :2], x_bar)
    residual = np.einsum("nij,nj->ni", rotation[lab, :2, :2], x) + translation[lab, :2] - y
    rms = np.sqrt(np.bincount(lab, w * np.sum(residual**2, 1), k) / safe)
    return rotation, translation, np.where(total > 0, rms, np.inf)


@dataclasses.dataclass
class _Fit:
    rotation: np.ndarray  # [k, 3, 3]
    translation: np.ndarray  # [k, 3]
    inliers: np.ndarray  # [k] fraction of the cluster's points within max_correspondence at the end
    rms: np.ndarray  # [k] RMS of the inliers' residuals


def icp_clusters(source, label, target, target_label, init_translation, s: PseudoLabelSettings) -> _Fit:
    """Rigid ICP of every source cluster onto the target points of the same label, all clusters at once.

    Args:
      source: [q, 3] points (sweep 0 in sweep 1's frame); label: [q] int in [0, k).
      target: [r, 3] points (sweep 1); target_label: [r] int (the source cluster each target point may match).
      init_translation: [k, 3] starting translations (rotation identity).
      s: the settings (``icp_iterations``, ``max_correspondence``).

    Returns:
      Per cluster: the rotation, translation, inlier fraction and inlier RMS after ``s.icp_iterations``.
    """
    k = len(init_translation)
    rotation = np.broadcast_to(np.eye(3), (k, 3, 3)).copy()
    translation = np.asarray(init_translation, np.float64).copy()
    count = np.bincount(label, minlength=k)
    threshold2 = s.max_correspondence**2
    inliers, rms = np.zeros(k), np.full(k, np.inf)
    for _ in range(s.icp_iterations):
        moved = np.einsum("qij,qj->qi", rotation[label], source) + translation[label]  # q 3
        dist2, index = nearest_in_cluster(moved, label, target, target_label)
        weight = (dist2 <= threshold2).astype(np.float64)  # q
        inliers = np.bincount(label, weight, k) / np.maximum(count, 1)
        matched = target[np.maximum(index, 0)]
        inlier_label = np.where(weight > 0, label, -1)
        if s.planar:
            rotation, translation, rms = fit_clusters_planar_np(source, matched, inlier_label, weight, k)
        else:
            fit = fit_clusters_np(source, matched, inlier_label, weight)
            rotation[fit.labels] = fit.rotation
            translation[fit.labels] = fit.translation
            rms = np.full(k, np.inf)
            rms[fit.labels] = fit.rms
    return _Fit(rotation, translation, inliers, rms)


# One pair -----------------------------------------------------------------------------------------------------


def pseudo_labels(example: dict, settings: PseudoLabelSettings) -> dict[str, np.ndarray]:
    """The coarse segmentation and pseudo-flow of one sweep pair (module docstring), in NumPy.

    Args:
      example: a schema example with ``INPUT_KEYS`` (``lidar_points`` [p, 3], ``lidar_valid``,
        ``lidar_ground``, ``next_lidar_points`` [p, 3], ``next_lidar_valid``, ``next_ego_from_ego`` [4, 4]).
      settings: :class:`PseudoLabelSettings`.

    Returns:
      The arrays of :func:`output_spec` (``p`` = the padded size of each sweep).
    """
    missing = [key for key in INPUT_KEYS if key not in example]
    if missing:
        raise KeyError(f"pseudo_labels: the example lacks {missing}; it needs {list(INPUT_KEYS)}")
    s = settings
    p0 = np.asarray(example["lidar_points"], np.float64)
    v0 = np.asarray(example["lidar_valid"], bool)
    g0 = np.asarray(example["lidar_ground"], bool)
    p1 = np.asarray(example["next_lidar_points"], np.float64)
    v1 = np.asarray(example["next_lidar_valid"], bool)
    t = np.asarray(example["next_ego_from_ego"], np.float64)
    g1 = np.asarray(estimate_ground(p1.astype(np.float32), v1))
    seen0, seen1 = dynamic_by_free_space(
        p0, v0, p1, v1, t, origins=np.asarray(s.origins), ground0=g0, ground1=g1,
        azimuth_bins=s.azimuth_bins, elevation_bins=s.elevation_bins, margin=s.margin,
    )  # fmt: skip
    keep0 = range_mask(p0, v0, min_range=s.min_range, max_range=s.max_range) & ~g0
    keep1 = range_mask(p1, v1, min_range=s.min_range, max_range=s.max_range) & ~g1
    c0 = compensate(p0, t)  # p 3: sweep 0 in sweep 1's frame, where the rigid fits live
    cl0 = _clusters(c0, keep0, seen0, s)
    cl1 = _clusters(p1, keep1, seen1, s)
    if s.cross_sweep:
        from_1, from_0 = _partner_dynamic(cl0, cl1, s), _partner_dynamic(cl1, cl0, s)
        cl0.dynamic |= from_1
        cl1.dynamic |= from_0

    # Match every dynamic sweep-0 cluster to the nearest dynamic sweep-1 cluster by centroid, else to the
    # nearest sweep-1 cluster of any kind (sweep 1 may see too little of the object through free space).
    dyn0 = np.flatnonzero(cl0.dynamic)
    match = np.full(len(cl0.count), -1)
    for candidates in (np.flatnonzero(cl1.dynamic), np.flatnonzero(cl1.kept)):
        todo = dyn0[match[dyn0] < 0]
        if not len(todo) or not len(candidates):
            continue
        gap = np.linalg.norm(cl0.centroid[todo][:, None] - cl1.centroid[candidates][None], axis=-1)  # D0 D1
        best = np.argmin(gap, 1)
        close = gap[np.arange(len(todo)), best] <= s.max_displacement
        match[todo[close]] = candidates[best[close]]
    fitted = np.flatnonzero(match >= 0)  # sweep-0 clusters with a partner, f

    flow0 = np.zeros_like(p0)  # p 3 residual flow
    fit_ok = np.zeros(len(p0), bool)  # p: a point of a dynamic cluster with an accepted rigid fit
    dynamic_cluster0 = cl0.dynamic.copy()
    if len(fitted):
        slot = np.full(len(cl0.count), -1)
        slot[fitted] = np.arange(len(fitted))
        member = (cl0.label >= 0) & (slot[np.maximum(cl0.label, 0)] >= 0)  # points of fitted clusters
        src, lab = c0[member], slot[cl0.label[member]]
        # Each source cluster's targets: the points of its partner (repeated when partners are shared).
        rows = [np.flatnonzero(cl1.label == match[c]) for c in fitted]
        target = p1[np.concatenate(rows)]
        tlab = np.repeat(np.arange(len(fitted)), [len(r) for r in rows])
        fits = [
            icp_clusters(src, lab, target, tlab, init, s)
            for init in (np.zeros((len(fitted), 3)), cl1.centroid[match[fitted]] - cl0.centroid[fitted])
        ]
        better = (fits[1].inliers > fits[0].inliers) | (
            (fits[1].inliers == fits[0].inliers) & (fits[1].rms < fits[0].rms)
        )  # f
        rotation = np.where(better[:, None, None], fits[1].rotation, fits[0].rotation)
        translation = np.where(better[:, None], fits[1].translation, fits[0].translation)
        inliers = np.where(better, fits[1].inliers, fits[0].inliers)
        moved = np.einsum("qij,qj->qi", rotation[lab], src) + translation[lab]  # q 3
        motion = np.linalg.norm(moved - src, axis=1)  # q
        mean_motion = np.bincount(lab, motion, len(fitted)) / np.maximum(
            np.bincount(lab, None, len(fitted)), 1
        )
        good = inliers >= s.min_inlier_fraction  # f
        still = good & (mean_motion < s.min_motion)
        dynamic_cluster0[fitted[still]] = False
        ok = good[lab] & ~still[lab]  # q
        where = np.flatnonzero(member)[ok]
        flow0[where] = (moved - src)[ok]
        fit_ok[where] = True
    # Static points have the target 0; dynamic clusters without an accepted fit have no pseudo-flow.
    in_dyn0 = _per_point(dynamic_cluster0, cl0.label)
    flow_valid0 = v0 & (~in_dyn0 | fit_ok)
    in_dyn1 = _per_point(cl1.dynamic, cl1.label)
    return {
        "pseudo_dynamic0": in_dyn0,
        "pseudo_cluster0": _renumber(cl0.label, dynamic_cluster0),
        "pseudo_flow0": np.where(in_dyn0[:, None], flow0, 0.0).astype(np.float32),
        "pseudo_flow_valid0": flow_valid0,
        "pseudo_dynamic1": in_dyn1,
        "pseudo_cluster1": _renumber(cl1.label, cl1.dynamic),
        "next_lidar_ground": g1 & v1,
    }


def _renumber(label: np.ndarray, dynamic: np.ndarray) -> np.ndarray:
    """[p] int32 cluster ids with the dynamic clusters first (0 .. D - 1), then the static ones; -1 kept."""
    present = np.zeros(len(dynamic), bool)
    present[label[label >= 0]] = True
    order = np.concatenate([np.flatnonzero(present & dynamic), np.flatnonzero(present & ~dynamic)])
    new = np.full(len(dynamic), -1, np.int64)
    new[order] = np.arange(len(order))
    if not len(new):
        return np.full(label.shape, -1, np.int32)
    return np.where(label >= 0, new[np.maximum(label, 0)], -1).astype(np.int32)


# The offline pass ----------------------------------------------------------------------------------------------


def pseudo_label_split(
    source,
    settings: PseudoLabelSettings,
    *,
    data_dir=None,
    source_id=None,
    progress: bool = True,
    max_chunks: int | None = None,
    chunk_size: int | None = None,
):
    """Pseudo-labels of every pair of a split, computed once and stored beside it (module docstring).

    Args:
      source: random access to schema sweep-pair examples (``len``, ``source[i]``), e.g. a prepared split.
      settings: :class:`PseudoLabelSettings`; they name the derived split, so other settings write elsewhere.
      data_dir, source_id, progress, max_chunks, chunk_size: as :func:`bevjax.training.offline.run_offline_pass`.

    Returns:
      The derived split (record ``i``: the :func:`output_spec` arrays of ``source[i]``), or None when
      ``max_chunks`` stopped the pass early.
    """
    from bevjax.training.offline import run_offline_pass

    first = source[0]
    p0, p1 = np.shape(first["lidar_points"])[0], np.shape(first["next_lidar_points"])[0]
    if p0 != p1:
        raise ValueError(
            f"pseudo_label_split: sweeps padded to {p0} and {p1} points; the schema pads both alike"
        )

    def host_fn(example: dict, _outputs: dict) -> dict[str, Any]:
        return pseudo_labels(example, settings)

    return run_offline_pass(
        source,
        PASS_NAME,
        output_spec(p0),
        host_fn=host_fn,
        data_dir=data_dir,
        source_id=source_id,
        settings=settings.to_json(),
        batch_size=1,
        chunk_size=chunk_size,
        max_chunks=max_chunks,
        progress=progress,
    )
