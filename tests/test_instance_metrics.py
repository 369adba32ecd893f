"""Instance metrics: ARI against scikit-learn, PQ against a brute-force set implementation and a hand-computed case."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from bevjax.metrics.instance import (
    InstanceAccumulator,
    PanopticQuality,
    adjusted_rand_index,
    instance_ids_from_masks,
    panoptic_quality,
)

# Adjusted Rand index --------------------------------------------------------------------------------------------


def _random_labeling(rng, n, k):
    return rng.integers(0, max(k, 1), size=n)


def test_ari_matches_sklearn_on_random_labelings():
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(0, 80))
        t = _random_labeling(rng, n, int(rng.integers(1, 8)))
        if trial % 3 == 0:  # a noisy copy: high ARI
            p = np.where(rng.random(n) < 0.2, rng.integers(0, 8, n), t)
        else:
            p = _random_labeling(rng, n, int(rng.integers(1, 8)))
        want = adjusted_rand_score(t, p)
        got = adjusted_rand_index(t, p)
        assert isinstance(got, float)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15), (t, p)
        assert adjusted_rand_index(p, t) == pytest.approx(got, rel=1e-12, abs=1e-15)  # symmetric


def test_ari_permuted_and_relabelled_ids_give_one():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n, k = int(rng.integers(2, 60)), int(rng.integers(1, 10))
        t = rng.integers(0, k, n)
        relabel = rng.permutation(1000)[:k] * 7919 - 3000  # arbitrary distinct ids, negative ones too
        assert adjusted_rand_index(t, relabel[t]) == 1.0


@pytest.mark.parametrize(
    "true, pred",
    [
        ([], []),  # n = 0
        ([3], [7]),  # n = 1
        ([0, 0, 0, 0], [5, 5, 5, 5]),  # one cluster on both sides
        ([0, 1, 2, 3], [9, 8, 7, 6]),  # one cluster per point on both sides
        ([0, 0, 0, 0], [0, 1, 2, 3]),  # one cluster against one per point: 0.0
        ([0, 1, 2, 3], [0, 0, 0, 0]),
        ([0, 0], [0, 1]),
        ([0, 0, 1, 1], [0, 1, 0, 1]),  # -0.5, the minimum
        ([0, 0, 1, 2], [0, 0, 1, 1]),  # 4 / 7
        ([-1, -1, 2, 2, 10**12], [0, 0, -5, -5, -5]),  # negative and huge ids
    ],
)
def test_ari_degenerate_cases_match_sklearn(true, pred):
    t, p = np.array(true, np.int64), np.array(pred, np.int64)
    assert adjusted_rand_index(t, p) == adjusted_rand_score(t, p)


def test_ari_hand_values():
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    assert adjusted_rand_index([0, 0, 1, 2], [0, 0, 1, 1]) == pytest.approx(4 / 7)
    assert adjusted_rand_index([0, 0, 0, 0], [0, 1, 2, 3]) == 0.0
    assert adjusted_rand_index(np.array([], np.int64), np.array([], np.int64)) == 1.0
    assert adjusted_rand_index([], []) == 1.0  # an empty list is float64 to NumPy: allowed


def test_ari_large_n_no_overflow():
    rng = np.random.default_rng(2)
    n = 100_000  # products of pair counts exceed int64
    t = rng.integers(0, 5, n)
    p = np.where(rng.random(n) < 0.3, rng.integers(0, 5, n), t)
    assert adjusted_rand_index(t, p) == pytest.approx(adjusted_rand_score(t, p), rel=1e-12)


# Panoptic quality -----------------------------------------------------------------------------------------------


def brute_force_pq(true_ids, pred_ids, void=None, threshold=0.5, min_points=1):
    """PQ by set operations over every (true, predicted) segment pair, with the COCO void rule."""
    n = len(true_ids)
    void_set = {i for i in range(n) if true_ids[i] < 0 or (void is not None and void[i])}
    gt, pred = {}, {}
    for i in range(n):
        if i not in void_set:
            gt.setdefault(int(true_ids[i]), set()).add(i)
        if pred_ids[i] >= 0:
            pred.setdefault(int(pred_ids[i]), set()).add(i)
    tp, iou_sum, matched_gt, matched_pred = 0, 0.0, set(), set()
    for gk, gs in gt.items():
        for pk, ps in pred.items():
            inter = len(gs & ps)
            union = len(gs | ps) - len(ps & void_set)
            if inter and inter / union > threshold:
                assert gk not in matched_gt and pk not in matched_pred  # unique matches
                tp, iou_sum = tp + 1, iou_sum + inter / union
                matched_gt.add(gk)
                matched_pred.add(pk)
    fn = sum(1 for gk, gs in gt.items() if gk not in matched_gt and len(gs) >= min_points)
    fp = 0
    for pk, ps in pred.items():
        if pk in matched_pred or len(ps & void_set) / len(ps) > 0.5 or len(ps - void_set) < min_points:
            continue
        fp += 1
    return tp, fp, fn, iou_sum


def _noisy_instances(rng, n):
    """True ids with void (-1), and a prediction: relabelled truth with reassigned points, noise (-1)."""
    k = int(rng.integers(1, 7))
    t = rng.integers(0, k, n) * 10 + 3
    t[rng.random(n) < rng.uniform(0, 0.4)] = -1
    relabel = rng.permutation(50)
    p = relabel[np.clip(t, 0, None) % 50]
    flip = rng.random(n) < rng.uniform(0, 0.6)
    p[flip] = rng.integers(-1, k + 3, int(flip.sum()))
    return t, p


def _assert_pq_equals(res, tp, fp, fn, iou_sum):
    assert (res.tp, res.fp, res.fn) == (tp, fp, fn)
    assert res.iou_sum == pytest.approx(iou_sum, rel=1e-12, abs=1e-12)
    want = PanopticQuality.from_counts(tp, fp, fn, iou_sum)
    np.testing.assert_allclose([res.pq, res.sq, res.rq], [want.pq, want.sq, want.rq], rtol=1e-12)


def test_pq_matches_brute_force_on_random_labelings():
    rng = np.random.default_rng(3)
    for trial in range(250):
        n = int(rng.integers(0, 50))
        t, p = _noisy_instances(rng, n)
        void = rng.random(n) < 0.1 if trial % 2 else None
        min_points = 1 if trial % 3 else int(rng.integers(1, 5))
        res = panoptic_quality(t, p, void=void, min_points=min_points)
        assert isinstance(res, PanopticQuality)
        _assert_pq_equals(res, *brute_force_pq(t, p, void, 0.5, min_points))
    for thr in (0.6, 0.75, 0.9):
        t, p = _noisy_instances(rng, 40)
        _assert_pq_equals(panoptic_quality(t, p, iou_threshold=thr), *brute_force_pq(t, p, None, thr))


# Hand-computed example (17 points):
#   true  A = {0,1,2,3}, B = {4,5,6,7}, C = {8,9}, D = {15,16}; void (id -1) = {10,...,14}
#   pred  P1 = {0,1,2,4}, P2 = {5,6,7,10,11}, P3 = {8}, P4 = {3,12}, P5 = {9,13,14}; 15, 16 unassigned (-1)
# P1-A: 3 / (4 + 4 - 3) = 0.6 -> TP.  P2-B: 3 / (5 + 4 - 3 - 2 void) = 0.75 -> TP (3 / 6 = 0.5 without the rule).
# P3-C: 1 / 2 = 0.5 and P5-C: 1 / (3 + 2 - 1 - 2) = 0.5: not matches (IoU must exceed 0.5) -> C is a FN, and so is D.
# P3 (no void) and P4 (1 void of 2 = 0.5, not more than half) are FP; P5 (2 of 3 void) is ignored.
# TP 2, FP 2, FN 2, IoU sum 1.35: PQ = 1.35 / (2 + 1 + 1) = 0.3375, SQ = 0.675, RQ = 0.5.
# min_points = 2: P3 and P4 have one non-void point each -> FP 0: PQ = 1.35 / 3 = 0.45, RQ = 2 / 3.
HAND_TRUE = np.array([10, 10, 10, 10, 20, 20, 20, 20, 30, 30, -1, -1, -1, -1, -1, 40, 40])
HAND_PRED = np.array([0, 0, 0, 3, 0, 1, 1, 1, 2, 4, 1, 1, 3, 4, 4, -1, -1])


def test_pq_hand_computed_example():
    res = panoptic_quality(HAND_TRUE, HAND_PRED)
    assert (res.tp, res.fp, res.fn) == (2, 2, 2)
    assert res.iou_sum == pytest.approx(1.35)
    assert (res.pq, res.sq, res.rq) == pytest.approx((0.3375, 0.675, 0.5))
    res = panoptic_quality(HAND_TRUE, HAND_PRED, min_points=2)
    assert (res.tp, res.fp, res.fn) == (2, 0, 2)
    assert (res.pq, res.sq, res.rq) == pytest.approx((0.45, 0.675, 2 / 3))
    assert brute_force_pq(HAND_TRUE, HAND_PRED) == (2, 2, 2, pytest.approx(1.35))


def test_pq_void_mask_equals_negative_ids():
    void = HAND_TRUE < 0
    relabelled = np.where(void, 99, HAND_TRUE)  # ids of void points are ignored
    assert panoptic_quality(relabelled, HAND_PRED, void=void) == panoptic_quality(HAND_TRUE, HAND_PRED)
    # Without void, 10..14 form a true segment E: P2-B becomes 3 / 6 = 0.5 (no match), P5-E = 2 / 6.
    res = panoptic_quality(relabelled, HAND_PRED)
    assert (res.tp, res.fp, res.fn) == (1, 4, 4)


def test_pq_iou_exactly_half_is_not_a_match():
    res = panoptic_quality([0, 0], [5, 6])  # each prediction has IoU 0.5 with the true pair
    assert (res.tp, res.fp, res.fn, res.pq) == (0, 2, 1, 0.0)
    res = panoptic_quality([0, 0, 0], [5, 5, 6])  # 2 / 3 > 0.5
    assert (res.tp, res.fp, res.fn) == (1, 1, 0)
    assert res.pq == pytest.approx((2 / 3) / 1.5)


def test_pq_void_only_prediction_and_empty():
    res = panoptic_quality([-1, -1, 0, 0], [1, 1, 2, 2])  # segment 1 is all void: no FP
    assert (res.tp, res.fp, res.fn, res.pq, res.sq, res.rq) == (1, 0, 0, 1.0, 1.0, 1.0)
    res = panoptic_quality([-1, -1, -1, 0], [1, 1, 0, 0])  # segment 1 all void, segment 0 half void: IoU 1
    assert (res.tp, res.fp, res.fn, res.pq) == (1, 0, 0, 1.0)
    empty = panoptic_quality([], [])
    assert (empty.tp, empty.fp, empty.fn) == (0, 0, 0) and np.isnan([empty.pq, empty.sq, empty.rq]).all()
    none = panoptic_quality([0, 0, 1], [-1, -1, -1])  # nothing predicted: two FN, SQ 0 by convention
    assert (none.tp, none.fp, none.fn, none.pq, none.sq, none.rq) == (0, 0, 2, 0.0, 0.0, 0.0)


def test_pq_perfect_prediction_with_permuted_ids():
    rng = np.random.default_rng(4)
    t = rng.integers(0, 6, 40)
    res = panoptic_quality(t, rng.permutation(6)[t] + 100)
    assert (res.pq, res.sq, res.rq, res.fp, res.fn) == (1.0, 1.0, 1.0, 0, 0)
    assert res.tp == len(np.unique(t))


# Accumulator and helpers ----------------------------------------------------------------------------------------


def test_accumulator_equals_pooled_computation():
    rng = np.random.default_rng(5)
    acc = InstanceAccumulator()
    pooled_t, pooled_p, pooled_void, aris = [], [], [], []
    for s in range(6):
        n = int(rng.integers(20, 60))
        t, p = _noisy_instances(rng, n)
        mask = rng.random(n) < 0.8
        void = rng.random(n) < 0.1
        if s == 3:
            mask[:] = False  # an empty sweep: counted, but not in the ARI mean
        per_sweep = acc.update(t, p, mask=mask, void=void)
        tm, pm, vm = t[mask], p[mask], void[mask] | (t[mask] < 0)
        # Offsets keep instances of different sweeps apart in the pooled labeling; -1 stays -1.
        pooled_t.append(np.where(tm >= 0, tm + 1000 * s, -1))
        pooled_p.append(np.where(pm >= 0, pm + 1000 * s, -1))
        pooled_void.append(vm)
        if (~vm).any():
            aris.append(adjusted_rand_score(tm[~vm], pm[~vm]))
            assert per_sweep["ARI"] == pytest.approx(aris[-1], rel=1e-12, abs=1e-15)
        else:
            assert np.isnan(per_sweep["ARI"])
        single = panoptic_quality(tm, pm, vm)
        assert (per_sweep["TP"], per_sweep["FP"], per_sweep["FN"]) == (single.tp, single.fp, single.fn)
    pooled = panoptic_quality(np.concatenate(pooled_t), np.concatenate(pooled_p), np.concatenate(pooled_void))
    res = acc.result()
    assert (res["TP"], res["FP"], res["FN"]) == (pooled.tp, pooled.fp, pooled.fn)
    for key, want in (("PQ", pooled.pq), ("SQ", pooled.sq), ("RQ", pooled.rq), ("IoU sum", pooled.iou_sum)):
        assert res[key] == pytest.approx(want, rel=1e-12)
    assert res["ARI"] == pytest.approx(np.mean(aris), rel=1e-12)
    assert (res["sweeps"], res["ARI sweeps"]) == (6, 5)
    assert res["points"] == sum(len(x) for x in pooled_t)
    assert res["void points"] == int(np.concatenate(pooled_void).sum())
    assert acc.compute() == res
    assert acc.panoptic()[3:6] == (pooled.tp, pooled.fp, pooled.fn)


def test_empty_accumulator():
    res = InstanceAccumulator().result()
    assert np.isnan(res["ARI"]) and np.isnan(res["PQ"])
    assert (res["sweeps"], res["points"], res["TP"]) == (0, 0, 0)


def test_instance_ids_from_masks():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(30, 5)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    ids = instance_ids_from_masks(logits)
    assert ids.dtype == np.int64 and ids.shape == (30,)
    np.testing.assert_array_equal(ids, np.argmax(logits, -1))
    np.testing.assert_array_equal(instance_ids_from_masks(probs), ids)
    assert instance_ids_from_masks(np.zeros((0, 3))).shape == (0,)
    import jax.numpy as jnp

    np.testing.assert_array_equal(instance_ids_from_masks(jnp.asarray(logits)), ids)


# Errors ---------------------------------------------------------------------------------------------------------


def test_shape_and_argument_errors():
    ids = np.zeros(4, np.int64)
    with pytest.raises(ValueError, match=r"true_ids .*shape \(2, 2\)"):
        adjusted_rand_index(ids.reshape(2, 2), ids)
    with pytest.raises(ValueError, match=r"pred_ids .*shape \(\)"):
        panoptic_quality(ids, np.int64(3))
    with pytest.raises(ValueError, match=r"same length.*\(4,\) and \(3,\)"):
        adjusted_rand_index(ids, ids[:3])
    with pytest.raises(ValueError, match=r"pred_ids .*float64"):
        panoptic_quality(ids, ids.astype(np.float64))
    with pytest.raises(ValueError, match=r"void .*\(4,\).*\(5,\)"):
        panoptic_quality(ids, ids, void=np.zeros(5, bool))
    with pytest.raises(ValueError, match=r"mask .*\(4,\).*\(4, 1\)"):
        InstanceAccumulator().update(ids, ids, mask=np.ones((4, 1), bool))
    with pytest.raises(ValueError, match="iou_threshold"):
        panoptic_quality(ids, ids, iou_threshold=0.4)
    with pytest.raises(ValueError, match="min_points"):
        panoptic_quality(ids, ids, min_points=0)
    with pytest.raises(ValueError, match=r"masks .*shape \(4,\)"):
        instance_ids_from_masks(np.zeros(4))
