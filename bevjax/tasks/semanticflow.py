"""The SemanticFlow task: self-supervised scene flow and instance masks of LiDAR sweep pairs (METHODS.md 5).

Data: the run's sweep pairs (the world's, or Argoverse 2's with ``config.data.dataset='av2'``) joined by index
with their pseudo-labels (:func:`bevjax.flow_labels.pseudo_label_split`: an offline pass stored beside the
split, computed on first use with the settings of ``config.pseudo`` and reused by every run). Per step, inside
the jitted step (:func:`sweeps`)::

    pc0 = compensate(lidar_points, next_ego_from_ego)       sweep 0 in sweep 1's frame (the net's residual flow)
    valid0 = lidar_valid & ~lidar_ground & range_mask(lidar_points)            2..50 m, the dataset's ground
    valid1 = next_lidar_valid & ~estimate_ground(next_lidar_points) & range_mask(next_lidar_points)
    in training each sweep compacted to config.points.capacity points, the kept ones first (a random subset of
      them when there are more; the padded sweep is mostly ground and range-cropped points, and the losses'
      nearest-neighbour searches cost capacity^2); evaluation predicts every point
    model(pc0, pc1, valid0, valid1) -> residual flow [b n 3], instance logits [b n S]
    loss = bevjax.losses.semanticflow.semanticflow_loss(...) per example, mean over the batch

The ground estimate of sweep 1 is the pseudo-label pass's (the same function and defaults), recomputed in the
step so that evaluation needs no pseudo-labels.

Evaluation (:class:`SceneFlowEvaluator`, host side, on every sweep pair of the split): the predicted flow is
the ego motion plus the residual (``ego_flow + flow``; points the network does not see, outside the range or the
pillar grid, keep the ego motion), a point is predicted dynamic when its residual is at least 0.05 m; the
Argoverse 2 challenge metrics (:mod:`bevjax.metrics.scene_flow`: 3-way EPE, its parts, dynamic IoU, accuracies,
bucket-normalised EPE) over ``eval_mask`` points; instance metrics (:mod:`bevjax.metrics.instance`: ARI and
panoptic quality) over the evaluated foreground points (``lidar_instance > 0``), predicted ids the argmax slot.

Foreground and categories: the scene-flow metrics' foreground is ``lidar_instance > 0`` (a point in an annotated
object: Argoverse 2's "class > 0"). The bucketed EPE needs Argoverse 2 categories, and the schema keeps semantic
classes only: ``vehicle`` scores as ``REGULAR_VEHICLE`` (meta-class CAR), ``pedestrian`` as ``PEDESTRIAN``, other
foreground (poles, signs: no meta-class) is not scored there. On Argoverse 2 data this merges its
OTHER_VEHICLES and WHEELED_VRU meta-classes into CAR and PEDESTRIAN (:data:`SEMANTIC_TO_AV2_CATEGORY`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bevjax.data.datasets import open_splits
from bevjax.data.derived import ZipSource
from bevjax.data.pipeline import make_dataset
from bevjax.flow_labels import INPUT_KEYS, PseudoLabelSettings, pseudo_label_split
from bevjax.geometry.grid import BEVGrid
from bevjax.losses.semanticflow import LossWeights, semanticflow_loss
from bevjax.metrics.instance import InstanceAccumulator
from bevjax.metrics.scene_flow import (
    AV2_CATEGORIES,
    CLOSE_RANGE_M,
    DYNAMIC_THRESHOLD,
    BucketedEPEAccumulator,
    SceneFlowAccumulator,
    eval_mask,
    is_dynamic,
    within_box,
)
from bevjax.models.semanticflow import SemanticFlow
from bevjax.ops.neighbors import knn
from bevjax.ops.pointcloud import compensate, ego_flow, estimate_ground, range_mask
from bevjax.schema import SEMANTIC_CLASS_ID
from bevjax.tasks.base import SupervisedTask, config_grid

PSEUDO_KEYS = ("pseudo_dynamic0", "pseudo_dynamic1", "pseudo_cluster0", "pseudo_flow0", "pseudo_flow_valid0")
EVAL_KEYS = ("lidar_flow", "lidar_instance", "lidar_class")

# Schema semantic class of a foreground point -> its Argoverse 2 category index for the bucketed EPE (module
# docstring); foreground classes not listed get a category outside every meta-class (not scored).
SEMANTIC_TO_AV2_CATEGORY = {
    "vehicle": AV2_CATEGORIES.index("REGULAR_VEHICLE") + 1,
    "pedestrian": AV2_CATEGORIES.index("PEDESTRIAN") + 1,
}
_UNSCORED_CATEGORY = AV2_CATEGORIES.index("SIGN") + 1


def av2_categories(lidar_class, lidar_instance) -> np.ndarray:
    """[p] Argoverse 2 category indices for the bucketed EPE: 0 for background (``lidar_instance == 0``), the
    categories of :data:`SEMANTIC_TO_AV2_CATEGORY` for vehicles and pedestrians, an unscored one otherwise."""
    cls = np.asarray(lidar_class, np.int64)
    out = np.full(cls.shape, _UNSCORED_CATEGORY, np.int64)
    for name, category in SEMANTIC_TO_AV2_CATEGORY.items():
        out[cls == SEMANTIC_CLASS_ID[name]] = category
    return np.where(np.asarray(lidar_instance) > 0, out, 0)


def pillar_grid(config: ml_collections.ConfigDict) -> BEVGrid:
    """The model's pillar grid, ``config.model.pillars``."""
    p = config.model.pillars
    return BEVGrid(tuple(p["xbound"]), tuple(p["ybound"]), tuple(p["zbound"]))


