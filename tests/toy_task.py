"""A toy task that exercises the whole task protocol (not a method): per-pixel depth from one camera of the world,
a student trained by L1 on log-depth plus consistency with an EMA (Mean-Teacher) copy of itself.

What it exercises: extra state (the EMA teacher, saved, restored and used for evaluation), two parameter groups
(``encoder`` and ``head``: ``config.optim.groups``), ``config.init_from`` (a second run starts from the first's
encoder), sequence windows (``[b, t, ...]`` batches with ``sequence_start``) and its own evaluator (depth errors).

    python -m bevjax.train --config tests/toy_task.py --workdir /tmp/toy

(run from the repository root, which makes ``tests.toy_task`` importable as the config's ``task``).
"""

from __future__ import annotations

import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bevjax.data.datasets import open_splits
from bevjax.data.pipeline import WindowSource, make_dataset
from bevjax.geometry.grid import BEVGrid
from bevjax.tasks.base import SupervisedTask
from bevjax.training.defaults import add_engine_sections
from bevjax.training.state import (
    TrainState,
    accumulated_value_and_grad,
    ema_update,
    mean_teacher_decay,
    step_metrics,
)
from bevjax.viz import fit_height, labelled

STRIDE = 4  # the network predicts one depth per 4 x 4 pixels


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "tests.toy_task:ToyDepthTask"
    c.seed = 0
    c.tensorboard = False
    c.grid = ml_collections.ConfigDict(
        dict(xbound=(-16.0, 16.0, 1.0), ybound=(-16.0, 16.0, 1.0), zbound=(-10.0, 10.0, 20.0))
    )
    c.inputs = ml_collections.ConfigDict(dict(cameras=("CAM_FRONT",), image_hw=(32, 96)))
    c.data = ml_collections.ConfigDict(
        dict(
            dataset="world",
            data_dir="",
            domains=("boston",),
            train_sequences=1,
            val_sequences=1,
            train_split="boston_train",
            eval_split="boston_val",
            worker_count=0,
            window=2,
            read_delay_s=0.0,  # seconds per example read: a slow disk (lets a test kill a run mid-way)
            world=dict(seed=0, frames_per_sequence=4, lidar_beams=2, lidar_azimuths=64),
        )
    )
    c.model = ml_collections.ConfigDict(dict(features=8, ema_decay=0.99, consistency=0.1))
    c.optim = ml_collections.ConfigDict(
        dict(
            name="adamw",
            lr=3e-3,
            weight_decay=1e-4,
            grad_clip=5.0,
            schedule="constant",
            warmup_steps=0,
            groups=(("^encoder/", 0.5),),  # the encoder trains at half the rate of the head
            no_decay="(bias|scale)$",
        )
    )
    add_engine_sections(c, batch_size=2, steps=6, log_every=2, checkpoint_every=2, keep_checkpoints=3)
    c.eval = ml_collections.ConfigDict(dict(batch_size=2, max_examples=0, picture_index=0))
    return c


class Encoder(nn.Module):
    """Two 3x3 stride-2 convolutions: [m, h, w, 3] -> [m, h/4, w/4, 2c] (no bias before the BatchNorm)."""

    features: int = 8

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.features, (3, 3), strides=2)(x))  # m h/2 w/2 c
        return nn.Conv(2 * self.features, (3, 3), strides=2, use_bias=False)(x)  # m h/4 w/4 2c


class DepthNet(nn.Module):
    """uint8 images [m, h, w, 3] -> log-depth [m, h/4, w/4] (an ``encoder`` and a ``head``)."""

    features: int = 8

    @nn.compact
    def __call__(self, images, train: bool):
        x = images.astype(jnp.float32) / 255.0 - 0.5  # m h w 3
        x = Encoder(self.features, name="encoder")(x)  # m h/4 w/4 c
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="norm")(x)
        x = nn.relu(x)
        return nn.Conv(1, (1, 1), name="head")(x)[..., 0] + 2.5  # m h/4 w/4 (log metres, about 12 m)


