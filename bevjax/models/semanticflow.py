"""The SemanticFlow network: residual scene flow and soft instance masks of LiDAR sweep pairs (METHODS.md 5).

SemanticFlow (arXiv 2503.14837) is SeFlow's network, which is DeFlow's, with a second head on the GRU decoder.
Per example, with ``pc0`` already ego-motion compensated (in sweep 1's ego frame, ``bevjax.ops.pointcloud``)
and ``pc1`` sweep 1::

    pc0 [n 3], pc1 [m 3] -> pillar_index (0.2 m pillars over +-51.2 m, a dump for padding / outside points)
      -> per point [x y z, offset to the pillar mean, offset to the pillar centre] (9)
      -> Dense(e, no bias), masked BatchNorm, ReLU -> mean per pillar -> pseudo0, pseudo1 [x y e]   embed
    pseudo0, pseudo1 -> U-Net (one encoder for both sweeps, skips = both sweeps' features
      concatenated) -> [x y c]                                                                    unet
    per pc0 point: hidden = [pseudo0, pseudo1, unet] at its pillar [2e + c]; input = Dense(c') of its
      offset to the pillar centre; K GRU steps -> [hidden, input] -> MLP -> residual flow [3]
                                                                 -> Dense -> instance logits [S]  decoder

Sizes and where they come from (DeFlow ``src/models/deflow.py`` in KTH-RPL/DeFlow and KTH-RPL/OpenSceneFlow,
SemanticFlow's fork YQChen8/SemanticFlow ``src/models/deflow.py`` and ``src/models/basic/decoder.py``):

- grid: ``voxel_size [0.2, 0.2, 6]``, ``point_cloud_range [-51.2, -51.2, -3, 51.2, 51.2, 3]``: 512 x 512
  (:data:`bevjax.ops.pointcloud.SEMANTICFLOW_PILLARS`).
- embedding: ``DynamicEmbedder(feat_channels=32)`` (``src/models/basic/encoder.py``): one PFN layer
  ``Linear(9, 32, bias=False)``, ``BatchNorm1d(eps=1e-3, momentum=0.01)``, ReLU, ``mode='avg'`` (the mean
  per pillar).
- U-Net: ``FastFlow3DUNet`` (``src/models/basic/unet.py``): encoder stages of 4, 6, 6 ``ConvWithNorms``
  (3x3 conv with bias, BatchNorm2d, exact GELU; the first of each stage at stride 2) with 64, 128, 256
  channels; decoder ``UpsampleSkip`` x3 (1x1 conv of the coarse map, x2 bilinear upsampling without aligned
  corners, 1x1 conv of the skip, concatenation, two plain 3x3 convs) at 256, 128, 64 channels, then a 3x3
  conv: output 64.
- decoder: ``ConvGRUDecoder(pseudoimage_channels=64, num_iters=4)`` (``src/models/basic/decoder.py``): offset
  embedding ``Linear(3, 64)``, ``ConvGRU(input_dim=64, hidden_dim=128)`` (three 1x1 convs on [h, x]), flow MLP
  ``Linear(192, 32), GELU, Linear(32, 3)``; SemanticFlow's ``MaskConvGRUDecoder`` adds ``Linear(192, 16)``:
  S = 16 instance slots (the losses take a softmax over them).

Generalised here: widths, depths, K and S are fields; the GRU hidden size is ``2 e + c`` (128 at the default);
the decoder's skip 1x1 convs map from the skip's own channels (DeFlow's sizes assume doubling widths, which
the defaults keep, so the parameter tree has DeFlow's sizes). Design choices:

- **Static shapes**: points are padded (``valid0`` / ``valid1`` masks); invalid points and points outside
  the grid go to the pillar dump (``Pillars.flat == nx * ny``), take no part in the BatchNorm statistics or
  the pillar means, and read zero features. Their outputs (``inside0`` False in ``aux``) are set to 0: zero
  residual flow (ego motion only) and uniform instance logits. DeFlow drops such points instead.
- **Two sweeps, one encoder**: the embedder and the encoder run once per sweep (BatchNorm statistics per
  sweep, as DeFlow's two calls); their running statistics are updated twice per step.
- **Point BatchNorm** (:class:`MaskedBatchNorm`): statistics over the valid points in the grid, two-pass
  variance (raw coordinates of up to 51 m); a batch without such points leaves the running statistics as
  they are.
- **Initialisation**: flax / ``bevjax.models.layers`` defaults (LeCun normal kernels, zero biases), not
  DeFlow's Xavier uniform (its ``weights_init``); the architecture and parameter shapes are DeFlow's.
- **Layout**: pseudo-images are ``[b x y c]`` in the raster order of ``Pillars.flat`` (``ix * ny + iy``).

Parameters at the default size (``param_count(SemanticFlow())``, from shapes only): 6,895,027 in all: embed
352, unet 6,810,944 (encoder 4,191,744, decoder 2,619,200), decoder 83,731 (of which the instance head 3,088;
DeFlow without it: 6,891,939). :func:`semanticflow_tiny` is the tests' size: a 16 x 16 grid of 0.8 m pillars,
e = 8, widths (8, 16, 32), depths (2, 2, 2), K = 2, S = 4.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bevjax.geometry.grid import BEVGrid
from bevjax.models.layers import Conv, PointwiseConv
from bevjax.ops.pointcloud import SEMANTICFLOW_PILLARS, Pillars, pillar_index

# The tests' grid: 16 x 16 pillars of 0.8 m over +-6.4 m, the z slab of the paper's grid.
TINY_PILLARS = BEVGrid(xbound=(-6.4, 6.4, 0.8), ybound=(-6.4, 6.4, 0.8), zbound=(-3.0, 3.0, 6.0))

_gelu = functools.partial(nn.gelu, approximate=False)  # PyTorch nn.GELU() is the exact (erf) GELU


def upsample2x(x):
    """[b, h, w, c] -> [b, 2h, 2w, c] bilinear with half-pixel centres (PyTorch ``align_corners=False``)."""
    b, h, w, c = x.shape
    return jax.image.resize(x, (b, 2 * h, 2 * w, c), "bilinear")  # b 2h 2w c


def _batch_norm(train: bool, dtype: Any) -> nn.BatchNorm:
    """BatchNorm2d's defaults (momentum 0.1, eps 1e-5); statistics and parameters in float32."""
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32
    )


