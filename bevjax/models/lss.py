"""Lift-Splat-Shoot (Philion and Fidler, ECCV 2020) in Flax linen.

images [b, n, h, w, 3] -> EfficientNet-B0 trunk (reduction 5 upsampled and fused with reduction 4, stride 16,
or also reduction 3 at stride 8) -> 1x1 conv to D + C -> softmax over the D depth bins -> outer product
``depth x context`` [b, n, d, fh, fw, c] -> splat into the BEV grid (sum pooling) [b, x, y, z*c] -> BEV encoder
-> [b, x, y, k] logits (one sigmoid per class: BEV classes overlap).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bevjax.geometry.frustum import create_frustum, frustum_to_ego
from bevjax.geometry.grid import BEVGrid
from bevjax.models.bev_encoder import BevEncoder
from bevjax.models.efficientnet import EfficientNetB0
from bevjax.models.layers import Up, check_remat, remat_module
from bevjax.ops.splat import splat

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize_images(images: jnp.ndarray) -> jnp.ndarray:
    """uint8 RGB -> float, ImageNet mean/std (as LSS's torchvision ``normalize_img``)."""
    return (images.astype(jnp.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


class CamEncoder(nn.Module):
    """Per-camera features and depth distribution (LSS ``CamEncode``).

    ``stride`` 16 fuses trunk reductions 5 and 4 (LSS); 8 also fuses reduction 3 (NRSeg). ``trunk_depth`` is the
    EfficientNet depth coefficient (1.0: B0). ``dtype`` is the computation dtype of the trunk and the ``Up``
    stages (parameters stay float32); the depth softmax and the ``depth x context`` features are float32.
    ``remat='blocks'`` (or ``'full'``) rematerialises every MBConv block and ``Up`` stage (see
    :class:`EfficientNetB0`); the whole encoder is rematerialised by :class:`LSS` with ``remat='full'``.
    """

    depth_bins: int
    context_channels: int = 64
    stride: int = 16
    drop_connect_rate: float = 0.2
    trunk_depth: float = 1.0
    dtype: Any = jnp.float32
    remat: str = "none"

    @nn.compact
    def __call__(self, images: jnp.ndarray, train: bool):
        """Encodes camera images.

        Args:
            images: [b h w 3] normalised images.
            train: batch statistics and drop connect when True (pass it positionally).

        Returns:
            ``(features [b h/s w/s d c], depth [b h/s w/s d], logits [b h/s w/s (d + c)])``, float32.
        """
        up = remat_module(Up, check_remat(self.remat) != "none", static_argnums=(3,))
        ends = EfficientNetB0(
            drop_connect_rate=self.drop_connect_rate,
            depth_coefficient=self.trunk_depth,
            dtype=self.dtype,
            remat=self.remat,
            name="trunk",
        )(images, train)
        x = up(512, dtype=self.dtype, name="Up_0")(
            ends["reduction_5"], ends["reduction_4"], train
        )  # b h/16 w/16 512
        if self.stride == 8:
            x = up(256, dtype=self.dtype, name="Up_1")(x, ends["reduction_3"], train)  # b h/8 w/8 256
        elif self.stride != 16:
            raise ValueError(f"model.stride={self.stride}: choose 16 (LSS) or 8 (NRSeg)")
        x = nn.Conv(self.depth_bins + self.context_channels, (1, 1), dtype=self.dtype, name="depthnet")(x)
        x = x.astype(jnp.float32)  # b h w (d + c)
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
    [b, n, d, fh, fw, 3] (ego-frame frustum points); all float32 whatever ``dtype``.

    Attributes:
        num_classes: output channels ``k``.
        geometry: input size, feature stride, depth bins and BEV grid.
        context_channels: ``c``, features per depth bin.
        drop_connect_rate: stochastic depth of the image trunk (needs a ``'dropout'`` rng in training).
        trunk_depth: EfficientNet depth coefficient (1.0: B0).
        dtype: computation dtype, e.g. ``jnp.bfloat16`` for mixed precision: convolutions and activations of
            the camera and BEV encoders in it, parameters and BatchNorm statistics float32 (BatchNorm reduces
            in float32), the depth softmax, the lifted features and the splat sums float32 (a voxel sums up to
            hundreds of points), logits float32.
        remat: rematerialisation (``jax.checkpoint``) to trade compute for memory in training: ``'none'``
            keeps every activation for the backward pass; ``'blocks'`` keeps only the inputs of each MBConv
            block, ``Up`` stage and BEV ResNet block and recomputes their insides; ``'full'`` also
            rematerialises the camera encoder and the BEV encoder as wholes (policy ``nothing_saveable``), so
            that the backward pass of one never holds the other's activations. Variables, outputs and gradients
            are the same for all three. On XLA:CPU neither lowers the peak memory (its scheduler runs the
            recomputation during the forward pass; see ``benchmarks/bench_lss.py``), so keep ``'none'`` there.
    """

    num_classes: int
    geometry: LSSGeometry = LSSGeometry()
    context_channels: int = 64
    drop_connect_rate: float = 0.2
    trunk_depth: float = 1.0
    dtype: Any = jnp.float32
    remat: str = "none"

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
        full = check_remat(self.remat) == "full"
        policy = jax.checkpoint_policies.nothing_saveable
        cam_encoder = remat_module(CamEncoder, full, static_argnums=(2,), policy=policy)
        bev_encoder = remat_module(BevEncoder, full, static_argnums=(2,), policy=policy)
        x = normalize_images(images.reshape(b * n, h, w, 3))  # (b n) h w 3
        features, depth, _ = cam_encoder(
            g.depth_bins,
            self.context_channels,
            g.stride,
            self.drop_connect_rate,
            self.trunk_depth,
            dtype=self.dtype,
            remat=self.remat,
            name="camencode",
        )(x, train)
        fh, fw = features.shape[1:3]
        features = features.reshape(b, n, fh, fw, g.depth_bins, self.context_channels)
        features = features.transpose(0, 1, 4, 2, 3, 5)  # b n d fh fw c
        frustum = create_frustum(g.image_hw, g.stride, g.dbound)  # d fh fw 3
        points = frustum_to_ego(frustum, intrinsics, cam_to_ego, post_rots, post_trans)  # b n d fh fw 3
        bev = splat(features, points, g.grid)  # b x y (z c)
        logits, dec = bev_encoder(self.num_classes, dtype=self.dtype, remat=self.remat, name="bevencode")(
            bev, train
        )
        aux = {
            "depth": depth.reshape(b, n, fh, fw, g.depth_bins),
            "bev_features": bev,
            "bev_decoded": dec["features"].astype(jnp.float32),
            "geometry": points,
        }
        return logits.astype(jnp.float32), aux
