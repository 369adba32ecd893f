"""Small building blocks shared by the models (Flax linen, channels-last).

Convolution implementations. :class:`Conv` (a custom-VJP :func:`conv2d` with a faster kernel gradient and
strided input gradient), :class:`DepthwiseConv` (shifted multiply-adds) and :class:`PointwiseConv` (a matrix
product over channels) are tuned for XLA:CPU. On GPU and TPU XLA's own convolution
(``jax.lax.conv_general_dilated``, grouped for the depthwise one) is the better choice, so each of them picks
its implementation when it is traced:

* ``'auto'`` (default): ``'cpu'`` when ``jax.default_backend()`` is ``'cpu'``, else ``'xla'``;
* ``'cpu'``: the CPU-tuned kernels on any backend;
* ``'xla'``: ``lax.conv_general_dilated`` on any backend.

The setting is :data:`CONV_IMPL` (initially ``$BEVJAX_CONV_IMPL`` or ``'auto'``), changed with
:func:`set_conv_impl` or, for a block of code, ``with conv_impl('xla'): ...``. Both implementations have the
same variables (names, shapes, float32) and give the same results up to float rounding. The choice is made at
trace time: a function already jitted keeps the implementation it was traced with, so trace (or jit) a new
function after changing the setting.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

CONV_IMPLS = ("auto", "cpu", "xla")
CONV_IMPL = os.environ.get("BEVJAX_CONV_IMPL", "auto")


def set_conv_impl(impl: str) -> str:
    """Sets :data:`CONV_IMPL` for the convolutions traced from now on.

    Args:
        impl: ``'auto'``, ``'cpu'`` or ``'xla'`` (see the module docstring).

    Returns:
        The previous setting.
    """
    global CONV_IMPL
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl {impl!r}: choose from {CONV_IMPLS}")
    previous, CONV_IMPL = CONV_IMPL, impl
    return previous


@contextlib.contextmanager
def conv_impl(impl: str) -> Iterator[None]:
    """Context manager: the convolutions traced inside use ``impl`` (``'auto'``, ``'cpu'``, ``'xla'``)."""
    previous = set_conv_impl(impl)
    try:
        yield
    finally:
        set_conv_impl(previous)


def resolved_conv_impl() -> str:
    """``'cpu'`` or ``'xla'``: :data:`CONV_IMPL` with ``'auto'`` decided by ``jax.default_backend()``."""
    if CONV_IMPL not in CONV_IMPLS:
        raise ValueError(f"BEVJAX_CONV_IMPL={CONV_IMPL!r}: choose from {CONV_IMPLS}")
    if CONV_IMPL != "auto":
        return CONV_IMPL
    return "cpu" if jax.default_backend() == "cpu" else "xla"


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
    return jnp.einsum("Hh,Ww,bhwc->bHWc", mh.astype(x.dtype), mw.astype(x.dtype), x)  # b H W c


def _batch_norm(train: bool, dtype: Any, **kwargs) -> nn.BatchNorm:
    """BatchNorm as PyTorch's defaults (momentum 0.1, eps 1e-5); statistics and parameters in float32."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=jnp.float32,
        **kwargs,
    )


