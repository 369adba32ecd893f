"""The NRSeg task (METHODS.md section 2, issue 11): supervised source training of :class:`bevjax.models.nrseg.NRSeg`
on windows of ``T = config.data.window`` frames, with a Mean Teacher, evaluated through the teacher.

Loss of one step (every weight a field of ``config.loss`` / ``config.mt``; frames of a window are samples)::

    loss = dice * Dice_BEV(sigmoid(logits), w)                      multinomial head, PGCM weight w
         + edl * w * EDL                                            evidential head, HLSE clusters
         + pv * PV_Dice(pv_logits, to_pv_classes(pv_labels))        where the batch has pv_labels
         + temporal * L1(aux bev_splat, warped_prev; warped_valid)  streaming fusion
         + depth * CE(depth_logits, downsample_depth(depth, 8))     world depth, or LiDAR depth (nuScenes)
         + consistency_weight(t) * (MSE(sigmoid) + MSE(EDL p) + 0.1 MSE(BEV feature))   Mean Teacher (target)
         [+ target terms, below]

- Synthetic windows (``config.data.synthetic_domain``, e.g. ``singapore_synthetic``; split
  ``config.data.synthetic_split``, default ``<domain>_train``) are appended to the labelled windows of every
  batch by the pipeline, ``round(config.data.synthetic_ratio * batch)`` of them. Each synthetic frame carries its
  PGCM weight (``config.pgcm.enabled``): :func:`bevjax.pgcm.synthetic_scores` scores the split once with the PV
  segmenter of ``config.pgcm.segmenter`` (trained there first with ``config.pgcm.segmenter_config`` when it has no
  checkpoint) at the segmenter's image size, in this run's world settings, and the weights join the frames by
  index (checked on their ``noise_level``). Real frames, and synthetic ones without PGCM, get ``w = 1``.
- With ``config.data.labelled_fraction`` < 1 (semi-supervised, ``configs/nrseg_ssl.py``) only the first
  sequences of the source split are labelled; ``config.data.target_split`` then names the unlabelled stream.
- ``w`` is the batch's ``pgcm_weight`` ([b] or [b, t], see :mod:`bevjax.pgcm`) when present, else 1. It enters
  :func:`bevjax.losses.nrseg.dice_loss` as that function's ``relax`` (``config.loss.dice_relax``; default
  ``'denominator'``) and scales the per-sample EDL terms.
- EDL: per HLSE cluster (:func:`bevjax.models.bidpp.hlse_targets`), :func:`edl_mse_loss` over the cells where
  the cluster gets evidence and a camera sees (``bev_visibility``), KL annealed over ``config.loss.edl_anneal_steps``;
  the clusters' losses are averaged (not summed), so the term's scale does not grow with the number of clusters.
- Mean Teacher: the teacher (EMA of the student's variables, ``state.extra['ema']``, decay
  ``min(mean_teacher_decay(step), config.mt.ema_decay)``) runs in inference mode on the windows as the pipeline
  augmented them (geometric: "weak"); the student sees them with the strong photometric augmentation of
  ``config.mt.strong`` on top (brightness, contrast, saturation, pixel noise: :mod:`bevjax.ops.photometric`), for
  all its losses. ``config.mt.enabled=False`` drops the teacher's terms (the teacher is still
  kept and evaluated).
- UDA target stream (``config.data.target_domains``, e.g. ``('singapore',)``; split ``config.data.target_split``,
  default ``<first target domain>_train``; ``config.data.target_batch_size``, default the batch size): each
  training batch carries unlabelled target windows under ``batch['target']``, drawn by the same Grain dataset as
  the source windows (:mod:`bevjax.data.mixing`: one iterator state, so a resumed run is exact; the target's
  shuffle and augmentation seeds derive from the run's seed). The pipeline keeps only the model's inputs of the
  target windows (:func:`drop_target_labels`), so no target label can reach a loss. The student runs once on
  the source and target windows concatenated (BatchNorm statistics over both); the teacher runs on the clean
  target windows. Then the consistency compares the target student with the teacher, and two terms are added::

      + 0.5 * consistency_weight(t) * PV_Dice(target pv_logits, pseudo_labels(teacher pv_logits, pv_threshold))
      + temporal * L1 on the target windows                                       (``target_temporal``)

  (``config.mt.target_pv_weight``, ``config.mt.pv_threshold``). Without target domains the consistency runs on
  the labelled source batch itself.
- Evaluation (of the teacher, :meth:`NRSegTask.eval_variables`): IoU over a threshold sweep of the multinomial
  head's sigmoid (``mult/`` keys) and of the evidential head's hierarchical class probabilities (``edl/``),
  AUROC of the fused cell uncertainty (:func:`hierarchical_uncertainty`) for wrong cells and ECE of the EDL
  probabilities (``edl/AUROC``, ``edl/ECE``), and the multinomial head's ECE (``mult/ECE``). The picture
  (``prediction.png``) shows the cameras, the teacher's multinomial prediction, the ground truth, the cell
  uncertainty map; ``reliability.png`` the reliability diagrams of both heads over the evaluation pass.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bevjax.data import transforms as T
from bevjax.data.datasets import open_splits
from bevjax.data.derived import ZipSource
from bevjax.data.lidar_depth import LidarDepth
from bevjax.data.mixing import ConcatStreams, map_stream, stream_seed, zip_streams
from bevjax.data.pipeline import WindowSource, make_dataset
from bevjax.data.sources import SubsetSource
from bevjax.losses.nrseg import (
    consistency_loss,
    consistency_weight,
    depth_cross_entropy,
    dice_loss,
    dirichlet_probs,
    downsample_depth,
    edl_mse_loss,
    pseudo_labels,
    pv_dice_loss,
    temporal_l1,
)
from bevjax.metrics.threshold_iou import ThresholdIoUAccumulator
from bevjax.metrics.uncertainty import AUROCAccumulator, CalibrationAccumulator, reliability_diagram_png
from bevjax.models.bidpp import (
    HLSEConfig,
    class_probabilities_from_clusters,
    hierarchical_uncertainty,
    hlse_targets,
)
from bevjax.models.lss import LSSGeometry
from bevjax.models.nrseg import INPUT_KEYS, NUM_PV_CLASSES, PV_IGNORE, NRSeg, to_pv_classes
from bevjax.ops.photometric import strong_augment
from bevjax.schema import BEV_CLASS_ID
from bevjax.tasks.base import SupervisedTask, bev_class_index, config_grid, eval_image_aug, train_image_aug
from bevjax.training.state import (
    TrainState,
    accumulated_value_and_grad,
    ema_update,
    mean_teacher_decay,
    step_metrics,
)
from bevjax.viz import layout, prediction_picture
from bevjax.viz.bev import bev_panel_width, bev_scale
from bevjax.viz.layout import upscale

TARGET_KEYS = ("bev_labels", "bev_visibility")
OPTIONAL_KEYS = ("pv_labels", "depth", "pgcm_weight")
TARGET_STREAM = "target"  # the batch key of the unlabelled target-domain windows
SYNTHETIC_STREAM = "synthetic"  # the labelled synthetic windows, appended to the source batch in the pipeline


def drop_target_labels(batch: dict) -> dict:
    """The batch with its target windows reduced to the model's inputs (no label of the target domain reaches
    the loss, whatever a bug in it reads)."""
    if TARGET_STREAM not in batch:
        return batch
    target = batch[TARGET_STREAM]
    return {**batch, TARGET_STREAM: {k: target[k] for k in INPUT_KEYS if k in target}}


def unit_weight(example: dict) -> dict:
    """A frame with ``pgcm_weight = 1`` unless it has one (real frames; synthetic ones without PGCM)."""
    if "pgcm_weight" in example:
        return example
    return {**example, "pgcm_weight": np.float32(1.0)}


class _Post:
    """The pipeline's last step on a training batch: synthetic windows appended to the source windows, the
    target windows reduced to the model's inputs (picklable)."""

    def __init__(self, synthetic: bool):
        self.concat = ConcatStreams([SYNTHETIC_STREAM]) if synthetic else None

    def __call__(self, batch: dict) -> dict:
        if self.concat is not None:
            batch = self.concat(batch)
        return drop_target_labels(batch)


