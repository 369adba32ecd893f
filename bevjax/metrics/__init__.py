"""Metrics: segmentation IoU, Argoverse 2 scene flow."""

from bevjax.metrics.iou import IoUAccumulator, confusion_counts
from bevjax.metrics.scene_flow import BucketedEPEAccumulator, SceneFlowAccumulator, evaluate_pair

__all__ = [
    "BucketedEPEAccumulator",
    "IoUAccumulator",
    "SceneFlowAccumulator",
    "confusion_counts",
    "evaluate_pair",
]
