"""The NRSeg model (bevjax/models/nrseg.py): output shapes for windows and single frames, the sequence reset
through the whole model, streaming steps equal to the window, the lift-splat and BEV encoder path equal to LSS's
with the same parameters, finite gradients reaching every parameter, the parameter count at the paper's size.

Tiny configuration (``nrseg_tiny``: 2 cameras 32x96 at stride 8, D = 10, 16x16 grid at 2 m, c = 16, one MBConv
block per stage, PV logits at the input size). To keep the file short on a CPU: every jitted function is compiled
once for the module, without XLA's backend optimisations; the convolutions use XLA's implementation (faster to
compile; the CPU-tuned kernels are tested in test_layers.py and with LSS); the variables are the init's shapes
(``jax.eval_shape``, no compile) filled with seeded random values, so that no BatchNorm scale is zero (LSS's
ResNet blocks start with a zero residual branch, whose parameters would get no gradient at init).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bevjax.geometry.transforms import pose2d
from bevjax.models.layers import conv_impl
from bevjax.models.lss import LSS, LSSGeometry
from bevjax.models.nrseg import (
    PV_CLASSES,
    PV_IGNORE,
    TINY_GEOMETRY,
    NRSeg,
    nrseg_tiny,
    param_count,
    to_pv_classes,
)
from bevjax.schema import BEV_CLASSES, SEMANTIC_CLASS_ID
from bevjax.world.rig import camera_rig

B, T, N = 2, 2, 2
H, W = TINY_GEOMETRY.image_hw
X, Y, _ = TINY_GEOMETRY.grid.shape
D, FH, FW = TINY_GEOMETRY.depth_bins, H // 8, W // 8
C = 16
K = len(BEV_CLASSES)
FRAME_KEYS = ("images", "intrinsics", "cam_to_ego", "post_rots", "post_trans")
MODEL = nrseg_tiny()


def compiled(fn, *args):
    """``jax.jit(fn)`` compiled for ``args``, without XLA's backend optimisations on CPU."""
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return jax.jit(fn).lower(*args).compile(compiler_options=options)


@pytest.fixture(scope="module", autouse=True)
def xla_convolutions():
    with conv_impl("xla"):
        yield


def random_variables(model, inputs, seed: int = 0):
    """Variables of ``model.init`` with seeded random values: kernels N(0, 1 / fan_in), scales 1 + N(0, 0.1^2),
    biases and means N(0, 0.1^2), variances 1 + |N(0, 0.1^2)|."""
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), **x), inputs)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name, z = path[-1].key, rng.normal(size=leaf.shape)
        if name == "kernel":
            value = z / np.sqrt(np.prod(leaf.shape[:-1]))
        elif name == "scale":
            value = 1 + 0.1 * z
        elif name == "var":
            value = 1 + 0.1 * np.abs(z)
        else:
            value = 0.1 * z
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def window():
    """A [b, t] window: random images, the front and back cameras, the ego 3 m forward and turning between
    frames (sequence 0 by 0.1 rad, sequence 1 by -0.2 rad), frame 0 starting both sequences."""
    intrinsics, cam_to_ego = camera_rig(("CAM_FRONT", "CAM_BACK"), (H, W))
    rng = np.random.default_rng(0)
    poses = np.stack([pose2d([0.0, 3.0], [0.0, 0.5], [0.0, yaw]) for yaw in (0.1, -0.2)])  # b t 4 4
    return {
        "images": rng.integers(0, 255, (B, T, N, H, W, 3), dtype=np.uint8),
        "intrinsics": np.broadcast_to(intrinsics, (B, T, N, 3, 3)).astype(np.float32),
        "cam_to_ego": np.broadcast_to(cam_to_ego, (B, T, N, 4, 4)).astype(np.float32),
        "post_rots": np.broadcast_to(np.eye(3, dtype=np.float32), (B, T, N, 3, 3)).copy(),
        "post_trans": np.zeros((B, T, N, 3), np.float32),
        "ego_to_world": poses.astype(np.float32),
        "sequence_start": np.array([[True, False]] * B),
    }


def frame(batch, i):
    """Frame ``i`` of the window, without the t axis."""
    return {k: v[:, i] for k, v in batch.items()}


@pytest.fixture(scope="module")
def variables(window):
    return random_variables(MODEL, window)


@pytest.fixture(scope="module")
def run_window(variables, window):
    return compiled(lambda v, x: MODEL.apply(v, **x), variables, window)


@pytest.fixture(scope="module")
def continued(run_window, variables, window):
    """Outputs of the window with frame 1 continuing frame 0's sequence."""
    return run_window(variables, window)