def _fold(x):
    """[b t ...] -> [(b t) ...]."""
    return x.reshape((-1,) + x.shape[2:])


def edl_probabilities(alpha: dict) -> jnp.ndarray:
    """The expected probabilities of every cluster's Dirichlet, concatenated over the clusters: [..., sum K_C]."""
    return jnp.concatenate([dirichlet_probs(alpha[name])[0] for name in sorted(alpha)], -1)


class _Predictions:
    """One jitted teacher pass per evaluation batch, shared by the task's evaluators (the batch object is the
    cache key: every evaluator's ``update`` gets the same one)."""

    def __init__(self, task: NRSegTask):
        self.task = task
        self.batch, self.value = None, None

    def __call__(self, variables, batch: dict, valid: np.ndarray) -> dict:
        if self.batch is not batch:
            out = self.task.predict(variables, batch)
            t = batch["images"].shape[1]
            mask = np.repeat(np.asarray(valid, np.float32), t)[:, None, None]  # (b t) 1 1
            vis = np.asarray(out["visibility"], np.float32)
            mask = mask * vis if self.task.config.eval.visible_only else np.broadcast_to(mask, vis.shape)
            self.batch, self.value = batch, {**out, "mask": mask}
        return self.value


class ThresholdIoUEvaluator:
    """IoU per class over a threshold sweep of one head's probabilities, its keys under ``prefix``."""

    def __init__(self, task: NRSegTask, predictions: _Predictions, head: str, prefix: str, title: str):
        self.predictions, self.head, self.prefix = predictions, head, prefix
        self.accumulator = ThresholdIoUAccumulator(task.classes, threshold=task.config.eval.threshold)
        self.title = title

    def update(self, variables, batch, valid) -> None:
        p = self.predictions(variables, batch, valid)
        self.accumulator.add(p[self.head], p["targets"], p["mask"])

    def result(self) -> dict[str, float]:
        return {self.prefix + k: v for k, v in self.accumulator.result().items()}

    def table(self) -> str:
        return self.accumulator.table()


