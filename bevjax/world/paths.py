"""Polylines with arc length: road centrelines, lanes and agent routes (NumPy)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Path:
    """A polyline ``xy`` [m, 2] in the world frame with cumulative arc length ``s`` [m]."""

    xy: np.ndarray
    s: np.ndarray

    @staticmethod
    def from_points(xy) -> Path:
        xy = np.asarray(xy, np.float64)
        seg = np.linalg.norm(np.diff(xy, axis=0), axis=1)
        return Path(xy, np.concatenate([[0.0], np.cumsum(seg)]))

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def pose(self, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, yaw) at arc lengths ``s`` (clamped to the ends; yaw along the direction of travel)."""
        s = np.clip(np.asarray(s, np.float64), 0.0, self.length)
        x = np.interp(s, self.s, self.xy[:, 0])
        y = np.interp(s, self.s, self.xy[:, 1])
        seg = np.clip(np.searchsorted(self.s, s, side="right") - 1, 0, len(self.s) - 2)
        d = self.xy[seg + 1] - self.xy[seg]
        return x, y, np.arctan2(d[..., 1], d[..., 0])

    def offset(self, lateral: float) -> Path:
        """The parallel polyline ``lateral`` metres to the left (negative: right)."""
        return Path.from_points(self.xy + lateral * normals(self.xy))

    def reversed(self) -> Path:
        return Path.from_points(self.xy[::-1])

    def between(self, s0: float, s1: float, step: float = 0.5) -> Path:
        """The piece of the path from arc length s0 to s1 (resampled at ``step``)."""
        s = np.linspace(s0, s1, max(2, int(abs(s1 - s0) / step) + 1))
        x, y, _ = self.pose(s)
        return Path.from_points(np.stack([x, y], -1))


def normals(xy: np.ndarray) -> np.ndarray:
    """Unit left normals [m, 2] of a polyline (from central-difference tangents)."""
    t = np.gradient(xy, axis=0)
    t /= np.linalg.norm(t, axis=1, keepdims=True) + 1e-12
    return np.stack([-t[:, 1], t[:, 0]], -1)


def centreline(pieces, start_xy=(0.0, 0.0), start_yaw=0.0, step=0.5) -> Path:
    """Chains pieces ``('straight', length)`` and ``('arc', radius, angle)`` (angle > 0 turns left)."""
    pts = [np.array(start_xy, np.float64)]
    yaw = start_yaw
    for piece in pieces:
        if piece[0] == "straight":
            n = max(1, int(piece[1] / step))
            d = np.array([np.cos(yaw), np.sin(yaw)]) * piece[1] / n
            base = pts[-1].copy()
            pts.extend([base + d * k for k in range(1, n + 1)])
        else:
            _, radius, angle = piece
            n = max(2, int(abs(radius * angle) / step))
            centre = pts[-1] + radius * np.sign(angle) * np.array([-np.sin(yaw), np.cos(yaw)])
            start = pts[-1].copy()
            for k in range(1, n + 1):
                a = angle * k / n
                rel = start - centre
                c, s = np.cos(a), np.sin(a)
                pts.append(centre + np.array([c * rel[0] - s * rel[1], s * rel[0] + c * rel[1]]))
            yaw += angle
    return Path.from_points(np.array(pts))
