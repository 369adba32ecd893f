"""Streaming temporal fusion of BEV features (NRSeg, METHODS.md section 2): warp the previous frame's fused BEV
feature into the current ego frame and fuse it with the current feature by a ConvGRU.

Per frame ``t`` of a sequence, with ``x_t`` [b, x, y, c] the current BEV feature and ``f_{t-1}`` the previous
fused feature (the hidden state):

- ``prev_from_cur = inverse(ego_to_world[t-1]) @ ego_to_world[t]`` (:func:`relative_pose`);
- ``w_t, v_t = warp_bev(f_{t-1}, prev_from_cur, grid)``: for every current cell centre ``p``, the previous
  feature bilinearly sampled at ``R(dyaw) p + d`` (``d`` the ego displacement, in metres, converted to cells by
  the grid), with ``v_t`` False (and ``w_t`` zero) where that point lies outside the previous grid;
- ``h_t = v_t ? w_t : stop_gradient(x_t)`` per cell, and ``f_t = ConvGRU(h_t, x_t)``.

Reset rule. At a frame with ``sequence_start`` set, and at the first frame of a window that brings no carried
state, there is no previous feature: ``v_t`` is False everywhere and ``h_t = stop_gradient(x_t)``, i.e.
``f_t = ConvGRU(x_t, x_t)``; cells that just came into view (``v_t`` False in a continuing sequence) get the same
treatment. This is the StreamMapNet / MapTracker first-frame rule (``stream_fusion_neck(curr.clone().detach(),
curr)``): every output, reset or not, has gone through the same GRU and LayerNorm, so its scale does not jump at
a reset (``h = 0`` would feed the LayerNorm a half-empty update instead).

The temporal L1 of NRSeg (weight 0.1, written in ``bevjax/losses/nrseg.py``) compares the warped previous fused
feature ``w_t`` with a current feature over the cells ``v_t``; :class:`StreamingFusion` returns ``w_t`` and
``v_t`` (zero / False at reset frames, so those frames drop out of the loss). ``w_t`` is a LayerNorm output (per
cell over channels): the current fused ``f_t`` has the same normalisation, the raw ``x_t`` need not.

Geometry: the warp is planar (SE(2)). Only the yaw of the relative rotation, ``atan2(R[1, 0], R[0, 0])`` (the
ZYX-Euler yaw, the heading of the previous x axis seen from above), and the x, y of the translation are used;
z, pitch and roll are ignored (the BEV grid is a ground-plane raster and the ego's pitch and roll between two
keyframes are small).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bevjax.geometry.grid import BEVGrid
from bevjax.models.layers import PointwiseConv


def relative_pose(ego_to_world_prev, ego_to_world_cur) -> jax.Array:
    """The current ego frame in the previous one: ``prev_from_cur = inverse(world_from_prev) @ world_from_cur``.

    With ``world_from_prev = (R_p, p_p)`` and ``world_from_cur = (R_c, p_c)``:
    ``prev_from_cur = (R_p^T R_c, R_p^T (p_c - p_p))``. The positions are subtracted before rotating, so that
    float32 world coordinates of a few km lose no more than their own rounding.

    Args:
      ego_to_world_prev: [..., 4, 4] rigid ego -> world at the previous frame (e.g. [b, 4, 4]).
      ego_to_world_cur: [..., 4, 4] rigid ego -> world at the current frame.

    Returns:
      [..., 4, 4] ``prev_from_cur`` (current ego -> previous ego), the dtype of the inputs' promotion.
    """
    prev, cur = jnp.asarray(ego_to_world_prev), jnp.asarray(ego_to_world_cur)
    rot_p_t = jnp.swapaxes(prev[..., :3, :3], -1, -2)  # ... 3 3
    rot = rot_p_t @ cur[..., :3, :3]  # ... 3 3
    trans = jnp.einsum("...ij,...j->...i", rot_p_t, cur[..., :3, 3] - prev[..., :3, 3])  # ... 3
    top = jnp.concatenate([rot, trans[..., None]], axis=-1)  # ... 3 4
    bottom = jnp.broadcast_to(jnp.array([0, 0, 0, 1], top.dtype), top.shape[:-2] + (1, 4))
    return jnp.concatenate([top, bottom], axis=-2)  # ... 4 4


def _planar(cur_to_prev) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(cos, sin, tx, ty)`` [b] of the yaw and x, y translation of [b, 4, 4] or SE(2) [b, 3, 3] transforms.

    ``(cos, sin) = (m00, m10) / |(m00, m10)|``: exact for a pure yaw rotation (no atan2/cos round trip, so 90
    degrees stays exact), the ZYX yaw otherwise; a degenerate column (norm 0) counts as no rotation.
    """
    m = jnp.asarray(cur_to_prev, jnp.float32)
    if m.ndim != 3 or m.shape[-2:] not in ((4, 4), (3, 3)):
        raise ValueError(f"cur_to_prev must be [b, 4, 4] or [b, 3, 3], got {m.shape}")
    c, s = m[:, 0, 0], m[:, 1, 0]
    norm = jnp.hypot(c, s)
    ok = norm > 0
    safe = jnp.where(ok, norm, 1.0)
    return jnp.where(ok, c / safe, 1.0), jnp.where(ok, s / safe, 0.0), m[:, 0, -1], m[:, 1, -1]


