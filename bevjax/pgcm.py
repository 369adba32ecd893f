"""NRSeg's PGCM data-quality stage: a consistency score R and a loss weight w for every synthetic frame.

For each frame of a synthetic split (issue 11; NRSeg's Eq. 7):

1. back-project the BEV ground truth of ``pgcm.bev_class`` (drivable area) into every camera through the
   flat-ground homography (:func:`bevjax.geometry.homography.bev_mask_to_camera`): mask ``B``, and ``V`` the
   pixels whose ray meets the ground inside the BEV grid;
2. predict the perspective classes on the frame's (synthetic) images with the PV segmenter trained by
   ``configs/pv_seg.py`` (:mod:`bevjax.tasks.pv_segmenter`): mask ``P`` = pixels whose argmax class is in
   ``pgcm.pv_classes`` (road);
3. score ``R = |P & B| / |P | B|`` over the scored pixels of all cameras
   (:func:`~bevjax.geometry.homography.pgcm_score`) and weight ``w = 1 if R > tau else R``
   (:func:`~bevjax.geometry.homography.pgcm_weight`).

Scored pixels (``pgcm.valid``): ``'all'`` is ``V``; ``'ground'`` is ``V`` and the pixels the segmenter calls
ground (``pgcm.ground_classes``: road, sidewalk, parking, terrain). The flat-ground back-projection paints the
road onto whatever stands on it (cars, and buildings or trees in front of it), so with ``'all'`` occlusion
lowers R on clean frames too; ``'ground'`` leaves it out (with a perfect segmenter clean frames score 0.94-0.99,
``tests/test_homography.py``). R comes from the segmenter's prediction on the image, never from
``pv_labels``: in the world's ``_synthetic`` domains only the images show the perturbed scene, while
``pv_labels``, ``bev_labels`` and ``depth`` are the true scene's (``noise_level`` records the disagreement).

Pairs of a BEV class and PV classes that compare like for like: ``drivable_area`` / ``road`` (default),
``walkway`` / ``sidewalk``, ``carpark_area`` / ``parking``. (Objects are not flat: a vehicle's BEV footprint
back-projects to its footprint on the road, not to its silhouette.)

The scores are an offline pass (:func:`bevjax.training.offline.run_offline_pass`: progress, resumable, stored
beside the split as a ``bevjax_derived`` split and reused by every later call with the same split, segmenter
checkpoint and settings). The checkpoint is named by its workdir's absolute path and step: a segmenter trained
again into the same workdir up to the same step would find the earlier scores (use another workdir).
Per frame: ``pgcm_score`` (R), ``pgcm_weight`` (w), ``pgcm_camera_scores`` [n] (R of
each camera alone) and ``pgcm_noise_level`` (the frame's ``noise_level``, for the analysis). A training task
merges them into its synthetic examples with :class:`bevjax.data.derived.ZipSource`::

    scores = pgcm_scores(synthetic_source, segmenter_config, "runs/pv_seg")
    train = ZipSource(synthetic_source, scores)        # examples gain pgcm_score, pgcm_weight, ...

The command line scores a split of the segmenter config's world (with ``pgcm.domains`` as its domains), prints
R's statistics and the Spearman rank correlation of R with the noise level, and draws R against the noise::

    python -m bevjax.pgcm --segmenter runs/pv_seg --config configs/pv_seg.py --split boston_synthetic_train
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from PIL import Image, ImageDraw

from bevjax.geometry.grid import BEVGrid
from bevjax.geometry.homography import bev_mask_to_camera, pgcm_score, pgcm_weight
from bevjax.schema import BEV_CLASS_ID
from bevjax.viz import layout

PASS_NAME = "pgcm_scores"
VALID_MODES = ("ground", "all")
POINT_COLOUR, LINE_COLOUR = (40, 110, 200), (210, 40, 40)  # the scatter plot's points and tau line
INPUT_KEYS = ("images", "bev_labels", "intrinsics", "cam_to_ego", "post_rots", "post_trans", "noise_level")


def output_spec(num_cameras: int) -> dict:
    """``{key: (shape, dtype)}`` of one frame's PGCM record."""
    return {
        "pgcm_score": ((), np.float32),
        "pgcm_weight": ((), np.float32),
        "pgcm_camera_scores": ((num_cameras,), np.float32),
        "pgcm_noise_level": ((), np.float32),
    }


