"""The self-supervised losses of SemanticFlow (arXiv 2503.14837; ``shared/METHODS.md`` section 5).

SemanticFlow is SeFlow (KTH-RPL/SeFlow, ``src/lossfuncs.py``: ``seflowLoss``) with an instance head: four
flow losses from SeFlow and five terms on the soft instance masks (YQChen8/SemanticFlow ``src/lossfuncs.py``,
the same ``seflowLoss`` extended). Per example, with ``pc0`` ego-motion compensated (in sweep 1's frame),
``flow`` the predicted residual flow and ``m = softmax(instance_logits)`` the soft masks over ``S`` slots::

    L = 1.0 truncated_chamfer(pc0 + flow, pc1)                   chamfer_dis
      + 1.0 static_flow_loss(flow, static)                        static_flow_loss
      + 1.0 dynamic_chamfer(pc0 + flow, pc1, dynamic0, dynamic1)  dynamic_chamfer_dis
      + 1.0 cluster_consistency(flow, target, has_target)         cluster_based_pc0pc1
      + 1.0 rigid_consistency(pc0, flow, m)                       rigid_loss
      + 0.5 (3 mask_smoothness(k=32, 1 m) + mask_smoothness(k=64, 2 m))   smooth_loss
      + 0.0 instance_focal(logits, cluster slot)                  mask_loss
      + 0.1 background_foreground_focal(logits, dynamic0)        bf_mask_loss
      + 5.0 dynamic_mask_separation(pc0, m, predicted fg)         fg_consistent

(the weights of the authors' README training command, :class:`LossWeights`; our field names on the left of
:data:`AUTHOR_TERMS`). What each authors' term computes, and where ours differs:

- ``chamfer_dis``: squared nearest distances both ways between ``pc0 + flow`` and ``pc1``, each direction the
  mean over the distances ``<= TRUNCATED_DIST = 4`` m^2, i.e. points farther than 2 m are *dropped* from the
  mean (not clamped). Same here (``truncate`` in metres, compared as ``d^2 <= truncate^2``).
- ``dynamic_chamfer_dis``: the same Chamfer between the dynamic points of both sweeps (``label > 0``), and it
  *is* truncated at 2 m too (``nnChamferDis(..., truncate_dist=4)``); :func:`dynamic_chamfer` truncates by
  default, ``truncate=None`` gives the untruncated form.
- ``static_flow_loss``: mean ``|flow|`` over the points with label 0 (not in a dynamic cluster).
- ``cluster_based_pc0pc1``: SeFlow's Eq. 8-11. Per dynamic cluster of pc0, among its points whose nearest pc1
  point (unmoved ``pc0`` to ``pc1``) is dynamic, the one *farthest* from its nearest pc1 point gives the
  cluster's target ``pc1[nn] - pc0[i]``; the loss is ``mean |flow_i - target|`` over the points of all
  clusters with a target. :func:`farthest_point_flow` computes those targets (``cluster_target='farthest'``);
  our default (``'rigid'``) uses the rigid-fit pseudo-flow of :mod:`bevjax.flow_labels` instead (METHODS: "each
  cluster moves with its pseudo-label target"), a per-point target that also carries the cluster's rotation.
- ``rigid_loss``: per slot a weighted Kabsch fit (weights ``m[:, s]``) of ``pc0 -> pc0 + flow``, the fitted
  points detached, mixed by the masks: ``mean_i |sum_s m_is T_s(x_i) - (x_i + f_i)|``.
- ``smooth_loss``: ``3 KnnLoss + BallQLoss``: L1 distance of the masks to those of the 32 nearest neighbours
  (the point itself included) within 1 m, averaged over the 32 slots (farther ones count 0), and to at most
  64 points within 2 m (the first ones in index order, the list padded with the first). Ours takes both from
  one kNN list (:func:`mask_smoothness`); the ball term becomes "the nearest 64 within 2 m" (the authors'
  ball is in index order and its padding repeats the first point, neither of which fits static shapes). The
  authors subsample pc0 to 16384 points first (memory); ours is blockwise and uses every point.
- ``mask_loss`` (weight 0): a focal cross-entropy of the masks against the cluster id as a slot.
- ``bf_mask_loss``: a binary focal loss (alpha 1, gamma 2) of ``p_bg = p[:, 0]`` against "not dynamic": slot 0
  is the background. The authors combine a background and a foreground term with ``beta = 0.5``; for a binary
  split the two are the same number (``BCE(p_bg, 1 - y) = BCE(1 - p_bg, y)``), so this is one focal term.
- ``fg_consistent``: over the points whose argmax slot is not 0 (subsampled at random to 1024), the mean over
  pairs farther apart than 6 m of ``max(cos(m_i, m_j), 0)``: far-apart foreground points should use different
  slots.

Differences that apply throughout:

- **Empty sets give 0.** The authors' ``torch.mean`` of an empty selection is NaN (the Chamfer terms), and
  ``fg_consistent`` returns the constant 1.0 without foreground points or far pairs; a constant has no gradient,
  so 0 trains the same.
- **Double softmax.** The authors' decoder already applies the softmax (``est_mask0`` are probabilities), and
  both focal losses apply another one (``softmax`` / ``cross_entropy`` of the probabilities), which squeezes
  ``p_bg`` into ``[1 / (e + S - 1), e / (e + S - 1)]``. Ours takes one softmax of the logits (the
  documented intent); ``double_softmax=True`` reproduces the authors' code.
- **Which points count as foreground for the focal loss.** The authors map cluster ids ``>= S`` to 0 in place
  before the focal losses, so points of clusters beyond the slot count are background there; ours counts every
  dynamic point as foreground (the mapping is kept for ``instance_focal``'s slot targets).
- **Gating.** The authors set the dynamic Chamfer and the cluster loss to 0 unless both sweeps have more than
  256 dynamic points (a CUDA block-size artefact), and when no cluster finds a target the cluster loss becomes
  the Chamfer of the raw sweeps (a constant). ``min_dynamic_points`` of :func:`semanticflow_loss` reproduces
  the gate (default None: no gate); without targets the cluster loss is 0.
- **Masks and padding.** Every function takes explicit bool masks; padded points, and points without a
  prediction (the model's ``aux['inside0']`` False), never enter a sum or a normaliser. SeFlow's losses see the
  non-ground points of the grid: pass ``valid0 = inside0`` of a model run on non-ground points.

Every function is per example (no batch axis: vmap over the batch), pure, jittable with static shapes (the
string / int options static), computes in float32 (at least) and has finite gradients everywhere: norms are
``sqrt`` of a guarded square, divisions are guarded, the Kabsch fits use :func:`bevjax.geometry.kabsch.kabsch`
(its safe custom JVP).

Dimension letters: ``n`` points of sweep 0, ``m`` of sweep 1, ``s`` instance slots, ``k`` neighbours per
point, ``c`` clusters, ``p`` sampled foreground points.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from bevjax.geometry.kabsch import DEFAULT_EPS, kabsch, rigid_residual
from bevjax.ops.neighbors import NN_QUERY_BLOCK, NN_REFERENCE_BLOCK, chamfer_distances, knn, nearest_neighbor

# The authors' settings (YQChen8/SemanticFlow src/lossfuncs.py, KTH-RPL/SeFlow src/lossfuncs.py).
TRUNCATE = 2.0  # metres: TRUNCATED_DIST = 4 on squared distances
SEPARATION_DISTANCE = 6.0  # metres: ForegroundConsistencyLoss(distance_threshold=6.0)
SEPARATION_POINTS = 1024  # ForegroundConsistencyLoss(max_points=1024)
# (neighbours, radius in metres, weight) of the smoothness terms: 3 KnnLoss(k=32, radius=1) + BallQLoss(k=64, 2).
SMOOTH_TERMS = ((32, 1.0, 3.0), (64, 2.0, 1.0))
BACKGROUND_SLOT = 0  # the authors' background: slot 0 of the softmax (label 0 = not dynamic)
CLUSTER_TARGETS = ("rigid", "farthest")


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of :func:`semanticflow_loss`, the authors' defaults (SemanticFlow README training command).

    Static (plain floats): close over them or mark them static under jit. :data:`AUTHOR_TERMS` names the
    authors' term of each field.
    """

    chamfer: float = 1.0
    static_flow: float = 1.0
    dynamic_chamfer: float = 1.0
    cluster: float = 1.0
    rigid: float = 1.0
    smooth: float = 0.5
    instance: float = 0.0
    focal: float = 0.1
    separation: float = 5.0