def block_depth(depth: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Mean log-depth of the hit pixels of each 4 x 4 block and whether any was hit: [m, h/4, w/4] each."""
    m, h, w = depth.shape
    blocks = depth.reshape(m, h // STRIDE, STRIDE, w // STRIDE, STRIDE)  # m y 4 x 4
    hit = blocks > 0
    count = hit.sum((2, 4))
    log_sum = jnp.where(hit, jnp.log(jnp.maximum(blocks, 1e-3)), 0.0).sum((2, 4))
    return log_sum / jnp.maximum(count, 1), count > 0


class DepthEvaluator:
    """Depth errors of the EMA teacher over the hit blocks: absolute relative error and RMSE in metres."""

    title = "Depth of the EMA teacher on {split} (4 x 4 blocks)"

    def __init__(self, task: ToyDepthTask):
        self.task = task
        self.sums = np.zeros(3)  # sum |d - d*| / d*, sum (d - d*)^2, count

    def update(self, variables, batch, valid) -> None:
        pred, target, hit = (np.asarray(a) for a in self.task.predict(variables, batch))
        b = len(valid)
        w = hit.reshape(b, -1) * np.asarray(valid)[:, None]  # b (t n y x)
        d, t = np.exp(pred).reshape(b, -1), np.exp(target).reshape(b, -1)
        self.sums += [(w * np.abs(d - t) / t).sum(), (w * (d - t) ** 2).sum(), w.sum()]

    def result(self) -> dict[str, float]:
        n = self.sums[2]
        if n == 0:
            return {"abs_rel": float("nan"), "rmse": float("nan")}
        return {"abs_rel": float(self.sums[0] / n), "rmse": float(np.sqrt(self.sums[1] / n))}

    def table(self) -> str:
        r = self.result()
        return f"abs_rel {r['abs_rel']:.4f}   rmse {r['rmse']:.3f} m   over {int(self.sums[2])} blocks"


class ToyDepthTask(SupervisedTask):
    """See the module docstring."""

    KEYS = ("images", "depth", "sequence_start")

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.grid = BEVGrid(tuple(config.grid.xbound), tuple(config.grid.ybound), tuple(config.grid.zbound))
        self.model = DepthNet(config.model.features)

    def _split(self, split: str):
        inputs = self.config.inputs
        return open_splits(
            self.config.data, self.grid, [split], cameras=tuple(inputs.cameras), image_hw=tuple(inputs.image_hw)
        )[split]

    def _select(self, example):
        return {k: example[k] for k in self.KEYS}

    def _read(self, example):
        time.sleep(self.config.data.read_delay_s)
        return self._select(example)

    def train_dataset(self, seed, batch_size, process_index, process_count):
        return make_dataset(
            self._split(self.config.data.train_split),
            batch_size=batch_size,
            seed=seed,
            window=self.config.data.window,
            transforms=[self._read],
            process_index=process_index,
            process_count=process_count,
            worker_count=self.config.data.worker_count,
        )

    def eval_source(self):
        source = self._split(self.config.data.eval_split)
        t = self.config.data.window
        return WindowSource(source, t, source.frames_per_sequence, stride=t)

    def eval_example(self, example):
        return self._select(example)

    @staticmethod
    def _frames(batch):
        images = batch["images"]  # b t n h w 3
        return images.reshape((-1,) + images.shape[-3:]), batch["depth"].reshape((-1,) + images.shape[-3:-1])

    def init(self, rng, batch):
        return self.model.init(rng, self._frames(batch)[0], train=False)

    def init_state(self, variables, tx):
        ema = jax.tree.map(jnp.copy, variables)  # the teacher starts as a copy of the student
        return TrainState.create(variables, tx, extra={"ema": ema})

    def loss_fn(self, params, model_state, batch, rng, teacher=None):
        images, depth = self._frames(batch)
        pred, updates = self.model.apply({"params": params, **model_state}, images, True, mutable=["batch_stats"])
        target, hit = block_depth(depth)
        l1 = jnp.sum(jnp.abs(pred - target) * hit) / jnp.maximum(hit.sum(), 1)
        teacher_pred = jax.lax.stop_gradient(self.model.apply(teacher, images, False))
        consistency = jnp.mean((pred - teacher_pred) ** 2)
        # Frames at a sequence start are counted, to show that the flag reaches the step.
        starts = jnp.sum(batch["sequence_start"]).astype(jnp.float32)
        loss = l1 + self.config.model.consistency * consistency
        return loss, ({"l1": l1, "consistency": consistency, "starts": starts}, updates)

    def train_step(self, state, batch, rng):
        loss_fn = functools.partial(self.loss_fn, teacher=state.extra["ema"])
        (loss, metrics, model_state), grads = accumulated_value_and_grad(
            loss_fn, state.params, state.model_state, batch, rng, int(self.config.train.accumulate)
        )
        new = state.apply_gradients(grads, model_state=model_state)
        decay = jnp.minimum(mean_teacher_decay(state.step), self.config.model.ema_decay)
        new = new.replace(extra={"ema": ema_update(state.extra["ema"], new.variables, decay)})
        return new, dict(step_metrics(metrics, loss, grads, new.params), ema_decay=decay)

    def eval_variables(self, state):
        return state.extra["ema"]

    @functools.cached_property
    def predict(self):
        def fn(variables, batch):
            images, depth = self._frames(batch)
            target, hit = block_depth(depth)
            return self.model.apply(variables, images, False), target, hit

        return jax.jit(fn)

    def evaluators(self):
        return [DepthEvaluator(self)]

    def picture(self, variables, example):
        batch = jax.tree.map(lambda x: np.asarray(x)[None], example)
        pred, target, _ = (np.asarray(a)[0] for a in self.predict(variables, batch))

        def gray(log_depth):
            v = np.clip((log_depth - 1.0) / 3.0, 0, 1)
            img = (255 * (1 - v)).astype(np.uint8)
            return np.repeat(np.kron(img, np.ones((STRIDE, STRIDE), np.uint8))[..., None], 3, -1)

        height = 96
        rows = [
            labelled(fit_height(np.asarray(example["images"][0, 0]), height), "camera"),
            labelled(fit_height(gray(pred), height), "EMA teacher depth"),
            labelled(fit_height(gray(target), height), "true depth"),
        ]
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
        return np.concatenate(rows, 0)
