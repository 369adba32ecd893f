"""Tests of the Argoverse 2 scene-flow metrics: hand-computed cases, brute force, and the official ``av2`` values.

The official values on the real sample pair (``OFFICIAL``) were produced with av2 0.3.6 by

    pip install av2==0.3.6 --no-deps && python tests/test_scene_flow_metrics.py

which calls ``av2.evaluation.scene_flow.eval.compute_metrics`` (pure NumPy) with the few modules that its import
needs but the call does not (pandas, click, rich, universal_pathlib) replaced by empty stand-ins when missing.
When av2 imports for real, ``test_matches_av2_live`` compares against it directly.
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from bevjax.geometry.transforms import pose2d
from bevjax.metrics import scene_flow as sf

LOG_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "av2" / "sensor" / "val"
LOG_DIR = LOG_DIR / "7fab2350-7eaf-3b7e-a39d-6937a4c1bede"

# Hand-computed cases -------------------------------------------------------------------------------------------


def test_end_point_error():
    pred = np.array([[3.0, 4.0, 0.0], [1.0, 1.0, 1.0]])
    gt = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 3.0]])
    np.testing.assert_allclose(sf.end_point_error(pred, gt), [5.0, 2.0])
    assert sf.end_point_error(pred.astype(np.float16), gt).dtype == np.float64


def test_accuracy_absolute_and_relative():
    gt = np.array([[1.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [0.0, 0, 0], [10.0, 0, 0], [0.0, 0, 0]])
    pred = np.array([[1.04, 0, 0], [1.07, 0, 0], [2.09, 0, 0], [0.2, 0, 0], [10.0, 0.8, 0], [0.0, 0.08, 0]])
    # EPE:      0.04   0.07   0.09   0.2   0.8   0.08
    # relative: 0.04   0.07   0.045  huge  0.08  huge
    np.testing.assert_array_equal(sf.accuracy_strict(pred, gt), [True, False, True, False, False, False])
    np.testing.assert_array_equal(sf.accuracy_relax(pred, gt), [True, True, True, False, True, True])


def test_angle_error_uses_time_axis():
    gt = np.array([[0.0, 0, 0], [0.1, 0, 0], [0.1, 0, 0], [0.3, -0.2, 0.1]])
    pred = np.array([[0.1, 0, 0], [-0.1, 0, 0], [0.1, 0, 0], [0.3, -0.2, 0.1]])
    # (0.1, 0, 0, 0.1) vs (0, 0, 0, 0.1): 45 degrees; (-0.1, .., 0.1) vs (0.1, .., 0.1): 90 degrees.
    np.testing.assert_allclose(sf.angle_error(pred, gt), [math.pi / 4, math.pi / 2, 0.0, 0.0], atol=1e-7)
    # With a 1 s time axis the same flows are closer to parallel: atan(0.1).
    np.testing.assert_allclose(sf.angle_error(pred[:1], gt[:1], time_delta=1.0), [math.atan(0.1)])


def test_rigid_flow_and_dynamic():
    motion = pose2d(-0.6, 0.1, 0.05, 0.02)  # next_ego_from_ego
    pts = np.array([[10.0, 0, 0], [0.0, 5, 1], [-20.0, 3, 0.5]])
    rigid = sf.rigid_flow(pts, motion)
    np.testing.assert_allclose(rigid, (motion[:3, :3] @ pts.T).T + motion[:3, 3] - pts)
    np.testing.assert_allclose(sf.rigid_flow(pts, pose2d(1.0, 2.0, 0.0)), np.tile([1.0, 2.0, 0.0], (3, 1)))
    extra = np.array([[0.0, 0, 0], [0.049, 0, 0], [0.0, 0.03, 0.04]])  # |.| = 0, 0.049, 0.05
    np.testing.assert_array_equal(sf.is_dynamic(pts, rigid + extra, motion), [False, False, True])


def test_eval_mask_and_close():
    pts = np.array([[50.0, -50.0, 3], [50.01, 0, 0], [0, -51, 0], [1, 1, 0], [34.9, 35.0, 0], [36, 0, 0]])
    ground = np.array([False, False, False, True, False, False])
    np.testing.assert_array_equal(sf.eval_mask(pts, ground), [True, False, False, False, True, True])
    np.testing.assert_array_equal(
        sf.within_box(pts, sf.CLOSE_RANGE_M), [False, False, False, True, True, False]
    )


def test_segmentation_counts_and_dynamic_iou():
    pred = np.array([True, True, False, False, True])
    gt = np.array([True, False, True, False, True])
    assert sf.segmentation_counts(pred, gt) == {"TP": 2, "TN": 1, "FP": 1, "FN": 1}
    acc = sf.SceneFlowAccumulator()
    zeros = np.zeros((5, 3))
    acc.update(zeros, pred, zeros, np.ones(5, int), gt, np.ones(5, bool))
    assert acc.result()["Dynamic IoU"] == pytest.approx(2 / 4)


def _random_example(rng, n):
    return {
        "pred_flow": rng.normal(0, 0.3, (n, 3)),
        "pred_dynamic": rng.random(n) < 0.3,
        "gt_flow": rng.normal(0, 0.3, (n, 3)) * (rng.random((n, 1)) < 0.7),
        "gt_class": rng.integers(0, 4, n) * (rng.random(n) < 0.5),
        "gt_dynamic": rng.random(n) < 0.4,
        "close": rng.random(n) < 0.6,
        "valid": rng.random(n) < 0.9,
    }


def test_accumulator_brute_force():
    """Every subset average equals a per-point loop over all examples' points."""
    rng = np.random.default_rng(0)
    examples = [_random_example(rng, n) for n in (50, 1, 200)]
    acc = sf.SceneFlowAccumulator()
    for ex in examples:
        acc.update(**ex)
    res = acc.result()
    rows = []  # (group, motion, distance, epe, strict, relax, angle, pred_dyn, gt_dyn)
    for ex in examples:
        for i in range(len(ex["gt_flow"])):
            if not ex["valid"][i]:
                continue
            p, g = ex["pred_flow"][i], ex["gt_flow"][i]
            epe = math.sqrt(sum((a - b) ** 2 for a, b in zip(p, g, strict=True)))
            rel = epe / (math.sqrt(sum(b * b for b in g)) + 1e-10)
            p4, g4 = [*p, 0.1], [*g, 0.1]
            cos = sum(a * b for a, b in zip(p4, g4, strict=True)) / math.hypot(*p4) / math.hypot(*g4)
            rows.append(
                (
                    "Foreground" if ex["gt_class"][i] > 0 else "Background",
                    "Dynamic" if ex["gt_dynamic"][i] else "Static",
                    "Close" if ex["close"][i] else "Far",
                    epe,
                    float(epe < 0.05 or rel < 0.05),
                    float(epe < 0.1 or rel < 0.1),
                    math.acos(max(-1.0, min(1.0, cos))),
                    bool(ex["pred_dynamic"][i]),
                    bool(ex["gt_dynamic"][i]),
                )
            )
    for j, metric in enumerate(sf.FLOW_METRICS):
        for group, motion in (("Foreground", "Dynamic"), ("Foreground", "Static"), ("Background", "Static")):
            for dist in ("Close", "Far", None):
                sel = [r[3 + j] for r in rows if r[:2] == (group, motion) and (dist is None or r[2] == dist)]
                key = f"{metric}/{group}/{motion}" + (f"/{dist}" if dist else "")
                assert res[key] == pytest.approx(sum(sel) / len(sel), rel=1e-12), key
    assert "EPE/Background/Dynamic" not in res
    tp = sum(r[7] and r[8] for r in rows)
    fp = sum(r[7] and not r[8] for r in rows)
    fn = sum(r[8] and not r[7] for r in rows)
    assert res["Dynamic IoU"] == pytest.approx(tp / (tp + fp + fn))
    three = [res[f"EPE/{k}"] for k in ("Foreground/Dynamic", "Foreground/Static", "Background/Static")]
    assert res["EPE 3-Way Average"] == pytest.approx(sum(three) / 3)


