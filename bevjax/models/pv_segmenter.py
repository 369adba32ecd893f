"""A small perspective-view (PV) semantic segmenter: EfficientNet-B0 trunk and a light top-down decoder.

NRSeg's PGCM (issue 11) scores a synthetic frame by how well a PV segmenter's road mask on its images agrees
with the BEV road label back-projected into the cameras; the paper uses an off-the-shelf Mask2Former, bevjax
trains this model on the world's clean images (``bevjax.tasks.pv_segmenter``).

Architecture (every camera image on its own; the cameras are folded into the batch)::

    images [b, n, h, w, 3] uint8 -> ImageNet normalisation -> EfficientNet-B0 trunk (reductions 2..5)
    top-down decoder (FPN-like): p5 = W5 r5;  p_l = up2(p_{l+1}) + W_l r_l  for l = 4, 3 (and 2 at stride 4)
        (W_l: 1x1 convolutions to ``features`` channels, up2: bilinear x2)
    3x3 conv + BN + ReLU at stride s -> 1x1 classifier -> k logits at stride s -> bilinear x s -> [b, n, h, w, k]

Bilinear resizing uses half-pixel centres (``jax.image.resize``), so that a logit at stride ``s`` sits over the
middle of its ``s x s`` block of pixels; the class edges PGCM compares land where the features put them.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bevjax.models.efficientnet import EfficientNetB0
from bevjax.models.layers import ConvBNReLU, PointwiseConv
from bevjax.models.lss import normalize_images

# Trunk endpoint of each decoder stride (efficientnet.EfficientNetB0's table).
ENDPOINT_STRIDES = {4: "reduction_2", 8: "reduction_3", 16: "reduction_4", 32: "reduction_5"}


def resize_bilinear(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """Bilinear resize of [m, h, w, c] to [m, H, W, c] with half-pixel centres (no antialiasing: only enlarges)."""
    m, _, _, c = x.shape
    return jax.image.resize(x, (m, hw[0], hw[1], c), method="linear", antialias=False)


class PVSegmenter(nn.Module):
    """Camera images -> per-pixel class logits (softmax over ``num_classes`` perspective classes).

    Attributes:
      num_classes: ``k``.
      stride: output stride of the decoder before the final upsampling: 8 (reductions 5, 4, 3) or 4 (also 2).
      features: channels of the decoder.
      drop_connect_rate: stochastic depth of the trunk (needs a ``'dropout'`` rng when training).
      trunk_depth: EfficientNet depth coefficient (1.0: B0; small values for quick tests).
      dtype: computation dtype of trunk and decoder (parameters float32); logits float32.
    """

    num_classes: int
    stride: int = 8
    features: int = 64
    drop_connect_rate: float = 0.2
    trunk_depth: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, dict]:
        """Segments every camera image.

        Args:
          images: uint8 RGB [b, n, h, w, 3]; h and w multiples of 32 (the trunk's stride).
          train: batch statistics (pass ``mutable=['batch_stats']``) and drop connect when True.

        Returns:
          ``(logits [b, n, h, w, k], aux)``, aux: ``features`` [b, n, h/s, w/s, c] (the decoder's output) and
          ``coarse_logits`` [b, n, h/s, w/s, k] (before the upsampling); all float32.
        """
        if self.stride not in (4, 8):
            raise ValueError(f"PVSegmenter.stride={self.stride}: choose 8 or 4")
        b, n, h, w, _ = images.shape
        if h % 32 or w % 32:
            raise ValueError(
                f"image size {h}x{w}: the PV segmenter needs multiples of 32 (the trunk's stride)"
            )
        x = normalize_images(images.reshape(b * n, h, w, 3))  # (b n) h w 3
        ends = EfficientNetB0(
            drop_connect_rate=self.drop_connect_rate,
            depth_coefficient=self.trunk_depth,
            dtype=self.dtype,
            name="trunk",
        )(x, train)
        top = PointwiseConv(self.features, dtype=self.dtype, name="lateral_32")(
            ends["reduction_5"]
        )  # m h/32 w/32 c
        s = 32
        while s > self.stride:
            s //= 2
            skip = ends[ENDPOINT_STRIDES[s]]  # m h/s w/s c_s
            top = resize_bilinear(top, skip.shape[1:3]) + PointwiseConv(
                self.features, dtype=self.dtype, name=f"lateral_{s}"
            )(skip)  # m h/s w/s c
        feats = ConvBNReLU(self.features, dtype=self.dtype, name="fuse")(top, train)  # m h/s w/s c
        coarse = PointwiseConv(self.num_classes, dtype=self.dtype, name="classifier")(feats)
        coarse = coarse.astype(jnp.float32)  # m h/s w/s k
        logits = resize_bilinear(coarse, (h, w))  # m h w k
        fh, fw = coarse.shape[1:3]
        aux = {
            "features": feats.astype(jnp.float32).reshape(b, n, fh, fw, self.features),
            "coarse_logits": coarse.reshape(b, n, fh, fw, self.num_classes),
        }
        return logits.reshape(b, n, h, w, self.num_classes), aux
