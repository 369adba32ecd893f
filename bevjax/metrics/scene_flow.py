"""Argoverse 2 scene-flow evaluation, in NumPy (float64 internally).

Definitions follow the Argoverse 2 scene-flow challenge (``av2.evaluation.scene_flow``):

- end-point error (EPE): ``||pred - gt||`` per point, metres per sweep pair (0.1 s);
- strict / relaxed accuracy: EPE < 0.05 m (0.1 m) or relative error ``EPE / (||gt|| + 1e-10)`` < 0.05 (0.1);
- angle error: the angle between the space-time vectors ``(flow, 0.1)`` of prediction and ground truth;
- dynamic: a point whose ground-truth flow differs from the ego-motion (rigid) flow by >= 0.05 m;
- evaluated points: not ground and within ``|x|, |y| <= 50 m`` of the ego vehicle; "close" points lie within
  ``|x|, |y| <= 35 m``; points whose flow could not be labelled (``valid`` false) are left out;
- breakdown: class (background = class 0, foreground = any object class) x motion (dynamic / static) x distance
  (close / far); each average is over all points of the subset in every example of the split (the challenge
  weights per-example means by point counts, which is the same thing);
- ``EPE 3-Way Average``: the mean of the EPE on foreground dynamic, foreground static and background static points;
- ``Dynamic IoU``: ``TP / (TP + FP + FN)`` of the predicted dynamic labels over all evaluated points.

Flows follow the Argoverse 2 convention (``bevjax.schema``): ``points + flow`` lies in the next sweep's ego frame,
so the flow of a static point is ``next_ego_from_ego @ p - p``.
"""

from __future__ import annotations

import numpy as np

SWEEP_PAIR_TIME_DELTA = 0.1  # seconds between the two sweeps of a pair
DYNAMIC_THRESHOLD = 0.05  # metres per sweep pair of motion beyond the ego motion
ACCURACY_STRICT_THRESHOLD = 0.05
ACCURACY_RELAX_THRESHOLD = 0.1
EVAL_RANGE_M = 50.0  # points with |x| or |y| beyond this are not evaluated
CLOSE_RANGE_M = 35.0  # the "close" / "far" split
EPS = 1e-10

FLOW_METRICS = ("EPE", "Accuracy Strict", "Accuracy Relax", "Angle Error")
CLASS_GROUPS = ("Background", "Foreground")
MOTIONS = ("Dynamic", "Static")
DISTANCES = ("Close", "Far")


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def end_point_error(pred_flow, gt_flow) -> np.ndarray:
    """[n] Euclidean distance between predicted and true flow vectors.

    Args:
      pred_flow, gt_flow: [n, 3] metres per sweep pair.
    """
    return np.linalg.norm(_f64(pred_flow) - _f64(gt_flow), axis=-1)


def accuracy(pred_flow, gt_flow, threshold: float) -> np.ndarray:
    """[n] bool: EPE < threshold (metres) or relative EPE ``EPE / (||gt|| + 1e-10)`` < threshold.

    Args:
      pred_flow, gt_flow: [n, 3].
      threshold: used both as an absolute (m) and as a relative bound.
    """
    epe = end_point_error(pred_flow, gt_flow)
    relative = epe / (np.linalg.norm(_f64(gt_flow), axis=-1) + EPS)
    return (epe < threshold) | (relative < threshold)


def accuracy_strict(pred_flow, gt_flow) -> np.ndarray:
    """[n] bool: ``accuracy`` at 0.05 (5 cm or 5 %)."""
    return accuracy(pred_flow, gt_flow, ACCURACY_STRICT_THRESHOLD)


def accuracy_relax(pred_flow, gt_flow) -> np.ndarray:
    """[n] bool: ``accuracy`` at 0.1 (10 cm or 10 %)."""
    return accuracy(pred_flow, gt_flow, ACCURACY_RELAX_THRESHOLD)