class UncertaintyEvaluator:
    """AUROC of the evidential cell uncertainty for wrong cells (``edl/AUROC``), ECE of the EDL class
    probabilities (``edl/ECE``) and of the multinomial sigmoid (``mult/ECE``)."""

    def __init__(self, task: NRSegTask, predictions: _Predictions):
        self.predictions = predictions
        threshold = task.config.eval.threshold
        self.auroc = AUROCAccumulator(None, threshold=threshold)
        self.ece = {"edl": CalibrationAccumulator(task.classes), "mult": CalibrationAccumulator(task.classes)}
        self.title = (
            f"Evidential uncertainty on {{split}}: AUROC for wrong cells (p > {threshold:g}), ECE per class"
        )

    def update(self, variables, batch, valid) -> None:
        p = self.predictions(variables, batch, valid)
        self.auroc.add(p["edl"], p["targets"], p["uncertainty"], p["mask"])
        for head, acc in self.ece.items():
            acc.add(p[head], p["targets"], p["mask"])

    def result(self) -> dict[str, float]:
        out = {f"edl/{k}": v for k, v in self.auroc.result().items()}
        for head, acc in self.ece.items():
            out.update({f"{head}/{k}": v for k, v in acc.result().items()})
        return out

    def pictures(self) -> dict[str, np.ndarray]:
        """``reliability.png``: the reliability diagrams of the evidential probabilities and of the multinomial
        sigmoid over the pass, side by side (nothing before an update)."""
        if not self.ece["edl"].counts.sum():
            return {}
        return {
            "reliability": layout.hstack(
                [
                    reliability_diagram_png(self.ece["edl"].reliability(), title="Evidential head (EDL probabilities)"),
                    reliability_diagram_png(self.ece["mult"].reliability(), title="Multinomial head (sigmoid)"),
                ]
            )
        }

    def table(self) -> str:
        return "\n".join(
            [
                self.auroc.table(),
                "ECE of the evidential probabilities:",
                self.ece["edl"].table(),
                "ECE of the multinomial sigmoid:",
                self.ece["mult"].table(),
            ]
        )


