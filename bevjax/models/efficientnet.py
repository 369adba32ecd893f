"""EfficientNet-B0 image trunk (Flax linen), layer for layer as lukemelas' ``efficientnet_pytorch``.

lift-splat-shoot builds its camera encoder on ``EfficientNet.from_pretrained("efficientnet-b0")``; this module
reproduces that network so that its weights convert one to one (see :mod:`bevjax.models.convert`).

Architecture (Tan & Le 2019, B0: width 1.0, depth 1.0):

* stem: conv 3x3 stride 2 to 32 channels (no bias) + BatchNorm + swish;
* 16 MBConv blocks (:data:`EFFICIENTNET_B0_STAGES`): optional 1x1 expansion conv + BN + swish, depthwise kxk
  conv + BN + swish, squeeze-excitation (global mean, 1x1 conv to ``max(1, int(in_ch * 0.25))`` with bias,
  swish, 1x1 conv back with bias, sigmoid gate), 1x1 projection conv + BN (no activation), and an identity skip
  with drop connect (stochastic depth) when stride is 1 and in == out channels;
* head (``include_head=True``): conv 1x1 to 1280 + BN + swish.

BatchNorm: efficientnet_pytorch uses PyTorch momentum 0.01 (= 1 - 0.99) and eps 1e-3; here flax momentum 0.99,
epsilon 1e-3. (In training PyTorch tracks the unbiased batch variance, flax the biased one; eval is identical.)

Padding: ``from_pretrained``/``from_name`` set ``image_size=224`` and so use ``Conv2dStaticSamePadding``, whose
padding is TF "SAME" computed for a 224x224 image: ``(k - 1) // 2`` both sides at stride 1 and, at stride 2
(even sizes), ``(k - 2) // 2`` before and ``k // 2`` after. flax ``padding="SAME"`` computes the same TF
padding from the actual size, so the two agree exactly whenever the input of every stride-2 layer has even
height and width, i.e. for images whose height and width are multiples of 32 (LSS: 128x352). For other sizes
the flax model is true TF "SAME" while the PyTorch one keeps the 224-based padding.

Endpoints (``__call__`` returns a dict, channels last ``[b, h, w, c]``) follow
``EfficientNet.extract_endpoints`` of efficientnet_pytorch 0.7.1, which records the input of every block that
reduces the resolution, then the last block's output, then the head:

=============  ======  ========  =========================================
name           stride  channels  tensor
=============  ======  ========  =========================================
reduction_1    2       16        output of block 0
reduction_2    4       24        output of block 2
reduction_3    8       40        output of block 4
reduction_4    16      112       output of block 10
reduction_5    32      320       output of block 15 (last MBConv block)
reduction_6    32      1280      head conv + BN + swish (``include_head``)
=============  ======  ========  =========================================

So ``reduction_5`` is the last block output *before* the head (320 channels), as in LSS, whose ``CamEncode``
upsamples ``reduction_5`` and concatenates ``reduction_4`` and never uses the head. The endpoints here are
defined by block index, whereas efficientnet_pytorch compares heights at run time; the two coincide whenever
every stride-2 layer really halves the height (height >= 32).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bevjax.models.layers import DepthwiseConv, PointwiseConv, check_remat, remat_module

# efficientnet_pytorch GlobalParams for B0.
BN_MOMENTUM = 0.99  # flax convention (PyTorch momentum 0.01).
BN_EPSILON = 1e-3
SE_RATIO = 0.25
STEM_FEATURES = 32
HEAD_FEATURES = 1280
DROP_CONNECT_RATE = 0.2


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One row of the B0 block table (efficientnet_pytorch ``BlockArgs`` string ``r{repeats}_k..._se0.25``).

    Attributes:
        repeats: number of MBConv blocks in the stage.
        kernel: depthwise kernel size.
        stride: stride of the first block of the stage (the others have stride 1).
        expand_ratio: channel expansion of the inverted bottleneck.
        in_features: input channels of the first block.
        out_features: output channels of every block of the stage.
    """

    repeats: int
    kernel: int
    stride: int
    expand_ratio: int
    in_features: int
    out_features: int


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """One MBConv block, after expanding the stages (see :func:`efficientnet_b0_blocks`).

    Attributes:
        kernel: depthwise kernel size.
        stride: depthwise stride.
        expand_ratio: expansion ratio (1: no expansion conv).
        in_features: input channels.
        out_features: output channels.
        se_ratio: squeeze-excitation ratio, relative to ``in_features``.
    """

    kernel: int
    stride: int
    expand_ratio: int
    in_features: int
    out_features: int
    se_ratio: float = SE_RATIO

    @property
    def expanded_features(self) -> int:
        """Channels of the depthwise stage: ``in_features * expand_ratio``."""
        return self.in_features * self.expand_ratio

    @property
    def squeezed_features(self) -> int:
        """Channels of the squeeze-excitation bottleneck: ``max(1, int(in_features * se_ratio))``."""
        return max(1, int(self.in_features * self.se_ratio))

    @property
    def has_skip(self) -> bool:
        """Identity skip (with drop connect): stride 1 and ``in_features == out_features``."""
        return self.stride == 1 and self.in_features == self.out_features


