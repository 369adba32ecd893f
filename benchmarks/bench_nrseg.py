"""Speed and memory of the NRSeg train step: student and EMA teacher, windows of two frames, source + synthetic
+ unlabelled target windows, through the engine (``initial_state``, ``compile_step``: the donated, jitted step).

    python benchmarks/bench_nrseg.py                        # the paper's size, then the default config's
    python benchmarks/bench_nrseg.py --sizes default --repeat 5
    python benchmarks/bench_nrseg.py --sizes paper --remat blocks
    python benchmarks/bench_nrseg.py --sizes paper --accumulate 2   # two micro-batches per step

Sizes (each in a fresh subprocess, so that its peak RSS is its own):

- ``paper``: 6 cameras of 128x352, stride 8, D = 41 (4-45 m), 200x200 grid at 0.5 m, EfficientNet-B0, context
  64; batch 4 labelled windows (+2 synthetic, +4 unlabelled target windows, the default ratios), T = 2.
- ``default``: ``configs/nrseg_uda.py`` as it is (6 cameras of 64x192, 64x64 grid at 0.75 m), same batch.

For each: compile time, median step time over ``--repeat`` steps after one warm-up, the process's peak RSS
(``ru_maxrss``) after compiling and at the end, and XLA's memory analysis of the compiled step. Inputs are
random images and labels on the real nuScenes rig geometry (``bevjax.world.rig.camera_rig``); every loss term
runs (PV labels, LiDAR depth, PGCM weights). The step must fit in 24 GiB at batch 4 on a CPU machine.

Measured on 2 CPU cores with 23 GiB (jax 0.10.2):

- ``python benchmarks/bench_nrseg.py --repeat 2``: the paper's size does not fit in one step (XLA asks for one
  26.1 GB buffer: out of memory);
- ``python benchmarks/bench_nrseg.py --repeat 2 --accumulate 2`` (two micro-batches of 3 + 2 windows)::

    size     images       grid     windows      params M compile s  step s RSS compiled GB peak RSS GB XLA temp GB
    paper    6x128x352    200x200  4+2+4 x 2       14.57      47.9  118.01            3.05       15.81       13.28
    default  6x64x192     64x64    4+2+4 x 2       14.57      54.4   19.62            3.10        6.12        3.08

  So at the paper's size batch 4 fits in 24 GiB with ``config.train.accumulate=2`` (peak 15.8 GB).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

SIZES = ("paper", "default")
CHOICES = (*SIZES, "tiny")  # tiny: configs/nrseg_uda.py:tiny, to check the script in seconds


def config_for(size: str, remat: str, accumulate: int = 1):
    from bevjax.cli import load_config

    c = load_config("configs/nrseg_uda.py:tiny" if size == "tiny" else "configs/nrseg_uda.py")
    if size == "paper":
        c.inputs.image_hw = (128, 352)
        c.grid.xbound, c.grid.ybound = (-50.0, 50.0, 0.5), (-50.0, 50.0, 0.5)
    c.model.remat = remat
    c.train.accumulate = accumulate  # micro-batches per step (the engine's gradient accumulation)
    c.tensorboard = False
    return c


def random_window(spec: dict, b: int, t: int, rng: np.random.Generator, rig) -> dict:
    """A batch of ``b`` windows of ``t`` frames with the schema's shapes (random content, real rig)."""
    intrinsics, cam_to_ego = rig
    out = {}
    for key, (shape, _) in spec.items():
        full = (b, t, *shape)
        if key == "images":
            out[key] = rng.integers(0, 256, full, dtype=np.uint8)
        elif key == "bev_labels":
            out[key] = (rng.random(full) < 0.2).astype(np.uint8)
        elif key == "bev_visibility":
            out[key] = np.ones(full, np.uint8)
        elif key == "pv_labels":
            out[key] = rng.integers(0, 10, full, dtype=np.uint8)
        elif key == "depth":
            out[key] = np.where(rng.random(full) < 0.05, rng.uniform(4, 45, full), 0).astype(np.float32)
        elif key == "intrinsics":
            out[key] = np.broadcast_to(intrinsics, full).astype(np.float32)
        elif key == "cam_to_ego":
            out[key] = np.broadcast_to(cam_to_ego, full).astype(np.float32)
        elif key == "ego_to_world":
            pose = np.broadcast_to(np.eye(4, dtype=np.float32), full).copy()
            pose[:, :, 0, 3] = np.arange(t, dtype=np.float32) * 2.0  # 2 m forward per frame
            out[key] = pose
        elif key == "post_rots":
            out[key] = np.broadcast_to(np.eye(3, dtype=np.float32), full).copy()
        elif key == "post_trans":
            out[key] = np.zeros(full, np.float32)
    out["sequence_start"] = np.broadcast_to(np.arange(t) == 0, (b, t)).copy()
    out["pgcm_weight"] = np.ones((b, t), np.float32)
    return out