def warp_bev(feature_prev, cur_to_prev, grid: BEVGrid) -> tuple[jax.Array, jax.Array]:
    """Resamples the previous frame's BEV feature on the current frame's grid (bilinear, planar ego motion).

    Cell ``(i, j)`` is centred at ``p = (x_min + (i + 0.5) rx, y_min + (j + 0.5) ry)`` (:class:`BEVGrid`; x
    forward, y left). Its centre in the previous ego frame is ``q = R(yaw) p + (tx, ty)`` with
    ``R(yaw) = [[cos, -sin], [sin, cos]]``, i.e. the continuous previous cell coordinates
    ``(u, v) = ((q_x - x_min) / rx - 0.5, (q_y - y_min) / ry - 0.5)`` (integers at cell centres), computed as
    ``(i + (q - p)_x / rx, j + (q - p)_y / ry)`` so that the identity, whole-cell shifts and 90-degree turns on
    a centred grid map centres exactly onto centres. Then

    - ``valid[i, j] = -0.5 <= u <= X - 0.5 and -0.5 <= v <= Y - 0.5``: ``q`` lies on the previous grid;
    - ``warped[i, j] = sum_{a, b in {0, 1}} (1 - |u' - u0 - a|) (1 - |v' - v0 - b|) F[u0 + a, v0 + b]`` with
      ``(u', v') = (u, v)`` clamped to ``[0, X - 1] x [0, Y - 1]`` and ``(u0, v0) = floor(u', v')``: bilinear
      between the four nearest cell centres, the edge value in the outer half cell (``grid_sample`` with
      ``align_corners=False, padding_mode='border'`` inside the grid), and 0 where ``valid`` is False.

    A pose that is identity up to float rounding keeps every cell valid (no border flicker). Only the yaw and
    the x, y translation of ``cur_to_prev`` are used (z, pitch and roll are ignored; see the module docstring).
    Static shapes, jit-able with ``grid`` static, differentiable w.r.t. ``feature_prev`` (a scatter-add of the
    upstream gradient with the bilinear weights) and w.r.t. the pose's translation and yaw almost everywhere.

    Args:
      feature_prev: [b, x, y, c] the previous frame's BEV feature on ``grid``.
      cur_to_prev: [b, 4, 4] current ego -> previous ego (:func:`relative_pose`), or the SE(2) [b, 3, 3]
        ``[[cos, -sin, tx], [sin, cos, ty], [0, 0, 1]]`` in metres.
      grid: the BEV grid of both frames (static).

    Returns:
      ``(warped [b, x, y, c]`` in the dtype of ``feature_prev``, ``valid [b, x, y]`` bool).
    """
    feature_prev = jnp.asarray(feature_prev)
    batch, nx, ny, channels = feature_prev.shape
    if (nx, ny) != grid.shape[:2]:
        raise ValueError(
            f"feature_prev {feature_prev.shape} does not match the grid's (x, y) {grid.shape[:2]}"
        )
    cos, sin, tx, ty = (a[:, None, None] for a in _planar(cur_to_prev))  # b 1 1
    if cos.shape[0] != batch:
        raise ValueError(f"cur_to_prev has batch {cos.shape[0]}, feature_prev {batch}")
    centres = grid.cell_centers()  # x y 2
    px, py = jnp.asarray(centres[..., 0]), jnp.asarray(centres[..., 1])  # x y
    # Displacement q - p = (R - I) p + t, added to the cell's own index: exactly zero for the identity, exact
    # for whole-cell translations and 90-degree turns, and small numbers instead of differences of large ones.
    dx = (cos - 1) * px - sin * py + tx  # b x y, metres
    dy = sin * px + (cos - 1) * py + ty
    ii, jj = np.meshgrid(np.arange(nx, dtype=np.float32), np.arange(ny, dtype=np.float32), indexing="ij")
    u = jnp.asarray(ii) + dx / grid.xbound[2]  # b x y, previous cell coordinates
    v = jnp.asarray(jj) + dy / grid.ybound[2]
    valid = (u >= -0.5) & (u <= nx - 0.5) & (v >= -0.5) & (v <= ny - 0.5)  # b x y; NaN -> False
    u = jnp.where(valid, jnp.clip(u, 0.0, nx - 1.0), 0.0)  # no NaN / huge values into the int casts
    v = jnp.where(valid, jnp.clip(v, 0.0, ny - 1.0), 0.0)
    u0 = jnp.floor(u).astype(jnp.int32)
    v0 = jnp.floor(v).astype(jnp.int32)
    fu, fv = (u - u0)[..., None], (v - v0)[..., None]  # b x y 1, bilinear fractions
    u1, v1 = jnp.minimum(u0 + 1, nx - 1), jnp.minimum(v0 + 1, ny - 1)
    flat = feature_prev.reshape(batch, nx * ny, channels)  # b (x y) c
    # The four taps in one gather (and one scatter-add in the gradient): [4, b, x, y] ids and weights.
    ids = jnp.stack([u0 * ny + v0, u0 * ny + v1, u1 * ny + v0, u1 * ny + v1])  # 4 b x y
    weights = jnp.stack([(1 - fu) * (1 - fv), (1 - fu) * fv, fu * (1 - fv), fu * fv])  # 4 b x y 1
    ids = jnp.moveaxis(ids, 0, 1).reshape(batch, 4 * nx * ny, 1)  # b (4 x y) 1
    taps = jnp.take_along_axis(flat, ids, axis=1).reshape(batch, 4, nx, ny, channels)  # b 4 x y c
    dt = feature_prev.dtype
    warped = jnp.sum(jnp.moveaxis(weights, 0, 1).astype(dt) * taps, axis=1)  # b x y c
    return jnp.where(valid[..., None], warped, jnp.zeros((), dt)), valid


