"""The train / evaluate loop shared by every method: ``train_and_evaluate(config, workdir)``.

A task object (``bevjax.tasks``) supplies the model, data, loss and evaluation; this module owns the mesh, the
compiled step, checkpoints (with the data-iterator state, so a killed run resumes exactly), logging, periodic
evaluation and the final report (IoU table, ``eval.json``, a picture).
"""

from __future__ import annotations

import importlib
import json
import os
import time

import jax
import ml_collections
import numpy as np

from bevjax.data.pipeline import make_iterator
from bevjax.metrics import IoUAccumulator
from bevjax.training.checkpoint import Checkpointer
from bevjax.training.logging import MetricLogger
from bevjax.training.optim import make_optimizer, make_schedule
from bevjax.training.sharding import check_batch_size, make_mesh, replicate, shard_batch
from bevjax.training.state import check_finite, create_train_state, make_train_step
from bevjax.viz import save_png

TASKS = {"lss": "bevjax.tasks.lss:LSSTask"}


def make_task(config: ml_collections.ConfigDict):
    """The task object named by ``config.task``."""
    if config.task not in TASKS:
        raise ValueError(f"config.task='{config.task}': choose from {sorted(TASKS)}")
    module, name = TASKS[config.task].split(":")
    return getattr(importlib.import_module(module), name)(config)


def _stack(examples: list[dict]) -> dict:
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def eval_batches(task, batch_size: int, max_examples: int = 0, source=None):
    """Yields (local batch, valid [b]) over the evaluation split (or ``source``) in order.

    ``batch_size`` is global: each process reads its own slice of every batch (``shard_batch`` assembles the
    global array) while ``valid`` covers the global batch; the last batch is padded with valid = 0.
    """
    source = task.eval_source() if source is None else source
    n = len(source) if not max_examples else min(len(source), max_examples)
    local = batch_size // jax.process_count()
    mine = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
    for start in range(0, n, batch_size):
        idx = list(range(start, min(start + batch_size, n)))
        valid = np.array([1] * len(idx) + [0] * (batch_size - len(idx)), np.float32)
        idx += [idx[-1]] * (batch_size - len(idx))
        yield _stack([task.eval_example(source[i]) for i in idx[mine]]), valid


def evaluate_state(
    task, variables: dict, config: ml_collections.ConfigDict, mesh, source=None
) -> IoUAccumulator:
    """IoU per class over the evaluation split (or ``source``: any sequence of schema examples)."""
    acc = IoUAccumulator(task.classes)
    for batch, valid in eval_batches(task, config.eval.batch_size, config.eval.max_examples, source):
        acc.update(task.eval_counts(variables, shard_batch(batch, mesh), valid))
    return acc


def _variables(state) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


