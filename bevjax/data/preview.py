"""Pictures of real data: ``python -m bevjax.data.preview nuscenes|av2 ... --out PNG``.

Examples::

    python -m bevjax.data.preview nuscenes --dataroot /data/nuscenes --index 0 --out nuscenes.png
    python -m bevjax.data.preview av2 --log /data/av2/sensor/val/<log_id> --pair 0 --out av2.png

``nuscenes``: the keyframe's six cameras (shrunk to 400 pixels wide) above its BEV labels (map classes,
vehicles, pedestrians; dimmed where no camera sees) with the LiDAR sweep over them. ``av2``: the sweep pair's BEV
labels under the first sweep, and both sweeps with the object flow as arrows
(see :func:`bevjax.data.av2.preview.pair_picture`). Both with a colour legend.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from bevjax.cli import run_reporting_errors
from bevjax.geometry.grid import BEVGrid
from bevjax.schema import NUSCENES_CAMERAS
from bevjax.viz import camera_mosaic, figure, save_png, titled


def nuscenes_picture(dataroot: str, index: int = 0, grid: BEVGrid | None = None) -> np.ndarray:
    """[H, W, 3] uint8: the cameras of keyframe ``index`` (``sample.json`` order, shrunk to a readable size)
    above its BEV preview (4 pixels per cell), with a legend."""
    from bevjax.data.nuscenes.preview import TITLE, bev_legend_entries, bev_preview
    from bevjax.data.nuscenes.source import NuScenesSource

    grid = grid or BEVGrid()
    source = NuScenesSource(dataroot, grid)
    if not 0 <= index < len(source):
        raise IndexError(f"--index {index}: the dataroot {dataroot} has {len(source)} keyframes")
    example = source[index]
    cams = camera_mosaic(example["images"], names=list(NUSCENES_CAMERAS))
    bev = titled(bev_preview(example, grid, scale=4), TITLE)
    return figure([cams, bev], f"{source.name} keyframe {index}", [("BEV classes:", bev_legend_entries())])


def av2_picture(log_dir: str, pair: int = 0, grid: BEVGrid | None = None) -> np.ndarray:
    """[H, W, 3] uint8 picture of sweep pair ``pair`` (sweeps pair, pair + 1) of an Argoverse 2 log."""
    from bevjax.data.av2 import AV2Log
    from bevjax.data.av2.preview import pair_picture
    from bevjax.data.av2.sample import load_pair

    grid = grid or BEVGrid()
    log = AV2Log(log_dir)
    stamps = log.lidar_timestamps()
    if not 0 <= pair < len(stamps) - 1:
        raise IndexError(f"--pair {pair}: the log {log_dir} has {len(stamps)} sweeps, {len(stamps) - 1} pairs")
    title = f"Argoverse 2 log {log.log_dir.name}: sweeps {pair} and {pair + 1}"
    return pair_picture(load_pair(log, stamps[pair], stamps[pair + 1], grid), grid, title)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bevjax.data.preview", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="dataset", required=True)
    nusc = sub.add_parser("nuscenes", help="a keyframe of a nuScenes dataroot")
    nusc.add_argument("--dataroot", required=True)
    nusc.add_argument("--index", type=int, default=0)
    av2 = sub.add_parser("av2", help="a sweep pair of an Argoverse 2 sensor log")
    av2.add_argument("--log", required=True, help="the log folder, e.g. .../sensor/val/<log_id>")
    av2.add_argument("--pair", type=int, default=0)
    for p in (nusc, av2):
        p.add_argument("--out", required=True, help="PNG path")
        p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    return run_reporting_errors(_draw, args, debug=args.debug)


def _draw(args: argparse.Namespace) -> int:
    if args.dataset == "nuscenes":
        image = nuscenes_picture(args.dataroot, args.index)
    else:
        image = av2_picture(args.log, args.pair)
    print(f"wrote {save_png(image, args.out)} ({image.shape[1]}x{image.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
