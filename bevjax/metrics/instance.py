"""Instance-segmentation metrics of LiDAR points (SemanticFlow), in NumPy: adjusted Rand index and panoptic quality.

Both compare the instance ids of the evaluated points of one sweep (usually its foreground points) with the true
instance ids; ids are arbitrary integers, only the partition of the points they induce matters.

- Adjusted Rand index (ARI; Hubert & Arabie 1985): the Rand index (the fraction of point pairs on which the two
  partitions agree, "same instance" or "different instances") corrected for chance,
  ``(RI - E[RI]) / (max RI - E[RI])``, from the contingency table ``n_ij`` (points of true instance i and predicted
  instance j) with row sums ``a_i`` and column sums ``b_j``:
  ``ARI = (sum_ij C(n_ij, 2) - s_a s_b / C(n, 2)) / ((s_a + s_b) / 2 - s_a s_b / C(n, 2))``,
  ``s_a = sum_i C(a_i, 2)``, ``s_b = sum_j C(b_j, 2)``. 1 for identical partitions (up to relabelling), about 0
  for independent ones, -0.5 at worst. Degenerate cases as in ``sklearn.metrics.adjusted_rand_score``: when no pair
  of points is split by one partition and joined by the other (fewer than 2 points, both partitions one instance,
  or both one instance per point) the score is 1.0; a single instance against one instance per point scores 0.0.
- Panoptic quality (PQ; Kirillov et al. 2019, class-agnostic "things" only): a predicted segment and a true segment
  match when their IoU exceeds 0.5, which makes matches unique; TP are the matched pairs, FN the unmatched true
  segments, FP the unmatched predicted ones, and ``PQ = sum_TP IoU / (TP + FP / 2 + FN / 2) = SQ * RQ`` with
  ``SQ = sum_TP IoU / TP`` and ``RQ = TP / (TP + FP / 2 + FN / 2)``.
  Void rule (COCO panoptic ``pq_compute``): void points (true id < 0, or flagged by a ``void`` mask) belong to no
  true segment; they are removed from the union of a pair, ``union = |pred| + |true| - |pred & true| -
  |pred & void|``, and an unmatched predicted segment more than half of whose points are void is not a FP.
  Predicted ids < 0 (e.g. DBSCAN noise) mark points in no predicted segment.
  ``min_points`` (SemanticKITTI panoptic evaluation): an unmatched segment with fewer than ``min_points`` non-void
  points is not counted as FN / FP (it may still match); the default 1 ignores nothing.
  Over a split, TP, FP, FN and the IoU sum are added over all sweeps before the ratios are taken (dataset-level
  PQ). Undefined ratios: all NaN without any segment (TP = FP = FN = 0); SQ = 0 when TP = 0 but FP or FN > 0
  (as in COCO and SemanticKITTI, so that PQ = SQ * RQ = 0).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

PQ_IOU_THRESHOLD = 0.5  # IoU above which two segments match; >= 0.5 keeps matches unique
VOID_FRACTION = 0.5  # an unmatched predicted segment with more than this fraction of void points is not a FP


def _ids(x, name: str) -> np.ndarray:
    """[n] int64 ids; ValueError naming ``name`` unless ``x`` is a 1-D integer array (an empty one of any dtype)."""
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of instance ids, got shape {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer instance ids, got dtype {a.dtype} (shape {a.shape})")
    return a.astype(np.int64, copy=False)


def _mask(x, name: str, n: int) -> np.ndarray:
    """[n] bool; ValueError naming ``name`` unless ``x`` has shape [n]."""
    a = np.asarray(x)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) like the ids, got shape {a.shape}")
    return a.astype(bool, copy=False)


def _id_pair(true_ids, pred_ids) -> tuple[np.ndarray, np.ndarray]:
    t, p = _ids(true_ids, "true_ids"), _ids(pred_ids, "pred_ids")
    if t.shape != p.shape:
        raise ValueError(
            f"true_ids and pred_ids must have the same length, got shapes {t.shape} and {p.shape}"
        )
    return t, p


def _dense(ids: np.ndarray) -> tuple[np.ndarray, int]:
    """(indices [n] in [0, k), k): ids relabelled 0 .. k - 1 in sorted order."""
    unique, inverse = np.unique(ids, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64, copy=False), len(unique)


def _pair_table(
    rows: np.ndarray, cols: np.ndarray, num_cols: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-zero cells of the contingency table of two dense labelings: (row [c], col [c], count [c])."""
    cells, counts = np.unique(rows * num_cols + cols, return_counts=True)
    return cells // num_cols, cells % num_cols, counts.astype(np.int64)


