"""Per-class IoU over a whole split: ``TP / (TP + FP + FN)`` accumulated over every batch (not averaged per batch)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def confusion_counts(logits, targets, threshold: float = 0.0, mask=None) -> jnp.ndarray:
    """[k, 3] (TP, FP, FN) counts per class of multi-label predictions ``logits > threshold``.

    Args:
      logits, targets: [..., k] (targets 0/1).
      threshold: on the logits (LSS: 0, i.e. probability 0.5).
      mask: optional [...] (e.g. visibility): only these cells count.
    """
    pred = logits > threshold
    true = targets > 0
    valid = jnp.ones(pred.shape[:-1], bool) if mask is None else mask > 0
    valid = valid[..., None]
    axes = tuple(range(pred.ndim - 1))
    tp = jnp.sum(pred & true & valid, axis=axes)
    fp = jnp.sum(pred & ~true & valid, axis=axes)
    fn = jnp.sum(~pred & true & valid, axis=axes)
    return jnp.stack([tp, fp, fn], -1).astype(jnp.int32)  # per batch; the accumulator sums in int64


class IoUAccumulator:
    """Sums confusion counts over batches (in int64 on the host) and reports IoU per class."""

    def __init__(self, class_names):
        self.class_names = tuple(class_names)
        self.counts = np.zeros((len(self.class_names), 3), np.int64)

    def update(self, counts) -> None:
        self.counts += np.asarray(counts, np.int64).reshape(self.counts.shape)

    def result(self) -> dict:
        """``{class: IoU}`` plus ``mIoU``; a class with no prediction and no target gets NaN (left out of the mean)."""
        tp, fp, fn = self.counts.T
        denom = tp + fp + fn
        iou = np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)
        out = {name: float(v) for name, v in zip(self.class_names, iou, strict=True)}
        out["mIoU"] = float(np.nanmean(iou)) if np.any(denom > 0) else float("nan")
        return out

    def table(self) -> str:
        """The IoU table as text, one class a line."""
        res = self.result()
        lines = [f"{'class':<16s} {'IoU':>6s}   TP / FP / FN"]
        for name, (tp, fp, fn) in zip(self.class_names, self.counts, strict=True):
            lines.append(f"{name:<16s} {res[name]:6.3f}   {tp} / {fp} / {fn}")
        lines.append(f"{'mean':<16s} {res['mIoU']:6.3f}")
        return "\n".join(lines)
