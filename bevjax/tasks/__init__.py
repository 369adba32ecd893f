"""Tasks: what each method tells the trainer (see :mod:`bevjax.tasks.base` for the protocol).

``config.task`` names a registered task (``lss``) or any importable class as ``'package.module:ClassName'``
(a task of your own, built on :class:`bevjax.tasks.base.SupervisedTask` or implementing
:class:`bevjax.tasks.base.Task`).
"""

from __future__ import annotations

import importlib

import ml_collections

TASKS = {
    "lss": "bevjax.tasks.lss:LSSTask",
    "pv_segmenter": "bevjax.tasks.pv_segmenter:PVSegmenterTask",
    "nrseg": "bevjax.tasks.nrseg:NRSegTask",
    "semanticflow": "bevjax.tasks.semanticflow:SemanticFlowTask",
}


def make_task(config: ml_collections.ConfigDict):
    """The task object named by ``config.task``, built from ``config``."""
    name = config.task
    target = TASKS.get(name, name if ":" in name else None)
    if target is None:
        raise ValueError(
            f"config.task='{name}': choose from {sorted(TASKS)} or give a class as 'package.module:ClassName'"
        )
    module, _, cls = target.partition(":")
    try:
        task_cls = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"config.task='{name}': cannot import {target}: {e}") from e
    return task_cls(config)
