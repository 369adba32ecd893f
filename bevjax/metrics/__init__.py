"""Metrics: segmentation IoU (and, per method, more)."""

from bevjax.metrics.iou import IoUAccumulator, confusion_counts

__all__ = ["IoUAccumulator", "confusion_counts"]