class MaskedBatchNorm(nn.Module):
    """BatchNorm over the masked entries of [..., c] (``nn.BatchNorm``'s variables: scale, bias; mean, var).

    Mean and (biased) variance in float32 over the entries where ``mask`` is True, two-pass; with no such
    entry the batch normalises with zero mean and unit variance and the running statistics stay unchanged.

    Attributes:
      momentum: running-average decay (0.99: PyTorch's momentum 0.01).
      epsilon: added to the variance.
      dtype: output dtype.
    """

    momentum: float = 0.99
    epsilon: float = 1e-3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask, train: bool):
        """Normalises.

        Args:
          x: [..., c] features.
          mask: [...] bool, the entries that count.
          train: batch statistics (and a running-average update) when True, else the running averages.

        Returns:
          [..., c] in ``dtype``.
        """
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        x = x.astype(jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            w = mask.astype(jnp.float32)[..., None]  # ... 1
            count = jnp.sum(w)
            denom = jnp.maximum(count, 1.0)
            mean = jnp.sum(x * w, axes) / denom  # c
            var = jnp.sum(jnp.square(x - mean) * w, axes) / denom  # c
            var = jnp.where(count > 0, var, 1.0)
            if not self.is_initializing():
                seen = count > 0
                m = self.momentum
                ra_mean.value = jnp.where(seen, m * ra_mean.value + (1 - m) * mean, ra_mean.value)
                ra_var.value = jnp.where(seen, m * ra_var.value + (1 - m) * var, ra_var.value)
        else:
            mean, var = ra_mean.value, ra_var.value
        y = (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(self.dtype)


def batched_pillars(points, valid, grid: BEVGrid) -> Pillars:
    """:func:`bevjax.ops.pointcloud.pillar_index` of every example: fields with a leading ``b``.

    Args:
      points: [b, p, 3]; valid: [b, p] bool; grid: a one-z-cell :class:`BEVGrid` (static).
    """
    return jax.vmap(functools.partial(pillar_index, grid=grid))(points, valid)


def gather_pillars(image, flat):
    """Per-point features of their pillars: [b, x, y, c] at [b, p] flat indices -> [b, p, c] (0 in the dump).

    Args:
      image: [b, x, y, c]; flat: [b, p] int32 ``Pillars.flat`` (``x * y`` is the dump).
    """
    b, nx, ny, c = image.shape
    table = jnp.concatenate([image.reshape(b, nx * ny, c), jnp.zeros((b, 1, c), image.dtype)], 1)  # b P+1 c
    return jnp.take_along_axis(table, flat[..., None], axis=1)  # b p c


class PillarEmbedder(nn.Module):
    """DeFlow's ``DynamicEmbedder``: a one-layer pillar feature net with mean pooling, scattered to [b x y e].

    Attributes:
      grid: the pillar grid (static, one z cell).
      features: ``e``, channels of the pseudo-image (32).
      dtype: computation dtype (parameters, statistics and the pooling float32).
    """

    grid: BEVGrid = SEMANTICFLOW_PILLARS
    features: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, points, valid, train: bool):
        """Embeds one sweep per example.

        Args:
          points: [b, p, 3] float, the sweep (pc0 ego-compensated).
          valid: [b, p] bool.
          train: batch statistics when True.

        Returns:
          ``(pseudo, pillars)``: [b, x, y, e] float32 mean point feature per pillar (0 where empty) and the
          batched :class:`Pillars` (fields [b, p, ...]; ``counts`` [b, P + 1]).
        """
        nx, ny, _ = self.grid.shape
        b, p, _ = points.shape
        points = points.astype(jnp.float32)
        pil = batched_pillars(points, valid, self.grid)
        inside = pil.inside
        xyz = jnp.where(inside[..., None], points, 0)  # b p 3
        feats = jnp.concatenate([xyz, pil.mean_offset, pil.center_offset], -1)  # b p 9
        x = nn.Dense(self.features, use_bias=False, dtype=self.dtype, name="linear")(feats)  # b p e
        x = nn.relu(MaskedBatchNorm(dtype=self.dtype, name="norm")(x, inside, train))
        x = jnp.where(inside[..., None], x.astype(jnp.float32), 0)  # b p e
        # One segment per (example, pillar), the dumps last in each example's block of P + 1.
        seg = pil.flat + (nx * ny + 1) * jnp.arange(b, dtype=jnp.int32)[:, None]  # b p
        sums = jax.ops.segment_sum(x.reshape(b * p, -1), seg.reshape(-1), num_segments=b * (nx * ny + 1))
        sums = sums.reshape(b, nx * ny + 1, -1)[:, : nx * ny]  # b P e
        counts = pil.counts[:, : nx * ny, None].astype(jnp.float32)  # b P 1
        pseudo = sums / jnp.maximum(counts, 1.0)  # b P e
        return pseudo.reshape(b, nx, ny, self.features), pil  # b x y e


class ConvNormGELU(nn.Module):
    """DeFlow's ``ConvWithNorms``: 3x3 convolution (with bias), BatchNorm, exact GELU."""

    features: int
    strides: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = Conv(self.features, 3, self.strides, use_bias=True, dtype=self.dtype)(x)  # b h/s w/s c
        return _gelu(_batch_norm(train, self.dtype)(x))


class EncoderStage(nn.Module):
    """``depth`` ConvNormGELU at ``features`` channels, the first at stride 2."""

    features: int
    depth: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        for i in range(self.depth):
            x = ConvNormGELU(self.features, 2 if i == 0 else 1, dtype=self.dtype)(x, train)  # b h' w' c
        return x


class UpsampleSkip(nn.Module):
    """DeFlow's ``UpsampleSkip``: 1x1 conv of the coarse map and x2 upsampling, 1x1 conv of the skip,
    concatenation, two plain 3x3 convolutions (no norm, no activation)."""

    latent: int
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, coarse, skip):
        # 1x1 conv before the upsampling: both are linear and the interpolation weights sum to 1, so the order
        # does not change the result, and the conv runs at the coarse size.
        up = upsample2x(PointwiseConv(self.latent, dtype=self.dtype, name="coarse")(coarse))  # b h w l
        skip = PointwiseConv(self.latent, dtype=self.dtype, name="skip")(skip)  # b h w l
        x = jnp.concatenate([up, skip], -1)  # b h w 2l
        x = Conv(self.features, 3, dtype=self.dtype, name="conv_0")(x)
        return Conv(self.features, 3, dtype=self.dtype, name="conv_1")(x)  # b h w c


