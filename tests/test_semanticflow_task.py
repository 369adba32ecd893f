"""The SemanticFlow task (bevjax/tasks/semanticflow.py) through the engine on ``configs/semanticflow.py:tiny``:
pseudo-labels computed once beside the split, 2 training steps with every loss term logged, evaluation with the
Argoverse 2 scene-flow, bucketed and instance metrics and the flow picture, and the evaluation on the real
Argoverse 2 pair (``evaluate(..., dataset='av2')``, raw sensor root). The evaluator against NumPy computations of
the same numbers, and the step's preprocessing against float64 NumPy.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bevjax.metrics.scene_flow import AV2_CATEGORIES, eval_mask, is_dynamic
from bevjax.ops.pointcloud import estimate_ground, range_mask, residual_flow
from bevjax.schema import SEMANTIC_CLASS_ID
from bevjax.tasks.semanticflow import (
    EVAL_KEYS,
    INPUT_KEYS,
    PSEUDO_KEYS,
    SceneFlowEvaluator,
    av2_categories,
    sweeps,
    take_points,
)

STEPS = 2
TERMS = ("chamfer", "static_flow", "dynamic_chamfer", "cluster", "rigid", "smooth", "instance", "focal", "separation")
AV2_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "av2" / "sensor"


def tiny_config(data_dir):
    spec = importlib.util.spec_from_file_location("semanticflow_config", "configs/semanticflow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("tiny")
    config.data.data_dir = str(data_dir)
    config.train.steps = STEPS
    config.train.checkpoint_every = STEPS
    config.eval.max_examples = 2
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fast_compile):
    """The tiny config trained in process (XLA convolutions, no backend optimisations: a shorter compile)."""
    from bevjax.training.trainer import train_and_evaluate

    data_dir = tmp_path_factory.mktemp("data")
    workdir = tmp_path_factory.mktemp("semanticflow")
    config = tiny_config(data_dir)
    result = train_and_evaluate(config, str(workdir))
    return config, workdir, result


def test_trains_with_every_term_and_stores_pseudo_labels(trained):
    config, workdir, _ = trained
    lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    train = [r for r in lines if "train/loss" in r]
    assert len(train) == STEPS
    for r in train:
        assert np.isfinite(r["train/loss"])
        for term in TERMS:
            assert np.isfinite(r[f"train/{term}"]), term
    derived = list(Path(config.data.data_dir, "bevjax_derived").glob("flow_pseudo_labels_*"))
    assert len(derived) == 1  # the offline pass, stored beside the split


def test_batches_hold_the_inputs_and_pseudo_labels(trained):
    from bevjax.data.pipeline import make_iterator
    from bevjax.tasks import make_task

    config, _, _ = trained
    task = make_task(config)
    batch = next(make_iterator(task.train_dataset(0, 2, 0, 1)))
    assert set(batch) == set(INPUT_KEYS + PSEUDO_KEYS)
    p = batch["lidar_points"].shape[1]
    assert batch["pseudo_flow0"].shape == (2, p, 3) and batch["pseudo_cluster0"].dtype == np.int32


def test_eval_json_picture_and_metrics(trained):
    _, workdir, result = trained
    saved = json.load(open(workdir / "eval.json"))
    assert saved["step"] == STEPS
    for key in ("EPE/Foreground/Dynamic", "EPE/Background/Static", "Dynamic IoU", "bucketed/Mean Static EPE",
                "instance/ARI", "instance/PQ", "EPE 3-Way Average"):  # fmt: skip
        assert key in saved and key in result, key
    assert saved["EPE/Background/Static"] >= 0 and -1 <= saved["instance/ARI"] <= 1
    assert (workdir / "prediction.png").stat().st_size > 1000


def test_evaluates_on_the_real_argoverse2_pair(trained, tmp_path):
    if not (AV2_ROOT / "val").is_dir():
        pytest.skip(f"real Argoverse 2 sample not found at {AV2_ROOT.resolve()} (shared test data absent)")
    from bevjax.training.trainer import evaluate

    config, workdir, _ = trained
    config = config.copy_and_resolve_references()
    config.data.data_dir = str(tmp_path)  # prepared here on first use
    config.data.av2.num_points = 30_000  # the first 30k points of each sweep: a shorter test
    result = evaluate(config, str(workdir), "av2", str(AV2_ROOT))
    assert np.isfinite(result["EPE/Background/Static"]) and np.isfinite(result["EPE/Foreground/Dynamic"])
    assert (workdir / "eval_av2.json").is_file() and (workdir / "prediction_av2.png").is_file()
    assert json.load(open(workdir / "eval_av2.json"))["split"] == "av2/val"


def _pair(seed: int = 0, p: int = 600):
    """A random sweep pair with ego motion, ground, padding, two moving objects and static foreground."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(-40, 40, (p, 3)) * [1, 1, 0.05]
    yaw = 0.03
    t = np.eye(4)
    t[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    t[:3, 3] = [-1.2, 0.1, 0.0]
    instance = np.where(rng.random(p) < 0.3, rng.integers(1, 6, p), 0).astype(np.int32)
    motion = np.zeros((p, 3))
    motion[instance == 1] = [0.8, 0.0, 0.0]
    motion[instance == 2] = [0.0, -0.3, 0.0]
    flow = points @ t[:3, :3].T + t[:3, 3] - points + motion
    classes = np.where(instance > 0, SEMANTIC_CLASS_ID["vehicle"], SEMANTIC_CLASS_ID["building"])
    classes[instance == 3] = SEMANTIC_CLASS_ID["pedestrian"]
    return {
        "lidar_points": points.astype(np.float32),
        "lidar_valid": rng.random(p) < 0.95,
        "lidar_ground": rng.random(p) < 0.2,
        "next_lidar_points": (rng.uniform(-40, 40, (p, 3)) * [1, 1, 0.05]).astype(np.float32),
        "next_lidar_valid": rng.random(p) < 0.95,
        "next_ego_from_ego": t.astype(np.float32),
        "lidar_flow": flow.astype(np.float32),
        "lidar_instance": instance,
        "lidar_class": classes.astype(np.uint8),
    }


def test_evaluator_scores_truth_zero_and_ego_motion_as_numpy_does():
    ex = _pair()
    points = ex["lidar_points"].astype(np.float64)
    t = ex["next_ego_from_ego"].astype(np.float64)
    truth = residual_flow(points, ex["lidar_flow"].astype(np.float64), t)
    instance = ex["lidar_instance"]

    perfect = SceneFlowEvaluator()
    perfect.add(ex, truth, instance)
    r = perfect.result()
    for key in ("EPE/Foreground/Dynamic", "EPE/Foreground/Static", "EPE/Background/Static"):
        assert r[key] == pytest.approx(0.0, abs=2e-6), key
    assert r["Dynamic IoU"] == pytest.approx(1.0)
    assert r["instance/ARI"] == pytest.approx(1.0) and r["instance/PQ"] == pytest.approx(1.0)

    ego_only = SceneFlowEvaluator()
    ego_only.add(ex, np.zeros_like(truth), np.zeros_like(instance))
    r = ego_only.result()
    mask = eval_mask(points, ex["lidar_ground"]) & ex["lidar_valid"]
    dyn = is_dynamic(points, ex["lidar_flow"].astype(np.float64), t) & mask
    fg = instance > 0
    expected = np.linalg.norm(truth[dyn & fg], axis=1).mean()
    assert r["EPE/Foreground/Dynamic"] == pytest.approx(expected, rel=1e-6)
    assert r["EPE/Background/Static"] == pytest.approx(0.0, abs=2e-6)
    assert r["Dynamic IoU"] == 0.0  # nothing predicted dynamic
    assert r["instance/ARI"] == pytest.approx(0.0)  # one predicted segment for several objects


def test_av2_categories_map_the_schema_classes():
    cls = np.array([SEMANTIC_CLASS_ID[c] for c in ("vehicle", "pedestrian", "pole", "vehicle", "building")])
    instance = np.array([3, 4, 5, 0, 0])
    got = av2_categories(cls, instance)
    names = ("BACKGROUND",) + AV2_CATEGORIES
    assert [names[i] for i in got] == ["REGULAR_VEHICLE", "PEDESTRIAN", "SIGN", "BACKGROUND", "BACKGROUND"]


def test_step_inputs_match_numpy():
    ex = _pair(1)
    batch = {k: jnp.asarray(np.stack([ex[k], ex[k]])) for k in INPUT_KEYS}
    pc0, pc1, valid0, valid1 = jax.jit(sweeps)(batch)[:4]
    points, t = ex["lidar_points"].astype(np.float64), ex["next_ego_from_ego"].astype(np.float64)
    np.testing.assert_allclose(pc0[0], points @ t[:3, :3].T + t[:3, 3], atol=1e-4)
    np.testing.assert_array_equal(pc1[1], ex["next_lidar_points"])
    np.testing.assert_array_equal(valid0[0], range_mask(points, ex["lidar_valid"]) & ~ex["lidar_ground"])
    ground1 = np.asarray(estimate_ground(ex["next_lidar_points"], ex["next_lidar_valid"]))
    np.testing.assert_array_equal(valid1[0], range_mask(ex["next_lidar_points"], ex["next_lidar_valid"]) & ~ground1)
    assert set(EVAL_KEYS) <= set(ex)


def test_capacity_keeps_the_valid_points_first():
    ex = _pair(2)
    batch = {k: jnp.asarray(np.stack([ex[k], ex[k]])) for k in INPUT_KEYS}
    full = sweeps(batch)
    n0 = int(full.valid0[0].sum())
    for capacity, key in ((n0 + 20, None), (n0 - 30, None), (n0 - 30, jax.random.key(3))):
        sw = jax.jit(sweeps, static_argnums=(1, 2, 3))(batch, 2.0, 50.0, capacity, key)
        assert sw.pc0.shape == (2, capacity, 3)
        index, kept = np.asarray(sw.index0[0]), np.asarray(sw.valid0[0])
        assert len(set(index.tolist())) == capacity  # distinct positions
        assert np.all(np.asarray(full.valid0[0])[index[kept]])  # only valid points are kept
        assert int(kept.sum()) == min(n0, capacity) and int(sw.dropped0[0]) == max(0, n0 - capacity)
        assert np.all(kept[: kept.sum()]) and not np.any(kept[kept.sum():])  # the kept points first
        np.testing.assert_allclose(sw.pc0[0], np.asarray(full.pc0[0])[index], atol=1e-5)
        # per-point keys follow the points
        np.testing.assert_array_equal(take_points(batch["lidar_points"], sw.index0)[0], ex["lidar_points"][index])
