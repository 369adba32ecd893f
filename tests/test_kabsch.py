"""Tests of the weighted Kabsch fit against scipy's ``align_vectors``, known synthetic motions, float64 NumPy
and float64 finite differences; degenerate fits must give rotations and finite gradients."""


import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from scipy.spatial.transform import Rotation

from bevjax.geometry import invert_rigid, transform_points
from bevjax.geometry.kabsch import fit_clusters_np, kabsch, kabsch_np, rigid_residual, to_matrix

N = 24  # points per fit in most tests (one compiled shape)


def motion(seed):
    """A random rotation [3, 3] and translation [3] (metres), float64."""
    rng = np.random.default_rng(seed)
    return Rotation.random(random_state=seed).as_matrix(), rng.uniform(-5, 5, 3)


def random_set(seed, n=N, zero_fraction=0.25):
    """float64 source [n, 3] (a car-sized blob 30 m from the origin), target = R x + t + noise, weights with
    zeros; the zero-weight targets are garbage that must not matter."""
    rng = np.random.default_rng(seed)
    rot, trans = motion(seed + 1000)
    x = rng.normal(size=(n, 3)) * [2.0, 1.0, 0.7] + [30.0, -10.0, 1.0]
    y = x @ rot.T + trans + 0.02 * rng.normal(size=(n, 3))
    w = rng.uniform(0.1, 1.0, n)
    zero = rng.random(n) < zero_fraction
    w[zero] = 0.0
    y[zero] += rng.normal(size=(zero.sum(), 3)) * 50.0
    return x, y, w, rot, trans


def scipy_fit(x, y, w):
    """Reference rotation: scipy's align_vectors (a ~ R b) on the weighted-centred points."""
    xc = x - np.average(x, axis=0, weights=w)
    yc = y - np.average(y, axis=0, weights=w)
    return Rotation.align_vectors(yc, xc, weights=w)[0].as_matrix()


def assert_rotation(r, atol=1e-5):
    """Orthonormal with det +1 (every trailing 3 x 3)."""
    r = np.asarray(r, np.float64)
    assert np.all(np.isfinite(r)), r
    eye = np.broadcast_to(np.eye(3), r.shape)
    np.testing.assert_allclose(np.swapaxes(r, -1, -2) @ r, eye, atol=atol)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=atol)


def objective(x, y, w, r, t):
    return float(np.sum(w * np.sum((x @ r.T + t - y) ** 2, -1)))


def reference_loss_np(x, y, w, g_r, g_t):
    """float64 loss of the gradient tests: a random linear functional of (R, t) plus the weighted MSE."""
    r, t = kabsch_np(x, y, w)
    mse = np.sum(w * np.sum((x @ r.T + t - y) ** 2, -1)) / np.sum(w)
    return np.sum(g_r * r) + np.sum(g_t * t) + mse


def loss_jax(x, y, w, g_r, g_t):
    r, t = kabsch(x, y, w)
    _, mse = rigid_residual(x, y, w, r, t)
    return jnp.sum(g_r * r) + jnp.sum(g_t * t) + mse


GRAD = jax.jit(jax.grad(loss_jax, argnums=(0, 1, 2)))


def finite_difference(f, args, step=1e-6):
    """Central float64 finite differences of scalar f with respect to each array of ``args``."""
    grads = []
    for i, a in enumerate(args):
        g = np.zeros_like(a)
        for j in np.ndindex(a.shape):
            plus, minus = [list(args) for _ in range(2)]
            plus[i], minus[i] = a.copy(), a.copy()
            plus[i][j] += step
            minus[i][j] -= step
            g[j] = (f(*plus) - f(*minus)) / (2 * step)
        grads.append(g)
    return grads