def init_variables(task, rng: jax.Array, batch: dict) -> dict:
    """``task.init(rng, batch)``, jit-compiled; on CPU without XLA's backend optimisations, which halves the
    compile time of a program that runs once (the LSS initialisers alone took 15 s to compile)."""
    lowered = jax.jit(task.init).lower(rng, batch)
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return lowered.compile(compiler_options=options)(rng, batch)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint), then evaluates.

    Returns the final evaluation metrics (also written to ``workdir/eval.json``).
    """
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    task = make_task(config)
    mesh = make_mesh()
    tc = config.train
    check_batch_size(tc.batch_size, mesh)
    check_batch_size(config.eval.batch_size, mesh)
    local_batch = tc.batch_size // jax.process_count()

    if len(task.eval_source()) == 0:  # fail before training, not after it
        raise ValueError(f"config.data.eval_split '{config.data.eval_split}' has no examples")
    dataset = task.train_dataset(config.seed, local_batch, jax.process_index(), jax.process_count())
    iterator = make_iterator(dataset)
    tx = make_optimizer(config.optim, tc.steps)
    init_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    first = next(make_iterator(dataset))
    variables = init_variables(task, init_rng, first)
    state = replicate(create_train_state(variables, tx), mesh)
    del first, variables

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=tc.keep_checkpoints)
    restored = ckpt.restore(state, iterator)
    if restored is not None:
        state = restored
        print(f"resumed from {ckpt.directory} at step {int(state.step)}", flush=True)
    start = int(state.step)

    train_step = make_train_step(task.loss_fn, tx, mesh)
    logger = MetricLogger(workdir, tc.steps, tensorboard=config.get("tensorboard", True))
    schedule = make_schedule(config.optim, tc.steps)
    t0 = time.time()
    for step in range(start, tc.steps):
        batch = shard_batch(next(iterator), mesh)
        state, metrics = train_step(state, batch, step_rng)
        done = step + 1
        log_now = done % tc.log_every == 0 or done == tc.steps or done == start + 1
        save_now = done % tc.checkpoint_every == 0 and done != tc.steps
        if log_now or save_now:  # a checkpoint is only written from a state whose step was finite
            metrics = jax.device_get(metrics)
            try:
                check_finite(metrics, done)
            except FloatingPointError:
                ckpt.close()
                raise
        if log_now:
            logger.write(done, {**metrics, "lr": float(schedule(done - 1))})
        if save_now:
            ckpt.save(done, state, iterator)
        if tc.eval_every and done % tc.eval_every == 0 and done != tc.steps:
            res = evaluate_state(task, _variables(state), config, mesh).result()
            logger.write(done, res, prefix="eval")
    if ckpt.latest_step() != tc.steps:  # a finished run that is started again only evaluates
        ckpt.save(tc.steps, state, iterator, force=True)
    ckpt.close()
    print(f"trained {tc.steps - start} steps in {time.time() - t0:.0f}s", flush=True)
    return finish(task, _variables(state), config, workdir, mesh, int(state.step), logger)


def finish(
    task,
    variables,
    config,
    workdir: str,
    mesh,
    step: int,
    logger: MetricLogger | None = None,
    source=None,
    name: str = "",
) -> dict:
    """Final evaluation: IoU table on stdout, ``eval.json`` and ``prediction.png`` in ``workdir``.

    ``source`` (with its ``name``, e.g. ``nuscenes/v1.0-mini``) replaces the config's evaluation split; the
    files are then ``eval_<dataset>.json`` and ``prediction_<dataset>.png``.
    """
    split = name or config.data.eval_split
    suffix = "_" + name.split("/")[0] if name else ""
    source = task.eval_source() if source is None else source
    acc = evaluate_state(task, variables, config, mesh, source)
    res = acc.result()
    if logger is not None:
        logger.write(step, res, prefix="eval")
        logger.close()
    if jax.process_index() == 0:
        print(f"\nIoU per class on {split} (threshold: logit > {config.eval.threshold}):")
        print(acc.table(), flush=True)
        result_path = os.path.join(workdir, f"eval{suffix}.json")
        with open(result_path, "w") as f:
            json.dump({"step": step, "split": split, **res}, f, indent=2)
        example = task.eval_example(source[min(config.eval.picture_index, len(source) - 1)])
        path = save_png(task.picture(variables, example), os.path.join(workdir, f"prediction{suffix}.png"))
        print(f"wrote {result_path} and {path}", flush=True)
    return res


def evaluate(
    config: ml_collections.ConfigDict, workdir: str, dataset: str = "world", data_dir: str = ""
) -> dict:
    """Evaluates the latest checkpoint in ``workdir``: IoU table, ``eval.json`` and the picture.

    ``dataset='nuscenes'`` evaluates on the keyframes of the nuScenes dataroot ``data_dir`` instead of the
    config's split (writing ``eval_nuscenes.json`` and ``prediction_nuscenes.png``).
    """
    task = make_task(config)
    mesh = make_mesh()
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    if ckpt.latest_step() is None:
        raise FileNotFoundError(
            f"no checkpoint in {ckpt.directory}: train first (python -m bevjax.train ...)"
        )
    name = ""
    if dataset == "world":
        source = task.eval_source()
    elif dataset == "nuscenes":
        from bevjax.data.nuscenes.source import NuScenesSource

        source = NuScenesSource(data_dir, task.grid, cameras=tuple(config.data.world.cameras))
        name = source.name
    else:
        raise ValueError(f"dataset={dataset!r}: choose from world, nuscenes")
    first = _stack([task.eval_example(source[0])])
    variables = init_variables(task, jax.random.PRNGKey(0), first)
    tx = make_optimizer(config.optim, config.train.steps)
    template = replicate(create_train_state(variables, tx), mesh)
    state = ckpt.restore(template)
    ckpt.close()
    print(f"evaluating step {int(state.step)} from {ckpt.directory}", flush=True)
    return finish(task, _variables(state), config, workdir, mesh, int(state.step), source=source, name=name)