class FlowUNet(nn.Module):
    """DeFlow's ``FastFlow3DUNet`` for any number of stages (the module docstring).

    Attributes:
      widths: encoder channels per stage, (64, 128, 256); the decoder runs them in reverse.
      depths: convolutions per encoder stage, (4, 6, 6).
      dtype: computation dtype (parameters and BatchNorm statistics float32).
    """

    widths: tuple[int, ...] = (64, 128, 256)
    depths: tuple[int, ...] = (4, 6, 6)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pseudo0, pseudo1, train: bool):
        """Fuses the two pseudo-images.

        Args:
          pseudo0, pseudo1: [b, x, y, e]; x and y divisible by ``2 ** len(widths)``.
          train: batch statistics when True.

        Returns:
          [b, x, y, widths[0]] in ``dtype``.
        """
        if len(self.widths) != len(self.depths) or min(self.depths) < 1:
            raise ValueError(
                f"FlowUNet: widths={self.widths}, depths={self.depths}: one depth >= 1 per width"
            )
        _, nx, ny, _ = pseudo0.shape
        f = 2 ** len(self.widths)
        if nx % f or ny % f:
            raise ValueError(
                f"FlowUNet: a {nx} x {ny} grid with {len(self.widths)} stages: need multiples of {f}"
            )
        x0, x1 = pseudo0.astype(self.dtype), pseudo1.astype(self.dtype)
        skips = [jnp.concatenate([x0, x1], -1)]  # b x y 2e
        for i, (w, d) in enumerate(zip(self.widths, self.depths, strict=True)):
            stage = EncoderStage(w, d, dtype=self.dtype, name=f"encoder_{i}")  # shared by both sweeps
            x0, x1 = stage(x0, train), stage(x1, train)  # b x/2^(i+1) y/2^(i+1) w
            skips.append(jnp.concatenate([x0, x1], -1))  # b x/2^(i+1) y/2^(i+1) 2w
        y = skips.pop()
        for i in reversed(range(len(self.widths))):
            y = UpsampleSkip(self.widths[i], self.widths[i], dtype=self.dtype, name=f"decoder_{i}")(
                y, skips[i]
            )
        return Conv(self.widths[0], 3, dtype=self.dtype, name="head")(y)  # b x y widths[0]


