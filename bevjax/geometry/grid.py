"""The BEV grid: bounds and resolution shared by labels, splatting and metrics.

Follows the lift-splat-shoot ``xbound / ybound / zbound`` convention: ``(min, max, step)`` per axis, cell
``i`` along x centred at ``min + (i + 0.5) * step``.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class BEVGrid:
    xbound: tuple[float, float, float] = (-50.0, 50.0, 0.5)
    ybound: tuple[float, float, float] = (-50.0, 50.0, 0.5)
    zbound: tuple[float, float, float] = (-10.0, 10.0, 20.0)

    def __post_init__(self):
        for name in ("xbound", "ybound", "zbound"):
            lo, hi, step = getattr(self, name)
            if not (hi > lo and step > 0):
                raise ValueError(f"BEVGrid.{name}={getattr(self, name)}: need max > min and step > 0")

    @staticmethod
    def _count(bound) -> int:
        return int(round((bound[1] - bound[0]) / bound[2]))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Number of cells (x, y, z)."""
        return self._count(self.xbound), self._count(self.ybound), self._count(self.zbound)

    @property
    def resolution(self) -> np.ndarray:
        return np.array([self.xbound[2], self.ybound[2], self.zbound[2]], np.float32)

    @property
    def lower(self) -> np.ndarray:
        return np.array([self.xbound[0], self.ybound[0], self.zbound[0]], np.float32)

    def cell_centers(self) -> np.ndarray:
        """[x, y, 2] ego-frame (x, y) of every cell centre."""
        nx, ny, _ = self.shape
        xs = self.xbound[0] + (np.arange(nx) + 0.5) * self.xbound[2]
        ys = self.ybound[0] + (np.arange(ny) + 0.5) * self.ybound[2]
        return np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).astype(np.float32)

    def cell_index(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Integer (i, j) cells of ego-frame points [..., >=2] and a mask of points inside the grid."""
        nx, ny, _ = self.shape
        i = np.floor((points[..., 0] - self.xbound[0]) / self.xbound[2]).astype(np.int64)
        j = np.floor((points[..., 1] - self.ybound[0]) / self.ybound[2]).astype(np.int64)
        inside = (i >= 0) & (i < nx) & (j >= 0) & (j < ny)
        return np.stack([i, j], -1), inside