class Sweeps(NamedTuple):
    """The network's inputs of a batch (:func:`sweeps`): ``c`` points per sweep, the kept points first."""

    pc0: jax.Array  # [b, c, 3] sweep 0 in sweep 1's ego frame
    pc1: jax.Array  # [b, c, 3] sweep 1
    valid0: jax.Array  # [b, c] bool: kept (not padding, not ground, in range)
    valid1: jax.Array  # [b, c] bool
    index0: jax.Array  # [b, c] int32: position in the batch's padded sweep 0 (gather per-point keys with it)
    index1: jax.Array  # [b, c] int32
    dropped0: jax.Array  # [b] int32: kept points beyond the capacity, left out
    dropped1: jax.Array  # [b] int32


def _compact(valid, capacity: int | None, key):
    """[c] int32 positions of at most ``capacity`` valid points first (a random subset of them with ``key``,
    else the first in order), then padding; all positions when ``capacity`` is None."""
    p = valid.shape[0]
    if capacity is None or capacity >= p:
        return jnp.arange(p, dtype=jnp.int32)
    if key is None:
        priority = jnp.where(valid, jnp.arange(p) / p, 2.0)
    else:
        priority = jnp.where(valid, jax.random.uniform(key, (p,)), 2.0)
    return jnp.argsort(priority)[:capacity].astype(jnp.int32)  # c


def sweeps(batch: dict, min_range: float = 2.0, max_range: float = 50.0, capacity: int | None = None,
           key=None) -> Sweeps:  # fmt: skip
    """The network's inputs of a batch (jit-able, static shapes).

    ``pc0`` is sweep 0 in sweep 1's ego frame; the masks drop padding, ground (sweep 0: ``lidar_ground``;
    sweep 1: :func:`bevjax.ops.pointcloud.estimate_ground`) and points outside ``min_range..max_range`` m. With
    ``capacity`` each sweep keeps at most that many points, the kept ones first: a random subset of them when
    there are more (``key``; without one the first in order), so the nearest-neighbour searches of the losses
    run over ``capacity`` points rather than the padded sweep (``config.points.capacity``).

    Args:
      batch: ``INPUT_KEYS`` with a leading batch axis.
      min_range, max_range: metres (:func:`bevjax.ops.pointcloud.range_mask`).
      capacity: points per sweep (static), None for the padded size.
      key: a PRNG key for the subset, or None.
    """

    def one(points, valid, ground, next_points, next_valid, t, key0, key1):
        valid0 = range_mask(points, valid, min_range=min_range, max_range=max_range) & ~ground
        ground1 = estimate_ground(next_points, next_valid)
        valid1 = range_mask(next_points, next_valid, min_range=min_range, max_range=max_range) & ~ground1
        index0, index1 = _compact(valid0, capacity, key0), _compact(valid1, capacity, key1)
        kept0, kept1 = valid0[index0], valid1[index1]
        dropped0 = (jnp.sum(valid0) - jnp.sum(kept0)).astype(jnp.int32)
        dropped1 = (jnp.sum(valid1) - jnp.sum(kept1)).astype(jnp.int32)
        pc0 = compensate(points[index0], t)
        return Sweeps(pc0, next_points[index1], kept0, kept1, index0, index1, dropped0, dropped1)

    args = [jnp.asarray(batch[k]) for k in INPUT_KEYS]
    b = args[0].shape[0]
    if key is None:
        return jax.vmap(lambda *a: one(*a, None, None))(*args)
    keys0, keys1 = jax.random.split(jax.random.fold_in(key, 0), b), jax.random.split(jax.random.fold_in(key, 1), b)
    return jax.vmap(one)(*args, keys0, keys1)


