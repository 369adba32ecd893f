"""The SemanticFlow network (bevjax/models/semanticflow.py): output shapes and dtypes, padding invariance,
points outside the grid, one trace per input shape, finite gradients, permutation equivariance over pc0, the
pillar embedding against NumPy, the bilinear upsampling against PyTorch's ``align_corners=False`` formula, the
masked BatchNorm, and the parameter count at the paper's size against a hand count of DeFlow's layers.

Tiny configuration (``semanticflow_tiny``: 16 x 16 pillars of 0.8 m, e = 8, widths (8, 16, 32), K = 2, S = 4).
To keep the file short on a CPU the model is compiled once per input shape for the module (eval and train
outputs in one function, without XLA's backend optimisations), with XLA's convolutions (faster to compile; the
CPU-tuned kernels are tested in test_layers.py).
"""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bevjax.models.layers import conv_impl
from bevjax.models.semanticflow import (
    TINY_PILLARS,
    MaskedBatchNorm,
    PillarEmbedder,
    SemanticFlow,
    batched_pillars,
    param_count,
    semanticflow_tiny,
    upsample2x,
)

B, N, M = 2, 96, 80
S, E, C = 4, 8, 8
H = 2 * E + C
MODEL = semanticflow_tiny()
TRACES = {"count": 0}


def compiled(fn, *args):
    """``jax.jit(fn)`` compiled for ``args``, without XLA's backend optimisations on CPU."""
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return jax.jit(fn).lower(*args).compile(compiler_options=options)


def run(variables, pc0, pc1, valid0, valid1):
    """Eval outputs, train outputs and the updated batch statistics."""
    TRACES["count"] += 1
    evaluated = MODEL.apply(variables, pc0, pc1, valid0, valid1)
    trained, updates = MODEL.apply(variables, pc0, pc1, valid0, valid1, train=True, mutable=["batch_stats"])
    return evaluated, trained, updates["batch_stats"]


@pytest.fixture(scope="module", autouse=True)
def xla_convolutions():
    with conv_impl("xla"):
        yield


def sweep(rng, n, outside: int = 0):
    """[B, n, 3] points clustered in a few pillars of +-4 m (several points per pillar), the last ``outside``
    of each example outside the grid (in x, y or z) but valid."""
    centres = rng.uniform(-4, 4, (B, 12, 3)) * [1, 1, 0.3]
    pts = centres[np.arange(B)[:, None], rng.integers(0, 12, (B, n))] + rng.normal(0, 0.3, (B, n, 3))
    far = np.array(
        [[9.0, 0, 0], [0, -7.0, 0], [1.0, 1.0, 4.0], [6.4, 0, 0]]
    )  # x, y, z out; x on the upper edge
    pts[:, n - outside :] = far[np.arange(outside) % len(far)]
    return pts.astype(np.float32)


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    pc0, pc1 = sweep(rng, N, outside=4), sweep(rng, M)
    valid0, valid1 = np.ones((B, N), bool), rng.random((B, M)) < 0.9
    valid0[1, :10] = False
    args = tuple(jnp.asarray(a) for a in (pc0, pc1, valid0, valid1))
    init = lambda *a: MODEL.init(jax.random.key(0), *a)
    variables = compiled(init, *args)(*args)
    fn = compiled(run, variables, *args)
    return {"args": args, "variables": variables, "fn": fn, "out": fn(variables, *args)}