def angle_error(pred_flow, gt_flow, time_delta: float = SWEEP_PAIR_TIME_DELTA) -> np.ndarray:
    """[n] radians between the space-time vectors ``(flow_x, flow_y, flow_z, time_delta)``.

    Appending the time axis makes the angle defined for zero flows (two zero flows agree exactly).

    Args:
      pred_flow, gt_flow: [n, 3] metres per sweep pair.
      time_delta: the sweep interval, seconds.
    """
    pred, gt = _f64(pred_flow), _f64(gt_flow)
    t = np.full(pred.shape[:-1] + (1,), float(time_delta))
    pred4 = np.concatenate([pred, t], -1)  # n 4
    gt4 = np.concatenate([gt, t], -1)  # n 4
    pred4 /= np.linalg.norm(pred4, axis=-1, keepdims=True)
    gt4 /= np.linalg.norm(gt4, axis=-1, keepdims=True)
    cos = np.clip(np.einsum("nd,nd->n", pred4, gt4), -1.0, 1.0)
    return np.arccos(cos)


def transform_points(a_from_b, points) -> np.ndarray:
    """[n, 3] float64 points of frame b mapped into frame a by the 4x4 ``a_from_b``."""
    m, p = _f64(a_from_b), _f64(points)
    return p @ m[:3, :3].T + m[:3, 3]


def rigid_flow(points, next_ego_from_ego) -> np.ndarray:
    """[n, 3] the flow of static points under ego motion: ``next_ego_from_ego @ p - p``.

    Args:
      points: [n, 3] in this sweep's ego frame.
      next_ego_from_ego: [4, 4] this sweep's ego frame -> next sweep's ego frame.
    """
    return transform_points(next_ego_from_ego, points) - _f64(points)


def is_dynamic(points, flow, next_ego_from_ego, threshold: float = DYNAMIC_THRESHOLD) -> np.ndarray:
    """[n] bool: ``||flow - rigid_flow|| >= threshold``, i.e. the point moves beyond the ego motion.

    Args:
      points: [n, 3] ego frame; flow: [n, 3] (ego motion included); next_ego_from_ego: [4, 4].
    """
    residual = _f64(flow) - rigid_flow(points, next_ego_from_ego)
    return np.linalg.norm(residual, axis=-1) >= threshold


def within_box(points, half_size_m: float) -> np.ndarray:
    """[n] bool: ``|x| <= half_size_m`` and ``|y| <= half_size_m`` (ego frame)."""
    xy = np.abs(_f64(points)[:, :2])
    return np.all(xy <= half_size_m, axis=-1)


def eval_mask(points, is_ground, range_m: float = EVAL_RANGE_M) -> np.ndarray:
    """[n] bool: the points the challenge scores: not ground and within ``|x|, |y| <= range_m``.

    Args:
      points: [n, 3] ego frame; is_ground: [n] bool.
    """
    return within_box(points, range_m) & ~np.asarray(is_ground, bool)


def segmentation_counts(pred_dynamic, gt_dynamic) -> dict[str, int]:
    """``{TP, TN, FP, FN}`` of dynamic classification; inputs [n] bool."""
    pred, gt = np.asarray(pred_dynamic, bool), np.asarray(gt_dynamic, bool)
    return {
        "TP": int(np.sum(pred & gt)),
        "TN": int(np.sum(~pred & ~gt)),
        "FP": int(np.sum(pred & ~gt)),
        "FN": int(np.sum(~pred & gt)),
    }


def per_point_metrics(pred_flow, gt_flow) -> dict[str, np.ndarray]:
    """``{name: [n] float64}`` for each of ``FLOW_METRICS`` (accuracies as 0/1)."""
    return {
        "EPE": end_point_error(pred_flow, gt_flow),
        "Accuracy Strict": accuracy_strict(pred_flow, gt_flow).astype(np.float64),
        "Accuracy Relax": accuracy_relax(pred_flow, gt_flow).astype(np.float64),
        "Angle Error": angle_error(pred_flow, gt_flow),
    }