# Scores ------------------------------------------------------------------------------------------------------


def frame_scores(
    predicted,
    ground,
    bev_mask,
    intrinsics,
    cam_to_ego,
    post_rots,
    post_trans,
    *,
    grid: BEVGrid,
    valid: str = "ground",
    tau: float = 0.85,
    supersample: int = 1,
) -> dict:
    """PGCM of a batch of frames from the segmenter's masks and the BEV label (jit-able, static shapes).

    ``B, V = bev_mask_to_camera(bev_mask)``; scored pixels ``S = V`` (``valid='all'``) or ``V & ground``
    (``'ground'``); ``R = |P & B & S| / |(P | B) & S|`` over all cameras (``R = 1`` on an empty union),
    ``w = where(R > tau, 1, R)``.

    Args:
      predicted: [b, n, h, w] bool, the segmenter's mask P of the compared classes (road).
      ground: [b, n, h, w] bool, the pixels the segmenter calls ground (used by ``valid='ground'``).
      bev_mask: [b, x, y] the BEV label (bool or 0/1) on ``grid``.
      intrinsics, cam_to_ego, post_rots, post_trans: [b, n, ...] the frames' cameras (schema keys).
      grid: the BEV grid of ``bev_mask`` (static).
      valid: ``'ground'`` or ``'all'`` (static).
      tau: the weight threshold.
      supersample: rays per pixel side of the back-projection (static).

    Returns:
      ``{'score': R [b], 'weight': w [b], 'camera_scores': [b, n] (each camera alone), 'backprojected':
      B [b, n, h, w], 'scored': S [b, n, h, w]}``.
    """
    if valid not in VALID_MODES:
        raise ValueError(f"pgcm.valid='{valid}': choose from {VALID_MODES}")
    predicted = jnp.asarray(predicted, bool)
    image_hw = tuple(predicted.shape[-2:])
    back, seen = bev_mask_to_camera(
        bev_mask, grid, intrinsics, cam_to_ego, image_hw, post_rots, post_trans,
        supersample=supersample, return_valid=True,
    )  # fmt: skip  # b n h w, b n h w
    scored = seen & jnp.asarray(ground, bool) if valid == "ground" else seen
    score = pgcm_score(predicted, back, scored)  # b
    per_camera = pgcm_score(predicted[..., None, :, :], back[..., None, :, :], scored[..., None, :, :])  # b n
    return {
        "score": score,
        "weight": pgcm_weight(score, tau),
        "camera_scores": per_camera,
        "backprojected": back,
        "scored": scored,
    }


def _indices(names, classes, field: str) -> np.ndarray:
    missing = [c for c in names if c not in classes]
    if missing or not names:
        raise ValueError(
            f"config.pgcm.{field}={tuple(names)}: give classes of the segmenter {tuple(classes)}"
        )
    return np.array([classes.index(c) for c in names], np.int32)


def settings_of(config: ml_collections.ConfigDict) -> dict:
    """The JSON-able PGCM settings of ``config.pgcm`` that fix the scores (checked; the checkpoint is added by
    :func:`pgcm_scores`)."""
    p = config.pgcm
    if p.valid not in VALID_MODES:
        raise ValueError(f"config.pgcm.valid='{p.valid}': choose from {VALID_MODES}")
    if p.bev_class not in BEV_CLASS_ID:
        raise ValueError(f"config.pgcm.bev_class='{p.bev_class}': choose from {sorted(BEV_CLASS_ID)}")
    classes = tuple(config.model.classes)
    _indices(tuple(p.pv_classes), classes, "pv_classes")
    _indices(tuple(p.ground_classes), classes, "ground_classes")
    return {
        "valid": str(p.valid),
        "tau": float(p.tau),
        "bev_class": str(p.bev_class),
        "pv_classes": list(p.pv_classes),
        "ground_classes": list(p.ground_classes) if p.valid == "ground" else [],
        "supersample": int(p.supersample),
        "classes": list(classes),
    }


