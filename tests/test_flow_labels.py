"""Tests of SemanticFlow's coarse segmentation and pseudo-labels (``bevjax.flow_labels``).

References: a float64 brute-force search over the yaw angle for the planar fit, brute-force NumPy nearest
neighbours, exact rigid motions of synthetic clusters, and the world's ground-truth flow for the whole pass.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from bevjax.data import derived
from bevjax.flow_labels import (
    PseudoLabelSettings,
    fit_clusters_planar_np,
    icp_clusters,
    nearest_in_cluster,
    output_spec,
    pseudo_label_split,
    pseudo_labels,
)
from bevjax.metrics.scene_flow import eval_mask, is_dynamic
from bevjax.ops.pointcloud import residual_flow
from bevjax.world import WorldConfig, render_sample

WORLD = WorldConfig(cameras=("CAM_FRONT",), image_hw=(32, 88))
WORLD_PAIRS = (("boston", 3), ("boston", 4))


def yaw(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def test_planar_fit_matches_a_brute_force_angle_search():
    rng = np.random.default_rng(0)
    k, n = 4, 60
    labels = np.repeat(np.arange(k), n)
    source = rng.normal(size=(k * n, 3)) * [2.0, 1.0, 0.5] + rng.uniform(-20, 20, (k * n, 1))
    truth = [(yaw(a), np.array([dx, dy, 0.0])) for a, dx, dy in rng.uniform(-0.3, 0.3, (k, 3))]
    target = np.concatenate([source[labels == j] @ r.T + t for j, (r, t) in enumerate(truth)])
    target += rng.normal(scale=0.05, size=target.shape)  # noise, and z motion the fit must ignore
    target[:, 2] += 0.3
    weights = rng.uniform(0.2, 1.0, k * n)
    rotation, translation, rms = fit_clusters_planar_np(source, target, labels, weights, k)
    angles = np.linspace(-0.5, 0.5, 20001)
    for j in range(k):
        m = labels == j
        x, y, w = source[m, :2], target[m, :2], weights[m]
        xb, yb = np.average(x, 0, w), np.average(y, 0, w)
        cost = [np.sum(w * np.sum(((x - xb) @ yaw(a)[:2, :2].T - (y - yb)) ** 2, 1)) for a in angles]
        best = angles[int(np.argmin(cost))]
        assert np.arctan2(rotation[j, 1, 0], rotation[j, 0, 0]) == pytest.approx(best, abs=1e-4)
        np.testing.assert_allclose(rotation[j, :2, :2] @ xb + translation[j, :2], yb, atol=1e-9)
        assert translation[j, 2] == 0 and rotation[j, 2, 2] == 1
        assert rms[j] == pytest.approx(np.sqrt(min(cost) / w.sum()), rel=1e-3)


def test_planar_fit_of_an_empty_cluster_is_the_identity():
    source = np.zeros((3, 3))
    rotation, translation, rms = fit_clusters_planar_np(source, source, np.array([0, 0, 0]), np.zeros(3), 2)
    np.testing.assert_array_equal(rotation, np.broadcast_to(np.eye(3), (2, 3, 3)))
    np.testing.assert_array_equal(translation, 0)
    assert np.isinf(rms).all()


def test_nearest_in_cluster_matches_brute_force():
    rng = np.random.default_rng(1)
    query, reference = rng.uniform(-30, 30, (300, 3)), rng.uniform(-30, 30, (500, 3))
    qc, rc = rng.integers(0, 4, 300), rng.integers(0, 3, 500)  # cluster 3 has no reference points
    dist2, index = nearest_in_cluster(query, qc, reference, rc)
    for i in range(300):
        same = np.flatnonzero(rc == qc[i])
        if not len(same):
            assert np.isinf(dist2[i])
            continue
        d = np.sum((reference[same] - query[i]) ** 2, 1)
        assert index[i] == same[np.argmin(d)]
        assert dist2[i] == pytest.approx(d.min(), rel=1e-12)


def test_icp_recovers_exact_planar_motions():
    rng = np.random.default_rng(2)

    # Two box-surface clusters (car-like), moved by a yaw and a translation each; the target is resampled
    # (another set of points on the same moved surfaces) so correspondences are not given. (From zero motion
    # ICP slides along the long sides into a local minimum 0.4 m off: hence the pass's second start.)
    def box(n):
        local = rng.uniform(-0.5, 0.5, (n, 3))
        axis = rng.integers(0, 2, n)
        local[np.arange(n), axis] = np.sign(local[np.arange(n), axis]) * 0.5
        return local * [4.5, 1.9, 1.5]

    centres = np.array([[10.0, 5.0, 0.8], [-8.0, -12.0, 0.8]])
    motions = [(yaw(0.05), np.array([0.6, 0.1, 0.0])), (yaw(-0.03), np.array([-0.2, 0.4, 0.0]))]
    source = np.concatenate([box(800) + c for c in centres])
    label = np.repeat([0, 1], 800)
    target = np.concatenate([(box(3000) + c) @ r.T + t for c, (r, t) in zip(centres, motions, strict=True)])
    target_label = np.repeat([0, 1], 3000)
    # Started as the pass starts one of its two fits: from the offset of the clusters' centroids.
    init = np.stack([target[target_label == j].mean(0) - source[label == j].mean(0) for j in range(2)])
    fit = icp_clusters(source, label, target, target_label, init, PseudoLabelSettings())
    for j, (r, t) in enumerate(motions):
        moved = source[label == j] @ fit.rotation[j].T + fit.translation[j]
        want = source[label == j] @ r.T + t
        assert np.abs(moved - want).max() < 0.08
        assert fit.inliers[j] > 0.95


@functools.cache
def world_labels():
    s = PseudoLabelSettings()
    out = []
    for domain, index in WORLD_PAIRS:
        ex = render_sample(WORLD, domain, "train", index)
        out.append((ex, pseudo_labels(ex, s)))
    return out


def test_outputs_follow_the_spec():
    for ex, labels in world_labels():
        spec = output_spec(len(ex["lidar_points"]))
        assert set(labels) == set(spec)
        for key, (shape, dtype) in spec.items():
            assert labels[key].shape == shape and labels[key].dtype == dtype, key
        invalid0, invalid1 = ~ex["lidar_valid"], ~ex["next_lidar_valid"]
        assert not labels["pseudo_dynamic0"][invalid0].any() and not labels["pseudo_dynamic1"][invalid1].any()
        assert (labels["pseudo_cluster0"][invalid0] == -1).all()
        assert not labels["pseudo_flow_valid0"][invalid0].any()
        # Dynamic clusters are numbered first.
        c, d = labels["pseudo_cluster0"], labels["pseudo_dynamic0"]
        if d.any() and (~d & (c >= 0)).any():
            assert c[d].max() < c[~d & (c >= 0)].min()
        assert not labels["pseudo_flow0"][~d].any()


def test_world_pairs_pseudo_flow_beats_zero_flow():
    tp = fp = fn = 0
    err_zero, err_pseudo = [], []
    for ex, labels in world_labels():
        p0, t = ex["lidar_points"], ex["next_ego_from_ego"]
        scored = eval_mask(p0, ex["lidar_ground"]) & ex["lidar_valid"]
        truth = is_dynamic(p0, ex["lidar_flow"], t) & scored
        found = labels["pseudo_dynamic0"] & scored
        tp, fp, fn = tp + np.sum(found & truth), fp + np.sum(found & ~truth), fn + np.sum(~found & truth)
        residual = residual_flow(p0, ex["lidar_flow"], t)
        err_zero.append(np.linalg.norm(residual[truth], axis=1))
        err_pseudo.append(np.linalg.norm((residual - labels["pseudo_flow0"])[truth], axis=1))
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    zero, pseudo = np.concatenate(err_zero).mean(), np.concatenate(err_pseudo).mean()
    print(f"pseudo-labels on {WORLD_PAIRS}: dynamic precision {precision:.3f} recall {recall:.3f}, "
          f"dynamic EPE {pseudo:.3f} m (zero flow {zero:.3f} m)")  # fmt: skip
    assert precision > 0.9 and recall > 0.4
    assert pseudo < 0.7 * zero


class ListSource:
    def __init__(self, examples):
        self.examples = examples

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


def test_offline_pass_stores_the_labels(tmp_path):
    examples = [ex for ex, _ in world_labels()]
    source_id = derived.source_identity("world", "test", "train")
    split = pseudo_label_split(
        ListSource(examples), PseudoLabelSettings(), data_dir=tmp_path, source_id=source_id, progress=False
    )
    assert len(split) == len(examples)
    for i, (_, labels) in enumerate(world_labels()):
        record = split[i]
        for key, value in labels.items():
            np.testing.assert_array_equal(record[key], value, err_msg=key)

    # A second call finds the stored split and does not recompute (a source that fails when read past 0).
    class Once(ListSource):
        def __getitem__(self, i):
            assert i == 0, "the pass ran again"
            return super().__getitem__(i)

    again = pseudo_label_split(
        Once(examples), PseudoLabelSettings(), data_dir=tmp_path, source_id=source_id, progress=False
    )
    assert len(again) == len(examples)


def test_settings_errors_name_the_field():
    with pytest.raises(ValueError, match="eps"):
        PseudoLabelSettings(eps=0.0)
    with pytest.raises(ValueError, match="unknown pseudo-label settings"):
        PseudoLabelSettings.from_config({"epsilon": 0.5})
    with pytest.raises(KeyError, match="lidar_ground"):
        pseudo_labels({"lidar_points": np.zeros((4, 3))}, PseudoLabelSettings())


def test_dynamic_flags_cross_to_the_other_sweeps_partner():
    """A parked car (the same place in both sweeps) stays static beside a moving car that free space flagged
    in sweep 1 only; the moving car's sweep-0 cluster takes the flag; a cluster beyond max_displacement does not."""
    from bevjax.flow_labels import _Clusters, _partner_dynamic

    def clusters(centroids, dynamic, kept=None):
        k = len(centroids)
        kept = np.ones(k, bool) if kept is None else np.asarray(kept)
        return _Clusters(np.zeros(0, int), np.full(k, 50), np.zeros(k), np.asarray(centroids, float),
                         np.asarray(dynamic), kept)  # fmt: skip

    s = PseudoLabelSettings()
    sweep0 = clusters([[10, 3, 0], [14, 3, 0], [30, 0, 0], [50, 0, 0]], [False, False, False, False], [1, 1, 1, 0])
    sweep1 = clusters([[10, 3, 0], [15, 3, 0], [34, 0, 0], [50, 0, 0]], [False, True, True, True], [1, 1, 1, 1])
    # parked car; moving car 1 m on; a partner 4 m away (beyond 3 m); a cluster that is not kept in sweep 0
    np.testing.assert_array_equal(_partner_dynamic(sweep0, sweep1, s), [False, True, False, False])
    np.testing.assert_array_equal(_partner_dynamic(sweep1, sweep0, s), [False, False, False, False])


def test_a_pair_without_clusters_gives_empty_labels():
    """Too few points for one DBSCAN cluster (a sparse sweep, all padding): no dynamic point, no flow."""
    ex = {k: np.asarray(v) for k, v in world_labels()[0][0].items()}
    for key in ("lidar_valid", "next_lidar_valid"):
        ex[key] = np.zeros_like(ex[key])
    labels = pseudo_labels(ex, PseudoLabelSettings())
    assert not labels["pseudo_dynamic0"].any() and not labels["pseudo_dynamic1"].any()
    assert (labels["pseudo_cluster0"] == -1).all() and not labels["pseudo_flow0"].any()