class ConvGRU(nn.Module):
    """Convolutional GRU with 1x1 convolutions and an output LayerNorm (StreamMapNet / MapTracker ``ConvGRU``).

    With ``[a, b]`` the channel concatenation and ``W_z, W_r, W_q`` bias-free 1x1 convolutions
    (``features + c -> features``, :class:`PointwiseConv`)::

        z  = sigmoid(W_z [h, x])           update gate
        r  = sigmoid(W_r [h, x])           reset gate
        q  = W_q [r * h, x]                candidate (no tanh: the LayerNorm bounds the output)
        h' = LayerNorm((1 - z) * h + z * q)

    LayerNorm placement: once, on the GRU output ``h'``, over the channels of every cell (learned ``scale`` and
    ``bias`` of size ``features``, epsilon 1e-5 as PyTorch's ``nn.LayerNorm``), as in StreamMapNet's
    ``self.ln(out)``; the gates and the candidate are not normalised.

    Attributes:
      features: channels of ``h`` and ``h'``.
      dtype: computation dtype (parameters stay float32).
    """

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, x):
        """One update.

        Args:
          h: [b x y features] hidden state (the warped previous fused feature).
          x: [b x y c] current input feature.

        Returns:
          [b x y features] the new hidden state ``h'``.
        """
        if h.shape[-1] != self.features:
            raise ValueError(f"ConvGRU(features={self.features}): h has {h.shape[-1]} channels")
        dt = self.dtype
        h, x = h.astype(dt), x.astype(dt)
        hx = jnp.concatenate([h, x], axis=-1)  # b x y (features + c)
        z = nn.sigmoid(PointwiseConv(self.features, use_bias=False, dtype=dt, name="convz")(hx))
        r = nn.sigmoid(PointwiseConv(self.features, use_bias=False, dtype=dt, name="convr")(hx))
        q = PointwiseConv(self.features, use_bias=False, dtype=dt, name="convq")(
            jnp.concatenate([r * h, x], axis=-1)
        )  # b x y features
        out = (1 - z) * h + z * q
        return nn.LayerNorm(epsilon=1e-5, dtype=dt, name="ln")(out)  # b x y features


