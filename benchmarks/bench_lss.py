"""Speed and memory of LSS at the paper's configuration (128x352 images, 200x200 grid, D = 41, batch 4).

    python benchmarks/bench_lss.py [--cameras 5] [--repeat 3] [--allocators]
    python benchmarks/bench_lss.py --remat [--cameras 5] [--repeat 3] [--dtype bfloat16]

Prints: forward time at batch 1 and 4, train-step time at batch 4 (forward, backward, Adam), splat forward and
forward+backward, the same per stage (image trunk + depth head, splat, BEV encoder), peak RSS, and FLOPs per
step from XLA's cost analysis with the achieved GFLOP/s. Random weights and images, real nuScenes rig geometry.
``--allocators`` runs the measurement three times: with glibc's malloc as shipped, tuned as for the PyTorch
reference (GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=8589934592), and
with transparent huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1, what ``python -m bevjax.train`` sets for
itself: see ``bevjax/training/host.py``). Each line of figures names its setting. A run without
``--allocators`` measures the environment it was given.

``--remat`` prints a table instead: for each ``LSS(remat=...)`` setting (none, blocks, full), in a fresh
subprocess so that peak RSS is its own, the train step's median time over ``--repeat`` steps, the process's
peak RSS once compiled and at the end, XLA's memory analysis of the compiled step (temporaries, arguments,
outputs), and the ratios of time and peak RSS to ``none``. The step donates its parameters, batch statistics
and optimiser state (``donate_argnums``), as a training loop does.

Measured on 2 shared CPU cores (jax 0.10.2, glibc malloc as shipped; step times noisy under the machine's load),
``python benchmarks/bench_lss.py --remat --repeat 3``::

    remat    step s  x none  peak RSS GB  x none  RSS compiled  XLA temp GB  args GB  out GB
    none      18.05    1.00         5.33    1.00          1.92         3.47     0.15    0.15
    blocks    21.20    1.17         5.55    1.04          2.00         3.61     0.15    0.15
    full      21.51    1.19         5.60    1.05          2.12         3.53     0.15    0.15

Before the depthwise convolution kept only its input for the backward pass and the kernel gradients took their
shifted copies one at a time (``bevjax/models/layers.py``), XLA's temporaries were 6.55 GB for ``none``: 2.7 GB
of shifted input copies kept by the depthwise convolutions, 1.2 GB of shifted copies for the BEV encoder's
kernel gradients. Rematerialisation does not lower the peak on XLA:CPU: its scheduler computes the
recomputation as soon as its inputs exist, i.e. during the forward pass, and keeps the results until the
backward pass (in the buffer dump of ``remat='blocks'`` the ``rematted_computation`` values of the first
MBConv blocks live from the forward pass to the end), so the trade is time for nothing there. The process
already peaks near 2 GB while compiling the step (``RSS compiled``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

TUNED = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=8589934592"
HUGE_PAGES = "glibc.malloc.hugetlb=1"


def timeit(fn, repeat: int) -> float:
    """Median wall time of ``fn()`` (blocking on its outputs) after one warm-up call."""
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def flops_of(jitted, *args) -> float:
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("flops", float("nan")))


def lss_train_step(model, tx):
    """``(params, batch_stats, opt_state, inputs, labels) -> (params, batch_stats, opt_state, loss)``: one LSS
    step (BCE with pos_weight 2.13, dropout on) with the optimiser ``tx``, not yet jitted."""
    import jax
    import optax

    from bevjax.losses import bce_with_logits

    def step(params, batch_stats, opt_state, x, y):
        def loss_fn(p):
            (logits, _), upd = model.apply(
                {"params": p, "batch_stats": batch_stats}, *x, train=True, rngs={"dropout": jax.random.PRNGKey(1)},
                mutable=["batch_stats"],
            )  # fmt: skip
            return bce_with_logits(logits, y, 2.13), upd["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    return step


def remat_step(args) -> dict:
    """One ``--remat`` setting in this process: compile and time a donated train step, measure peak RSS."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from bevjax.geometry import BEVGrid
    from bevjax.models.lss import LSS, LSSGeometry
    from bevjax.schema import NUSCENES_CAMERAS
    from bevjax.world.rig import camera_rig

    n, b = args.cameras, 4
    geometry = LSSGeometry((128, 352), 16, (4.0, 45.0, 1.0), BEVGrid())
    model = LSS(num_classes=1, geometry=geometry, remat=args.remat_one, dtype=jnp.dtype(args.dtype))
    intrinsics, cam_to_ego = camera_rig(NUSCENES_CAMERAS[:n], (128, 352))
    rng = np.random.default_rng(0)
    x = (
        rng.integers(0, 255, (b, n, 128, 352, 3), dtype=np.uint8),
        np.broadcast_to(intrinsics, (b, n, 3, 3)).copy(),
        np.broadcast_to(cam_to_ego, (b, n, 4, 4)).copy(),
        np.broadcast_to(np.eye(3, dtype=np.float32), (b, n, 3, 3)).copy(),
        np.zeros((b, n, 3), np.float32),
    )
    labels = (np.random.default_rng(1).random((b, 200, 200, 1)) < 0.2).astype(np.float32)
    variables = jax.jit(lambda r, *x: model.init(r, *x, train=False))(jax.random.PRNGKey(0), *x)
    tx = optax.chain(optax.clip_by_global_norm(5.0), optax.add_decayed_weights(1e-7), optax.adam(1e-3))
    params, stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)

    step = lss_train_step(model, tx)

    compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(params, stats, opt_state, x, labels).compile()
    mem = compiled.memory_analysis()
    rss_compiled = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    times = []
    for i in range(args.repeat + 1):  # the first step warms up
        start = time.perf_counter()
        params, stats, opt_state, loss = jax.block_until_ready(compiled(params, stats, opt_state, x, labels))
        if i:
            times.append(time.perf_counter() - start)
    return {
        "remat": args.remat_one,
        "step_s": sorted(times)[len(times) // 2],
        "rss_compiled_gb": rss_compiled,
        "rss_peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "temp_gb": mem.temp_size_in_bytes / 1e9,
        "argument_gb": mem.argument_size_in_bytes / 1e9,
        "output_gb": mem.output_size_in_bytes / 1e9,
        "loss": float(loss),
    }


def remat_table(args) -> None:
    """Runs :func:`remat_step` for each setting in its own subprocess and prints the table."""
    rows = []
    for remat in ("none", "blocks", "full"):
        cmd = [sys.executable, __file__, "--remat-one", remat, "--cameras", str(args.cameras),
               "--repeat", str(args.repeat), "--dtype", args.dtype]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"LSS train step, 128x352, {args.cameras} cameras, batch 4, 200x200 grid, D=41, {args.dtype}; "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(as shipped)')}")  # fmt: skip
    print(f"{'remat':<7s} {'step s':>7s} {'x none':>7s} {'peak RSS GB':>12s} {'x none':>7s} {'RSS compiled':>13s} "
          f"{'XLA temp GB':>12s} {'args GB':>8s} {'out GB':>7s}")  # fmt: skip
    base = rows[0]
    for r in rows:
        print(f"{r['remat']:<7s} {r['step_s']:7.2f} {r['step_s'] / base['step_s']:7.2f} {r['rss_peak_gb']:12.2f} "
              f"{r['rss_peak_gb'] / base['rss_peak_gb']:7.2f} {r['rss_compiled_gb']:13.2f} {r['temp_gb']:12.2f} "
              f"{r['argument_gb']:8.2f} {r['output_gb']:7.2f}")  # fmt: skip


def run(args) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from bevjax.geometry import BEVGrid
    from bevjax.geometry.frustum import create_frustum, frustum_to_ego
    from bevjax.models.bev_encoder import BevEncoder
    from bevjax.models.lss import LSS, CamEncoder, LSSGeometry, normalize_images
    from bevjax.ops.splat import splat
    from bevjax.schema import NUSCENES_CAMERAS
    from bevjax.world.rig import camera_rig

    n = args.cameras
    geometry = LSSGeometry((128, 352), 16, (4.0, 45.0, 1.0), BEVGrid())
    model = LSS(num_classes=1, geometry=geometry)
    intrinsics, cam_to_ego = camera_rig(NUSCENES_CAMERAS[:n], (128, 352))

    def inputs(b):
        rng = np.random.default_rng(0)
        return (
            rng.integers(0, 255, (b, n, 128, 352, 3), dtype=np.uint8),
            np.broadcast_to(intrinsics, (b, n, 3, 3)).copy(),
            np.broadcast_to(cam_to_ego, (b, n, 4, 4)).copy(),
            np.broadcast_to(np.eye(3, dtype=np.float32), (b, n, 3, 3)).copy(),
            np.zeros((b, n, 3), np.float32),
        )

    x1, x4 = inputs(1), inputs(4)
    variables = jax.jit(lambda r, *x: model.init(r, *x, train=False))(jax.random.PRNGKey(0), *x1)
    forward = jax.jit(lambda v, *x: model.apply(v, *x, train=False)[0])
    labels = (np.random.default_rng(1).random((4, 200, 200, 1)) < 0.2).astype(np.float32)
    tx = optax.chain(optax.clip_by_global_norm(5.0), optax.add_decayed_weights(1e-7), optax.adam(1e-3))
    opt_state = tx.init(variables["params"])

    step = lss_train_step(model, tx)

    train_step = jax.jit(step)
    params, stats = variables["params"], variables["batch_stats"]

    print(f"LSS 128x352, {n} cameras, 200x200 grid, D=41; jax {jax.__version__} on {jax.devices()[0].platform}; "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(as shipped)')}")  # fmt: skip
    t_f1 = timeit(lambda: forward(variables, *x1), args.repeat)
    t_f4 = timeit(lambda: forward(variables, *x4), args.repeat)
    t_step = timeit(lambda: train_step(params, stats, opt_state, x4, labels), args.repeat)
    before = resource.getrusage(resource.RUSAGE_SELF)
    jax.block_until_ready(train_step(params, stats, opt_state, x4, labels))
    after = resource.getrusage(resource.RUSAGE_SELF)
    faults, system = after.ru_minflt - before.ru_minflt, after.ru_stime - before.ru_stime
    flops = flops_of(train_step, params, stats, opt_state, x4, labels)
    print(
        f"forward batch 1: {t_f1:.3f} s | forward batch 4: {t_f4:.3f} s | train step batch 4: {t_step:.3f} s"
    )
    print(f"train step: {flops / 1e9:.0f} GFLOP (XLA cost analysis) -> {flops / t_step / 1e9:.0f} GFLOP/s; "
          f"{faults} minor page faults and {system:.2f} s of kernel time per step")  # fmt: skip

    # Per stage, batch 4: trunk + depth head, geometry + splat, BEV encoder (forward and forward+backward).
    cam = CamEncoder(geometry.depth_bins, 64, 16)
    imgs = normalize_images(jnp.asarray(x4[0]).reshape(4 * n, 128, 352, 3))
    cam_vars = {"params": params["camencode"], "batch_stats": stats["camencode"]}
    cam_f = jax.jit(lambda v, im: cam.apply(v, im, False)[0])
    cam_fb = jax.jit(jax.grad(lambda p, im: cam.apply({"params": p, "batch_stats": cam_vars["batch_stats"]}, im, True,
                                                      rngs={"dropout": jax.random.PRNGKey(0)},
                                                      mutable=["batch_stats"])[0][0].sum()))  # fmt: skip
    feats = jnp.asarray(np.random.default_rng(2).normal(size=(4, n, 41, 8, 22, 64)).astype(np.float32))
    frustum = create_frustum((128, 352), 16, (4.0, 45.0, 1.0))
    points = jax.jit(frustum_to_ego)(frustum, *x4[1:])
    grid = geometry.grid
    splat_f = jax.jit(lambda f, p: splat(f, p, grid))
    splat_fb = jax.jit(jax.grad(lambda f, p: (splat(f, p, grid) ** 2).sum()))
    bev = BevEncoder(1)
    bev_in = jnp.ones((4, 200, 200, 64))
    bev_vars = {"params": params["bevencode"], "batch_stats": stats["bevencode"]}
    bev_f = jax.jit(lambda v, x: bev.apply(v, x, False)[0])
    bev_fb = jax.jit(jax.grad(lambda p, x: bev.apply({"params": p, "batch_stats": bev_vars["batch_stats"]}, x, True,
                                                     mutable=["batch_stats"])[0][0].sum()))  # fmt: skip
    rows = [
        ("image trunk + depth head", lambda: cam_f(cam_vars, imgs), lambda: cam_fb(cam_vars["params"], imgs)),
        ("splat (voxel pooling)", lambda: splat_f(feats, points), lambda: splat_fb(feats, points)),
        ("BEV encoder", lambda: bev_f(bev_vars, bev_in), lambda: bev_fb(bev_vars["params"], bev_in)),
    ]
    for name, f, fb in rows:
        print(
            f"  {name:<26s} forward {timeit(f, args.repeat):.3f} s | forward+backward {timeit(fb, args.repeat):.3f} s"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak RSS: {peak:.2f} GB")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cameras", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--allocators", action="store_true")
    parser.add_argument("--remat", action="store_true", help="train step time and peak RSS per remat setting")
    parser.add_argument("--remat-one", choices=("none", "blocks", "full"), help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help="computation dtype of --remat (float32, bfloat16)")
    args = parser.parse_args()
    if args.remat_one:
        print(json.dumps(remat_step(args)))
        return
    if args.remat:
        remat_table(args)
        return
    if args.allocators:
        for tunables in (None, TUNED, HUGE_PAGES):
            env = dict(os.environ)
            env.pop("GLIBC_TUNABLES", None)
            if tunables:
                env["GLIBC_TUNABLES"] = tunables
            cmd = [sys.executable, __file__, "--cameras", str(args.cameras), "--repeat", str(args.repeat)]
            subprocess.run(cmd, env=env, check=True)
        return
    run(args)


if __name__ == "__main__":
    main()