class GRUCell(nn.Module):
    """DeFlow's ``ConvGRU`` on points: z, r gates and the candidate from ``[h, x]`` (three 1x1 convs).

    ``h' = (1 - z) h + z tanh(W_q [r h, x])``, ``z = sigmoid(W_z [h, x])``, ``r = sigmoid(W_r [h, x])``.
    """

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, x):
        dense = functools.partial(nn.Dense, h.shape[-1], dtype=self.dtype)
        hx = jnp.concatenate([h, x], -1)  # ... (H + I)
        z = nn.sigmoid(dense(name="z")(hx))
        r = nn.sigmoid(dense(name="r")(hx))
        q = jnp.tanh(dense(name="q")(jnp.concatenate([r * h, x], -1)))
        return (1 - z) * h + z * q


class FlowMaskDecoder(nn.Module):
    """SemanticFlow's ``MaskConvGRUDecoder``: K GRU steps per point, then the flow MLP and the instance head.

    Attributes:
      offset_features: width of the point-offset embedding (the GRU's input), 64.
      mlp_features: hidden width of the flow MLP, 32.
      num_iters: K, GRU steps (4).
      num_slots: S, instance logits (16).
      dtype: computation dtype.
    """

    offset_features: int = 64
    mlp_features: int = 32
    num_iters: int = 4
    num_slots: int = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, hidden, offsets):
        """Decodes.

        Args:
          hidden: [b, n, H] the points' pillar features (the GRU's initial state).
          offsets: [b, n, 3] the points' offsets to their pillar centres.

        Returns:
          ``(flow [b n 3], logits [b n S], hidden [b n H])``, the first two float32.
        """
        dt = self.dtype
        x = nn.Dense(self.offset_features, dtype=dt, name="offset")(offsets.astype(dt))  # b n I
        h = hidden.astype(dt)
        gru = GRUCell(dtype=dt, name="gru")  # one set of weights for all K steps
        for _ in range(self.num_iters):
            h = gru(h, x)  # b n H
        hx = jnp.concatenate([h, x], -1)  # b n (H + I)
        flow = nn.Dense(self.mlp_features, dtype=dt, name="flow_0")(hx)
        flow = nn.Dense(3, dtype=dt, name="flow_1")(_gelu(flow))  # b n 3
        logits = nn.Dense(self.num_slots, dtype=dt, name="instance")(hx)  # b n S
        return flow.astype(jnp.float32), logits.astype(jnp.float32), h