class SceneFlowAccumulator:
    """Sums per-point metrics per (class group, motion, distance) subset over a split; reports averages.

    ``sums[g, m, d, j]`` is the sum of ``FLOW_METRICS[j]`` over the points of class group ``g``, motion ``m``,
    distance ``d``; ``counts[g, m, d]`` their number; ``confusion`` the dynamic TP / TN / FP / FN.
    """

    def __init__(self):
        shape = (len(CLASS_GROUPS), len(MOTIONS), len(DISTANCES))
        self.sums = np.zeros(shape + (len(FLOW_METRICS),), np.float64)
        self.counts = np.zeros(shape, np.int64)
        self.confusion = dict.fromkeys(("TP", "TN", "FP", "FN"), 0)

    def update(self, pred_flow, pred_dynamic, gt_flow, gt_class, gt_dynamic, close, valid=None) -> None:
        """Adds one example's evaluated points (already masked with ``eval_mask``).

        Args:
          pred_flow, gt_flow: [n, 3] metres per sweep pair.
          pred_dynamic, gt_dynamic: [n] bool.
          gt_class: [n] int, 0 for background, an object category index otherwise.
          close: [n] bool, ``within_box(points, CLOSE_RANGE_M)``.
          valid: optional [n] bool, points whose ground-truth flow is defined (default: all).
        """
        keep = np.ones(len(gt_flow), bool) if valid is None else np.asarray(valid, bool)
        pred_flow, gt_flow = _f64(pred_flow)[keep], _f64(gt_flow)[keep]
        pred_dyn, gt_dyn = np.asarray(pred_dynamic, bool)[keep], np.asarray(gt_dynamic, bool)[keep]
        group = (np.asarray(gt_class)[keep] > 0).astype(np.int64)  # 0 background, 1 foreground
        motion = (~gt_dyn).astype(np.int64)  # 0 dynamic, 1 static
        distance = (~np.asarray(close, bool)[keep]).astype(np.int64)  # 0 close, 1 far
        values = np.stack([v for v in per_point_metrics(pred_flow, gt_flow).values()], -1)  # n j
        flat = np.ravel_multi_index((group, motion, distance), self.counts.shape)  # n
        num = self.counts.size
        self.counts += np.bincount(flat, minlength=num).reshape(self.counts.shape)
        for j in range(values.shape[-1]):
            self.sums[..., j] += np.bincount(flat, weights=values[:, j], minlength=num).reshape(
                self.counts.shape
            )
        for key, value in segmentation_counts(pred_dyn, gt_dyn).items():
            self.confusion[key] += value

    def result(self) -> dict[str, float]:
        """Averages named as the challenge names them, e.g. ``EPE/Foreground/Dynamic/Close``, ``EPE/Background/Static``,
        ``Accuracy Strict/...``, ``Dynamic IoU``, ``EPE 3-Way Average``; NaN for an empty subset.

        Background dynamic subsets are left out, as in the challenge.
        """
        out = {}
        for j, metric in enumerate(FLOW_METRICS):
            for g, group in enumerate(CLASS_GROUPS):
                for m, motion in enumerate(MOTIONS):
                    if (group, motion) == ("Background", "Dynamic"):
                        continue
                    for d, dist in enumerate(DISTANCES):
                        out[f"{metric}/{group}/{motion}/{dist}"] = _mean(
                            self.sums[g, m, d, j], self.counts[g, m, d]
                        )
                    total = self.sums[g, m, :, j].sum()
                    out[f"{metric}/{group}/{motion}"] = _mean(total, self.counts[g, m].sum())
        c = self.confusion
        out["Dynamic IoU"] = _mean(c["TP"], c["TP"] + c["FP"] + c["FN"])
        three = ("EPE/Foreground/Dynamic", "EPE/Foreground/Static", "EPE/Background/Static")
        out["EPE 3-Way Average"] = float(np.mean([out[k] for k in three]))
        return out


def _mean(total, count) -> float:
    return float(total / count) if count > 0 else float("nan")