def take_points(values, index):
    """[b, c, ...] ``values`` [b, p, ...] at ``index`` [b, c] (a batch's per-point key after :func:`sweeps`)."""
    return jax.vmap(lambda v, i: v[i])(jnp.asarray(values), index)


class SceneFlowEvaluator:
    """Argoverse 2 scene-flow metrics, bucket-normalised EPE and instance metrics over an evaluation pass.

    :meth:`add` takes one example's predictions from any predictor (the network, ego motion alone, the
    pseudo-labels), so baselines are scored by the same code.
    """

    title = "Scene flow and instances on {split}"

    def __init__(self, task: SemanticFlowTask | None = None):
        self.task = task
        self.flow = SceneFlowAccumulator()
        self.bucketed = BucketedEPEAccumulator()
        self.instances = InstanceAccumulator()

    def update(self, variables, batch: dict, valid: np.ndarray) -> None:
        flow, ids = self.task.predict(variables, batch)
        host = {k: np.asarray(batch[k]) for k in INPUT_KEYS + EVAL_KEYS}
        flow, ids = np.asarray(flow), np.asarray(ids)
        for i in np.flatnonzero(np.asarray(valid) > 0):
            self.add({k: v[i] for k, v in host.items()}, flow[i], ids[i])

    def add(self, example: dict, residual_flow, instance_ids) -> None:
        """Adds one sweep pair: ``residual_flow`` [p, 3] (the motion beyond the ego motion) and ``instance_ids``
        [p] int predicted for sweep 0's points."""
        points = np.asarray(example["lidar_points"], np.float64)
        t = np.asarray(example["next_ego_from_ego"], np.float64)
        residual = np.asarray(residual_flow, np.float64)
        mask = eval_mask(points, example["lidar_ground"]) & np.asarray(example["lidar_valid"], bool)
        pred = ego_flow(points, t) + residual
        gt = np.asarray(example["lidar_flow"], np.float64)
        instance = np.asarray(example["lidar_instance"])
        pts = points[mask]
        self.flow.update(
            pred_flow=pred[mask],
            pred_dynamic=np.linalg.norm(residual[mask], axis=-1) >= DYNAMIC_THRESHOLD,
            gt_flow=gt[mask],
            gt_class=(instance[mask] > 0).astype(np.int64),
            gt_dynamic=is_dynamic(pts, gt[mask], t),
            close=within_box(pts, CLOSE_RANGE_M),
        )
        categories = av2_categories(example["lidar_class"], instance)
        self.bucketed.update(pred[mask], gt[mask], categories[mask], pts, t)
        foreground = mask & (instance > 0)
        self.instances.update(instance, np.asarray(instance_ids), foreground)

    def result(self) -> dict[str, float]:
        out = dict(self.flow.result())
        out.update({f"bucketed/{k}": v for k, v in self.bucketed.result().items()})
        out.update({f"instance/{k}": v for k, v in self.instances.result().items()})
        return out

    def table(self) -> str:
        r = self.result()
        rows = [
            ("EPE 3-Way Average", "EPE 3-Way Average"),
            ("  foreground dynamic", "EPE/Foreground/Dynamic"),
            ("  foreground static", "EPE/Foreground/Static"),
            ("  background static", "EPE/Background/Static"),
            ("Dynamic IoU", "Dynamic IoU"),
            ("Accuracy Strict (fg dynamic)", "Accuracy Strict/Foreground/Dynamic"),
            ("Accuracy Relax (fg dynamic)", "Accuracy Relax/Foreground/Dynamic"),
            ("Bucketed: mean static EPE", "bucketed/Mean Static EPE"),
            ("Bucketed: mean dynamic normalised EPE", "bucketed/Mean Dynamic Normalized EPE"),
        ]
        rows += [(f"Instances: {k}", f"instance/{k}") for k in self.instances.result()]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {r.get(key, float('nan')):.4f}" for name, key in rows)


