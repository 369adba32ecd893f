"""NRSeg's BiDPP heads and HLSE: evidential BEV segmentation over locally exclusive class clusters.

BiDPP (bi-distribution parallel prediction) puts two 1x1 heads on the BEV features: the "multinomial" head,
per-class logits with one sigmoid each (the LSS head), and the evidential head, Dirichlet concentrations
``alpha = e + 1`` with evidence ``e >= 0`` (Sensoy et al. 2018).

HLSE (hierarchical local semantic exclusion): BEV classes overlap (a ped crossing lies on drivable area), so one
Dirichlet over all classes would model them as exclusive, which they are not. The classes are partitioned into
*clusters*; each cluster is one Dirichlet over its member classes plus a *rest* slot ("none of the members"),
exclusive within the cluster's *region*. A cluster has a *parent* (another cluster) or none; its region is

    region(C) = all cells                                      (no parent)
    region(C) = region(P) & (any member of P labelled)         (parent P)

so with the default spec ``road = drivable_area | walkway`` is the region of every road sub-class. This is the
rule of the NRSeg code (``get_inv_gt`` of lynn-yu/NRSeg ``train_UDA.py``): drivable area and walkway exclude each
other, a sub-class ``c`` gets negative evidence from ``road & ~c``, and none outside the road. Two departures
from that code, both in ``default_hlse_clusters``: drivable area and walkway share one 3-way Dirichlet with the
rest slot ``other`` (the code's per-class Betas give drivable area negative evidence only on walkway, and none
off the road), and carpark_area is its own Beta everywhere rather than a road sub-class, because in the
embedded world carparks never lie on drivable area or walkway (``bevjax/world/layout.py``), so
``p(road) * p(carpark | road)`` would be near 0 on every carpark (``road_sub_classes`` restores the code's choice).

Cluster spec (``HLSEConfig``): the class names and a tuple of ``HLSECluster(name, members, parent, rest)``,
or plain tuples ``(name, members[, parent[, rest]])`` so that an ml_collections config can hold it::

    HLSEConfig(BEV_CLASSES, (
        ("road", ("drivable_area", "walkway"), None, "other"),       # 3-way Dirichlet, everywhere
        ("ped_crossing", ("ped_crossing",), "road"),                  # Beta {ped_crossing, not_ped_crossing}
        ...
        ("vehicle", ("vehicle",)),                                    # Beta, everywhere
    ))

Every class is in exactly one cluster; a parent comes before its children. ``default_hlse_clusters(classes)``
builds the default for any class set. Cluster ``C`` has ``K_C = len(members) + 1`` slots, members first in the
given order and the rest slot last.

Hierarchical class probability (``class_probabilities_from_clusters``), with ``p_C = alpha_C / S_C``:

    pi(C) = 1                                  (no parent)
    pi(C) = pi(P) * sum_{m in P} p_P[m]        (parent P: the probability that the cell lies in C's region)
    p(class c in C) = pi(C) * p_C[c]

e.g. ``p(ped_crossing) = (p_road[drivable] + p_road[walkway]) * p_pc[ped_crossing]``: the sub-class Beta is
only trained inside the road (and where c is labelled), so it is read as ``p(c | road)``.

Hierarchical uncertainty (``hierarchical_uncertainty``), with ``u_C = K_C / S_C``:

    U(C) = u_C                                         (no parent)
    U(C) = 1 - (1 - U(P)) * (1 - g(C) * u_C)           (parent P)
    fusion='gated':  g(C) = pi(C)    (default)
    fusion='either': g(C) = 1

'either' reads "uncertain if any level is uncertain". Its flaw is that a sub-class Beta receives no evidence
outside its region, so ``u_C`` stays high there by construction and every off-road cell would come out
uncertain; 'gated' counts a level's uncertainty only as much as the cell is believed to lie in that level's
region, and equals 'either' where ``pi(C) = 1``. Per class ``U_k = U(cluster of k)``; per cell the max over the
clusters (``cell='max'``, default: a cell is uncertain if any of its decisions is) or their mean
(``cell='mean'``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bevjax.losses.nrseg import EVIDENCE_KINDS, dirichlet_probs, evidence
from bevjax.models.layers import PointwiseConv

ROAD_CLASSES = ("drivable_area", "walkway")
# Sub-classes that lie on the road: in the embedded world (``bevjax/world/layout.py``) crossings, stop lines and
# dividers exist only on drivable area, while carparks exclude drivable area and walkway, so carpark_area is its
# own Beta by default (the NRSeg code makes it a road sub-class; pass ``road_sub_classes`` to do so).
ROAD_SUB_CLASSES = ("ped_crossing", "stop_line", "divider")


@dataclasses.dataclass(frozen=True)
class HLSECluster:
    """One locally exclusive cluster: a Dirichlet over ``members`` + a rest slot, within its parent's region.

    Attributes:
      name: unique cluster name (a parent reference).
      members: class names, exclusive within the region; the first ``len(members)`` Dirichlet slots.
      parent: name of the parent cluster, or None for a cluster active everywhere.
      rest: name of the last slot (cosmetic); None: ``'not_<member>'`` for one member, else ``'other'``.
    """

    name: str
    members: tuple[str, ...]
    parent: str | None = None
    rest: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "members", tuple(self.members))
        if self.rest is None:
            rest = f"not_{self.members[0]}" if len(self.members) == 1 else "other"
            object.__setattr__(self, "rest", rest)

    @property
    def size(self) -> int:
        """Number of Dirichlet slots ``K = len(members) + 1``."""
        return len(self.members) + 1


def default_hlse_clusters(
    classes: Sequence[str],
    road: Sequence[str] = ROAD_CLASSES,
    road_sub_classes: Sequence[str] = ROAD_SUB_CLASSES,
) -> tuple[HLSECluster, ...]:
    """The default HLSE clusters for any class set.

    - ``road``: the classes of ``road`` present in ``classes`` (drivable area and walkway), one Dirichlet with
      the rest slot ``other``, active everywhere. Absent if none of them is in ``classes``.
    - one Beta ``{c, not_c}`` per class of ``road_sub_classes`` present, with parent ``road`` (no parent when
      there is no road cluster).
    - one Beta per remaining class (objects, carpark_area, unknown-to-the-default classes), active everywhere.

    ``road_sub_classes=(*ROAD_SUB_CLASSES, 'carpark_area')`` gives the clusters of the NRSeg code.
    """
    classes = tuple(classes)
    road_members = tuple(c for c in road if c in classes)
    clusters = []
    parent = None
    if road_members:
        clusters.append(HLSECluster("road", road_members, None, "other"))
        parent = "road"
    for c in classes:
        if c not in road_members:
            clusters.append(HLSECluster(c, (c,), parent if c in road_sub_classes else None))
    return tuple(clusters)


@dataclasses.dataclass(frozen=True)
class HLSEConfig:
    """Class names and their HLSE clusters, validated (hashable: usable as a static jit argument).

    Attributes:
      classes: class names in channel order (the ``k`` axis of labels and logits).
      clusters: ``HLSECluster``s or tuples ``(name, members[, parent[, rest]])``; None: ``default_hlse_clusters``.

    Raises:
      ValueError: naming unknown member classes, classes in several clusters or in none, duplicate cluster
        names, unknown parents or parents given after their children, empty clusters.
    """

    classes: tuple[str, ...]
    clusters: tuple[HLSECluster, ...] | None = None

    def __post_init__(self):
        classes = tuple(self.classes)
        object.__setattr__(self, "classes", classes)
        if len(set(classes)) != len(classes):
            raise ValueError(f"HLSE: duplicate class names in {classes}")
        raw = default_hlse_clusters(classes) if self.clusters is None else self.clusters
        clusters = tuple(c if isinstance(c, HLSECluster) else HLSECluster(*c) for c in raw)
        object.__setattr__(self, "clusters", clusters)
        names = [c.name for c in clusters]
        if len(set(names)) != len(names):
            raise ValueError(f"HLSE: duplicate cluster names in {names}")
        members = [m for c in clusters for m in c.members]
        unknown = sorted({m for m in members if m not in classes})
        if unknown:
            raise ValueError(
                f"HLSE: unknown classes {unknown} in the clusters; the classes are {list(classes)}"
            )
        twice = sorted({m for m in members if members.count(m) > 1})
        if twice:
            raise ValueError(f"HLSE: classes {twice} are in more than one cluster")
        missing = [c for c in classes if c not in members]
        if missing:
            raise ValueError(f"HLSE: classes {missing} are in no cluster (give each at least its own Beta)")
        seen = set()
        for c in clusters:
            if not c.members:
                raise ValueError(f"HLSE: cluster '{c.name}' has no members")
            if c.parent is not None and c.parent not in seen:
                where = "comes after it" if c.parent in names else "is not a cluster"
                raise ValueError(f"HLSE: parent '{c.parent}' of cluster '{c.name}' {where}; names: {names}")
            seen.add(c.name)

    def cluster(self, name: str) -> HLSECluster:
        """The cluster called ``name``."""
        return next(c for c in self.clusters if c.name == name)

    def member_ids(self, cluster: HLSECluster) -> tuple[int, ...]:
        """Class indices of the cluster's members, in slot order."""
        return tuple(self.classes.index(m) for m in cluster.members)

    @property
    def slices(self) -> dict[str, slice]:
        """Static slice of each cluster in the packed evidence channels (clusters in order, ``K_C`` each)."""
        out, start = {}, 0
        for c in self.clusters:
            out[c.name] = slice(start, start + c.size)
            start += c.size
        return out

    @property
    def num_slots(self) -> int:
        """Total evidence channels ``sum_C K_C``."""
        return sum(c.size for c in self.clusters)