def evaluate_pair(
    pred_flow, pred_dynamic, points, gt_flow, gt_class, is_ground, next_ego_from_ego, valid=None
) -> dict[str, float]:
    """Challenge metrics of one sweep pair, from the raw labels of its first sweep.

    Args:
      pred_flow: [n, 3] predicted flow; pred_dynamic: [n] bool predicted dynamic labels.
      points: [n, 3] first sweep, ego frame.
      gt_flow: [n, 3] true flow (ego motion included); gt_class: [n] int (0 background); is_ground: [n] bool.
      next_ego_from_ego: [4, 4]; it defines which points are dynamic.
      valid: optional [n] bool.

    Returns:
      ``SceneFlowAccumulator.result()`` of this pair alone.
    """
    mask = eval_mask(points, is_ground)
    if valid is not None:
        mask &= np.asarray(valid, bool)
    pts = _f64(points)[mask]
    gt = _f64(gt_flow)[mask]
    acc = SceneFlowAccumulator()
    acc.update(
        pred_flow=_f64(pred_flow)[mask],
        pred_dynamic=np.asarray(pred_dynamic, bool)[mask],
        gt_flow=gt,
        gt_class=np.asarray(gt_class)[mask],
        gt_dynamic=is_dynamic(pts, gt, next_ego_from_ego),
        close=within_box(pts, CLOSE_RANGE_M),
    )
    return acc.result()


# Bucket-normalised EPE (Argoverse 2 2024 challenge) ------------------------------------------------------------
#
# Points are split by meta-class and by speed, the norm of the ego-motion-compensated ground-truth flow (metres per
# 0.1 s), into buckets [0, 0.04), [0.04, 0.08), ..., [1.96, 2.0), [2.0, inf). Per meta-class: "static EPE" is the
# mean EPE of the first bucket; "dynamic error" is the unweighted mean over the other non-empty buckets of
# (mean EPE / mean speed) of the bucket. Means over the split pool the points of every example. Only points with
# ``max(|x|, |y|) < 35 m`` count (the challenge's reported distance).

# av2 category names; a label's category index is its position here + 1 (0 is background).
AV2_CATEGORIES = (
    "ANIMAL", "ARTICULATED_BUS", "BICYCLE", "BICYCLIST", "BOLLARD", "BOX_TRUCK", "BUS", "CONSTRUCTION_BARREL",
    "CONSTRUCTION_CONE", "DOG", "LARGE_VEHICLE", "MESSAGE_BOARD_TRAILER", "MOBILE_PEDESTRIAN_CROSSING_SIGN",
    "MOTORCYCLE", "MOTORCYCLIST", "OFFICIAL_SIGNALER", "PEDESTRIAN", "RAILED_VEHICLE", "REGULAR_VEHICLE",
    "SCHOOL_BUS", "SIGN", "STOP_SIGN", "STROLLER", "TRAFFIC_LIGHT_TRAILER", "TRUCK", "TRUCK_CAB",
    "VEHICULAR_TRAILER", "WHEELCHAIR", "WHEELED_DEVICE", "WHEELED_RIDER",
)  # fmt: skip
# Meta-classes of the bucketed evaluation; categories in none of them (road signs, animals) are not scored.
BUCKETED_META_CLASSES = {
    "BACKGROUND": ("BACKGROUND",),
    "CAR": ("REGULAR_VEHICLE",),
    "OTHER_VEHICLES": (
        "BOX_TRUCK", "LARGE_VEHICLE", "RAILED_VEHICLE", "TRUCK", "TRUCK_CAB", "VEHICULAR_TRAILER",
        "ARTICULATED_BUS", "BUS", "SCHOOL_BUS",
    ),
    "PEDESTRIAN": ("PEDESTRIAN", "STROLLER", "WHEELCHAIR", "OFFICIAL_SIGNALER"),
    "WHEELED_VRU": ("BICYCLE", "BICYCLIST", "MOTORCYCLE", "MOTORCYCLIST", "WHEELED_DEVICE", "WHEELED_RIDER"),
}  # fmt: skip
BUCKET_MAX_SPEED = 2.0  # metres per sweep pair (20 m/s)
NUM_BUCKET_EDGES = 51
BUCKET_DISTANCE_M = 35.0


def speed_bucket_edges(max_speed: float = BUCKET_MAX_SPEED, num_edges: int = NUM_BUCKET_EDGES) -> np.ndarray:
    """[num_edges + 1] bucket edges: ``linspace(0, max_speed, num_edges)`` then ``inf``; bucket i is [e_i, e_i+1)."""
    return np.concatenate([np.linspace(0.0, max_speed, num_edges), [np.inf]])