class FusionCarry(NamedTuple):
    """Per-sequence state of :class:`StreamingFusion` between frames (a pytree).

    Attributes:
      feature: [b, x, y, c] the previous frame's fused feature.
      ego_to_world: [b, 4, 4] the previous frame's ego -> world pose.
      has_state: [b] bool, False where there is no previous frame (then the next frame resets).
    """

    feature: jax.Array
    ego_to_world: jax.Array
    has_state: jax.Array


def empty_carry(batch: int, grid: BEVGrid, features: int, dtype=jnp.float32) -> FusionCarry:
    """A carry with no state (zeros, identity poses, ``has_state`` False): the next frame starts afresh."""
    nx, ny, _ = grid.shape
    return FusionCarry(
        feature=jnp.zeros((batch, nx, ny, features), dtype),
        ego_to_world=jnp.broadcast_to(jnp.eye(4, dtype=jnp.float32), (batch, 4, 4)),
        has_state=jnp.zeros((batch,), bool),
    )


def _fusion_step(module: StreamingFusion, carry: FusionCarry, inputs, grid: BEVGrid):
    """One frame: ``(carry, (x [b x y c], ego_to_world [b 4 4], sequence_start [b]))`` ->
    ``(carry', (fused, warped_prev, warped_valid))``."""
    x, pose, start = inputs
    pose = pose.astype(jnp.float32)
    keep = carry.has_state & ~start.astype(bool)  # b: continue the sequence
    warped, valid = warp_bev(carry.feature, relative_pose(carry.ego_to_world, pose), grid)  # b x y c, b x y
    valid = valid & keep[:, None, None]  # b x y
    warped = jnp.where(valid[..., None], warped, jnp.zeros((), warped.dtype))
    h = jnp.where(valid[..., None], warped, jax.lax.stop_gradient(x).astype(warped.dtype))  # b x y c
    fused = module.gru(h, x)  # b x y c
    new = FusionCarry(fused.astype(carry.feature.dtype), pose, jnp.ones_like(carry.has_state))
    return new, (fused, warped, valid)