class ConvBNReLU(nn.Module):
    """3x3 (or k x k) convolution without bias, BatchNorm, ReLU.

    Attributes:
        features: output channels.
        kernel: kernel size.
        strides: stride.
        dtype: computation dtype (parameters and BatchNorm statistics stay float32).
    """

    features: int
    kernel: int = 3
    strides: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        k = self.kernel
        x = Conv(self.features, k, self.strides, use_bias=False, dtype=self.dtype)(x)
        x = _batch_norm(train, self.dtype)(x)
        return nn.relu(x)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions, identity or 1x1 projection shortcut).

    Attributes:
        features: output channels.
        strides: stride of the first convolution (and of the projection).
        dtype: computation dtype (parameters and BatchNorm statistics stay float32).
    """

    features: int
    strides: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        norm = functools.partial(_batch_norm, train, self.dtype)
        conv = functools.partial(Conv, self.features, use_bias=False, dtype=self.dtype)
        x = x.astype(self.dtype)
        y = conv(3, self.strides)(x)
        y = nn.relu(norm()(y))
        y = conv(3)(y)
        y = norm(scale_init=nn.initializers.zeros)(y)  # zero_init_residual, as LSS builds its ResNet-18
        if self.strides != 1 or x.shape[-1] != self.features:
            x = norm()(conv(1, self.strides)(x))
        return nn.relu(x + y)


class Up(nn.Module):
    """Upsample ``x1`` by ``scale``, concatenate with the skip ``x2``, then two ConvBNReLU (LSS ``Up``).

    Attributes:
        features: output channels.
        scale: upsampling factor of ``x1``.
        dtype: computation dtype (parameters and BatchNorm statistics stay float32).
    """

    features: int
    scale: int = 2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x1, x2, train: bool):
        x1 = upsample_bilinear(x1.astype(self.dtype), self.scale)
        x = jnp.concatenate([x2.astype(self.dtype), x1], axis=-1)  # b h w (c2 + c1)
        x = ConvBNReLU(self.features, dtype=self.dtype)(x, train)
        return ConvBNReLU(self.features, dtype=self.dtype)(x, train)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) of one axis: output ``ceil(size / stride)``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class DepthwiseConv(nn.Module):
    """Depthwise k x k convolution with TF 'SAME' padding, as shifted multiply-adds.

    Same variables as ``nn.Conv(c, (k, k), strides, padding='SAME', feature_group_count=c, use_bias=False)``
    (``kernel`` [k, k, 1, c]) and the same result, but XLA fuses the k*k shifted products into one loop:
    on CPU about 20x faster forward and 5x faster forward+backward than its grouped convolution. With the
    ``'xla'`` implementation (see the module docstring) it is that grouped convolution.
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
        if resolved_conv_impl() == "xla":
            return jax.lax.conv_general_dilated(
                x, kernel, (s, s), ((pt, pb), (pl, pr)), dimension_numbers=_NHWC, feature_group_count=c
            )  # b oh ow c
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
    ``kernel`` [1, 1, c_in, c_out], optional ``bias``); about 2x faster than XLA's convolution on CPU. With the
    ``'xla'`` implementation (see the module docstring) a [b, h, w, c] input goes through XLA's convolution."""

    features: int
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (1, 1, x.shape[-1], self.features), jnp.float32
        )
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if x.ndim == 4 and resolved_conv_impl() == "xla":
            y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_NHWC)  # b h w d
        else:
            y = jnp.einsum("...c,cd->...d", x, kernel[0, 0])  # ... d
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(
                self.dtype
            )
        return y


_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, stride: int, padding):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=_NHWC)  # b h' w' o


def _kernel_grad(x, g, kernel_hw, stride: int, padding):
    """dL/dw [kh, kw, c_in, c_out] of a convolution from its input x [b, h, w, c_in] and output gradient g.

    One matrix product per kernel tap over all output positions: ``dw[i, j] = sum_o x[s o + (i, j) - p] g[o]``.
    XLA's CPU backward-filter convolution runs at about 20 GFLOP/s on large BEV maps; these products run
    at 80-110.
    """
    kh, kw = kernel_hw
    (pt, pb), (pl, pr) = padding
    b, oh, ow, co = g.shape
    ci = x.shape[-1]
    g2 = g.reshape(-1, co)  # (b oh ow) o
    if stride == 1:
        # Shift the (smaller) gradient instead of the input, so the input is read contiguously.
        x2 = x.reshape(-1, ci)  # (b h w) c
        h, w = x.shape[1:3]
        gp = jnp.pad(g, ((0, 0), (kh, kh), (kw, kw), (0, 0)))
        taps = [
            [
                x2.T @ gp[:, kh + pt - i : kh + pt - i + h, kw + pl - j : kw + pl - j + w].reshape(-1, co)
                for j in range(kw)
            ]
            for i in range(kh)
        ]
    else:
        xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        taps = [
            [
                jax.lax.dot_general(
                    xp[
                        :, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride
                    ].reshape(-1, ci),
                    g2,
                    (((0,), (0,)), ((), ())),
                )
                for j in range(kw)
            ]
            for i in range(kh)
        ]
    return jnp.stack([jnp.stack(row) for row in taps])  # kh kw c o


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x, w, stride: int, padding):
    """NHWC x HWIO convolution with explicit ``padding`` ((top, bottom), (left, right)) whose kernel gradient
    is computed by :func:`_kernel_grad`, and whose input gradient is XLA's transposed convolution at stride 1
    and :func:`_strided_input_grad` otherwise."""
    return _conv(x, w, stride, padding)