# efficientnet_pytorch.utils.efficientnet(): 'r1_k3_s11_e1_i32_o16_se0.25', 'r2_k3_s22_e6_i16_o24_se0.25', ...
EFFICIENTNET_B0_STAGES: tuple[StageConfig, ...] = (
    StageConfig(repeats=1, kernel=3, stride=1, expand_ratio=1, in_features=32, out_features=16),
    StageConfig(repeats=2, kernel=3, stride=2, expand_ratio=6, in_features=16, out_features=24),
    StageConfig(repeats=2, kernel=5, stride=2, expand_ratio=6, in_features=24, out_features=40),
    StageConfig(repeats=3, kernel=3, stride=2, expand_ratio=6, in_features=40, out_features=80),
    StageConfig(repeats=3, kernel=5, stride=1, expand_ratio=6, in_features=80, out_features=112),
    StageConfig(repeats=4, kernel=5, stride=2, expand_ratio=6, in_features=112, out_features=192),
    StageConfig(repeats=1, kernel=3, stride=1, expand_ratio=6, in_features=192, out_features=320),
)


def efficientnet_b0_blocks(
    stages: tuple[StageConfig, ...] = EFFICIENTNET_B0_STAGES, depth_coefficient: float = 1.0
) -> tuple[BlockConfig, ...]:
    """The per-block configuration, in the order of efficientnet_pytorch's ``_blocks``.

    Args:
        stages: the stage table (default: B0).
        depth_coefficient: EfficientNet depth scaling, ``ceil(depth_coefficient * repeats)`` blocks per stage
            (1.0 for B0; small values keep one block per stage, for quick tests).

    Returns:
        One :class:`BlockConfig` per block (16 for B0): the first block of a stage has the stage stride and
        input channels, the repeats stride 1 and ``in_features == out_features``.
    """
    blocks = []
    for stage in stages:
        for r in range(math.ceil(depth_coefficient * stage.repeats)):
            blocks.append(
                BlockConfig(
                    kernel=stage.kernel,
                    stride=stage.stride if r == 0 else 1,
                    expand_ratio=stage.expand_ratio,
                    in_features=stage.in_features if r == 0 else stage.out_features,
                    out_features=stage.out_features,
                )
            )
    return tuple(blocks)


def endpoint_blocks(blocks: tuple[BlockConfig, ...]) -> tuple[int, ...]:
    """Indices of the blocks whose outputs are ``reduction_1`` .. ``reduction_{n}`` (before the head).

    A block is an endpoint when the next block has stride > 1 (efficientnet_pytorch records ``prev_x`` when the
    resolution drops), and the last block always is.

    Args:
        blocks: per-block configuration.

    Returns:
        Sorted block indices; ``(0, 2, 4, 10, 15)`` for B0.
    """
    out = [i for i in range(len(blocks) - 1) if blocks[i + 1].stride > 1]
    return (*out, len(blocks) - 1)


def _batch_norm(train: bool, dtype, name: str) -> nn.BatchNorm:
    """BatchNorm with efficientnet_pytorch's momentum and epsilon."""
    return nn.BatchNorm(
        use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, name=name
    )


def drop_connect(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
    """Stochastic depth: zero whole samples of a residual branch with probability ``rate``, rescale the rest.

    Args:
        x: [b, ...] residual branch.
        rate: drop probability in [0, 1).
        rng: PRNG key.

    Returns:
        ``x / (1 - rate) * mask`` with a per-sample Bernoulli(1 - rate) mask, like efficientnet_pytorch.
    """
    keep_prob = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep_prob, (x.shape[0],) + (1,) * (x.ndim - 1))  # [b 1 1 1]
    return x / keep_prob * mask.astype(x.dtype)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck with squeeze-excitation (efficientnet_pytorch ``MBConvBlock``).

    Attributes:
        config: block configuration.
        drop_connect_rate: stochastic depth rate of this block (used only with a skip and ``train=True``).
        dtype: computation dtype (parameters stay float32).
    """

    config: BlockConfig
    drop_connect_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Applies the block.

        Args:
            x: [b h w c_in] features.
            train: batch statistics (and updates of ``batch_stats``) and drop connect when True.

        Returns:
            [b h/s w/s c_out] features, ``s`` the block stride.
        """
        cfg = self.config
        bn = functools.partial(_batch_norm, train, self.dtype)
        inputs = x  # [b h w c_in]
        c_mid = cfg.expanded_features
        if cfg.expand_ratio != 1:
            x = PointwiseConv(c_mid, use_bias=False, dtype=self.dtype, name="expand_conv")(x)  # [b h w c_mid]
            x = nn.swish(bn("expand_bn")(x))
        x = DepthwiseConv(cfg.kernel, cfg.stride, dtype=self.dtype, name="depthwise_conv")(
            x
        )  # [b h/s w/s c_mid]
        x = nn.swish(bn("depthwise_bn")(x))

        # Squeeze-excitation.
        s = jnp.mean(x, axis=(1, 2), keepdims=True)  # [b 1 1 c_mid]
        s = PointwiseConv(cfg.squeezed_features, dtype=self.dtype, name="se_reduce")(s)  # [b 1 1 c_se]
        s = PointwiseConv(c_mid, dtype=self.dtype, name="se_expand")(nn.swish(s))  # [b 1 1 c_mid]
        x = nn.sigmoid(s) * x  # [b h/s w/s c_mid]

        x = PointwiseConv(cfg.out_features, use_bias=False, dtype=self.dtype, name="project_conv")(x)
        x = bn("project_bn")(x)  # [b h/s w/s c_out]

        if cfg.has_skip:
            if train and self.drop_connect_rate > 0:
                x = drop_connect(x, self.drop_connect_rate, self.make_rng("dropout"))
            x = x + inputs
        return x


