"""The sharded train step: equal on 1 and 8 devices, rng folded with the step, non-finite values caught."""

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from bevjax.training.state import check_finite

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax, flax.linen as nn, ml_collections
    from bevjax.training.sharding import make_mesh, shard_batch, replicate
    from bevjax.training.state import create_train_state, make_train_step
    from bevjax.training.optim import make_optimizer

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            # No bias before BatchNorm: its exact gradient is 0, and Adam would turn rounding noise into updates.
            x = nn.Dense(16, use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            x = nn.Dropout(0.3, deterministic=not train)(nn.relu(x))
            return nn.Dense(1)(x)

    net = Net()
    def loss_fn(params, batch_stats, batch, rng):
        out, upd = net.apply({"params": params, "batch_stats": batch_stats}, batch["x"], True,
                             rngs={"dropout": rng}, mutable=["batch_stats"])
        loss = jnp.mean((out[:, 0] - batch["y"]) ** 2)
        return loss, ({"mse": loss}, upd["batch_stats"])

    cfg = ml_collections.ConfigDict(dict(name="adam", lr=1e-2, weight_decay=0.0, grad_clip=5.0,
                                         schedule="constant", warmup_steps=0))
    tx = make_optimizer(cfg, 10)
    rs = np.random.RandomState(0)
    batches = [{"x": rs.randn(16, 8).astype(np.float32), "y": rs.randn(16).astype(np.float32)} for _ in range(3)]
    variables = net.init(jax.random.PRNGKey(0), batches[0]["x"], False)
    out = {}
    for n in (1, 8):
        mesh = make_mesh(n)
        step = make_train_step(loss_fn, tx, mesh)
        state = replicate(create_train_state(jax.tree.map(np.array, variables), tx), mesh)  # donated
        for b in batches:
            state, metrics = step(state, shard_batch(b, mesh), jax.random.PRNGKey(1))
        out[n] = jax.tree.map(np.asarray, (state.params, state.batch_stats, metrics))
    assert jax.device_count() == 8
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), out[1], out[8])
    print("OK", float(out[8][2]["loss"]), float(out[8][2]["grad_norm"]))
    """
)


def test_sharded_step_equals_single_device_step():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("OK")


def test_check_finite_names_the_metric():
    check_finite({"loss": jnp.float32(1.0)}, 3)
    with pytest.raises(FloatingPointError, match="non-finite grad_norm=nan at step 7"):
        check_finite({"loss": jnp.float32(1.0), "grad_norm": jnp.float32(np.nan)}, 7)
