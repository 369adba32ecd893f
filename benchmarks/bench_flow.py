"""Speed of SemanticFlow's pieces: the pseudo-label pass, the nearest-neighbour Chamfer and the train step.

    python benchmarks/bench_flow.py [--parts pseudo,chamfer,step] [--repeat 3] [--sk-repeat 1]
                                    [--chamfer-repeat 1] [--step-repeat 2] [--step-points 0] [--capacity 0]
                                    [--skip-paper]

The default run takes about 7 minutes on 2 contended CPU cores (the train step at the paper's size about 3 of
them; ``--skip-paper`` leaves it out).

Parts (``--parts``, comma-separated; all by default):

- ``pseudo``: :func:`bevjax.flow_labels.pseudo_labels` on the real sweep pair of the Argoverse 2 sample log in
  ``../shared/data/av2`` (``bevjax.data.av2.sample.load_pair``: 99,466 points per padded sweep, the log's own
  ground flags), with ``PseudoLabelSettings(origins=((1.3485, 0.0025, 1.5825),), azimuth_bins=1800,
  elevation_bins=64)`` (``configs/semanticflow.py:av2``'s), best of ``--repeat`` after one warm-up call (the
  ICP's nearest-neighbour search is jitted per padded size). The reference is the *same pass* with
  scikit-learn's DBSCAN (``DBSCAN(eps, min_samples).fit_predict`` on the same kept points, monkeypatched for
  the ``dbscan`` that ``bevjax.flow_labels`` imports) and the rigid fits as a Python loop over clusters of a
  NumPy SVD Kabsch (the default ``planar=True`` path: a weighted 2-d SVD with the determinant correction per
  cluster, for ``fit_clusters_planar_np``; the 6-DoF ``fit_clusters_np`` is patched too, with a loop of
  ``kabsch_np``, though the default path does not call it), best of ``--sk-repeat``. Everything else (free
  space, ground estimate, the jitted ICP correspondences) is shared, so the ratio is that of the two replaced
  stages diluted by the rest. It checks that both give the same outputs (integer outputs equal, flows
  allclose), prints both times, the ratio ours / reference (the issue asks <= 0.5) and the split of each time
  by stage (DBSCAN, rigid fits, ICP nearest neighbours, free space, sweep-1 ground estimate, ego compensation,
  the rest). Skipped without the log; ours only without scikit-learn.
- ``chamfer``: :func:`bevjax.ops.neighbors.chamfer_distances` (jitted and compiled ahead of time, then timed
  with ``block_until_ready``) on the two real sweeps (valid points; sweep 0 moved into sweep 1's frame) and on
  two uniform random sets of 100k points in a 100 x 100 x 6 m box, against ``scipy.spatial.cKDTree``: build
  on one set and ``query`` the other, both ways (``workers=-1``: both cores, as XLA uses), best of
  ``--chamfer-repeat``; prints the times, the ratio ours / cKDTree, the max abs difference of the Euclidean
  nearest distances (metres) and the fraction of equal neighbour indices.
- ``step``: ``SemanticFlowTask.train_step`` (``jax.jit(..., donate_argnums=0)``, lowered and compiled ahead
  of time) at batch 2, for ``configs/semanticflow.py``'s default model and the paper's (``:av2``'s model
  section: 0.2 m pillars 512 x 512, U-Net widths (64, 128, 256), depths (4, 6, 6), K = 2, bfloat16) on the same
  data (the default config otherwise, so ``config.points.capacity`` = 16,384 points per sweep that the losses
  see, inside the step; ``--capacity`` sets it, ``:av2`` has 65,536). The batch is the real pair with its
  pseudo-labels (the pass above) tiled to batch 2, all 99,466 padded points per sweep (``--step-points N``
  subsamples each sweep at random to N); without the log, a synthetic pair of 32,768 points (the world's
  32 x 1024 sweep) or N. Each size runs in a fresh subprocess so that its peak RSS (``ru_maxrss``) is its
  own; prints compile time, the mean step time of ``--step-repeat`` steps after one warm-up, the RSS after
  compiling and at the end, and XLA's temp and argument bytes from the compiled step's memory analysis
  (GB). ``--skip-paper`` leaves the paper's size out.

Measured on 2 CPU cores shared with a training job running beside it (timings contended: load average 3-5,
expect 10-30 % between runs, more for single runs), jax 0.10.2, scikit-learn 1.9.1, SciPy 1.17.1, at commit
f81783b, 6 min 20 s in all, ``python benchmarks/bench_flow.py``::

    == pseudo-label pass (one sweep pair) ==
    points 99229 + 99466 (padded 99466); clusters kept sweep 0: 106, dynamic points 1269 + 1279
    pass                        total s     dbscan       fits     icp nn free space    ground1 compensate       rest
    ours                          0.692      0.339      0.008      0.116      0.170      0.016      0.009      0.034
    sklearn DBSCAN + loop SVD     2.445      1.745      0.012      0.128      0.175      0.016      0.332      0.037
    ratio ours / reference 0.28 (issue: <= 0.5); outputs equal True, flows allclose True (max abs diff 0.00e+00 m)
    (best of 3 ours / 1 reference after one warm-up; DBSCAN alone 0.339 s vs 1.745 s, ratio 0.19)
    == nearest-neighbour Chamfer (both ways) ==
    set             n0      n1   ours s  cKDTree s   ratio  max |dd| m  same nn
    av2 pair     99229   99466   22.064      0.215   102.8    1.73e-06  0.99998   (compile 0.6 s)
    random      100000  100000   22.716      0.346    65.6    7.99e-08  1.00000   (compile 0.6 s)
    (best of 1; cKDTree times include building both trees)
    == train step (batch 2) ==
    size    batch         cap pillars widths     depths dtype    params M compile s step s RSS comp peak RSS XLA temp args
    default 2x99466 av2 16384 256x256 32/64/128  2/3/3 float32      1.19      27.2   8.37     1.84     3.18     1.42 0.02
    paper   2x99466 av2 16384 512x512 64/128/256 4/6/6 bfloat16     6.90      33.9  47.76     2.25     7.06     4.86 0.09
    (GB; cap: config.points.capacity; step s: mean of 2 steps after one warm-up; each size in its own process)

- the pass: ours takes 0.28 of the reference's time (0.26-0.28 over four runs), DBSCAN alone 0.15-0.19; the
  shared stages (free space, the jitted ICP correspondences, ego compensation) now make up half of ours.
  ``compensate`` (one [p, 3] @ [3, 3] NumPy product) swings between 0.01 and 0.4 s from run to run: beside
  JAX, multi-threaded OpenBLAS takes 40 ms for it where one thread (``OPENBLAS_NUM_THREADS=1``) takes 4 ms,
  and up to 0.4 s when the neighbouring job is busy; the reference's 0.33 s above is that, not the method.
- Chamfer: the blockwise brute force is 65-125x slower than cKDTree on CPU (about 1 G pairs/s contended;
  ``bevjax/ops/neighbors.py``'s 2.6 G/s was uncontended), with the same distances to 2e-6 m and 0.99998 of the
  indices (the others near-ties in float32).
- the step at the paper's size with ``:av2``'s capacity, ``python benchmarks/bench_flow.py --one-step paper
  --step-repeat 1 --capacity 65536`` (one size in this process; batch 2 x 99,466): compile 36.2 s, step 126 s,
  RSS compiled 2.20 GB, peak RSS 9.45 GB, XLA temp 7.64 GB, args 0.09 GB. Before the task compacted the sweeps
  (capacity, c83b247), the default model at 2 x 99,466 took 210 s a step (XLA temp 3.75 GB, peak RSS 5.22 GB).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
AV2_LOG = ROOT / ".." / "shared" / "data" / "av2" / "sensor" / "val" / "7fab2350-7eaf-3b7e-a39d-6937a4c1bede"
AV2_ORIGINS = ((1.3485, 0.0025, 1.5825),)  # configs/semanticflow.py:AV2_LIDAR_ORIGIN
PARTS = ("pseudo", "chamfer", "step")
SIZES = ("default", "paper")
SYNTHETIC_POINTS = 32 * 1024  # the world's default sweep: 32 beams x 1024 azimuths
STAGES = (  # bevjax.flow_labels globals timed for the split: (name, column)
    ("dbscan", "dbscan"),
    ("fit_clusters_planar_np", "fits"),
    ("fit_clusters_np", "fits"),
    ("nearest_in_cluster", "icp nn"),
    ("dynamic_by_free_space", "free space"),
    ("estimate_ground", "ground1"),
    ("compensate", "compensate"),
)
COLUMNS = ("dbscan", "fits", "icp nn", "free space", "ground1", "compensate")


def settings():
    from bevjax.flow_labels import PseudoLabelSettings

    return PseudoLabelSettings(origins=AV2_ORIGINS, azimuth_bins=1800, elevation_bins=64)


def av2_example() -> dict | None:
    """The sample log's first sweep pair as a schema example (``load_pair``), or None without the log."""
    if not AV2_LOG.is_dir():
        return None
    from bevjax.data.av2 import AV2Log
    from bevjax.data.av2.sample import load_pair

    log = AV2Log(AV2_LOG)
    t0, t1 = log.lidar_timestamps()[:2]
    return load_pair(log, int(t0), int(t1))


