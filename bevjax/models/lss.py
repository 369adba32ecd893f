"""Lift-Splat-Shoot (Philion and Fidler, ECCV 2020) in Flax linen.

images [b, n, h, w, 3] -> EfficientNet-B0 trunk (reduction 5 upsampled and fused with reduction 4, stride 16,
or also reduction 3 at stride 8) -> 1x1 conv to D + C -> softmax over the D depth bins -> outer product
``depth x context`` [b, n, d, fh, fw, c] -> splat into the BEV grid (sum pooling) [b, x, y, z*c] -> BEV encoder
-> [b, x, y, k] logits (one sigmoid per class: BEV classes overlap).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bevjax.geometry.frustum import create_frustum, frustum_to_ego
from bevjax.geometry.grid import BEVGrid
from bevjax.models.bev_encoder import BevEncoder
from bevjax.models.efficientnet import EfficientNetB0
from bevjax.models.layers import Up
from bevjax.ops.splat import splat

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize_images(images: jnp.ndarray) -> jnp.ndarray:
    """uint8 RGB -> float, ImageNet mean/std (as LSS's torchvision ``normalize_img``)."""
    return (images.astype(jnp.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


class CamEncoder(nn.Module):
    """Per-camera features and depth distribution (LSS ``CamEncode``).

    ``stride`` 16 fuses trunk reductions 5 and 4 (LSS); 8 also fuses reduction 3 (NRSeg). ``trunk_depth`` is the
    EfficientNet depth coefficient (1.0: B0).
    """

    depth_bins: int
    context_channels: int = 64
    stride: int = 16
    drop_connect_rate: float = 0.2
    trunk_depth: float = 1.0

    @nn.compact
    def __call__(self, images: jnp.ndarray, train: bool):
        ends = EfficientNetB0(
            drop_connect_rate=self.drop_connect_rate, depth_coefficient=self.trunk_depth, name="trunk"
        )(images, train)
        x = Up(512)(ends["reduction_5"], ends["reduction_4"], train)  # b h/16 w/16 512
        if self.stride == 8:
            x = Up(256)(x, ends["reduction_3"], train)  # b h/8 w/8 256
        elif self.stride != 16:
            raise ValueError(f"model.stride={self.stride}: choose 16 (LSS) or 8 (NRSeg)")
        x = nn.Conv(self.depth_bins + self.context_channels, (1, 1), name="depthnet")(x)
        depth = jax.nn.softmax(x[..., : self.depth_bins], axis=-1)  # b h w d
        context = x[..., self.depth_bins :]  # b h w c
        features = depth[..., :, None] * context[..., None, :]  # b h w d c
        return features, depth, x


@dataclasses.dataclass(frozen=True)
class LSSGeometry:
    """Static geometry of a model: input size, feature stride, depth bins and the BEV grid."""

    image_hw: tuple[int, int] = (128, 352)
    stride: int = 16
    dbound: tuple[float, float, float] = (4.0, 45.0, 1.0)
    grid: BEVGrid = BEVGrid()

    @property
    def depth_bins(self) -> int:
        return int(round((self.dbound[1] - self.dbound[0]) / self.dbound[2]))


class LSS(nn.Module):
    """Lift-Splat-Shoot: camera images and calibration -> BEV logits [b, x, y, k].

    Inputs (batch schema names): ``images`` uint8 [b, n, h, w, 3], ``intrinsics`` [b, n, 3, 3], ``cam_to_ego``
    [b, n, 4, 4], ``post_rots`` [b, n, 3, 3], ``post_trans`` [b, n, 3].

    Returns ``(logits, aux)`` with ``aux``: ``depth`` [b, n, fh, fw, d] (softmax), ``bev_features``
    [b, x, y, z*c] (after splatting), ``bev_decoded`` [b, x, y, 128] (before the head), ``geometry``
    [b, n, d, fh, fw, 3] (ego-frame frustum points).
    """

    num_classes: int
    geometry: LSSGeometry = LSSGeometry()
    context_channels: int = 64
    drop_connect_rate: float = 0.2
    trunk_depth: float = 1.0

    @nn.compact
    def __call__(self, images, intrinsics, cam_to_ego, post_rots, post_trans, train: bool = False):
        g = self.geometry
        b, n, h, w, _ = images.shape
        if (h, w) != tuple(g.image_hw):
            raise ValueError(f"images are {h}x{w} but the model was built for {g.image_hw}")
        if h % 32 or w % 32:
            raise ValueError(
                f"image size {h}x{w}: LSS needs multiples of 32 (the trunk's stride), e.g. 128x352"
            )
        x = normalize_images(images.reshape(b * n, h, w, 3))  # (b n) h w 3
        features, depth, _ = CamEncoder(
            g.depth_bins,
            self.context_channels,
            g.stride,
            self.drop_connect_rate,
            self.trunk_depth,
            name="camencode",
        )(x, train)
        fh, fw = features.shape[1:3]
        features = features.reshape(b, n, fh, fw, g.depth_bins, self.context_channels)
        features = features.transpose(0, 1, 4, 2, 3, 5)  # b n d fh fw c
        frustum = create_frustum(g.image_hw, g.stride, g.dbound)  # d fh fw 3
        points = frustum_to_ego(frustum, intrinsics, cam_to_ego, post_rots, post_trans)  # b n d fh fw 3
        bev = splat(features, points, g.grid)  # b x y (z c)
        logits, dec = BevEncoder(self.num_classes, name="bevencode")(bev, train)
        aux = {
            "depth": depth.reshape(b, n, fh, fw, g.depth_bins),
            "bev_features": bev,
            "bev_decoded": dec["features"],
            "geometry": points,
        }
        return logits, aux