def test_window_output_shapes(continued):
    outputs, aux = continued
    chex.assert_shape(outputs["logits"], (B, T, X, Y, K))
    assert set(outputs["alpha"]) == {c.name for c in MODEL.hlse.clusters}
    for c in MODEL.hlse.clusters:
        chex.assert_shape(outputs["alpha"][c.name], (B, T, X, Y, c.size))
        assert float(outputs["alpha"][c.name].min()) >= 1.0
    chex.assert_shape(outputs["pv_logits"], (B, T, N, H, W, len(PV_CLASSES)))
    chex.assert_shape(outputs["depth_logits"], (B, T, N, FH, FW, D))
    chex.assert_shape([outputs["bev_feature"], outputs["warped_prev"], aux["bev_splat"]], (B, T, X, Y, C))
    chex.assert_shape(outputs["warped_valid"], (B, T, X, Y))
    chex.assert_shape(aux["bev_decoded"], (B, T, X, Y, 128))
    chex.assert_shape(aux["depth"], (B, T, N, FH, FW, D))
    chex.assert_shape(aux["carry"].feature, (B, X, Y, C))
    chex.assert_tree_all_finite((outputs, aux))
    # Frame 0 starts the sequences: nothing warped; frame 1 continues them: most cells come from frame 0.
    valid = np.asarray(outputs["warped_valid"])
    assert not valid[:, 0].any() and valid[:, 1].mean() > 0.5


def test_single_frame_output_shapes(variables, window):
    """A batch without t runs as one frame (``t = 1``) and its outputs have no t axis."""
    outputs, aux = jax.eval_shape(lambda v, x: MODEL.apply(v, **x), variables, frame(window, 1))
    chex.assert_shape(outputs["logits"], (B, X, Y, K))
    chex.assert_shape(outputs["alpha"]["road"], (B, X, Y, 3))
    chex.assert_shape(outputs["pv_logits"], (B, N, H, W, len(PV_CLASSES)))
    chex.assert_shape(outputs["depth_logits"], (B, N, FH, FW, D))
    chex.assert_shape([outputs["bev_feature"], outputs["warped_prev"], aux["bev_splat"]], (B, X, Y, C))
    chex.assert_shape(outputs["warped_valid"], (B, X, Y))
    chex.assert_shape(aux["carry"].feature, (B, X, Y, C))


@pytest.fixture(scope="module")
def run_step(variables, window):
    """The compiled streaming step (one frame with a carry)."""
    return compiled(
        lambda v, c, x: MODEL.apply(v, c, **x, method="step"),
        variables,
        MODEL.empty_carry(B),
        frame(window, 0),
    )


def test_sequence_start_resets_through_the_whole_model(run_window, run_step, continued, variables, window):
    """With frame 1 starting a new sequence, every output of frame 1 is that of frame 1 run alone."""
    restarted, _ = run_window(variables, {**window, "sequence_start": np.ones((B, T), bool)})
    alone, aux = run_step(variables, MODEL.empty_carry(B), frame(window, 1))
    got = jax.tree.map(lambda a: a[:, 1], restarted)
    chex.assert_trees_all_close(got, alone, rtol=1e-5, atol=1e-5)
    assert not np.asarray(alone["warped_valid"]).any()
    # Not vacuous: continuing the sequence changes the fused feature and the BEV outputs of frame 1.
    cont = continued[0]
    assert float(jnp.abs(cont["bev_feature"][:, 1] - alone["bev_feature"]).max()) > 1e-2
    assert float(jnp.abs(cont["logits"][:, 1] - alone["logits"]).max()) > 1e-3
    chex.assert_trees_all_close(cont["pv_logits"][:, 1], alone["pv_logits"], rtol=1e-5, atol=1e-5)