def best_time(repeat: int, fn, *args):
    """(best wall time of ``repeat`` calls of ``fn(*args)``, its last result)."""
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), out


# The reference stages ------------------------------------------------------------------------------------------


def sklearn_dbscan(points, eps, min_samples, valid=None, *, return_core=False):
    """``bevjax.ops.dbscan.dbscan``'s signature and return over scikit-learn's DBSCAN of the valid points."""
    from sklearn.cluster import DBSCAN

    points = np.asarray(points, np.float64)
    keep = np.ones(len(points), bool) if valid is None else np.asarray(valid, bool)
    index = np.flatnonzero(keep)  # compacted in index order: the scan order, so the numbering, is kept
    labels = np.full(len(points), -1, np.int32)
    core = np.zeros(len(points), bool)
    if len(index):
        model = DBSCAN(eps=eps, min_samples=min_samples)
        labels[index] = model.fit_predict(points[index])
        core[index[model.core_sample_indices_]] = True
    return (labels, core) if return_core else labels


def loop_fit_planar(source, target, labels, weights, k: int):
    """``fit_clusters_planar_np`` as a Python loop over clusters of a weighted 2-d SVD Kabsch (x-y, t_z = 0)."""
    rotation = np.broadcast_to(np.eye(3), (k, 3, 3)).copy()
    translation = np.zeros((k, 3))
    rms = np.full(k, np.inf)
    for j in range(k):
        m = labels == j
        w = weights[m]
        total = w.sum()
        if not total > 0:
            continue
        x, y = source[m, :2], target[m, :2]
        x_bar, y_bar = w @ x / total, w @ y / total
        h = (w[:, None] * (x - x_bar)).T @ (y - y_bar)  # 2 2
        u, _, vt = np.linalg.svd(h)
        d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
        r = vt.T @ np.diag([1.0, d]) @ u.T
        rotation[j, :2, :2] = r
        translation[j, :2] = y_bar - r @ x_bar
        residual = x @ r.T + translation[j, :2] - y
        rms[j] = np.sqrt(np.sum(w * np.sum(residual**2, 1)) / total)
    return rotation, translation, rms