def meta_class_of_category() -> np.ndarray:
    """[31] int: index into ``BUCKETED_META_CLASSES`` of each av2 category index, -1 where not scored."""
    names = ("BACKGROUND",) + AV2_CATEGORIES
    lookup = np.full(len(names), -1, np.int64)
    for m, members in enumerate(BUCKETED_META_CLASSES.values()):
        for name in members:
            lookup[names.index(name)] = m
    return lookup


class BucketedEPEAccumulator:
    """Sums EPE, speed and counts per (meta-class, speed bucket) over a split; reports bucket-normalised EPE."""

    def __init__(self, edges=None, distance_m: float = BUCKET_DISTANCE_M):
        self.edges = speed_bucket_edges() if edges is None else np.asarray(edges, np.float64)
        self.distance_m = float(distance_m)
        shape = (len(BUCKETED_META_CLASSES), len(self.edges) - 1)
        self.epe_sum, self.speed_sum = np.zeros(shape), np.zeros(shape)
        self.counts = np.zeros(shape, np.int64)
        self._meta = meta_class_of_category()

    def update(self, pred_flow, gt_flow, gt_class, points, next_ego_from_ego) -> None:
        """Adds one example's evaluated points (already masked with ``eval_mask``).

        Args:
          pred_flow, gt_flow: [n, 3] metres per sweep pair, ego motion included.
          gt_class: [n] int av2 category index (0 background).
          points: [n, 3] first sweep, ego frame.
          next_ego_from_ego: [4, 4]; its rigid flow is removed from the ground truth to get the speed.
        """
        speed = np.linalg.norm(_f64(gt_flow) - rigid_flow(points, next_ego_from_ego), axis=-1)  # n
        meta = self._meta[np.asarray(gt_class, np.int64)]  # n
        near = np.max(np.abs(_f64(points)[:, :2]), axis=-1) < self.distance_m
        bucket = np.searchsorted(self.edges, speed, side="right") - 1  # n; [e_i, e_i+1) -> i
        keep = near & (meta >= 0)
        flat = np.ravel_multi_index((meta[keep], bucket[keep]), self.counts.shape)
        size = self.counts.size
        epe = end_point_error(pred_flow, gt_flow)[keep]
        self.epe_sum += np.bincount(flat, weights=epe, minlength=size).reshape(self.counts.shape)
        self.speed_sum += np.bincount(flat, weights=speed[keep], minlength=size).reshape(self.counts.shape)
        self.counts += np.bincount(flat, minlength=size).reshape(self.counts.shape)

    def normalized_error_matrix(self) -> np.ndarray:
        """[classes, buckets]: mean EPE in bucket 0, mean EPE / mean speed in the others; NaN where empty."""
        with np.errstate(invalid="ignore", divide="ignore"):
            count = np.where(self.counts > 0, self.counts, np.nan)
            epe, speed = self.epe_sum / count, self.speed_sum / count
            out = epe.copy()
            out[:, 1:] = epe[:, 1:] / speed[:, 1:]
        return out

    def result(self) -> dict[str, float]:
        """``{<CLASS>/Static EPE, <CLASS>/Dynamic Normalized EPE}`` per meta-class and their NaN-skipping means
        ``Mean Static EPE``, ``Mean Dynamic Normalized EPE``."""
        errors = self.normalized_error_matrix()
        static = errors[:, 0]
        dynamic = np.array([_nanmean(row) for row in errors[:, 1:]])
        out = {}
        for name, s, d in zip(BUCKETED_META_CLASSES, static, dynamic, strict=True):
            out[f"{name}/Static EPE"], out[f"{name}/Dynamic Normalized EPE"] = float(s), float(d)
        out["Mean Static EPE"] = _nanmean(static)
        out["Mean Dynamic Normalized EPE"] = _nanmean(dynamic)
        return out


def _nanmean(values) -> float:
    values = np.asarray(values, np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if len(finite) else float("nan")
