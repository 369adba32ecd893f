"""Argoverse 2 sensor-log reader (LiDAR sweeps, poses, cuboids, calibration, scene-flow labels)."""

from bevjax.data.av2.reader import AV2Log, read_columns, se3_from_columns

__all__ = ["AV2Log", "read_columns", "se3_from_columns"]