def test_outputs_shapes_and_dtypes(case):
    evaluated, trained, stats = case["out"]
    for outputs, aux in (evaluated, trained):
        chex.assert_shape(outputs["flow"], (B, N, 3))
        chex.assert_shape(outputs["instance_logits"], (B, N, S))
        chex.assert_shape((aux["pseudo0"], aux["pseudo1"]), (B, 16, 16, E))
        chex.assert_shape(aux["features"], (B, 16, 16, C))
        chex.assert_shape(aux["hidden"], (B, N, H))
        chex.assert_shape(aux["inside0"], (B, N))
        chex.assert_shape(aux["inside1"], (B, M))
        chex.assert_type((outputs["flow"], outputs["instance_logits"], aux["hidden"]), jnp.float32)
        chex.assert_type((aux["inside0"], aux["inside1"]), bool)
        chex.assert_tree_all_finite((outputs, aux))
    # Batch statistics moved away from their initial values (the encoder's and the embedder's).
    init = case["variables"]["batch_stats"]
    assert not np.allclose(stats["embed"]["norm"]["mean"], init["embed"]["norm"]["mean"])
    assert not np.allclose(stats["unet"]["encoder_0"]["ConvNormGELU_0"]["BatchNorm_0"]["var"], 1.0)
    # One example without a batch axis: the same keys without b (shapes only).
    single = jax.eval_shape(
        lambda v, *a: MODEL.apply(v, *a), case["variables"], *(a[0] for a in case["args"])
    )
    assert single[0]["flow"].shape == (N, 3) and single[1]["pseudo0"].shape == (16, 16, E)


def test_points_outside_the_grid(case):
    """Outside points (and invalid ones) are not ``inside0``, get zero outputs; all outputs are finite."""
    pc0, _, valid0, _ = (np.asarray(a) for a in case["args"])
    expected = np.asarray(jax.jit(batched_pillars, static_argnums=2)(pc0, valid0, TINY_PILLARS).inside)
    assert expected[:, -4:].sum() == 0 and expected[1, :10].sum() == 0 and expected.sum() > 150
    for outputs, aux in case["out"][:2]:
        np.testing.assert_array_equal(aux["inside0"], expected)
        for key in ("flow", "instance_logits"):
            value = np.asarray(outputs[key])
            assert np.isfinite(value).all()
            assert not value[~expected].any() and np.abs(value[expected]).min() > 0


def test_padding_invariance(case):
    """Invalid points appended to either sweep (garbage coordinates, NaN included) change nothing else."""
    pc0, pc1, valid0, valid1 = (np.asarray(a) for a in case["args"])
    rng = np.random.default_rng(1)
    pad0, pad1 = (
        rng.normal(0, 3, (B, 7, 3)).astype(np.float32),
        rng.normal(0, 50, (B, 5, 3)).astype(np.float32),
    )
    pad0[0, 0] = np.nan
    args = (
        np.concatenate([pc0, pad0], 1),
        np.concatenate([pc1, pad1], 1),
        np.concatenate([valid0, np.zeros((B, 7), bool)], 1),
        np.concatenate([valid1, np.zeros((B, 5), bool)], 1),
    )
    args = tuple(jnp.asarray(a) for a in args)
    padded = compiled(run, case["variables"], *args)(case["variables"], *args)
    for (out, aux), (ref, ref_aux) in zip(padded[:2], case["out"][:2], strict=True):
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[:, :N], out), ref, atol=2e-5, rtol=1e-5)
        chex.assert_trees_all_close(aux["features"], ref_aux["features"], atol=2e-5, rtol=1e-5)
        assert not np.asarray(out["flow"][:, N:]).any() and not np.asarray(aux["inside0"][:, N:]).any()
    chex.assert_trees_all_close(padded[2], case["out"][2], atol=1e-5, rtol=1e-5)


def test_jit_one_trace_per_shape(case):
    """New values of the same shapes reuse the compiled function (no new trace) and give new outputs."""
    pc0, pc1, valid0, valid1 = case["args"]
    before = TRACES["count"]
    (out, _), _, _ = case["fn"](case["variables"], pc0 + 0.05, pc1 - 0.05, valid0, valid1)
    assert TRACES["count"] == before
    chex.assert_tree_all_finite(out)
    assert not np.allclose(out["flow"], case["out"][0][0]["flow"])


def test_permutation_equivariance(case):
    """Permuting pc0's points (with their masks) permutes the outputs, in eval and train mode."""
    pc0, pc1, valid0, valid1 = case["args"]
    perm = np.random.default_rng(2).permutation(N)
    out = case["fn"](case["variables"], pc0[:, perm], pc1, valid0[:, perm], valid1)
    for (got, aux), (ref, ref_aux) in zip(out[:2], case["out"][:2], strict=True):
        chex.assert_trees_all_close(got, jax.tree.map(lambda a: a[:, perm], ref), atol=2e-5, rtol=1e-5)
        chex.assert_trees_all_close(aux["features"], ref_aux["features"], atol=2e-5, rtol=1e-5)