class NRSegTask(SupervisedTask):
    """Builds everything task-specific from ``config`` (see ``configs/nrseg_uda.py``)."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.grid = config_grid(config)
        self.classes = tuple(config.model.classes)
        self.class_index = bev_class_index(self.classes)
        self.hlse = HLSEConfig(self.classes)
        m = config.model
        self.geometry = LSSGeometry(tuple(config.inputs.image_hw), 8, tuple(m.dbound), self.grid)
        self.model = NRSeg(
            hlse=self.hlse,
            geometry=self.geometry,
            context_channels=m.context_channels,
            pv_stride=1,
            temporal=m.temporal,
            evidence=m.evidence,
            drop_connect_rate=m.drop_connect_rate,
            trunk_depth=m.trunk_depth,
            dtype=jnp.dtype(m.get("dtype", "float32")),
            remat=m.get("remat", "none"),
        )

    # Data --------------------------------------------------------------------------------------------------
    def _open(self, split: str):
        inputs = self.config.inputs
        return open_splits(
            self.config.data, self.grid, [split], cameras=tuple(inputs.cameras), image_hw=tuple(inputs.image_hw)
        )[split]

    def _select(self, example: dict) -> dict:
        keys = INPUT_KEYS + TARGET_KEYS + tuple(k for k in OPTIONAL_KEYS if k in example)
        return {k: example[k] for k in keys if k in example}

    def target_split(self) -> str | None:
        """The unlabelled split of the Mean Teacher's target stream, or None: ``config.data.target_split`` (SSL:
        the labelled split itself), else ``<first of config.data.target_domains>_train`` (UDA), else none."""
        d = self.config.data
        domains = tuple(d.get("target_domains", ()) or ())
        missing = [x for x in domains if x not in tuple(d.domains)]
        if missing:
            raise ValueError(
                f"config.data.target_domains {missing} are not in config.data.domains ({d.domains})"
            )
        if d.get("target_split", ""):
            return str(d.target_split)
        return f"{domains[0]}_train" if domains else None

    def synthetic_split(self) -> str | None:
        """The labelled synthetic split (``config.data.synthetic_split``, default ``<synthetic_domain>_train``), or
        None without ``config.data.synthetic_domain``."""
        d = self.config.data
        domain = d.get("synthetic_domain", "")
        if not domain:
            return None
        if d.dataset != "world":
            raise ValueError(
                f"config.data.synthetic_domain='{domain}': synthetic data comes from the world only, not from "
                f"config.data.dataset='{d.dataset}' (set config.data.synthetic_domain='')"
            )
        if not domain.endswith("_synthetic"):
            raise ValueError(
                f"config.data.synthetic_domain='{domain}' is not a synthetic domain: use <domain>_synthetic, "
                "e.g. 'singapore_synthetic'"
            )
        return d.get("synthetic_split", "") or f"{domain}_train"

    def labelled_source(self):
        """The labelled source split; with ``config.data.labelled_fraction`` f < 1 only its first
        ``max(1, round(f * sequences))`` sequences (semi-supervised settings: the rest is unlabelled), or its first
        ``round(f * records)`` records for a split without fixed-length sequences."""
        source = self._open(self.config.data.train_split)
        fraction = float(self.config.data.get("labelled_fraction", 1.0))
        if fraction >= 1.0:
            return source
        if not 0.0 < fraction:
            raise ValueError(f"config.data.labelled_fraction={fraction}: give a fraction in (0, 1]")
        f = getattr(source, "frames_per_sequence", None)
        if f is None:  # records without fixed-length sequences (nuScenes keyframes, scene by scene): the first ones
            n = max(1, round(fraction * len(source)))
            return SubsetSource(source, list(range(n)), f"{self.config.data.train_split}[:{n}]")
        sequences = max(1, round(fraction * (len(source) // f)))
        subset = SubsetSource(source, list(range(sequences * f)), f"{self.config.data.train_split}[:{sequences}seq]")
        subset.frames_per_sequence = f
        return subset

    def synthetic_source(self):
        """The synthetic split (in a world of its own domain, with this config's world settings) with its PGCM
        ``pgcm_weight`` per frame (``config.pgcm.enabled``; :func:`bevjax.pgcm.synthetic_scores`, computed once by
        the segmenter of ``config.pgcm.segmenter``), or None without synthetic data."""
        split = self.synthetic_split()
        if split is None:
            return None
        c = self.config
        data = ml_collections.ConfigDict(c.data.to_dict())
        data.domains = (split.rsplit("_", 1)[0],)
        source = open_splits(
            data, self.grid, [split], cameras=tuple(c.inputs.cameras), image_hw=tuple(c.inputs.image_hw)
        )[split]
        if not c.pgcm.enabled:
            return source
        from bevjax import pgcm

        scores = pgcm.synthetic_scores(
            c.pgcm.segmenter,
            split,
            config_spec=c.pgcm.get("segmenter_config", ""),
            tau=float(c.pgcm.tau),
            step=int(c.pgcm.get("step", -1)),
            data_dir=str(c.data.get("data_dir", "")),
            world={
                "world": c.data.world.to_dict(),
                "train_sequences": int(c.data.train_sequences),
                "val_sequences": int(c.data.val_sequences),
            },
        )
        n = len(source)
        same = len(scores) == n and all(
            np.isclose(float(source[i]["noise_level"]), float(scores[i]["pgcm_noise_level"]))
            for i in sorted({0, n // 2, n - 1})
        )
        if not same:
            raise ValueError(
                f"the PGCM scores of {split} ({len(scores)} frames, from the world of the segmenter in "
                f"{c.pgcm.segmenter}) are not those of this run's {split} ({n} frames): the world settings "
                "differ (a bug: they are passed on)"
            )
        zipped = ZipSource(source, scores)
        zipped.frames_per_sequence = source.frames_per_sequence
        return zipped

    def windows(self, source, name: str, stride: int = 1) -> WindowSource:
        """Windows of ``config.data.window`` frames of ``source`` (a split of fixed-length sequences; with
        ``window = 1`` any split: every record is then a window of one frame that starts a sequence)."""
        t = int(self.config.data.window)
        f = getattr(source, "frames_per_sequence", None)
        if f is None:
            if t > 1:
                raise ValueError(
                    f"config.data.window={t} needs a split of fixed-length sequences (the world's); {name} has "
                    "none: set config.data.window=1"
                )
            f = 1
        return WindowSource(source, t, f, stride=stride)

    def train_dataset(self, seed: int, batch_size: int, process_index: int, process_count: int):
        """Source windows [+ synthetic windows appended, ``round(config.data.synthetic_ratio * batch)`` of them]
        [+ unlabelled target windows under ``'target'``], one Grain dataset (one checkpointed iterator state).
        The transforms run on every frame of a window with the same random draws (:class:`T.PerFrame`)."""
        c = self.config
        image_aug = train_image_aug(c)
        labelled = self.windows(self.labelled_source(), c.data.train_split)
        target_split, synthetic = self.target_split(), self.synthetic_source()
        # Real datasets without dense depth (nuScenes) get the LiDAR's sparse depth for the depth loss.
        transforms = [image_aug, LidarDepth()] + ([unit_weight] if synthetic is not None else []) + [self._select]
        transforms = [T.PerFrame(x) for x in transforms]
        if target_split is None and synthetic is None:
            return make_dataset(
                labelled,
                batch_size=batch_size,
                seed=seed,
                transforms=transforms,
                process_index=process_index,
                process_count=process_count,
                worker_count=c.data.worker_count,
            )
        # Independent shuffles (seeds derived from the run's seed and the stream's name), zipped by index.
        shard = dict(process_index=process_index, process_count=process_count)
        source = map_stream(labelled, seed=seed, transforms=transforms, **shard)
        others = {}
        if synthetic is not None:
            n_syn = max(1, round(float(c.data.synthetic_ratio) * batch_size))
            devices = jax.local_device_count()
            if (batch_size + n_syn) % devices:
                raise ValueError(
                    f"config.data.synthetic_ratio={c.data.synthetic_ratio}: {batch_size} labelled + {n_syn} synthetic "
                    f"windows per process do not split over its {devices} devices; choose a ratio that makes the "
                    f"sum a multiple of {devices}"
                )
            syn = map_stream(
                self.windows(synthetic, self.synthetic_split()),
                seed=stream_seed(seed, SYNTHETIC_STREAM),
                transforms=transforms,
                **shard,
            )
            others[SYNTHETIC_STREAM] = (syn, n_syn)
        if target_split is not None:
            target = map_stream(
                self.windows(self._open(target_split), target_split),
                seed=stream_seed(seed, TARGET_STREAM),
                transforms=[T.PerFrame(image_aug), T.PerFrame(self._select_inputs)],
                **shard,
            )
            others[TARGET_STREAM] = (target, int(c.data.get("target_batch_size", 0) or batch_size))
        return zip_streams(
            source, batch_size, others, post=_Post(synthetic is not None), worker_count=c.data.worker_count
        )

    def _select_inputs(self, example: dict) -> dict:
        return {k: example[k] for k in INPUT_KEYS if k in example}

    def eval_source(self):
        """Non-overlapping windows of ``config.data.window`` frames of the evaluation split."""
        split = self.config.data.eval_split
        return self.windows(self._open(split), split, stride=int(self.config.data.window))

    def eval_example(self, example: dict) -> dict:
        """A window as evaluation wants it: every frame through the test-time image transform (identity at the
        stored size of the world; nuScenes' 1600x900 images resized and cropped to the network size)."""
        aug = T.PerFrame(eval_image_aug(self.config))
        return self._select(aug.random_map(example, np.random.default_rng(0)))

    # Model -------------------------------------------------------------------------------------------------
    def _inputs(self, batch: dict) -> dict:
        return {k: batch[k] for k in INPUT_KEYS}

    def init(self, rng: jax.Array, batch: dict) -> dict:
        return self.model.init(rng, **self._inputs(batch), train=False)

    def init_state(self, variables: dict, tx) -> TrainState:
        ema = jax.tree.map(jnp.copy, dict(variables))  # the teacher starts as a copy of the student
        return TrainState.create(variables, tx, extra={"ema": ema})

    def eval_variables(self, state: TrainState) -> dict:
        """The EMA teacher (NRSeg evaluates the teacher)."""
        return state.extra["ema"]

    def targets(self, batch: dict) -> jnp.ndarray:
        """[b t x y k] BEV labels of the task's classes."""
        return jnp.take(batch["bev_labels"], jnp.asarray(self.class_index), axis=-1)

    def sample_weights(self, batch: dict) -> jnp.ndarray:
        """[(b t)] PGCM weights per frame: ``pgcm_weight`` ([b] or [b, t]) or ones."""
        b, t = batch["images"].shape[:2]
        w = batch.get("pgcm_weight")
        if w is None:
            return jnp.ones((b * t,), jnp.float32)
        w = jnp.asarray(w, jnp.float32)
        return jnp.broadcast_to(w if w.ndim == 2 else w[:, None], (b, t)).reshape(-1)

    def student_images(self, images, rng) -> jnp.ndarray:
        """The student's images: the window with the strong photometric augmentation of ``config.mt.strong``
        (:func:`bevjax.ops.photometric.strong_augment`: brightness, contrast, saturation, pixel noise; one draw
        per image). The teacher sees the windows without it (their geometric augmentation is shared)."""
        st = self.config.mt.strong
        return strong_augment(
            images, rng, brightness=st.brightness, contrast=st.contrast, saturation=st.saturation, noise=st.noise
        )

    def loss_terms(
        self, outputs: dict, aux: dict, batch: dict, step, teacher: dict | None, target: tuple | None = None
    ) -> dict:
        """The unweighted terms of the loss (scalars) from the student's ``outputs`` / ``aux`` on the source batch
        and the teacher's outputs (None: no consistency term). With ``target = (outputs, aux)``, the student's on
        the target windows, the teacher's outputs are those of the target windows: the consistency compares them
        with the target student's, and ``target_pv_dice`` (the target student's PV Dice against the teacher's PV
        pseudo-labels) and ``target_temporal`` are added."""
        lc = self.config.loss
        w = self.sample_weights(batch)  # (b t)
        targets = _fold(self.targets(batch))  # (b t) x y k
        vis = _fold(batch["bev_visibility"]).astype(jnp.float32)  # (b t) x y
        probs = jax.nn.sigmoid(_fold(outputs["logits"]))
        dice_mask = vis if lc.visible_only else None
        terms = {"dice": dice_loss(probs, targets, weights=w, mask=dice_mask, relax=lc.dice_relax)}
        cluster_targets, cluster_masks = hlse_targets(targets, self.hlse)
        edl = [
            edl_mse_loss(
                _fold(outputs["alpha"][name]),
                cluster_targets[name],
                step,
                lc.edl_anneal_steps,
                mask=cluster_masks[name] * vis,
                weights=w,
            )
            for name in cluster_targets
        ]
        terms["edl"] = sum(edl) / len(edl)
        if "pv_labels" in batch:
            terms["pv_dice"] = pv_dice_loss(
                _fold(outputs["pv_logits"]), _fold(to_pv_classes(batch["pv_labels"])), NUM_PV_CLASSES, PV_IGNORE
            )
        terms["temporal"] = temporal_l1(
            _fold(outputs["warped_prev"]), _fold(aux["bev_splat"]), _fold(outputs["warped_valid"])
        )
        if "depth" in batch:
            depth = downsample_depth(_fold(batch["depth"]), self.geometry.stride)  # (b t) n fh fw
            terms["depth"] = depth_cross_entropy(_fold(outputs["depth_logits"]), depth, self.geometry.dbound)
        if teacher is not None:
            student = outputs if target is None else target[0]
            terms["consistency"] = (
                consistency_loss(jax.nn.sigmoid(student["logits"]), jax.nn.sigmoid(teacher["logits"]))
                + consistency_loss(edl_probabilities(student["alpha"]), edl_probabilities(teacher["alpha"]))
                + self.config.mt.feature_weight
                * consistency_loss(student["bev_feature"], teacher["bev_feature"])
            )
        if target is not None:
            t_out, t_aux = target
            if teacher is not None:
                labels = pseudo_labels(_fold(teacher["pv_logits"]), self.config.mt.pv_threshold, PV_IGNORE)
                terms["target_pv_dice"] = pv_dice_loss(
                    _fold(t_out["pv_logits"]), labels, NUM_PV_CLASSES, PV_IGNORE
                )
            terms["target_temporal"] = temporal_l1(
                _fold(t_out["warped_prev"]), _fold(t_aux["bev_splat"]), _fold(t_out["warped_valid"])
            )
        return terms

    def term_weights(self, step) -> dict:
        """The weight of every term at ``step`` (the consistency ramp is a function of the step)."""
        lc, mt = self.config.loss, self.config.mt
        ramp = consistency_weight(step, mt.ramp_steps, mt.ramp_low, mt.ramp_high)
        return {
            "dice": lc.dice_weight,
            "edl": lc.edl_weight,
            "pv_dice": lc.pv_weight,
            "temporal": lc.temporal_weight,
            "depth": lc.depth_weight,
            "consistency": ramp,
            "target_pv_dice": mt.get("target_pv_weight", 0.5) * ramp,
            "target_temporal": lc.temporal_weight,
        }

    def loss_fn(self, params, model_state, batch, rng, teacher=None, step=0):
        """With a ``target`` stream in the batch, the student runs once on the source and target windows
        concatenated (both noised; BatchNorm statistics over both), the teacher on the clean target windows."""
        noise_rng, dropout_rng = jax.random.split(rng)
        inputs = self._inputs(batch)
        target = batch.get(TARGET_STREAM)
        b = inputs["images"].shape[0]
        teacher_in = inputs
        if target is not None:
            teacher_in = self._inputs(target)  # input keys only: the pipeline dropped the target's labels
            inputs = jax.tree.map(lambda x, y: jnp.concatenate([x, y], 0), inputs, teacher_in)
        teacher_out = None
        if teacher is not None:
            teacher_out, _ = self.model.apply(teacher, **teacher_in, train=False)
            teacher_out = jax.lax.stop_gradient(teacher_out)
        inputs = {**inputs, "images": self.student_images(inputs["images"], noise_rng)}
        (outputs, aux), updates = self.model.apply(
            {"params": params, **model_state},
            **inputs,
            train=True,
            rngs={"dropout": dropout_rng},
            mutable=["batch_stats"],
        )
        target_out = None
        if target is not None:
            target_out = jax.tree.map(lambda x: x[b:], (outputs, aux))
            outputs, aux = jax.tree.map(lambda x: x[:b], (outputs, aux))
        source = {k: v for k, v in batch.items() if k != TARGET_STREAM}
        loss, metrics = self.assemble(outputs, aux, source, step, teacher_out, target_out)
        return loss, (metrics, updates)

    def assemble(self, outputs: dict, aux: dict, batch: dict, step, teacher: dict | None, target=None):
        """``(loss, metrics)``: the weighted sum of :meth:`loss_terms` with :meth:`term_weights`; the metrics are
        the unweighted terms (and ``consistency_weight`` with a teacher)."""
        terms = self.loss_terms(outputs, aux, batch, step, teacher, target)
        weights = self.term_weights(step)
        loss = sum(weights[k] * v for k, v in terms.items())
        metrics = dict(terms)
        if teacher is not None:
            metrics["consistency_weight"] = weights["consistency"]
        return loss, metrics

    def train_step(self, state: TrainState, batch: dict, rng: jax.Array):
        mt = self.config.mt
        teacher = state.extra["ema"] if mt.enabled else None
        loss_fn = functools.partial(self.loss_fn, teacher=teacher, step=state.step)
        (loss, metrics, model_state), grads = accumulated_value_and_grad(
            loss_fn, state.params, state.model_state, batch, rng, int(self.config.train.accumulate)
        )
        new = state.apply_gradients(grads, model_state=model_state)
        decay = jnp.minimum(mean_teacher_decay(state.step), mt.ema_decay)
        new = new.replace(extra={"ema": ema_update(state.extra["ema"], new.variables, decay)})
        return new, dict(step_metrics(metrics, loss, grads, new.params), ema_decay=decay)

    # Evaluation --------------------------------------------------------------------------------------------
    @functools.cached_property
    def predict(self):
        """jit: (variables, window batch) -> per frame [(b t) ...]: ``mult`` and ``edl`` probabilities [x y k],
        ``uncertainty`` [x y], ``targets`` [x y k], ``visibility`` [x y]."""
        ec = self.config.eval

        def fn(variables, batch):
            outputs, _ = self.model.apply(variables, **self._inputs(batch), train=False)
            alpha = {k: _fold(v) for k, v in outputs["alpha"].items()}
            cell_u, _ = hierarchical_uncertainty(alpha, self.hlse, ec.fusion, ec.cell)
            return {
                "mult": jax.nn.sigmoid(_fold(outputs["logits"])),
                "edl": class_probabilities_from_clusters(alpha, self.hlse),
                "uncertainty": cell_u,
                "targets": _fold(self.targets(batch)),
                "visibility": _fold(batch["bev_visibility"]),
            }

        return jax.jit(fn)

    def evaluators(self) -> list:
        predictions = _Predictions(self)
        th = self.config.eval.threshold
        return [
            ThresholdIoUEvaluator(
                self, predictions, "mult", "mult/", f"IoU per class on {{split}}, multinomial head (p > {th:g})"
            ),
            ThresholdIoUEvaluator(
                self, predictions, "edl", "edl/", f"IoU per class on {{split}}, evidential head (p > {th:g})"
            ),
            UncertaintyEvaluator(self, predictions),
        ]

    def picture(self, variables, example: dict) -> np.ndarray:
        """The window's last frame: cameras, the multinomial head's prediction, ground truth, and below them the
        evidential cell uncertainty (white 0, black 1). (The reliability diagrams of the evaluation pass go to
        ``reliability.png``: :meth:`UncertaintyEvaluator.pictures`.)"""
        batch = jax.tree.map(lambda x: np.asarray(x)[None], example)
        p = jax.tree.map(lambda a: np.asarray(a)[-1], self.predict(variables, batch))  # last frame
        th = self.config.eval.threshold
        full = np.zeros(p["mult"].shape[:2] + (len(BEV_CLASS_ID),), np.uint8)
        full[..., self.class_index] = p["mult"] > th
        truth = np.zeros_like(full)
        truth[..., self.class_index] = np.asarray(example["bev_labels"])[-1][..., self.class_index]
        top = prediction_picture(
            np.asarray(example["images"])[-1],
            full,
            truth,
            classes=self.classes,
            visibility=np.asarray(example["bev_visibility"])[-1],
            camera_names=list(self.config.inputs.cameras),
            prediction_title=f"teacher, multinomial head (p > {th:g})",
        )
        u = np.clip(p["uncertainty"], 0.0, 1.0)[::-1, ::-1]  # forward up, as the BEV panels
        gray = np.repeat((255 * (1.0 - u)).astype(np.uint8)[..., None], 3, -1)
        k = bev_scale(gray.shape[:2], bev_panel_width(top.shape[1] - 2 * layout.MARGIN, 2))  # as a BEV panel above
        panel = layout.titled(upscale(gray, k), "evidential cell uncertainty (white 0, black 1)")
        return layout.vstack([top, panel])
