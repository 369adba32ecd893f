"""Small building blocks shared by the models (Flax linen, channels-last)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] linear interpolation weights with aligned corners (PyTorch ``align_corners=True``)."""
    if n_out == 1 or n_in == 1:
        m = np.zeros((n_out, n_in), np.float32)
        m[:, 0] = 1.0
        return m
    src = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    lo = np.clip(np.floor(src).astype(int), 0, n_in - 2)
    frac = src - lo
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1 - frac
    m[np.arange(n_out), lo + 1] += frac
    return m


def upsample_bilinear(x: jnp.ndarray, scale: int) -> jnp.ndarray:
    """Bilinear upsampling of [b, h, w, c] by an integer factor with aligned corners, as
    ``nn.Upsample(scale_factor=scale, mode='bilinear', align_corners=True)`` in lift-splat-shoot."""
    _, h, w, _ = x.shape
    mh, mw = _interp_matrix(h, h * scale), _interp_matrix(w, w * scale)
    return jnp.einsum("Hh,Ww,bhwc->bHWc", mh, mw, x)  # b H W c


class ConvBNReLU(nn.Module):
    """3x3 (or k x k) convolution without bias, BatchNorm, ReLU."""

    features: int
    kernel: int = 3
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        k = self.kernel
        x = nn.Conv(self.features, (k, k), (self.strides, self.strides), padding=k // 2, use_bias=False)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
        return nn.relu(x)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions, identity or 1x1 projection shortcut)."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
        s = (self.strides, self.strides)
        y = nn.Conv(self.features, (3, 3), s, padding=1, use_bias=False)(x)
        y = nn.relu(norm()(y))
        y = nn.Conv(self.features, (3, 3), padding=1, use_bias=False)(y)
        y = norm(scale_init=nn.initializers.zeros)(y)  # zero_init_residual, as LSS builds its ResNet-18
        if self.strides != 1 or x.shape[-1] != self.features:
            x = norm()(nn.Conv(self.features, (1, 1), s, use_bias=False)(x))
        return nn.relu(x + y)


class Up(nn.Module):
    """Upsample ``x1`` by ``scale``, concatenate with the skip ``x2``, then two ConvBNReLU (LSS ``Up``)."""

    features: int
    scale: int = 2

    @nn.compact
    def __call__(self, x1, x2, train: bool):
        x1 = upsample_bilinear(x1, self.scale)
        x = jnp.concatenate([x2, x1], axis=-1)  # b h w (c2 + c1)
        x = ConvBNReLU(self.features)(x, train)
        return ConvBNReLU(self.features)(x, train)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) of one axis: output ``ceil(size / stride)``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class DepthwiseConv(nn.Module):
    """Depthwise k x k convolution with TF 'SAME' padding, as shifted multiply-adds.

    Same variables as ``nn.Conv(c, (k, k), strides, padding='SAME', feature_group_count=c, use_bias=False)``
    (``kernel`` [k, k, 1, c]) and the same result, but XLA fuses the k*k shifted products into one loop:
    on CPU about 20x faster forward and 5x faster forward+backward than its grouped convolution.
    """

    kernel_size: int
    strides: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        k, s = self.kernel_size, self.strides
        b, h, w, c = x.shape
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, c), jnp.float32).astype(
            self.dtype
        )
        x = x.astype(self.dtype)
        (pt, pb), (pl, pr) = same_padding(h, k, s), same_padding(w, k, s)
        xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))  # b H W c
        oh, ow = -(-h // s), -(-w // s)
        out = None
        for i in range(k):
            for j in range(k):
                tap = xp[:, i : i + (oh - 1) * s + 1 : s, j : j + (ow - 1) * s + 1 : s, :] * kernel[i, j, 0]
                out = tap if out is None else out + tap  # b oh ow c
        return out


class PointwiseConv(nn.Module):
    """1x1 convolution as a matrix product over channels (``nn.Conv(features, (1, 1))`` variables:
    ``kernel`` [1, 1, c_in, c_out], optional ``bias``); about 2x faster than XLA's convolution on CPU."""

    features: int
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (1, 1, x.shape[-1], self.features), jnp.float32
        )
        y = jnp.einsum("...c,cd->...d", x.astype(self.dtype), kernel[0, 0].astype(self.dtype))  # ... d
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(
                self.dtype
            )
        return y