def make_score_fn(task, settings: dict):
    """``fn(variables, batch) -> {pgcm_score, pgcm_weight, pgcm_camera_scores, pgcm_noise_level}`` [b, ...]:
    the segmenter on ``batch['images']`` [b, n, h, w, 3], then :func:`frame_scores`."""
    classes = tuple(task.classes)
    pv = jnp.asarray(_indices(settings["pv_classes"], classes, "pv_classes"))
    ground = jnp.asarray(_indices(settings["ground_classes"] or list(classes), classes, "ground_classes"))
    channel = BEV_CLASS_ID[settings["bev_class"]]

    def fn(variables, batch):
        logits, _ = task.model.apply(variables, batch["images"], False)  # b n h w k
        pred = jnp.argmax(logits, -1)  # b n h w
        out = frame_scores(
            jnp.isin(pred, pv),
            jnp.isin(pred, ground),
            batch["bev_labels"][..., channel],
            batch["intrinsics"], batch["cam_to_ego"], batch["post_rots"], batch["post_trans"],
            grid=task.grid, valid=settings["valid"], tau=settings["tau"], supersample=settings["supersample"],
        )  # fmt: skip
        return {
            "pgcm_score": out["score"],
            "pgcm_weight": out["weight"],
            "pgcm_camera_scores": out["camera_scores"],
            "pgcm_noise_level": batch["noise_level"].astype(jnp.float32),
        }

    return fn


def _select_inputs(example: dict) -> dict:
    return {k: example[k] for k in INPUT_KEYS}


def checkpoint_steps(segmenter: str) -> list[int]:
    """The checkpoint steps of a run's workdir (or its ``checkpoints/`` folder), newest first."""
    directory = os.path.abspath(segmenter)
    if os.path.isdir(os.path.join(directory, "checkpoints")):
        directory = os.path.join(directory, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"no segmenter checkpoints in {directory}: train one first "
            "(python -m bevjax.train --config configs/pv_seg.py --workdir runs/pv_seg)"
        )
    return sorted((int(n) for n in os.listdir(directory) if n.isdigit()), reverse=True)


def load_segmenter(task, segmenter: str, step: int, example: dict) -> dict:
    """The segmenter's variables ``{'params', 'batch_stats'}`` saved at ``step`` in ``segmenter`` (a workdir),
    loaded onto a template of ``task``'s model for ``example``'s images (shapes only, nothing compiled)."""
    from bevjax.training.checkpoint import load_params

    images = np.asarray(example["images"])[None]  # 1 n h w 3
    shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0), {"images": images})
    target = {"params": shapes["params"], "model_state": {k: v for k, v in shapes.items() if k != "params"}}
    loaded = load_params(segmenter, step, target, (("params", "params"), ("model_state", "model_state")))
    return {"params": loaded["params"], **loaded["model_state"]}


def run_config(segmenter: str) -> ml_collections.ConfigDict:
    """The config a run was trained with (its workdir's ``config.json``)."""
    path = os.path.join(segmenter, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: pass the segmenter's --config")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def pgcm_scores(
    source,
    config: ml_collections.ConfigDict,
    segmenter: str,
    *,
    step: int | None = None,
    data_dir: str | None = None,
    source_id=None,
    progress: bool = True,
    max_chunks: int | None = None,
    chunk_size: int | None = None,
):
    """PGCM scores of every frame of ``source`` (computed once, then reused), as a derived split.

    Args:
      source: a split of schema examples (a synthetic split of the world); its images must suit the segmenter
        (``config.inputs.image_hw``).
      config: the segmenter's config (``configs/pv_seg.py``: ``model``, ``grid``, ``pgcm``); the grid must be
        the one of the source's ``bev_labels``.
      segmenter: the segmenter's workdir (``runs/pv_seg``).
      step: its checkpoint step; None: ``config.pgcm.step`` (-1: the newest).
      data_dir: where the derived split goes (default ``config.data.data_dir`` or the default data dir).
      source_id, progress, max_chunks, chunk_size: as :func:`bevjax.training.offline.run_offline_pass`.

    Returns:
      The derived split (record ``i``: ``pgcm_score``, ``pgcm_weight``, ``pgcm_camera_scores``,
      ``pgcm_noise_level`` of ``source[i]``), or None when ``max_chunks`` stopped the pass early.

    Raises:
      FileNotFoundError: no checkpoint (or not that step) in ``segmenter``.
      ValueError: bad ``config.pgcm`` settings, a source that does not fit the grid.
    """
    from bevjax.data.base_builder import default_data_dir
    from bevjax.data.derived import BevjaxDerived
    from bevjax.tasks.pv_segmenter import PVSegmenterTask
    from bevjax.training.offline import pass_config, run_offline_pass

    task = PVSegmenterTask(config)
    settings = settings_of(config)
    steps = checkpoint_steps(segmenter)
    step = int(config.pgcm.get("step", -1)) if step is None else int(step)
    if not steps or (step >= 0 and step not in steps):
        what = f"checkpoint step {step}" if step >= 0 else "checkpoint"
        raise FileNotFoundError(f"no {what} in {segmenter} (steps there: {steps or 'none'})")
    step = steps[0] if step < 0 else step
    first = source[0]
    labels_xy = np.shape(first["bev_labels"])[:2]
    if labels_xy != task.grid.shape[:2]:
        raise ValueError(
            f"the source's bev_labels are {labels_xy} cells, the segmenter config's grid {task.grid.shape[:2]}"
        )
    settings = {**settings, "segmenter": os.path.abspath(segmenter), "step": step}
    num_cameras = np.shape(first["images"])[0]
    spec = output_spec(num_cameras)
    data_dir = str(data_dir or config.data.get("data_dir") or default_data_dir())
    # The segmenter is loaded only when there is something to compute (a finished pass is just opened).
    done = BevjaxDerived(
        data_dir=data_dir, config=pass_config(source, PASS_NAME, spec, source_id=source_id, settings=settings)
    ).is_prepared()
    variables = None if done else load_segmenter(task, segmenter, step, first)
    return run_offline_pass(
        source,
        PASS_NAME,
        spec,
        fn=make_score_fn(task, settings),
        variables=variables,
        example_fn=_select_inputs,
        data_dir=data_dir,
        source_id=source_id,
        settings=settings,
        batch_size=int(config.pgcm.batch_size),
        chunk_size=chunk_size,
        max_chunks=max_chunks,
        progress=progress,
    )


