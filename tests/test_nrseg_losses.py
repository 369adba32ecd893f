"""Tests of the NRSeg losses against independent float64 NumPy / SciPy references (loops where it reads better)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from scipy import integrate, special, stats

from bevjax.losses import (
    consistency_loss,
    consistency_weight,
    depth_bin_index,
    depth_cross_entropy,
    dice_loss,
    dirichlet_kl_to_uniform,
    dirichlet_probs,
    downsample_depth,
    edl_kl_weight,
    edl_mse_loss,
    evidence,
    pseudo_labels,
    pv_dice_loss,
    temporal_l1,
)

RTOL = 1e-5

# The tests call jitted losses (static options marked static), as training does: eager dispatch of the many
# small ops in lgamma / digamma costs seconds per call, a jit compiles once per shape.
DICE = jax.jit(dice_loss, static_argnames=("eps", "relax"))
PV_DICE = jax.jit(pv_dice_loss, static_argnames=("num_classes", "ignore"))
PSEUDO = jax.jit(pseudo_labels, static_argnames=("threshold",))
KL = jax.jit(dirichlet_kl_to_uniform, static_argnames="axis")
KL_GRAD = jax.jit(jax.grad(lambda a: dirichlet_kl_to_uniform(a).sum()))  # rows are independent
EDL = jax.jit(edl_mse_loss, static_argnames="axis")
CONSISTENCY = jax.jit(consistency_loss)
TEMPORAL = jax.jit(temporal_l1)
DEPTH_CE = jax.jit(depth_cross_entropy, static_argnames=("dbound", "bin_rule"))
DEPTH_BIN = jax.jit(depth_bin_index, static_argnames=("dbound", "bin_rule"))


def leading(mask, shape):
    """``mask`` [b, ...] broadcast over the trailing axes of ``shape`` (float64)."""
    mask = np.asarray(mask, np.float64)
    return np.broadcast_to(mask.reshape(mask.shape + (1,) * (len(shape) - mask.ndim)), shape)


def all_finite(tree):
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(tree))


# ------------------------------------------------------------------------------------------------- Dice


def ref_dice(probs, targets, weights=None, mask=None, eps=1.0, relax="denominator"):
    """Loops over samples and classes; ``sum p`` and ``sum p (1 - y)`` computed separately."""
    probs, targets = np.asarray(probs, np.float64), np.asarray(targets, np.float64)
    b, k = probs.shape[0], probs.shape[-1]
    m = np.ones_like(probs) if mask is None else leading(mask, probs.shape)
    w = np.ones(b) if weights is None else np.asarray(weights, np.float64)
    losses = []
    for bi in range(b):
        per_class = []
        for ki in range(k):
            p, y, mm = probs[bi, ..., ki], targets[bi, ..., ki], m[bi, ..., ki]
            num = 2 * np.sum(p * y * mm) + eps
            if relax == "denominator":
                den = w[bi] * np.sum(p * (1 - y) * mm) + np.sum(p * y * mm) + np.sum(y * mm) + eps
            else:
                den = np.sum(p * mm) + np.sum(y * mm) + eps
            per_class.append(1 - num / den if den > 0 else 0.0)
        loss = np.mean(per_class)
        losses.append(w[bi] * loss if relax == "scale" else loss)
    return np.mean(losses)


def dice_inputs(seed=0, shape=(3, 6, 5, 4)):
    rng = np.random.default_rng(seed)
    probs = rng.uniform(size=shape).astype(np.float32)
    targets = (rng.uniform(size=shape) < 0.3).astype(np.float32)
    targets[0, ..., 1] = 0  # an empty class
    weights = np.array([1.0, 0.4, 0.0], np.float32)[: shape[0]]
    mask = (rng.uniform(size=shape[:-1]) < 0.8).astype(np.float32)
    return probs, targets, weights, mask


class DiceTest(chex.TestCase):
    @parameterized.product(relax=["denominator", "scale"], masked=[False, True], eps=[1.0, 1e-3])
    def test_matches_reference(self, relax, masked, eps):
        probs, targets, weights, mask = dice_inputs()
        mask = mask if masked else None
        got = DICE(probs, targets, weights, mask, eps=eps, relax=relax)
        chex.assert_trees_all_close(got, ref_dice(probs, targets, weights, mask, eps, relax), rtol=RTOL)

    def test_unit_weights_give_the_plain_dice(self):
        probs, targets, _, mask = dice_inputs(1)
        plain = ref_dice(probs, targets, None, mask)
        ones = np.ones(probs.shape[0], np.float32)
        for relax in ("denominator", "scale"):
            chex.assert_trees_all_close(DICE(probs, targets, ones, mask, relax=relax), plain, rtol=RTOL)
            chex.assert_trees_all_close(DICE(probs, targets, None, mask, relax=relax), plain, rtol=RTOL)

    def test_zero_weight_frees_predictions_outside_the_labels(self):
        probs, targets, _, _ = dice_inputs(2)
        on_labels = probs * targets
        zero = np.zeros(probs.shape[0], np.float32)
        chex.assert_trees_all_close(DICE(probs, targets, zero), DICE(on_labels, targets, zero), rtol=RTOL)
        # ...but missing the labels still costs, and the scale form drops the sample altogether.
        self.assertGreater(float(DICE(0.5 * on_labels, targets, zero)), float(DICE(on_labels, targets, zero)))
        self.assertEqual(float(DICE(probs, targets, zero, relax="scale")), 0.0)

    def test_empty_is_finite(self):
        zeros = jnp.zeros((2, 4, 4, 3))

        @jax.jit
        def empty(p):
            plain = jax.value_and_grad(lambda q: dice_loss(q, zeros))(p)
            no_eps = jax.value_and_grad(lambda q: dice_loss(q, zeros, eps=0.0))(p)
            masked = jax.value_and_grad(lambda q: dice_loss(q + 0.5, zeros, mask=jnp.zeros((2, 4, 4))))(p)
            return plain, no_eps, masked

        results = empty(zeros)
        self.assertTrue(all_finite(results))
        self.assertEqual([float(value) for value, _ in results], [0.0, 0.0, 0.0])

    def test_rejects_unknown_relax(self):
        with self.assertRaisesRegex(ValueError, "relax"):
            dice_loss(jnp.zeros((1, 2, 2)), jnp.zeros((1, 2, 2)), relax="numerator")


def ref_pv_dice(logits, labels, num_classes, ignore=None, eps=1.0):
    logits = np.asarray(logits, np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    valid = (labels >= 0) & (labels < num_classes)
    if ignore is not None:
        valid &= labels != ignore
    onehot = np.zeros(probs.shape)
    for idx in np.ndindex(labels.shape):
        if valid[idx]:
            onehot[idx + (labels[idx],)] = 1.0
    return ref_dice(probs, onehot, mask=valid, eps=eps)


def ref_pseudo_labels(logits, threshold, ignore=255):
    logits = np.asarray(logits, np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    labels = probs.argmax(-1)
    if threshold is not None:
        labels = np.where(probs.max(-1) >= threshold, labels, ignore)
    return labels


class PerspectiveDiceTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(3)
        self.logits = (2 * rng.normal(size=(2, 3, 4, 5, 6))).astype(np.float32)  # b n h w k
        labels = rng.integers(0, 6, size=(2, 3, 4, 5))
        labels[0, 0, 0] = 255  # ignored however called
        self.labels = labels.astype(np.uint8)

    @parameterized.parameters(None, 2)
    def test_matches_reference(self, ignore):
        got = PV_DICE(self.logits, self.labels, 6, ignore=ignore)
        want = ref_pv_dice(self.logits, self.labels.astype(np.int64), 6, ignore)
        chex.assert_trees_all_close(got, want, rtol=RTOL)

    @parameterized.parameters(None, 0.5, 0.9)
    def test_pseudo_labels(self, threshold):
        got = PSEUDO(self.logits, threshold)
        self.assertEqual(got.dtype, jnp.int32)
        np.testing.assert_array_equal(got, ref_pseudo_labels(self.logits, threshold))
        if threshold == 0.9:
            self.assertTrue(np.any(np.asarray(got) == 255) and np.any(np.asarray(got) < 6))

    def test_pseudo_labels_train_the_student(self):
        labels = PSEUDO(self.logits, 0.6)
        got = PV_DICE(self.logits, labels, 6)
        chex.assert_trees_all_close(got, ref_pv_dice(self.logits, np.asarray(labels), 6), rtol=RTOL)

    def test_rejects_wrong_class_count(self):
        with self.assertRaisesRegex(ValueError, "pv_logits"):
            pv_dice_loss(self.logits, self.labels, 5)


# --------------------------------------------------------------------------------------------------- EDL


def ref_kl(alpha):
    """``KL(Dir(alpha) || Dir(1))`` in float64 with SciPy's lgamma / digamma, over the last axis."""
    a = np.asarray(alpha, np.float64)
    s = a.sum(-1)
    c = a.shape[-1]
    return (
        special.gammaln(s)
        - special.gammaln(c)
        - special.gammaln(a).sum(-1)
        + ((a - 1) * (special.digamma(a) - special.digamma(s)[..., None])).sum(-1)
    )


