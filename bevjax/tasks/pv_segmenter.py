"""The PV segmenter task: perspective-view semantic segmentation of single camera images of the world.

NRSeg's PGCM (issue 11, :mod:`bevjax.pgcm`) needs a segmenter that predicts the road on (synthetic) camera
images; the paper uses an off-the-shelf Mask2Former, bevjax trains :class:`bevjax.models.pv_segmenter.PVSegmenter`
with this task on the clean (source-domain) images of the embedded world, whose ``pv_labels``
(``schema.SEMANTIC_CLASSES``) are exact. Train it with the engine::

    python -m bevjax.train --config configs/pv_seg.py --workdir runs/pv_seg

Data: ``config.data`` as for every task (``open_splits``); an example's ``n`` cameras stay together as
``[n, h, w, 3]`` and the model folds them into its batch. ``config.model.classes`` names the model's classes
in its order (road first by default); a perspective label of a class not listed is ignored (no loss, not
scored). Training augments each camera with the LSS image augmentation (``config.augment``: resize, crop,
flip, rotation; the labels follow by nearest neighbour) and optional colour jitter.

Loss, over the scored pixels ``P`` of a batch (``y_i`` the label of pixel ``i``, ``z_i`` its logits)::

    CE   = (1 / |P|) sum_{i in P} -log softmax(z_i)[y_i]
    L    = loss.ce_weight * CE + loss.dice_weight * Dice        (Dice: bevjax.losses.pv_dice_loss)

Evaluation: the confusion matrix of ``argmax_k z`` against the labels over a split, IoU per class
``TP / (TP + FP + FN)``, their mean and the pixel accuracy.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bevjax.data import transforms as T
from bevjax.data.datasets import open_splits
from bevjax.data.pipeline import make_dataset
from bevjax.losses import pv_dice_loss
from bevjax.models.pv_segmenter import PVSegmenter
from bevjax.schema import SEMANTIC_CLASS_ID
from bevjax.tasks.base import SupervisedTask, config_grid, train_image_aug
from bevjax.viz import SEMANTIC_PALETTE, layout, semantic_legend

IGNORE = 255  # the label of pixels whose class the model does not have
KEYS = ("images", "pv_labels")
NOT_SCORED_COLOUR = (150, 150, 150)


def label_table(classes) -> np.ndarray:
    """[256] uint8 lookup: semantic class id (``schema.SEMANTIC_CLASSES``) -> index in ``classes``, or IGNORE.

    Raises:
      ValueError: a name that is not a semantic class, or one given twice.
    """
    classes = tuple(classes)
    unknown = [c for c in classes if c not in SEMANTIC_CLASS_ID]
    if unknown or len(set(classes)) != len(classes):
        raise ValueError(
            f"config.model.classes={classes}: give distinct names from {sorted(SEMANTIC_CLASS_ID)}"
            + (f" (unknown: {unknown})" if unknown else "")
        )
    table = np.full(256, IGNORE, np.uint8)
    for k, name in enumerate(classes):
        table[SEMANTIC_CLASS_ID[name]] = k
    return table


def confusion_matrix(pred, labels, num_classes: int, mask=None) -> jax.Array:
    """[k, k] int32 counts of (true class, predicted class) over the pixels with a label in ``[0, k)``.

    Static shapes: out-of-range labels and masked pixels go to a dump bin of ``segment_sum``.

    Args:
      pred: [...] predicted class indices.
      labels: [...] true class indices (IGNORE or any value >= k: not counted).
      num_classes: ``k`` (static).
      mask: optional [...] bool (e.g. the padding examples of the last batch): only these pixels count.
    """
    k = num_classes
    labels = jnp.asarray(labels).astype(jnp.int32)
    counted = labels < k
    if mask is not None:
        counted &= jnp.broadcast_to(mask, labels.shape)
    index = jnp.where(counted, labels * k + jnp.asarray(pred).astype(jnp.int32), k * k)  # ...
    ones = jnp.ones(index.size, jnp.int32)
    counts = jax.ops.segment_sum(ones, index.reshape(-1), num_segments=k * k + 1)  # (k k + 1)
    return counts[:-1].reshape(k, k)  # true x predicted


def iou_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """[k] IoU ``TP / (TP + FP + FN)`` per class of a (true x predicted) confusion matrix; NaN where the class
    is neither in the labels nor predicted."""
    c = np.asarray(confusion, np.float64)
    tp = np.diag(c)
    denom = c.sum(0) + c.sum(1) - tp  # predicted + true - both
    return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)


class PVIoUEvaluator:
    """IoU per class of the argmax prediction over an evaluation pass (counts summed over the whole split)."""

    def __init__(self, task: PVSegmenterTask):
        self.task = task
        k = len(task.classes)
        self.confusion = np.zeros((k, k), np.int64)
        self.title = "PV segmentation IoU per class on {split} (argmax, every camera, every labelled pixel)"

    def update(self, variables, batch: dict, valid: np.ndarray) -> None:
        self.confusion += np.asarray(self.task.eval_confusion(variables, batch, jnp.asarray(valid)), np.int64)

    def result(self) -> dict[str, float]:
        iou = iou_from_confusion(self.confusion)
        out = {name: float(v) for name, v in zip(self.task.classes, iou, strict=True)}
        out["mIoU"] = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
        total = self.confusion.sum()
        out["pixel_accuracy"] = float(np.trace(self.confusion) / total) if total else float("nan")
        return out

    def table(self) -> str:
        res = self.result()
        c = self.confusion
        tp = np.diag(c)
        fp, fn = c.sum(0) - tp, c.sum(1) - tp
        lines = [f"{'class':<16s} {'IoU':>6s}   TP / FP / FN (pixels)"]
        for k, name in enumerate(self.task.classes):
            lines.append(f"{name:<16s} {res[name]:6.3f}   {tp[k]} / {fp[k]} / {fn[k]}")
        lines.append(f"{'mean':<16s} {res['mIoU']:6.3f}")
        lines.append(f"{'pixel accuracy':<16s} {res['pixel_accuracy']:6.3f}")
        return "\n".join(lines)


class PVSegmenterTask(SupervisedTask):
    """Builds everything task-specific from ``config`` (see ``configs/pv_seg.py`` and the module docstring)."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.grid = config_grid(config)
        self.classes = tuple(config.model.classes)
        self.table = label_table(self.classes)
        m = config.model
        self.model = PVSegmenter(
            num_classes=len(self.classes),
            stride=int(m.stride),
            features=int(m.features),
            drop_connect_rate=float(m.drop_connect_rate),
            trunk_depth=float(m.trunk_depth),
            dtype=jnp.dtype(m.get("dtype", "float32")),
        )

    # Data --------------------------------------------------------------------------------------------------
    def open_split(self, split: str, data_cfg: ml_collections.ConfigDict | None = None):
        """One split of ``config.data`` (or ``data_cfg``) for the model inputs of ``config.inputs``."""
        inputs = self.config.inputs
        data_cfg = self.config.data if data_cfg is None else data_cfg
        return open_splits(
            data_cfg, self.grid, [split], cameras=tuple(inputs.cameras), image_hw=tuple(inputs.image_hw)
        )[split]

    def _select(self, example: dict) -> dict:
        """``images`` and ``pv_labels`` as model class indices (IGNORE where the class is not modelled)."""
        return {"images": example["images"], "pv_labels": self.table[np.asarray(example["pv_labels"])]}

    def train_dataset(self, seed: int, batch_size: int, process_index: int, process_count: int):
        c = self.config
        a = c.augment
        transforms = [
            train_image_aug(c)
        ]
        if a.color_jitter:
            transforms.append(T.ColorJitter())
        transforms.append(self._select)
        return make_dataset(
            self.open_split(c.data.train_split),
            batch_size=batch_size,
            seed=seed,
            transforms=transforms,
            process_index=process_index,
            process_count=process_count,
            worker_count=c.data.worker_count,
        )

    def eval_source(self):
        return self.open_split(self.config.data.eval_split)

    def eval_example(self, example: dict) -> dict:
        """An evaluation example: the stored images (the world renders at the network size), no augmentation."""
        return self._select(example)

    # Model -------------------------------------------------------------------------------------------------
    def init(self, rng: jax.Array, batch: dict) -> dict:
        return self.model.init(rng, batch["images"], False)

    def loss_fn(self, params, model_state, batch, rng):
        """Cross-entropy over the labelled pixels (and the weighted PV Dice); see the module docstring."""
        (logits, _), updates = self.model.apply(
            {"params": params, **model_state},
            batch["images"],
            True,
            rngs={"dropout": rng},
            mutable=["batch_stats"],
        )  # b n h w k
        k = len(self.classes)
        labels = batch["pv_labels"].astype(jnp.int32)  # b n h w
        scored = labels < k
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(scored, labels, 0))  # b n h w
        count = jnp.maximum(scored.sum(), 1)
        ce = jnp.sum(jnp.where(scored, ce, 0.0)) / count
        accuracy = jnp.sum((jnp.argmax(logits, -1) == labels) & scored) / count
        lc = self.config.loss
        loss = lc.ce_weight * ce
        metrics = {"ce": ce, "pixel_accuracy": accuracy}
        if lc.dice_weight:
            dice = pv_dice_loss(logits, labels, k)
            loss = loss + lc.dice_weight * dice
            metrics["dice"] = dice
        return loss, (metrics, updates)

    @functools.cached_property
    def predict(self):
        """jit: (variables, batch) -> logits [b, n, h, w, k]."""

        def fn(variables, batch):
            logits, _ = self.model.apply(variables, batch["images"], False)
            return logits

        return jax.jit(fn)

    @functools.cached_property
    def eval_confusion(self):
        """jit: (variables, batch, valid [b]) -> [k, k] confusion counts of the batch (padding not counted)."""

        def fn(variables, batch, valid):
            logits, _ = self.model.apply(variables, batch["images"], False)
            mask = (valid > 0)[:, None, None, None]  # b 1 1 1
            return confusion_matrix(jnp.argmax(logits, -1), batch["pv_labels"], len(self.classes), mask)

        return jax.jit(fn)

    def evaluators(self) -> list[PVIoUEvaluator]:
        return [PVIoUEvaluator(self)]

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """RGB [..., 3] of model class indices in the semantic palette (IGNORE in grey)."""
        ids = np.array([SEMANTIC_CLASS_ID[c] for c in self.classes] + [0], np.int64)
        labels = np.asarray(labels).astype(np.int64)
        index = np.where(labels < len(self.classes), labels, len(self.classes))
        rgb = SEMANTIC_PALETTE[ids[index]]
        return np.where((labels >= len(self.classes))[..., None], np.uint8(NOT_SCORED_COLOUR), rgb)

    def picture(self, variables, example: dict) -> np.ndarray:
        """Every camera's image, predicted classes and labels side by side, with a legend of the classes."""
        batch = jax.tree.map(lambda x: np.asarray(x)[None], self._select_eval(example))
        pred = np.argmax(np.asarray(self.predict(variables, batch))[0], -1)  # n h w
        names = list(self.config.inputs.cameras)
        tiles, titles = [], []
        for i in range(pred.shape[0]):
            for what, image in (
                ("image", example["images"][i]),
                ("prediction", self.colorize(pred[i])),
                ("labels", self.colorize(example["pv_labels"][i])),
            ):
                tile, how = layout.readable_camera(np.asarray(image), smooth=False)
                tiles.append(tile)
                titles.append(
                    f"{names[i] if i < len(names) else f'cam {i}'} {what}" + (f" ({how})" if how else "")
                )
        legend = semantic_legend(self.classes)
        if (np.asarray(example["pv_labels"]) >= len(self.classes)).any():
            legend.append(("not a model class (not scored)", NOT_SCORED_COLOUR))
        title = "PV segmenter: camera images, predicted classes (argmax), labels"
        return layout.figure([layout.grid_of(tiles, 3, titles=titles)], title, [("PV classes:", legend)])

    @staticmethod
    def _select_eval(example: dict) -> dict:
        return {k: example[k] for k in KEYS}
