"""Threshold-swept IoU, uncertainty AUROC and calibration over several batches against brute-force NumPy (and
scikit-learn where installed); the reliability diagram's size and bars."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bevjax.metrics import (
    AUROCAccumulator,
    CalibrationAccumulator,
    ReliabilityBins,
    ThresholdIoUAccumulator,
    binned_auroc,
    error_histograms,
    expected_calibration_error,
    reliability_diagram_png,
    threshold_histograms,
)
from bevjax.metrics import uncertainty as U
from bevjax.viz import layout

CLASSES = ("a", "b", "c")


def batches(seed: int, n: int = 3, shape=(2, 9, 7, 3), grid: int | None = None):
    """n batches of (probs, targets, mask, per-class u, per-cell u): probs correlated with the targets, some
    exactly on the thresholds 0.05 .. 0.95; with ``grid``, uncertainties on the grid i / grid."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        targets = (rng.random(shape) < 0.35).astype(np.uint8)
        probs = np.clip(0.3 * targets + 0.7 * rng.random(shape), 0, 1).astype(np.float32)
        on_grid = rng.random(shape) < 0.1
        probs[on_grid] = rng.integers(1, 20, on_grid.sum()) * np.float32(0.05)
        mask = (rng.random(shape[:-1]) < 0.8).astype(np.uint8)
        wrong = (probs > 0.5) != (targets > 0)
        u = np.clip(0.35 * wrong + 0.65 * rng.random(shape), 0, 1).astype(np.float32)
        u_cell = np.clip(0.3 * wrong.any(-1) + 0.7 * rng.random(shape[:-1]), 0, 1).astype(np.float32)
        if grid:
            steps = (rng.integers(0, grid + 1, shape) + 3 * wrong).clip(0, grid)
            u = steps.astype(np.float32) / np.float32(grid)
            u_cell = rng.integers(0, grid + 1, shape[:-1]).astype(np.float32) / np.float32(grid)
        out.append((probs, targets, mask, u, u_cell))
    return out


def stacked(data):
    return [np.concatenate([d[i] for d in data]) for i in range(5)]


# IoU at every threshold --------------------------------------------------------------------------------------


def test_threshold_iou_counts_equal_brute_force_at_every_threshold():
    data = batches(0)
    acc = ThresholdIoUAccumulator(CLASSES, threshold=0.42)  # not on the grid: added to it
    assert len(acc.thresholds) == 20 and np.float32(0.42) in acc.thresholds
    for k, (probs, targets, mask, _, _) in enumerate(data):
        if k % 2:
            acc.add(probs, targets, mask)  # jitted
        else:
            acc.update(threshold_histograms(probs, targets, acc.thresholds, mask))
    probs, targets, mask, _, _ = stacked(data)
    valid, true = (mask > 0)[..., None], targets > 0
    want = np.zeros((3, len(acc.thresholds), 3), np.int64)
    for j, t in enumerate(acc.thresholds):  # float32 thresholds, p > t
        pred = probs > t
        want[:, j] = (
            np.stack([(pred & true & valid), (pred & ~true & valid), (~pred & true & valid)], 0)
            .sum(axis=(1, 2, 3))
            .T
        )
    np.testing.assert_array_equal(acc.counts(), want)
    iou = want[..., 0] / want.sum(-1)
    res = acc.result()
    j = acc.stated_index
    for c, name in enumerate(CLASSES):
        assert res[name] == pytest.approx(iou[c, j], rel=1e-12)
        assert res[f"{name}@best"] == pytest.approx(iou[c].max(), rel=1e-12)
        assert res[f"{name}@best_threshold"] == float(acc.thresholds[np.argmax(iou[c])])
    assert res["mIoU"] == pytest.approx(iou[:, j].mean())
    assert res["mIoU@best"] == pytest.approx(iou.max(-1).mean())
    assert "mean" in acc.table()
    # a per-class mask [..., k] works the same
    per_class = ThresholdIoUAccumulator(CLASSES, threshold=0.42)
    for probs, targets, mask, _, _ in data:
        per_class.add(probs, targets, np.repeat(mask[..., None], 3, -1))
    np.testing.assert_array_equal(per_class.hist, acc.hist)


def test_threshold_iou_undefined_class_is_nan():
    acc = ThresholdIoUAccumulator(("x", "empty"), thresholds=(0.3, 0.6))
    probs = np.array([[0.9, 0.1], [0.4, 0.0], [0.7, 0.2]], np.float32)
    targets = np.array([[1, 0], [1, 0], [0, 0]], np.uint8)
    acc.add(probs, targets)
    assert acc.thresholds.tolist() == pytest.approx([0.3, 0.5, 0.6])
    np.testing.assert_array_equal(acc.counts()[0], [[2, 1, 0], [1, 1, 1], [1, 1, 1]])
    res = acc.result()
    assert res["x"] == pytest.approx(1 / 3) and res["x@best"] == pytest.approx(2 / 3)
    assert res["x@best_threshold"] == pytest.approx(0.3)
    assert np.isnan(res["empty"]) and np.isnan(res["empty@best"]) and np.isnan(res["empty@best_threshold"])
    assert res["mIoU"] == pytest.approx(1 / 3)