def _conv2d_fwd(x, w, stride, padding):
    return _conv(x, w, stride, padding), (x, w)


def _phase_taps(k: int, s: int, pad_before: int, r: int) -> tuple[int, int, int]:
    """For input rows ``s m + r``: the first kernel tap q, the tap count and the output offset c, such that
    ``dx[s m + r] = sum_t g[m + c - t] w[s t + q]`` over t < count (one axis of a strided convolution)."""
    q = (r + pad_before) % s
    count = max(-(-(k - q) // s), 0)
    return q, count, (r + pad_before - q) // s


def _strided_input_grad(g, w, x_shape, s: int, padding):
    """dL/dx [b, h, w, c_in] of a stride-``s`` convolution, as s * s stride-1 convolutions of the output
    gradient ``g`` [b, oh, ow, c_out], one per phase (row, column) mod s of the input, interleaved.

    XLA's own transpose is a convolution over the s-dilated gradient, which runs slowly on CPU: for the BEV
    encoder's 7x7/2 stem (batch 4, 200x200x64) 486 ms alone and 1.06 s inside an LSS training step, against
    171 ms for this one.
    """
    b, h, wd, ci = x_shape
    kh, kw = w.shape[:2]
    oh, ow = g.shape[1:3]
    mh, mw = -(-h // s), -(-wd // s)  # rows and columns of the largest phase
    zero = jnp.zeros((), g.dtype)
    rows = []
    for rh in range(s):
        qh, th, ch = _phase_taps(kh, s, padding[0][0], rh)
        cols = []
        for rw in range(s):
            qw, tw, cw = _phase_taps(kw, s, padding[1][0], rw)
            if th == 0 or tw == 0:
                cols.append(jnp.zeros((b, mh, mw, ci), g.dtype))
                continue
            # flipped taps w[s (t - 1 - u) + q], transposed to [u, v, c_out, c_in]
            sub = w[qh::s][:th][::-1, :][:, qw::s][:, :tw][:, ::-1].transpose(0, 1, 3, 2)
            # rows m + c - (th - 1) + u of g for m < mh, zero outside (lax.pad crops where negative)
            cfg = ((0, 0, 0), (th - 1 - ch, mh + ch - oh, 0), (tw - 1 - cw, mw + cw - ow, 0), (0, 0, 0))
            cols.append(_conv(jax.lax.pad(g, zero, cfg), sub, 1, ((0, 0), (0, 0))))  # b mh mw c_in
        rows.append(jnp.stack(cols, axis=3))  # b mh mw s c_in
    dx = jnp.stack(rows, axis=2).reshape(b, mh * s, mw * s, ci)  # b (mh s) (mw s) c_in
    return dx[:, :h, :wd]


def _conv2d_bwd(stride, padding, res, g):
    x, w = res
    if stride == 1:
        _, vjp_x = jax.vjp(lambda x_: _conv(x_, w, stride, padding), x)
        (dx,) = vjp_x(g)
    else:
        dx = _strided_input_grad(g, w, x.shape, stride, padding)
    dw = _kernel_grad(x, g, w.shape[:2], stride, padding).astype(w.dtype)
    return dx, dw


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class Conv(nn.Module):
    """k x k convolution with PyTorch-style symmetric padding ``k // 2`` (``nn.Conv`` variables ``kernel``
    [k, k, c_in, c_out] and ``bias``) and the fast gradients of :func:`conv2d`; with the ``'xla'``
    implementation (see the module docstring) XLA's convolution and its own gradients.

    Attributes:
        features: output channels.
        kernel_size: kernel height and width.
        strides: stride.
        use_bias: add a bias.
        dtype: computation dtype (parameters stay float32).
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features), jnp.float32
        )
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        padding = ((k // 2, k // 2), (k // 2, k // 2))
        if resolved_conv_impl() == "xla":
            y = _conv(x, kernel, self.strides, padding)  # b h/s w/s c
        else:
            y = conv2d(x, kernel, self.strides, padding)  # b h/s w/s c
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(
                self.dtype
            )
        return y