# Our term (LossWeights field, key of semanticflow_loss's terms) -> the authors' ``seflowLoss`` key.
AUTHOR_TERMS = {
    "chamfer": "chamfer_dis",
    "static_flow": "static_flow_loss",
    "dynamic_chamfer": "dynamic_chamfer_dis",
    "cluster": "cluster_based_pc0pc1",
    "rigid": "rigid_loss",
    "smooth": "smooth_loss",
    "instance": "mask_loss",
    "focal": "bf_mask_loss",
    "separation": "fg_consistent",
}


# ------------------------------------------------------------------------------------------------ helpers


def _float(x) -> jax.Array:
    """``x`` as an array of at least float32."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _bool(x, n: int, name: str) -> jax.Array:
    """``x`` as bool [n] (None: all True)."""
    if x is None:
        return jnp.ones((n,), bool)
    x = jnp.asarray(x)
    if x.shape != (n,):
        raise ValueError(f"{name} must be [{n}], got {x.shape}")
    return x.astype(bool)


def _safe_div(num, den) -> jax.Array:
    """``num / den`` where ``den > 0``, else 0; finite gradients either way."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _masked_mean(values, mask) -> jax.Array:
    """``sum_i v_i / |{i: mask_i}|`` over ``mask``; 0 for an empty mask. ``where``: an inf outside stays out."""
    return _safe_div(jnp.where(mask, values, 0.0).sum(), mask.sum().astype(values.dtype))


def _norm(x) -> jax.Array:
    """``|x|`` over the last axis, with gradient 0 (not NaN) at ``x = 0``."""
    sq = jnp.sum(x * x, -1)
    ok = sq > 0
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, sq, 1.0)), 0.0)