def kl_beta_by_quadrature(a, b):
    """``KL(Beta(a, b) || U(0, 1)) = int_0^1 f log f dx`` by adaptive quadrature."""
    dist = stats.beta(a, b)
    mode = (a - 1) / (a + b - 2) if a + b > 2 else 0.5
    value, _ = integrate.quad(
        lambda x: dist.pdf(x) * dist.logpdf(x) if 0 < x < 1 else 0.0, 0, 1, points=[mode], limit=200
    )
    return value


def ref_kl_grad(alpha):
    """``d KL / d alpha_j = (alpha_j - 1) trigamma(alpha_j) - (S - c) trigamma(S)``."""
    a = np.asarray(alpha, np.float64)
    s = a.sum(-1, keepdims=True)
    return (a - 1) * special.polygamma(1, a) - (s - a.shape[-1]) * special.polygamma(1, s)


def ref_edl(alpha, y, step, anneal_steps, mask=None, weights=None, axis=-1):
    a = np.moveaxis(np.asarray(alpha, np.float64), axis, -1)
    y = np.moveaxis(np.asarray(y, np.float64), axis, -1)
    s = a.sum(-1, keepdims=True)
    p = a / s
    fit = ((y - p) ** 2 + p * (1 - p) / (s + 1)).sum(-1)
    lam = min(1.0, step / anneal_steps)
    per = fit + lam * ref_kl(y + (1 - y) * a)
    m = np.ones(per.shape) if mask is None else leading(mask, per.shape)
    w = np.ones(per.shape) if weights is None else leading(weights, per.shape)
    return (m * w * per).sum() / m.sum()