class SemanticFlow(nn.Module):
    """SemanticFlow / DeFlow: residual flow and instance logits of pc0's points (module docstring).

    ``model.apply(variables, pc0, pc1, valid0, valid1, train=...)`` (``mutable=['batch_stats']`` in training)
    returns ``(outputs, aux)``:

    ==================  ==============  =================================================================
    key                 shape           meaning
    ==================  ==============  =================================================================
    flow                [b n 3]         residual flow of pc0 (after ego motion), 0 where not ``inside0``
    instance_logits     [b n S]         logits over S slots (softmax: the soft instance mask), 0 there too
    aux: inside0        [b n] bool      valid and inside the grid (the points with a prediction)
    aux: inside1        [b m] bool      the same for pc1
    aux: pseudo0/1      [b x y e]       the embedder's pseudo-images of pc0 / pc1
    aux: features       [b x y c]       the U-Net output (c = ``unet_widths[0]``)
    aux: hidden         [b n H]         the GRU state after K steps (H = 2 e + c)
    ==================  ==============  =================================================================

    All floating outputs float32. Without the batch axis (pc0 [n 3], pc1 [m 3]) the outputs have none either.

    Attributes:
      grid: pillar grid (static); x and y cells divisible by ``2 ** len(unet_widths)``.
      embed_features: e (32).
      unet_widths: (64, 128, 256); unet_depths: (4, 6, 6).
      offset_features: the offset embedding (64); mlp_features: the flow MLP's hidden width (32).
      num_iters: K (4); num_slots: S (16).
      dtype: computation dtype (parameters, BatchNorm statistics, pillar pooling and outputs float32).
    """

    grid: BEVGrid = SEMANTICFLOW_PILLARS
    embed_features: int = 32
    unet_widths: tuple[int, ...] = (64, 128, 256)
    unet_depths: tuple[int, ...] = (4, 6, 6)
    offset_features: int = 64
    mlp_features: int = 32
    num_iters: int = 4
    num_slots: int = 16
    dtype: Any = jnp.float32

    @property
    def hidden_features(self) -> int:
        """H, the GRU state: both sweeps' pillar embeddings and the U-Net features of the point's pillar."""
        return 2 * self.embed_features + self.unet_widths[0]

    @nn.compact
    def __call__(self, pc0, pc1, valid0=None, valid1=None, train: bool = False):
        """Predicts.

        Args:
          pc0: [b, n, 3] sweep 0, ego-motion compensated into sweep 1's ego frame (or [n, 3]).
          pc1: [b, m, 3] sweep 1 (or [m, 3]).
          valid0: [b, n] bool, default all True; valid1: [b, m] bool, default all True.
          train: batch statistics when True (pass ``mutable=['batch_stats']``).

        Returns:
          ``(outputs, aux)`` as in the class docstring.
        """
        single = jnp.ndim(pc0) == 2
        pc0, pc1 = jnp.asarray(pc0, jnp.float32), jnp.asarray(pc1, jnp.float32)
        valid0 = jnp.ones(pc0.shape[:-1], bool) if valid0 is None else jnp.asarray(valid0, bool)
        valid1 = jnp.ones(pc1.shape[:-1], bool) if valid1 is None else jnp.asarray(valid1, bool)
        if single:
            pc0, pc1, valid0, valid1 = pc0[None], pc1[None], valid0[None], valid1[None]
        embed = PillarEmbedder(self.grid, self.embed_features, dtype=self.dtype, name="embed")  # shared
        pseudo0, pil0 = embed(pc0, valid0, train)  # b x y e
        pseudo1, pil1 = embed(pc1, valid1, train)  # b x y e
        unet = FlowUNet(self.unet_widths, self.unet_depths, dtype=self.dtype, name="unet")
        features = unet(pseudo0, pseudo1, train).astype(jnp.float32)  # b x y c
        image = jnp.concatenate([pseudo0, pseudo1, features], -1)  # b x y H
        hidden = gather_pillars(image, pil0.flat)  # b n H
        decoder = FlowMaskDecoder(
            self.offset_features,
            self.mlp_features,
            self.num_iters,
            self.num_slots,
            self.dtype,
            name="decoder",
        )
        flow, logits, h = decoder(hidden, pil0.center_offset)  # b n 3, b n S, b n H
        inside = pil0.inside[..., None]  # b n 1
        outputs = {"flow": jnp.where(inside, flow, 0), "instance_logits": jnp.where(inside, logits, 0)}
        aux = {
            "inside0": pil0.inside,
            "inside1": pil1.inside,
            "pseudo0": pseudo0,
            "pseudo1": pseudo1,
            "features": features,
            "hidden": h.astype(jnp.float32),
        }
        if single:
            outputs, aux = jax.tree.map(lambda a: a[0], (outputs, aux))
        return outputs, aux