def ensure_segmenter(segmenter: str, config_spec: str, data_dir: str = "") -> None:
    """Trains the PV segmenter into ``segmenter`` with ``config_spec`` (``configs/pv_seg.py[:variant]``) when that
    workdir has no checkpoint yet (an earlier stage of a training run that needs PGCM); else nothing.

    Raises:
      FileNotFoundError: no checkpoint and no ``config_spec`` to train one with.
      RuntimeError: several processes (train the segmenter once beforehand).
    """
    directory = os.path.join(os.path.abspath(segmenter), "checkpoints")
    if os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory)):
        return
    if not config_spec:
        raise FileNotFoundError(
            f"no PV segmenter checkpoint in {segmenter}: train one (python -m bevjax.train --config "
            f"configs/pv_seg.py --workdir {segmenter}) or set config.pgcm.segmenter_config to train it here"
        )
    if jax.process_count() > 1:
        raise RuntimeError(
            f"PGCM needs a PV segmenter in {segmenter}: train it once before the multi-process run "
            f"(python -m bevjax.train --config {config_spec} --workdir {segmenter})"
        )
    from bevjax.cli import load_config
    from bevjax.training.trainer import train_and_evaluate

    config = load_config(config_spec)
    if data_dir:
        config.data.data_dir = data_dir
    print(f"PGCM needs its PV segmenter: training {config_spec} into {segmenter} first", flush=True)
    train_and_evaluate(config, segmenter)
    print(f"PV segmenter trained into {segmenter}", flush=True)


def synthetic_scores(
    segmenter: str,
    split: str,
    *,
    config_spec: str = "",
    tau: float | None = None,
    step: int = -1,
    data_dir: str = "",
    world: dict | None = None,
    progress: bool = True,
):
    """The PGCM scores of a synthetic world split as a training run uses them: the split rendered as the
    segmenter sees images (its cameras, image size and grid, ``split``'s domain as the only domain),
    scored by the segmenter of ``segmenter`` (trained there first from ``config_spec`` when it has no checkpoint,
    :func:`ensure_segmenter`), stored once and reused (:func:`pgcm_scores`).

    Record ``i`` belongs to frame ``i`` of ``split`` in any world with the same world settings (``seed``,
    ``frames_per_sequence``, sequence counts; ``world`` gives the run's), whatever its image size or grid: the
    scene, its perturbation and ``noise_level`` do not depend on them, and ``pgcm_noise_level`` lets a caller
    check the match.

    Args:
      segmenter: the segmenter's workdir (its ``config.json`` gives the settings).
      split: a split of a ``*_synthetic`` domain, e.g. ``singapore_synthetic_train``.
      config_spec: the config to train the segmenter with when ``segmenter`` has no checkpoint.
      tau: the weight threshold (None: the segmenter config's ``pgcm.tau``).
      step: the segmenter's checkpoint step (-1: the newest).
      data_dir: the data dir of the world and of the scores (default: the segmenter config's).
      world: the run's world settings ``{'world': config.data.world, 'train_sequences': ..., 'val_sequences':
        ...}`` (None: the segmenter config's).
      progress: progress lines.
    """
    ensure_segmenter(segmenter, config_spec, data_dir)
    from bevjax.tasks.pv_segmenter import PVSegmenterTask

    config = run_config(segmenter)
    domain = split.rsplit("_", 1)[0]
    config.pgcm.domains = (domain,)
    if tau is not None:
        config.pgcm.tau = float(tau)
    if data_dir:
        config.data.data_dir = str(data_dir)
    for key, value in (world or {}).items():
        config.data[key] = ml_collections.ConfigDict(dict(value)) if isinstance(value, dict) else value
    task = PVSegmenterTask(config)
    source = task.open_split(split, split_data_config(config, split))
    return pgcm_scores(source, config, segmenter, step=step, progress=progress)