def loop_fit_clusters(source, target, labels, weights=None, *, eps: float = 1e-6):
    """``fit_clusters_np`` as a Python loop of ``kabsch_np`` over the clusters present."""
    from bevjax.geometry.kabsch import ClusterFit, kabsch_np

    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    labels = np.asarray(labels)
    weights = np.ones(len(source)) if weights is None else np.asarray(weights, np.float64)
    ids = np.unique(labels[labels >= 0])
    rows = []
    for j in ids:
        m = labels == j
        w = weights[m]
        r, t = kabsch_np(source[m], target[m], w, eps=eps)
        total = w.sum()
        sq = np.sum(w * np.sum((source[m] @ r.T + t - target[m]) ** 2, 1))
        rows.append((r, t, np.sqrt(sq / total) if total > 0 else 0.0, total, m.sum()))
    if not rows:
        return ClusterFit(
            ids, np.zeros((0, 3, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0), np.zeros(0, int)
        )
    r, t, rms, total, count = (np.array(c) for c in zip(*rows, strict=True))
    return ClusterFit(ids, r, t, rms, total, count)


@contextlib.contextmanager
def patched(module, replacements: dict, timings: dict | None = None):
    """Replaces ``module``'s globals (``replacements``: name -> function, or None to keep it) and, with
    ``timings``, accumulates each one's wall time (outputs made ready) under its ``STAGES`` column."""
    import jax

    column = dict(STAGES)
    saved = {name: getattr(module, name) for name in replacements}

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = jax.block_until_ready(fn(*args, **kwargs))
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - start
            return out

        return wrapper

    try:
        for name, fn in replacements.items():
            fn = fn or saved[name]
            setattr(module, name, timed(fn, column[name]) if timings is not None else fn)
        yield
    finally:
        for name, fn in saved.items():
            setattr(module, name, fn)


def timed_pass(example, s, repeat: int, replacements: dict) -> tuple[float, dict, dict]:
    """(best total of ``repeat`` passes, that pass's stage split, its outputs) with ``replacements``."""
    import bevjax.flow_labels as fl

    best, split, out = np.inf, {}, None
    for _ in range(repeat):
        timings: dict = {}
        with patched(fl, {name: replacements.get(name) for name, _ in STAGES}, timings):
            start = time.perf_counter()
            out = fl.pseudo_labels(example, s)
            total = time.perf_counter() - start
        if total < best:
            best, split = total, timings
    return best, split, out


def part_pseudo(example: dict | None, repeat: int, sk_repeat: int) -> dict | None:
    print("== pseudo-label pass (one sweep pair) ==")
    if example is None:
        print(f"Argoverse 2 sample log not found at {AV2_LOG.resolve()}: skipping")
        return None
    import bevjax.flow_labels as fl

    s = settings()
    n0, n1 = int(example["lidar_valid"].sum()), int(example["next_lidar_valid"].sum())
    fl.pseudo_labels(example, s)  # warm-up: compiles the ICP's nearest-neighbour buckets
    ours, ours_split, out = timed_pass(example, s, repeat, {})
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("scikit-learn is not installed (pip install -e '.[test]'): timing bevjax's pass only")
        print(f"ours {ours:.3f} s on {n0} + {n1} points; split {fmt_split(ours_split, ours)}")
        return out
    reference = {
        "dbscan": sklearn_dbscan,
        "fit_clusters_planar_np": loop_fit_planar,
        "fit_clusters_np": loop_fit_clusters,
    }
    theirs, theirs_split, want = timed_pass(example, s, sk_repeat, reference)
    equal = all(np.array_equal(out[k], want[k]) for k in out if k != "pseudo_flow0")
    flow_diff = float(np.max(np.abs(out["pseudo_flow0"] - want["pseudo_flow0"])))
    close = bool(np.allclose(out["pseudo_flow0"], want["pseudo_flow0"], atol=1e-5))
    clusters0 = int(out["pseudo_cluster0"].max()) + 1
    print(
        f"points {n0} + {n1} (padded {len(example['lidar_valid'])}); clusters kept sweep 0: {clusters0}, "
        f"dynamic points {int(out['pseudo_dynamic0'].sum())} + {int(out['pseudo_dynamic1'].sum())}"
    )
    head = f"{'pass':<26} {'total s':>8}" + "".join(f" {c:>10}" for c in (*COLUMNS, "rest"))
    print(head)
    for name, total, split in (
        ("ours", ours, ours_split),
        ("sklearn DBSCAN + loop SVD", theirs, theirs_split),
    ):
        print(f"{name:<26} {total:8.3f}{fmt_split(split, total)}")
    print(
        f"ratio ours / reference {ours / theirs:.2f} (issue: <= 0.5); outputs equal {equal}, "
        f"flows allclose {close} (max abs diff {flow_diff:.2e} m)"
    )
    print(
        f"(best of {repeat} ours / {sk_repeat} reference after one warm-up; DBSCAN alone "
        f"{ours_split.get('dbscan', 0):.3f} s vs {theirs_split.get('dbscan', 0):.3f} s, ratio "
        f"{ours_split.get('dbscan', 0) / max(theirs_split.get('dbscan', 0), 1e-9):.2f})"
    )
    return out


def fmt_split(split: dict, total: float) -> str:
    rest = total - sum(split.values())
    return "".join(f" {split.get(c, 0.0):10.3f}" for c in COLUMNS) + f" {rest:10.3f}"


# Chamfer -----------------------------------------------------------------------------------------------------


def part_chamfer(example: dict | None, repeat: int) -> None:
    print("== nearest-neighbour Chamfer (both ways) ==")
    import jax
    from scipy.spatial import cKDTree

    from bevjax.ops.neighbors import chamfer_distances
    from bevjax.ops.pointcloud import compensate

    sets = []
    if example is None:
        print(f"Argoverse 2 sample log not found at {AV2_LOG.resolve()}: random sets only")
    else:
        p0 = np.asarray(example["lidar_points"], np.float64)[example["lidar_valid"]]
        t = np.asarray(example["next_ego_from_ego"], np.float64)
        pc0 = compensate(p0, t).astype(np.float32)
        pc1 = np.asarray(example["next_lidar_points"], np.float32)[example["next_lidar_valid"]]
        sets.append(("av2 pair", pc0, pc1))
    rng = np.random.default_rng(0)
    box = np.array([100.0, 100.0, 6.0])
    sets.append(("random", *(((rng.random((100_000, 3)) - 0.5) * box).astype(np.float32) for _ in range(2))))

    fn = jax.jit(lambda a, b: chamfer_distances(a, b))

    def kdtree(a, b):
        d01, i01 = cKDTree(b).query(a, workers=-1)
        d10, i10 = cKDTree(a).query(b, workers=-1)
        return d01, i01, d10, i10

    print(
        f"{'set':<10} {'n0':>7} {'n1':>7} {'ours s':>8} {'cKDTree s':>10} {'ratio':>7} {'max |dd| m':>11} {'same nn':>8}"
    )
    for name, a, b in sets:
        start = time.perf_counter()
        compiled = fn.lower(a, b).compile()
        compile_s = time.perf_counter() - start
        t_ours, c = best_time(repeat, lambda f, a, b: jax.block_until_ready(f(a, b)), compiled, a, b)
        t_kd, (d01, i01, d10, i10) = best_time(repeat, kdtree, a, b)
        ours_d = [np.sqrt(np.asarray(c.dist0to1, np.float64)), np.sqrt(np.asarray(c.dist1to0, np.float64))]
        diff = max(float(np.max(np.abs(ours_d[0] - d01))), float(np.max(np.abs(ours_d[1] - d10))))
        same = (np.sum(np.asarray(c.index0to1) == i01) + np.sum(np.asarray(c.index1to0) == i10)) / (
            len(a) + len(b)
        )
        print(
            f"{name:<10} {len(a):7d} {len(b):7d} {t_ours:8.3f} {t_kd:10.3f} {t_ours / t_kd:7.1f} {diff:11.2e} "
            f"{same:8.5f}   (compile {compile_s:.1f} s)"
        )
    print(f"(best of {repeat}; cKDTree times include building both trees)")


# Train step --------------------------------------------------------------------------------------------------


def load_config(variant: str | None = None):
    spec = importlib.util.spec_from_file_location("semanticflow_config", ROOT / "configs" / "semanticflow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def config_for(size: str, capacity: int = 0):
    c = load_config()
    if size == "paper":
        c.model = load_config("av2").model  # the paper's network; the data stay the world config's
    if capacity:
        c.points.capacity = capacity
    c.tensorboard = False
    return c


SWEEP0_KEYS = ("lidar_points", "lidar_valid", "lidar_ground", "pseudo_dynamic0", "pseudo_cluster0", "pseudo_flow0",
               "pseudo_flow_valid0")  # fmt: skip
SWEEP1_KEYS = ("next_lidar_points", "next_lidar_valid", "pseudo_dynamic1")


def step_batch(points: int) -> tuple[dict, str]:
    """Batch 2 of the task's keys: the real pair with its pseudo-labels, each sweep subsampled at random to
    ``points`` (0: all), tiled; or a synthetic pair without the log."""
    from bevjax.tasks.semanticflow import INPUT_KEYS, PSEUDO_KEYS

    example = av2_example()
    if example is None:
        one, source = synthetic_pair(points or SYNTHETIC_POINTS, np.random.default_rng(0)), "synthetic"
    else:
        from bevjax.flow_labels import pseudo_labels

        one, source = {**example, **pseudo_labels(example, settings())}, "av2 pair"
    one = {k: np.asarray(one[k]) for k in INPUT_KEYS + PSEUDO_KEYS}
    p = len(one["lidar_points"])
    if points and points != p:
        rng = np.random.default_rng(0)
        for keys in (SWEEP0_KEYS, SWEEP1_KEYS):  # the same points for every key of one sweep
            index = np.sort(rng.permutation(p)[:points])
            one.update({k: resize(one[k][index], points) for k in keys})
    return {k: np.stack([v, v]) for k, v in one.items()}, source


def resize(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` [m, ...] padded with zeros to ``n`` rows (padding is invalid: ``*_valid`` False)."""
    out = np.zeros((n, *x.shape[1:]), x.dtype)
    out[: len(x)] = x
    return out


def synthetic_pair(p: int, rng: np.random.Generator) -> dict:
    """A sweep pair of the task's keys with random content: points within 50 m, a few dynamic clusters."""
    radius = rng.uniform(2.5, 45.0, (2, p))
    angle = rng.uniform(-np.pi, np.pi, (2, p))
    z = rng.uniform(-1.5, 1.5, (2, p))
    pts = np.stack([radius * np.cos(angle), radius * np.sin(angle), z], -1).astype(np.float32)  # 2 p 3
    cluster = np.where(rng.random(p) < 0.05, rng.integers(0, 8, p), -1).astype(np.int32)
    t = np.eye(4, dtype=np.float32)
    t[0, 3] = -1.0  # 1 m forward per pair
    return {
        "lidar_points": pts[0],
        "lidar_valid": np.ones(p, bool),
        "lidar_ground": pts[0, :, 2] < -1.2,
        "next_lidar_points": pts[1],
        "next_lidar_valid": np.ones(p, bool),
        "next_ego_from_ego": t,
        "pseudo_dynamic0": cluster >= 0,
        "pseudo_dynamic1": rng.random(p) < 0.05,
        "pseudo_cluster0": cluster,
        "pseudo_flow0": np.where((cluster >= 0)[:, None], np.float32([0.5, 0.0, 0.0]), 0.0).astype(
            np.float32
        ),
        "pseudo_flow_valid0": np.ones(p, bool),
    }


def measure_step(size: str, repeat: int, points: int, capacity: int = 0) -> dict:
    """One size in this process: compile, warm-up, ``repeat`` timed steps."""
    import jax

    from bevjax.tasks.semanticflow import SemanticFlowTask

    c = config_for(size, capacity)
    task = SemanticFlowTask(c)
    batch, source = step_batch(points)
    rng = jax.random.PRNGKey(0)
    variables = task.init(rng, batch)
    state = task.init_state(variables, task.optimizer(int(c.train.steps)))
    params_m = sum(x.size for x in jax.tree.leaves(state.params)) / 1e6
    start = time.perf_counter()
    step = jax.jit(task.train_step, donate_argnums=0).lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - start
    mem = step.memory_analysis()
    rss_compiled = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(
        f"COMPILED {size}: compile {compile_s:.1f} s, XLA temp {mem.temp_size_in_bytes / 1e9:.2f} GB, "
        f"RSS {rss_compiled:.2f} GB",
        flush=True,
    )
    times = []
    for i in range(repeat + 1):  # the first call warms up
        start = time.perf_counter()
        state, metrics = step(state, batch, jax.random.fold_in(rng, i))
        jax.block_until_ready(metrics["loss"])
        if i:
            times.append(time.perf_counter() - start)
    return {
        "size": size,
        "source": source,
        "points": int(batch["lidar_points"].shape[1]),
        "capacity": task.capacity or 0,
        "pillars": "x".join(map(str, task.pillars.shape[:2])),
        "widths": "/".join(map(str, c.model.unet_widths)),
        "depths": "/".join(map(str, c.model.unet_depths)),
        "dtype": str(c.model.get("dtype", "float32")),
        "params_m": params_m,
        "compile_s": compile_s,
        "step_s": float(np.mean(times)),
        "rss_compiled_gb": rss_compiled,
        "rss_peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "temp_gb": mem.temp_size_in_bytes / 1e9,
        "argument_gb": mem.argument_size_in_bytes / 1e9,
        "loss": float(metrics["loss"]),
    }


def part_step(sizes, repeat: int, points: int, capacity: int = 0) -> None:
    print("== train step (batch 2) ==")
    try:
        import bevjax.tasks.semanticflow  # noqa: F401
    except ImportError as e:
        print(f"cannot import bevjax.tasks.semanticflow ({e}): skipping the train step")
        return
    rows = []
    for size in sizes:
        cmd = [sys.executable, __file__, "--one-step", size, "--step-repeat", str(repeat),
               "--step-points", str(points), "--capacity", str(capacity)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            compiled = [x for x in out.stdout.splitlines() if x.startswith("COMPILED ")]
            oom = [x for x in out.stderr.splitlines() if "RESOURCE_EXHAUSTED" in x]
            if oom:
                print(
                    f"{size}: does not fit ({compiled[-1] if compiled else 'not compiled'}); {oom[-1].strip()}"
                )
                continue
            print(out.stdout[-3000:], out.stderr[-3000:], sep="\n", file=sys.stderr)
            raise SystemExit(f"error: measuring the step at size '{size}' failed (exit {out.returncode})")
        rows.append(json.loads(lines[-1][len("RESULT ") :]))
    print(
        f"{'size':7} {'batch':11} {'cap':>5} {'pillars':7} {'widths':10} {'depths':5} {'dtype':8} {'params M':>8} "
        f"{'compile s':>9} {'step s':>6} {'RSS comp':>8} {'peak RSS':>8} {'XLA temp':>8} {'args':>4}"
    )
    for r in rows:
        batch = f"2x{r['points']} {r['source'].split()[0]}"
        print(
            f"{r['size']:7} {batch:11} {r['capacity']:5d} {r['pillars']:7} {r['widths']:10} {r['depths']:5} "
            f"{r['dtype']:8} {r['params_m']:8.2f} {r['compile_s']:9.1f} {r['step_s']:6.2f} "
            f"{r['rss_compiled_gb']:8.2f} {r['rss_peak_gb']:8.2f} {r['temp_gb']:8.2f} {r['argument_gb']:4.2f}"
        )
    steps = f"{repeat} step" + "s" * (repeat != 1)
    print(
        f"(GB; cap: config.points.capacity; step s: mean of {steps} after one warm-up; each size in its own process)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ",".join(PARTS))
    parser.add_argument("--repeat", type=int, default=3, help="runs of ours in the pass, best taken")
    parser.add_argument("--chamfer-repeat", type=int, default=1, help="Chamfer runs of each, best taken")
    parser.add_argument("--sk-repeat", type=int, default=1, help="runs of the reference pass, best taken")
    parser.add_argument("--step-repeat", type=int, default=2, help="timed train steps (mean) after a warm-up")
    parser.add_argument(
        "--step-points", type=int, default=0,
        help="subsample each sweep of the step's batch to this many points (0: all 99,466)",
    )  # fmt: skip
    parser.add_argument(
        "--capacity", type=int, default=0,
        help="config.points.capacity of the step (points per sweep the losses see; 0: the config's, 16,384)",
    )  # fmt: skip
    parser.add_argument(
        "--skip-paper", action="store_true", help="time the train step at the default size only"
    )
    parser.add_argument("--one-step", default="", choices=("", *SIZES), help=argparse.SUPPRESS)  # in a child
    args = parser.parse_args()
    if args.one_step:
        result = measure_step(args.one_step, args.step_repeat, args.step_points, args.capacity)
        print("RESULT " + json.dumps(result), flush=True)
        return
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {unknown}; choose from {','.join(PARTS)}")
    example = av2_example() if {"pseudo", "chamfer"} & set(parts) else None
    if "pseudo" in parts:
        part_pseudo(example, args.repeat, args.sk_repeat)
    if "chamfer" in parts:
        part_chamfer(example, args.chamfer_repeat)
    if "step" in parts:
        part_step(SIZES[:1] if args.skip_paper else SIZES, args.step_repeat, args.step_points, args.capacity)


if __name__ == "__main__":
    main()
