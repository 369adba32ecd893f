"""The fast depthwise and pointwise convolutions equal flax's convolutions with the same variables."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bevjax.models.layers import DepthwiseConv, PointwiseConv, same_padding


@pytest.mark.parametrize(
    "size,kernel,stride", [((9, 14), 3, 1), ((9, 14), 3, 2), ((16, 11), 5, 2), ((8, 8), 5, 1)]
)
def test_depthwise_equals_grouped_conv(size, kernel, stride):
    x = np.random.default_rng(0).normal(size=(2, *size, 6)).astype(np.float32)
    fast = DepthwiseConv(kernel, stride)
    ref = nn.Conv(
        6, (kernel, kernel), (stride, stride), padding="SAME", feature_group_count=6, use_bias=False
    )
    variables = ref.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(np.shape, fast.init(jax.random.PRNGKey(0), x)) == jax.tree.map(np.shape, variables)
    np.testing.assert_allclose(fast.apply(variables, x), ref.apply(variables, x), rtol=1e-5, atol=1e-5)
    grad_fast = jax.grad(lambda v: (fast.apply(v, x) ** 2).sum())(variables)
    grad_ref = jax.grad(lambda v: (ref.apply(v, x) ** 2).sum())(variables)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), grad_fast, grad_ref)


def test_pointwise_equals_1x1_conv():
    x = np.random.default_rng(1).normal(size=(2, 5, 7, 6)).astype(np.float32)
    for bias in (True, False):
        ref = nn.Conv(4, (1, 1), use_bias=bias)
        variables = ref.init(jax.random.PRNGKey(0), x)
        out = PointwiseConv(4, use_bias=bias).apply(variables, x)
        np.testing.assert_allclose(out, ref.apply(variables, x), rtol=1e-5, atol=1e-5)


def test_same_padding_matches_tensorflow_rule():
    assert same_padding(9, 3, 2) == (1, 1)
    assert same_padding(8, 3, 2) == (0, 1)  # asymmetric: the extra row goes after
    assert same_padding(16, 5, 2) == (1, 2)
    assert same_padding(7, 3, 1) == (1, 1)


@pytest.mark.parametrize("kernel,stride", [(3, 1), (7, 2), (1, 2), (3, 2), (1, 1)])
def test_conv_with_fast_kernel_gradient_equals_flax_conv(kernel, stride):
    from bevjax.models.layers import Conv

    x = np.random.default_rng(2).normal(size=(2, 10, 13, 5)).astype(np.float32)
    ref = nn.Conv(4, (kernel, kernel), (stride, stride), padding=kernel // 2)
    fast = Conv(4, kernel, stride)
    variables = ref.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(np.shape, fast.init(jax.random.PRNGKey(0), x)) == jax.tree.map(np.shape, variables)
    np.testing.assert_allclose(fast.apply(variables, x), ref.apply(variables, x), rtol=1e-5, atol=1e-5)
    weights = np.random.default_rng(3).normal(size=ref.apply(variables, x).shape).astype(np.float32)

    def loss(module):
        return lambda v, x: (module.apply(v, x) * weights).sum()

    got = jax.grad(loss(fast), argnums=(0, 1))(variables, x)
    want = jax.grad(loss(ref), argnums=(0, 1))(variables, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), got, want)


@pytest.mark.parametrize(
    "size,kernel,stride,pad", [((10, 13), 7, 2, 3), ((9, 9), 3, 2, 1), ((8, 8), 1, 2, 0), ((7, 10), 4, 2, 1),
                               ((12, 11), 3, 3, 1), ((9, 14), 5, 2, 0)],
)  # fmt: skip
def test_strided_input_gradient_equals_xla_transpose(size, kernel, stride, pad):
    """The phase-wise input gradient of a strided convolution equals XLA's transposed convolution (float64)."""
    from bevjax.models.layers import _conv, _strided_input_grad

    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, *size, 3))
    w = rng.normal(size=(kernel, kernel, 3, 4))
    padding = ((pad, pad), (pad, pad))
    with jax.enable_x64(True):
        y, vjp = jax.vjp(lambda x_: _conv(x_, w, stride, padding), x)
        g = rng.normal(size=y.shape)
        got = _strided_input_grad(jnp.asarray(g), jnp.asarray(w), x.shape, stride, padding)
        np.testing.assert_allclose(got, vjp(g)[0], rtol=1e-12, atol=1e-12)


def _outputs_and_grads(module, variables, x, weights):
    """Output and gradients (variables, input) of ``sum(module(x) * weights)``, under the current impl."""
    y = module.apply(variables, x)
    grads = jax.grad(lambda v, x_: (module.apply(v, x_) * weights).sum(), argnums=(0, 1))(variables, x)
    return y, grads


@pytest.mark.parametrize(
    "kind,size,kernel,stride",
    [
        ("conv", (10, 13), 3, 1),
        ("conv", (10, 13), 3, 2),
        ("conv", (9, 9), 7, 2),
        ("conv", (8, 12), 1, 2),
        ("depthwise", (9, 14), 3, 1),
        ("depthwise", (9, 14), 3, 2),
        ("depthwise", (16, 11), 5, 2),
        ("pointwise", (7, 6), 1, 1),
    ],
)
def test_cpu_and_xla_implementations_agree(kind, size, kernel, stride):
    """Same variables, outputs and gradients from the CPU-tuned kernels and from XLA's convolution."""
    from bevjax.models.layers import Conv, conv_impl, resolved_conv_impl

    module = {
        "conv": lambda: Conv(4, kernel, stride),
        "depthwise": lambda: DepthwiseConv(kernel, stride),
        "pointwise": lambda: PointwiseConv(4),
    }[kind]()
    x = np.random.default_rng(5).normal(size=(2, *size, 6)).astype(np.float32)
    results = {}
    for impl in ("cpu", "xla"):
        with conv_impl(impl):
            assert resolved_conv_impl() == impl
            variables = module.init(jax.random.PRNGKey(0), x)
            weights = (
                np.random.default_rng(6).normal(size=module.apply(variables, x).shape).astype(np.float32)
            )
            results[impl] = variables, _outputs_and_grads(module, variables, x, weights)
    assert jax.tree.map(np.shape, results["cpu"][0]) == jax.tree.map(np.shape, results["xla"][0])
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
        results["cpu"][1],
        results["xla"][1],
    )
    # The XLA path is XLA's own (grouped) convolution, the reference of the tests above.
    if kind == "depthwise":
        ref = nn.Conv(
            6, (kernel, kernel), (stride, stride), padding="SAME", feature_group_count=6, use_bias=False
        )
        np.testing.assert_allclose(
            results["xla"][1][0], ref.apply(results["xla"][0], x), rtol=1e-5, atol=1e-5
        )


def test_conv_impl_setting():
    from bevjax.models import layers

    assert layers.resolved_conv_impl() in ("cpu", "xla")
    with layers.conv_impl("xla"):
        with layers.conv_impl("cpu"):
            assert layers.resolved_conv_impl() == "cpu"
        assert layers.resolved_conv_impl() == "xla"
    with layers.conv_impl("auto"):
        assert layers.resolved_conv_impl() == ("cpu" if jax.default_backend() == "cpu" else "xla")
    with pytest.raises(ValueError, match="choose from"):
        layers.set_conv_impl("gpu")