class SemanticFlowTask(SupervisedTask):
    """Builds everything task-specific from ``config`` (see ``configs/semanticflow.py``)."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.grid = config_grid(config)
        self.pillars = pillar_grid(config)
        m = config.model
        self.model = SemanticFlow(
            grid=self.pillars,
            embed_features=int(m.embed_features),
            unet_widths=tuple(m.unet_widths),
            unet_depths=tuple(m.unet_depths),
            offset_features=int(m.offset_features),
            mlp_features=int(m.mlp_features),
            num_iters=int(m.num_iters),
            num_slots=int(m.num_slots),
            dtype=jnp.dtype(m.get("dtype", "float32")),
        )
        self.settings = PseudoLabelSettings.from_config(config.get("pseudo", {}))
        self.weights = LossWeights(**dict(config.loss.items()))
        p = config.get("points", {})
        self.range = (float(p.get("min_range", 2.0)), float(p.get("max_range", 50.0)))
        self.capacity = int(p["capacity"]) if p.get("capacity") else None

    # Data --------------------------------------------------------------------------------------------------
    def open(self, split: str):
        """One split of the run's dataset (world or Argoverse 2)."""
        c = self.config
        inputs = c.get("inputs", {})
        cameras = tuple(inputs.get("cameras", ())) or None
        image_hw = tuple(inputs.get("image_hw", ())) or None
        return open_splits(c.data, self.grid, [split], cameras=cameras, image_hw=image_hw)[split]

    def with_pseudo_labels(self, source):
        """``source`` joined with its pseudo-labels (computed once, stored beside the split)."""
        labels = pseudo_label_split(source, self.settings, data_dir=self.config.data.get("data_dir") or None)
        return ZipSource(source, labels)

    def av2_source(self, folder: str):
        """The sweep pairs of an Argoverse 2 folder for ``python -m bevjax.evaluate --dataset av2``.

        Args:
          folder: a raw sensor root (``<folder>/<train|val>/<log>/sensors/lidar``: prepared on first use into
            ``config.data.data_dir``, with ``config.data.av2``'s settings) or a prepared data dir (holding
            ``bevjax_av2/``).

        Returns:
          ``(source, name)``: its ``val`` split (``train`` when it has none) and ``'av2/<split>'``.
        """
        from bevjax.data.av2.builder import SPLITS, split_logs
        from bevjax.data.sources import SplitNotFoundError

        data = ml_collections.ConfigDict(self.config.data.to_dict())
        data.dataset = "av2"
        raw = [s for s in SPLITS if split_logs(folder, s)]
        if raw:
            data.av2.root = str(folder)
        else:
            data.data_dir = str(folder)
        for split in ("val", "train"):
            if raw and split not in raw:
                continue
            try:
                source = open_splits(data, self.grid, [split])[split]
            except SplitNotFoundError:
                continue
            return source, f"av2/{split}"
        raise FileNotFoundError(
            f"{folder}: neither an Argoverse 2 sensor root (<folder>/val/<log>/sensors/lidar) nor a prepared data "
            "dir with a bevjax_av2 train or val split"
        )

    def _train_select(self, example: dict) -> dict:
        return {k: example[k] for k in INPUT_KEYS + PSEUDO_KEYS}

    def train_dataset(self, seed: int, batch_size: int, process_index: int, process_count: int):
        c = self.config
        source = self.with_pseudo_labels(self.open(c.data.train_split))
        return make_dataset(
            source,
            batch_size=batch_size,
            seed=seed,
            transforms=[self._train_select],
            process_index=process_index,
            process_count=process_count,
            worker_count=c.data.worker_count,
        )

    def eval_source(self):
        return self.open(self.config.data.eval_split)

    def eval_example(self, example: dict) -> dict:
        return {k: example[k] for k in INPUT_KEYS + EVAL_KEYS}

    # Model -------------------------------------------------------------------------------------------------
    def sweeps(self, batch: dict, key=None) -> Sweeps:
        """:func:`sweeps` with this run's range and capacity."""
        return sweeps(batch, *self.range, capacity=self.capacity, key=key)

    def init(self, rng: jax.Array, batch: dict) -> dict:
        sw = self.sweeps(batch)
        return self.model.init(rng, sw.pc0, sw.pc1, sw.valid0, sw.valid1, train=False)

    def loss_fn(self, params, model_state, batch, rng):
        """The SemanticFlow losses (``bevjax.losses.semanticflow``) per example, averaged over the batch."""
        sample_key, separation_key = jax.random.split(rng)
        sw = self.sweeps(batch, sample_key)
        pc0, pc1, valid0, valid1 = sw.pc0, sw.pc1, sw.valid0, sw.valid1
        (outputs, aux), updates = self.model.apply(
            {"params": params, **model_state}, pc0, pc1, valid0, valid1, train=True, mutable=["batch_stats"]
        )
        inside0, inside1 = aux["inside0"], aux["inside1"]
        ls = self.config.loss_settings
        # The authors' smoothness lists: the k nearest points, the point itself included.
        _, neighbours = jax.vmap(lambda p, v: knn(p, int(ls.knn), v, exclude_self=False))(
            pc0, inside0
        )  # b n k
        keys = jax.random.split(separation_key, pc0.shape[0])  # the separation term's random foreground sample

        def one(
            pc0, pc1, flow, logits, inside0, inside1, neighbours, dyn0, dyn1, cluster0, pflow, pvalid, key
        ):
            return semanticflow_loss(
                pc0,
                pc1,
                flow,
                logits,
                inside0,
                inside1,
                dyn0 & inside0,
                dyn1 & inside1,
                cluster0,
                pflow,
                pvalid & inside0,
                neighbours,
                weights=self.weights,
                truncate=float(ls.truncate),
                dynamic_truncate=float(ls.truncate),
                cluster_target=str(ls.cluster_target),
                key=key,
            )

        total, terms = jax.vmap(one)(
            pc0,
            pc1,
            outputs["flow"],
            outputs["instance_logits"],
            inside0,
            inside1,
            neighbours,
            take_points(batch["pseudo_dynamic0"], sw.index0),
            take_points(batch["pseudo_dynamic1"], sw.index1),
            take_points(batch["pseudo_cluster0"], sw.index0),
            take_points(batch["pseudo_flow0"], sw.index0),
            take_points(batch["pseudo_flow_valid0"], sw.index0),
            keys,
        )
        metrics = {k: jnp.mean(v) for k, v in terms.items()}
        metrics["dropped_points"] = jnp.mean((sw.dropped0 + sw.dropped1).astype(jnp.float32))
        return jnp.mean(total), (metrics, updates)

    @functools.cached_property
    def predict(self):
        """jit: (variables, batch) -> (residual flow [b, p, 3], instance ids [b, p] int32) of sweep 0's points
        (0 for the points the network does not see: ego motion alone, slot 0)."""

        def fn(variables, batch):
            # Every point (no capacity): the network alone, without the losses' quadratic searches.
            sw = sweeps(batch, *self.range)
            outputs, _ = self.model.apply(variables, sw.pc0, sw.pc1, sw.valid0, sw.valid1, train=False)
            return outputs["flow"], jnp.argmax(outputs["instance_logits"], -1).astype(jnp.int32)

        return jax.jit(fn)

    def evaluators(self) -> list[SceneFlowEvaluator]:
        return [SceneFlowEvaluator(self)]

    def picture(self, variables, example: dict) -> np.ndarray:
        """The sweep pair from above: predicted flow arrows coloured by predicted instance, beside the truth."""
        from bevjax.viz.flow import flow_picture

        batch = jax.tree.map(lambda x: np.asarray(x)[None], example)
        flow, ids = self.predict(variables, batch)
        return flow_picture(example, np.asarray(flow)[0], np.asarray(ids)[0], grid=self.pillars)
