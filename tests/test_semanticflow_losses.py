"""Tests of the SemanticFlow losses against independent float64 NumPy references (brute-force distance matrices,
loops over clusters, slots, neighbours and pairs, scipy's ``align_vectors`` for the rigid fits)."""

import functools

import jax
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from bevjax.losses.semanticflow import (
    AUTHOR_TERMS,
    LossWeights,
    background_foreground_focal,
    cluster_consistency,
    dynamic_mask_separation,
    farthest_point_flow,
    instance_focal,
    instance_targets,
    mask_smoothness,
    predicted_foreground,
    rigid_consistency,
    semanticflow_loss,
    static_flow_loss,
    truncated_chamfer,
)

N, M, S, K = 40, 36, 4, 6  # points of sweep 0 and 1, slots, neighbours: one compiled shape per function
RTOL, ATOL = 2e-5, 1e-6

# Compiled once each (static options static) and reused; cases of one shape share a compile through vmap.
# The blockwise neighbour search takes a second or more to compile, so the Chamfer cases run as one vmapped
# call, and the combiner's single compile also checks every term it wires against the references.
CHAMFER = jax.jit(jax.vmap(jax.value_and_grad(truncated_chamfer)))  # over cases; truncate traced
STATIC = jax.jit(jax.value_and_grad(static_flow_loss))
FARTHEST = jax.jit(farthest_point_flow)
CLUSTER = jax.jit(jax.value_and_grad(cluster_consistency))
SMOOTH = jax.jit(jax.value_and_grad(mask_smoothness))  # no radius (the combiner covers radii)
WEIGHTS = LossWeights(instance=0.3)  # the combiner's static weights: one compile


@jax.jit
def rigid_cases(pc0, flow, masks, valid):
    """``(value, (d flow, d masks))`` of every case [c, ...], without and with the gradient through the fits."""

    def run(fit_gradient):
        loss = functools.partial(rigid_consistency, fit_gradient=fit_gradient)
        return jax.vmap(jax.value_and_grad(loss, argnums=(1, 2)))(pc0, flow, masks, valid)

    return run(False), run(True)


@jax.jit
def double_softmax_focals(logits, dynamic, valid, target):
    """Both focal losses with the authors' second softmax (the combiner covers one softmax)."""
    bf = background_foreground_focal(logits, dynamic, valid, double_softmax=True)
    return bf, instance_focal(logits, target, valid, double_softmax=True)


@jax.jit
def sampled_separations(pc0, logits, valid, key):
    """``dynamic_mask_separation`` of the predicted foreground with a random sample of 32 and with the first 8
    (the combiner's 1024 cover every point); and the foreground."""
    masks = jax.nn.softmax(logits)
    fg = predicted_foreground(logits, valid)
    run = jax.value_and_grad(dynamic_mask_separation, argnums=1)
    return run(pc0, masks, fg, max_points=32, key=key), run(pc0, masks, fg, max_points=8), fg


@jax.jit
def combined(pc0, pc1, flow, logits, *masks_and_labels, neighbor_index, min_dynamic_points):
    """``((total, terms), (d flow, d logits))`` of :func:`semanticflow_loss` with WEIGHTS."""

    def loss(flow, logits):
        return semanticflow_loss(
            pc0,
            pc1,
            flow,
            logits,
            *masks_and_labels,
            neighbor_index=neighbor_index,
            weights=WEIGHTS,
            min_dynamic_points=min_dynamic_points,
        )

    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(flow, logits)


def finite(*trees):
    for leaf in jax.tree_util.tree_leaves(trees):
        assert np.all(np.isfinite(np.asarray(leaf))), leaf