def test_empty_subset_is_nan_and_perfect_prediction():
    flow = np.array([[0.3, 0, 0], [0.0, 0.01, 0]])
    acc = sf.SceneFlowAccumulator()
    acc.update(flow, [True, False], flow, [0, 0], [False, False], [True, True])
    res = acc.result()
    assert res["EPE/Background/Static"] == 0.0 and res["Accuracy Strict/Background/Static"] == 1.0
    assert res["Angle Error/Background/Static"] == pytest.approx(0.0, abs=1e-7)
    assert math.isnan(res["EPE/Foreground/Dynamic"]) and math.isnan(res["EPE/Background/Static/Far"])
    assert math.isnan(res["EPE 3-Way Average"])


def test_bucketed_epe_hand_computed():
    motion = pose2d(-0.5, 0.2, 0.03)  # next_ego_from_ego
    car, bollard, background = 19, 5, 0
    pts = np.array(
        [[1.0, 2, 0], [3, 1, 0], [5, 0, 1], [-4, 2, 0], [10, -10, 0], [2, 2, 0], [40, 0, 0], [0, 3, 0]]
    )
    extra = np.array(
        [[0.0, 0, 0], [0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [3.0, 0, 0], [0.04, 0, 0], [0, 0, 0], [0, 0, 0]]
    )
    cls = np.array([car, car, car, car, car, bollard, car, background])
    gt = sf.rigid_flow(pts, motion) + extra
    err = np.array(
        [[0.1, 0, 0], [0, 0.1, 0], [0, 0.1, 0], [0, 0, 0.3], [-3.0, 0, 0], [9, 9, 9], [5, 5, 5], [0, 0.2, 0]]
    )
    acc = sf.BucketedEPEAccumulator()
    acc.update(gt + err, gt, cls, pts, motion)
    res = acc.result()
    # CAR: static bucket EPE 0.1; bucket [0.48, 0.52): EPE 0.2 / speed 0.5; bucket [2, inf): 3 / 3.
    # The bollard (not scored) and the point at x = 40 m (beyond 35 m) are left out.
    assert res["CAR/Static EPE"] == pytest.approx(0.1)
    assert res["CAR/Dynamic Normalized EPE"] == pytest.approx((0.4 + 1.0) / 2)
    assert res["BACKGROUND/Static EPE"] == pytest.approx(0.2)
    assert math.isnan(res["BACKGROUND/Dynamic Normalized EPE"]) and math.isnan(res["PEDESTRIAN/Static EPE"])
    assert res["Mean Static EPE"] == pytest.approx(0.15)
    assert res["Mean Dynamic Normalized EPE"] == pytest.approx(0.7)
    assert acc.counts.sum() == 6 and acc.counts[1, 12] == 2 and acc.counts[1, -1] == 1
    # A speed on an edge falls in the bucket above it: 0.04 m -> bucket 1.
    np.testing.assert_array_equal(np.searchsorted(acc.edges, [0.0, 0.04, 2.0], side="right") - 1, [0, 1, 50])


# The real pair against the official av2 implementation ----------------------------------------------------------

_AV2_NAMES = {"EPE": "EPE", "ACCURACY_STRICT": "Accuracy Strict", "ACCURACY_RELAX": "Accuracy Relax"}
_AV2_NAMES["ANGLE_ERROR"] = "Angle Error"

# Output of ``python tests/test_scene_flow_metrics.py`` (av2 0.3.6); subsets without points are left out.
OFFICIAL = {
    "zero": {
        "EPE/Background/Static": 0.14059620177723223,
        "EPE/Background/Static/Close": 0.13284348542466942,
        "EPE/Background/Static/Far": 0.27235645984947493,
        "EPE/Foreground/Dynamic": 0.6476726536564674,
        "EPE/Foreground/Dynamic/Close": 0.6476726536564674,
        "EPE/Foreground/Static": 0.08454203313383848,
        "EPE/Foreground/Static/Close": 0.07500852281473945,
        "EPE/Foreground/Static/Far": 0.2737455456205734,
        "Accuracy Strict/Background/Static": 0.13183716672388146,
        "Accuracy Strict/Foreground/Static": 0.5511439114391143,
        "Accuracy Strict/Foreground/Dynamic": 0.0,
        "Accuracy Relax/Background/Static": 0.23174848380821605,
        "Accuracy Relax/Foreground/Static": 0.584649446494465,
        "Accuracy Relax/Foreground/Dynamic": 0.0,
        "Angle Error/Background/Static": 0.8762435108216122,
        "Angle Error/Foreground/Static": 0.5923688600126112,
        "Angle Error/Foreground/Dynamic": 1.3635388327065476,
        "Dynamic IoU": 0.0,
    },
    "ego_motion": {
        "EPE/Background/Static": 6.955566739922216e-07,
        "EPE/Background/Static/Close": 6.399407227147802e-07,
        "EPE/Background/Static/Far": 1.6407701656255854e-06,
        "EPE/Foreground/Dynamic": 0.6737206772322435,
        "EPE/Foreground/Dynamic/Close": 0.6737206772322435,
        "EPE/Foreground/Static": 0.006244632123144552,
        "EPE/Foreground/Static/Close": 0.0062815032697843875,
        "EPE/Foreground/Static/Far": 0.005512881674446262,
        "Accuracy Strict/Background/Static": 1.0,
        "Accuracy Strict/Foreground/Static": 1.0,
        "Accuracy Strict/Foreground/Dynamic": 0.0,
        "Accuracy Relax/Background/Static": 1.0,
        "Accuracy Relax/Foreground/Static": 1.0,
        "Accuracy Relax/Foreground/Dynamic": 0.025288620120945574,
        "Angle Error/Background/Static": 3.4170669467366396e-06,
        "Angle Error/Foreground/Static": 0.05037005529390429,
        "Angle Error/Foreground/Dynamic": 1.5961337235714848,
        "Dynamic IoU": 0.0,
    },
}


def _load_pair() -> dict:
    """The real pair's first sweep and labels, float64, with zero and ego-motion-only predictions."""
    from bevjax.data.av2 import AV2Log

    log = AV2Log(LOG_DIR)
    labels = log.load_flow_labels()
    points = log.load_sweep(log.lidar_timestamps()[0])["lidar_points"].astype(np.float64)
    motion = log.load_ego_motion()
    return {
        "points": points,
        "gt_flow": labels["lidar_flow"].astype(np.float64),
        "gt_class": labels["category_index"],
        "gt_dynamic": labels["dynamic"],
        "is_ground": labels["lidar_ground"],
        "next_ego_from_ego": motion,
        "predictions": {"zero": np.zeros_like(points), "ego_motion": sf.rigid_flow(points, motion)},
    }


@pytest.fixture(scope="module")
def real_pair() -> dict:
    if not LOG_DIR.is_dir():
        pytest.skip(f"real Argoverse 2 sample log not found at {LOG_DIR.resolve()} (shared test data absent)")
    return _load_pair()


def _ours(pair: dict, name: str) -> dict[str, float]:
    pred = pair["predictions"][name]
    return sf.evaluate_pair(
        pred,
        np.zeros(len(pred), bool),
        pair["points"],
        pair["gt_flow"],
        pair["gt_class"],
        pair["is_ground"],
        pair["next_ego_from_ego"],
    )


def _official(pair: dict, name: str) -> dict[str, float]:
    """av2's per-subset averages of one example, named as ``SceneFlowAccumulator.result`` names them."""
    from av2.evaluation.scene_flow import constants as av2_constants
    from av2.evaluation.scene_flow import eval as av2_eval

    mask = sf.eval_mask(pair["points"], pair["is_ground"])
    n = int(mask.sum())
    res = av2_eval.compute_metrics(
        pair["predictions"][name][mask],
        np.zeros(n, bool),
        pair["gt_flow"][mask],
        pair["gt_class"][mask],
        pair["gt_dynamic"][mask],
        sf.within_box(pair["points"][mask], 35.0),
        np.ones(n, bool),
        av2_constants.FOREGROUND_BACKGROUND_BREAKDOWN,
    )
    out, totals = {}, {}
    for i, count in enumerate(res["Count"]):
        if count == 0 or (res["Class"][i], res["Motion"][i]) == ("Background", "Dynamic"):
            continue
        for av2_name, our_name in _AV2_NAMES.items():
            base = f"{our_name}/{res['Class'][i]}/{res['Motion'][i]}"
            out[f"{base}/{res['Distance'][i]}"] = float(res[av2_name][i])
            total = totals.setdefault(base, [0.0, 0])  # the challenge's count-weighted average over distances
            total[0] += float(res[av2_name][i]) * count
            total[1] += count
    out.update({k: s / c for k, (s, c) in totals.items()})
    tp, fp, fn = sum(res["TP"]), sum(res["FP"]), sum(res["FN"])
    out["Dynamic IoU"] = tp / (tp + fp + fn) if tp + fp + fn else float("nan")
    return out


def _compare(ours: dict, official: dict) -> None:
    for key, value in official.items():
        assert ours[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), key


def test_real_dynamic_labels_match_file(real_pair):
    pair = real_pair
    ours = sf.is_dynamic(pair["points"], pair["gt_flow"], pair["next_ego_from_ego"])
    np.testing.assert_array_equal(ours, pair["gt_dynamic"])
    assert ours.any() and not ours[pair["gt_class"] == 0].any()


@pytest.mark.parametrize("name", ["zero", "ego_motion"])
def test_matches_recorded_av2_values(real_pair, name):
    _compare(_ours(real_pair, name), OFFICIAL[name])


@pytest.mark.parametrize("name", ["zero", "ego_motion"])
def test_matches_av2_live(real_pair, name):
    try:
        import av2.evaluation.scene_flow.eval  # noqa: F401
    except ImportError as err:
        pytest.skip(
            f"av2 scene-flow evaluation not importable ({err}); the recorded values are tested instead"
        )
    official = _official(real_pair, name)
    assert set(official) >= set(OFFICIAL[name])
    _compare(_ours(real_pair, name), official)


def test_bucketed_epe_real_ego_motion(real_pair):
    pair = real_pair
    mask = sf.eval_mask(pair["points"], pair["is_ground"])
    results = {}
    for name in ("zero", "ego_motion"):
        acc = sf.BucketedEPEAccumulator()
        acc.update(
            pair["predictions"][name][mask],
            pair["gt_flow"][mask],
            pair["gt_class"][mask],
            pair["points"][mask],
            pair["next_ego_from_ego"],
        )
        results[name] = acc.result()
    # Ego motion alone is exact on static background and wrong by the whole speed on moving objects.
    assert results["ego_motion"]["BACKGROUND/Static EPE"] < 1e-5
    assert results["zero"]["BACKGROUND/Static EPE"] > 0.05
    assert results["ego_motion"]["Mean Dynamic Normalized EPE"] == pytest.approx(1.0, abs=0.05)


def test_category_indices_match_av2():
    constants = pytest.importorskip("av2.evaluation.scene_flow.constants", reason="av2 is not installed")
    expected = {name: i + 1 for i, name in enumerate(sf.AV2_CATEGORIES)}
    assert constants.CATEGORY_TO_INDEX == {"NONE": 0, **expected}


def _print_official() -> None:
    """Prints ``OFFICIAL`` from av2, standing in empty modules for the imports the metric code does not use."""
    for module in ("pandas", "click", "rich", "rich.progress", "upath"):
        try:
            __import__(module)
        except ImportError:
            stub = types.ModuleType(module)
            stub.track = stub.DataFrame = None
            stub.UPath = object
            stub.command = stub.argument = stub.option = lambda *a, **k: lambda f: f
            sys.modules[module] = stub
    pair = _load_pair()
    for name in ("zero", "ego_motion"):
        print(name, {k: v for k, v in sorted(_official(pair, name).items())})


if __name__ == "__main__":
    _print_official()