def test_streaming_steps_equal_the_window(run_step, variables, window, continued):
    """Frame-by-frame ``step`` with the carry gives the window's outputs, and the same final carry."""
    carry, outs = MODEL.empty_carry(B), []
    for i in range(T):
        out, aux = run_step(variables, carry, frame(window, i))
        outs.append(out)
        carry = aux["carry"]
    stacked = jax.tree.map(lambda *a: jnp.stack(a, 1), *outs)
    chex.assert_trees_all_close(stacked, continued[0], rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(tuple(carry), tuple(continued[1]["carry"]), rtol=1e-5, atol=1e-5)


def test_bev_path_is_lss_with_the_same_parameters(variables, window):
    """NRSeg's camencode and bevencode are LSS's (stride 8): LSS applied to NRSeg's own variables gives the
    same depth, splatted BEV feature and decoded BEV feature as NRSeg with the fusion bypassed."""
    lss = LSS(num_classes=K, geometry=TINY_GEOMETRY, context_channels=C, trunk_depth=0.1)
    bypass = nrseg_tiny(temporal=False)
    lss_vars = {col: {k: v[k] for k in ("camencode", "bevencode")} for col, v in variables.items()}
    no_fusion = {col: {k: x for k, x in v.items() if k != "fusion"} for col, v in variables.items()}
    x = frame(window, 1)

    def both(lv, nv, x):
        _, lss_aux = lss.apply(lv, *(x[k] for k in FRAME_KEYS))
        return lss_aux, bypass.apply(nv, **x)

    lss_aux, (outputs, aux) = compiled(both, lss_vars, no_fusion, x)(lss_vars, no_fusion, x)
    chex.assert_trees_all_close(aux["depth"], lss_aux["depth"], rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(aux["bev_splat"], lss_aux["bev_features"], rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(outputs["bev_feature"], aux["bev_splat"])  # bypassed
    chex.assert_trees_all_close(aux["bev_decoded"], lss_aux["bev_decoded"], rtol=1e-5, atol=1e-5)
    assert not np.asarray(outputs["warped_valid"]).any()


def test_training_gradients_are_finite_and_reach_every_parameter(variables, window):
    """jit(value_and_grad) in training mode over a window (frame 1 continues frame 0). Every parameter gets a
    gradient except LSS's own BEV head (``bevencode/PointwiseConv_0``), kept only for LSS checkpoints."""
    rng = np.random.default_rng(1)
    weights = {
        "logits": rng.normal(size=(B, T, X, Y, K)),
        "pv_logits": rng.normal(size=(B, T, N, H, W, len(PV_CLASSES))),
        "depth_logits": rng.normal(size=(B, T, N, FH, FW, D)),
        "bev_feature": rng.normal(size=(B, T, X, Y, C)),
    }

    def loss(params, x):
        outputs, updates = MODEL.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            **x,
            train=True,
            rngs={"dropout": jax.random.key(2)},
            mutable=["batch_stats"],
        )
        out, _ = outputs
        total = sum((out[k] * w).sum() for k, w in weights.items())
        total += sum(jnp.log(a).sum() for a in out["alpha"].values()) + 0.1 * out["warped_prev"].sum()
        return total, updates["batch_stats"]

    (value, stats), grads = compiled(jax.value_and_grad(loss, has_aux=True), variables["params"], window)(
        variables["params"], window
    )
    chex.assert_tree_all_finite((value, stats, grads))
    norms = {
        "/".join(str(getattr(p, "key", p)) for p in path): float(jnp.abs(g).max())
        for path, g in jax.tree_util.tree_leaves_with_path(grads)
    }
    dead = sorted(k for k, v in norms.items() if v == 0.0)
    assert dead == ["bevencode/PointwiseConv_0/bias", "bevencode/PointwiseConv_0/kernel"], dead
    assert any(k.startswith("fusion/") for k in norms)


def test_pv_class_mapping():
    sem = np.array(
        [SEMANTIC_CLASS_ID[c] for c in ("road", "sidewalk", "vehicle", "pole", "pedestrian")] + [200]
    )
    want = [PV_CLASSES.index(c) for c in ("road", "background", "car", "sign_light", "person")] + [PV_IGNORE]
    np.testing.assert_array_equal(to_pv_classes(sem.astype(np.uint8)), want)
    np.testing.assert_array_equal(np.asarray(to_pv_classes(jnp.asarray(sem))), want)


@pytest.mark.parametrize("remat, dtype", [("blocks", jnp.bfloat16), ("full", jnp.float32)])
def test_remat_and_dtype_keep_variables_and_float32_outputs(remat, dtype, variables, window):
    """As LSS: the variables do not depend on ``remat`` or ``dtype`` (float32 parameters and statistics), and the
    outputs are float32 (shapes only, no compile)."""
    model = nrseg_tiny(remat=remat, dtype=dtype)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), **x), window)
    chex.assert_trees_all_equal_shapes_and_dtypes(shapes, variables)
    outputs, aux = jax.eval_shape(lambda v, x: model.apply(v, **x), variables, window)
    floats = [a for a in jax.tree.leaves((outputs, aux)) if jnp.issubdtype(a.dtype, jnp.floating)]
    assert floats and all(a.dtype == jnp.float32 for a in floats)


def test_rejects_stride_16(window):
    model = nrseg_tiny(
        geometry=LSSGeometry(TINY_GEOMETRY.image_hw, 16, TINY_GEOMETRY.dbound, TINY_GEOMETRY.grid)
    )
    with pytest.raises(ValueError, match="stride=16"):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), **x), window)


def test_parameter_count_at_the_paper_size():
    """The figure of the module docstring (6 cameras 128x352, 200x200 at 0.5 m, D = 41, C = 64)."""
    counts = param_count(NRSeg())
    print("NRSeg parameters at the paper's size:", counts)
    assert counts["total"] == 14_570_858