def softmax_np(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def padded(x, valid, value=np.nan):
    """float32 copy of ``x`` with the invalid rows set to garbage (they must not matter)."""
    x = np.array(x, np.float32)
    x[~valid] = value
    return x


def stack(cases):
    return [np.stack(c) for c in zip(*cases, strict=True)]


@pytest.fixture(scope="module")
def scene():
    """A random sweep pair: sweep 1 is sweep 0 moved by 0.3 m plus noise, with padding and dynamic sets."""
    rng = np.random.default_rng(0)
    pc0 = rng.uniform(-4, 4, (N, 3)) * [1, 1, 0.3]
    pc1 = pc0[:M] + [0.3, 0.0, 0.0] + 0.2 * rng.normal(size=(M, 3))
    pc1[:5] += 5.0  # beyond the 2 m truncation
    valid0, valid1 = rng.random(N) > 0.15, rng.random(M) > 0.15
    dynamic0 = valid0 & (rng.random(N) < 0.5)
    dynamic1 = valid1 & (rng.random(M) < 0.5)
    cluster0 = np.where(dynamic0, rng.integers(0, 4, N), np.where(rng.random(N) < 0.5, 4, -1)).astype(
        np.int32
    )
    return dict(
        pc0=pc0.astype(np.float32),
        pc1=pc1.astype(np.float32),
        flow=(0.3 * rng.normal(size=(N, 3))).astype(np.float32),
        logits=(2.0 * rng.normal(size=(N, S))).astype(np.float32),
        valid0=valid0,
        valid1=valid1,
        dynamic0=dynamic0,
        dynamic1=dynamic1,
        cluster0=cluster0,
        pseudo_flow=(0.5 * rng.normal(size=(N, 3))).astype(np.float32),
        pseudo_valid=valid0 & (rng.random(N) < 0.8),
    )


# ----------------------------------------------------------------------------------------- references


def sqdist_np(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def knn_np(points, valid, k):
    """[n, k] brute-force nearest valid points, the point itself included (the authors' lists); -1 padding."""
    d = np.where(valid[None, :], sqdist_np(points, points), np.inf)
    index = np.argsort(d, axis=1, kind="stable")[:, :k]
    index = np.where(np.take_along_axis(d, index, 1) < np.inf, index, -1)
    return np.where(valid[:, None], index, -1).astype(np.int32)


def chamfer_np(x, y, vx, vy, truncate):
    """Mean of the kept nearest squared distances, both ways; a mean of nothing is 0."""
    if not vx.any() or not vy.any():
        return 0.0
    d = sqdist_np(x[vx], y[vy])
    total = 0.0
    for near in (d.min(1), d.min(0)):
        if truncate is not None:
            near = near[near <= truncate**2]
        total += near.mean() if len(near) else 0.0
    return total


def farthest_np(pc0, pc1, cluster0, dynamic0, dynamic1, valid0, valid1):
    """SeFlow's Eq. 8-9 as written: per cluster, sort by raw NN distance descending, take the first point whose
    nearest pc1 point is dynamic."""
    target, has = np.zeros((N, 3)), np.zeros(N, bool)
    ref = np.flatnonzero(valid1)
    d = sqdist_np(pc0, pc1[ref])
    nn, nnd = ref[d.argmin(1)], d.min(1)
    for c in np.unique(cluster0[dynamic0 & valid0 & (cluster0 >= 0)]):
        members = np.flatnonzero((cluster0 == c) & dynamic0 & valid0)
        order = members[np.argsort(-nnd[members], kind="stable")]
        matched = [i for i in order if dynamic1[nn[i]]]
        if matched:
            i = matched[0]
            target[members] = pc1[nn[i]].astype(np.float64) - pc0[i]
            has[members] = True
    return target, has


def kabsch_scipy(x, y, w):
    """(R, t) of the weighted fit y ~ R x + t; the identity for zero total weight."""
    if w.sum() <= 1e-6:
        return np.eye(3), np.zeros(3)
    xb, yb = np.average(x, 0, w), np.average(y, 0, w)
    r = Rotation.align_vectors(y - yb, x - xb, weights=w)[0].as_matrix()
    return r, yb - r @ xb


def rigid_np(pc0, flow, masks, valid):
    """The authors' rigidLoss: mean_i |sum_s m_is T_s(x_i) - (x_i + f_i)| over valid points."""
    x = np.asarray(pc0, np.float64)[valid]
    y = x + np.asarray(flow, np.float64)[valid]
    m = np.asarray(masks, np.float64)[valid]
    mixed = np.zeros_like(x)
    for s in range(m.shape[1]):
        r, t = kabsch_scipy(x, y, m[:, s])
        mixed += m[:, s : s + 1] * (x @ r.T + t)
    return np.linalg.norm(mixed - y, axis=-1).mean() if valid.any() else 0.0


def smooth_np(masks, index, valid, pc0=None, radius=None):
    masks = np.asarray(masks, np.float64)
    total, count = 0.0, 0
    for i in np.flatnonzero(valid):
        acc = 0.0
        for j in index[i]:
            if j < 0 or not valid[j]:
                continue
            if radius is not None and np.sum((pc0[i].astype(np.float64) - pc0[j]) ** 2) > radius**2:
                continue
            acc += np.abs(masks[i] - masks[j]).sum()
        total += acc / index.shape[1]
        count += 1
    return total / count if count else 0.0


def separation_np(pc0, masks, fg, distance=6.0):
    pts, m = np.asarray(pc0, np.float64)[fg], np.asarray(masks, np.float64)[fg]
    vals = []
    for i in range(len(pts)):
        for j in range(len(pts)):
            if np.linalg.norm(pts[i] - pts[j]) > distance:
                cos = m[i] @ m[j] / (np.linalg.norm(m[i]) * np.linalg.norm(m[j]))
                vals.append(max(cos, 0.0))
    return np.mean(vals) if vals else 0.0


def focal_np(p_true, gamma=2.0):
    nll = -np.log(p_true)
    return (1 - np.exp(-nll)) ** gamma * nll


def slots_np(cluster0, dynamic0):
    """The authors' slot labels: 1 + cluster id for dynamic points, ids at or beyond S (and static points) 0."""
    return np.array(
        [c + 1 if d and 0 <= c and c + 1 < S else 0 for c, d in zip(cluster0, dynamic0, strict=True)]
    )


def bf_focal_np(logits, dynamic, valid, double_softmax=False):
    """The authors' BinaryFocalLoss (alpha 1, gamma 2, beta 0.5) with slot 0 the background."""
    probs = softmax_np(softmax_np(logits) if double_softmax else logits)
    bg = probs[:, 0]
    bg_term = focal_np(np.where(dynamic, 1 - bg, bg))  # BCE(p_bg, 1 - y)
    fg_term = focal_np(np.where(dynamic, 1 - bg, bg))  # BCE(1 - p_bg, y): the same number
    return (0.5 * fg_term + 0.5 * bg_term)[valid].mean()


# ----------------------------------------------------------------------------------------------- flow


def test_truncated_chamfer(scene):
    """Random sets with garbage padding (truncated at 2 m, and beyond every distance), the boundary (dropped,
    not clamped), everything beyond it, and an empty sweep: one vmapped call."""
    v0, v1 = scene["valid0"], scene["valid1"]
    moved = scene["pc0"] + scene["flow"]
    edge = np.zeros((N, 3), np.float32)
    edge[:3, 0] = [1.99, 2.0, 2.01]  # squared: 3.9601 kept, 4.0 kept (<=), 4.0401 dropped
    e0, e1 = np.arange(N) < 3, np.arange(M) < 1
    origin = np.zeros((M, 3), np.float32)
    cases = [  # moved0, pc1, valid0, valid1, truncate
        (padded(moved, v0), padded(scene["pc1"], v1, 1e3), v0, v1, 2.0),
        (padded(moved, v0), padded(scene["pc1"], v1, 1e3), v0, v1, 1e6),
        (edge, origin, e0, e1, 2.0),
        (edge + 10.0, origin, e0, e1, 2.0),
        (padded(moved, v0), scene["pc1"], v0, np.zeros(M, bool), 2.0),
    ]
    value, grad = (np.asarray(a) for a in CHAMFER(*stack(cases)))
    finite(grad)
    want = chamfer_np(moved, scene["pc1"], v0, v1, 2.0)
    np.testing.assert_allclose(value[0], want, rtol=RTOL, atol=ATOL)
    untruncated = chamfer_np(moved, scene["pc1"], v0, v1, None)
    assert untruncated - want > 0.1  # the 5 shifted pc1 points lie beyond 2 m
    np.testing.assert_allclose(value[1], untruncated, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(value[2], (1.99**2 + 4.0) / 2 + 1.99**2, rtol=1e-6)
    assert grad[2, 2, 0] == 0 and grad[2, 1, 0] != 0  # the dropped point gets no gradient
    assert value[3] == 0 and value[4] == 0  # nothing within 2 m / nothing in sweep 1: 0, not NaN
    assert np.all(grad[0][~v0] == 0) and np.all(grad[3:] == 0)


def test_static_flow_loss(scene):
    flow, static = scene["flow"], scene["valid0"] & ~scene["dynamic0"]
    value, grad = STATIC(padded(flow, static), static)
    np.testing.assert_allclose(
        value, np.linalg.norm(flow[static].astype(np.float64), axis=-1).mean(), rtol=RTOL
    )
    finite(grad)
    value, grad = STATIC(np.zeros((N, 3), np.float32), static)  # zero flow: 0, finite gradient at |0|
    assert value == 0
    finite(grad)
    value, grad = STATIC(flow, np.zeros(N, bool))
    assert value == 0
    finite(grad)


def test_farthest_point_flow_and_cluster_consistency(scene):
    args = [scene[k] for k in ("pc0", "pc1", "cluster0", "dynamic0", "dynamic1", "valid0", "valid1")]
    target, has = FARTHEST(*args)
    want_target, want_has = farthest_np(*args)
    assert want_has.any() and not want_has.all()
    np.testing.assert_array_equal(has, want_has)
    np.testing.assert_allclose(target, want_target, rtol=RTOL, atol=1e-6)
    # SeFlow's Eq. 10-11: one mean over the points of all clusters with a target.
    flow = scene["flow"]
    value, grad = CLUSTER(flow, target, has, scene["dynamic0"])
    want = np.linalg.norm(flow[want_has] - want_target[want_has], axis=-1).mean()
    np.testing.assert_allclose(value, want, rtol=RTOL)
    finite(grad)


def test_cluster_consistency_rigid_targets(scene):
    flow, target = scene["flow"], scene["pseudo_flow"]
    mask = scene["pseudo_valid"] & scene["dynamic0"]
    value, _ = CLUSTER(flow, padded(target, mask), scene["pseudo_valid"], scene["dynamic0"])
    want = np.linalg.norm(flow[mask].astype(np.float64) - target[mask], axis=-1).mean()
    np.testing.assert_allclose(value, want, rtol=RTOL)
    value, grad = CLUSTER(target, target, mask, mask)  # on target: 0 with a finite gradient
    assert value == 0
    finite(grad)
    value, grad = CLUSTER(flow, target, mask, np.zeros(N, bool))
    assert value == 0
    finite(grad)


# ------------------------------------------------------------------------------------------- instance


def test_focal_losses_double_softmax(scene):
    """The authors' code applies the softmax twice (the combiner checks one softmax against the same forms)."""
    logits, dynamic0, valid, cluster0 = scene["logits"], scene["dynamic0"], scene["valid0"], scene["cluster0"]
    target = slots_np(cluster0, dynamic0)
    np.testing.assert_array_equal(instance_targets(cluster0, dynamic0, S), target)
    assert (target == S - 1).any() and (dynamic0 & (target == 0)).any()  # cluster 3 -> slot 4 >= S -> 0
    bf, inst = double_softmax_focals(padded(logits, valid), dynamic0, valid, target)
    np.testing.assert_allclose(bf, bf_focal_np(logits, dynamic0, valid, double_softmax=True), rtol=RTOL)
    want = focal_np(softmax_np(softmax_np(logits))[np.arange(N), target])[valid].mean()
    np.testing.assert_allclose(inst, want, rtol=RTOL)
    assert abs(bf - bf_focal_np(logits, dynamic0, valid)) > 0.01


def rigid_scene(seed):
    """Two objects (slots 0, 1), each moved rigidly; slots 2 and 3 unused (all-zero masks)."""
    rng = np.random.default_rng(seed)
    pc0 = (rng.normal(size=(N, 3)) * [2.0, 1.0, 0.5] + [10.0, -5.0, 1.0]).astype(np.float32)
    slot = (np.arange(N) >= N // 2).astype(int)
    target = pc0.astype(np.float64)
    for s in (0, 1):
        r, t = Rotation.random(random_state=seed + s).as_matrix(), rng.uniform(-1, 1, 3)
        target[slot == s] = pc0[slot == s] @ r.T + t
    return pc0, (target - pc0).astype(np.float32), np.eye(S, dtype=np.float32)[slot]


def test_rigid_consistency():
    """Exact rigid motions give 0 (two objects in hard masks with two all-zero slots; one motion under soft
    masks), a noisy case matches the authors' form, nothing valid gives 0; finite gradients in every case,
    without and with the gradient through the fits."""
    pc0, flow, hard = rigid_scene(3)
    some = np.arange(N) < N - 3
    rng = np.random.default_rng(4)
    soft = softmax_np(rng.normal(size=(N, S))).astype(np.float32)
    r, t = Rotation.random(random_state=5).as_matrix(), np.array([0.5, -0.2, 0.1])
    one = (pc0 @ r.T + t - pc0).astype(np.float32)
    noisy = flow + (0.1 * rng.normal(size=flow.shape)).astype(np.float32)
    mixed = softmax_np(3.0 * hard + rng.normal(size=hard.shape)).astype(np.float32)
    random_valid = rng.random(N) > 0.1
    cases = [  # pc0, flow, masks, valid
        (padded(pc0, some), padded(flow, some), hard, some),
        (pc0, one, soft, some),
        (pc0, noisy, mixed, random_valid),
        (pc0, noisy, hard, np.zeros(N, bool)),
    ]
    detached, through = rigid_cases(*stack(cases))
    want = rigid_np(pc0, noisy, mixed, random_valid)
    for value, grads in (detached, through):
        finite(grads)
        value = np.asarray(value)
        np.testing.assert_allclose(value[:2], 0.0, atol=2e-5)
        np.testing.assert_allclose(value[2], want, rtol=1e-4)
        assert value[3] == 0
    np.testing.assert_allclose(through[0], detached[0], rtol=1e-6)  # the same values, other gradients
    assert not np.allclose(through[1][1][2], detached[1][1][2], atol=1e-4)


def test_mask_smoothness_without_radius(scene):
    pc0, valid = scene["pc0"], scene["valid0"]
    masks = softmax_np(scene["logits"]).astype(np.float32)
    index = knn_np(pc0, valid, K)
    index[0, -1] = -1  # a missing neighbour
    value, grad = SMOOTH(padded(masks, valid), index, valid)
    finite(grad)
    np.testing.assert_allclose(value, smooth_np(masks, index, valid), rtol=RTOL)


def test_dynamic_mask_separation_sampled(scene):
    pc0, logits, valid = scene["pc0"], scene["logits"], scene["valid0"]
    masks = softmax_np(logits)
    sample, first8, fg = sampled_separations(padded(pc0, valid), logits, valid, jax.random.key(0))
    finite(sample, first8)
    fg = np.asarray(fg)
    np.testing.assert_array_equal(fg, (logits.argmax(-1) != 0) & valid)
    assert 8 < fg.sum() < 32
    np.testing.assert_allclose(sample[0], separation_np(pc0, masks, fg), rtol=RTOL)  # holds every fg point
    first = fg & (np.cumsum(fg) <= 8)  # no key: the first 8 foreground points
    np.testing.assert_allclose(first8[0], separation_np(pc0, masks, first), rtol=RTOL)


# ------------------------------------------------------------------------------------------- combined

ARGS = ("pc0", "pc1", "flow", "logits", "valid0", "valid1", "dynamic0", "dynamic1", "cluster0")
ARGS += ("pseudo_flow", "pseudo_valid")


def test_semanticflow_loss(scene):
    """Every term against its reference, the total the weighted sum; the authors' gate on the number of dynamic
    points; zero flow and identical masks; nothing valid gives 0 with finite gradients. One compile."""
    args = [scene[k] for k in ARGS]
    pc0, pc1, flow, logits, v0, v1, d0, d1, cluster0, pflow, pvalid = args
    index = knn_np(pc0, v0, K)
    (total, terms), grads = combined(*args, neighbor_index=index, min_dynamic_points=-1)
    assert set(terms) == set(AUTHOR_TERMS) == set(LossWeights.__dataclass_fields__)
    finite(grads)
    np.testing.assert_allclose(
        total, sum(getattr(WEIGHTS, k) * float(v) for k, v in terms.items()), rtol=1e-6
    )
    masks = softmax_np(logits)
    moved = pc0 + flow
    want = {
        "chamfer": chamfer_np(moved, pc1, v0, v1, 2.0),
        "static_flow": np.linalg.norm(flow[v0 & ~d0], axis=-1).mean(),
        "dynamic_chamfer": chamfer_np(moved, pc1, d0, d1, 2.0),
        "cluster": np.linalg.norm((flow - pflow)[pvalid & d0], axis=-1).mean(),
        "rigid": rigid_np(pc0, flow, masks, v0),
        "smooth": 3.0 * smooth_np(masks, index, v0, pc0, 1.0) + smooth_np(masks, index, v0, pc0, 2.0),
        "instance": focal_np(masks[np.arange(N), slots_np(cluster0, d0)])[v0].mean(),
        "focal": bf_focal_np(logits, d0, v0),
        "separation": separation_np(pc0, masks, (logits.argmax(-1) != 0) & v0),
    }
    for k, v in want.items():
        assert v > 0, k
        np.testing.assert_allclose(terms[k], v, rtol=1e-4, atol=ATOL, err_msg=k)

    (_, gated), _ = combined(*args, neighbor_index=index, min_dynamic_points=256)
    assert gated["cluster"] == 0 and gated["dynamic_chamfer"] == 0
    assert all(gated[k] == terms[k] for k in terms if k not in ("cluster", "dynamic_chamfer"))

    calm = list(args)
    calm[2], calm[3] = np.zeros_like(flow), np.zeros_like(logits)  # zero flow, identical (uniform) masks
    (_, still), grads = combined(*calm, neighbor_index=index, min_dynamic_points=-1)
    assert still["static_flow"] == 0 and still["smooth"] == 0
    finite(grads)

    empty = list(args)
    for i, size in (
        (4, N),
        (5, M),
        (6, N),
        (7, M),
        (10, N),
    ):  # valid0, valid1, dynamic0, dynamic1, pseudo_valid
        empty[i] = np.zeros(size, bool)
    (total, terms), grads = combined(
        *empty, neighbor_index=np.full((N, K), -1, np.int32), min_dynamic_points=-1
    )
    assert total == 0 and all(float(v) == 0 for v in terms.values()), terms
    finite(grads)
