"""Train state and the sharded, jit-compiled train step shared by every method."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from bevjax.training.sharding import data_sharding, replicated


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: a pytree that jit, sharding and Orbax handle directly."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def create_train_state(variables: dict, tx: optax.GradientTransformation) -> TrainState:
    """A state at step 0 from ``model.init`` variables (``params`` and optional ``batch_stats``)."""
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
    )


# loss_fn(params, batch_stats, batch, rng) -> (loss, (metrics, new_batch_stats))
LossFn = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, tuple[dict, Any]]]


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, mesh: Mesh):
    """``state, metrics = train_step(state, batch, rng)`` compiled once over ``mesh``.

    The batch is sharded on the ``data`` axis, the state replicated and donated. The step's rng is
    ``fold_in(rng, state.step)``, so a resumed run draws the same randomness as an uninterrupted one. Metrics
    include ``loss``, ``grad_norm`` (before clipping) and ``param_norm``.
    """

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        step_rng = jax.random.fold_in(rng, state.step)

        def objective(params):
            return loss_fn(params, state.batch_stats, batch, step_rng)

        (loss, (metrics, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(
            metrics, loss=loss, grad_norm=optax.global_norm(grads), param_norm=optax.global_norm(params)
        )
        new_state = state.replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        return new_state, metrics

    repl, data = replicated(mesh), data_sharding(mesh)
    return jax.jit(
        train_step, in_shardings=(repl, data, repl), out_shardings=(repl, repl), donate_argnums=(0,)
    )


def check_finite(metrics: dict, step: int) -> None:
    """Raises FloatingPointError naming the first non-finite metric (checked on the host)."""
    for name, value in metrics.items():
        if not bool(jnp.all(jnp.isfinite(value))):
            raise FloatingPointError(
                f"non-finite {name}={value} at step {step}: stopping; the last good checkpoint is kept"
            )
