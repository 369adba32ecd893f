"""Cost of preparing the real datasets: seconds and bytes per record, and what the full datasets therefore take.

    python benchmarks/bench_prepare.py [--shared ../shared/data] [--repeat 5]

Times, on the sample files, one nuScenes record as the builder makes it (``load_sample`` without decoding the
images, plus the JPEG files' bytes; the semantic-prior mask is decoded once per location: timed apart) and one
Argoverse 2 sweep pair through ``load_pair`` (the map loaded once per log: timed apart), prepares each with its
TFDS builder into a temporary data dir to measure the bytes per record, and scales both to the full datasets
(nuScenes v1.0-trainval: 34,149 keyframes; Argoverse 2 sensor train + val: 850 logs of about 156 sweeps, 155 pairs
each) for one process. Writing the records (zlib, array_record) is not in the time. ``--workers N`` of the
prepare command divides the time by about N on N free cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

NUSCENES_TRAINVAL_KEYFRAMES = 34_149
AV2_TRAINVAL_PAIRS = 850 * 155


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _record_bytes(data_path: Path) -> int:
    return sum(p.stat().length for p in data_path.glob("*.array_record-*"))  # epath stats


def _report(name: str, seconds: float, nbytes: float, count: int, what: str) -> None:
    print(
        f"{name}: {seconds:.3f} s and {nbytes / 2**20:.2f} MiB per record -> {what} ({count:,} records): "
        f"{seconds * count / 3600:.1f} h on one process, {nbytes * count / 2**30:.0f} GiB"
    )


def bench_nuscenes(root: Path, repeat: int) -> None:
    from bevjax.data.nuscenes import NuScenesTables
    from bevjax.data.nuscenes import builder as nb
    from bevjax.data.nuscenes.sample import map_mask
    from bevjax.data.nuscenes.source import find_version
    from bevjax.data.prepare import prepare_nuscenes

    tables = NuScenesTables(root, find_version(root))
    token = next(iter(tables.tables["sample"]))
    start = time.perf_counter()
    map_mask(tables.map_path(token))
    print(f"nuScenes semantic-prior mask decode (once per location): {time.perf_counter() - start:.2f} s")
    for cfg in (nb.KEYFRAMES, nb.SWEEPS10):
        seconds = _median_time(lambda cfg=cfg: nb._record(cfg, tables, (token, 0)), repeat)  # what a worker does
        with tempfile.TemporaryDirectory() as tmp:
            builder = prepare_nuscenes(str(root), tmp, cfg, progress=False)
            records = sum(s.num_examples for s in builder.info.splits.values())
            nbytes = _record_bytes(builder.data_path) / records
        note = " (the sample has no sweeps: LiDAR of one sweep, padding to 350,000)" if cfg.num_sweeps else ""
        _report(f"bevjax_nuscenes/{cfg.name}{note}", seconds, nbytes, NUSCENES_TRAINVAL_KEYFRAMES, "v1.0-trainval")


def bench_av2(log_dir: Path, repeat: int) -> None:
    from bevjax.data.av2 import AV2Log
    from bevjax.data.av2 import builder as ab
    from bevjax.data.av2.map import AV2Map
    from bevjax.data.av2.sample import load_pair
    from bevjax.data.prepare import prepare_av2

    log = AV2Log(log_dir)
    t0, t1 = log.lidar_timestamps()[:2]
    start = time.perf_counter()
    av2_map = AV2Map.load(log_dir)
    print(f"Argoverse 2 map load (once per log): {time.perf_counter() - start:.2f} s")
    cfg = ab.DEFAULT
    seconds = _median_time(lambda: load_pair(log, t0, t1, cfg.grid, cfg.num_points, av2_map), repeat)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "root").mkdir()
        (Path(tmp) / "root" / log_dir.parent.name).symlink_to(log_dir.parent)
        builder = prepare_av2(str(Path(tmp) / "root"), str(Path(tmp) / "data"), cfg, progress=False)
        records = sum(s.num_examples for s in builder.info.splits.values())
        nbytes = _record_bytes(builder.data_path) / records
    _report(f"bevjax_av2/{cfg.name}", seconds, nbytes, AV2_TRAINVAL_PAIRS, "sensor train + val")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    shared = Path(args.shared)
    bench_nuscenes(shared / "nuscenes", args.repeat)
    bench_av2(shared / "av2" / "sensor" / "val" / "7fab2350-7eaf-3b7e-a39d-6937a4c1bede", args.repeat)


if __name__ == "__main__":
    main()
