"""The train / evaluate loop shared by every task: ``train_and_evaluate(config, workdir)``, ``evaluate(...)``.

A task (:mod:`bevjax.tasks`, protocol in :mod:`bevjax.tasks.base`) owns its model, data, state, step, optimiser
and evaluation. This module owns the rest, once for all tasks: the device mesh and the state's shardings, the
state set-up (``config.init_from`` included), the jit-compiled donated step with its rng folded with the step,
checkpoints with the data-iterator state (a killed run resumes exactly), logging, periodic evaluation, the
non-finite stop and the final report (the evaluators' tables, ``eval.json``, the task's picture).
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections

from bevjax.data.pipeline import make_iterator
from bevjax.tasks import make_task
from bevjax.training.checkpoint import Checkpointer, CheckpointMismatchError
from bevjax.training.evaluation import evaluate_variables, finish, stack_examples
from bevjax.training.logging import MetricLogger
from bevjax.training.optim import make_schedule
from bevjax.training.sharding import (
    batch_sharding,
    check_batch_size,
    describe,
    mesh_from_config,
    place,
    replicated,
    shard_batch,
    state_shardings,
)
from bevjax.training.state import TrainState, check_finite


def init_variables(task, rng: jax.Array, batch: dict) -> dict:
    """``task.init(rng, batch)``, jit-compiled; on CPU without XLA's backend optimisations, which halves the
    compile time of a program that runs once (the LSS initialisers alone took 15 s to compile)."""
    lowered = jax.jit(task.init).lower(rng, batch)
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return lowered.compile(compiler_options=options)(rng, batch)


def seed_rngs(seed: int) -> tuple[jax.Array, jax.Array]:
    """The run's two root keys: for the model's initialisation and for the steps (folded with the step)."""
    init_rng, step_rng = jax.random.split(jax.random.PRNGKey(seed))
    return init_rng, step_rng


def _apply_init_from(config: ml_collections.ConfigDict, variables: dict) -> dict:
    """``variables`` with the leaves ``config.init_from`` maps from an earlier run's checkpoint."""
    src = config.get("init_from", None)
    if src is None or not src.get("workdir", ""):
        return variables
    from bevjax.training.checkpoint import load_params

    step = src.get("step", -1)
    step = None if step is None or int(step) < 0 else int(step)
    # The mapping speaks of the saved state's paths (params/..., model_state/batch_stats/...).
    target = {"params": variables["params"], "model_state": {k: v for k, v in variables.items() if k != "params"}}
    loaded = load_params(src.workdir, step, target, tuple(tuple(m) for m in src.mapping))
    return {"params": loaded["params"], **loaded["model_state"]}


def initial_state(task, config, mesh, batch: dict, total_steps: int, init_from: bool = True):
    """The task's state at step 0 placed on ``mesh``, and its shardings.

    ``batch`` (this process's batch, NumPy) gives the input shapes for ``task.init``, which every process runs
    on its own first device (no collective: processes may differ in what they run before the first step);
    ``init_from`` applies ``config.init_from`` (evaluation builds only a template and skips it).
    """
    init_rng, _ = seed_rngs(config.seed)
    variables = init_variables(task, init_rng, batch)
    if init_from:
        variables = _apply_init_from(config, variables)
    state = task.init_state(variables, task.optimizer(total_steps))
    if not isinstance(state, TrainState):
        raise TypeError(f"{type(task).__name__}.init_state returned {type(state).__name__}, not a TrainState")
    shardings = state_shardings(state, mesh, config.get("mesh", None))
    if jax.process_index() == 0:
        split = [line for line in describe(shardings).splitlines() if line.startswith("params/")]
        print(
            f"mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']} over {mesh.devices.size} "
            f"{jax.default_backend()} device(s); {len(split)} parameter arrays split over fsdp",
            flush=True,
        )
    return place(state, shardings), shardings


def compile_step(task, config, mesh, state, shardings, batch):
    """The task's step compiled once over ``mesh``: ``state, metrics = step(state, batch, rng)``.

    The state keeps its shardings and is donated; the batch is split over the mesh's devices; the task's step
    sees ``fold_in(rng, state.step)``, so a resumed run draws the same randomness as an uninterrupted one.
    ``config.train.nan_at_step = k > 0`` makes step k's parameters and loss NaN (to test the non-finite stop).
    """
    nan_at = int(config.train.get("nan_at_step", 0))

    def step(state, batch, rng):
        new, metrics = task.train_step(state, batch, jax.random.fold_in(rng, state.step))
        if nan_at > 0:
            hit = state.step + 1 == nan_at

            def poison(x):
                return jnp.where(hit, jnp.nan, x) if jnp.issubdtype(x.dtype, jnp.floating) else x

            new = new.replace(params=jax.tree.map(poison, new.params))
            metrics = dict(metrics, loss=poison(metrics["loss"]))
        return new, metrics

    repl = replicated(mesh)
    jitted = jax.jit(
        step,
        in_shardings=(shardings, batch_sharding(mesh), repl),
        out_shardings=(shardings, repl),
        donate_argnums=(0,),
    )
    t0 = time.time()
    print("compiling the train step ...", flush=True)
    compiled = jitted.lower(state, batch, jax.random.PRNGKey(0)).compile()
    print(f"compiled the train step in {time.time() - t0:.1f}s", flush=True)
    return compiled


