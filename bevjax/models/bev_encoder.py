"""The lift-splat-shoot BEV encoder: ResNet-18 stem and layers 1-3, then two upsampling stages and a 1x1 head."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from bevjax.models.layers import BasicBlock, Conv, ConvBNReLU, PointwiseConv, Up, upsample_bilinear


class BevEncoder(nn.Module):
    """[b, x, y, c_in] BEV features -> [b, x, y, out_channels] logits (LSS ``BevEncode``).

    conv 7x7/2 + BN + ReLU; ResNet-18 layer1 (64), layer2 (128, /2), layer3 (256, /2); ``Up`` x4 joining layer1
    (256); x2 bilinear upsampling, conv 3x3 (128) + BN + ReLU, conv 1x1 to the outputs. The grid size must be a
    multiple of 8. ``aux['features']`` holds the 128-channel map before the head.
    """

    out_channels: int

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool):
        x = Conv(64, 7, 2, use_bias=False)(x)  # b x/2 y/2 64
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x))
        x1 = BasicBlock(64)(BasicBlock(64)(x, train), train)  # layer1
        x = BasicBlock(128, 2)(x1, train)
        x = BasicBlock(128)(x, train)  # layer2: b x/4 y/4 128
        x = BasicBlock(256, 2)(x, train)
        x = BasicBlock(256)(x, train)  # layer3: b x/8 y/8 256
        x = Up(256, scale=4)(x, x1, train)  # b x/2 y/2 256
        x = upsample_bilinear(x, 2)  # b x y 256
        features = ConvBNReLU(128)(x, train)
        return PointwiseConv(self.out_channels)(features), {"features": features}