def ref_evidence(z, kind):
    z = np.asarray(z, np.float64)
    if kind == "softplus":
        return np.logaddexp(0.0, z)
    if kind == "exp":
        return np.exp(np.clip(z, -10, 10))
    return np.maximum(z, 0.0)


def onehot(rng, shape):
    """Random one-hot float32 [..., c] of ``shape``."""
    return np.eye(shape[-1], dtype=np.float32)[rng.integers(0, shape[-1], shape[:-1])]


class EvidentialTest(chex.TestCase):
    @parameterized.parameters("softplus", "exp", "relu")
    def test_evidence(self, kind):
        z = np.array([-200.0, -30.0, -1.5, 0.0, 0.3, 9.0, 30.0, 200.0], np.float32)
        got = evidence(z, kind)
        chex.assert_trees_all_close(got, ref_evidence(z, kind), rtol=RTOL, atol=1e-37)  # float32 underflow
        grad = jax.grad(lambda x: evidence(x, kind).sum())(jnp.asarray(z))
        self.assertTrue(all_finite(got) and all_finite(grad))

    def test_evidence_rejects_unknown_kind(self):
        with self.assertRaisesRegex(ValueError, "kind"):
            evidence(jnp.zeros(3), "sigmoid")

    @parameterized.parameters(2, 4)
    def test_kl_closed_form(self, classes):
        rng = np.random.default_rng(classes)
        alpha = np.concatenate(
            [
                1.0 + rng.exponential(4.0, size=(30, classes)),
                np.exp(rng.uniform(0.0, np.log(2e4), size=(30, classes))),  # up to the exp-evidence maximum
                np.full((1, classes), 1.0),  # KL = 0
                np.array([[1.0] * (classes - 1) + [1e4], [1e4] * classes]),
                rng.uniform(7.9, 8.1, size=(3, classes)),  # around the series switch
            ]
        ).astype(np.float32)
        chex.assert_trees_all_close(KL(alpha), ref_kl(alpha), rtol=RTOL, atol=1e-5)

    def test_kl_beta_against_quadrature(self):
        ab = np.array([(1.0, 1.0), (2.0, 5.0), (1.0, 4.0), (7.5, 3.2), (30.0, 2.0), (1.0, 60.0)], np.float32)
        want = [kl_beta_by_quadrature(a, b) for a, b in ab.astype(np.float64)]
        chex.assert_trees_all_close(KL(ab), np.array(want), rtol=RTOL, atol=2e-6)

    def test_kl_gradient_finite_and_exact(self):
        # Two-class Betas (the HLSE clusters), at alpha = 1 exactly, at 1e4, and across the series switch at 8.
        alpha = np.array(
            [[1.0, 1.0], [1.0, 1e4], [1e4, 1e4], [1e4, 1.0], [8.0, 30.0], [7.99, 2.0]], np.float32
        )
        grad = KL_GRAD(alpha)
        self.assertTrue(all_finite(grad))
        self.assertLess(float(np.abs(grad[0]).max()), 1e-6)  # alpha = 1: the minimum
        chex.assert_trees_all_close(grad, ref_kl_grad(alpha), rtol=1e-3, atol=1e-6)

    def test_dirichlet_probs(self):
        alpha = np.array([[1.0, 1.0, 1.0], [9.0, 0.5, 0.5]], np.float32)
        p, u = dirichlet_probs(alpha)
        chex.assert_trees_all_close(p, alpha / alpha.sum(-1, keepdims=True), rtol=RTOL)
        chex.assert_trees_all_close(u, np.array([1.0, 0.3]), rtol=RTOL)

    def test_anneal_factor(self):
        for step, steps, want in [
            (0, 10, 0.0),
            (5, 10, 0.5),
            (10, 10, 1.0),
            (20, 10, 1.0),
            (-3, 10, 0.0),
            (5, 0, 1.0),
        ]:
            self.assertAlmostEqual(float(edl_kl_weight(step, steps)), want, places=7)
        jitted = jax.jit(edl_kl_weight)
        self.assertAlmostEqual(float(jitted(jnp.int32(3), 12)), 0.25, places=7)

    @parameterized.parameters(False, True)
    def test_dirichlet_loss_matches_reference(self, masked):
        rng = np.random.default_rng(int(masked))
        shape = (3, 5, 4, 4)  # b x y c
        alpha = np.asarray(evidence(2 * rng.normal(size=shape).astype(np.float32))) + 1.0
        y = onehot(rng, shape)
        mask = (rng.uniform(size=shape[:-1]) < 0.7).astype(np.float32) if masked else None
        weights = np.array([1.0, 0.3, 0.8], np.float32)
        for step in (0, 40, 100, 300):  # traced: one compile
            got = EDL(alpha, y, step, 100, mask=mask, weights=weights)
            chex.assert_trees_all_close(got, ref_edl(alpha, y, step, 100, mask, weights), rtol=RTOL)

    def test_beta_clusters_match_reference(self):
        rng = np.random.default_rng(7)
        shape = (2, 6, 5, 4, 2)  # b x y k c: one two-class Beta per class
        alpha = np.asarray(evidence(3 * rng.normal(size=shape).astype(np.float32), "exp")) + 1.0
        y = onehot(rng, shape)
        mask = (rng.uniform(size=shape[:-1]) < 0.6).astype(np.float32)  # b x y k: no evidence outside road
        weights = np.array([0.5, 1.0], np.float32)
        want = ref_edl(alpha, y, 7, 10, mask, weights)
        chex.assert_trees_all_close(EDL(alpha, y, 7, 10, mask, weights), want, rtol=RTOL)
        # The same clusters with the class axis first: [b, c, x, y, k].
        moved = EDL(np.moveaxis(alpha, -1, 1), np.moveaxis(y, -1, 1), 7, 10, mask, weights, axis=1)
        chex.assert_trees_all_close(moved, want, rtol=RTOL)

    def test_jit_and_gradient_finite_at_the_edges(self):
        # Logits -100: alpha = 1 exactly (softplus underflows); 100: large evidence. Then alpha itself at 1 and 1e4.
        z = jnp.array([[-100.0, -100.0], [100.0, -100.0], [-100.0, 100.0], [100.0, 100.0], [0.0, 0.0]])
        y = jnp.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
        alpha = jnp.array([[1e4, 1.0], [1.0, 1e4], [1e4, 1e4], [1.0, 1.0], [1e4, 1e4]])
        mask, weights = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0]), jnp.array([1.0, 0.5, 0.0, 1.0, 1.0])

        @jax.jit
        def both(logits, a):
            by_logits = jax.value_and_grad(
                lambda zz: edl_mse_loss(evidence(zz) + 1.0, y, 5, 10, mask, weights)
            )
            by_alpha = jax.value_and_grad(lambda aa: edl_mse_loss(aa, y, 10, 10))
            return by_logits(logits), by_alpha(a)

        (value, grad_z), (_, grad_alpha) = both(z, alpha)
        self.assertTrue(all_finite((value, grad_z, grad_alpha)))
        want = ref_edl(np.asarray(evidence(z)) + 1.0, y, 5, 10, mask, weights)
        chex.assert_trees_all_close(value, want, rtol=RTOL)
        self.assertGreater(float(jnp.abs(grad_z).max()), 0.0)