class KabschNumpyTest(parameterized.TestCase):
    @parameterized.parameters(0, 1, 2, 3)
    def test_matches_scipy_align_vectors(self, seed):
        x, y, w, _, _ = random_set(seed)
        r, t = kabsch_np(x, y, w)
        np.testing.assert_allclose(r, scipy_fit(x, y, w), atol=1e-9)
        assert_rotation(r, atol=1e-12)
        # t maps the weighted centroid.
        np.testing.assert_allclose(r @ np.average(x, 0, w) + t, np.average(y, 0, w), atol=1e-9)

    def test_recovers_exact_motion(self):
        x, _, _, rot, trans = random_set(5)
        w = np.random.default_rng(5).uniform(0, 1, N)
        r, t = kabsch_np(x, x @ rot.T + trans, w)
        np.testing.assert_allclose(r, rot, atol=1e-12)
        np.testing.assert_allclose(t, trans, atol=1e-10)
        r, t = kabsch_np(x, x @ rot.T + trans)  # weights None: ones
        np.testing.assert_allclose(r, rot, atol=1e-12)

    def test_noisy_motion_and_zero_weights(self):
        x, y, w, rot, trans = random_set(6, n=400)
        r, t = kabsch_np(x, y, w)
        angle = np.degrees(Rotation.from_matrix(r.T @ rot).magnitude())
        self.assertLess(angle, 0.5)  # 2 cm noise on a 4 m blob: a fraction of a degree
        np.testing.assert_allclose(r @ x[0] + t, rot @ x[0] + trans, atol=0.05)
        # The zero-weight points (50 m garbage) are ignored: fitting only the weighted points is the same.
        r2, t2 = kabsch_np(x[w > 0], y[w > 0], w[w > 0])
        np.testing.assert_allclose(r, r2, atol=1e-12)
        np.testing.assert_allclose(t, t2, atol=1e-9)

    def test_determinant_correction_on_noisy_planar_points(self):
        # A flat patch seen twice with independent 2 cm noise (two LiDAR sweeps): the third singular direction
        # is noise, the best orthogonal V U^T is a reflection for about half of the draws, and the fit must
        # still be the rotation.
        reflected = 0
        for seed in range(20):
            rng = np.random.default_rng(seed)
            rot, trans = motion(seed)
            plane = np.c_[rng.uniform(-2, 2, (N, 2)), np.zeros(N)]
            x = plane + 0.02 * rng.normal(size=(N, 3))
            y = plane @ rot.T + trans + 0.02 * rng.normal(size=(N, 3))
            w = rng.uniform(0.2, 1.0, N)
            xc, yc = x - np.average(x, 0, w), y - np.average(y, 0, w)
            u, _, vt = np.linalg.svd((w[:, None] * xc).T @ yc)
            reflected += np.linalg.det(vt.T @ u.T) < 0
            r, t = kabsch_np(x, y, w)
            assert_rotation(r, atol=1e-12)
            np.testing.assert_allclose(r, scipy_fit(x, y, w), atol=1e-9)
            self.assertLess(np.degrees(Rotation.from_matrix(r.T @ rot).magnitude()), 2.0)
        self.assertGreater(reflected, 3, "few draws needed the correction: the test tests little")

    def test_mirror_image_target(self):
        # y is a mirror image of x: no rotation fits exactly; the best one (scipy) has det +1.
        x, _, w, _, _ = random_set(7)
        y = x * [1.0, 1.0, -1.0]
        r, t = kabsch_np(x, y, w)
        assert_rotation(r, atol=1e-12)
        np.testing.assert_allclose(r, scipy_fit(x, y, w), atol=1e-9)
        rot_z = Rotation.from_euler("z", 0.3).as_matrix()  # any other rotation does worse
        self.assertLessEqual(objective(x, y, w, r, t), objective(x, y, w, rot_z @ r, t) + 1e-9)

    def test_batched_equals_loop_and_zero_weight_is_identity(self):
        xs, ys, ws = zip(*(random_set(s)[:3] for s in range(4)), strict=True)
        x, y, w = np.stack(xs), np.stack(ys), np.stack(ws)  # 4 n 3, 4 n 3, 4 n
        w[2] = 0.0
        r, t = kabsch_np(x, y, w)
        chex.assert_shape((r, t), ((4, 3, 3), (4, 3)))
        for i in (0, 1, 3):
            ri, ti = kabsch_np(x[i], y[i], w[i])
            np.testing.assert_allclose(r[i], ri, atol=1e-12)
            np.testing.assert_allclose(t[i], ti, atol=1e-10)
        np.testing.assert_array_equal(r[2], np.eye(3))
        np.testing.assert_array_equal(t[2], np.zeros(3))

    def test_bad_inputs_are_named(self):
        x, y, w, _, _ = random_set(0)
        with self.assertRaisesRegex(ValueError, "target"):
            kabsch_np(x, y[:-1], w)
        with self.assertRaisesRegex(ValueError, "weights"):
            kabsch_np(x, y, w[:-1])
        with self.assertRaisesRegex(ValueError, "weights must be >= 0"):
            kabsch_np(x, y, -w)
        with self.assertRaisesRegex(ValueError, "source has 1 non-finite"):
            kabsch_np(np.where(np.arange(N)[:, None] * [1, 0, 0] == 1, np.nan, x), y, w)
        with self.assertRaisesRegex(ValueError, "labels"):
            fit_clusters_np(x, y, np.zeros(N))  # float labels
        with self.assertRaisesRegex(ValueError, "target"):
            kabsch(jnp.asarray(x), jnp.asarray(y)[:, :2], jnp.asarray(w))