class StreamingFusion(nn.Module):
    """NRSeg streaming temporal fusion over windows of frames (module docstring: warp, reset rule, L1 outputs).

    ``__call__`` runs the frames of a ``[b, t, ...]`` window with ``nn.scan`` (parameters broadcast: one
    :class:`ConvGRU` ``gru`` shared by all frames; gradients flow through the whole window); :meth:`step` runs
    one frame with the same parameters, for frame-by-frame (streaming) evaluation. A window may continue the
    carry of the previous one (``carry=aux['carry']``); without it the window's first frame resets.

    Attributes:
      features: channels of the BEV features (input and fused: the reset ``h = x`` needs ``c = features``).
      dtype: computation dtype of the GRU (parameters float32).
    """

    features: int
    dtype: Any = jnp.float32

    def setup(self):
        self.gru = ConvGRU(self.features, dtype=self.dtype)

    def _check(self, bev_features, grid: BEVGrid):
        if bev_features.shape[-1] != self.features:
            raise ValueError(
                f"StreamingFusion(features={self.features}): got {bev_features.shape[-1]} channels"
            )
        if tuple(bev_features.shape[-3:-1]) != grid.shape[:2]:
            raise ValueError(
                f"BEV features {bev_features.shape} do not match the grid's (x, y) {grid.shape[:2]}"
            )

    def _carry(self, carry, batch: int, grid: BEVGrid, dtype) -> FusionCarry:
        if carry is None:
            return empty_carry(batch, grid, self.features, dtype)
        return FusionCarry(*carry)

    def __call__(
        self, bev_features, ego_to_world, sequence_start, grid: BEVGrid, carry: FusionCarry | None = None
    ):
        """Fuses a window of frames.

        Args:
          bev_features: [b t x y c] BEV features of consecutive frames.
          ego_to_world: [b t 4 4] ego -> world poses of the frames (schema key ``ego_to_world``).
          sequence_start: [b t] bool (or 0/1) True at the first frame of a sequence (schema windows).
          grid: the BEV grid (static).
          carry: optional :class:`FusionCarry` from the previous window (``aux['carry']``); None starts afresh.

        Returns:
          ``(fused [b t x y c], aux)`` with ``aux['warped_prev']`` [b t x y c] the previous fused feature warped
          into each frame (0 where invalid), ``aux['warped_valid']`` [b t x y] bool (all False at reset frames)
          and ``aux['carry']`` the :class:`FusionCarry` after the last frame.
        """
        bev_features = jnp.asarray(bev_features)
        self._check(bev_features, grid)
        dtype = jnp.result_type(bev_features.dtype, self.dtype)
        init = self._carry(carry, bev_features.shape[0], grid, dtype)
        scan = nn.scan(
            lambda module, c, xs: _fusion_step(module, c, xs, grid),
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=1,
            out_axes=1,
        )
        xs = (bev_features, jnp.asarray(ego_to_world), jnp.asarray(sequence_start).astype(bool))
        last, (fused, warped, valid) = scan(self, init, xs)  # b t ...
        return fused, {"warped_prev": warped, "warped_valid": valid, "carry": last}

    def step(self, carry, bev_feature, ego_to_world, sequence_start, grid: BEVGrid):
        """One frame of streaming inference: the same parameters and result as one frame of ``__call__``.

        Args:
          carry: :class:`FusionCarry` of the previous frame, or None (the frame starts afresh).
          bev_feature: [b x y c] the current BEV feature.
          ego_to_world: [b 4 4] the current ego -> world pose.
          sequence_start: [b] bool, True at the first frame of a sequence.
          grid: the BEV grid (static).

        Returns:
          ``(fused [b x y c], aux)`` with ``aux['warped_prev']`` [b x y c], ``aux['warped_valid']`` [b x y] and
          ``aux['carry']`` the carry for the next frame.
        """
        bev_feature = jnp.asarray(bev_feature)
        self._check(bev_feature, grid)
        dtype = jnp.result_type(bev_feature.dtype, self.dtype)
        init = self._carry(carry, bev_feature.shape[0], grid, dtype)
        inputs = (bev_feature, jnp.asarray(ego_to_world), jnp.asarray(sequence_start).astype(bool))
        new, (fused, warped, valid) = _fusion_step(self, init, inputs, grid)
        return fused, {"warped_prev": warped, "warped_valid": valid, "carry": new}


__all__ = [
    "ConvGRU",
    "FusionCarry",
    "StreamingFusion",
    "empty_carry",
    "relative_pose",
    "warp_bev",
]
