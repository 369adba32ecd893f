"""BEV encoder shapes and the aligned-corner bilinear upsampling against a float64 reference."""

import chex
import jax
import numpy as np

from bevjax.models.bev_encoder import BevEncoder
from bevjax.models.layers import upsample_bilinear


def test_upsample_matches_align_corners_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 4, 2))
    out = np.asarray(upsample_bilinear(x.astype(np.float32), 2))
    h, w = 3, 4
    ref = np.zeros((1, 6, 8, 2))
    for i in range(6):
        for j in range(8):
            sy, sx = i * (h - 1) / 5, j * (w - 1) / 7  # align_corners=True source coordinates
            y0, x0 = min(int(sy), h - 2), min(int(sx), w - 2)
            fy, fx = sy - y0, sx - x0
            ref[0, i, j] = (
                x[0, y0, x0] * (1 - fy) * (1 - fx)
                + x[0, y0, x0 + 1] * (1 - fy) * fx
                + x[0, y0 + 1, x0] * fy * (1 - fx)
                + x[0, y0 + 1, x0 + 1] * fy * fx
            )
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_allclose(out[0, 0, 0], x[0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(out[0, -1, -1], x[0, -1, -1], atol=1e-6)


def test_bev_encoder_shapes_and_batch_stats():
    model = BevEncoder(out_channels=5)
    x = np.random.default_rng(0).normal(size=(2, 32, 24, 7)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x, False)
    (logits, aux), updates = model.apply(variables, x, True, mutable=["batch_stats"])
    chex.assert_shape(logits, (2, 32, 24, 5))
    chex.assert_shape(aux["features"], (2, 32, 24, 128))
    assert "batch_stats" in updates


def _bev_train_grads(model, variables, x, weights):
    def loss(params):
        (logits, _), _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, x, True, mutable=["batch_stats"]
        )
        return (logits * weights).sum(), logits

    return jax.grad(loss, has_aux=True)(variables["params"])


def test_bev_encoder_remat_keeps_variables_outputs_and_gradients():
    """Rematerialised blocks: the same variable tree, and the same logits and gradients (float32 rounding)."""
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 8)).astype(np.float32)
    x[:, :, :6] = 0  # empty BEV cells, as after splatting
    weights = np.random.default_rng(2).normal(size=(2, 16, 16, 3)).astype(np.float32)
    variables = BevEncoder(3).init(jax.random.PRNGKey(0), x, False)
    shapes = jax.eval_shape(lambda: BevEncoder(3, remat="blocks").init(jax.random.PRNGKey(0), x, False))
    chex.assert_trees_all_equal_shapes_and_dtypes(shapes, variables)
    models = (BevEncoder(3, remat="blocks"), BevEncoder(3))
    got, want = (jax.jit(lambda v, m=m: _bev_train_grads(m, v, x, weights))(variables) for m in models)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
