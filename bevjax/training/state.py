"""The train state every task uses, and the pieces of a train step: gradients (with accumulation over
micro-batches), the optimiser update, EMA updates and the host-side finiteness check.

A task's ``train_step(state, batch, rng) -> (state, metrics)`` is a pure function; the trainer jit-compiles it
over the mesh with explicit shardings and donates the state. :func:`supervised_step` builds the common case (one
loss, one optimiser) from a loss function, so that a task such as LSS needs only its loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: a pytree that jit, sharding and Orbax handle directly.

    Attributes:
      step: optimiser steps taken (int32 scalar).
      params: the parameters trained by gradients (the ``params`` collection of a Flax model).
      opt_state: the optimiser's state.
      model_state: the model's other variable collections, updated by ``apply(..., mutable=...)``
        (``{'batch_stats': ...}`` for BatchNorm; ``{}`` when there are none).
      extra: the task's own state that gradients do not train: an EMA teacher (``{'ema': {'params': ...,
        'batch_stats': ...}}``), running values of a loss ramp, ...; saved and restored with the rest.
      tx: the optimiser (static: not a leaf, not saved).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Mapping[str, Any]
    extra: Mapping[str, Any]
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    @classmethod
    def create(cls, variables: Mapping[str, Any], tx: optax.GradientTransformation, extra=None) -> TrainState:
        """A state at step 0 from ``model.init`` variables (``params`` and any other collections).

        Args:
          variables: ``{'params': ..., 'batch_stats': ..., ...}``.
          tx: the optimiser; its state is initialised on ``params``.
          extra: the task's extra state (default ``{}``).
        """
        variables = dict(variables)
        params = variables.pop("params")
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            model_state=variables,
            extra={} if extra is None else dict(extra),
            tx=tx,
        )

    @property
    def variables(self) -> dict:
        """``{'params': ..., **model_state}``: what ``model.apply`` takes."""
        return {"params": self.params, **self.model_state}

    def apply_gradients(self, grads, **changes) -> TrainState:
        """One optimiser update with ``grads``; ``changes`` replace other fields (e.g. ``model_state=...``)."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **changes)


# loss_fn(params, model_state, batch, rng) -> (loss, (metrics, new_model_state))
LossFn = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, tuple[dict, Any]]]


def split_microbatches(batch: Mapping[str, Any], accumulate: int) -> dict:
    """``[b, ...]`` arrays as ``[accumulate, b / accumulate, ...]``: micro-batch ``i`` holds examples
    ``i * m, ..., (i + 1) * m - 1`` of the batch (``m = b / accumulate``)."""

    def split(x):
        if x.shape[0] % accumulate:
            raise ValueError(
                f"train.accumulate={accumulate} does not divide the batch of {x.shape[0]} (per step)"
            )
        return x.reshape((accumulate, x.shape[0] // accumulate) + x.shape[1:])  # a m ...

    return jax.tree.map(split, dict(batch))


def accumulated_value_and_grad(loss_fn: LossFn, params, model_state, batch, rng, accumulate: int = 1):
    """``(loss, metrics, model_state), grads`` of ``loss_fn`` over ``batch``, in ``accumulate`` micro-batches.

    With ``accumulate = A > 1`` the batch is split into A micro-batches (:func:`split_microbatches`), run one
    after the other in a ``lax.scan`` (activations of one micro-batch alive at a time), and the losses, metrics
    and gradients are averaged: for a loss that is a mean over examples this equals the large-batch gradient.
    ``model_state`` (BatchNorm statistics) is threaded through the micro-batches in order, and BatchNorm
    normalises each micro-batch with its own statistics, as gradient accumulation does in PyTorch. Micro-batch
    ``i`` draws its randomness from ``fold_in(rng, i)``.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accumulate <= 1:
        (loss, (metrics, model_state)), grads = grad_fn(params, model_state, batch, rng)
        return (loss, metrics, model_state), grads

    micro = split_microbatches(batch, accumulate)

    def body(carry, xs):
        i, mb = xs
        ms, acc = carry
        (loss, (metrics, ms)), grads = grad_fn(params, ms, mb, jax.random.fold_in(rng, i))
        acc = jax.tree.map(jnp.add, acc, (loss, metrics, grads))
        return (ms, acc), None

    shapes = jax.eval_shape(lambda: grad_fn(params, model_state, jax.tree.map(lambda x: x[0], micro), rng))
    (loss0, (metrics0, _)), grads0 = shapes
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (loss0, metrics0, grads0))
    (model_state, total), _ = jax.lax.scan(body, (model_state, zeros), (jnp.arange(accumulate), micro))
    loss, metrics, grads = jax.tree.map(lambda x: x / accumulate, total)
    return (loss, metrics, model_state), grads


def supervised_step(loss_fn: LossFn, accumulate: int = 1):
    """``train_step(state, batch, rng) -> (state, metrics)`` for a task with one loss and one optimiser.

    Args:
      loss_fn: ``loss_fn(params, model_state, batch, rng) -> (loss, (metrics, new_model_state))``.
      accumulate: micro-batches per step (see :func:`accumulated_value_and_grad`).

    Returns:
      The step function (pure; the trainer jits it). Its metrics are ``loss_fn``'s plus ``loss``,
      ``grad_norm`` (before clipping) and ``param_norm`` (after the update).
    """

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        (loss, metrics, model_state), grads = accumulated_value_and_grad(
            loss_fn, state.params, state.model_state, batch, rng, accumulate
        )
        new = state.apply_gradients(grads, model_state=model_state)
        return new, step_metrics(metrics, loss, grads, new.params)

    return train_step


def step_metrics(metrics: Mapping[str, Any], loss, grads, params) -> dict:
    """``metrics`` plus ``loss``, ``grad_norm`` and ``param_norm``: what every step reports."""
    return dict(metrics, loss=loss, grad_norm=optax.global_norm(grads), param_norm=optax.global_norm(params))


def mean_teacher_decay(step, max_decay: float = 0.999):
    """EMA decay of a Mean Teacher at (0-based) ``step``: ``min(1 - 1 / (step + 1), max_decay)``.

    Early in training the teacher follows the student closely (decay 0 at step 0: a copy), later it averages
    over about ``1 / (1 - max_decay)`` steps (Tarvainen and Valpola, 2017).
    """
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(1.0 - 1.0 / (step + 1.0), max_decay)


def ema_update(ema, new, decay):
    """``decay * ema + (1 - decay) * new`` leaf by leaf (float leaves; others take ``new``)."""

    def update(e, n):
        if not jnp.issubdtype(jnp.asarray(n).dtype, jnp.floating):
            return n
        return (decay * e + (1.0 - decay) * n).astype(jnp.asarray(e).dtype)

    return jax.tree.map(update, ema, new)


def check_finite(metrics: dict, step: int) -> None:
    """Raises FloatingPointError naming the first non-finite metric, ``loss`` first (checked on the host)."""
    for name, value in sorted(metrics.items(), key=lambda kv: kv[0] != "loss"):
        if not bool(jnp.all(jnp.isfinite(value))):
            raise FloatingPointError(
                f"non-finite {name}={value} at step {step}: stopping; the last good checkpoint is kept"
            )