def hlse_targets(bev_labels, hlse: HLSEConfig) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Per-cluster one-hot targets and evidence masks from multi-label BEV labels.

    For cluster C with members M (``n`` = number of members labelled in the cell) and region R (module
    docstring: all cells without a parent, else ``region(P) & any member of P labelled``):

    ==========================  ==============  ====  ==============================================
    cell                        target [K_C]    mask  meaning
    ==========================  ==============  ====  ==============================================
    n == 1 (member m labelled)  one-hot(m)      1     positive evidence (inside or outside R)
    n == 0, inside R            one-hot(rest)   1     negative evidence: R excludes the members here
    n == 0, outside R           0               0     no evidence, no loss
    n >= 2 (members overlap)    0               0     no loss: the labels break the exclusion
    ==========================  ==============  ====  ==============================================

    With the default clusters of ``bevjax.schema.BEV_CLASSES`` (road = drivable_area | walkway; sub-class c one
    of ped_crossing, stop_line, divider; o one of carpark_area, vehicle, pedestrian):

    ===============================  =================  ===========================  ==================
    cell labels                      road cluster       Beta {c, not_c}              Beta {o, not_o}
    ===============================  =================  ===========================  ==================
    drivable_area, not walkway       drivable_area      c if labelled, else not_c    o if labelled,
    walkway, not drivable_area       walkway            c if labelled, else not_c    else not_o
    drivable_area and walkway        masked             c if labelled, else not_c    (everywhere)
    neither                          other              c if labelled, else masked
    ===============================  =================  ===========================  ==================

    Args:
      bev_labels: [b, x, y, k] multi-label BEV labels (``> 0`` is labelled), ``k = len(hlse.classes)``.
      hlse: the cluster spec (static).

    Returns:
      ``(targets, masks)``: dicts keyed by cluster name, targets [b, x, y, K_C] float32 (zero where masked),
      masks [b, x, y] float32 (1 where the cluster gets evidence).
    """
    labels = jnp.asarray(bev_labels) > 0  # b x y k
    if labels.shape[-1] != len(hlse.classes):
        raise ValueError(f"bev_labels have {labels.shape[-1]} classes, the HLSE spec {len(hlse.classes)}")
    region, targets, masks = {}, {}, {}
    for c in hlse.clusters:
        if c.parent is None:
            region[c.name] = jnp.ones(labels.shape[:-1], bool)  # b x y
        else:
            parent = hlse.cluster(c.parent)
            on_parent = labels[..., list(hlse.member_ids(parent))].any(-1)  # b x y
            region[c.name] = region[c.parent] & on_parent
        pos = labels[..., list(hlse.member_ids(c))]  # b x y m
        n = pos.sum(-1)  # b x y
        one = n == 1
        neg = (n == 0) & region[c.name]
        targets[c.name] = jnp.concatenate([pos & one[..., None], neg[..., None]], -1).astype(jnp.float32)
        masks[c.name] = (one | neg).astype(jnp.float32)  # b x y
    return targets, masks


def dirichlet_stats(alpha) -> tuple[jax.Array, jax.Array]:
    """Expected probabilities and uncertainty mass of a Dirichlet over the last axis: ``S = sum_j alpha_j``,
    ``p = alpha / S``, ``u = K / S`` (``u = 1`` with no evidence). One definition:
    :func:`bevjax.losses.nrseg.dirichlet_probs`.

    Args:
      alpha: [..., K] concentrations (>= 1 from the evidential head).

    Returns:
      ``(p [..., K], u [...])``.
    """
    return dirichlet_probs(alpha, axis=-1)


def _region_probabilities(probs: Mapping[str, jax.Array], hlse: HLSEConfig) -> dict[str, jax.Array]:
    """``pi(C)``: 1 without a parent, else ``pi(P) * sum_{m in P} p_P[m]`` ([b, x, y] or a scalar 1)."""
    pi = {}
    for c in hlse.clusters:
        if c.parent is None:
            pi[c.name] = jnp.ones((), probs[c.name].dtype)
        else:
            parent = hlse.cluster(c.parent)
            pi[c.name] = pi[c.parent] * probs[c.parent][..., : len(parent.members)].sum(-1)  # b x y
    return pi


def class_probabilities_from_clusters(alpha: Mapping[str, Any], hlse: HLSEConfig) -> jax.Array:
    """Per-class probabilities from the cluster Dirichlets, hierarchically.

    ``p(c) = pi(C) * p_C[c]`` for class c in cluster C, with ``p_C = alpha_C / S_C``, ``pi(C) = 1`` without a
    parent and ``pi(C) = pi(P) * sum_{m in P} p_P[m]`` with parent P. Default spec: ``p(drivable) =
    p_road[drivable]``, ``p(ped_crossing) = (p_road[drivable] + p_road[walkway]) * p_pc[ped_crossing]``,
    ``p(vehicle) = p_vehicle[vehicle]``.

    Args:
      alpha: cluster name -> [b, x, y, K_C] concentrations.
      hlse: the cluster spec (static).

    Returns:
      [b, x, y, k] probabilities in ``hlse.classes`` order.
    """
    probs = {c.name: dirichlet_stats(alpha[c.name])[0] for c in hlse.clusters}  # b x y K_C each
    pi = _region_probabilities(probs, hlse)
    columns = [None] * len(hlse.classes)
    for c in hlse.clusters:
        for slot, k in enumerate(hlse.member_ids(c)):
            columns[k] = pi[c.name] * probs[c.name][..., slot]  # b x y
    return jnp.stack(columns, -1)  # b x y k


FUSIONS = ("gated", "either")
CELL_REDUCTIONS = ("max", "mean")


def hierarchical_uncertainty(
    alpha: Mapping[str, Any], hlse: HLSEConfig, fusion: str = "gated", cell: str = "max"
) -> tuple[jax.Array, jax.Array]:
    """Per-cell and per-class uncertainty, fused down the cluster hierarchy.

    ``U(C) = u_C`` without a parent, ``U(C) = 1 - (1 - U(P)) (1 - g(C) u_C)`` with parent P, ``u_C = K_C / S_C``;
    ``g(C) = pi(C)`` (``fusion='gated'``, see ``class_probabilities_from_clusters``) or 1 (``'either'``). Why
    the gate: a sub-class gets no evidence outside its region, so its ``u_C`` is high there by construction.

    Args:
      alpha: cluster name -> [b, x, y, K_C] concentrations.
      hlse: the cluster spec (static).
      fusion: ``'gated'`` or ``'either'``.
      cell: per-cell reduction over the clusters' ``U``: ``'max'`` or ``'mean'``.

    Returns:
      ``(cell_u [b, x, y], class_u [b, x, y, k])`` with ``class_u[..., k] = U(cluster of k)``.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion='{fusion}': choose one of {FUSIONS}")
    if cell not in CELL_REDUCTIONS:
        raise ValueError(f"cell='{cell}': choose one of {CELL_REDUCTIONS}")
    stats = {c.name: dirichlet_stats(alpha[c.name]) for c in hlse.clusters}  # (b x y K_C, b x y)
    pi = _region_probabilities({n: s[0] for n, s in stats.items()}, hlse)
    fused = {}
    for c in hlse.clusters:
        u = stats[c.name][1]  # b x y
        if c.parent is None:
            fused[c.name] = u
        else:
            gate = pi[c.name] if fusion == "gated" else 1.0
            fused[c.name] = 1.0 - (1.0 - fused[c.parent]) * (1.0 - gate * u)
    per_cluster = jnp.stack([fused[c.name] for c in hlse.clusters], -1)  # b x y C
    cell_u = per_cluster.max(-1) if cell == "max" else per_cluster.mean(-1)  # b x y
    columns = [None] * len(hlse.classes)
    for c in hlse.clusters:
        for k in hlse.member_ids(c):
            columns[k] = fused[c.name]
    return cell_u, jnp.stack(columns, -1)  # b x y, b x y k