# ---------------------------------------------------------------------------------- Mean Teacher, temporal


class ConsistencyTest(chex.TestCase):
    def test_matches_reference_and_stops_teacher_gradient(self):
        rng = np.random.default_rng(8)
        s, t = rng.normal(size=(2, 2, 6, 5, 3)).astype(np.float32)  # b x y c
        mask = (rng.uniform(size=(2, 6, 5)) < 0.5).astype(np.float32)
        s64, t64 = s.astype(np.float64), t.astype(np.float64)
        chex.assert_trees_all_close(CONSISTENCY(s, t), np.mean((s64 - t64) ** 2), rtol=RTOL)
        m = leading(mask, s.shape)
        want = (m * (s64 - t64) ** 2).sum() / m.sum()
        chex.assert_trees_all_close(CONSISTENCY(s, t, mask), want, rtol=RTOL)
        grad_s, grad_t = jax.grad(consistency_loss, argnums=(0, 1))(jnp.asarray(s), jnp.asarray(t))
        chex.assert_trees_all_close(grad_s, 2 * (s64 - t64) / s.size, rtol=RTOL, atol=1e-9)
        np.testing.assert_array_equal(grad_t, 0.0)
        self.assertEqual(float(CONSISTENCY(s, t, np.zeros((2, 6, 5)))), 0.0)

    def test_ramp(self):
        ramp = 1000

        def want(t, low=0.002, high=0.1):
            return min(low + high * np.exp(-5 * (1 - min(t, ramp) / ramp) ** 2), high)

        for t in (0, ramp // 2, ramp, 2 * ramp, 900):
            self.assertAlmostEqual(float(consistency_weight(t, ramp)), want(t), places=7)
        self.assertAlmostEqual(float(consistency_weight(0, ramp)), 0.002 + 0.1 * np.exp(-5), places=7)
        self.assertAlmostEqual(float(consistency_weight(ramp, ramp)), 0.1, places=7)
        self.assertAlmostEqual(float(consistency_weight(100, 0)), 0.1, places=7)
        self.assertAlmostEqual(float(consistency_weight(-5, ramp)), want(0), places=7)
        jitted = jax.jit(consistency_weight)
        self.assertAlmostEqual(float(jitted(jnp.int32(ramp // 2), ramp)), want(ramp // 2), places=7)


def ref_temporal_l1(prev, cur, valid, start=None):
    prev, cur = np.asarray(prev, np.float64), np.asarray(cur, np.float64)
    total, count = 0.0, 0
    for bi in range(prev.shape[0]):
        if start is not None and start[bi]:
            continue
        for i, j in np.ndindex(prev.shape[1:3]):
            if valid[bi, i, j]:
                total += np.abs(prev[bi, i, j] - cur[bi, i, j]).sum()
                count += prev.shape[-1]
    return total / count if count else 0.0


class TemporalTest(chex.TestCase):
    def test_matches_reference(self):
        rng = np.random.default_rng(9)
        prev, cur = rng.normal(size=(2, 3, 6, 5, 4)).astype(np.float32)  # b x y c
        valid = rng.uniform(size=(3, 6, 5)) < 0.6
        valid[0, 0, 0] = False
        prev[0, 0, 0] = np.nan  # outside the warp: must not leak into the loss
        start = np.array([False, True, False])
        chex.assert_trees_all_close(TEMPORAL(prev, cur, valid), ref_temporal_l1(prev, cur, valid), rtol=RTOL)
        chex.assert_trees_all_close(
            TEMPORAL(prev, cur, valid, start), ref_temporal_l1(prev, cur, valid, start), rtol=RTOL
        )

    def test_nothing_valid(self):
        x = jnp.ones((2, 4, 4, 3))
        value, grad = jax.jit(jax.value_and_grad(temporal_l1))(
            x, x + 1, jnp.ones((2, 4, 4)), jnp.array([True, True])
        )
        self.assertEqual(float(value), 0.0)
        self.assertTrue(all_finite(grad))


# ------------------------------------------------------------------------------------------------- depth

DBOUND = (4.0, 45.0, 1.0)  # the LSS default, D = 41
SMALL_DBOUND = (2.0, 10.0, 0.5)  # D = 16


def ref_bin(z, dbound, rule):
    lo, hi, step = dbound
    bins = len(np.arange(lo, hi, step))
    z = float(z)
    if not (np.isfinite(z) and z > 0):
        return None
    q = (z - lo) / step + (0.5 if rule == "nearest" else 0.0)
    return int(np.floor(q)) if 0 <= q < bins else None


def ref_depth_ce(logits, depth, dbound, rule):
    logits = np.asarray(logits, np.float64)
    total, count = 0.0, 0
    for idx in np.ndindex(depth.shape):
        i = ref_bin(depth[idx], dbound, rule)
        if i is not None:
            z = logits[idx]
            total += special.logsumexp(z) - z[i]
            count += 1
    return total / count if count else 0.0


def random_depths(rng, shape, dbound, rule):
    """Depths away from bin edges, one or two bins beyond the range on either side, some missing (0)."""
    lo, hi, step = dbound
    bins = len(np.arange(lo, hi, step))
    i = rng.integers(-2, bins + 2, shape)
    start = lo + (i - (0.5 if rule == "nearest" else 0.0)) * step
    depth = start + rng.uniform(0.05, 0.95, shape) * step
    depth[rng.uniform(size=shape) < 0.2] = 0.0
    return depth.astype(np.float32)


class DepthTest(chex.TestCase):
    @parameterized.product(rule=["nearest", "floor"], dbound=[DBOUND, SMALL_DBOUND])
    def test_matches_reference(self, rule, dbound):
        rng = np.random.default_rng(10)
        bins = len(np.arange(*dbound))
        depth = random_depths(rng, (2, 3, 4, 6), dbound, rule)  # b n h w
        depth[0, 0, 0, 0] = np.nan
        logits = (2 * rng.normal(size=(*depth.shape, bins))).astype(np.float32)
        index, valid = DEPTH_BIN(depth, dbound, rule)
        want = [ref_bin(z, dbound, rule) for z in depth.ravel()]
        np.testing.assert_array_equal(np.asarray(valid).ravel(), [i is not None for i in want])
        np.testing.assert_array_equal(np.asarray(index).ravel(), [0 if i is None else i for i in want])
        got = DEPTH_CE(logits, depth, dbound, rule)
        chex.assert_trees_all_close(got, ref_depth_ce(logits, depth, dbound, rule), rtol=RTOL)

    def test_bin_edges(self):
        cases = {
            "nearest": [
                (3.4, None),
                (3.5, 0),
                (4.0, 0),
                (4.49, 0),
                (4.5, 1),
                (44.0, 40),
                (44.49, 40),
                (44.5, None),
            ],
            "floor": [(3.99, None), (4.0, 0), (4.99, 0), (5.0, 1), (44.99, 40), (45.0, None), (0.0, None)],
        }
        for rule, pairs in cases.items():
            depth = np.array([z for z, _ in pairs], np.float32)
            index, valid = DEPTH_BIN(depth, DBOUND, rule)
            for (z, want), i, v in zip(pairs, np.asarray(index), np.asarray(valid), strict=True):
                self.assertEqual((int(i) if v else None), want, f"{rule} z={z}")

    def test_no_depth_is_finite(self):
        logits = jnp.zeros((1, 2, 3, 4, 41))
        value, grad = jax.jit(jax.value_and_grad(depth_cross_entropy), static_argnums=2)(
            logits, jnp.zeros((1, 2, 3, 4)), DBOUND
        )
        self.assertEqual(float(value), 0.0)
        self.assertTrue(all_finite(grad))

    def test_rejects_wrong_bin_count(self):
        with self.assertRaisesRegex(ValueError, "dbound"):
            depth_cross_entropy(jnp.zeros((1, 2, 40)), jnp.zeros((1, 2)), DBOUND)

    def test_downsample_depth(self):
        rng = np.random.default_rng(11)
        depth = rng.uniform(1.0, 60.0, size=(2, 3, 8, 12)).astype(np.float32)  # b n h w
        depth[rng.uniform(size=depth.shape) < 0.7] = 0.0
        depth[0, 0, :4, :4] = 0.0  # a patch without depth
        depth[1, 2, 0, 0] = np.inf
        got = downsample_depth(depth, 4)
        want = np.zeros((2, 3, 2, 3))
        for b, n, i, j in np.ndindex(want.shape):
            patch = depth[b, n, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4]
            ok = patch[(patch > 0) & np.isfinite(patch)]
            want[b, n, i, j] = ok.min() if ok.size else 0.0
        chex.assert_trees_all_close(got, want, rtol=0, atol=0)
        with self.assertRaisesRegex(ValueError, "multiples"):
            downsample_depth(depth, 5)


# ------------------------------------------------------------------------------------------- jit and grad


def jit_cases():
    """name -> (a loss of its first argument, its arguments) for the jit and gradient check (EDL: above)."""
    rng = np.random.default_rng(12)
    probs, targets, weights, mask = dice_inputs(12)  # b x y k [3, 6, 5, 4], mask [3, 6, 5]
    prev, cur = rng.normal(size=(2, 3, 6, 5, 8)).astype(np.float32)  # b x y c
    depth = random_depths(rng, (2, 2, 3, 4), SMALL_DBOUND, "nearest")  # b n h w
    pv = rng.normal(size=(2, 2, 3, 4, 6)).astype(np.float32)  # b n h w k
    labels = np.asarray(PSEUDO(pv, 0.3))
    return {
        "dice_denominator": (
            functools.partial(dice_loss, relax="denominator"),
            (probs, targets, weights, mask),
        ),
        "dice_scale": (functools.partial(dice_loss, relax="scale"), (probs, targets, weights, mask)),
        "pv_dice": (lambda z, lab: pv_dice_loss(z, lab, 6, ignore=255), (pv, labels)),
        "consistency": (consistency_loss, (prev, cur, mask)),
        "temporal_l1": (temporal_l1, (prev, cur, mask, np.array([True, False, False]))),
        "depth_ce": (
            lambda z, d: depth_cross_entropy(z, d, SMALL_DBOUND),
            (rng.normal(size=(2, 2, 3, 4, 16)).astype(np.float32), depth),
        ),
    }


class JitGradTest(chex.TestCase):
    @parameterized.named_parameters((name, name) for name in jit_cases())
    def test_jit_and_grad(self, name):
        fn, args = jit_cases()[name]
        value, grad = jax.jit(jax.value_and_grad(fn))(*args)
        chex.assert_shape(value, ())
        self.assertTrue(all_finite((value, grad)))
        self.assertGreater(float(jnp.abs(grad).max()), 0.0)

    def test_low_precision_inputs_compute_in_float32(self):
        probs, targets, _, _ = dice_inputs(13)
        got = dice_loss(jnp.asarray(probs, jnp.bfloat16), jnp.asarray(targets, jnp.bfloat16))
        self.assertEqual(got.dtype, jnp.float32)
        self.assertEqual(consistency_loss(jnp.ones(3, jnp.bfloat16), jnp.zeros(3)).dtype, jnp.float32)
