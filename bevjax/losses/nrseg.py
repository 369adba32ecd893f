"""The NRSeg losses (noise-resilient BEV segmentation; ``shared/METHODS.md`` section 2).

One training step of NRSeg adds, per source batch ``src`` and target batch ``tgt``::

    0.5 pv_dice(src) + 0.5 pv_dice(tgt, pseudo_labels(teacher))               perspective decoder
    + dice(src, w) + 0.5 edl_mse(src, w)                                       BEV heads (BiDPP), PGCM weight w
    + consistency_weight(t) (mse(sigmoid) + mse(EDL p) + 0.1 mse(BEV features))   Mean Teacher, target images
    + 0.1 temporal_l1(src, tgt) [+ 0.1 depth_cross_entropy where depth exists]

Every function here is pure and jit-able with static shapes; string options (``relax``, ``kind``,
``bin_rule``) and ``dbound`` / ``num_classes`` are static (close over them or mark them static). Inputs of any
float dtype are computed in at least float32, and every division is guarded, so empty masks, empty classes and
``alpha = 1`` give finite values and gradients.

Dimension letters: ``b`` batch, ``n`` cameras, ``h w`` image (or feature) pixels, ``x y`` BEV grid, ``k``
classes, ``d`` depth bins, ``c`` the classes of one Dirichlet (a K-class Dirichlet, or 2 for the two-class Beta
of one HLSE cluster). ``...`` is any number of axes. A ``mask`` is aligned on the *leading* axes of what it
masks (``[b, x, y]`` masks ``[b, x, y, k]``) and broadcast over the rest; ``weights`` are per sample, ``[b]``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma, gammaln

# Logits are clipped to [-_EXP_CLIP, _EXP_CLIP] before exp evidence (as Sensoy et al.'s reference code does),
# so alpha stays below e^10 + 1 ~ 2.2e4 and exp never overflows.
_EXP_CLIP = 10.0
# From this argument on, lgamma and digamma remainders come from their asymptotic series (dirichlet_kl_to_uniform).
_ASYMPTOTIC_FROM = 8.0
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

DICE_RELAX = ("denominator", "scale")
EVIDENCE_KINDS = ("softplus", "exp", "relu")
DEPTH_BIN_RULES = ("nearest", "floor")


def _float(x) -> jax.Array:
    """``x`` as an array of at least float32 (bf16 / f16 / int / bool are upcast; float64 stays)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _leading(mask, shape: tuple[int, ...]) -> jax.Array:
    """``mask`` [b, ...] (a prefix of ``shape``) as float, broadcast over the trailing axes of ``shape``."""
    mask = _float(mask)
    if mask.ndim > len(shape):
        raise ValueError(f"mask {mask.shape} has more axes than {shape}")
    mask = mask.reshape(mask.shape + (1,) * (len(shape) - mask.ndim))  # b ... 1 1
    return jnp.broadcast_to(mask, shape)  # raises if the leading axes disagree


