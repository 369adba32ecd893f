"""SemanticFlow's experiment: does the full model beat its own pseudo-labels and the flow-only model in the world,
and ego motion alone on the real Argoverse 2 pair's moving objects? Two seeds per trained row.

    python benchmarks/semanticflow_experiment.py                 # train, evaluate, print the tables
    python benchmarks/semanticflow_experiment.py --seeds 0 --steps 100
    python benchmarks/semanticflow_experiment.py --summary       # only print the tables of what is finished
    python benchmarks/semanticflow_experiment.py --variant tiny --steps 3 --refine-steps 2   # a smoke run

Rows, each scored by ``bevjax.tasks.semanticflow.SceneFlowEvaluator`` (the Argoverse 2 challenge metrics over
non-ground points within 50 m, the bucketed EPE, instance ARI and PQ on foreground points):

1. ``zero flow``: every point stays where it was (flow 0).
2. ``ego motion``: the ego motion alone (residual 0): every point static.
3. ``pseudo-labels``: the coarse segmentation's rigid-fit pseudo-flow (``bevjax.flow_labels``) and its DBSCAN
   clusters as instances: what the network is trained from.
4. ``flow-only``: ``configs/semanticflow.py:flow``, SeFlow's four flow losses (the instance head untrained).
5. ``full``: ``configs/semanticflow.py``, all SemanticFlow losses with the authors' weights.
6. ``full + test-time refinement`` (the real pair only): the full model trained on the evaluated pair itself for
   ``--refine-steps`` steps with the same self-supervised losses and that pair's own pseudo-labels (no labels),
   then evaluated on it. This is test-time training, labelled as such.

World: trained on ``boston_train`` (6 sequences x 40 pairs), evaluated on the held-out ``boston_val`` (2 x 40).
Real: the Argoverse 2 sample pair of ``--av2-root`` (``../shared/data/av2/sensor``), pseudo-labelled with the
Argoverse 2 LiDAR origin; the world-trained models see it as they are (a domain gap: another LiDAR, real scenes).

Each run's workdir is ``<workdir>/<row>_s<seed>``; a finished run (its ``eval.json`` at the last step) is not
run again and a killed one resumes from its checkpoint. The tables go to stdout and ``<workdir>/summary.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AV2_ROOT = os.path.join(ROOT, "..", "shared", "data", "av2", "sensor")
TRAINED = {"flow-only": "flow", "full": "default"}
COLUMNS = (
    ("EPE 3-Way Average", "3-way EPE"),
    ("EPE/Foreground/Dynamic", "FD EPE"),
    ("EPE/Foreground/Static", "FS EPE"),
    ("EPE/Background/Static", "BS EPE"),
    ("Dynamic IoU", "dyn IoU"),
    ("bucketed/Mean Dynamic Normalized EPE", "bucketed dyn norm EPE"),
    ("instance/ARI", "ARI"),
    ("instance/PQ", "PQ"),
)


def load_config(variant: str):
    spec = importlib.util.spec_from_file_location("semanticflow_config", os.path.join(ROOT, "configs", "semanticflow.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.get_config(variant)


def variant_of(row: str, size: str) -> str:
    base = TRAINED[row]
    if size == "tiny":
        return "tiny" if base == "default" else f"{base}_tiny"
    return base


def finished(path: str, steps: int | None = None) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        result = json.load(f)
    return result if steps is None or int(result.get("step", -1)) == steps else None


def train_runs(rows, seeds, steps: int, size: str, base: str) -> None:
    todo = [(r, s) for r in rows for s in seeds]
    t0, done = time.time(), 0
    for i, (row, seed) in enumerate(todo):
        workdir = os.path.join(base, f"{row}_s{seed}")
        if finished(os.path.join(workdir, "eval.json"), steps) is not None:
            print(f"[{i + 1}/{len(todo)}] {row} seed {seed}: finished earlier", flush=True)
            continue
        eta = f" (ETA {(time.time() - t0) / done * (len(todo) - i) / 60:.0f} min)" if done else ""
        print(f"[{i + 1}/{len(todo)}] train {row} seed {seed} -> {workdir}{eta}", flush=True)
        os.makedirs(workdir, exist_ok=True)
        cmd = [
            sys.executable, "-m", "bevjax.train", f"--config=configs/semanticflow.py:{variant_of(row, size)}",
            f"--workdir={workdir}", f"--config.seed={seed}", f"--config.train.steps={steps}",
            f"--config.train.checkpoint_every={max(1, steps // 4)}", "--config.tensorboard=False",
        ]  # fmt: skip
        start = time.time()
        with open(os.path.join(workdir, "log.txt"), "a") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        if rc != 0:
            raise SystemExit(f"error: the run failed (exit {rc}); see {os.path.join(workdir, 'log.txt')}")
        with open(os.path.join(workdir, "wall.json"), "w") as f:
            json.dump({"minutes": (time.time() - start) / 60}, f)
        done += 1


def av2_config(variant: str, av2_root: str, capacity: int):
    """The run config of ``variant`` on the Argoverse 2 pair: its pseudo-label settings, batch 1."""
    import ml_collections

    module, config = load_config(variant)
    config.data.dataset = "av2"
    config.data.av2.root = os.path.abspath(av2_root)
    config.data.train_split = config.data.eval_split = "val"
    config.pseudo = ml_collections.ConfigDict(
        dict(origins=module.AV2_LIDAR_ORIGIN, azimuth_bins=1800, elevation_bins=64)
    )
    config.points.capacity = capacity
    config.train.batch_size = config.eval.batch_size = 1
    return config


def score_baselines(task, source, path: str) -> dict:
    """Zero flow, ego motion and the pseudo-labels of every pair of ``source`` (joined with its pseudo-labels)."""
    from bevjax.ops.pointcloud import ego_flow
    from bevjax.tasks.semanticflow import SceneFlowEvaluator

    done = finished(path)
    if done is not None:
        return done
    evaluators = {name: SceneFlowEvaluator() for name in ("zero flow", "ego motion", "pseudo-labels")}
    for i in range(len(source)):
        ex = source[i]
        ego = ego_flow(ex["lidar_points"].astype(np.float64), ex["next_ego_from_ego"].astype(np.float64))
        none = np.zeros(len(ex["lidar_points"]), np.int64)
        evaluators["zero flow"].add(ex, -ego, none)
        evaluators["ego motion"].add(ex, np.zeros_like(ego), none)
        evaluators["pseudo-labels"].add(ex, ex["pseudo_flow0"], ex["pseudo_cluster0"])
    out = {name: ev.result() for name, ev in evaluators.items()}
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    return out


def evaluate_baselines(size: str, av2_root: str | None, base: str) -> None:
    from bevjax.tasks import make_task

    _, config = load_config("tiny" if size == "tiny" else "default")
    task = make_task(config)
    print("baselines on the world's evaluation split ...", flush=True)
    score_baselines(task, task.with_pseudo_labels(task.eval_source()), os.path.join(base, "baselines_world.json"))
    if av2_root:
        print("baselines on the Argoverse 2 pair ...", flush=True)
        task = make_task(av2_config("tiny" if size == "tiny" else "default", av2_root, 65536))
        source, _ = task.av2_source(os.path.abspath(av2_root))
        score_baselines(task, task.with_pseudo_labels(source), os.path.join(base, "baselines_av2.json"))


def evaluate_on_av2(rows, seeds, steps: int, av2_root: str, size: str, base: str) -> None:
    from bevjax.training.trainer import evaluate

    for row in rows:
        for seed in seeds:
            workdir = os.path.join(base, f"{row}_s{seed}")
            if finished(os.path.join(workdir, "eval.json"), steps) is None:
                continue
            if finished(os.path.join(workdir, "eval_av2.json"), steps) is not None:
                continue
            print(f"evaluate {row} seed {seed} on the Argoverse 2 pair", flush=True)
            _, config = load_config(variant_of(row, size))
            evaluate(config, workdir, "av2", os.path.abspath(av2_root))


def refine(seeds, steps: int, refine_steps: int, lr: float, capacity: int, av2_root: str, size: str, base: str):
    from bevjax.training.trainer import train_and_evaluate

    for seed in seeds:
        trained = os.path.join(base, f"full_s{seed}")
        workdir = os.path.join(base, f"full_refined_s{seed}")
        if finished(os.path.join(trained, "eval.json"), steps) is None:
            continue
        if finished(os.path.join(workdir, "eval.json"), refine_steps) is not None:
            continue
        print(f"test-time refinement of full seed {seed} on the Argoverse 2 pair ({refine_steps} steps)", flush=True)
        config = av2_config(variant_of("full", size), av2_root, capacity)
        config.seed = seed
        config.init_from.workdir = trained
        config.train.steps = refine_steps
        config.train.checkpoint_every = refine_steps
        config.train.log_every = max(1, refine_steps // 10)
        config.optim.lr = lr
        config.tensorboard = False
        train_and_evaluate(config, workdir)


def _cell(values) -> str:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.ptp(values) / 2:.4f}"


def table(title: str, rows: list[tuple[str, list[dict]]]) -> list[str]:
    lines = ["", f"### {title}", "", "| row | " + " | ".join(c for _, c in COLUMNS) + " | runs |"]
    lines.append("|---" * (len(COLUMNS) + 2) + "|")
    for name, results in rows:
        cells = [_cell([r.get(k) for r in results]) for k, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(results)} |")
    return lines


def summary(seeds, steps: int, refine_steps: int, base: str) -> str:
    lines = []
    for where, eval_name, baselines in (("world", "eval.json", "baselines_world.json"),
                                        ("av2", "eval_av2.json", "baselines_av2.json")):  # fmt: skip
        rows = []
        stored = finished(os.path.join(base, baselines)) or {}
        for name in ("zero flow", "ego motion", "pseudo-labels"):
            rows.append((name, [stored[name]] if name in stored else []))
        for row in TRAINED:
            results = [finished(os.path.join(base, f"{row}_s{s}", eval_name), steps) for s in seeds]
            rows.append((row, [r for r in results if r is not None]))
        if where == "av2":
            results = [finished(os.path.join(base, f"full_refined_s{s}", "eval.json"), refine_steps) for s in seeds]
            rows.append((f"full + test-time refinement ({refine_steps} steps on the pair)",
                         [r for r in results if r is not None]))  # fmt: skip
        title = {
            "world": f"World, boston_val (models: {steps} steps; mean ± half the range over seeds {list(seeds)})",
            "av2": "Argoverse 2 sample pair (val/7fab2350), the world-trained models",
        }[where]
        lines += table(title, rows)
    minutes = 0.0
    for name in os.listdir(base) if os.path.isdir(base) else []:
        wall = os.path.join(base, name, "wall.json")
        if os.path.isfile(wall):
            with open(wall) as f:
                minutes += json.load(f)["minutes"]
    lines += ["", f"training time of the runs: {minutes:.1f} min"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--variant", default="default", choices=("default", "tiny"))
    parser.add_argument("--av2-root", default=AV2_ROOT, help="an Argoverse 2 sensor root ('' to skip)")
    parser.add_argument("--refine-steps", type=int, default=20)
    parser.add_argument("--refine-lr", type=float, default=2e-4)
    parser.add_argument("--refine-capacity", type=int, default=16384, help="points per sweep in refinement")
    parser.add_argument("--workdir", default="runs/semanticflow_experiment")
    parser.add_argument("--summary", action="store_true", help="only print the tables of what is finished")
    args = parser.parse_args()
    base = os.path.abspath(args.workdir)
    os.makedirs(base, exist_ok=True)
    av2 = args.av2_root if args.av2_root and os.path.isdir(os.path.join(args.av2_root, "val")) else None
    if args.av2_root and av2 is None:
        print(f"no Argoverse 2 sensor root at {args.av2_root}: the real-pair rows are skipped", flush=True)
    if not args.summary:
        train_runs(list(TRAINED), args.seeds, args.steps, args.variant, base)
        evaluate_baselines(args.variant, av2, base)
        if av2:
            evaluate_on_av2(list(TRAINED), args.seeds, args.steps, av2, args.variant, base)
            refine(args.seeds, args.steps, args.refine_steps, args.refine_lr, args.refine_capacity, av2,
                   args.variant, base)  # fmt: skip
    text = summary(args.seeds, args.steps, args.refine_steps, base)
    print(text)
    with open(os.path.join(base, "summary.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