def test_gradients_finite(case):
    """A flow + instance loss in train mode has finite gradients reaching every parameter."""
    pc0, pc1, valid0, valid1 = case["args"]
    target = jax.random.normal(jax.random.key(1), (B, N, 3))

    def loss(params, batch_stats):
        variables = {"params": params, "batch_stats": batch_stats}
        (out, aux), _ = MODEL.apply(variables, pc0, pc1, valid0, valid1, train=True, mutable=["batch_stats"])
        w = aux["inside0"][..., None]
        probs = jax.nn.softmax(out["instance_logits"])  # b n S
        flow_term = jnp.sum(w * (out["flow"] - target) ** 2)
        return flow_term + jnp.sum(w * probs[..., :1] * jnp.sum(target, -1, keepdims=True))

    v = case["variables"]
    grads = compiled(jax.grad(loss), v["params"], v["batch_stats"])(v["params"], v["batch_stats"])
    chex.assert_tree_all_finite(grads)
    # Biases of the convolutions before a BatchNorm (kept for DeFlow's parameter count) get a zero gradient
    # in training up to rounding: the BatchNorm subtracts them again.
    names = [(jax.tree_util.keystr(p), g) for p, g in jax.tree_util.tree_leaves_with_path(grads)]
    dead = [k for k, g in names if not np.any(g) and not ("ConvNormGELU" in k and k.endswith("['bias']"))]
    assert not dead, dead


