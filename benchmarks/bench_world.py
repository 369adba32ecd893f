"""Rendering cost of world samples, per stage.

    python benchmarks/bench_world.py [--config default|tiny] [--samples 8] [--domain boston]

Prints samples per second for full samples (6 cameras 128x352 with labels, two LiDAR sweeps, BEV labels)
and the time of each stage, after one warm-up sample (compilation) and with the sequence layout cached as it
is when a split is prepared in order.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bevjax.world import WorldConfig, render_sample, tiny_config
from bevjax.world import sample as S
from bevjax.world.config import parse_domain, sequence_rng
from bevjax.world.layout import generate_scene
from bevjax.world.rig import camera_rig


def _time(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", choices=("default", "tiny"), default="default")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--domain", default="boston")
    args = parser.parse_args()
    config = WorldConfig() if args.config == "default" else tiny_config()
    print(
        f"config={args.config}: {len(config.cameras)} cameras {config.image_hw[0]}x{config.image_hw[1]}, "
        f"LiDAR {config.lidar_beams}x{config.lidar_azimuths}, grid {config.grid.shape[:2]}, domain {args.domain}"
    )
    start = time.perf_counter()
    render_sample(config, args.domain, "bench", 0)
    print(f"first sample (compilation + layout): {time.perf_counter() - start:.2f} s")

    n = args.samples
    start = time.perf_counter()
    for i in range(1, n + 1):
        render_sample(config, args.domain, "bench", i % config.frames_per_sequence)
    per = (time.perf_counter() - start) / n
    print(f"full sample: {per:.3f} s -> {1 / per:.2f} samples/s")

    dom = parse_domain(args.domain)
    t_layout, scene = _time(
        lambda: generate_scene(config, dom, sequence_rng(config, args.domain, "bench", 1)), 2
    )
    scene = S.scene_for(config, args.domain, "bench", 0)
    ego = S.ego_pose(scene, 0.0)
    rows = S.nearest_rows(
        np.concatenate([S.agent_rows(scene, 0.0), S.static_rows(scene)]), ego[:2, 3], config.max_boxes
    )
    intrinsics, cam_to_ego = camera_rig(config.cameras, config.image_hw)
    light = S.lighting(dom, scene, ego, 0.0)
    import jax

    def cameras():
        out = S.render_cameras(
            intrinsics, (ego @ cam_to_ego).astype(np.float32), rows, S._scene_arrays(scene), light, S.NO_WARP,
            jax.random.PRNGKey(0), image_hw=tuple(config.image_hw), supersample=config.supersample,
            far=float(config.far),
        )  # fmt: skip
        return jax.block_until_ready(out)

    t_cam, (_, depth, _, instance) = _time(cameras, 3)
    t_lidar, _ = _time(lambda: S._lidar(config, scene, ego, rows), 3)
    agents = S.agent_rows(scene, 0.0)
    t_labels, fp = _time(lambda: S.object_footprints(config, ego, agents), 3)
    t_bev, _ = _time(lambda: S.bev_labels(config, scene, ego, fp), 3)
    t_vis, _ = _time(
        lambda: S.bev_visibility(config, intrinsics, cam_to_ego, np.asarray(depth), np.asarray(instance), fp),
        3,
    )
    print(f"layout per sequence ({config.frames_per_sequence} frames): {t_layout:.2f} s")
    print(f"cameras: {t_cam:.3f} s | one LiDAR sweep: {t_lidar:.3f} s (two per sample) | object footprints: "
          f"{t_labels:.3f} s | BEV labels: {t_bev:.3f} s | visibility: {t_vis:.3f} s")  # fmt: skip


if __name__ == "__main__":
    main()
