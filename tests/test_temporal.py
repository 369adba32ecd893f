"""Tests of NRSeg's streaming temporal fusion (bevjax/models/temporal.py) against independent NumPy references.

The warp reference maps cell centres with the float64 rigid transforms of ``bevjax.geometry.transforms`` and
samples with ``scipy.ndimage.map_coordinates`` (order 1, mode 'nearest'; SciPy comes with JAX), and decides
validity with ``BEVGrid.cell_index``; the ConvGRU reference is a NumPy re-implementation of its formulas.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from bevjax.geometry import BEVGrid
from bevjax.geometry.transforms import invert_rigid, pose2d, transform_points
from bevjax.models.temporal import (
    ConvGRU,
    FusionCarry,
    StreamingFusion,
    empty_carry,
    relative_pose,
    warp_bev,
)

C = 8
# 16 x 16 cells of 1 m x 0.75 m: unequal resolutions catch x/y mix-ups.
GRID = BEVGrid(xbound=(-8.0, 8.0, 1.0), ybound=(-6.0, 6.0, 0.75))
# 16 x 16 square cells centred on the ego, for the 90-degree rotation.
SQUARE = BEVGrid(xbound=(-8.0, 8.0, 1.0), ybound=(-8.0, 8.0, 1.0))


def rot_zyx(yaw, pitch, roll) -> np.ndarray:
    """R = Rz(yaw) Ry(pitch) Rx(roll), float64 [3, 3]."""
    cy, sy, cp, sp, cr, sr = (
        np.cos(yaw),
        np.sin(yaw),
        np.cos(pitch),
        np.sin(pitch),
        np.cos(roll),
        np.sin(roll),
    )
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    return rz @ ry @ rx


def rigid(rot, trans) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rot, trans
    return out


# One compiled warp per (shapes, grid), shared by the tests.
warp = jax.jit(warp_bev, static_argnums=2)


def reference_warp(feature_prev, yaw, tx, ty, grid):
    """Float64 warp of one [x, y, c] feature by the planar pose (yaw, tx, ty): (warped, valid, margin) where
    margin is the distance (in cells) of each mapped centre from the previous grid's border."""
    nx, ny, _ = grid.shape
    centres = grid.cell_centers().astype(np.float64)  # x y 2
    pts = np.concatenate([centres, np.zeros(centres.shape[:-1] + (1,))], -1).reshape(-1, 3)
    q = transform_points(pose2d(tx, ty, yaw), pts).reshape(nx, ny, 3)
    _, valid = grid.cell_index(q)
    u = (q[..., 0] - grid.xbound[0]) / grid.xbound[2] - 0.5
    v = (q[..., 1] - grid.ybound[0]) / grid.ybound[2] - 0.5
    warped = np.stack(
        [
            map_coordinates(feature_prev[..., k].astype(np.float64), [u, v], order=1, mode="nearest")
            for k in range(feature_prev.shape[-1])
        ],
        -1,
    )
    warped[~valid] = 0.0
    margin = np.minimum.reduce([u + 0.5, nx - 0.5 - u, v + 0.5, ny - 0.5 - v])
    return warped, valid, np.abs(margin)


