"""The LSS task: BEV semantic segmentation from cameras, trained with BCE, evaluated with IoU per class.

It tells the generic trainer (through the protocol of :mod:`bevjax.tasks.base`) how to build the model, read
and augment the data, compute the loss and the evaluation counts, and draw the prediction picture.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bevjax.data import transforms as T
from bevjax.data.datasets import open_splits
from bevjax.data.pipeline import make_dataset
from bevjax.geometry.grid import BEVGrid
from bevjax.losses import bce_with_logits
from bevjax.metrics import confusion_counts
from bevjax.metrics.iou import IoUAccumulator
from bevjax.models.lss import LSS, LSSGeometry
from bevjax.schema import BEV_CLASS_ID
from bevjax.tasks.base import SupervisedTask, bev_class_index, config_grid, eval_image_aug, train_image_aug
from bevjax.viz import prediction_picture

MODEL_KEYS = ("images", "intrinsics", "cam_to_ego", "post_rots", "post_trans")
TARGET_KEYS = ("bev_labels", "bev_visibility")


def open_split(config: ml_collections.ConfigDict, grid: BEVGrid, split: str):
    """One split of the run's dataset (``config.data``) for the model inputs of ``config.inputs``."""
    inputs = config.inputs
    sources = open_splits(
        config.data, grid, [split], cameras=tuple(inputs.cameras), image_hw=tuple(inputs.image_hw)
    )
    return sources[split]


class IoUEvaluator:
    """IoU per class of thresholded logits over an evaluation pass (TP/FP/FN summed over the whole split)."""

    def __init__(self, task: LSSTask):
        self.task = task
        self.accumulator = IoUAccumulator(task.classes)
        self.title = f"IoU per class on {{split}} (threshold: logit > {task.config.eval.threshold})"

    def update(self, variables, batch: dict, valid: np.ndarray) -> None:
        self.accumulator.update(self.task.eval_counts(variables, batch, valid))

    def result(self) -> dict[str, float]:
        return self.accumulator.result()

    def table(self) -> str:
        return self.accumulator.table()


class LSSTask(SupervisedTask):
    """Builds everything task-specific from ``config`` (see ``configs/lss.py``)."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.grid = config_grid(config)
        self.classes = tuple(config.model.classes)
        self.class_index = bev_class_index(self.classes)
        m = config.model
        self.model = LSS(
            num_classes=len(self.classes),
            geometry=LSSGeometry(tuple(config.inputs.image_hw), m.stride, tuple(m.dbound), self.grid),
            context_channels=m.context_channels,
            drop_connect_rate=m.drop_connect_rate,
            trunk_depth=m.trunk_depth,
            remat=m.get("remat", "none"),
            dtype=jnp.dtype(m.get("dtype", "float32")),
        )

    @property
    def pos_weight(self) -> np.ndarray:
        """[k] BCE positive weights: ``loss.pos_weight``, ``loss.object_pos_weight`` for vehicle and pedestrian."""
        objects = np.isin(self.classes, ("vehicle", "pedestrian"))
        loss = self.config.loss
        return np.where(objects, loss.object_pos_weight, loss.pos_weight).astype(np.float32)

    # Data --------------------------------------------------------------------------------------------------
    def batch_keys(self) -> tuple[str, ...]:
        return MODEL_KEYS + TARGET_KEYS

    def _select(self, example: dict) -> dict:
        return {k: example[k] for k in self.batch_keys()}

    def train_dataset(self, seed: int, batch_size: int, process_index: int, process_count: int):
        c = self.config
        source = open_split(c, self.grid, c.data.train_split)
        a = c.augment
        transforms = []
        if a.num_cameras and a.num_cameras < len(c.inputs.cameras):
            transforms.append(T.SelectCameras(num=a.num_cameras, train=True))
        if a.bev_flip:
            transforms.append(T.BEVFlip(p=0.5, grid=self.grid))
        transforms.append(train_image_aug(c))
        if a.color_jitter:
            transforms.append(T.ColorJitter())
        transforms.append(self._select)
        return make_dataset(
            source,
            batch_size=batch_size,
            seed=seed,
            transforms=transforms,
            process_index=process_index,
            process_count=process_count,
            worker_count=c.data.worker_count,
        )

    def eval_source(self):
        return open_split(self.config, self.grid, self.config.data.eval_split)

    def eval_example(self, example: dict) -> dict:
        """An evaluation example: all cameras, test-time image transform (identity at the stored size)."""
        return self._select(eval_image_aug(self.config).random_map(example, np.random.default_rng(0)))

    # Model -------------------------------------------------------------------------------------------------
    def init(self, rng: jax.Array, batch: dict) -> dict:
        return self.model.init(rng, *(batch[k] for k in MODEL_KEYS), train=False)

    def targets(self, batch: dict) -> jnp.ndarray:
        return jnp.take(batch["bev_labels"], jnp.asarray(self.class_index), axis=-1)  # b x y k

    def loss_fn(self, params, model_state, batch, rng):
        """BCE with ``pos_weight`` over all cells (LSS), optionally only visible cells."""
        (logits, _), updates = self.model.apply(
            {"params": params, **model_state},
            *(batch[k] for k in MODEL_KEYS),
            train=True,
            rngs={"dropout": rng},
            mutable=["batch_stats"],
        )
        mask = batch["bev_visibility"][..., None] if self.config.loss.visible_only else None
        loss = bce_with_logits(logits, self.targets(batch), self.pos_weight, mask)
        return loss, ({"bce": loss}, updates)

    @functools.cached_property
    def predict(self):
        """jit: (variables, batch) -> logits [b, x, y, k]."""

        def fn(variables, batch):
            logits, _ = self.model.apply(variables, *(batch[k] for k in MODEL_KEYS), train=False)
            return logits

        return jax.jit(fn)

    def eval_counts(self, variables, batch, valid) -> np.ndarray:
        """[k, 3] TP/FP/FN of one batch (``valid`` [b] masks padding examples)."""
        logits = self.predict(variables, batch)
        mask = jnp.broadcast_to(jnp.asarray(valid)[:, None, None], logits.shape[:3])
        if self.config.eval.visible_only:
            mask = mask * batch["bev_visibility"]
        return np.asarray(confusion_counts(logits, self.targets(batch), self.config.eval.threshold, mask))

    def evaluators(self) -> list[IoUEvaluator]:
        return [IoUEvaluator(self)]

    # The evaluation report adds the source's full-size camera images to the picture's example.
    picture_uses_source_images = True

    def picture(self, variables, example: dict) -> np.ndarray:
        """Cameras, predicted BEV and ground truth of one example as an RGB array, with a legend of the
        classes. ``example['source_images']`` (optional, added by the evaluation report): the full-size camera
        images the example's model input was made from, shown instead of the small model input."""
        batch = jax.tree.map(lambda x: np.asarray(x)[None], self._select(example))
        logits = np.asarray(self.predict(variables, batch))[0]
        full = np.zeros(logits.shape[:2] + (len(BEV_CLASS_ID),), np.uint8)
        full[..., self.class_index] = logits > self.config.eval.threshold
        truth = np.zeros_like(full)
        truth[..., self.class_index] = example["bev_labels"][..., self.class_index]
        return prediction_picture(
            example["images"],
            full,
            truth,
            classes=self.classes,
            visibility=example.get("bev_visibility"),
            camera_names=list(self.config.inputs.cameras),
            source_images=example.get("source_images"),
            prediction_title=f"prediction (logit > {self.config.eval.threshold:g})",
        )