def _safe_div(num, den, empty=0.0) -> jax.Array:
    """``num / den`` where ``den > 0``, else ``empty``; finite gradients either way."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), empty)


def _masked_mean(values, mask=None, weights=None) -> jax.Array:
    """``sum_i m_i w_b(i) v_i / sum_i m_i`` over every element ``i`` of ``values`` [b, ...]; 0 if ``sum m = 0``.

    ``mask`` [b, ...] aligned on the leading axes (None: all ones), ``weights`` [b] per sample (None: ones). The
    weights scale each sample's terms; they do not enter the normaliser.
    """
    values = _float(values)
    if weights is not None:
        values = values * _leading(weights, values.shape)
    if mask is None:
        return values.mean()
    mask = _leading(mask, values.shape)
    # where, not a product: a non-finite value under a 0 mask (e.g. logits of an ignored pixel) stays out.
    return _safe_div(jnp.where(mask > 0, values * mask, 0.0).sum(), mask.sum())


# --------------------------------------------------------------------------------------------------- Dice


def dice_loss(
    probs, targets, weights=None, mask=None, eps: float = 1.0, relax: str = "denominator"
) -> jax.Array:
    """Soft Dice loss per sample and class, averaged over classes and samples, with the PGCM sample weight.

    Per sample ``b`` and class ``k``, with sums over the cells (every axis between ``b`` and ``k``) where
    ``mask`` is 1::

        I = sum p y        (prediction on the labels)     Y = sum y
        O = sum p (1 - y)  (prediction outside the labels; sum p = I + O)

        relax='denominator':  L_bk = 1 - (2 I + eps) / (w_b O + I + Y + eps),   L_b = mean_k L_bk
        relax='scale':        L_bk = 1 - (2 I + eps) / (O + I + Y + eps),       L_b = w_b mean_k L_bk

        loss = mean_b L_b

    With ``w = 1`` both are the plain Dice ``1 - (2 sum p y + eps) / (sum p + sum y + eps)``.

    Why ``'denominator'`` is the default: NRSeg's PGCM score ``R`` (hence ``w``) says how well a synthetic
    image agrees with its labels, and the paper uses it to modulate the Dice *denominator*, relaxing the penalty
    on unlabelled regions as ``R`` falls. In a noisy synthetic frame the image may show a class where the label
    has none, so predicting it there (``O``) should cost less: scaling ``O`` by ``w`` does exactly that. At
    ``w = 0`` prediction outside the labels is free while missing labelled cells still costs (``I`` and ``Y``
    remain): the labels still say where the class is, no longer where it is not. ``'scale'`` instead multiplies
    the sample's whole loss by ``w`` (METHODS' ``w * Dice``): a noisy sample teaches less, in both directions.

    An empty class (``Y = 0``) with no prediction gives ``L = 0`` (for ``eps > 0``, and by the same limit when
    ``eps = 0``), never 0/0.

    Args:
      probs: [b, ..., k] predicted probabilities, e.g. sigmoid of the BEV logits [b, x, y, k].
      targets: [b, ..., k] labels in {0, 1} (soft labels in [0, 1] work too).
      weights: [b] PGCM sample weights ``w = 1 if R > tau else R``; None for all ones (real samples).
      mask: [b, ...] or [b, ..., k] cells to count (e.g. camera visibility [b, x, y]); None for all.
      eps: the smoothing term, added to numerator and denominator.
      relax: ``'denominator'`` or ``'scale'`` (static), how ``w`` enters.

    Returns:
      The scalar loss (float32 for float32 or lower-precision inputs).
    """
    if relax not in DICE_RELAX:
        raise ValueError(f"relax={relax!r}: choose one of {DICE_RELAX}")
    probs, targets = _float(probs), _float(targets)
    if probs.shape != targets.shape or probs.ndim < 2:
        raise ValueError(f"probs {probs.shape} and targets {targets.shape} must both be [b, ..., k]")
    batch = probs.shape[0]
    cells = tuple(range(1, probs.ndim - 1))
    m = jnp.ones_like(probs) if mask is None else _leading(mask, probs.shape)  # b ... k
    pm = jnp.where(m > 0, probs * m, 0.0)  # b ... k
    inter = (pm * targets).sum(cells)  # b k
    outside = (pm * (1.0 - targets)).sum(cells)  # b k, summed directly: sum p - I would cancel
    labelled = jnp.where(m > 0, targets * m, 0.0).sum(cells)  # b k
    w = jnp.ones((batch,), probs.dtype) if weights is None else _float(weights).reshape(batch)  # b
    if relax == "denominator":
        den = w[:, None] * outside + inter + labelled + eps  # b k
    else:
        den = outside + inter + labelled + eps  # b k
    per_class = 1.0 - _safe_div(2.0 * inter + eps, den, empty=1.0)  # b k
    per_sample = per_class.mean(-1)  # b
    if relax == "scale":
        per_sample = w * per_sample
    return per_sample.mean()


def pv_dice_loss(
    pv_logits, pv_labels, num_classes: int, ignore: int | None = None, eps: float = 1.0
) -> jax.Array:
    """Multi-class softmax Dice of the perspective (PV) decoder, against labels or teacher pseudo-labels.

    ``p = softmax(z)`` over the ``k`` classes, ``y = one_hot(label)``; then the plain :func:`dice_loss` (sums per
    sample over all cameras and pixels, mean over classes and samples)::

        L = mean_b mean_k [1 - (2 sum_{n h w} p y + eps) / (sum_{n h w} p + sum_{n h w} y + eps)]

    over the pixels whose label is in ``[0, k)`` and is not ``ignore`` (pseudo-labels below the confidence
    threshold, see :func:`pseudo_labels`, are out of range and so left out in either case).

    Args:
      pv_logits: [b, n, h, w, k] PV decoder logits (any [b, ..., k]).
      pv_labels: [b, n, h, w] integer labels (``schema.pv_labels`` or :func:`pseudo_labels`).
      num_classes: ``k``; must match the logits' last axis (static).
      ignore: a label value to leave out (e.g. 255), besides those outside ``[0, k)``.
      eps: the Dice smoothing term.

    Returns:
      The scalar loss.
    """
    pv_logits = _float(pv_logits)
    if pv_logits.shape[-1] != num_classes or pv_logits.shape[:-1] != jnp.shape(pv_labels):
        raise ValueError(
            f"pv_logits {pv_logits.shape} must be the labels' shape {jnp.shape(pv_labels)} + ({num_classes},)"
        )
    labels = jnp.asarray(pv_labels).astype(jnp.int32)  # b n h w
    valid = (labels >= 0) & (labels < num_classes)  # b n h w
    if ignore is not None:
        valid &= labels != ignore
    probs = jax.nn.softmax(pv_logits, axis=-1)  # b n h w k
    targets = jax.nn.one_hot(labels, num_classes, dtype=probs.dtype)  # b n h w k; zeros out of range
    return dice_loss(probs, targets, mask=valid, eps=eps)


def pseudo_labels(teacher_logits, threshold: float | None = None, ignore: int = 255) -> jax.Array:
    """Teacher pseudo-labels ``argmax_k z``; where ``max_k softmax(z) < threshold`` the label is ``ignore``.

    Args:
      teacher_logits: [b, n, h, w, k] (any [..., k]); no gradient flows through the labels.
      threshold: confidence below which a pixel is ignored; None keeps every pixel.
      ignore: the label of ignored pixels (255 by default: outside ``[0, k)``, so :func:`pv_dice_loss` drops
        them whatever its ``ignore``).

    Returns:
      int32 [b, n, h, w] labels.
    """
    logits = jax.lax.stop_gradient(_float(teacher_logits))
    labels = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # b n h w
    if threshold is None:
        return labels
    confidence = jax.nn.softmax(logits, axis=-1).max(-1)  # b n h w
    return jnp.where(confidence >= threshold, labels, jnp.int32(ignore))


# --------------------------------------------------------------------------------- Evidential (EDL) head


def evidence(logits, kind: str = "softplus") -> jax.Array:
    """Non-negative evidence ``e`` from the evidential head's logits ``z`` (``alpha = e + 1``).

    ``'softplus'``: ``e = log(1 + exp(z))`` (NRSeg's default); ``'exp'``: ``e = exp(clip(z, -10, 10))`` (the clip
    keeps ``alpha <= e^10 + 1``); ``'relu'``: ``e = max(z, 0)``. Shape-preserving, [...] -> [...].
    """
    logits = _float(logits)
    if kind == "softplus":
        return jax.nn.softplus(logits)
    if kind == "exp":
        return jnp.exp(jnp.clip(logits, -_EXP_CLIP, _EXP_CLIP))
    if kind == "relu":
        return jax.nn.relu(logits)
    raise ValueError(f"kind={kind!r}: choose one of {EVIDENCE_KINDS}")


def dirichlet_probs(alpha, axis: int = -1) -> tuple[jax.Array, jax.Array]:
    """Expected probabilities ``p = alpha / S`` and uncertainty ``u = c / S`` of ``Dir(alpha)``, ``S = sum alpha``.

    Args:
      alpha: [..., c] Dirichlet parameters (``axis`` holds the ``c`` classes).
      axis: the class axis.

    Returns:
      ``p`` with the shape of ``alpha``, and ``u`` with ``axis`` removed.
    """
    alpha = _float(alpha)
    total = alpha.sum(axis, keepdims=True)
    return alpha / total, jnp.squeeze(alpha.shape[axis] / total, axis)


def _stirling_remainder(x) -> jax.Array:
    """``r(x) = lgamma(x) - [(x - 1/2) log x - x + log(2 pi) / 2]`` for ``x > 0``.

    For ``x >= 8`` from its series ``1/(12x) - 1/(360x^3) + 1/(1260x^5) - 1/(1680x^7)`` (truncation < 1e-11),
    below 8 directly (values of order 1, no cancellation). Each branch sees a clamped argument, so the branch not
    taken stays finite, and so do its gradients.
    """
    large = x >= _ASYMPTOTIC_FROM
    xs = jnp.where(large, x, _ASYMPTOTIC_FROM)
    r = 1.0 / xs
    r2 = r * r
    series = r * (1 / 12 - r2 * (1 / 360 - r2 * (1 / 1260 - r2 / 1680)))
    xd = jnp.where(large, 1.0, x)
    direct = gammaln(xd) - ((xd - 0.5) * jnp.log(xd) - xd + _HALF_LOG_2PI)
    return jnp.where(large, series, direct)


def _digamma_remainder(x) -> jax.Array:
    """``g(x) = digamma(x) - log(x)`` for ``x > 0``.

    For ``x >= 8`` from its series ``-1/(2x) - 1/(12x^2) + 1/(120x^4) - 1/(252x^6) + 1/(240x^8) - 1/(132x^10)``
    (truncation < 1e-12), below 8 directly; branches clamped as in :func:`_stirling_remainder`.
    """
    large = x >= _ASYMPTOTIC_FROM
    xs = jnp.where(large, x, _ASYMPTOTIC_FROM)
    r = 1.0 / xs
    r2 = r * r
    series = -0.5 * r - r2 * (1 / 12 - r2 * (1 / 120 - r2 * (1 / 252 - r2 * (1 / 240 - r2 / 132))))
    xd = jnp.where(large, 1.0, x)
    direct = digamma(xd) - jnp.log(xd)
    return jnp.where(large, series, direct)


def dirichlet_kl_to_uniform(alpha, axis: int = -1) -> jax.Array:
    """``KL(Dir(alpha) || Dir(1))``, closed form, over the ``c`` classes on ``axis``.

    ::

        KL = lgamma(S) - lgamma(c) - sum_j lgamma(alpha_j) + sum_j (alpha_j - 1) (digamma(alpha_j) - digamma(S))

    with ``S = sum_j alpha_j`` (the regulariser of Sensoy et al. 2018). Evaluated in float32 as written,
    terms of size ``alpha log alpha`` (~1e5 at ``alpha = 1e4``) cancel to a KL of ~5 and leave errors of 1e-2.
    So with ``lgamma(x) = (x - 1/2) log x - x + log(2 pi)/2 + r(x)`` and ``digamma(x) = log x + g(x)``
    (:func:`_stirling_remainder`, :func:`_digamma_remainder`, both small) the large terms are cancelled
    analytically (``sum_j alpha_j = S``)::

        KL = -1/2 sum_j log(alpha_j / S) + (c - 1)/2 (log S - log 2 pi) - lgamma(c)
             + r(S) - sum_j r(alpha_j) + sum_j (alpha_j - 1) (g(alpha_j) - g(S))

    which is exact and keeps every term of order ``log alpha``: absolute error against float64 below 1e-5 for
    ``1 <= alpha <= 2e4``, ``c <= 6``. The gradient ``(alpha_j - 1) trigamma(alpha_j) - (S - c) trigamma(S)`` is
    finite for every ``alpha > 0`` and ~0 (1e-7) at ``alpha = 1``.

    Args:
      alpha: [..., c] Dirichlet parameters, ``alpha > 0`` (``>= 1`` in EDL).
      axis: the class axis.

    Returns:
      [...] the KL (``alpha`` without ``axis``).
    """
    alpha = jnp.moveaxis(_float(alpha), axis, -1)  # ... c
    classes = alpha.shape[-1]
    total = alpha.sum(-1)  # ...
    log_ratio = jnp.log(alpha / total[..., None])  # ... c
    spread = (alpha - 1.0) * (_digamma_remainder(alpha) - _digamma_remainder(total)[..., None])  # ... c
    return (
        -0.5 * log_ratio.sum(-1)
        + 0.5 * (classes - 1) * (jnp.log(total) - 2.0 * _HALF_LOG_2PI)
        - math.lgamma(classes)
        + _stirling_remainder(total)
        - _stirling_remainder(alpha).sum(-1)
        + spread.sum(-1)
    )


def edl_kl_weight(step, anneal_steps) -> jax.Array:
    """The KL annealing factor ``lambda_t = min(1, t / T)`` (0 for ``t <= 0``; 1 when ``T <= 0``), float32."""
    step = _float(step)
    anneal_steps = _float(anneal_steps)
    return jnp.clip(_safe_div(step, anneal_steps, empty=1.0), 0.0, 1.0)


def edl_mse_loss(alpha, y, step, anneal_steps, mask=None, weights=None, axis: int = -1) -> jax.Array:
    """Evidential loss, MSE form (Sensoy et al. 2018: expected squared error + the annealed KL regulariser).

    Per Dirichlet (one per cell, or per cell and HLSE cluster), with ``S = sum_j alpha_j``, ``p = alpha / S``::

        l = sum_j [(y_j - p_j)^2 + p_j (1 - p_j) / (S + 1)] + lambda_t KL(Dir(alpha~) || Dir(1))
        alpha~ = y + (1 - y) alpha          (the evidence for the true class removed)
        lambda_t = min(1, step / anneal_steps)

        loss = sum_i m_i w_b(i) l_i / sum_i m_i       (over the Dirichlets i; 0 if the mask is empty)

    The per-sample weight ``w_b`` (PGCM) scales that sample's terms and does not enter the normaliser.

    Two uses: a K-class Dirichlet per cell, ``alpha`` [b, x, y, c] with ``c = K``; or HLSE clusters, each a
    two-class Beta (class present / absent), ``alpha`` [b, x, y, k, 2] with one-hot ``y`` [b, x, y, k, 2] and
    ``mask`` [b, x, y, k] leaving out clusters that receive no evidence at a cell (a road sub-class outside
    the road).

    Args:
      alpha: [..., c] Dirichlet parameters, ``alpha = evidence(z) + 1``.
      y: [..., c] one-hot targets (float or bool), same shape as ``alpha``.
      step: the training step (int or traced scalar).
      anneal_steps: steps to ramp the KL weight from 0 to 1.
      mask: [b, ...] aligned on the leading axes of ``alpha`` without ``axis``; None for all.
      weights: [b] per-sample weights; None for all ones.
      axis: the class axis ``c`` of ``alpha`` and ``y``.

    Returns:
      The scalar loss.
    """
    alpha, y = _float(alpha), _float(y)
    if alpha.shape != y.shape:
        raise ValueError(f"alpha {alpha.shape} and y {y.shape} must have the same shape")
    total = alpha.sum(axis, keepdims=True)  # ... 1
    p = alpha / total  # ... c
    fit = ((y - p) ** 2 + p * (1.0 - p) / (total + 1.0)).sum(axis)  # ...
    kl = dirichlet_kl_to_uniform(y + (1.0 - y) * alpha, axis=axis)  # ...
    per = fit + edl_kl_weight(step, anneal_steps) * kl  # ...
    return _masked_mean(per, mask, weights)


# ------------------------------------------------------------------------------------ Mean Teacher


def consistency_loss(student, teacher, mask=None) -> jax.Array:
    """Mean Teacher consistency: ``mean (s - sg(t))^2`` over all elements (or those where ``mask`` is 1).

    ``sg`` is ``stop_gradient``: only the student learns. One function for the three NRSeg consistencies: of
    sigmoid probabilities [b, x, y, k], of EDL probabilities (:func:`dirichlet_probs`) and of BEV features
    [b, x, y, c].

    Args:
      student: [b, ...] student outputs.
      teacher: [b, ...] teacher outputs, same shape.
      mask: [b, ...] aligned on the leading axes; None for all.

    Returns:
      The scalar loss (0 for an empty mask).
    """
    student, teacher = _float(student), jax.lax.stop_gradient(_float(teacher))
    if student.shape != teacher.shape:
        raise ValueError(f"student {student.shape} and teacher {teacher.shape} must have the same shape")
    return _masked_mean((student - teacher) ** 2, mask)


def consistency_weight(step, ramp_steps, low: float = 0.002, high: float = 0.1) -> jax.Array:
    """The consistency ramp ``min(low + high exp(-5 (1 - min(t, U) / U)^2), high)`` (Laine and Aila 2017's sigmoid
    ramp-up as NRSeg uses it), float32.

    ``t`` is clipped at 0; ``U <= 0`` gives the end value ``high``. With the defaults: ``0.002674`` at ``t = 0``,
    rising to the cap ``0.1`` where ``0.1 exp(...) >= 0.098``, i.e. from ``t ~ 0.94 U`` on.
    """
    t, ramp = _float(step), _float(ramp_steps)
    progress = jnp.clip(_safe_div(t, ramp, empty=1.0), 0.0, 1.0)  # min(t, U) / U
    return jnp.minimum(low + high * jnp.exp(-5.0 * (1.0 - progress) ** 2), high)


# ------------------------------------------------------------------------------- temporal fusion, depth


def temporal_l1(warped_prev, current, valid, sequence_start=None) -> jax.Array:
    """Auxiliary L1 of streaming fusion: ``mean |warp(h_{t-1}) - h_t|`` over the valid cells and all channels.

    ::

        L = sum_{b x y c} v_bxy |f'_bxyc - f_bxyc| / (C sum_{b x y} v_bxy),   v = valid (1 - start_b)

    0 when nothing is valid. Gradients flow into both features (wrap one in ``stop_gradient`` if wanted).

    Args:
      warped_prev: [b, x, y, c] the previous frame's fused BEV features warped into the current ego frame.
      current: [b, x, y, c] the current BEV features.
      valid: [b, x, y] cells the warp filled from inside the previous grid (bool or {0, 1}).
      sequence_start: [b] True for frames that start a sequence (no previous frame: they contribute
        nothing); None when ``valid`` already says so.

    Returns:
      The scalar loss.
    """
    warped_prev, current = _float(warped_prev), _float(current)
    if warped_prev.shape != current.shape:
        raise ValueError(
            f"warped_prev {warped_prev.shape} and current {current.shape} must have the same shape"
        )
    v = _float(valid)  # b x y
    if sequence_start is not None:
        v = v * (1.0 - _leading(sequence_start, v.shape))  # b x y
    return _masked_mean(jnp.abs(warped_prev - current), v)


def depth_bin_index(depth_m, dbound: tuple[float, float, float], bin_rule: str = "nearest"):
    """The LSS depth bin of each depth, and whether it falls inside the bins.

    The bins are the frustum depths ``d_i = arange(min, max, step)[i]`` (``create_frustum``), ``D`` of them,
    with ``q = (z - min) / step``:

    - ``'nearest'`` (default): bin ``i`` holds depths nearest to ``d_i``, ``[d_i - step/2, d_i + step/2)``,
      so ``i = floor(q + 1/2)``, valid for ``-1/2 <= q < D - 1/2``: a point is supervised at the frustum
      point it would be lifted to.
    - ``'floor'``: bin ``i`` is ``[d_i, d_i + step)``, ``i = floor(q)``, valid for ``0 <= q < D`` (BEVDepth's
      ``get_downsampled_gt_depth``).

    ``z <= 0`` (no depth) and non-finite depths are invalid.

    Args:
      depth_m: [...] depths in metres (camera z).
      dbound: (min, max, step) of the bins, static.
      bin_rule: ``'nearest'`` or ``'floor'``.

    Returns:
      ``(index int32 [...], valid bool [...])``; invalid entries have index 0.
    """
    if bin_rule not in DEPTH_BIN_RULES:
        raise ValueError(f"bin_rule={bin_rule!r}: choose one of {DEPTH_BIN_RULES}")
    bins = len(np.arange(*dbound))
    if bins == 0:
        raise ValueError(f"dbound={dbound} gives no depth bin")
    lo, _, step = (float(v) for v in dbound)
    depth = _float(depth_m)
    q = (depth - lo) / step  # ...
    if bin_rule == "nearest":
        q = q + 0.5
    # Decide validity on the float coordinate (NaN fails), before any int cast.
    valid = (depth > 0) & (q >= 0) & (q < bins)  # ...
    index = jnp.where(valid, jnp.floor(q), 0).astype(jnp.int32)  # ...
    return index, valid


def depth_cross_entropy(
    depth_logits, depth_m, dbound: tuple[float, float, float], bin_rule: str = "nearest"
) -> jax.Array:
    """Depth supervision of the LSS depth distribution: cross-entropy over the ``D`` bins where depth exists.

    ::

        L = sum_{pixels} v (logsumexp_d z_d - z_{i(depth)}) / sum_{pixels} v

    with ``i(depth)``, ``v`` from :func:`depth_bin_index` (``v = 0`` where there is no depth or it falls outside
    the bins); 0 when no pixel is valid.

    Args:
      depth_logits: [b, n, h, w, d] depth logits at feature resolution (the LSS camera encoder's first ``D``
        channels, before the softmax); any [..., d].
      depth_m: [b, n, h, w] depth in metres at the same resolution, 0 for none (see :func:`downsample_depth`).
      dbound: (min, max, step) of the bins, static; ``D = len(arange(*dbound))`` must match the logits.
      bin_rule: ``'nearest'`` or ``'floor'``, see :func:`depth_bin_index`.

    Returns:
      The scalar loss.
    """
    depth_logits = _float(depth_logits)
    bins = len(np.arange(*dbound))
    if depth_logits.shape[-1] != bins or depth_logits.shape[:-1] != jnp.shape(depth_m):
        raise ValueError(
            f"depth_logits {depth_logits.shape} must be depth {jnp.shape(depth_m)} + ({bins},) for dbound={dbound}"
        )
    index, valid = depth_bin_index(depth_m, dbound, bin_rule)  # b n h w
    log_p = jax.nn.log_softmax(depth_logits, axis=-1)  # b n h w d
    nll = -jnp.take_along_axis(log_p, index[..., None], axis=-1)[..., 0]  # b n h w
    return _masked_mean(nll, valid)


def downsample_depth(depth_m, factor: int) -> jax.Array:
    """Depth at feature resolution: the nearest valid depth in each ``factor x factor`` patch (BEVDepth style).

    ``out[..., i, j] = min {z > 0 in depth[..., i f:(i+1) f, j f:(j+1) f]}``, 0 where the patch has none. The
    LSS frustum puts feature pixel ``j`` at image column ``j (W - 1) / (fw - 1)`` rather than at the patch centre
    ``j f + (f - 1) / 2``; the difference is below one patch and ignored here, as in BEVDepth.

    Args:
      depth_m: [..., h, w] depth in metres, 0 (or non-finite) for none; ``h`` and ``w`` multiples of ``factor``.
      factor: the feature stride (static).

    Returns:
      [..., h / factor, w / factor] depths, dtype of at least float32.
    """
    depth = _float(depth_m)
    *lead, height, width = depth.shape
    if height % factor or width % factor:
        raise ValueError(f"depth {depth.shape}: h and w must be multiples of factor={factor}")
    depth = jnp.where((depth > 0) & jnp.isfinite(depth), depth, jnp.inf)  # ... h w
    patches = depth.reshape(*lead, height // factor, factor, width // factor, factor)  # ... h f w f
    nearest = patches.min(axis=(-3, -1))  # ... h/f w/f
    return jnp.where(jnp.isfinite(nearest), nearest, 0.0)