def random_feature(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ----------------------------------------------------------------------------------------------- relative_pose


def test_relative_pose_matches_numpy():
    rng = np.random.default_rng(1)
    prev, cur = [], []
    for _ in range(4):
        for out in (prev, cur):
            rot = rot_zyx(rng.uniform(-np.pi, np.pi), *rng.uniform(-0.1, 0.1, 2))
            out.append(rigid(rot, rng.uniform(-2000, 2000, 3) * [1, 1, 0.01]))
    prev, cur = np.stack(prev), np.stack(cur)
    cur[:, :3, 3] = prev[:, :3, 3] + rng.uniform(-5, 5, (4, 3))  # consecutive frames: a few metres apart
    prev, cur = prev.astype(np.float32), cur.astype(np.float32)
    expected = np.linalg.inv(prev.astype(np.float64)) @ cur.astype(np.float64)
    got = np.asarray(jax.jit(relative_pose)(prev, cur))
    assert got.shape == (4, 4, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got[:, :3, :3], expected[:, :3, :3], atol=2e-6)
    # float32 world coordinates of 2 km are rounded to ~1e-4 m; the result keeps that precision.
    np.testing.assert_allclose(got[:, :3, 3], expected[:, :3, 3], atol=5e-4)
    np.testing.assert_array_equal(got[:, 3], np.tile([0, 0, 0, 1], (4, 1)))
    # Same pose twice: the identity.
    same = np.asarray(jax.jit(relative_pose)(prev, prev))
    np.testing.assert_allclose(same, np.tile(np.eye(4), (4, 1, 1)), atol=2e-6)


# ---------------------------------------------------------------------------------------------------- warp_bev


def test_warp_identity_is_identity():
    feat = random_feature((2, 16, 16, C))
    for pose in (
        np.tile(np.eye(4, dtype=np.float32), (2, 1, 1)),
        np.tile(np.eye(3, dtype=np.float32), (2, 1, 1)),
    ):
        warped, valid = warp(feat, pose, GRID)
        np.testing.assert_array_equal(np.asarray(warped), feat)
        assert np.asarray(valid).all() and valid.shape == (2, 16, 16)
    # A pose equal to the identity up to float32 rounding (same world pose twice, 1.5 km from the origin)
    # keeps every cell valid: no flickering border.
    world = np.tile(rigid(rot_zyx(0.7, 0.01, -0.02), [1500.0, -900.0, 3.0]), (2, 1, 1)).astype(np.float32)
    warped, valid = warp(feat, jax.jit(relative_pose)(world, world), GRID)
    assert np.asarray(valid).all()
    np.testing.assert_allclose(np.asarray(warped), feat, atol=1e-3)


@pytest.mark.parametrize("shift", [(3, 0), (0, -2), (-5, 4), (2, 7)])
def test_warp_integer_translation_is_a_shift(shift):
    k, m = shift  # cells along x and y
    feat = random_feature((1, 16, 16, C), seed=2)
    cur_to_prev = pose2d(k * GRID.xbound[2], m * GRID.ybound[2], 0.0)[None].astype(np.float32)
    warped, valid = warp(feat, cur_to_prev, GRID)
    # Current cell (i, j) is the previous cell (i + k, j + m): a roll by (-k, -m), invalid where it wrapped.
    expected = np.roll(feat, (-k, -m), axis=(1, 2))
    i, j = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    inside = (i + k >= 0) & (i + k < 16) & (j + m >= 0) & (j + m < 16)
    expected[0][~inside] = 0.0
    np.testing.assert_array_equal(np.asarray(valid)[0], inside)
    np.testing.assert_allclose(np.asarray(warped), expected, atol=1e-6)


def test_warp_rotation_by_90_degrees_is_rot90():
    # One hot cell at previous (i0, j0) = (12, 7): centre (x, y) = (-8 + 12.5, -8 + 7.5) = (4.5, -0.5), 4.5 m
    # ahead. The ego then turns left by 90 degrees in place: cur_to_prev = Rz(+90), q = (-p_y, p_x). The current
    # cell whose centre maps onto (4.5, -0.5) has p = (q_y, -q_x) = (-0.5, -4.5): i = -0.5 + 7.5 = 7,
    # j = -4.5 + 7.5 = 3, i.e. (j0, 15 - i0). The landmark that was ahead is now on the right (y < 0).
    i0, j0 = 12, 7
    hot = np.zeros((1, 16, 16, C), np.float32)
    hot[0, i0, j0] = np.arange(1, C + 1)
    prev_pose, cur_pose = pose2d(300.0, -40.0, 0.3), pose2d(300.0, -40.0, 0.3 + np.pi / 2)
    cur_to_prev = jax.jit(relative_pose)(
        prev_pose[None].astype(np.float32), cur_pose[None].astype(np.float32)
    )
    warped, valid = warp(hot, cur_to_prev, SQUARE)
    warped = np.asarray(warped)
    assert np.asarray(valid).all()
    assert np.unravel_index(np.argmax(warped[0, ..., 0]), (16, 16)) == (j0, 15 - i0) == (7, 3)
    np.testing.assert_allclose(warped[0, j0, 15 - i0], hot[0, i0, j0], atol=1e-4)
    np.testing.assert_allclose(np.delete(warped[0].reshape(-1, C), j0 * 16 + 15 - i0, 0), 0.0, atol=1e-4)
    # out[i, j] = F[15 - j, i] for the whole map: np.rot90 by -90 degrees over (x, y).
    feat = random_feature((1, 16, 16, C), seed=3)
    warped, valid = warp(feat, pose2d(0.0, 0.0, np.pi / 2)[None].astype(np.float32), SQUARE)
    np.testing.assert_allclose(np.asarray(warped), np.rot90(feat, k=-1, axes=(1, 2)), atol=1e-5)
    assert np.asarray(valid).all()


def test_warp_random_se2_matches_float64_reference():
    rng = np.random.default_rng(4)
    b = 4
    feat = random_feature((b, 16, 16, C), seed=5)
    yaw = rng.uniform(-np.pi, np.pi, b)
    trans = rng.uniform(-4, 4, (b, 2))
    # The [b, 4, 4] form carries a z offset, pitch and roll that the planar warp ignores; the SE(2) form is
    # the same planar pose.
    pose4 = np.stack(
        [rigid(rot_zyx(yaw[n], *rng.uniform(-0.05, 0.05, 2)), [*trans[n], 0.4]) for n in range(b)]
    ).astype(np.float32)
    pose3 = pose2d(trans[:, 0], trans[:, 1], yaw)[:, [0, 1, 3]][:, :, [0, 1, 3]].astype(np.float32)
    for pose in (pose4, pose3):
        warped, valid = warp(feat, pose, GRID)
        warped, valid = np.asarray(warped), np.asarray(valid)
        for n in range(b):
            ref, ref_valid, margin = reference_warp(feat[n], yaw[n], *trans[n], GRID)
            clear = (
                margin > 1e-3
            )  # float32 vs float64 may disagree on a centre within 1e-3 cells of the border
            np.testing.assert_array_equal(valid[n][clear], ref_valid[clear])
            assert 0 < ref_valid.sum() < ref_valid.size  # the case has both valid and invalid cells
            np.testing.assert_allclose(warped[n][clear], ref[clear], atol=2e-4)


def test_warp_jit_and_gradients_are_finite():
    feat = random_feature((2, 16, 16, C), seed=6)
    pose = np.stack([pose2d(1.3, -0.4, 0.2), pose2d(-2.0, 0.7, -1.1)]).astype(np.float32)
    weights = random_feature((2, 16, 16, C), seed=7)

    def loss(f, p):
        warped, valid = warp_bev(f, p, GRID)
        return jnp.sum(warped * weights) + jnp.sum(valid)

    gf, gp = jax.jit(jax.grad(loss, argnums=(0, 1)))(feat, pose)
    assert np.isfinite(np.asarray(gf)).all() and np.isfinite(np.asarray(gp)).all()
    # The warp is linear in the feature, so its gradient is its adjoint: <grad, g> = <weights, warp(g)>.
    probe = random_feature((2, 16, 16, C), seed=8)
    np.testing.assert_allclose(
        np.vdot(np.asarray(gf), probe), np.vdot(weights, np.asarray(warp(probe, pose, GRID)[0])), rtol=1e-4
    )
    # Constant features stay constant where valid (the bilinear weights sum to 1).
    warped_ones, valid = warp(np.ones_like(feat), pose, GRID)
    np.testing.assert_allclose(np.asarray(warped_ones), np.asarray(valid)[..., None] * np.ones(C), atol=1e-6)
    # Non-finite poses make no NaN: every cell invalid.
    warped, valid = warp(feat, np.full((2, 4, 4), np.nan, np.float32), GRID)
    assert not np.asarray(valid).any() and np.isfinite(np.asarray(warped)).all()


# ----------------------------------------------------------------------------------------------------- ConvGRU


def np_layer_norm(y, scale, bias, eps=1e-5):
    mean = y.mean(-1, keepdims=True)
    var = ((y - mean) ** 2).mean(-1, keepdims=True)
    return (y - mean) / np.sqrt(var + eps) * scale + bias


def np_conv_gru(params, h, x):
    """NumPy float64 ConvGRU: z, r = sigmoid(W [h, x]); q = W_q [r h, x]; LayerNorm((1 - z) h + z q)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    sig = lambda a: 1 / (1 + np.exp(-a))
    hx = np.concatenate([h, x], -1)
    z = sig(hx @ p["convz"]["kernel"][0, 0])
    r = sig(hx @ p["convr"]["kernel"][0, 0])
    q = np.concatenate([r * h, x], -1) @ p["convq"]["kernel"][0, 0]
    return np_layer_norm((1 - z) * h + z * q, p["ln"]["scale"], p["ln"]["bias"])


def perturbed(variables, seed=8):
    """Parameters with non-default LayerNorm scale and bias, so that the reference checks them too."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: a + 0.3 * rng.normal(size=a.shape).astype(np.float32), variables)


def test_conv_gru_matches_numpy():
    h, x = random_feature((2, 16, 16, C), seed=9), random_feature((2, 16, 16, 5), seed=10)
    gru = ConvGRU(C)
    variables = perturbed(jax.jit(gru.init)(jax.random.key(0), h, x))
    assert set(variables["params"]) == {"convz", "convr", "convq", "ln"}
    assert variables["params"]["convz"]["kernel"].shape == (1, 1, C + 5, C)  # no bias: the LayerNorm has one
    got = np.asarray(jax.jit(gru.apply)(variables, h, x))
    expected = np_conv_gru(variables["params"], h.astype(np.float64), x.astype(np.float64))
    np.testing.assert_allclose(got, expected, atol=2e-5)


# --------------------------------------------------------------------------------------------- StreamingFusion


def drive(b, t, seed=11):
    """ego_to_world [b, t, 4, 4] of cars driving 1-2 m per frame with 3-10 degrees of yaw, far from the origin."""
    rng = np.random.default_rng(seed)
    poses = np.zeros((b, t, 4, 4))
    for n in range(b):
        x, y, yaw = rng.uniform(-1500, 1500, 2).tolist() + [rng.uniform(-np.pi, np.pi)]
        for k in range(t):
            poses[n, k] = pose2d(x, y, yaw)
            step, yaw = rng.uniform(1, 2), yaw + np.deg2rad(rng.uniform(3, 10)) * rng.choice([-1, 1])
            x, y = x + step * np.cos(yaw), y + step * np.sin(yaw)
    return poses.astype(np.float32)


MODEL = StreamingFusion(C)
# One compiled window per (shapes, carry or not), shared by the tests: apply(variables, feats, poses, starts, grid).
fuse = jax.jit(MODEL.apply, static_argnums=4)


@functools.cache
def fusion_setup(b=2, t=4, seed=12):
    """(model, perturbed variables, feats [b, t, x, y, c], poses [b, t, 4, 4]) (cached: do not modify)."""
    feats = random_feature((b, t, 16, 16, C), seed=seed)
    poses = drive(b, t, seed)
    starts = np.zeros((b, t), bool)
    variables = perturbed(
        jax.jit(MODEL.init, static_argnums=4)(jax.random.key(1), feats, poses, starts, GRID)
    )
    return MODEL, variables, feats, poses


def test_streaming_fusion_frame_matches_reference():
    model, variables, feats, poses = fusion_setup()
    starts = np.zeros((2, 4), bool)
    fused, aux = fuse(variables, feats, poses, starts, GRID)
    fused, warped, valid = (np.asarray(a) for a in (fused, aux["warped_prev"], aux["warped_valid"]))
    assert fused.shape == warped.shape == (2, 4, 16, 16, C) and valid.shape == (2, 4, 16, 16)
    params = variables["params"]["gru"]
    f64 = feats.astype(np.float64)
    # Frame 0 has no previous feature: h = x.
    np.testing.assert_allclose(fused[:, 0], np_conv_gru(params, f64[:, 0], f64[:, 0]), atol=5e-5)
    assert not valid[:, 0].any() and not warped[:, 0].any()
    # Frame 1: h = the warped fused frame 0 where valid, else x.
    for n in range(2):
        rel = invert_rigid(poses[n, 0].astype(np.float64)) @ poses[n, 1].astype(np.float64)
        yaw = np.arctan2(rel[1, 0], rel[0, 0])
        ref, ref_valid, margin = reference_warp(fused[n, 0], yaw, rel[0, 3], rel[1, 3], GRID)
        clear = margin > 1e-3
        np.testing.assert_array_equal(valid[n, 1][clear], ref_valid[clear])
        assert 0 < ref_valid.sum() < ref_valid.size
        np.testing.assert_allclose(warped[n, 1][clear], ref[clear], atol=2e-4)
        h = np.where(valid[n, 1][..., None], warped[n, 1], f64[n, 1])
        np.testing.assert_allclose(fused[n, 1], np_conv_gru(params, h, f64[n, 1]), atol=5e-4)


def test_streaming_fusion_resets_at_sequence_start():
    model, variables, feats, poses = fusion_setup()
    run = fuse
    # Batch 0 starts a new sequence at t = 2; batch 1 continues (and t = 0 carries no state: a reset too).
    starts = np.array([[1, 0, 1, 0], [0, 0, 0, 0]], bool)
    fused, aux = run(variables, feats, poses, starts, GRID)
    fused, valid = np.asarray(fused), np.asarray(aux["warped_valid"])
    fresh = [np.asarray(run(variables, feats[:, k : k + 1], poses[:, k : k + 1], starts[:, :1], GRID)[0])[:, 0]
             for k in range(4)]  # fmt: skip
    np.testing.assert_allclose(fused[:, 0], fresh[0], atol=1e-6)
    np.testing.assert_allclose(fused[0, 2], fresh[2][0], atol=1e-6)  # the reset frame equals a fresh start
    assert not valid[0, 2].any() and not valid[:, 0].any()
    for n, k in ((0, 1), (0, 3), (1, 1), (1, 2), (1, 3)):  # continuing frames differ from a fresh start
        assert valid[n, k].mean() > 0.5
        assert np.abs(fused[n, k] - fresh[k][n]).max() > 0.1, (n, k)
    # The frame after the reset depends on the new sequence only (frame 2 on), not on frames 0 and 1.
    other = feats.copy()
    other[0, :2] = random_feature((2, 16, 16, C), seed=99)
    fused_other = np.asarray(run(variables, other, poses, starts, GRID)[0])
    np.testing.assert_allclose(fused_other[0, 2:], fused[0, 2:], atol=1e-6)
    assert np.abs(fused_other[0, :2] - fused[0, :2]).max() > 0.1


def test_streaming_step_and_carried_windows_match_the_scan():
    model, variables, feats, poses = fusion_setup()
    starts = np.array([[1, 0, 0, 1], [1, 0, 0, 0]], bool)
    fused, aux = fuse(variables, feats, poses, starts, GRID)
    # Frame by frame with the single-step API (streaming evaluation).
    step = jax.jit(lambda v, c, f, p, s: model.apply(v, c, f, p, s, GRID, method="step"))
    carry = empty_carry(2, GRID, C)
    for k in range(4):
        out, step_aux = step(variables, carry, feats[:, k], poses[:, k], starts[:, k])
        carry = step_aux["carry"]
        np.testing.assert_allclose(np.asarray(out), np.asarray(fused[:, k]), atol=1e-5)
        np.testing.assert_array_equal(
            np.asarray(step_aux["warped_valid"]), np.asarray(aux["warped_valid"][:, k])
        )
    assert isinstance(carry, FusionCarry) and np.asarray(carry.has_state).all()
    np.testing.assert_allclose(np.asarray(carry.feature), np.asarray(aux["carry"].feature), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(carry.ego_to_world), poses[:, -1])
    # Two windows of 2 frames, the second continuing the first's carry, equal one window of 4.
    first, aux1 = fuse(variables, feats[:, :2], poses[:, :2], starts[:, :2], GRID)
    second, _ = fuse(variables, feats[:, 2:], poses[:, 2:], starts[:, 2:], GRID, carry=aux1["carry"])
    np.testing.assert_allclose(np.asarray(jnp.concatenate([first, second], 1)), np.asarray(fused), atol=1e-5)
    # Without the carry the second window's first frame resets (batch 1 continues its sequence there).
    alone, _ = fuse(variables, feats[:, 2:], poses[:, 2:], starts[:, 2:], GRID)
    assert np.abs(np.asarray(alone[1, 0]) - np.asarray(fused[1, 2])).max() > 0.1


def test_streaming_fusion_jit_and_grad_finite():
    model, variables, feats, poses = fusion_setup(seed=13)
    starts = np.array([[1, 0, 0, 0], [1, 0, 1, 0]], bool)

    @jax.jit
    def loss(params, f):
        fused, aux = model.apply({"params": params}, f, poses, starts, GRID)
        mask = aux["warped_valid"][..., None]
        l1 = jnp.sum(jnp.abs(aux["warped_prev"] - fused) * mask) / jnp.maximum(jnp.sum(mask), 1)
        return jnp.mean(fused**2) + 0.1 * l1

    value, (gp, gf) = jax.value_and_grad(loss, argnums=(0, 1))(variables["params"], feats)
    assert np.isfinite(float(value))
    leaves = jax.tree.leaves((gp, gf))
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert all(
        np.abs(np.asarray(g)).max() > 0 for g in leaves
    )  # every parameter and the features get gradient
    with pytest.raises(ValueError, match="channels"):
        model.apply(variables, feats[..., :4], poses, starts, GRID)
