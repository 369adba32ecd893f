"""The lift-splat-shoot BEV encoder: ResNet-18 stem and layers 1-3, then two upsampling stages and a 1x1 head."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from bevjax.models.layers import (
    BasicBlock,
    Conv,
    ConvBNReLU,
    PointwiseConv,
    Up,
    _batch_norm,
    check_remat,
    remat_module,
)


class BevEncoder(nn.Module):
    """[b, x, y, c_in] BEV features -> [b, x, y, out_channels] logits (LSS ``BevEncode``).

    conv 7x7/2 + BN + ReLU; ResNet-18 layer1 (64), layer2 (128, /2), layer3 (256, /2); ``Up`` x4 joining layer1
    (256); x2 bilinear upsampling, conv 3x3 (128) + BN + ReLU, conv 1x1 to the outputs. The grid size must be a
    multiple of 8. ``aux['features']`` holds the 128-channel map before the head.

    Attributes:
        out_channels: output channels (classes).
        dtype: computation dtype (parameters and BatchNorm statistics stay float32); the logits and
            ``aux['features']`` come out in it.
        remat: ``'blocks'`` (or ``'full'``) rematerialises each BasicBlock, the ``Up`` stage and the final
            upsampling + ConvBNReLU: the backward pass recomputes their insides from their inputs. The whole
            encoder is rematerialised by its parent (:class:`bevjax.models.lss.LSS` with ``remat='full'``).
            Variables do not depend on it.
    """

    out_channels: int
    dtype: Any = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool):
        """Decodes BEV features.

        Args:
            x: [b x y c_in] BEV features.
            train: batch statistics and ``batch_stats`` updates when True (pass it positionally).

        Returns:
            ``(logits [b x y out_channels], {'features': [b x y 128]})``.
        """
        blocks = check_remat(self.remat) != "none"
        block = remat_module(BasicBlock, blocks, (2,))
        up = remat_module(Up, blocks, (3,))
        head = remat_module(ConvBNReLU, blocks, (2,))
        dt = self.dtype
        x = Conv(64, 7, 2, use_bias=False, dtype=dt, name="Conv_0")(x)  # b x/2 y/2 64
        x = nn.relu(_batch_norm(train, dt, name="BatchNorm_0")(x))
        x = block(64, dtype=dt, name="BasicBlock_0")(x, train)
        x1 = block(64, dtype=dt, name="BasicBlock_1")(x, train)  # layer1: b x/2 y/2 64
        x = block(128, 2, dtype=dt, name="BasicBlock_2")(x1, train)
        x = block(128, dtype=dt, name="BasicBlock_3")(x, train)  # layer2: b x/4 y/4 128
        x = block(256, 2, dtype=dt, name="BasicBlock_4")(x, train)
        x = block(256, dtype=dt, name="BasicBlock_5")(x, train)  # layer3: b x/8 y/8 256
        x = up(256, scale=4, dtype=dt, name="Up_0")(x, x1, train)  # b x/2 y/2 256
        features = head(128, upsample=2, dtype=dt, name="ConvBNReLU_0")(x, train)  # b x y 128
        return PointwiseConv(self.out_channels, dtype=dt, name="PointwiseConv_0")(features), {
            "features": features
        }