def _zero_outside(x, mask) -> jax.Array:
    """``x`` [n, ...] with the rows outside ``mask`` [n] set to 0: no NaN / inf from padding reaches a product
    (whose gradient would be ``0 * nan``)."""
    return jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x, 0.0)


def _check_points(name: str, x, n: int | None = None) -> jax.Array:
    x = _float(x)
    if x.ndim != 2 or x.shape[-1] != 3 or (n is not None and x.shape[0] != n):
        raise ValueError(f"{name} must be [{n if n is not None else 'n'}, 3], got {x.shape}")
    return x


# ------------------------------------------------------------------------------------------- flow losses


def truncated_chamfer(
    moved0,
    pc1,
    valid0=None,
    valid1=None,
    truncate: float | None = TRUNCATE,
    *,
    query_block: int = NN_QUERY_BLOCK,
    reference_block: int = NN_REFERENCE_BLOCK,
) -> jax.Array:
    """SeFlow's truncated Chamfer distance of ``pc0 + flow`` and ``pc1`` (``chamfer_dis``).

    With squared nearest distances ``d0_i = min_j |x'_i - y_j|^2`` (``x' = pc0 + flow``) and ``d1_j`` the other
    way, over valid points only::

        L = mean {d0_i : d0_i <= t^2} + mean {d1_j : d1_j <= t^2}

    Distances beyond ``t`` are left out of both sum and count (SeFlow's truncation), so they give no gradient;
    each mean is 0 when nothing is left. ``truncate=None`` keeps every distance. Gradients reach ``moved0``
    (hence the flow) and ``pc1`` through the nearest neighbour (``chamfer_distances``).

    Args:
      moved0: [n, 3] sweep 0 moved by the flow, ``pc0 + flow``.
      pc1: [m, 3] sweep 1.
      valid0: [n] bool, the points of ``moved0`` that count (None: all); valid1: [m] bool likewise.
      truncate: metres (a float or a traced scalar); None (static) for no truncation.
      query_block, reference_block: block sizes of the neighbour search (static).

    Returns:
      The scalar loss.
    """
    moved0, pc1 = _check_points("moved0", moved0), _check_points("pc1", pc1)
    valid0 = _bool(valid0, moved0.shape[0], "valid0")
    valid1 = _bool(valid1, pc1.shape[0], "valid1")
    cd = chamfer_distances(
        moved0, pc1, valid0, valid1, query_block=query_block, reference_block=reference_block
    )
    keep0, keep1 = cd.index0to1 >= 0, cd.index1to0 >= 0  # n, m: a valid query with a neighbour
    if truncate is not None:
        limit = jnp.square(jnp.asarray(truncate, cd.dist0to1.dtype))  # a float or a traced scalar
        keep0 &= cd.dist0to1 <= limit
        keep1 &= cd.dist1to0 <= limit
    return _masked_mean(cd.dist0to1, keep0) + _masked_mean(cd.dist1to0, keep1)


def static_flow_loss(flow, static_mask) -> jax.Array:
    """``mean_i |f_i|`` over the static points (SeFlow's Eq. 6, ``static_flow_loss``); 0 if there are none.

    Args:
      flow: [n, 3] residual flow (after ego motion).
      static_mask: [n] bool, the valid points not in a dynamic cluster (``valid0 & ~pseudo_dynamic0``).

    Returns:
      The scalar loss.
    """
    flow = _check_points("flow", flow)
    mask = _bool(static_mask, flow.shape[0], "static_mask")
    return _masked_mean(_norm(_zero_outside(flow, mask)), mask)


def dynamic_chamfer(
    moved0,
    pc1,
    dynamic0,
    dynamic1,
    truncate: float | None = TRUNCATE,
    *,
    query_block: int = NN_QUERY_BLOCK,
    reference_block: int = NN_REFERENCE_BLOCK,
) -> jax.Array:
    """Chamfer between the dynamic points of both sweeps (``dynamic_chamfer_dis``).

    :func:`truncated_chamfer` restricted to ``dynamic0`` (moved by the flow) and ``dynamic1``: nearest
    neighbours are searched among the dynamic points only. SeFlow and SemanticFlow truncate this one at 2 m too
    (``truncate_dist=TRUNCATED_DIST``), hence the default; ``truncate=None`` is the untruncated Chamfer
    ``mean_i d0_i + mean_j d1_j``. 0 when either set is empty.

    Args:
      moved0: [n, 3] ``pc0 + flow``.
      pc1: [m, 3] sweep 1.
      dynamic0: [n] bool, valid points of sweep 0 in a dynamic cluster; dynamic1: [m] bool likewise.
      truncate: metres (a float or a traced scalar) or None.
      query_block, reference_block: block sizes (static).

    Returns:
      The scalar loss.
    """
    return truncated_chamfer(
        moved0, pc1, dynamic0, dynamic1, truncate, query_block=query_block, reference_block=reference_block
    )