def adjusted_rand_index(true_ids, pred_ids) -> float:
    """Adjusted Rand index of two labelings of the same points (see the module docstring); float64.

    Equal to ``sklearn.metrics.adjusted_rand_score(true_ids, pred_ids)``, degenerate cases included; symmetric.

    Args:
      true_ids, pred_ids: [n] integer ids (any values, negative ones included, each value one cluster).
    """
    t, p = _id_pair(true_ids, pred_ids)
    n = t.size
    rows, num_rows = _dense(t)
    cols, num_cols = _dense(p)
    _, _, cells = _pair_table(rows, cols, max(num_cols, 1))
    a = np.bincount(rows, minlength=num_rows)  # true cluster sizes
    b = np.bincount(cols, minlength=num_cols)  # predicted cluster sizes
    # Ordered point pairs (i != j), as in sklearn's pair_confusion_matrix; Python ints cannot overflow.
    joined_both = int(np.sum(cells * cells))
    tp = joined_both - n  # same instance in both
    fp = int(np.sum(b * b)) - joined_both  # split in the truth, joined in the prediction
    fn = int(np.sum(a * a)) - joined_both  # joined in the truth, split in the prediction
    tn = n * n - fp - fn - joined_both  # split in both
    if fp == 0 and fn == 0:  # no disagreement: n < 2, or identical partitions (up to relabelling)
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


class PanopticQuality(NamedTuple):
    """Panoptic quality with its counts; ``iou_sum`` is the sum of the IoU of the matched (TP) pairs."""

    pq: float
    sq: float
    rq: float
    tp: int
    fp: int
    fn: int
    iou_sum: float

    @classmethod
    def from_counts(cls, tp: int, fp: int, fn: int, iou_sum: float) -> PanopticQuality:
        """PQ, SQ, RQ of summed counts: all NaN when ``tp + fp + fn == 0``, SQ = 0 when only TP is 0."""
        tp, fp, fn, iou_sum = int(tp), int(fp), int(fn), float(iou_sum)
        denom = tp + 0.5 * fp + 0.5 * fn
        if denom == 0:
            nan = float("nan")
            return cls(nan, nan, nan, tp, fp, fn, iou_sum)
        sq = iou_sum / tp if tp > 0 else 0.0
        return cls(iou_sum / denom, sq, tp / denom, tp, fp, fn, iou_sum)


def panoptic_quality(
    true_ids, pred_ids, void=None, iou_threshold: float = PQ_IOU_THRESHOLD, min_points: int = 1
) -> PanopticQuality:
    """Class-agnostic panoptic quality of predicted instances against true ones (see the module docstring).

    Args:
      true_ids: [n] int true instance id per point; ids < 0 are void (unlabelled).
      pred_ids: [n] int predicted instance id per point; ids < 0 put a point in no predicted segment.
      void: optional [n] bool, further void points (their true ids are ignored).
      iou_threshold: a pair matches when IoU > iou_threshold (strictly); must be >= 0.5 for unique matches.
      min_points: unmatched segments with fewer non-void points are not counted as FN / FP.

    Returns:
      ``PanopticQuality(pq, sq, rq, tp, fp, fn, iou_sum)``.
    """
    t, p = _id_pair(true_ids, pred_ids)
    if not iou_threshold >= 0.5:
        raise ValueError(f"iou_threshold must be >= 0.5 for matches to be unique, got {iou_threshold}")
    if int(min_points) != min_points or min_points < 1:
        raise ValueError(f"min_points must be an integer >= 1, got {min_points}")
    is_void = t < 0
    if void is not None:
        is_void |= _mask(void, "void", t.size)

    gt_index, num_gt = _dense(t[~is_void])
    gt_area = np.bincount(gt_index, minlength=num_gt)  # true segments: non-void points only
    in_pred = p >= 0
    pred_index, num_pred = _dense(p[in_pred])
    pred_void = np.bincount(pred_index[is_void[in_pred]], minlength=num_pred)  # |pred & void|
    pred_area = np.bincount(pred_index, minlength=num_pred)  # all points of the segment, void included
    pred_labelled = pred_area - pred_void

    # Dense indices of the points that are both labelled and predicted, for the contingency table.
    gt_of_point = np.full(t.size, -1, np.int64)
    gt_of_point[~is_void] = gt_index
    pred_of_point = np.full(t.size, -1, np.int64)
    pred_of_point[in_pred] = pred_index
    both = ~is_void & in_pred
    g, q, inter = _pair_table(gt_of_point[both], pred_of_point[both], max(num_pred, 1))
    union = gt_area[g] + pred_labelled[q] - inter  # = |pred| + |true| - |pred & true| - |pred & void|
    iou = inter / union
    match = iou > iou_threshold
    matched_gt = np.zeros(num_gt, bool)
    matched_gt[g[match]] = True
    matched_pred = np.zeros(num_pred, bool)
    matched_pred[q[match]] = True

    fn = np.sum(~matched_gt & (gt_area >= min_points))
    mostly_void = 2 * pred_void > pred_area  # |pred & void| / |pred| > VOID_FRACTION
    fp = np.sum(~matched_pred & ~mostly_void & (pred_labelled >= min_points))
    return PanopticQuality.from_counts(np.sum(match), fp, fn, np.sum(iou[match]))


