"""The train state and the pieces of a step: gradient accumulation, EMA, the non-finite check. (The sharded step
is tested in test_sharding.py and, through the trainer, in test_engine.py.)"""


import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bevjax.training.state import (
    TrainState,
    check_finite,
    ema_update,
    mean_teacher_decay,
    supervised_step,
)


def test_check_finite_names_the_metric():
    check_finite({"loss": jnp.float32(1.0)}, 3)
    with pytest.raises(FloatingPointError, match="non-finite grad_norm=nan at step 7"):
        check_finite({"loss": jnp.float32(1.0), "grad_norm": jnp.float32(np.nan)}, 7)


def _dense_problem():
    import flax.linen as nn

    net = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(1)])
    rs = np.random.RandomState(0)
    batch = {"x": rs.randn(8, 5).astype(np.float32), "y": rs.randn(8).astype(np.float32)}
    variables = net.init(jax.random.PRNGKey(0), batch["x"])

    def loss_fn(params, model_state, batch, rng):
        out = net.apply({"params": params}, batch["x"])[:, 0]
        loss = jnp.mean((out - batch["y"]) ** 2)
        return loss, ({"mse": loss, "first_y": batch["y"][0]}, model_state)

    return variables, batch, loss_fn


def test_accumulated_step_equals_the_large_batch_step():
    variables, batch, loss_fn = _dense_problem()
    tx = optax.adam(1e-2)
    out = {}
    for a in (1, 2, 4):
        state = TrainState.create(variables, tx)
        step = jax.jit(supervised_step(loss_fn, accumulate=a))
        for _ in range(3):
            state, metrics = step(state, batch, jax.random.PRNGKey(0))
        out[a] = (state.params, state.opt_state, metrics["loss"], metrics["grad_norm"])
    for a in (2, 4):
        chex.assert_trees_all_close(out[a], out[1], rtol=1e-5, atol=1e-6)
    # Micro-batch i holds examples [i m, (i + 1) m): the averaged metric of y[0] of each micro-batch.
    step = jax.jit(supervised_step(loss_fn, accumulate=4))
    _, metrics = step(TrainState.create(variables, tx), batch, jax.random.PRNGKey(0))
    np.testing.assert_allclose(metrics["first_y"], batch["y"][::2].mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="accumulate=3 does not divide the batch of 8"):
        supervised_step(loss_fn, accumulate=3)(TrainState.create(variables, tx), batch, jax.random.PRNGKey(0))


def test_train_state_create_and_apply_gradients():
    params = {"w": jnp.array([1.0, 2.0])}
    state = TrainState.create({"params": params, "batch_stats": {"m": jnp.zeros(2)}}, optax.sgd(0.5))
    assert int(state.step) == 0 and set(state.model_state) == {"batch_stats"} and state.extra == {}
    assert set(state.variables) == {"params", "batch_stats"}
    new = state.apply_gradients({"w": jnp.array([2.0, -2.0])}, model_state={"batch_stats": {"m": jnp.ones(2)}})
    np.testing.assert_allclose(new.params["w"], [0.0, 3.0])
    assert int(new.step) == 1 and float(new.model_state["batch_stats"]["m"][0]) == 1.0
    assert len(jax.tree.leaves(new)) == len(jax.tree.leaves(state))  # tx is static, not a leaf


def test_mean_teacher_decay_and_ema_update_match_their_formulas():
    for t in (0, 1, 5, 998, 999, 5000):
        want = min(1 - 1 / (t + 1), 0.999)
        assert float(mean_teacher_decay(t)) == pytest.approx(want, abs=1e-7)
    assert float(mean_teacher_decay(3, max_decay=0.5)) == 0.5
    ema = {"w": np.array([1.0, 2.0], np.float32), "n": np.array(3, np.int32)}
    new = {"w": np.array([3.0, 0.0], np.float32), "n": np.array(7, np.int32)}
    out = ema_update(ema, new, 0.75)
    np.testing.assert_allclose(out["w"], 0.75 * ema["w"] + 0.25 * new["w"])
    assert int(out["n"]) == 7 and out["w"].dtype == np.float32
    np.testing.assert_array_equal(ema_update(ema, new, mean_teacher_decay(0))["w"], new["w"])  # a copy at t = 0
