"""Evaluation passes and the final report, for any task: the task's evaluators over a split, ``eval.json``, the
tables on the terminal and the task's picture."""

from __future__ import annotations

import json
import math
import os

import jax
import ml_collections
import numpy as np

from bevjax.training.logging import MetricLogger
from bevjax.training.sharding import shard_batch
from bevjax.viz import save_png


def stack_examples(examples: list[dict]) -> dict:
    """One batch (leading axis) from a list of examples with the same keys."""
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
        yield stack_examples([task.eval_example(source[i]) for i in idx[mine]]), valid


def run_evaluators(task, variables, config: ml_collections.ConfigDict, mesh, source=None) -> list:
    """The task's evaluators after one pass over the evaluation split (or ``source``: any sequence of schema
    examples)."""
    evaluators = task.evaluators()
    for batch, valid in eval_batches(task, config.eval.batch_size, config.eval.max_examples, source):
        batch = shard_batch(batch, mesh)
        for ev in evaluators:
            ev.update(variables, batch, valid)
    return evaluators


def merged_results(evaluators) -> dict:
    """One flat dict of all evaluators' results; a key reported twice is an error naming it."""
    out: dict = {}
    for ev in evaluators:
        res = ev.result()
        clash = sorted(set(res) & set(out))
        if clash:
            raise ValueError(f"evaluators report the same metric names twice: {clash}")
        out.update(res)
    return out


def evaluate_variables(task, variables, config, mesh, source=None) -> dict:
    """The merged evaluation metrics of ``variables`` on the evaluation split (or ``source``)."""
    return merged_results(run_evaluators(task, variables, config, mesh, source))


def with_source_images(task, example: dict, raw: dict) -> dict:
    """The evaluation ``example`` for the task's picture: for a task that asks for them
    (``task.picture_uses_source_images``), with ``source_images``, the source's camera images where they are
    larger than the model input (nuScenes: 1600x900 against e.g. 352x128), so that the picture can show the
    cameras at a readable size; the example itself otherwise."""
    if not getattr(task, "picture_uses_source_images", False):
        return example
    images, full = example.get("images"), raw.get("images")
    if images is None or full is None or np.ndim(full) != 4 or np.ndim(images) != 4:
        return example
    if len(full) != len(images) or np.shape(full)[2] <= np.shape(images)[2]:
        return example
    return {**example, "source_images": np.asarray(full)}


def _json_number(value):
    return None if isinstance(value, float) and math.isnan(value) else value


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
    """Final evaluation: the evaluators' tables on stdout, ``eval.json`` and ``prediction.png`` in ``workdir``,
    and ``<name>.png`` for every picture of an evaluator that has ``pictures() -> {name: rgb array}``.

    ``source`` (with its ``name``, e.g. ``nuscenes/v1.0-mini``) replaces the config's evaluation split; the
    files are then ``eval_<dataset>.json`` and ``prediction_<dataset>.png``. The picture's example carries the
    source's full-size camera images as ``source_images`` for a task that asks for them
    (:func:`with_source_images`).
    """
    split = name or config.data.eval_split
    suffix = "_" + name.split("/")[0] if name else ""
    source = task.eval_source() if source is None else source
    evaluators = run_evaluators(task, variables, config, mesh, source)
    res = merged_results(evaluators)
    if logger is not None:
        logger.write(step, res, prefix="eval")
        logger.close()
    if jax.process_index() == 0:
        for ev in evaluators:
            print(f"\n{ev.title.format(split=split)}:")
            print(ev.table(), flush=True)
        result_path = os.path.join(workdir, f"eval{suffix}.json")
        with open(result_path, "w") as f:  # undefined metrics (NaN) as null: strict JSON
            json.dump({"step": step, "split": split, **{k: _json_number(v) for k, v in res.items()}}, f, indent=2)
        raw = source[min(config.eval.picture_index, len(source) - 1)]
        example = with_source_images(task, task.eval_example(raw), raw)
        path = save_png(task.picture(variables, example), os.path.join(workdir, f"prediction{suffix}.png"))
        written = [result_path, path]
        for ev in evaluators:  # an evaluator's own pictures over the pass (e.g. a reliability diagram)
            for picture_name, picture in getattr(ev, "pictures", dict)().items():
                written.append(save_png(picture, os.path.join(workdir, f"{picture_name}{suffix}.png")))
        print(f"wrote {', '.join(written[:-1])} and {written[-1]}", flush=True)
    return res
