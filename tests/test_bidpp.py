"""Tests of the BiDPP heads and HLSE clusters against hand-made label maps and float64 NumPy references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from bevjax.models.bidpp import (
    ROAD_SUB_CLASSES,
    BiDPPHead,
    HLSECluster,
    HLSEConfig,
    class_probabilities_from_clusters,
    default_hlse_clusters,
    dirichlet_stats,
    hierarchical_uncertainty,
    hlse_targets,
)
from bevjax.schema import BEV_CLASS_ID, BEV_CLASSES

HLSE = HLSEConfig(BEV_CLASSES)
targets_jit = jax.jit(hlse_targets, static_argnums=1)
SUBS = ("ped_crossing", "stop_line", "divider")

# Hand-made cells (one row of a [1, 1, 9, k] map), their labels, and the documented targets per cluster:
# 'p' positive (member labelled), 'n' negative (rest slot), '-' masked; root: 'drv', 'walk', 'other', '-'.
CELLS = (
    # labels                                    road     pc   sl   div  carpark vehicle pedestrian
    (("drivable_area", "ped_crossing"), ("drv", "p", "n", "n", "n", "n", "n")),
    (("walkway",), ("walk", "n", "n", "n", "n", "n", "n")),
    ((), ("other", "-", "-", "-", "n", "n", "n")),
    (("drivable_area", "divider"), ("drv", "n", "n", "p", "n", "n", "n")),
    (("drivable_area", "walkway"), ("-", "n", "n", "n", "n", "n", "n")),
    (("carpark_area", "vehicle"), ("other", "-", "-", "-", "p", "p", "n")),
    (("ped_crossing",), ("other", "p", "-", "-", "n", "n", "n")),
    (("walkway", "pedestrian", "stop_line"), ("walk", "n", "p", "n", "n", "n", "p")),
    (("drivable_area", "vehicle", "pedestrian"), ("drv", "n", "n", "n", "n", "p", "p")),
)
COLUMNS = ("road", "ped_crossing", "stop_line", "divider", "carpark_area", "vehicle", "pedestrian")


def label_map(cells=CELLS, classes=BEV_CLASSES):
    labels = np.zeros((1, 1, len(cells), len(classes)), np.uint8)  # b x y k
    for j, (names, _) in enumerate(cells):
        for name in names:
            labels[0, 0, j, classes.index(name)] = 1
    return labels


def expected(code: str, cluster: str):
    """(target, mask) of one cell from its table code."""
    if cluster == "road":
        slots = {"drv": [1, 0, 0], "walk": [0, 1, 0], "other": [0, 0, 1], "-": [0, 0, 0]}
        return slots[code], float(code != "-")
    return {"p": [1, 0], "n": [0, 1], "-": [0, 0]}[code], float(code != "-")


def random_alpha(hlse, shape=(2, 3, 4), seed=0):
    rng = np.random.default_rng(seed)
    # Evidence spanning 0 (u = 1) to large, as float64 reference values.
    return {c.name: 1.0 + rng.exponential(3.0, (*shape, c.size)) ** 2 for c in hlse.clusters}


class ClusterSpecTest(parameterized.TestCase):
    def test_default_clusters(self):
        clusters = {c.name: c for c in HLSE.clusters}
        self.assertEqual(clusters["road"], HLSECluster("road", ("drivable_area", "walkway"), None, "other"))
        for name in SUBS:
            self.assertEqual(clusters[name], HLSECluster(name, (name,), "road", f"not_{name}"))
        for name in ("carpark_area", "vehicle", "pedestrian"):
            self.assertEqual(clusters[name], HLSECluster(name, (name,), None))
        self.assertEqual(HLSE.num_slots, 3 + 6 * 2)
        self.assertEqual(HLSE.slices["road"], slice(0, 3))

    def test_tuple_spec_equals_dataclasses(self):
        spec = tuple((c.name, c.members, c.parent) for c in HLSE.clusters)
        self.assertEqual(HLSEConfig(BEV_CLASSES, spec), HLSE)
        hash(HLSE)  # a static jit argument

    def test_unknown_class_is_named(self):
        spec = (("road", ("drivable_area", "walkway")), ("lane", ("lane_marking", "zebra")))
        with pytest.raises(ValueError, match=r"unknown classes \['lane_marking', 'zebra'\]"):
            HLSEConfig(BEV_CLASSES, spec)

    @parameterized.parameters(
        ((("a", ("a", "b")), ("b", ("b",))), r"\['b'\] are in more than one cluster"),
        ((("a", ("a",)),), r"classes \['b'\] are in no cluster"),
        ((("a", ("a",)), ("b", ("b",), "road")), r"parent 'road' of cluster 'b' is not a cluster"),
        ((("b", ("b",), "a"), ("a", ("a",))), r"parent 'a' of cluster 'b' comes after it"),
        ((("a", ("a",)), ("a", ("b",))), r"duplicate cluster names"),
    )
    def test_invalid_specs(self, spec, message):
        with pytest.raises(ValueError, match=message):
            HLSEConfig(("a", "b"), spec)


class TargetsTest(chex.TestCase):
    def test_hand_made_cells(self):
        targets, masks = targets_jit(label_map(), HLSE)
        for j, (names, codes) in enumerate(CELLS):
            for cluster, code in zip(COLUMNS, codes, strict=True):
                target, mask = expected(code, cluster)
                where = f"cell {j} {names}, cluster {cluster}"
                np.testing.assert_array_equal(targets[cluster][0, 0, j], target, err_msg=where)
                self.assertEqual(float(masks[cluster][0, 0, j]), mask, where)
        self.assertEqual(set(targets), {c.name for c in HLSE.clusters})
        for name in targets:
            self.assertEqual(targets[name].dtype, jnp.float32)
            chex.assert_shape(masks[name], (1, 1, len(CELLS)))

    def test_nrseg_code_variant_makes_carpark_a_road_sub_class(self):
        hlse = HLSEConfig(
            BEV_CLASSES, default_hlse_clusters(BEV_CLASSES, road_sub_classes=(*SUBS, "carpark_area"))
        )
        targets, masks = targets_jit(label_map(), hlse)
        # Carpark outside road: positive; neither road nor carpark: masked; on road without carpark: negative.
        np.testing.assert_array_equal(masks["carpark_area"][0, 0], [1, 1, 0, 1, 1, 1, 0, 1, 1])
        np.testing.assert_array_equal(targets["carpark_area"][0, 0, 5], [1, 0])
        self.assertEqual(ROAD_SUB_CLASSES, SUBS)

    def test_random_labels_follow_the_rule(self):
        """The rule in NumPy, cell by cell, on random multi-labels."""
        rng = np.random.default_rng(1)
        labels = (rng.random((2, 5, 6, len(BEV_CLASSES))) < 0.3).astype(np.uint8)
        targets, masks = targets_jit(labels, HLSE)
        lab = labels > 0
        road = lab[..., BEV_CLASS_ID["drivable_area"]] | lab[..., BEV_CLASS_ID["walkway"]]
        for c in HLSE.clusters:
            ids = [BEV_CLASS_ID[m] for m in c.members]
            region = road if c.parent == "road" else np.ones_like(road)
            for idx in np.ndindex(*road.shape):
                on = lab[idx][ids]
                if on.sum() == 1:
                    want, m = np.append(on, 0), 1
                elif on.sum() == 0 and region[idx]:
                    want, m = np.append(on, 1), 1
                else:
                    want, m = np.zeros(c.size), 0
                np.testing.assert_array_equal(targets[c.name][idx], want)
                self.assertEqual(masks[c.name][idx], m)


class StatsTest(parameterized.TestCase):
    def test_dirichlet_stats(self):
        alpha = random_alpha(HLSE)["road"]
        p, u = dirichlet_stats(alpha.astype(np.float32))
        np.testing.assert_allclose(p, alpha / alpha.sum(-1, keepdims=True), rtol=1e-6)
        np.testing.assert_allclose(u, 3 / alpha.sum(-1), rtol=1e-6)
        p, u = dirichlet_stats(np.ones((4, 2)))
        np.testing.assert_allclose(p, 0.5)
        np.testing.assert_allclose(u, 1.0)

    def test_class_probabilities(self):
        alpha = random_alpha(HLSE)
        got = class_probabilities_from_clusters({k: v.astype(np.float32) for k, v in alpha.items()}, HLSE)
        p = {k: v / v.sum(-1, keepdims=True) for k, v in alpha.items()}  # float64
        p_road = p["road"][..., 0] + p["road"][..., 1]
        want = np.zeros((2, 3, 4, len(BEV_CLASSES)))
        want[..., BEV_CLASS_ID["drivable_area"]] = p["road"][..., 0]
        want[..., BEV_CLASS_ID["walkway"]] = p["road"][..., 1]
        for name in SUBS:
            want[..., BEV_CLASS_ID[name]] = p_road * p[name][..., 0]
        for name in ("carpark_area", "vehicle", "pedestrian"):
            want[..., BEV_CLASS_ID[name]] = p[name][..., 0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)

    @parameterized.product(fusion=("gated", "either"), cell=("max", "mean"))
    def test_hierarchical_uncertainty(self, fusion, cell):
        alpha = random_alpha(HLSE, seed=2)
        cell_u, class_u = jax.jit(hierarchical_uncertainty, static_argnums=(1, 2, 3))(
            {k: v.astype(np.float32) for k, v in alpha.items()}, HLSE, fusion, cell
        )
        u = {k: v.shape[-1] / v.sum(-1) for k, v in alpha.items()}  # float64
        p_road = (alpha["road"][..., 0] + alpha["road"][..., 1]) / alpha["road"].sum(-1)
        gate = p_road if fusion == "gated" else 1.0
        fused = {k: (v if k not in SUBS else 1 - (1 - u["road"]) * (1 - gate * v)) for k, v in u.items()}
        want = np.zeros((2, 3, 4, len(BEV_CLASSES)))
        for c in HLSE.clusters:
            for m in c.members:
                want[..., BEV_CLASS_ID[m]] = fused[c.name]
        stacked = np.stack(list(fused.values()), -1)
        np.testing.assert_allclose(class_u, want, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(cell_u, stacked.max(-1) if cell == "max" else stacked.mean(-1), rtol=1e-5)

    def test_three_levels(self):
        """A grandchild: pi(c) = p_a[a] * p_b[b]; U(c) = 1 - (1 - U(b)) (1 - pi(c) u_c)."""
        hlse = HLSEConfig(("a", "b", "c"), (("A", ("a",)), ("B", ("b",), "A"), ("C", ("c",), "B")))
        alpha = random_alpha(hlse, seed=3)
        p = {k: v[..., 0] / v.sum(-1) for k, v in alpha.items()}
        u = {k: 2 / v.sum(-1) for k, v in alpha.items()}
        got = class_probabilities_from_clusters(alpha, hlse)
        np.testing.assert_allclose(
            got, np.stack([p["A"], p["A"] * p["B"], p["A"] * p["B"] * p["C"]], -1), rtol=1e-5
        )
        u_b = 1 - (1 - u["A"]) * (1 - p["A"] * u["B"])
        u_c = 1 - (1 - u_b) * (1 - p["A"] * p["B"] * u["C"])
        _, class_u = hierarchical_uncertainty(alpha, hlse)
        np.testing.assert_allclose(class_u, np.stack([u["A"], u_b, u_c], -1), rtol=1e-5)
        labels = np.array([[[[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 0]]]], np.uint8)  # b x y k
        _, masks = targets_jit(labels, hlse)
        np.testing.assert_array_equal(masks["C"][0, 0], [1, 0, 0, 0])  # C's region: a & b
        np.testing.assert_array_equal(masks["B"][0, 0], [1, 1, 1, 0])  # B's region: a; b labelled outside it

    def test_bad_options(self):
        with pytest.raises(ValueError, match="fusion='noisy'"):
            hierarchical_uncertainty(random_alpha(HLSE), HLSE, fusion="noisy")
        with pytest.raises(ValueError, match="cell='min'"):
            hierarchical_uncertainty(random_alpha(HLSE), HLSE, cell="min")


class HeadTest(parameterized.TestCase):
    def test_shapes_and_jit(self):
        features = jax.random.normal(jax.random.key(0), (2, 8, 6, 16))  # b x y c
        variables = jax.jit(BiDPPHead(len(BEV_CLASSES), HLSE).init)(jax.random.key(1), features)
        # The packed evidential conv output z: alpha_C = f(z[..., slices[C]]) + 1.
        params = variables["params"]["evidential"]
        z = np.asarray(features, np.float64) @ np.asarray(params["kernel"][0, 0]) + np.asarray(params["bias"])
        f = {"softplus": lambda x: np.logaddexp(0, x), "exp": lambda x: np.exp(np.clip(x, -10, 10))}
        f["relu"] = lambda x: np.maximum(x, 0)
        for evidence in ("softplus", "exp", "relu"):
            out = jax.jit(BiDPPHead(len(BEV_CLASSES), HLSE, evidence=evidence).apply)(variables, features)
            chex.assert_shape(out["logits"], (2, 8, 6, len(BEV_CLASSES)))
            self.assertEqual(set(out["alpha"]), {c.name for c in HLSE.clusters})
            for c in HLSE.clusters:
                chex.assert_shape(out["alpha"][c.name], (2, 8, 6, c.size))
                self.assertTrue(bool((out["alpha"][c.name] >= 1.0).all()))
                want = f[evidence](z[..., HLSE.slices[c.name]]) + 1
                np.testing.assert_allclose(out["alpha"][c.name], want, rtol=1e-5, err_msg=evidence)
        logits = np.asarray(features, np.float64) @ np.asarray(
            variables["params"]["multinomial"]["kernel"][0, 0]
        )
        np.testing.assert_allclose(
            out["logits"],
            logits + np.asarray(variables["params"]["multinomial"]["bias"]),
            rtol=1e-4,
            atol=1e-5,
        )

    def test_bad_arguments(self):
        features = jnp.zeros((1, 2, 2, 4))
        with pytest.raises(ValueError, match="evidence='sigmoid'"):
            BiDPPHead(len(BEV_CLASSES), HLSE, evidence="sigmoid").init(jax.random.key(0), features)
        with pytest.raises(ValueError, match="num_classes=3"):
            BiDPPHead(3, HLSE).init(jax.random.key(0), features)


def test_other_class_set():
    """drivable_area and divider only: road is a Beta {drivable_area, other}, divider its child."""
    classes = ("drivable_area", "divider")
    hlse = HLSEConfig(classes)
    self_clusters = (
        HLSECluster("road", ("drivable_area",), None, "other"),
        HLSECluster("divider", ("divider",), "road"),
    )
    assert hlse.clusters == self_clusters
    labels = np.array([[[[1, 0], [1, 1], [0, 0], [0, 1]]]], np.uint8)  # b x y k
    targets, masks = targets_jit(labels, hlse)
    np.testing.assert_array_equal(targets["road"][0, 0], [[1, 0], [1, 0], [0, 1], [0, 1]])
    np.testing.assert_array_equal(targets["divider"][0, 0], [[0, 1], [1, 0], [0, 0], [1, 0]])
    np.testing.assert_array_equal(masks["divider"][0, 0], [1, 1, 0, 1])
    head = BiDPPHead(2, hlse)
    features = jnp.ones((1, 4, 4, 8))
    out = jax.jit(head.apply)(jax.jit(head.init)(jax.random.key(0), features), features)
    probs = jax.jit(class_probabilities_from_clusters, static_argnums=1)(out["alpha"], hlse)
    cell_u, class_u = jax.jit(hierarchical_uncertainty, static_argnums=1)(out["alpha"], hlse)
    chex.assert_shape((probs, class_u, cell_u), ((1, 4, 4, 2), (1, 4, 4, 2), (1, 4, 4)))
    # No road classes at all: every class is its own Beta everywhere.
    assert HLSEConfig(("vehicle", "divider")).clusters == (
        HLSECluster("vehicle", ("vehicle",)),
        HLSECluster("divider", ("divider",)),
    )
