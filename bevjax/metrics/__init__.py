"""Metrics: segmentation IoU (also swept over thresholds), uncertainty AUROC and calibration, Argoverse 2 scene flow."""

from bevjax.metrics.iou import IoUAccumulator, confusion_counts
from bevjax.metrics.scene_flow import BucketedEPEAccumulator, SceneFlowAccumulator, evaluate_pair
from bevjax.metrics.threshold_iou import ThresholdIoUAccumulator, threshold_histograms
from bevjax.metrics.uncertainty import (
    AUROCAccumulator,
    CalibrationAccumulator,
    ReliabilityBins,
    binned_auroc,
    calibration_stats,
    error_histograms,
    expected_calibration_error,
    reliability_diagram_png,
)

__all__ = [
    "BucketedEPEAccumulator",
    "IoUAccumulator",
    "SceneFlowAccumulator",
    "confusion_counts",
    "evaluate_pair",
    "ThresholdIoUAccumulator",
    "threshold_histograms",
    "AUROCAccumulator",
    "CalibrationAccumulator",
    "ReliabilityBins",
    "binned_auroc",
    "calibration_stats",
    "error_histograms",
    "expected_calibration_error",
    "reliability_diagram_png",
]