class ClusterFitTest(parameterized.TestCase):
    def test_equals_per_cluster_kabsch(self):
        rng = np.random.default_rng(11)
        n = 3000
        x = rng.uniform(-40, 40, (n, 3))
        labels = rng.choice([-1, 0, 3, 4, 9, 17, 40], n)  # noise -1, ids not contiguous
        labels[:5] = 23  # a cluster of 5 points with zero weight: identity
        labels[5] = 31  # a single point
        w = rng.uniform(0, 1, n)
        w[:5] = 0.0
        y = np.empty_like(x)
        for j in np.unique(labels):
            rot, trans = motion(int(j) + 50)
            y[labels == j] = x[labels == j] @ rot.T + trans
        y += 0.05 * rng.normal(size=(n, 3))
        fit = fit_clusters_np(x, y, labels, w)
        np.testing.assert_array_equal(fit.labels, [0, 3, 4, 9, 17, 23, 31, 40])
        chex.assert_shape((fit.rotation, fit.translation, fit.rms), ((8, 3, 3), (8, 3), (8,)))
        assert_rotation(fit.rotation, atol=1e-12)
        for j, label in enumerate(fit.labels):
            sel = labels == label
            r, t = kabsch_np(x[sel], y[sel], w[sel])
            np.testing.assert_allclose(fit.rotation[j], r, atol=1e-10)
            np.testing.assert_allclose(fit.translation[j], t, atol=1e-8)
            res = np.sum(w[sel] * np.sum((x[sel] @ r.T + t - y[sel]) ** 2, -1))
            np.testing.assert_allclose(fit.rms[j], np.sqrt(res / max(w[sel].sum(), 1e-300)) if res else 0.0)
            self.assertEqual(fit.count[j], sel.sum())
            np.testing.assert_allclose(fit.weight[j], w[sel].sum())
        np.testing.assert_array_equal(fit.rotation[5], np.eye(3))  # the zero-weight cluster

    def test_dbscan_pseudo_labels_recover_object_motions(self):
        from sklearn.cluster import DBSCAN

        rng = np.random.default_rng(12)
        centres = np.array([[10.0, 5.0, 0.8], [-15.0, 20.0, 0.8], [25.0, -30.0, 0.8]])
        motions = [motion(s) for s in (1, 2, 3)]
        pc0, pc1 = [], []
        for centre, (rot, trans) in zip(centres, motions, strict=True):
            local = rng.uniform(-1, 1, (300, 3)) * [2.2, 0.9, 0.7]  # a car's points about its centre
            pc0.append(centre + local)
            pc1.append(centre + local @ rot.T + trans)  # rotation about the car centre
        pc0, pc1 = np.concatenate(pc0), np.concatenate(pc1)
        labels = DBSCAN(eps=0.8, min_samples=5).fit_predict(pc0)
        fit = fit_clusters_np(pc0, pc1, labels)
        self.assertEqual(len(fit.labels), 3)
        for j, label in enumerate(fit.labels):
            k = int(np.argmin(np.linalg.norm(centres - pc0[labels == label].mean(0), axis=1)))
            np.testing.assert_allclose(fit.rotation[j], motions[k][0], atol=1e-9)
            np.testing.assert_allclose(fit.rms[j], 0.0, atol=1e-9)
            pose = to_matrix(fit.rotation[j], fit.translation[j])
            moved = transform_points(pose, pc0[labels == label])
            np.testing.assert_allclose(moved, pc1[labels == label], atol=1e-9)

    def test_100k_points_200_clusters(self):
        # The pseudo-label pass's size: every cluster moved by the same translation is recovered (its time is
        # measured by a benchmark, not here).
        rng = np.random.default_rng(13)
        n, k = 100_000, 200
        labels = rng.integers(0, k, n)
        labels[rng.random(n) < 0.1] = -1  # 10 % noise
        x = rng.uniform(-50, 50, (k, 3))[np.maximum(labels, 0)] + rng.normal(size=(n, 3))
        shift = rng.normal(size=3)
        y = x + shift + 0.01 * rng.normal(size=(n, 3))
        w = rng.uniform(0, 1, n)
        fit = fit_clusters_np(x, y, labels, w)
        self.assertEqual(len(fit.labels), k)
        np.testing.assert_allclose(fit.rotation, np.broadcast_to(np.eye(3), (k, 3, 3)), atol=5e-3)
        np.testing.assert_allclose(fit.translation, np.broadcast_to(shift, (k, 3)), atol=0.1)


