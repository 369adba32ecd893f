"""Per-class IoU over a whole split at every threshold of a fixed grid, from histograms of the predicted
probabilities: at the stated threshold and at the best threshold per class (as BEVFusion reports).

Dimension letters: b batch, x y BEV grid, k classes, t thresholds.

For thresholds ``t_0 < t_1 < ... < t_{T-1}`` (float32) a batch is summarised by the histogram

    ``hist[c, l, j] = #{valid cells of class c with label l (0 or 1) and t_{j-1} < p <= t_j}``,  j = 0 .. T

(``t_{-1} = -inf``, ``t_T = +inf``), i.e. ``j`` is the number of thresholds the probability exceeds. A cell is
predicted positive at ``t_j`` when ``p > t_j`` (the convention of :func:`bevjax.metrics.iou.confusion_counts`),
so that, exactly, with the histograms summed over the split,

    ``TP_j = sum_{i > j} hist[c, 1, i]``,  ``FP_j = sum_{i > j} hist[c, 0, i]``,  ``FN_j = sum_{i <= j} hist[c, 1, i]``,

    ``IoU_j = TP_j / (TP_j + FP_j + FN_j)``   (NaN where the denominator is 0, left out of the means).

The per-batch histograms (:func:`threshold_histograms`) are jittable with static shapes; the accumulator sums
them in int64 on the host, like :class:`bevjax.metrics.iou.IoUAccumulator`. Probabilities are compared in
float32 with the float32 thresholds of ``ThresholdIoUAccumulator.thresholds``.

The best threshold of a class is chosen on the evaluated split itself (the lowest threshold of maximal IoU), so
``IoU@best`` is an optimistic (oracle) figure; BEVFusion sweeps ``BEVFUSION_THRESHOLDS`` this way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# 0.05, 0.10, ..., 0.95
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
# BEVFusion's map segmentation evaluation (mmdet3d BEVFusion, ``BEVFusion.evaluate_map``).
BEVFUSION_THRESHOLDS: tuple[float, ...] = (0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65)


def threshold_grid(thresholds=DEFAULT_THRESHOLDS, threshold: float | None = None) -> np.ndarray:
    """[t] float32: the sorted distinct ``thresholds``, with ``threshold`` added when it is not among them."""
    values = [float(v) for v in thresholds] + ([] if threshold is None else [float(threshold)])
    grid = np.unique(np.asarray(values, np.float32))
    if grid.size == 0 or not np.all(np.isfinite(grid)):
        raise ValueError(f"thresholds must be finite and not empty, got {values}")
    return grid


def threshold_histograms(probs, targets, thresholds, mask=None) -> jnp.ndarray:
    """[k, 2, t + 1] int32 histogram of one batch: ``hist[c, l, j]`` counts the valid cells of class ``c`` with
    label ``l`` whose probability exceeds exactly ``j`` thresholds (``t_{j-1} < p <= t_j``).

    Args:
      probs: [..., k] predicted probabilities (compared in float32), e.g. [b, x, y, k].
      targets: [..., k] labels (> 0 is positive).
      thresholds: [t] increasing (float32, e.g. :func:`threshold_grid`); may be traced.
      mask: optional [...] (e.g. ``bev_visibility``) or [..., k]: only cells with ``mask > 0`` count.
    """
    probs = jnp.asarray(probs, jnp.float32)
    thresholds = jnp.asarray(thresholds, jnp.float32)
    k, t = probs.shape[-1], thresholds.shape[0]
    above = jnp.searchsorted(thresholds, probs, side="left")  # ... k: #{j: t_j < p}
    label = (jnp.asarray(targets) > 0).astype(jnp.int32)  # ... k
    index = (jnp.arange(k) * 2 + label) * (t + 1) + above  # ... k
    size = k * 2 * (t + 1)
    if mask is not None:
        valid = jnp.asarray(mask) > 0
        valid = valid if valid.ndim == probs.ndim else valid[..., None]
        index = jnp.where(jnp.broadcast_to(valid, index.shape), index, size)  # invalid cells: a dropped slot
    hist = jnp.zeros(size + 1, jnp.int32).at[index.reshape(-1)].add(1)[:size]
    return hist.reshape(k, 2, t + 1)  # per batch; the accumulator sums in int64


_threshold_histograms_jit = jax.jit(threshold_histograms)


def sweep_counts(hist) -> np.ndarray:
    """[k, t, 3] int64 (TP, FP, FN) at every threshold, from histograms [k, 2, t + 1] (see the module doc)."""
    hist = np.asarray(hist, np.int64)
    tail = np.cumsum(hist[..., ::-1], -1)[..., ::-1]  # k 2 t+1: tail[..., i] = sum_{i' >= i}
    tp = tail[:, 1, 1:]  # k t: positives with p > t_j
    fp = tail[:, 0, 1:]
    fn = hist[:, 1].sum(-1, keepdims=True) - tp
    return np.stack([tp, fp, fn], -1)


class ThresholdIoUAccumulator:
    """Sums threshold histograms over batches (int64, host) and reports IoU per class at the stated threshold
    and at each class's best threshold of the grid.

    Usage: ``acc.update(threshold_histograms(probs, targets, acc.thresholds, mask))`` per batch (inside your own
    jitted step, or ``acc.add(probs, targets, mask)``), then ``acc.result()``.

    Args:
      class_names: the k classes, in the order of the last axis.
      threshold: the stated threshold on the probability (cells with ``p > threshold`` are positive).
      thresholds: the grid swept for the best threshold; ``threshold`` is added to it when missing.
    """

    def __init__(self, class_names, threshold: float = 0.5, thresholds=DEFAULT_THRESHOLDS):
        self.class_names = tuple(class_names)
        self.thresholds = threshold_grid(thresholds, threshold)  # t, float32
        self.threshold = float(np.float32(threshold))
        self.stated_index = int(np.flatnonzero(self.thresholds == np.float32(threshold))[0])
        self.hist = np.zeros((len(self.class_names), 2, len(self.thresholds) + 1), np.int64)

    def update(self, hist) -> None:
        """Adds one batch's histograms [k, 2, t + 1] (from :func:`threshold_histograms` with ``self.thresholds``)."""
        hist = np.asarray(hist, np.int64)
        if hist.shape != self.hist.shape:
            raise ValueError(
                f"histograms of shape {hist.shape}, expected {self.hist.shape} (k, 2, thresholds + 1)"
            )
        self.hist += hist

    def add(self, probs, targets, mask=None) -> None:
        """Computes (jitted) and adds the histograms of one batch of probabilities [..., k]."""
        self.update(_threshold_histograms_jit(probs, targets, self.thresholds, mask))

    def counts(self) -> np.ndarray:
        """[k, t, 3] int64 (TP, FP, FN) at every threshold of ``self.thresholds``."""
        return sweep_counts(self.hist)

    def iou(self) -> np.ndarray:
        """[k, t] float64 IoU at every threshold; NaN where a class has no prediction and no target."""
        tp, fp, fn = np.moveaxis(self.counts(), -1, 0)
        denom = tp + fp + fn
        return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)

    def best(self) -> tuple[np.ndarray, np.ndarray]:
        """([k] best IoU, [k] its threshold): the lowest threshold of maximal IoU per class (NaN, NaN for a class
        whose IoU is undefined at every threshold)."""
        iou = self.iou()
        defined = ~np.all(np.isnan(iou), -1)
        j = np.argmax(np.where(np.isnan(iou), -np.inf, iou), -1)
        best = np.where(defined, np.take_along_axis(iou, j[:, None], -1)[:, 0], np.nan)
        where = np.where(defined, self.thresholds[j].astype(np.float64), np.nan)
        return best, where

    def result(self) -> dict[str, float]:
        """``{class: IoU at the stated threshold}`` and ``mIoU`` (the keys of ``IoUAccumulator.result``), plus
        ``{class}@best``, ``{class}@best_threshold`` and ``mIoU@best``; means skip NaN classes."""
        iou = self.iou()
        stated = iou[:, self.stated_index]
        best, where = self.best()
        out = {name: float(v) for name, v in zip(self.class_names, stated, strict=True)}
        out["mIoU"] = _nanmean(stated)
        for name, b, w in zip(self.class_names, best, where, strict=True):
            out[f"{name}@best"] = float(b)
            out[f"{name}@best_threshold"] = float(w)
        out["mIoU@best"] = _nanmean(best)
        return out

    def table(self) -> str:
        """The table as text, one class a line: IoU at the stated threshold, best IoU and its threshold."""
        res = self.result()
        tp, fp, fn = np.moveaxis(self.counts()[:, self.stated_index], -1, 0)
        lines = [
            f"{'class':<16s} {'IoU@' + format(self.threshold, 'g'):>8s} {'best':>6s} {'at':>5s}   TP / FP / FN"
        ]
        for k, name in enumerate(self.class_names):
            lines.append(
                f"{name:<16s} {res[name]:8.3f} {res[name + '@best']:6.3f} {res[name + '@best_threshold']:5.2f}"
                f"   {tp[k]} / {fp[k]} / {fn[k]}"
            )
        lines.append(f"{'mean':<16s} {res['mIoU']:8.3f} {res['mIoU@best']:6.3f}")
        return "\n".join(lines)


def _nanmean(values) -> float:
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")
