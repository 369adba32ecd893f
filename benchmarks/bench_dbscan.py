"""Speed of ``bevjax.ops.dbscan`` against scikit-learn's DBSCAN on LiDAR-like point sets.

    python benchmarks/bench_dbscan.py [--source both|av2|synthetic] [--sizes 10000,50000,100000]
                                      [--eps 0.7] [--min-samples 20] [--repeat 3]

For each source and size prints our time (best of ``--repeat``), scikit-learn's
(``DBSCAN(eps, min_samples, metric='euclidean', algorithm='auto')``, best of ``--sk-repeat``), their ratio,
the number of clusters and noise points, and whether the labels are identical (exactly, not up to
relabelling). Without scikit-learn installed it says so and times ours only.

Sources:

- ``av2``: the two LiDAR sweeps of the Argoverse 2 sample log in ``../shared/data/av2`` (the second moved into
  the first's ego frame), 198k points with ground, subsampled at random to each size: 100k points is about
  one sweep's density. Skipped when the log is absent.
- ``synthetic``: 70 % of the points on the surfaces of car-sized boxes (4.5 x 1.9 x 1.5 m, one per 700
  points, density falling with range as a spinning LiDAR's does), 30 % scattered over 100 x 100 x 3 m.

Measured on 2 shared CPU cores (another job running: figures vary by 10-20 % between runs), scikit-learn
1.9.1 (KD-tree), NumPy 2.4, ``python benchmarks/bench_dbscan.py --repeat 5 --sk-repeat 2``::

    eps 0.7 m, min_samples 20
    source      n         ours s   sklearn s   ratio  clusters   noise  equal
    av2         10000      0.013       0.035    0.36        34    6319  True
    av2         50000      0.069       0.326    0.21       128   10335  True
    av2         100000     0.168       0.895    0.19       177   11831  True
    synthetic   10000      0.017       0.047    0.36        13    3168  True
    synthetic   50000      0.081       0.263    0.31        65   14807  True
    synthetic   100000     0.172       0.627    0.27       111   27178  True
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bevjax.ops.dbscan import NOISE, dbscan

AV2_LOG = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "av2" / "sensor" / "val"
AV2_LOG = AV2_LOG / "7fab2350-7eaf-3b7e-a39d-6937a4c1bede"
CAR_SIZE = np.array([4.5, 1.9, 1.5])  # metres
POINTS_PER_CAR = 700


def av2_pool() -> np.ndarray | None:
    """[198k, 3] float32 points of both sample sweeps in the first sweep's ego frame, or None without the log."""
    if not AV2_LOG.is_dir():
        return None
    from bevjax.data.av2 import AV2Log
    from bevjax.geometry.transforms import invert_rigid, transform_points

    log = AV2Log(AV2_LOG)
    t0, t1 = log.lidar_timestamps()[:2]
    p0 = log.load_sweep(t0)["lidar_points"]
    p1 = log.load_sweep(t1)["lidar_points"]
    ego0_from_ego1 = invert_rigid(log.load_ego_motion())  # ego_motion is ego1_SE3_ego0
    return np.concatenate([p0, transform_points(ego0_from_ego1, p1).astype(np.float32)])


def synthetic(n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 3] float32: car surfaces (more points on nearer cars) and scattered background, shuffled."""
    n_car_points = int(0.7 * n)
    n_cars = max(1, n_car_points // POINTS_PER_CAR)
    centres = np.concatenate(
        [rng.uniform(-50, 50, (n_cars, 2)), np.full((n_cars, 1), 0.75)], -1
    )  # cars on the ground, within 50 m
    weight = 1.0 / np.maximum(np.linalg.norm(centres[:, :2], axis=1), 5.0)  # LiDAR density falls with range
    car = rng.choice(n_cars, n_car_points, p=weight / weight.sum())  # n_car_points
    local = rng.uniform(-0.5, 0.5, (n_car_points, 3))
    face = rng.integers(0, 3, n_car_points)  # snap one coordinate to a face: points on the surface
    local[np.arange(n_car_points), face] = np.sign(local[np.arange(n_car_points), face]) * 0.5
    cars = centres[car] + local * CAR_SIZE
    background = rng.uniform([-50, -50, 0], [50, 50, 3], (n - n_car_points, 3))
    points = np.concatenate([cars, background])
    return points[rng.permutation(n)].astype(np.float32)


def best_time(repeat: int, fn, *args):
    """(best wall time of ``repeat`` calls of ``fn(*args)``, its last result)."""
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", choices=("both", "av2", "synthetic"), default="both")
    parser.add_argument("--sizes", default="10000,50000,100000")
    parser.add_argument("--eps", type=float, default=0.7)
    parser.add_argument("--min-samples", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="runs of ours, best taken")
    parser.add_argument("--sk-repeat", type=int, default=1, help="runs of scikit-learn, best taken")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    try:
        from sklearn.cluster import DBSCAN
    except ImportError:
        DBSCAN = None
        print("scikit-learn is not installed (pip install -e '.[test]'): timing bevjax's DBSCAN only")

    rng = np.random.default_rng(0)
    sources = []
    if args.source in ("both", "av2"):
        pool = av2_pool()
        if pool is None:
            print(f"Argoverse 2 sample log not found at {AV2_LOG.resolve()}: skipping the av2 source")
        else:
            sources.append(("av2", lambda n, pool=pool: pool[np.sort(rng.permutation(len(pool))[:n])]))
    if args.source in ("both", "synthetic"):
        sources.append(("synthetic", lambda n: synthetic(n, rng)))

    print(f"eps {args.eps} m, min_samples {args.min_samples}")
    print(
        f"{'source':<11} {'n':<8} {'ours s':>7} {'sklearn s':>11} {'ratio':>7} {'clusters':>9} {'noise':>7}  equal"
    )
    for name, make in sources:
        for n in sizes:
            points = make(n)
            ours, labels = best_time(args.repeat, dbscan, points, args.eps, args.min_samples)
            clusters, noise = int(labels.max()) + 1, int(np.sum(labels == NOISE))
            if DBSCAN is None:
                print(
                    f"{name:<11} {len(points):<8} {ours:7.3f} {'-':>11} {'-':>7} {clusters:9d} {noise:7d}  -"
                )
                continue
            model = DBSCAN(eps=args.eps, min_samples=args.min_samples, metric="euclidean", algorithm="auto")
            theirs, want = best_time(args.sk_repeat, model.fit, points)
            want = want.labels_
            equal = bool(np.array_equal(labels, want))
            print(
                f"{name:<11} {len(points):<8} {ours:7.3f} {theirs:11.3f} {ours / theirs:7.2f} "
                f"{clusters:9d} {noise:7d}  {equal}"
            )


if __name__ == "__main__":
    main()