class KabschJaxTest(chex.TestCase, parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_equals_numpy_float64(self):
        x, y, w, _, _ = random_set(21)
        r, t = self.variant(kabsch)(x.astype(np.float32), y.astype(np.float32), w.astype(np.float32))
        chex.assert_type((r, t), jnp.float32)
        r64, t64 = kabsch_np(x, y, w)
        np.testing.assert_allclose(r, r64, atol=2e-5)
        np.testing.assert_allclose(t, t64, atol=2e-3)  # 30 m lever arm times float32 rounding of R
        assert_rotation(r)

    @chex.variants(with_jit=True, without_jit=True)
    def test_batched_over_slots_with_shared_points(self):
        # The loss: pc0 [n, 3] shared, target pc0 + flow [n, 3], soft weights [s, n] per instance slot.
        x, y, _, _, _ = random_set(22, zero_fraction=0.0)
        logits = np.random.default_rng(22).normal(size=(5, N)) * 3
        w = np.exp(logits) / np.exp(logits).sum(0)  # softmax over the slots
        w[4] = 0.0  # an empty slot
        r, t = self.variant(kabsch)(x.astype(np.float32), y.astype(np.float32), w.astype(np.float32))
        chex.assert_shape((r, t), ((5, 3, 3), (5, 3)))
        for s in range(4):
            r64, t64 = kabsch_np(x, y, w[s])
            np.testing.assert_allclose(r[s], r64, atol=5e-5)
            np.testing.assert_allclose(t[s], t64, atol=5e-3)
        np.testing.assert_array_equal(r[4], np.eye(3))
        _, mse = rigid_residual(x, y, w, r, t)
        chex.assert_shape(mse, (5,))
        np.testing.assert_array_equal(mse[4], 0.0)

    def test_gradient_matches_float64_finite_difference(self):
        x, y, w, _, _ = random_set(23, zero_fraction=0.0)
        x -= [30.0, -10.0, 1.0]  # near the origin: float32 gradients of a 30 m offset lose digits
        y = x @ motion(3)[0].T + 0.3 * np.random.default_rng(23).normal(size=x.shape)
        rng = np.random.default_rng(24)
        g_r, g_t = rng.normal(size=(3, 3)), rng.normal(size=3)
        grads = GRAD(*(a.astype(np.float32) for a in (x, y, w, g_r, g_t)))
        expected = finite_difference(lambda a, b, c: reference_loss_np(a, b, c, g_r, g_t), (x, y, w))
        for got, want in zip(grads, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())

    def test_gradient_with_repeated_singular_values(self):
        # A rotated cube: s1 = s2 = s3 but R is unique. Autodiff through jnp.linalg.svd divides by
        # s_i^2 - s_j^2 here; the polar-factor derivative divides by s_i + s_j.
        x = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], np.float64)  # 8 3
        y = x @ motion(4)[0].T + [1.0, 2.0, 3.0]
        w = np.ones(8)
        rng = np.random.default_rng(25)
        g_r, g_t = rng.normal(size=(3, 3)), rng.normal(size=3)
        grads = jax.grad(loss_jax, argnums=(0, 1, 2))(*(a.astype(np.float32) for a in (x, y, w, g_r, g_t)))
        expected = finite_difference(lambda a, b, c: reference_loss_np(a, b, c, g_r, g_t), (x, y, w))
        for got, want in zip(grads, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * max(np.abs(want).max(), 1.0))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("all_weights_zero", "zero"),
        ("one_point", "one"),
        ("two_points", "two"),
        ("collinear", "collinear"),
        ("exactly_planar", "planar"),
        ("reflected_isotropic", "reflected"),  # s2 = s3 with d = -1: the best rotation is not unique
    )
    def test_degenerate_fits_give_rotations_and_finite_gradients(self, case):
        rng = np.random.default_rng(26)
        x = rng.normal(size=(N, 3)) + [20.0, 5.0, 1.0]
        w = rng.uniform(0.2, 1.0, N)
        rot, trans = motion(26)
        if case == "zero":
            w[:] = 0.0
        elif case in ("one", "two"):
            w[int(case == "two") + 1 :] = 0.0
        elif case == "collinear":
            x = np.linspace(0, 1, N)[:, None] * [3.0, 1.0, 0.5] + [20.0, 5.0, 1.0]
        elif case == "planar":
            x[:, 2] = 1.0
        y = x @ rot.T + trans
        if case == "reflected":
            x = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)] * 3, np.float64)
            y = -x  # point reflection (det -1) of an isotropic cloud
            w = np.ones(N)
        f32 = [a.astype(np.float32) for a in (x, y, w)]
        r, t = self.variant(kabsch)(*f32)
        assert_rotation(r)
        if case == "zero":
            np.testing.assert_array_equal(r, np.eye(3))
            np.testing.assert_array_equal(t, np.zeros(3))
        elif case != "reflected":  # a rotation fits exactly: the residual is float32 rounding
            _, mse = rigid_residual(*f32, r, t)
            self.assertLess(float(mse), 1e-8)
        g_r, g_t = rng.normal(size=(3, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
        grads = self.variant(jax.grad(loss_jax, argnums=(0, 1, 2)))(*f32, g_r, g_t)
        for g in grads:
            assert np.all(np.isfinite(g)), (case, g)

    def test_to_matrix_follows_transform_conventions(self):
        rot, trans = motion(30)
        pose = to_matrix(rot, trans)  # NumPy in, NumPy out
        self.assertIsInstance(pose, np.ndarray)
        x = np.random.default_rng(30).normal(size=(5, 3))
        np.testing.assert_allclose(transform_points(pose, x), x @ rot.T + trans)
        np.testing.assert_allclose(invert_rigid(pose) @ pose, np.eye(4), atol=1e-12)
        batched = jax.jit(to_matrix)(jnp.stack([jnp.eye(3), jnp.asarray(rot, jnp.float32)]), jnp.zeros(3))
        chex.assert_shape(batched, (2, 4, 4))
        np.testing.assert_allclose(batched[1], to_matrix(rot, np.zeros(3)), atol=1e-6)