# Analysis ----------------------------------------------------------------------------------------------------


def rankdata(a) -> np.ndarray:
    """1-based ranks of ``a`` [m], ties sharing the mean of their ranks (``scipy.stats.rankdata``'s default)."""
    a = np.asarray(a, np.float64).reshape(-1)
    order = np.argsort(a, kind="mergesort")
    ordered = a[order]
    new = np.concatenate([[True], ordered[1:] != ordered[:-1]])  # the first of each run of equal values
    group = np.cumsum(new) - 1  # m: the run of each sorted element
    ends = np.cumsum(np.bincount(group))  # one past the last sorted position of each run
    starts = ends - np.bincount(group)
    ranks = np.empty(len(a), np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[group]  # mean of the ranks starts + 1 .. ends
    return ranks


def pearson(x, y) -> float:
    """Pearson correlation ``cov(x, y) / (std x std y)``; NaN when fewer than 2 values or one is constant."""
    x, y = np.asarray(x, np.float64).reshape(-1), np.asarray(y, np.float64).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"pearson: {len(x)} and {len(y)} values")
    if len(x) < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy / denom) if denom > 0 else float("nan")


def spearman(x, y) -> float:
    """Spearman rank correlation: the Pearson correlation of the ranks (ties at their mean rank), as
    ``scipy.stats.spearmanr(x, y).statistic``; NaN when one of them is constant."""
    return pearson(rankdata(x), rankdata(y))


def summarize(score, weight, noise, tau: float, sequences=None, bins=(0.0, 0.25, 0.5, 0.75, 1.0)) -> dict:
    """Statistics of a split's scores: R's mean, median, min, max; the weights; the Spearman and Pearson
    correlations of R with the noise level; R's mean in noise-level bins; and, given each frame's sequence
    (``sequences`` [m]), the Spearman correlation of ``R - mean R of its sequence`` with the noise level (scenes
    differ in how well the segmenter does on them; within a sequence only the noise changes from frame to
    frame, so this one leaves the scene-to-scene differences out)."""
    score, weight, noise = (np.asarray(a, np.float64) for a in (score, weight, noise))
    out = {
        "frames": int(len(score)),
        "tau": float(tau),
        "R_mean": float(score.mean()),
        "R_median": float(np.median(score)),
        "R_min": float(score.min()),
        "R_max": float(score.max()),
        "w_mean": float(weight.mean()),
        "frames_at_or_below_tau": int((score <= tau).sum()),
        "noise_min": float(noise.min()),
        "noise_max": float(noise.max()),
        "spearman_R_noise": spearman(score, noise),
        "pearson_R_noise": pearson(score, noise),
    }
    if sequences is not None:
        seq = np.unique(np.asarray(sequences), return_inverse=True)[1].reshape(-1)  # m: 0 .. S - 1
        means = np.bincount(seq, score) / np.bincount(seq)  # S
        out["sequences"] = int(seq.max()) + 1
        out["spearman_within_sequences"] = spearman(score - means[seq], noise)
    edges = np.asarray(bins, np.float64)
    which = np.clip(np.searchsorted(edges, noise, side="right") - 1, 0, len(edges) - 2)
    out["by_noise"] = [
        {
            "noise": [float(edges[k]), float(edges[k + 1])],
            "frames": int((which == k).sum()),
            "R_mean": float(score[which == k].mean()) if (which == k).any() else None,
        }
        for k in range(len(edges) - 1)
    ]
    return out