def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def config_differences(config: ml_collections.ConfigDict, workdir: str, limit: int = 12) -> str:
    """A line naming the fields in which ``config`` differs from the ``config.json`` of ``workdir``'s last run."""
    path = os.path.join(workdir, "config.json")
    try:
        with open(path) as f:
            before = _flatten(json.load(f))
    except (OSError, ValueError):
        return f"({path} is missing or unreadable: the fields that changed cannot be named)"
    now = _flatten(json.loads(config.to_json_best_effort()))
    diff = [
        f"{k}: {before.get(k, '(absent)')!r} there, {now.get(k, '(absent)')!r} now"
        for k in sorted(set(before) | set(now))
        if before.get(k) != now.get(k)
    ]
    if not diff:
        return f"the config equals {path}: the checkpoints were written by other code"
    more = f" and {len(diff) - limit} more" if len(diff) > limit else ""
    return (
        f"the workdir was trained with another config ({path}); fields that differ: {'; '.join(diff[:limit])}"
        f"{more}. Train with those settings, or use another --workdir (config.init_from starts from its weights)"
    )


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """``workdir/config.json``, written whole or not at all (write, then rename)."""
    path = os.path.join(workdir, "config.json")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    os.replace(tmp, path)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, restore_step: int | None = None) -> dict:
    """Trains ``config`` in ``workdir`` (resuming from its newest readable checkpoint, or from ``restore_step``),
    then evaluates.

    Returns the final evaluation metrics (also written to ``workdir/eval.json``).
    """
    task = make_task(config)
    os.makedirs(workdir, exist_ok=True)
    mesh = mesh_from_config(config.get("mesh", None))
    tc = config.train
    check_batch_size(tc.batch_size, mesh)
    check_batch_size(config.eval.batch_size, mesh)
    local_batch = tc.batch_size // jax.process_count()

    if len(task.eval_source()) == 0:  # fail before training, not after it
        raise ValueError(f"config.data.eval_split '{config.data.eval_split}' has no examples")
    dataset = task.train_dataset(config.seed, local_batch, jax.process_index(), jax.process_count())
    iterator = make_iterator(dataset)
    first = next(make_iterator(dataset))
    state, shardings = initial_state(task, config, mesh, first, tc.steps)

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=tc.keep_checkpoints)
    try:
        restored = ckpt.restore(state, iterator, step=restore_step)
    except CheckpointMismatchError as err:
        ckpt.close()
        raise CheckpointMismatchError(f"{err}\n{config_differences(config, workdir)}") from None
    if jax.process_index() == 0:  # written once the workdir's checkpoints fit this config
        _write_config(config, workdir)
    if restore_step is not None:
        ckpt.set_aside_after(restore_step)
    if restored is not None:
        state = restored
        print(f"resumed from {ckpt.directory} at step {int(state.step)}", flush=True)
    start = int(state.step)

    train_step = compile_step(task, config, mesh, state, shardings, shard_batch(first, mesh))
    del first
    _, step_rng = seed_rngs(config.seed)
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
            res = evaluate_variables(task, task.eval_variables(state), config, mesh)
            logger.write(done, res, prefix="eval")
    if ckpt.latest_step() != tc.steps:  # a finished run that is started again only evaluates
        ckpt.save(tc.steps, state, iterator, force=True)
    ckpt.close()
    print(f"trained {tc.steps - start} steps in {time.time() - t0:.0f}s", flush=True)
    return finish(task, task.eval_variables(state), config, workdir, mesh, int(state.step), logger)


def evaluate(
    config: ml_collections.ConfigDict, workdir: str, dataset: str = "world", dataroot: str = ""
) -> dict:
    """Evaluates the latest readable checkpoint in ``workdir``: the evaluators' tables, ``eval.json``, the picture.

    ``dataset='nuscenes'`` evaluates on the keyframes of the nuScenes ``dataroot`` (raw files) instead of the
    config's split (writing ``eval_nuscenes.json`` and ``prediction_nuscenes.png``); ``dataset='av2'`` on the
    sweep pairs of an Argoverse 2 folder (``dataroot``: a raw sensor root or a prepared data dir; tasks with
    ``av2_source``, e.g. SemanticFlow; ``eval_av2.json``, ``prediction_av2.png``).
    """
    task = make_task(config)
    mesh = mesh_from_config(config.get("mesh", None))
    check_batch_size(config.eval.batch_size, mesh)
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoint in {directory}: train first (python -m bevjax.train ...)")
    name = ""
    if dataset == "world":
        source = task.eval_source()
    elif dataset == "nuscenes":
        from bevjax.data.nuscenes.source import NuScenesSource

        source = NuScenesSource(dataroot, task.grid, cameras=tuple(config.inputs.cameras))
        name = source.name
    elif dataset == "av2":
        if not hasattr(task, "av2_source"):
            raise ValueError(f"--dataset av2: the {config.task} task does not read Argoverse 2 sweep pairs")
        source, name = task.av2_source(dataroot)
    else:
        raise ValueError(f"dataset={dataset!r}: choose from world, nuscenes, av2")
    local = config.eval.batch_size // jax.process_count()
    first = stack_examples([task.eval_example(source[0])] * local)
    template, _ = initial_state(task, config, mesh, first, config.train.steps, init_from=False)
    ckpt = Checkpointer(directory)
    state = ckpt.restore(template)
    ckpt.close()
    if state is None:
        raise FileNotFoundError(f"no readable checkpoint in {directory}: train first (python -m bevjax.train ...)")
    print(f"evaluating step {int(state.step)} from {ckpt.directory}", flush=True)
    return finish(
        task, task.eval_variables(state), config, workdir, mesh, int(state.step), source=source, name=name
    )

