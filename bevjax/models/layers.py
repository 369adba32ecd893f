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


REMAT_OPTIONS = ("none", "blocks", "full")


def check_remat(remat: str) -> str:
    """Returns ``remat`` after checking that it is one of :data:`REMAT_OPTIONS`."""
    if remat not in REMAT_OPTIONS:
        raise ValueError(f"remat={remat!r}: choose from {REMAT_OPTIONS}")
    return remat


def remat_module(module_cls, enabled: bool, static_argnums: tuple[int, ...], policy=None):
    """``nn.remat(module_cls, ...)`` when ``enabled``, else ``module_cls`` itself.

    A rematerialised module keeps only its inputs for the backward pass and recomputes everything else there
    (``jax.checkpoint``; ``policy=None`` saves nothing else). Give the module an explicit ``name``: the wrapped
    class would otherwise be auto-named after the wrapper, and the parameter tree must not depend on remat.

    Args:
        module_cls: a linen Module class.
        enabled: wrap it.
        static_argnums: positions of the non-array arguments of ``__call__`` (``self`` is 0; e.g. ``(2,)`` for
            ``train`` in ``__call__(self, x, train)``); they must be passed positionally.
        policy: a ``jax.checkpoint_policies`` policy, or None.

    Returns:
        The module class to instantiate.
    """
    if not enabled:
        return module_cls
    return nn.remat(module_cls, static_argnums=static_argnums, policy=policy)


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
    """Optional bilinear upsampling, then 3x3 (or k x k) convolution without bias, BatchNorm, ReLU.

    Attributes:
        features: output channels.
        kernel: kernel size.
        strides: stride.
        upsample: upsample the input by this factor first (:func:`upsample_bilinear`; 1: not), so that a
            rematerialised ConvBNReLU keeps the small input instead of the upsampled one.
        dtype: computation dtype (parameters and BatchNorm statistics stay float32).
    """

    features: int
    kernel: int = 3
    strides: int = 1
    upsample: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        k = self.kernel
        if self.upsample != 1:
            x = upsample_bilinear(x.astype(self.dtype), self.upsample)  # b (h s) (w s) c
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
        return depthwise_conv2d(x, kernel, s, ((pt, pb), (pl, pr)))  # b oh ow c