def report(stats: dict) -> str:
    """The statistics of :func:`summarize` as text for the terminal."""
    s = stats
    lines = [
        f"frames: {s['frames']}",
        f"R: mean {s['R_mean']:.3f}  median {s['R_median']:.3f}  min {s['R_min']:.3f}  max {s['R_max']:.3f}",
        f"w: mean {s['w_mean']:.3f}; {s['frames_at_or_below_tau']} of {s['frames']} frames have R <= tau = "
        f"{s['tau']:g} (w = R)",
        f"noise_level: {s['noise_min']:.3f} .. {s['noise_max']:.3f}",
        f"Spearman rank correlation of R with noise_level: {s['spearman_R_noise']:.3f} "
        f"(Pearson {s['pearson_R_noise']:.3f})",
    ]
    if "sequences" in s:
        lines.append(
            f"Spearman of (R minus its sequence's mean R) with noise_level: {s['spearman_within_sequences']:.3f} "
            f"({s['sequences']} sequences; leaves out how the scenes differ)"
        )
    lines += [
        "R by noise level: "
        + "; ".join(
            f"[{b['noise'][0]:.2f}, {b['noise'][1]:.2f}{']' if k == len(s['by_noise']) - 1 else ')'}: "
            + (
                f"{b['frames']} frame{'s' * (b['frames'] != 1)}, mean R {b['R_mean']:.3f}"
                if b["frames"]
                else "no frames"
            )
            for k, b in enumerate(s["by_noise"])
        ),
    ]
    return "\n".join(lines)


def _axis_range(values, floor_to: float | None = None) -> tuple[float, float, float]:
    """(lo, hi, tick step) over ``values`` (and ``floor_to``) on a 0.1 grid, at least [lo, 1] for scores."""
    v = np.asarray(values, np.float64)
    lo = math.floor(min(float(v.min()), floor_to if floor_to is not None else np.inf, 1.0) * 10 + 1e-9) / 10
    hi = max(1.0, math.ceil(float(v.max()) * 10 - 1e-9) / 10)
    lo = min(max(lo, 0.0) if v.min() >= 0 else lo, hi - 0.1)
    step = 0.1 if hi - lo <= 0.6 + 1e-9 else 0.2
    return lo, hi, step