# AUROC -------------------------------------------------------------------------------------------------------


def rank_auroc_fraction(scores, positive) -> tuple[int, int]:
    """(2U, 2 W R): the Mann-Whitney statistic with midranks for ties, O(n log n), exact integers."""
    scores, positive = np.asarray(scores, np.float64).ravel(), np.asarray(positive, bool).ravel()
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])  # 0-based first position of each distinct score
    twice_rank = (2 * start + counts + 1)[inverse]  # twice the 1-based midrank
    w, r = int(positive.sum()), int((~positive).sum())
    return int(twice_rank[positive].sum()) - w * (w + 1), 2 * w * r


def reference_auroc(scores, positive) -> float:
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError:
        num, den = rank_auroc_fraction(scores, positive)
        return num / den
    return float(roc_auc_score(np.ravel(positive), np.ravel(scores)))


def decisions(probs, targets, mask, u, per_class: bool):
    wrong = (probs > 0.5) != (targets > 0)
    valid = mask > 0
    if per_class:
        return [(u[..., c][valid], wrong[..., c][valid]) for c in range(probs.shape[-1])]
    return [(u[valid], wrong.any(-1)[valid])]


@pytest.mark.parametrize("per_class", [True, False])
def test_auroc_matches_reference_within_the_binning_bound(per_class):
    data = batches(1)
    acc = AUROCAccumulator(CLASSES if per_class else None)
    for probs, targets, mask, u, u_cell in data:
        acc.add(probs, targets, u if per_class else u_cell, mask)
    probs, targets, mask, u, u_cell = stacked(data)
    rows = decisions(probs, targets, mask, u if per_class else u_cell, per_class)
    auroc, bound = binned_auroc(acc.hist)
    for r, (scores, wrong) in enumerate(rows):
        assert acc.hist[r, 1].sum() == wrong.sum() and acc.hist[r, 0].sum() == (~wrong).sum()
        want = reference_auroc(scores, wrong)
        assert abs(auroc[r] - want) <= bound[r] + 1e-12
        assert 0 < bound[r] < 2e-3
        assert want > 0.6  # the data make wrong decisions more uncertain
    res = acc.result()
    pooled = reference_auroc(np.concatenate([s for s, _ in rows]), np.concatenate([w for _, w in rows]))
    assert abs(res["AUROC"] - pooled) <= res["AUROC_bin_error"] + 1e-12
    if per_class:
        assert res["AUROC/b"] == auroc[1] and res["mAUROC"] == pytest.approx(auroc.mean())
    assert "AUROC" in acc.table()


@pytest.mark.parametrize("per_class", [True, False])
def test_auroc_is_exact_on_the_bin_grid(per_class):
    bins = 21  # scores i / 20
    data = batches(2, grid=bins - 1)
    acc = AUROCAccumulator(CLASSES if per_class else None, bins=bins)
    for probs, targets, mask, u, u_cell in data:
        acc.update(error_histograms(probs, targets, u if per_class else u_cell, 0.5, mask, bins))
    probs, targets, mask, u, u_cell = stacked(data)
    rows = decisions(probs, targets, mask, u if per_class else u_cell, per_class)
    auroc, _ = binned_auroc(acc.hist)
    for r, (scores, wrong) in enumerate(rows):
        num, den = rank_auroc_fraction(scores, wrong)
        assert auroc[r] == num / den  # the same integers, one rounding


def test_auroc_without_wrong_decisions_is_nan_and_shapes_are_checked():
    probs = np.array([[0.9], [0.1]], np.float32)
    acc = AUROCAccumulator(["a"])
    acc.add(probs, np.array([[1], [0]]), np.array([[0.2], [0.7]], np.float32))
    assert np.isnan(acc.result()["AUROC"])
    with pytest.raises(ValueError, match="uncertainty of shape"):
        error_histograms(probs, probs, np.zeros((2, 1, 1)))


# Calibration -------------------------------------------------------------------------------------------------


def numpy_reliability(probs, targets, valid, bins: int = 15):
    """(count, accuracy, confidence, ECE) in float64 from float32 edges ``linspace(0, 1, bins + 1)``."""
    p = probs[valid]
    pred = p > 0.5
    conf = np.where(pred, p, np.float32(1) - p)
    correct = pred == (targets[valid] > 0)
    edges = np.linspace(0, 1, bins + 1).astype(np.float32)
    b = np.digitize(conf, edges[1:-1])  # e_b <= conf < e_{b+1}
    count = np.bincount(b, minlength=bins)
    with np.errstate(invalid="ignore"):
        acc = np.bincount(b, correct, minlength=bins) / count
        mean_conf = np.bincount(b, conf.astype(np.float64), minlength=bins) / count
    filled = count > 0
    ece = np.sum(count[filled] / count.sum() * np.abs(acc[filled] - mean_conf[filled]))
    return count, acc, mean_conf, ece