class BiDPPHead(nn.Module):
    """The two parallel BiDPP heads on BEV features: per-class logits and per-cluster Dirichlets.

    Two 1x1 convolutions (as the NRSeg ``BevEncode`` ``out_1`` / ``out_2``) on the BEV features: head 1,
    "multinomial", gives per-class logits (one sigmoid each, the LSS head); head 2, "evidential", gives the packed
    evidence logits ``z`` [b, x, y, sum_C K_C], then per cluster ``e = f(z[..., slices[C]])`` with
    ``f = evidence`` (``softplus``, ``exp`` of the logits clipped to [-10, 10], or ``relu``) and
    ``alpha_C = e + 1``.

    Attributes:
      num_classes: ``k``; must equal ``len(hlse.classes)``.
      hlse: the cluster spec (``HLSEConfig``).
      evidence: ``'softplus'``, ``'exp'`` or ``'relu'``.
      dtype: computation dtype of the convolutions; logits and alpha come out float32.
    """

    num_classes: int
    hlse: HLSEConfig
    evidence: str = "softplus"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features):
        """Predicts both heads.

        Args:
          features: [b, x, y, c] BEV features (e.g. ``BevEncoder``'s ``aux['features']``).

        Returns:
          ``{'logits': [b, x, y, k], 'alpha': {cluster name: [b, x, y, K_C]}}``, float32.
        """
        if self.num_classes != len(self.hlse.classes):
            raise ValueError(f"num_classes={self.num_classes} but the HLSE spec has {len(self.hlse.classes)}")
        if self.evidence not in EVIDENCE_KINDS:
            raise ValueError(f"evidence='{self.evidence}': choose one of {sorted(EVIDENCE_KINDS)}")
        logits = PointwiseConv(self.num_classes, dtype=self.dtype, name="multinomial")(features)  # b x y k
        z = PointwiseConv(self.hlse.num_slots, dtype=self.dtype, name="evidential")(features)  # b x y (sum K)
        e = evidence(z.astype(jnp.float32), self.evidence)  # b x y (sum K)
        alpha = {name: e[..., s] + 1.0 for name, s in self.hlse.slices.items()}  # b x y K_C each
        return {"logits": logits.astype(jnp.float32), "alpha": alpha}