def scatter_picture(x, y, *, xlabel: str, ylabel: str, title: str = "", caption: str = "",
                    hline: float | None = None, hline_label: str = "") -> np.ndarray:  # fmt: skip
    """A scatter plot of ``y`` against ``x`` as a uint8 RGB picture (at least ``layout.MIN_WIDTH`` wide): axes
    with ticks and tick labels, light grid lines, axis labels, an optional dashed horizontal line ``hline``
    (e.g. PGCM's tau) with its label, ``title`` above and ``caption`` below."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    width, height, left, right, top, bottom = 760, 460, 78, 24, 16, 64
    pw, ph = width - left - right, height - top - bottom  # the plotting area
    x0, x1, xs = _axis_range(x)
    y0, y1, ys = _axis_range(y, hline)
    px = lambda v: left + (v - x0) / (x1 - x0) * pw  # noqa: E731
    py = lambda v: top + (y1 - v) / (y1 - y0) * ph  # noqa: E731
    pil = Image.new("RGB", (width, height), layout.BACKGROUND)
    draw = ImageDraw.Draw(pil)
    font = layout.font(layout.FONT_SIZE)
    for lo, hi, step, vertical in ((x0, x1, xs, True), (y0, y1, ys, False)):
        for k in range(int(round((hi - lo) / step)) + 1):
            v = lo + k * step
            text = f"{v:.1f}"
            if vertical:
                draw.line([(px(v), top), (px(v), top + ph)], fill=(225, 225, 225))
                draw.line([(px(v), top + ph), (px(v), top + ph + 5)], fill=layout.TEXT)
                draw.text(
                    (px(v) - layout.text_width(text) / 2, top + ph + 8), text, fill=layout.TEXT, font=font
                )
            else:
                draw.line([(left, py(v)), (left + pw, py(v))], fill=(225, 225, 225))
                draw.line([(left - 5, py(v)), (left, py(v))], fill=layout.TEXT)
                draw.text((left - 9 - layout.text_width(text), py(v) - 8), text, fill=layout.TEXT, font=font)
    draw.rectangle([left, top, left + pw, top + ph], outline=layout.TEXT)
    for u, v in zip(x, y, strict=True):
        cx, cy = px(u), py(v)
        draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=POINT_COLOUR, outline=(10, 40, 90))
    if hline is not None and y0 <= hline <= y1:  # over the points, its label on a white box
        for start in range(left, left + pw, 12):  # dashed
            draw.line([(start, py(hline)), (min(start + 7, left + pw), py(hline))], fill=LINE_COLOUR, width=2)
        if hline_label:
            tx, ty = left + pw - layout.text_width(hline_label) - 6, py(hline) - layout.line_height() - 3
            draw.rectangle([tx - 3, ty, tx + layout.text_width(hline_label) + 3, ty + layout.line_height()],
                           fill=layout.BACKGROUND, outline=LINE_COLOUR)  # fmt: skip
            draw.text((tx, ty), hline_label, fill=LINE_COLOUR, font=font)
    draw.text(
        (left + pw / 2 - layout.text_width(xlabel) / 2, top + ph + 32), xlabel, fill=layout.TEXT, font=font
    )
    label = Image.new("RGB", (layout.text_width(ylabel) + 4, layout.line_height()), layout.BACKGROUND)
    ImageDraw.Draw(label).text((2, 0), ylabel, fill=layout.TEXT, font=font)
    label = label.rotate(90, expand=True)
    pil.paste(label, (6, int(top + ph / 2 - label.size[1] / 2)))
    blocks = [np.asarray(pil)]
    if caption:
        blocks.append(layout.text_band(caption, width))
    return layout.figure(blocks, title)


def split_data_config(config: ml_collections.ConfigDict, split: str) -> ml_collections.ConfigDict:
    """``config.data`` for ``split``: as it is when the split's domain is one of ``config.data.domains`` (the
    segmenter's own world), else with ``config.pgcm.domains`` as the domains (the same cameras, sizes, grid).

    Raises:
      ValueError: the split's domain is in neither.
    """
    domain = split.rsplit("_", 1)[0]
    if domain in tuple(config.data.domains):
        return config.data
    if domain not in tuple(config.pgcm.domains):
        raise ValueError(
            f"--split {split}: its domain '{domain}' is neither in config.data.domains {tuple(config.data.domains)} "
            f"nor in config.pgcm.domains {tuple(config.pgcm.domains)} (add it there: --config.pgcm.domains=...)"
        )
    data = ml_collections.ConfigDict(config.data.to_dict())
    data.domains = tuple(config.pgcm.domains)
    return data


def score_split(
    config: ml_collections.ConfigDict,
    segmenter: str,
    split: str,
    *,
    step: int | None = None,
    out: str = "",
    progress: bool = True,
) -> dict:
    """The command line's work: PGCM over ``split`` of the config's world, the statistics on stdout, a scatter
    plot of R against the noise level (``out``, default ``<segmenter>/pgcm_<split>_<valid>.png``) and the
    statistics beside it (``.json``).

    Returns:
      The statistics (:func:`summarize`) and ``png`` / ``json`` (the files written).
    """
    from bevjax.tasks.pv_segmenter import PVSegmenterTask

    task = PVSegmenterTask(config)
    source = task.open_split(split, split_data_config(config, split))
    scores = pgcm_scores(source, config, segmenter, step=step, progress=progress)
    records = [scores[i] for i in range(len(scores))]
    score, weight, noise = (np.array([r[k] for r in records]) for k in ("pgcm_score", "pgcm_weight",
                                                                        "pgcm_noise_level"))  # fmt: skip
    p = config.pgcm
    per_sequence = getattr(source, "frames_per_sequence", None)  # world splits: record i is sequence i // F
    sequences = None if per_sequence is None else np.arange(len(score)) // int(per_sequence)
    stats = summarize(score, weight, noise, float(p.tau), sequences)
    where = (
        "pixels the segmenter calls ground"
        if p.valid == "ground"
        else "every pixel that sees the ground grid"
    )
    print(
        f"\nPGCM on {split}: R = IoU({'+'.join(p.pv_classes)} predicted by {segmenter}, {p.bev_class} "
        f"back-projected) over {where}",
        flush=True,
    )
    print(report(stats), flush=True)
    base = out or os.path.join(segmenter, f"pgcm_{split}_{p.valid}.png")
    png = base if base.endswith(".png") else base + ".png"
    within = (
        f" (within sequences {stats['spearman_within_sequences']:.3f})"
        if "spearman_within_sequences" in stats
        else ""
    )
    caption = (
        f"{stats['frames']} frames; Spearman rank correlation {stats['spearman_R_noise']:.3f}{within}, Pearson "
        f"{stats['pearson_R_noise']:.3f}; R mean {stats['R_mean']:.3f} (min {stats['R_min']:.3f}, max "
        f"{stats['R_max']:.3f}); {stats['frames_at_or_below_tau']} frames at or below tau get w = R. Scored "
        f"pixels: {where}. Segmenter: {segmenter}."
    )
    picture = scatter_picture(
        noise, score, xlabel="noise_level (image / label disagreement of the synthetic frame)",
        ylabel=f"R = IoU({'+'.join(p.pv_classes)}, back-projected {p.bev_class})",
        title=f"PGCM score R against the synthetic noise level on {split}", caption=caption,
        hline=float(p.tau), hline_label=f"tau = {float(p.tau):g}",
    )  # fmt: skip
    from bevjax.viz import save_png

    save_png(picture, png)
    json_path = png[: -len(".png")] + ".json"
    with open(json_path, "w") as f:
        json.dump({"split": split, "segmenter": os.path.abspath(segmenter), **settings_of(config), **stats}, f,
                  indent=2)  # fmt: skip
    print(f"wrote {png} and {json_path}", flush=True)
    return {**stats, "png": png, "json": json_path}


# Command line ------------------------------------------------------------------------------------------------


def define_flags() -> dict:
    """The command line's absl flags, defined when the program starts (not on import: ``bevjax.train`` defines
    flags of the same names, and both may be imported in one process)."""
    return {
        "config": config_flags.DEFINE_config_file(
            "config", None, "The segmenter's config (path.py[:variant]); default: the segmenter's config.json.",
            lock_config=True,
        ),
        "segmenter": flags.DEFINE_string("segmenter", None, "The PV segmenter's workdir (python -m bevjax.train)."),
        "split": flags.DEFINE_string("split", None, "The split to score (default: config.pgcm.split)."),
        "tau": flags.DEFINE_float("tau", None, "w = 1 if R > tau else R (default: config.pgcm.tau)."),
        "valid": flags.DEFINE_enum("valid", None, list(VALID_MODES), "Scored pixels (default: config.pgcm.valid)."),
        "step": flags.DEFINE_integer("step", None, "The segmenter's checkpoint step (default: the newest)."),
        "out": flags.DEFINE_string("out", "", "The scatter plot PNG (default: <segmenter>/pgcm_<split>_<valid>.png)."),
        "data_dir": flags.DEFINE_string("data_dir", None, "The prepared-data folder (default: config.data.data_dir)."),
        "debug": flags.DEFINE_bool("debug", False, "Show the full traceback of an error instead of one line."),
    }  # fmt: skip


def main(argv, f: dict):
    """The program: ``f`` holds the flags of :func:`define_flags`."""
    from bevjax.cli import check_command_line, run_reporting_errors

    check_command_line(argv)
    if not f["segmenter"].value:
        raise app.UsageError("--segmenter is required: the PV segmenter's workdir (e.g. runs/pv_seg)")

    def work():
        segmenter = f["segmenter"].value
        config = f["config"].value if f["config"].value is not None else run_config(segmenter)
        with config.unlocked():
            for field in ("tau", "valid"):
                if f[field].value is not None:
                    config.pgcm[field] = f[field].value
            if f["data_dir"].value is not None:
                config.data.data_dir = f["data_dir"].value
        split = f["split"].value or config.pgcm.split
        return score_split(config, segmenter, split, step=f["step"].value, out=f["out"].value)

    run_reporting_errors(work, debug=f["debug"].value)


def run() -> None:
    """``python -m bevjax.pgcm`` (see the module docstring)."""
    from bevjax.cli import parse_flags
    from bevjax.training.host import reexec_with_huge_pages

    reexec_with_huge_pages()  # (this module has imported JAX already: harmless, the process is replaced)
    defined = define_flags()
    app.run(lambda argv: main(argv, defined), flags_parser=parse_flags)


if __name__ == "__main__":
    run()