def test_ece_and_reliability_match_numpy_over_batches():
    data = batches(3)
    acc = CalibrationAccumulator(CLASSES)
    for k, (probs, targets, mask, _, _) in enumerate(data):
        if k % 2:
            acc.add(probs, targets, mask)
        else:
            acc.update(U.calibration_stats(probs, targets, mask, acc.bins))
    probs, targets, mask, _, _ = stacked(data)
    res = acc.result()
    for c, name in enumerate([*CLASSES, None]):
        if name is None:  # pooled over all (cell, class) decisions
            valid = np.broadcast_to((mask > 0)[..., None], probs.shape)
            count, accuracy, conf, ece = numpy_reliability(probs, targets, valid)
            key = "ECE"
        else:
            count, accuracy, conf, ece = numpy_reliability(probs[..., c], targets[..., c], mask > 0)
            key = f"ECE/{name}"
        rel = acc.reliability(name)
        np.testing.assert_array_equal(rel.count, count)
        np.testing.assert_array_equal(rel.accuracy, accuracy)  # NaN where empty, on both sides
        np.testing.assert_allclose(rel.confidence, conf, rtol=0, atol=1e-6)
        assert rel.ece == pytest.approx(ece, abs=1e-6) and res[key] == rel.ece
        assert np.all(rel.count[:7] == 0) and rel.count[7:].sum() > 0  # binary confidences are >= 0.5
    assert res["ECE"] > 0.01
    probs, targets, mask, _, _ = data[0]
    one = CalibrationAccumulator(CLASSES)
    one.add(probs, targets, mask)
    assert expected_calibration_error(probs, targets, mask) == pytest.approx(one.reliability().ece, abs=1e-12)
    assert "ECE" in acc.table()


def test_perfectly_calibrated_bin_has_zero_ece():
    probs = np.full((100, 1), 0.8, np.float32)  # confidence 0.8, right 80 times in 100
    targets = (np.arange(100) < 80).astype(np.uint8)[:, None]
    assert expected_calibration_error(probs, targets) == pytest.approx(0.0, abs=1e-6)
    assert expected_calibration_error(probs, 1 - targets) == pytest.approx(0.6, abs=1e-6)  # acc 0.2


def test_reliability_diagram_draws_bars_where_expected(tmp_path):
    m = 10
    count = np.zeros(m, np.int64)
    count[[7, 9]] = [300, 700]
    accuracy = np.full(m, np.nan)
    confidence = np.full(m, np.nan)
    accuracy[[7, 9]] = [0.5, 0.9]
    confidence[[7, 9]] = [0.75, 0.95]
    bins = ReliabilityBins("vehicle", np.linspace(0, 1, m + 1), count, accuracy, confidence, 0.1)
    panel = U.reliability_plot(bins)
    assert panel.dtype == np.uint8 and min(panel.shape[:2]) >= 400

    def pixel(x, y):
        col, row = U.plot_pixel(x, y)
        return tuple(int(v) for v in panel[row, col])

    assert pixel(0.75, 0.25) == U.BAR_COLOUR  # bin 7, below its accuracy 0.5
    assert pixel(0.95, 0.45) == U.BAR_COLOUR  # bin 9
    assert pixel(0.85, 0.25) == layout.BACKGROUND  # bin 8 is empty
    assert pixel(0.75, 0.85) == layout.BACKGROUND  # above bin 7's mean confidence 0.75
    gap = pixel(0.75, 0.65)  # between its accuracy and mean confidence: the gap, red over white
    assert gap not in (U.BAR_COLOUR, layout.BACKGROUND) and gap[0] > gap[2] + 40
    assert pixel(0.3, 0.3) == U.DIAGONAL_COLOUR or pixel(0.31, 0.31) == U.DIAGONAL_COLOUR

    path = tmp_path / "sub" / "reliability.png"
    image = reliability_diagram_png(bins, str(path))
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert image.shape[1] == panel.shape[1] + 2 * layout.MARGIN and image.shape[0] > panel.shape[0] + 40
    np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
    # the panel appears unchanged inside the picture (under the title band)
    rows = [r for r in range(image.shape[0] - panel.shape[0]) if np.array_equal(
        image[r, layout.MARGIN : layout.MARGIN + panel.shape[1]], panel[0])]  # fmt: skip
    assert any(
        np.array_equal(image[r : r + panel.shape[0], layout.MARGIN : layout.MARGIN + panel.shape[1]], panel)
        for r in rows
    )