def measure(size: str, remat: str, repeat: int, accumulate: int = 1) -> dict:
    """One size in this process."""
    import jax

    from bevjax.models.nrseg import INPUT_KEYS
    from bevjax.schema import example_spec
    from bevjax.tasks import make_task
    from bevjax.training.sharding import mesh_from_config, shard_batch
    from bevjax.training.trainer import compile_step, initial_state
    from bevjax.world.rig import camera_rig

    c = config_for(size, remat, accumulate)
    task = make_task(c)
    n, hw = len(c.inputs.cameras), tuple(c.inputs.image_hw)
    spec = example_spec(n, hw, task.grid.shape[:2], 1)
    spec = {k: v for k, v in spec.items() if not k.startswith(("lidar", "next_")) and k in (
        *INPUT_KEYS, "bev_labels", "bev_visibility", "pv_labels", "depth")}  # fmt: skip
    rng = np.random.default_rng(0)
    rig = camera_rig(tuple(c.inputs.cameras), hw)
    b, t = int(c.train.batch_size), int(c.data.window)
    n_syn = max(1, round(float(c.data.synthetic_ratio) * b))
    batch = random_window(spec, b + n_syn, t, rng, rig)
    target = random_window(spec, b, t, rng, rig)
    batch["target"] = {k: target[k] for k in INPUT_KEYS}
    mesh = mesh_from_config(c.mesh)
    state, shardings = initial_state(task, c, mesh, batch, c.train.steps, init_from=False)
    sharded = shard_batch(batch, mesh)
    t0 = time.perf_counter()
    step = compile_step(task, c, mesh, state, shardings, sharded)
    compile_s = time.perf_counter() - t0
    mem = step.memory_analysis()
    rss_compiled = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"COMPILED {size}: compile {compile_s:.1f}s, XLA temp {mem.temp_size_in_bytes / 1e9:.2f} GB, arguments "
          f"{mem.argument_size_in_bytes / 1e9:.2f} GB, RSS {rss_compiled:.2f} GB", flush=True)  # fmt: skip
    key = jax.random.PRNGKey(0)
    times = []
    for i in range(repeat + 1):  # the first call warms up
        start = time.perf_counter()
        state, metrics = step(state, sharded, key)
        jax.block_until_ready(metrics["loss"])
        if i:
            times.append(time.perf_counter() - start)
    return {
        "size": size,
        "remat": remat,
        "accumulate": accumulate,
        "images": f"{n}x{hw[0]}x{hw[1]}",
        "grid": "x".join(map(str, task.grid.shape[:2])),
        "windows": f"{b}+{n_syn}+{b} x {t}",
        "params_m": sum(x.size for x in jax.tree.leaves(state.params)) / 1e6,
        "compile_s": compile_s,
        "step_s": sorted(times)[len(times) // 2],
        "rss_compiled_gb": rss_compiled,
        "rss_peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "temp_gb": mem.temp_size_in_bytes / 1e9,
        "argument_gb": mem.argument_size_in_bytes / 1e9,
        "loss": float(metrics["loss"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=CHOICES)
    parser.add_argument("--remat", default="none", choices=("none", "blocks", "full"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per step (lowers the peak)")
    parser.add_argument("--one", default="", choices=("", *CHOICES), help=argparse.SUPPRESS)  # one size, in a child
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(measure(args.one, args.remat, args.repeat, args.accumulate)), flush=True)
        return
    rows = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--one", size, "--remat", args.remat, "--repeat", str(args.repeat),
               "--accumulate", str(args.accumulate)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            compiled = [x for x in out.stdout.splitlines() if x.startswith("COMPILED ")]
            oom = [x for x in out.stderr.splitlines() if "RESOURCE_EXHAUSTED" in x]
            if oom:  # a figure too: the step does not fit
                print(f"{size}: does not fit ({compiled[-1] if compiled else 'not compiled'}); {oom[-1].strip()}")
                continue
            print(out.stdout[-3000:], out.stderr[-3000:], sep="\n", file=sys.stderr)
            raise SystemExit(f"error: measuring '{size}' failed (exit {out.returncode})")
        rows.append(json.loads(lines[-1][len("RESULT "):]))
    head = (
        f"{'size':8} {'images':12} {'grid':8} {'windows':12} {'params M':>8} {'compile s':>9} {'step s':>7} "
        f"{'RSS compiled GB':>15} {'peak RSS GB':>11} {'XLA temp GB':>11} {'args GB':>7}"
    )
    print(head)
    for r in rows:
        print(
            f"{r['size']:8} {r['images']:12} {r['grid']:8} {r['windows']:12} {r['params_m']:8.2f} "
            f"{r['compile_s']:9.1f} {r['step_s']:7.2f} {r['rss_compiled_gb']:15.2f} {r['rss_peak_gb']:11.2f} "
            f"{r['temp_gb']:11.2f} {r['argument_gb']:7.2f}"
        )
    print(
        f"(remat '{args.remat}', accumulate {args.accumulate}; median of {args.repeat} steps after one warm-up; "
        "windows = labelled + synthetic + unlabelled target, x frames; the step must fit in 24 GiB)"
    )


if __name__ == "__main__":
    main()