def instance_ids_from_masks(masks) -> np.ndarray:
    """[n] int64 hard instance ids: the argmax over slots of soft instance masks.

    Args:
      masks: [n, S] per-point scores of S instance slots, probabilities or logits (argmax is the same); a JAX
        array is brought to the host. Ties go to the lowest slot.
    """
    m = np.asarray(masks)
    if m.ndim != 2 or m.shape[1] == 0:
        raise ValueError(f"masks must have shape [n, S] with S >= 1 slots, got shape {m.shape}")
    return np.argmax(m, axis=1).astype(np.int64)


class InstanceAccumulator:
    """Instance metrics over a split, one sweep per ``update``: mean ARI over sweeps, dataset-level PQ.

    ``ARI`` is the unweighted mean of the per-sweep ARI over the sweeps with at least one labelled (non-void)
    evaluated point; PQ / SQ / RQ come from TP, FP, FN and the IoU sum added over every sweep.
    """

    def __init__(self, iou_threshold: float = PQ_IOU_THRESHOLD, min_points: int = 1):
        self.iou_threshold = float(iou_threshold)
        self.min_points = int(min_points)
        self.ari_sum = 0.0
        self.ari_sweeps = 0
        self.sweeps = 0
        self.points = 0  # evaluated points
        self.void_points = 0  # of which void
        self.tp = self.fp = self.fn = 0
        self.iou_sum = 0.0

    def update(self, true_ids, pred_ids, mask=None, void=None) -> dict[str, float]:
        """Adds one sweep; returns its own ``{ARI, PQ, SQ, RQ, TP, FP, FN}``.

        Args:
          true_ids: [n] int true instance ids; ids < 0 are void.
          pred_ids: [n] int predicted instance ids (e.g. ``instance_ids_from_masks``); ids < 0 are in no segment.
          mask: optional [n] bool, the evaluated points (e.g. the foreground); the others are dropped first.
          void: optional [n] bool, evaluated points without a true instance (see ``panoptic_quality``); void points
            are left out of the ARI.
        """
        t, p = _id_pair(true_ids, pred_ids)
        keep = np.ones(t.size, bool) if mask is None else _mask(mask, "mask", t.size)
        is_void = np.zeros(t.size, bool) if void is None else _mask(void, "void", t.size)
        t, p, is_void = t[keep], p[keep], is_void[keep] | (t[keep] < 0)
        pq = panoptic_quality(t, p, is_void, self.iou_threshold, self.min_points)
        labelled = ~is_void
        ari = adjusted_rand_index(t[labelled], p[labelled]) if labelled.any() else float("nan")
        if labelled.any():
            self.ari_sum += ari
            self.ari_sweeps += 1
        self.sweeps += 1
        self.points += int(t.size)
        self.void_points += int(is_void.sum())
        self.tp, self.fp, self.fn = self.tp + pq.tp, self.fp + pq.fp, self.fn + pq.fn
        self.iou_sum += pq.iou_sum
        return {"ARI": ari, "PQ": pq.pq, "SQ": pq.sq, "RQ": pq.rq, "TP": pq.tp, "FP": pq.fp, "FN": pq.fn}

    def panoptic(self) -> PanopticQuality:
        """Dataset-level PQ of every sweep so far."""
        return PanopticQuality.from_counts(self.tp, self.fp, self.fn, self.iou_sum)

    def result(self) -> dict[str, float]:
        """``{ARI, PQ, SQ, RQ, TP, FP, FN, IoU sum, sweeps, ARI sweeps, points, void points}``; ARI is NaN without
        any labelled point."""
        pq = self.panoptic()
        ari = self.ari_sum / self.ari_sweeps if self.ari_sweeps else float("nan")
        return {
            "ARI": ari,
            "PQ": pq.pq,
            "SQ": pq.sq,
            "RQ": pq.rq,
            "TP": pq.tp,
            "FP": pq.fp,
            "FN": pq.fn,
            "IoU sum": pq.iou_sum,
            "sweeps": self.sweeps,
            "ARI sweeps": self.ari_sweeps,
            "points": self.points,
            "void points": self.void_points,
        }

    compute = result