def farthest_point_flow(
    pc0, pc1, cluster0, dynamic0, dynamic1, valid0=None, valid1=None, *, num_clusters: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """SeFlow's per-cluster target flow (Eq. 8-9): the flow of the cluster's farthest matched point.

    For every dynamic cluster ``c`` of sweep 0, with ``j(i)`` the nearest valid pc1 point of ``pc0_i`` (no flow:
    the raw sweeps) and ``d_i = |pc0_i - pc1_j(i)|^2``::

        i*(c) = argmax {d_i : i in c, pc1_j(i) dynamic}      (ties: the lowest index)
        target_i = pc1_j(i*) - pc0_i*   for every point i of c

    A cluster none of whose points has a dynamic nearest neighbour has no target. No gradient flows through
    the targets. ``cluster_consistency(flow, *farthest_point_flow(...), dynamic0)`` is SeFlow's
    ``cluster_based_pc0pc1``.

    Args:
      pc0: [n, 3] sweep 0 (ego-motion compensated); pc1: [m, 3] sweep 1.
      cluster0: [n] int cluster ids of sweep 0 (``pseudo_cluster0``; negative: none).
      dynamic0: [n] bool, points of sweep 0 in a dynamic cluster; dynamic1: [m] bool, those of sweep 1.
      valid0: [n] bool (None: all); valid1: [m] bool (None: all).
      num_clusters: ids ``>= num_clusters`` are ignored (static); None: ``n`` (every possible id).

    Returns:
      ``(target [n, 3], has_target [n] bool)``; target 0 where ``has_target`` is False.
    """
    pc0, pc1 = _check_points("pc0", pc0), _check_points("pc1", pc1)
    n, m = pc0.shape[0], pc1.shape[0]
    valid0, valid1 = _bool(valid0, n, "valid0"), _bool(valid1, m, "valid1")
    dynamic0, dynamic1 = _bool(dynamic0, n, "dynamic0"), _bool(dynamic1, m, "dynamic1")
    cluster0 = jnp.asarray(cluster0).astype(jnp.int32)
    c = n if num_clusters is None else int(num_clusters)
    pc0, pc1 = lax.stop_gradient(pc0), lax.stop_gradient(pc1)
    dist2, index = nearest_neighbor(pc0, pc1, valid0, valid1)  # n, n
    member = valid0 & dynamic0 & (cluster0 >= 0) & (cluster0 < c)  # n
    seg = jnp.where(member, cluster0, c)  # n: segment c collects everything else (sliced off)
    matched = (index >= 0) & dynamic1[jnp.maximum(index, 0)]  # n: the nearest pc1 point is dynamic
    candidate = member & matched  # n
    score = jnp.where(candidate, dist2, -jnp.inf)  # n
    best = jax.ops.segment_max(score, seg, num_segments=c + 1)  # c+1
    is_best = candidate & (score == best[seg])  # n
    ids = jnp.arange(n, dtype=jnp.int32)
    pick = jax.ops.segment_min(jnp.where(is_best, ids, n), seg, num_segments=c + 1)  # c+1; n: none
    has = pick < n  # c+1
    pick = jnp.minimum(pick, n - 1)  # c+1
    cluster_target = pc1[jnp.maximum(index[pick], 0)] - pc0[pick]  # c+1 3
    has_target = member & has[seg]  # n
    target = jnp.where(has_target[:, None], cluster_target[seg], 0.0)  # n 3
    return target, has_target


def cluster_consistency(flow, pseudo_flow, pseudo_valid, dynamic) -> jax.Array:
    """Each dynamic cluster's points move with their pseudo-label target (``cluster_based_pc0pc1``, Eq. 10-11).

    ::

        L = mean_i |f_i - sg(g_i)|      over the points i with dynamic_i and pseudo_valid_i

    (one mean over the points of all clusters, as SeFlow's Eq. 11; 0 if there are none). ``g`` is the rigid-fit
    pseudo-flow of :mod:`bevjax.flow_labels` (``pseudo_flow0``: ``R c + t - c`` per point, our default) or
    SeFlow's farthest-point flow (:func:`farthest_point_flow`, one vector per cluster).

    Args:
      flow: [n, 3] residual flow.
      pseudo_flow: [n, 3] target residual flow (no gradient flows into it).
      pseudo_valid: [n] bool, where the target exists (``pseudo_flow_valid0``: also True for static points).
      dynamic: [n] bool, valid points in a dynamic cluster (``valid0 & pseudo_dynamic0``).

    Returns:
      The scalar loss.
    """
    flow = _check_points("flow", flow)
    n = flow.shape[0]
    target = lax.stop_gradient(_check_points("pseudo_flow", pseudo_flow, n))
    mask = _bool(pseudo_valid, n, "pseudo_valid") & _bool(dynamic, n, "dynamic")
    return _masked_mean(_norm(_zero_outside(flow - target, mask)), mask)


# -------------------------------------------------------------------------------------- instance losses


def _slot_log_probs(instance_logits, valid, double_softmax: bool) -> tuple[jax.Array, jax.Array]:
    """[n, s] ``log softmax`` of the logits (of ``softmax(logits)`` with ``double_softmax``, the authors'), 0
    logits outside ``valid``; and ``valid`` as bool [n]."""
    z = _float(instance_logits)
    if z.ndim != 2 or z.shape[-1] < 2:
        raise ValueError(f"instance_logits must be [n, s] with s >= 2, got {z.shape}")
    valid = _bool(valid, z.shape[0], "valid")
    z = _zero_outside(z, valid)
    if double_softmax:
        z = jax.nn.softmax(z, axis=-1)
    return jax.nn.log_softmax(z, axis=-1), valid


def _focal(nll, alpha: float, gamma: float) -> jax.Array:
    """``alpha (1 - p_t)^gamma nll`` with ``p_t = exp(-nll)``."""
    return alpha * (-jnp.expm1(-nll)) ** gamma * nll


def background_foreground_focal(
    instance_logits,
    dynamic,
    valid=None,
    *,
    alpha: float = 1.0,
    gamma: float = 2.0,
    background_slot: int = BACKGROUND_SLOT,
    double_softmax: bool = False,
) -> jax.Array:
    """Background / foreground focal loss of the instance head (``bf_mask_loss``, the authors' BinaryFocalLoss).

    The background probability is the softmax probability of slot ``background_slot`` (0, as the authors'),
    the foreground probability the rest, ``1 - p_bg``; the target is foreground exactly for dynamic points::

        p_bg = softmax(z)_0,   y = dynamic
        nll = -(y log(1 - p_bg) + (1 - y) log p_bg),   p_t = exp(-nll)
        L = mean_i alpha (1 - p_t)^gamma nll          over the valid points (0 if none)

    ``log(1 - p_bg)`` is computed as ``logsumexp`` of the other slots' log-probabilities (no cancellation).
    The authors' ``beta`` mix of a background and a foreground term is this one term (module docstring).
    ``double_softmax=True`` applies the softmax to ``softmax(z)``, as the authors' code does to its
    probabilities. ``gamma >= 1`` keeps the gradient finite at ``p_t = 1``.

    Args:
      instance_logits: [n, s] logits of the instance head.
      dynamic: [n] bool, foreground targets (``pseudo_dynamic0``).
      valid: [n] bool, the points that count (None: all).
      alpha, gamma: focal parameters (static).
      background_slot: the slot that means background (static).
      double_softmax: reproduce the authors' second softmax (static).

    Returns:
      The scalar loss.
    """
    log_p, valid = _slot_log_probs(instance_logits, valid, double_softmax)  # n s, n
    n, s = log_p.shape
    bg = int(background_slot) % s
    log_bg = log_p[:, bg]  # n
    log_fg = jax.nn.logsumexp(jnp.concatenate([log_p[:, :bg], log_p[:, bg + 1 :]], -1), axis=-1)  # n
    y = _bool(dynamic, n, "dynamic")
    nll = -jnp.where(y, log_fg, log_bg)  # n
    return _masked_mean(_focal(nll, alpha, gamma), valid)


def instance_targets(cluster0, dynamic0, num_slots: int) -> jax.Array:
    """[n] int32 slot targets of :func:`instance_focal`: the authors' labels with ids ``>= S`` mapped to 0.

    SeFlow's labels are 0 for static points and ``1 + id`` for a dynamic cluster; ours (``pseudo_cluster0``)
    number the dynamic clusters ``0 .. D - 1``, so a dynamic point of cluster ``c`` gets slot ``c + 1`` when
    ``c + 1 < S`` and every other point the background slot 0.
    """
    cluster0 = jnp.asarray(cluster0).astype(jnp.int32)
    dynamic0 = jnp.asarray(dynamic0).astype(bool)
    slot = cluster0 + 1
    return jnp.where(dynamic0 & (cluster0 >= 0) & (slot < num_slots), slot, 0).astype(jnp.int32)


def instance_focal(
    instance_logits,
    slot_target,
    valid=None,
    *,
    alpha: float = 1.0,
    gamma: float = 2.0,
    double_softmax: bool = False,
) -> jax.Array:
    """Multi-class focal cross-entropy of the instance head against slot targets (``mask_loss``, weight 0).

    ::

        nll_i = -log softmax(z_i)_{y_i},   L = mean_i alpha (1 - exp(-nll_i))^gamma nll_i   (valid points)

    Args:
      instance_logits: [n, s] logits.
      slot_target: [n] int in ``[0, s)`` (:func:`instance_targets`).
      valid: [n] bool (None: all).
      alpha, gamma, double_softmax: as :func:`background_foreground_focal` (static).

    Returns:
      The scalar loss.
    """
    log_p, valid = _slot_log_probs(instance_logits, valid, double_softmax)  # n s, n
    s = log_p.shape[1]
    target = jnp.clip(jnp.asarray(slot_target).astype(jnp.int32), 0, s - 1)  # n
    nll = -jnp.take_along_axis(log_p, target[:, None], axis=-1)[:, 0]  # n
    return _masked_mean(_focal(nll, alpha, gamma), valid)


def rigid_consistency(
    pc0, flow, masks, valid=None, *, fit_gradient: bool = False, eps: float = DEFAULT_EPS
) -> jax.Array:
    """The flow of each soft instance should be rigid (``rigid_loss``).

    Per slot ``s`` a weighted Kabsch fit of ``x = pc0`` onto ``y = pc0 + flow`` with the weights ``w_is = v_i
    m_is`` (:func:`bevjax.geometry.kabsch.kabsch`), then the per-point residuals ``r_is = R_s x_i + t_s - y_i``
    (``rigid_residual``) mixed by the masks::

        L = mean_i |sum_s m_is r_is|            over the valid points (0 if none)

    This is the authors' ``mean_i |sum_s m_is T_s(x_i) - y_i|`` for masks that sum to 1 over the slots (a
    softmax); written with residuals it does not depend on where the origin is when they do not. As the
    authors detach the fitted points, the fits get no gradient by default (``fit_gradient=False``): the loss
    pulls the flow towards each slot's rigid motion and moves mask weight to the slots that explain a point
    best. A slot with (near) zero total weight fits the identity and, weighted by ~0, adds nothing.

    Args:
      pc0: [n, 3] sweep 0 (ego-motion compensated).
      flow: [n, 3] residual flow.
      masks: [n, s] soft instance masks, ``softmax(instance_logits)``.
      valid: [n] bool (None: all); invalid points weigh nothing in the fits.
      fit_gradient: differentiate through the fits too (static).
      eps: total weight at or below which a slot's fit is the identity.

    Returns:
      The scalar loss.
    """
    x = _check_points("pc0", pc0)
    n = x.shape[0]
    f = _check_points("flow", flow, n)
    m = _float(masks)
    if m.ndim != 2 or m.shape[0] != n:
        raise ValueError(f"masks must be [{n}, s], got {m.shape}")
    v = _bool(valid, n, "valid")
    x, f, m = _zero_outside(x, v), _zero_outside(f, v), _zero_outside(m, v)  # invalid rows weigh nothing
    y = x + f  # n 3
    w = m.T  # s n
    rotation, translation = kabsch(x[None], y[None], w, eps=eps)  # s 3 3, s 3
    if not fit_gradient:
        rotation, translation = lax.stop_gradient(rotation), lax.stop_gradient(translation)
    residual, _ = rigid_residual(x[None], y[None], w, rotation, translation)  # s n 3
    mixed = jnp.einsum("ns,sni->ni", m, residual, precision=lax.Precision.HIGHEST)  # n 3
    return _masked_mean(_norm(mixed), v)


def mask_smoothness(masks, neighbor_index, valid=None, *, pc0=None, radius: float | None = None) -> jax.Array:
    """Neighbouring points should have similar soft masks (``smooth_loss``'s KnnLoss / BallQLoss).

    With the neighbour lists ``N(i)`` of ``k`` slots (:func:`bevjax.ops.neighbors.knn`; -1: none) and the L1
    distance of the masks (the authors' ``loss_norm=1``)::

        L = mean_i (1 / k) sum_{j in N(i), j valid, |x_i - x_j| <= radius} sum_s |m_is - m_js|

    over the valid points ``i`` (0 if none). Missing neighbours, invalid ones and (with ``radius``) those
    farther than ``radius`` count 0 but stay in the ``1 / k``, as the authors replace them by the point itself.
    Gradients reach both masks of a pair. The authors' lists include the point itself (``knn`` with
    ``exclude_self=False`` reproduces them; it adds 0).

    Args:
      masks: [n, s] soft masks.
      neighbor_index: [n, k] int neighbour indices, -1 for none (``knn(pc0, k, valid)[1]``).
      valid: [n] bool (None: all).
      pc0: [n, 3] the points, needed with ``radius``.
      radius: metres (static), or None for every listed neighbour.

    Returns:
      The scalar loss.
    """
    m = _float(masks)
    if m.ndim != 2:
        raise ValueError(f"masks must be [n, s], got {m.shape}")
    n = m.shape[0]
    index = jnp.asarray(neighbor_index).astype(jnp.int32)
    if index.ndim != 2 or index.shape[0] != n:
        raise ValueError(f"neighbor_index must be [{n}, k], got {index.shape}")
    v = _bool(valid, n, "valid")
    m = _zero_outside(m, v)
    safe = jnp.maximum(index, 0)  # n k
    ok = (index >= 0) & v[safe]  # n k
    if radius is not None:
        if pc0 is None:
            raise ValueError("mask_smoothness: radius needs pc0")
        x = _zero_outside(lax.stop_gradient(_check_points("pc0", pc0, n)), v)
        d2 = jnp.sum((x[:, None, :] - x[safe]) ** 2, -1)  # n k
        ok &= d2 <= float(radius) ** 2
    diff = jnp.abs(m[:, None, :] - m[safe]).sum(-1)  # n k
    per_point = jnp.where(ok, diff, 0.0).sum(-1) / max(index.shape[1], 1)  # n
    return _masked_mean(per_point, v)


def predicted_foreground(instance_logits, valid=None, background_slot: int = BACKGROUND_SLOT) -> jax.Array:
    """[n] bool: valid points whose argmax slot is not the background (the authors' ``fg_consistent`` set)."""
    z = jnp.asarray(instance_logits)
    fg = jnp.argmax(z, axis=-1) != int(background_slot) % z.shape[-1]
    return fg & _bool(valid, z.shape[0], "valid")


def dynamic_mask_separation(
    pc0,
    masks,
    foreground,
    *,
    distance: float = SEPARATION_DISTANCE,
    max_points: int | None = SEPARATION_POINTS,
    key=None,
) -> jax.Array:
    """Far-apart foreground points should be in different slots (``fg_consistent``).

    Over a sample ``P`` of at most ``max_points`` foreground points, with the cosine similarity of their mask
    vectors::

        L = mean {max(cos(m_i, m_j), 0) : i, j in P, |x_i - x_j| > distance}

    (0 without such pairs; the authors return the constant 1.0 there). The authors' foreground is the points
    whose argmax slot is not 0 (:func:`predicted_foreground`), their sample ``randperm``'s first 1024. Here
    ``key`` draws a uniform sample without replacement (``top_k`` of random scores, static shapes); without a
    key the first ``max_points`` foreground points in index order are taken. ``max_points=None`` uses every
    point (an ``[n, n]`` matrix: small sets only). Gradients reach the masks of both points of a pair.

    Args:
      pc0: [n, 3] sweep 0.
      masks: [n, s] soft masks.
      foreground: [n] bool, the valid foreground points.
      distance: metres (static).
      max_points: sample size (static), or None for all points.
      key: a PRNG key for the sample, or None.

    Returns:
      The scalar loss.
    """
    x = lax.stop_gradient(_check_points("pc0", pc0))
    n = x.shape[0]
    m = _float(masks)
    if m.ndim != 2 or m.shape[0] != n:
        raise ValueError(f"masks must be [{n}, s], got {m.shape}")
    fg = _bool(foreground, n, "foreground")
    x, m = _zero_outside(x, fg), _zero_outside(m, fg)
    if max_points is not None and int(max_points) < n:
        if key is None:
            score = jnp.where(fg, -jnp.arange(n, dtype=jnp.float32), -jnp.inf)  # the lowest indices first
        else:
            score = jnp.where(fg, jax.random.uniform(key, (n,)), -jnp.inf)
        top, pick = lax.top_k(score, int(max_points))  # p, p
        x, m, fg = x[pick], m[pick], top > -jnp.inf  # p 3, p s, p
    d2 = sum((x[:, None, c] - x[None, :, c]) ** 2 for c in range(3))  # p p
    far = (d2 > float(distance) ** 2) & fg[:, None] & fg[None, :]  # p p
    unit = m / jnp.sqrt(jnp.maximum(jnp.sum(m * m, -1, keepdims=True), 1e-16))  # p s
    cos = jnp.einsum("is,js->ij", unit, unit, precision=lax.Precision.HIGHEST)  # p p
    return _masked_mean(jnp.maximum(cos, 0.0), far)


# ---------------------------------------------------------------------------------------------- combined


def semanticflow_loss(
    pc0,
    pc1,
    flow,
    instance_logits,
    valid0,
    valid1,
    dynamic0,
    dynamic1,
    cluster0,
    pseudo_flow,
    pseudo_valid,
    neighbor_index=None,
    *,
    weights: LossWeights | None = None,
    truncate: float | None = TRUNCATE,
    dynamic_truncate: float | None = TRUNCATE,
    cluster_target: str = "rigid",
    smooth_terms: tuple = SMOOTH_TERMS,
    separation_distance: float = SEPARATION_DISTANCE,
    separation_points: int | None = SEPARATION_POINTS,
    key=None,
    min_dynamic_points: int | None = None,
    rigid_fit_gradient: bool = False,
    double_softmax: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """All SemanticFlow losses of one example: ``(sum_k w_k L_k, {k: L_k})`` (module docstring).

    The terms, keyed by the fields of :class:`LossWeights` (:data:`AUTHOR_TERMS` gives the authors' names)::

        chamfer          truncated_chamfer(pc0 + flow, pc1, valid0, valid1, truncate)
        static_flow      static_flow_loss(flow, valid0 & ~dynamic0)
        dynamic_chamfer  dynamic_chamfer(pc0 + flow, pc1, dynamic0, dynamic1, dynamic_truncate)
        cluster          cluster_consistency(flow, g, has_g, dynamic0): g = pseudo_flow ('rigid') or
                         farthest_point_flow(...) ('farthest')
        rigid            rigid_consistency(pc0, flow, softmax(logits), valid0)
        smooth           sum over (k, r, w) in smooth_terms of w mask_smoothness(first k neighbours, radius r)
        instance         instance_focal(logits, instance_targets(cluster0, dynamic0, S), valid0)
        focal            background_foreground_focal(logits, dynamic0, valid0)
        separation       dynamic_mask_separation(pc0, softmax(logits), predicted_foreground(logits, valid0))

    ``dynamic0`` / ``dynamic1`` / ``pseudo_valid`` must already be restricted to valid points (AND them with
    ``valid0`` / ``valid1``). Every term is computed, whatever its weight, so that all can be logged.

    Args:
      pc0: [n, 3] sweep 0, ego-motion compensated; pc1: [m, 3] sweep 1.
      flow: [n, 3] predicted residual flow; instance_logits: [n, s] (the model's outputs, per example).
      valid0: [n] bool, the points with a prediction (``aux['inside0']``); valid1: [m] bool.
      dynamic0: [n] bool (``pseudo_dynamic0 & valid0``); dynamic1: [m] bool (``pseudo_dynamic1 & valid1``).
      cluster0: [n] int (``pseudo_cluster0``; -1: none).
      pseudo_flow: [n, 3] (``pseudo_flow0``); pseudo_valid: [n] bool (``pseudo_flow_valid0 & valid0``).
      neighbor_index: [n, k] kNN of pc0 (``knn(pc0, k, valid0)[1]``); None: computed here with
        ``k = max k of smooth_terms`` and the point itself included, the authors' lists (O(n^2) work per call).
        Each smoothness term uses the first ``min(k, columns)`` neighbours.
      weights: :class:`LossWeights` (None: the authors' defaults); static.
      truncate: the Chamfer truncation in metres; dynamic_truncate: the dynamic Chamfer's (None: none).
      cluster_target: ``'rigid'`` (pseudo-flow of the rigid fits, default) or ``'farthest'`` (SeFlow).
      smooth_terms: ``((k, radius, weight), ...)`` of the smoothness (static; default the authors' 3 KnnLoss
        + BallQLoss, ``((32, 1.0, 3.0), (64, 2.0, 1.0))``).
      separation_distance, separation_points, key: :func:`dynamic_mask_separation`'s ``distance``,
        ``max_points`` and ``key`` (pass a per-example key for the authors' random sample).
      min_dynamic_points: None (no gate, default), or the dynamic Chamfer and the cluster term are 0 unless
        both sweeps have more dynamic points than this (the authors: 256); an int or a traced scalar.
      rigid_fit_gradient: :func:`rigid_consistency`'s ``fit_gradient`` (static).
      double_softmax: the focal losses' ``double_softmax`` (static).

    Returns:
      ``(total, terms)``: scalars.
    """
    weights = LossWeights() if weights is None else weights
    if cluster_target not in CLUSTER_TARGETS:
        raise ValueError(f"cluster_target={cluster_target!r}: choose one of {CLUSTER_TARGETS}")
    pc0, pc1 = _check_points("pc0", pc0), _check_points("pc1", pc1)
    n, m = pc0.shape[0], pc1.shape[0]
    flow = _check_points("flow", flow, n)
    logits = _float(instance_logits)
    if logits.ndim != 2 or logits.shape[0] != n:
        raise ValueError(f"instance_logits must be [{n}, s], got {logits.shape}")
    valid0, valid1 = _bool(valid0, n, "valid0"), _bool(valid1, m, "valid1")
    dynamic0, dynamic1 = _bool(dynamic0, n, "dynamic0"), _bool(dynamic1, m, "dynamic1")
    pseudo_valid = _bool(pseudo_valid, n, "pseudo_valid")
    masks = jax.nn.softmax(logits, axis=-1)  # n s
    moved0 = pc0 + flow  # n 3

    terms = {}
    terms["chamfer"] = truncated_chamfer(moved0, pc1, valid0, valid1, truncate)
    terms["static_flow"] = static_flow_loss(flow, valid0 & ~dynamic0)
    terms["dynamic_chamfer"] = dynamic_chamfer(moved0, pc1, dynamic0, dynamic1, dynamic_truncate)
    if cluster_target == "rigid":
        target, has_target = pseudo_flow, pseudo_valid
    else:
        target, has_target = farthest_point_flow(pc0, pc1, cluster0, dynamic0, dynamic1, valid0, valid1)
    terms["cluster"] = cluster_consistency(flow, target, has_target, dynamic0)
    if min_dynamic_points is not None:
        gate = (dynamic0.sum() > min_dynamic_points) & (dynamic1.sum() > min_dynamic_points)
        terms["dynamic_chamfer"] = jnp.where(gate, terms["dynamic_chamfer"], 0.0)
        terms["cluster"] = jnp.where(gate, terms["cluster"], 0.0)
    terms["rigid"] = rigid_consistency(pc0, flow, masks, valid0, fit_gradient=rigid_fit_gradient)

    if neighbor_index is None:
        k_max = max(int(k) for k, _, _ in smooth_terms) if smooth_terms else 1
        _, neighbor_index = knn(lax.stop_gradient(pc0), k_max, valid0, exclude_self=False)
    neighbor_index = jnp.asarray(neighbor_index)
    smooth = jnp.zeros((), masks.dtype)
    for k, radius, weight in smooth_terms:
        columns = neighbor_index[:, : min(int(k), neighbor_index.shape[1])]  # n k'
        smooth = smooth + float(weight) * mask_smoothness(masks, columns, valid0, pc0=pc0, radius=radius)
    terms["smooth"] = smooth

    terms["instance"] = instance_focal(
        logits, instance_targets(cluster0, dynamic0, logits.shape[-1]), valid0, double_softmax=double_softmax
    )
    terms["focal"] = background_foreground_focal(logits, dynamic0, valid0, double_softmax=double_softmax)
    terms["separation"] = dynamic_mask_separation(
        pc0,
        masks,
        predicted_foreground(logits, valid0),
        distance=separation_distance,
        max_points=separation_points,
        key=key,
    )
    total = sum(float(getattr(weights, name)) * value for name, value in terms.items())
    return total, terms
