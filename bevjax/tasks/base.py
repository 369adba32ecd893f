"""What a task tells the trainer: the protocol every method implements, and a base class for the common case.

The trainer (:mod:`bevjax.training.trainer`) owns the mesh, the jit compilation with shardings and donation, the
loop, logging, checkpoints and the final report. A task owns everything else:

=================================  ==========================================================================
``train_dataset(seed, b, i, n)``   the Grain dataset of this process's batches (``b`` examples or windows)
``eval_source()``                  the evaluation split: ``len`` and ``[i]`` -> schema example
``eval_example(example)``          one example as the evaluation batch wants it (no batch axis)
``init(rng, batch)``               ``model.init`` variables ``{'params': ..., 'batch_stats': ...}``
``optimizer(total_steps)``         the optax transformation (parameter groups, schedules)
``init_state(variables, tx)``      the :class:`~bevjax.training.state.TrainState` at step 0, with the task's
                                   ``extra`` state (EMA teacher, ...); ``variables`` may hold parameters of an
                                   earlier run (``config.init_from``)
``train_step(state, batch, rng)``  pure: ``(state, metrics)``; ``rng`` is already folded with the step
``eval_variables(state)``          the variables evaluation uses (the student's, or an EMA teacher's)
``evaluators()``                   fresh :class:`Evaluator` objects for one pass over the evaluation data
``picture(variables, example)``    an RGB array of one example (cameras, prediction, ground truth)
=================================  ==========================================================================

:class:`SupervisedTask` implements ``optimizer``, ``init_state``, ``train_step`` and ``eval_variables`` from a
``loss_fn``; a task with extra state overrides ``init_state`` and ``train_step`` and builds on the helpers of
:mod:`bevjax.training.state` (``accumulated_value_and_grad``, ``TrainState.apply_gradients``, ``ema_update``).
The contract is exercised by ``tests/test_engine.py`` with a toy task that has all of these.

What the camera tasks read alike from their configs: :func:`config_grid`, :func:`bev_class_index`,
:func:`train_image_aug` and :func:`eval_image_aug`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import ml_collections
import numpy as np
import optax

from bevjax.data import transforms as T
from bevjax.geometry.grid import BEVGrid
from bevjax.schema import BEV_CLASS_ID
from bevjax.training.optim import make_optimizer
from bevjax.training.state import LossFn, TrainState, supervised_step


def config_grid(config: ml_collections.ConfigDict) -> BEVGrid:
    """The BEV grid of ``config.grid`` (``xbound``, ``ybound``, ``zbound``)."""
    g = config.grid
    return BEVGrid(tuple(g.xbound), tuple(g.ybound), tuple(g.zbound))


def bev_class_index(classes: Sequence[str]) -> np.ndarray:
    """The channels of ``classes`` in the schema's ``bev_labels``.

    Raises:
      ValueError: a name that is not a BEV class (naming it and the choices).
    """
    unknown = [c for c in classes if c not in BEV_CLASS_ID]
    if unknown:
        raise ValueError(f"config.model.classes: unknown {unknown}; choose from {sorted(BEV_CLASS_ID)}")
    return np.array([BEV_CLASS_ID[c] for c in classes])


def train_image_aug(config: ml_collections.ConfigDict) -> T.ImageAug:
    """The training image augmentation of ``config.augment`` (resize, crop, rotation, flip) to
    ``config.inputs.image_hw``."""
    a = config.augment
    return T.ImageAug(
        final_hw=tuple(config.inputs.image_hw),
        resize_lim=tuple(a.resize_lim),
        bot_pct_lim=tuple(a.bot_pct_lim),
        rot_lim_deg=tuple(a.rot_lim_deg),
        rand_flip=bool(a.rand_flip),
        train=True,
    )


def eval_image_aug(config: ml_collections.ConfigDict) -> T.ImageAug:
    """The test-time image transform to ``config.inputs.image_hw`` (identity at the stored size)."""
    return T.ImageAug(
        final_hw=tuple(config.inputs.image_hw), bot_pct_lim=tuple(config.augment.bot_pct_lim), train=False
    )


@runtime_checkable
class Evaluator(Protocol):
    """Accumulates one metric family over an evaluation pass.

    Attributes:
      title: a heading for the table; ``{split}`` in it is replaced by the split's name, e.g.
        ``'IoU per class on {split} (threshold: logit > 0.0)'``.
    """

    title: str

    def update(self, variables: Any, batch: dict, valid: np.ndarray) -> None:
        """Adds one (sharded) batch; ``valid`` [b] is 0 for padding examples of the last batch."""

    def result(self) -> dict[str, float]:
        """The metrics so far as a flat ``{name: value}`` (NaN where undefined); keys are unique across a
        task's evaluators (they go to ``eval.json`` and TensorBoard as they are)."""

    def table(self) -> str:
        """The result as text for the terminal."""


@runtime_checkable
class Task(Protocol):
    """The protocol of a task (see the module docstring). ``config`` is the run's ConfigDict."""

    config: ml_collections.ConfigDict

    def train_dataset(self, seed: int, batch_size: int, process_index: int, process_count: int): ...

    def eval_source(self) -> Sequence[dict]: ...

    def eval_example(self, example: dict) -> dict: ...

    def init(self, rng: jax.Array, batch: dict) -> dict: ...

    def optimizer(self, total_steps: int) -> optax.GradientTransformation: ...

    def init_state(self, variables: dict, tx: optax.GradientTransformation) -> TrainState: ...

    def train_step(self, state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]: ...

    def eval_variables(self, state: TrainState) -> dict: ...

    def evaluators(self) -> list[Evaluator]: ...

    def picture(self, variables: dict, example: dict) -> np.ndarray: ...


class SupervisedTask:
    """A task trained by one loss with one optimiser: subclasses give ``loss_fn`` and the data, model and
    evaluation methods of :class:`Task`.

    ``loss_fn(params, model_state, batch, rng) -> (loss, (metrics, new_model_state))`` where ``model_state`` is
    the model's non-parameter collections (``{'batch_stats': ...}``). ``config.optim`` configures the optimiser
    (:func:`bevjax.training.optim.make_optimizer`) and ``config.train.accumulate`` the micro-batches per step.
    """

    config: ml_collections.ConfigDict
    loss_fn: LossFn

    def optimizer(self, total_steps: int) -> optax.GradientTransformation:
        return make_optimizer(self.config.optim, total_steps)

    def init_state(self, variables: dict, tx: optax.GradientTransformation) -> TrainState:
        return TrainState.create(variables, tx)

    def train_step(self, state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
        step = supervised_step(self.loss_fn, int(self.config.train.get("accumulate", 1)))
        return step(state, batch, rng)

    def eval_variables(self, state: TrainState) -> dict:
        return state.variables
