"""A nuScenes dataroot as a random-access source of schema examples (for evaluation)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bevjax.data.nuscenes.sample import load_sample
from bevjax.data.nuscenes.tables import NuScenesTables
from bevjax.geometry.grid import BEVGrid
from bevjax.schema import NUSCENES_CAMERAS


def find_version(dataroot: str | Path) -> str:
    """The one version folder (``v1.0-*``) of a dataroot; a clear error when there is none or several."""
    root = Path(dataroot)
    if not root.is_dir():
        raise FileNotFoundError(f"nuScenes dataroot {root} does not exist")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("v1.0-"))
    if len(found) != 1:
        what = f"several ({', '.join(found)}): choose one" if found else "none"
        raise ValueError(f"nuScenes dataroot {root}: expected one v1.0-* version folder, found {what}")
    return found[0]


class NuScenesSource(Sequence):
    """Keyframes of a nuScenes dataroot in ``sample.json`` order, loaded on access (``len``, ``source[i]``).

    Images keep their stored size (an ``ImageAug`` transform brings them to the network's); labels are on
    ``grid``; ``cameras`` picks and orders the channels.
    """

    def __init__(
        self,
        dataroot: str | Path,
        grid: BEVGrid,
        version: str | None = None,
        cameras: tuple[str, ...] = NUSCENES_CAMERAS,
    ):
        self.tables = NuScenesTables(dataroot, version or find_version(dataroot))
        self.tokens = list(self.tables.tables["sample"])
        self.grid, self.cameras = grid, tuple(cameras)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> dict:
        return load_sample(self.tables, self.tokens[i], self.grid, cameras=self.cameras)

    @property
    def name(self) -> str:
        return f"nuscenes/{self.tables.version}"