def _phases(xp, s: int):
    """[b, H, W, c] -> [s, s, b, ceil(H / s), ceil(W / s), c] with ``xp[:, s a + r, s a' + r'] = out[r, r', :, a, a']``
    (zero-padded at the end), so that a stride-``s`` slice starting at row i is a contiguous slice of phase
    ``i % s`` starting at ``i // s``. Free (a reshape) for s = 1."""
    if s == 1:
        return xp[None, None]
    b, h, w, c = xp.shape
    hs, ws = -(-h // s), -(-w // s)
    xp = jnp.pad(xp, ((0, 0), (0, hs * s - h), (0, ws * s - w), (0, 0)))
    return xp.reshape(b, hs, s, ws, s, c).transpose(2, 4, 0, 1, 3, 5)  # s s b hs ws c


def _tap_loop(tap, kh: int, kw: int, shape: tuple[int, ...], dtype):
    """[kh, kw, *shape] with entry (i, j) = ``tap(i, j)`` (traced indices), computed in a loop.

    A loop rather than kh * kw separate products: XLA's CPU scheduler would otherwise compute the inputs of
    all taps first (the shifted copies of a feature map) and keep them in memory at once, e.g. 49 strided
    copies of the input for the 7x7 stem of the BEV encoder (0.5 GB at the paper's size); in the loop one copy
    is alive at a time.
    """

    if jax.process_count() > 1:
        # Each tap sums over the batch, which is split over the devices: an all-reduce inside the loop. Across
        # processes XLA:CPU may run such loops and the step's other collectives in a different order in each
        # process (gloo then fails: "collective mismatch"), so multi-process runs compute the taps unrolled.
        taps = [tap(i, j).astype(dtype) for i in range(kh) for j in range(kw)]
        return jnp.stack(taps).reshape(kh, kw, *shape)

    def body(t, out):
        i, j = t // kw, t % kw
        return jax.lax.dynamic_update_index_in_dim(out, tap(i, j).astype(dtype)[None], t, 0)

    out = jax.lax.fori_loop(0, kh * kw, body, jnp.zeros((kh * kw, *shape), dtype))
    return out.reshape(kh, kw, *shape)


def _depthwise_taps(xp, kernel, out_hw: tuple[int, int], s: int):
    """``sum_ij xp[:, s o + i, s o' + j] * kernel[i, j, 0]`` for output rows o < oh, columns o' < ow."""
    oh, ow = out_hw
    k = kernel.shape[0]
    out = None
    for i in range(k):
        for j in range(k):
            tap = xp[:, i : i + (oh - 1) * s + 1 : s, j : j + (ow - 1) * s + 1 : s, :] * kernel[i, j, 0]
            out = tap if out is None else out + tap  # b oh ow c
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv2d(x, kernel, stride: int, padding):
    """Depthwise convolution of x [b, h, w, c] with kernel [k, k, 1, c], explicit ``padding``
    ((top, bottom), (left, right)) and output ``ceil(h / stride)`` x ``ceil(w / stride)``, as k*k shifted
    multiply-adds that XLA fuses into one loop.

    The backward pass keeps only ``x`` and ``kernel``: differentiating the shifted products directly would keep
    the k*k shifted copies of the input for the kernel gradient (25 copies for a 5x5 kernel: 2.7 GB of an LSS
    training step at the paper's size). The input gradient is the same kind of loop over the s-dilated output
    gradient with the flipped kernel, the kernel gradient one reduction per tap.
    """
    return _depthwise_forward(x, kernel, stride, padding)


def _depthwise_forward(x, kernel, stride, padding):
    (pt, pb), (pl, pr) = padding
    h, w = x.shape[1:3]
    k = kernel.shape[0]
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))  # b H W c
    out_hw = ((h + pt + pb - k) // stride + 1, (w + pl + pr - k) // stride + 1)
    return _depthwise_taps(xp, kernel, out_hw, stride)


def _depthwise_fwd(x, kernel, stride, padding):
    return _depthwise_forward(x, kernel, stride, padding), (x, kernel)


def _depthwise_bwd(stride, padding, res, g):
    # The barrier keeps XLA from sharing the forward's shifted slices of x with the kernel gradient's: shared,
    # they are materialised (k*k copies of x) and kept from the forward to the backward pass.
    x, kernel = jax.lax.optimization_barrier(res)
    (pt, pb), (pl, pr) = padding
    _, h, w, _ = x.shape
    k = kernel.shape[0]
    oh, ow = g.shape[1:3]
    s = stride
    # dx[q] = sum_u gdp[q + u] kernel[k - 1 - u], gdp: g dilated by s, padded by k - 1 - pad before (one axis).
    cfg = (
        (0, 0, 0),
        (k - 1 - pt, h + pt - s * (oh - 1) - 1, s - 1),
        (k - 1 - pl, w + pl - s * (ow - 1) - 1, s - 1),
        (0, 0, 0),
    )
    gdp = jax.lax.pad(g, jnp.zeros((), g.dtype), cfg)  # b (h + k - 1) (w + k - 1) c
    dx = _depthwise_taps(gdp, kernel[::-1, ::-1], (h, w), 1)  # b h w c
    phases = _phases(jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))), s)  # s s b H/s W/s c
    b, c = x.shape[0], x.shape[-1]
    g32 = g.astype(jnp.float32)

    def tap(i, j):
        start = (i % s, j % s, 0, i // s, j // s, 0)
        xs = jax.lax.dynamic_slice(phases, start, (1, 1, b, oh, ow, c))[0, 0]  # b oh ow c
        return jnp.sum(xs * g32, (0, 1, 2))  # c

    dk = _tap_loop(tap, k, k, (1, c), jnp.float32)  # k k 1 c
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


depthwise_conv2d.defvjp(_depthwise_fwd, _depthwise_bwd)


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
    if stride == 1:
        # Shift the (smaller) gradient instead of the input, so the input is read contiguously.
        x2 = x.reshape(-1, ci)  # (b h w) c
        h, w = x.shape[1:3]
        gp = jnp.pad(g, ((0, 0), (kh, kh), (kw, kw), (0, 0)))  # b (h + 2 kh) (w + 2 kw) o

        def tap(i, j):
            gs = jax.lax.dynamic_slice(gp, (0, kh + pt - i, kw + pl - j, 0), (b, h, w, co))  # b h w o
            return x2.T @ gs.reshape(-1, co)  # c o

    else:
        g2 = g.reshape(-1, co)  # (b oh ow) o
        phases = _phases(jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))), stride)  # s s b H/s W/s c

        def tap(i, j):
            start = (i % stride, j % stride, 0, i // stride, j // stride, 0)
            xs = jax.lax.dynamic_slice(phases, start, (1, 1, b, oh, ow, ci))  # 1 1 b oh ow c
            return jax.lax.dot_general(xs.reshape(-1, ci), g2, (((0,), (0,)), ((), ())))  # c o

    return _tap_loop(tap, kh, kw, (ci, co), g.dtype)  # kh kw c o


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
