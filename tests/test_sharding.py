"""Mesh and shardings: specs from rules and sizes (no devices needed), an FSDP step equal to the 1-device step,
checkpoints restored onto another mesh shape."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from bevjax.training.optim import param_path
from bevjax.training.sharding import (
    batch_sharding,
    check_batch_size,
    default_spec,
    leaf_spec,
    make_mesh,
    mesh_from_config,
    mesh_sizes,
    partition_specs,
    shard_batch,
    state_shardings,
)

MESH_2x4 = AbstractMesh((2, 4), ("data", "fsdp"))


def _specs_by_path(tree) -> dict:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda s: isinstance(s, P))
    return {param_path(p): s for p, s in leaves}


def _abstract_adam_state(params_shapes: dict):
    params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in params_shapes.items()}
    return jax.eval_shape(
        lambda p: {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": optax.adam(1e-3).init(p)},
        params,
    )


# -- specs ------------------------------------------------------------------------------------------------------


def test_a_matching_rule_gives_its_spec_and_the_first_match_wins():
    rules = (
        (r"head/kernel$", (None, "fsdp")),
        (r"kernel$", ("fsdp",)),
        (r"embed$", (("data", "fsdp"), None)),
    )
    assert leaf_spec("params/head/kernel", (64, 8), MESH_2x4, rules) == P(None, "fsdp")
    assert leaf_spec("params/trunk/kernel", (64, 8), MESH_2x4, rules) == P("fsdp")
    assert leaf_spec("params/embed", (16, 3), MESH_2x4, rules) == P(("data", "fsdp"), None)
    # A rule may replicate what the default would split.
    assert leaf_spec("params/big", (4096, 8), MESH_2x4, ((r"big$", ()),)) == P()
    assert leaf_spec("params/big", (4096, 8), MESH_2x4) == P("fsdp")


def test_default_splits_the_largest_divisible_axis_of_large_leaves_only():
    assert default_spec((3, 3, 64, 128), 4, min_size=16) == P(None, None, None, "fsdp")
    assert default_spec((128, 64), 4, min_size=16) == P("fsdp")
    assert default_spec((130, 64), 4, min_size=16) == P(None, "fsdp")  # 130 does not divide over 4
    assert default_spec((64, 64), 4, min_size=16) == P(None, "fsdp")  # a tie: the later axis
    assert default_spec((6, 5), 4, min_size=16) == P()  # nothing divides
    assert default_spec((128,), 4, min_size=2**14) == P()  # small bias
    assert default_spec((), 4, min_size=0) == P()  # scalar (step counter)
    assert default_spec((2,), 4, min_size=0) == P()  # raw rng key
    assert default_spec((4096, 64), 1, min_size=16) == P()  # fsdp=1: today's replicated parameters


def test_rule_whose_spec_does_not_divide_the_shape_names_the_path():
    with pytest.raises(ValueError, match=r"params/trunk/kernel.*\(30, 8\).*30 does not divide over fsdp=4"):
        leaf_spec("params/trunk/kernel", (30, 8), MESH_2x4, ((r"kernel$", ("fsdp", None)),))
    with pytest.raises(ValueError, match=r"params/b.*more entries than the leaf has dimensions"):
        leaf_spec("params/b", (8,), MESH_2x4, ((r"b$", (None, "fsdp")),))
    with pytest.raises(ValueError, match=r"no axis 'model'"):
        leaf_spec("params/b", (8,), MESH_2x4, ((r"b$", ("model",)),))


def test_optimiser_state_mirrors_the_parameters():
    state = _abstract_adam_state({"trunk": (256, 64), "head": (64, 10), "bias": (32,)})
    rules = ((r"head$", (None, None)),)
    specs = _specs_by_path(partition_specs(state, MESH_2x4, rules, min_size=64))
    assert specs["params/trunk"] == P("fsdp") and specs["params/head"] == P(None, None)
    assert specs["params/bias"] == P() and specs["step"] == P() and specs["opt_state/0/count"] == P()
    for moment in ("mu", "nu"):
        for name in ("trunk", "head", "bias"):
            assert specs[f"opt_state/0/{moment}/{name}"] == specs[f"params/{name}"], (moment, name)


def test_rules_and_min_size_from_the_mesh_config():
    # A config holds specs as tuples or lists; its min_shard_size applies unless min_size is given.
    cfg = ml_collections.ConfigDict(
        dict(data=-1, fsdp=4, rules=((r"head$", [None, "fsdp"]),), min_shard_size=2**20)
    )
    state = _abstract_adam_state({"trunk": (256, 64), "head": (64, 8)})
    specs = _specs_by_path(partition_specs(state, MESH_2x4, cfg))
    assert specs["params/head"] == P(None, "fsdp") and specs["params/trunk"] == P()  # below 2**20 elements
    specs = _specs_by_path(partition_specs(state, MESH_2x4, cfg, min_size=16))
    assert specs["params/trunk"] == P("fsdp")


def test_mesh_sizes_resolve_minus_one_and_name_bad_sizes():
    assert mesh_sizes(8, -1, 1) == (8, 1)
    assert mesh_sizes(8, 2, -1) == (2, 4)
    assert mesh_sizes(8, -1, 8) == (1, 8)
    with pytest.raises(ValueError, match=r"data=3, fsdp=-1 does not divide the 8 devices"):
        mesh_sizes(8, 3, -1)
    with pytest.raises(ValueError, match=r"data=2, fsdp=2 makes 4 devices, but there are 8"):
        mesh_sizes(8, 2, 2)
    with pytest.raises(ValueError, match=r"at most one axis may be -1"):
        mesh_sizes(8, -1, -1)
    with pytest.raises(ValueError, match=r"data=4, fsdp=1 does not divide the 1 devices"):
        mesh_from_config(ml_collections.ConfigDict(dict(data=4, fsdp=1)))


def test_batch_size_is_checked_against_both_axes():
    check_batch_size(16, MESH_2x4)
    with pytest.raises(ValueError, match=r"batch_size=12 .* 8 devices of the mesh \(data=2, fsdp=4\)"):
        check_batch_size(12, MESH_2x4)


def test_one_device_mesh_shards_windows_and_replicates_parameters():
    mesh = make_mesh()
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1}
    assert batch_sharding(mesh).spec == P(("data", "fsdp"))
    batch = shard_batch({"image": np.zeros((4, 3, 5, 2), np.float32), "label": np.arange(4)}, mesh)
    assert batch["image"].shape == (4, 3, 5, 2) and batch["label"].sharding == batch_sharding(mesh)
    shardings = state_shardings(_abstract_adam_state({"w": (512, 512)}), mesh, min_size=1)
    assert all(s.spec == P() for s in jax.tree.leaves(shardings))
    with pytest.raises(ValueError, match=r"batch leaf 'step' of shape \(\)"):
        shard_batch({"step": np.int32(3)}, mesh)


# -- 8 devices: the FSDP step and checkpoints across mesh shapes --------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import sys, tempfile
    import chex, jax, jax.numpy as jnp, numpy as np, optax, flax.linen as nn
    from bevjax.training import sharding as sh
    from bevjax.training.checkpoint import Checkpointer

    assert jax.device_count() == 8

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            # No bias before BatchNorm: its exact gradient is 0, and Adam would turn rounding noise into updates.
            x = nn.Dense(32, use_bias=False)(x)  # kernel 8 x 32: split over fsdp
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            x = nn.Dropout(0.3, deterministic=not train)(nn.relu(x))
            x = nn.relu(nn.Dense(16)(x))  # kernel 32 x 16: split over fsdp
            return nn.Dense(1)(x)

    net = Net()
    tx = optax.adam(1e-2)

    def step(state, batch, rng):
        rng = jax.random.fold_in(rng, state["step"])

        def loss_fn(params):
            out, upd = net.apply({"params": params, "batch_stats": state["batch_stats"]}, batch["x"][:, -1],
                                 True, rngs={"dropout": rng}, mutable=["batch_stats"])
            return jnp.mean((out[:, 0] - batch["y"]) ** 2), upd["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new = dict(step=state["step"] + 1, params=optax.apply_updates(state["params"], updates),
                   opt_state=opt_state, batch_stats=stats)
        return new, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    rs = np.random.RandomState(0)
    # [b, t, c] windows: the batch axis is split, the time axis stays whole.
    batches = [{"x": rs.randn(16, 2, 8).astype(np.float32), "y": rs.randn(16).astype(np.float32)}
               for _ in range(3)]
    variables = net.init(jax.random.PRNGKey(0), batches[0]["x"][:, -1], False)
    host = {"step": np.zeros((), np.int32), "params": variables["params"],
            "opt_state": tx.init(variables["params"]), "batch_stats": variables["batch_stats"]}
    host = jax.tree.map(np.asarray, host)
    abstract = jax.eval_shape(lambda: host)

    def run(mesh):
        shardings = sh.state_shardings(abstract, mesh, min_size=64)
        state = sh.place(host, shardings)
        ins, outs = sh.step_shardings(shardings, mesh)
        fn = jax.jit(step, in_shardings=ins, out_shardings=outs, donate_argnums=0)
        for b in batches:
            batch = sh.shard_batch(b, mesh)
            assert batch["x"].addressable_shards[0].data.shape == (16 // mesh.size, 2, 8)
            state, metrics = fn(state, batch, jax.random.PRNGKey(1))
        chex.assert_trees_all_equal(jax.tree.map(lambda a: a.sharding, state), shardings)
        return state, metrics

    ref_state, ref_metrics = run(sh.make_mesh(1))
    ref = jax.tree.map(np.asarray, (ref_state, ref_metrics))
    assert int(ref_state["step"]) == 3
    saved = None
    for data, fsdp in ((2, 4), (1, 8)):
        mesh = sh.make_mesh(8, data=data, fsdp=fsdp)
        state, metrics = run(mesh)
        chex.assert_trees_all_close(jax.tree.map(np.asarray, (state, metrics)), ref, rtol=1e-5, atol=1e-6)
        kernel = state["params"]["Dense_0"]["kernel"]
        assert "fsdp" in kernel.sharding.spec, kernel.sharding.spec
        assert kernel.addressable_shards[0].data.shape == (8, 32 // fsdp)
        mu = state["opt_state"][0].mu["Dense_0"]["kernel"]
        assert mu.sharding.spec == kernel.sharding.spec
        assert state["params"]["Dense_2"]["bias"].sharding.spec == jax.sharding.PartitionSpec()
        if fsdp == 4:
            saved = state
    print("fsdp steps equal the 1-device step", flush=True)

    # Saved from a (data=2, fsdp=4) mesh, restored onto 1 device and onto a (data=1, fsdp=8) mesh.
    expected = jax.tree.map(np.asarray, saved)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Checkpointer(tmp, max_to_keep=2)
        ckpt.save(3, saved)
        ckpt.wait()
        for mesh in (sh.make_mesh(1), sh.make_mesh(8, data=1, fsdp=8)):
            shardings = sh.state_shardings(abstract, mesh, min_size=64)
            restored = ckpt.restore(sh.abstract(abstract, shardings))
            chex.assert_trees_all_equal(jax.tree.map(np.asarray, restored), expected)
            chex.assert_trees_all_equal(jax.tree.map(lambda a: a.sharding, restored), shardings)
            assert {d for a in jax.tree.leaves(restored) for d in a.devices()} == set(mesh.devices.flat)
        ckpt.close()
    print("restored onto other meshes", flush=True)
    """
)


def test_fsdp_step_equals_single_device_step_and_checkpoints_move_between_meshes():
    # NPROC: a thread pool larger than the 8 forced devices (see tests/cli.py: avoids an all-reduce deadlock)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu", NPROC="16")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "restored onto other meshes" in result.stdout
