"""The LSS model's options: rematerialisation changes neither variables nor results, bfloat16 stays close to
float32. Tiny configuration (configs/lss.py:tiny: 2 cameras 32x96, 32x32 grid at 1 m, D = 10, c = 16, one MBConv
block per stage); each jitted function is compiled once per module."""

from __future__ import annotations

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from bevjax.geometry.grid import BEVGrid
from bevjax.models.lss import LSS, LSSGeometry
from bevjax.world.rig import camera_rig

B, N, H, W = 2, 2, 32, 96
GEOMETRY = LSSGeometry(
    (H, W), 16, (4.0, 44.0, 4.0), BEVGrid((-16.0, 16.0, 1.0), (-16.0, 16.0, 1.0), (-10.0, 10.0, 20.0))
)
K = 3


def tiny_lss(**kwargs) -> LSS:
    return LSS(num_classes=K, geometry=GEOMETRY, context_channels=16, trunk_depth=0.1, **kwargs)


@pytest.fixture(scope="module")
def inputs():
    intrinsics, cam_to_ego = camera_rig(("CAM_FRONT", "CAM_BACK"), (H, W))
    rng = np.random.default_rng(0)
    return (
        rng.integers(0, 255, (B, N, H, W, 3), dtype=np.uint8),
        np.broadcast_to(intrinsics, (B, N, 3, 3)).astype(np.float32),
        np.broadcast_to(cam_to_ego, (B, N, 4, 4)).astype(np.float32),
        np.broadcast_to(np.eye(3, dtype=np.float32), (B, N, 3, 3)).copy(),
        np.zeros((B, N, 3), np.float32),
    )


@pytest.fixture(scope="module")
def variables(inputs):
    return jax.jit(lambda x: tiny_lss().init(jax.random.key(0), *x, train=False))(inputs)


@pytest.fixture(scope="module")
def weights():
    return np.random.default_rng(1).normal(size=(B, 32, 32, K)).astype(np.float32)


def compiled(fn, *args):
    """``jax.jit(fn)`` compiled for ``args``, without XLA's backend optimisations on CPU (faster to compile)."""
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return jax.jit(fn).lower(*args).compile(compiler_options=options)


def train_outputs(model, variables, inputs, weights):
    """Logits, updated batch statistics and parameter gradients of ``sum(logits * weights)`` in training mode
    (batch statistics, drop connect with a fixed dropout key)."""

    def loss(params):
        (logits, _), updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            *inputs,
            train=True,
            rngs={"dropout": jax.random.key(2)},
            mutable=["batch_stats"],
        )
        return (logits.astype(jnp.float32) * weights).sum(), (logits, updates["batch_stats"])

    (_, (logits, stats)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    return logits, stats, grads


@pytest.fixture(scope="module")
def reference(variables, inputs, weights):
    fn = compiled(lambda v, x, w: train_outputs(tiny_lss(), v, x, w), variables, inputs, weights)
    return fn(variables, inputs, weights)


def relative_error(tree, ref) -> float:
    """``|tree - ref| / |ref|`` over all leaves (Euclidean norms)."""
    flat, ref_flat = jax.flatten_util.ravel_pytree(tree)[0], jax.flatten_util.ravel_pytree(ref)[0]
    return float(jnp.linalg.norm(flat - ref_flat) / jnp.linalg.norm(ref_flat))


@pytest.mark.parametrize("remat", ["blocks", "full"])
def test_remat_keeps_variables_outputs_and_gradients(remat, variables, inputs, weights, reference):
    model = tiny_lss(remat=remat)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), *x, train=False), inputs)
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(variables)
    chex.assert_trees_all_equal_shapes_and_dtypes(shapes, variables)
    logits, stats, grads = compiled(
        lambda v, x, w: train_outputs(model, v, x, w), variables, inputs, weights
    )(variables, inputs, weights)
    chex.assert_trees_all_close((logits, stats), reference[:2], rtol=1e-3, atol=1e-4)  # fusion rounding: 1.9e-5 on this CPU
    # The tiny model's gradients move by 2e-3 (relative) under any float32 rounding change of the forward pass:
    # cells of the empty BEV regions share one value per channel, close to a ReLU's kink. Two 'none' runs that
    # differ only in the convolution kernels (CPU-tuned and XLA's) differ as much as 'none' and 'blocks' do.
    # The encoders on their own agree to 1e-5 (tests/test_bev_encoder.py, tests/test_efficientnet.py).
    assert relative_error(grads, reference[2]) < 1e-2


def test_remat_rejects_unknown_setting(inputs):
    with pytest.raises(ValueError, match="remat="):
        jax.eval_shape(lambda x: tiny_lss(remat="some").init(jax.random.key(0), *x, train=False), inputs)


def test_bfloat16_trains_with_float32_parameters(variables, inputs, weights):
    model = tiny_lss(dtype=jnp.bfloat16)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), *x, train=False), inputs)
    chex.assert_trees_all_equal_shapes_and_dtypes(shapes, variables)  # float32 parameters and statistics
    logits, stats, grads = compiled(
        lambda v, x, w: train_outputs(model, v, x, w), variables, inputs, weights
    )(variables, inputs, weights)
    assert logits.dtype == jnp.float32
    chex.assert_trees_all_equal_dtypes(grads, variables["params"])
    chex.assert_trees_all_equal_dtypes(stats, variables["batch_stats"])
    chex.assert_tree_all_finite((logits, stats, grads))


def test_bfloat16_close_to_float32(variables, inputs):
    """Evaluation logits (running statistics) within bfloat16's precision (8 bits of mantissa, a relative step
    of 2^-8 per operation): 1.5 % here. Training mode is left out of the comparison: the tiny trunk normalises
    its last stage over 4 images of 1x3 positions, which amplifies any rounding."""
    got, want = (
        compiled(lambda v, x, m=model: m.apply(v, *x)[0], variables, inputs)(variables, inputs)
        for model in (tiny_lss(dtype=jnp.bfloat16), tiny_lss())
    )
    assert got.dtype == jnp.float32
    assert relative_error(got, want) < 0.05