class EfficientNetB0(nn.Module):
    """EfficientNet-B0 trunk returning multi-scale endpoints (see the module docstring for the table).

    Variables: ``params`` and ``batch_stats``; names ``stem_conv``, ``stem_bn``, ``block_{i}`` (with
    ``expand_conv``, ``expand_bn``, ``depthwise_conv``, ``depthwise_bn``, ``se_reduce``, ``se_expand``,
    ``project_conv``, ``project_bn``), ``head_conv``, ``head_bn``; :func:`bevjax.models.convert_efficientnet_b0`
    maps efficientnet_pytorch state dicts onto them.

    Attributes:
        include_head: also compute the 1x1 head conv to 1280 channels + BN + swish as ``reduction_6``.
        drop_connect_rate: maximum stochastic depth rate; block ``i`` of ``n`` uses ``rate * i / n``
            (efficientnet_pytorch default 0.2). Needs a ``'dropout'`` rng when ``train=True``.
        dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
        depth_coefficient: blocks per stage ``ceil(depth_coefficient * repeats)``; 1.0 is B0 (the only depth
            whose standard weights convert).
        remat: ``'blocks'`` (or ``'full'``) rematerialises each MBConv block (``flax.linen.remat``): only the
            block inputs are kept for the backward pass, which recomputes the rest of each block. ``'none'``
            keeps everything. Variables do not depend on it.
    """

    include_head: bool = False
    drop_connect_rate: float = DROP_CONNECT_RATE
    dtype: Any = jnp.float32
    depth_coefficient: float = 1.0
    remat: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
        """Runs the trunk.

        Args:
            x: [b h w 3] normalised images (ImageNet mean/std as for the pretrained weights), float.
            train: batch statistics, ``batch_stats`` updates (pass ``mutable=['batch_stats']``) and drop
                connect (needs ``rngs={'dropout': key}``) when True; running averages and no drop when False.

        Returns:
            ``{'reduction_1': [b h/2 w/2 16], 'reduction_2': [b h/4 w/4 24], 'reduction_3': [b h/8 w/8 40],
            'reduction_4': [b h/16 w/16 112], 'reduction_5': [b h/32 w/32 320]}`` (sizes rounded up), plus
            ``'reduction_6': [b h/32 w/32 1280]`` with ``include_head``.
        """
        blocks = efficientnet_b0_blocks(depth_coefficient=self.depth_coefficient)
        endpoints_at = endpoint_blocks(blocks)
        bn = functools.partial(_batch_norm, train, self.dtype)

        x = x.astype(self.dtype)  # [b h w 3]
        x = nn.Conv(
            STEM_FEATURES,
            (3, 3),
            strides=(2, 2),
            padding="SAME",
            use_bias=False,
            dtype=self.dtype,
            name="stem_conv",
        )(x)  # [b h/2 w/2 32]
        x = nn.swish(bn("stem_bn")(x))

        # train is argument 2 of MBConvBlock.__call__ (self is 0): static, so Python branches on it still work.
        block = remat_module(MBConvBlock, check_remat(self.remat) != "none", static_argnums=(2,))
        endpoints: dict[str, jax.Array] = {}
        for i, cfg in enumerate(blocks):
            rate = self.drop_connect_rate * i / len(blocks)
            x = block(cfg, drop_connect_rate=rate, dtype=self.dtype, name=f"block_{i}")(x, train)
            if i in endpoints_at:
                endpoints[f"reduction_{len(endpoints) + 1}"] = x

        if self.include_head:
            x = PointwiseConv(HEAD_FEATURES, use_bias=False, dtype=self.dtype, name="head_conv")(x)
            x = nn.swish(bn("head_bn")(x))  # [b h/32 w/32 1280]
            endpoints[f"reduction_{len(endpoints) + 1}"] = x
        return endpoints