def test_pillar_embedding_matches_numpy():
    """Eval-mode pseudo-image = mean over a pillar's points of ReLU(BN(W [p, p - mean, p - centre]))."""
    rng = np.random.default_rng(3)
    pts = rng.uniform(-6, 6, (1, 40, 3)).astype(np.float32) * [1, 1, 0.4]
    pts[0, 20:] = pts[0, :20] + rng.normal(0, 0.05, (20, 3))  # pairs sharing pillars
    pts[0, 5] = [20.0, 0, 0]  # outside
    valid = np.ones((1, 40), bool)
    valid[0, 7] = False
    emb = PillarEmbedder(TINY_PILLARS, 6)
    variables = compiled(lambda p, v: emb.init(jax.random.key(0), p, v, False), pts, valid)(pts, valid)
    pseudo, pil = compiled(lambda *a: emb.apply(*a, False), variables, pts, valid)(variables, pts, valid)

    p = pts[0].astype(np.float64)
    ij, inside = TINY_PILLARS.cell_index(p)
    inside &= valid[0]
    ref = np.zeros((16, 16, 6))
    flat = ij[:, 0] * 16 + ij[:, 1]
    w = np.asarray(variables["params"]["linear"]["kernel"], np.float64)
    scale = np.asarray(variables["params"]["norm"]["scale"]) / np.sqrt(1 + 1e-3)
    for f in np.unique(flat[inside]):
        sel = inside & (flat == f)
        centre = np.array([-6.4 + (f // 16 + 0.5) * 0.8, -6.4 + (f % 16 + 0.5) * 0.8, 0.0])
        feats = np.concatenate([p[sel], p[sel] - p[sel].mean(0), p[sel] - centre], -1)
        ref[f // 16, f % 16] = np.maximum(feats @ w * scale, 0).mean(0)
    np.testing.assert_allclose(np.asarray(pseudo[0]), ref, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(pil.inside[0]), inside)


def test_upsample2x_matches_torch_formula():
    """Half-pixel bilinear x2: source ``(i + 0.5) / 2 - 0.5``, clamped, as PyTorch ``align_corners=False``."""
    x = np.random.default_rng(4).normal(size=(2, 3, 5, 4)).astype(np.float32)

    def axis_weights(n):
        src = np.maximum((np.arange(2 * n) + 0.5) / 2 - 0.5, 0)
        lo = np.minimum(np.floor(src).astype(int), n - 1)
        hi = np.minimum(lo + 1, n - 1)
        m = np.zeros((2 * n, n))
        np.add.at(m, (np.arange(2 * n), lo), 1 - (src - lo))
        np.add.at(m, (np.arange(2 * n), hi), src - lo)
        return m

    ref = np.einsum("Hh,Ww,bhwc->bHWc", axis_weights(3), axis_weights(5), x)
    np.testing.assert_allclose(np.asarray(upsample2x(jnp.asarray(x))), ref, atol=1e-6)


def test_masked_batch_norm():
    """Statistics over the masked entries only (= nn.BatchNorm with a mask); an empty mask stays finite."""
    x = jax.random.normal(jax.random.key(5), (3, 7, 4)) * 5 + 20
    mask = jax.random.uniform(jax.random.key(6), (3, 7)) < 0.6
    ours = MaskedBatchNorm(momentum=0.9, epsilon=1e-5)
    theirs = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5, use_fast_variance=False)
    v = jax.jit(lambda x, m: ours.init(jax.random.key(0), x, m, True))(x, mask)
    apply = jax.jit(lambda v, m: ours.apply(v, x, m, True, mutable=["batch_stats"]))
    y, up = apply(v, mask)
    full = jnp.broadcast_to(mask[..., None], x.shape)
    y_ref, up_ref = jax.jit(lambda v: theirs.apply(v, x, mask=full, mutable=["batch_stats"]))(v)
    np.testing.assert_allclose(
        np.asarray(y)[np.asarray(mask)], np.asarray(y_ref)[np.asarray(mask)], atol=1e-4
    )
    chex.assert_trees_all_close(up, up_ref, atol=1e-4)
    y, up = apply(v, jnp.zeros_like(mask))
    chex.assert_tree_all_finite((y, up))
    chex.assert_trees_all_equal(up["batch_stats"], v["batch_stats"])


def hand_count(e=32, widths=(64, 128, 256), depths=(4, 6, 6), offset=64, mlp=32, slots=16) -> dict[str, int]:
    """DeFlow / SemanticFlow's layers counted by hand (conv: k*k*c_in*c_out + c_out; BN: 2c)."""
    conv = lambda k, ci, co: k * k * ci * co + co
    embed = 9 * e + 2 * e  # Linear(9, e, bias=False), BatchNorm1d(e)
    encoder, c_in = 0, e
    for w, d in zip(widths, depths, strict=True):
        encoder += conv(3, c_in, w) + 2 * w + (d - 1) * (conv(3, w, w) + 2 * w)
        c_in = w
    decoder, coarse = 0, 2 * widths[-1]
    for i in reversed(range(len(widths))):
        skip = 2 * (widths[i - 1] if i else e)
        w = widths[i]
        decoder += conv(1, coarse, w) + conv(1, skip, w) + conv(3, 2 * w, w) + conv(3, w, w)
        coarse = w
    decoder += conv(3, widths[0], widths[0])
    h = 2 * e + widths[0]
    head = (3 * offset + offset) + 3 * ((h + offset) * h + h) + (h + offset) * mlp + mlp + mlp * 3 + 3
    head += (h + offset) * slots + slots
    return {
        "embed": embed,
        "unet": encoder + decoder,
        "decoder": head,
        "total": embed + encoder + decoder + head,
    }


def test_param_count_at_paper_size():
    counts = param_count(SemanticFlow())  # jax.eval_shape: no init of the big model
    print(f"\nSemanticFlow parameters at the paper's size: {counts}")
    assert counts == hand_count()
    assert (
        counts["total"] == 6_895_027 and counts["total"] - 3_088 == 6_891_939
    )  # DeFlow without the mask head
    assert param_count(MODEL) == hand_count(8, (8, 16, 32), (2, 2, 2), 8, 4, 4)
    assert math.isclose(counts["unet"] / counts["total"], 0.988, abs_tol=1e-3)