def semanticflow_tiny(**kwargs) -> SemanticFlow:
    """The tests' SemanticFlow: :data:`TINY_PILLARS` (16 x 16), e = 8, widths (8, 16, 32), depths (2, 2, 2),
    offset embedding 8, flow MLP 4, K = 2, S = 4; ``kwargs`` override any field."""
    fields = {
        "grid": TINY_PILLARS,
        "embed_features": 8,
        "unet_widths": (8, 16, 32),
        "unet_depths": (2, 2, 2),
        "offset_features": 8,
        "mlp_features": 4,
        "num_iters": 2,
        "num_slots": 4,
    }
    return SemanticFlow(**{**fields, **kwargs})


def param_count(model: SemanticFlow, points: int = 8) -> dict[str, int]:
    """Parameters of ``model`` per top-level module and in all (``'total'``), from shapes only (no compile).

    Args:
      model: a SemanticFlow.
      points: points per sweep of the example input (parameters do not depend on it).

    Returns:
      ``{'embed': ..., 'unet': ..., 'decoder': ..., 'total': ...}``.
    """
    spec = jax.ShapeDtypeStruct((1, points, 3), jnp.float32)
    shapes = jax.eval_shape(lambda a, b: model.init(jax.random.key(0), a, b), spec, spec)["params"]
    counts = {k: sum(math.prod(a.shape) for a in jax.tree.leaves(v)) for k, v in shapes.items()}
    return {**counts, "total": sum(counts.values())}


__all__ = [
    "TINY_PILLARS",
    "ConvNormGELU",
    "EncoderStage",
    "FlowMaskDecoder",
    "FlowUNet",
    "GRUCell",
    "MaskedBatchNorm",
    "PillarEmbedder",
    "SemanticFlow",
    "UpsampleSkip",
    "batched_pillars",
    "gather_pillars",
    "param_count",
    "semanticflow_tiny",
    "upsample2x",
]
