"""Uncertainty quality and calibration over a whole split, batch by batch: AUROC of an uncertainty map for
detecting wrong cells, expected calibration error (ECE) and reliability diagrams.

Dimension letters: b batch, x y BEV grid, k classes, m bins; ``r`` is the number of rows of an error histogram
(k per class, 1 per cell). As in :mod:`bevjax.metrics.iou`, each batch is summarised on the device by jittable
statistics of static shape (histograms), which accumulators sum on the host (int64 / float64).

AUROC of uncertainty for wrong cells
------------------------------------
A decision is wrong when the thresholded prediction ``p > threshold`` differs from the label: per class (one
decision per cell and class, uncertainty [b, x, y, k]) or per cell (wrong when any class is wrong, uncertainty
[b, x, y]). Wrong decisions are the positives, scored by their uncertainty ``u`` in [0, 1] (values outside are
clipped); AUROC is the probability that a wrong decision is more uncertain than a right one, ties counting 1/2
(Mann-Whitney).

``u`` is binned to ``m`` bins centred on the grid ``i / (m - 1)``, ``i = round(u (m - 1))`` (clipped to [0, m - 1];
width ``1 / (m - 1)``, default m = 1001: u rounded to 3 decimals). With ``W_i`` wrong and ``R_i`` right decisions in
bin i, ``W = sum W_i``, ``R = sum R_i`` and ``W_{>i} = sum_{i' > i} W_{i'}``, the trapezoid rule on the binned ROC
curve (one point per bin boundary, ties within a bin joined by a straight segment) gives

    ``AUROC = sum_i R_i (W_{>i} + W_i / 2) / (W R)``,

evaluated in exact integer arithmetic and rounded once. Binning error bound: binning is monotone, so a
(wrong, right) pair in different bins is ordered as by the raw scores; only pairs sharing a bin change, from
0, 1/2 or 1 to 1/2. Hence

    ``|AUROC - AUROC_exact| <= sum_i W_i R_i / (2 W R)``,

reported as ``AUROC_bin_error`` (at most ``max_i R_i / (2 R)``). When every score lies on the bin grid, pairs
sharing a bin are true ties and the result is exact (the bound is then loose).

Calibration (ECE)
-----------------
Each class is a binary prediction: predicted label ``p > 0.5``, confidence ``conf = max(p, 1 - p)`` (the
probability of the predicted label), correct when the predicted label equals the label. Confidences fall into
``m`` equal-width bins of [0, 1] (default 15, Guo et al. 2017): bin b holds ``e_b <= conf < e_{b+1}`` with
float32 edges ``e = linspace(0, 1, m + 1)``, ``conf = 1`` in the last bin (binary confidences are >= 0.5, so only
the bins from 0.5 up fill). With ``n_b`` decisions in bin b, ``N = sum n_b``, accuracy ``acc_b`` (share correct)
and mean confidence ``conf_b``,

    ``ECE = sum_b (n_b / N) |acc_b - conf_b|``.

Per class over its cells, and pooled over all (cell, class) decisions (``ECE``). Confidences are summed per
batch in float32 as offsets from their bin centre (``|conf - centre| <= 1 / (2 m)``, so the rounding error
stays small: mean confidences within 1e-7 of a float64 computation on a [4, 200, 200, 8] batch) and in float64
on the host. Empty bins have NaN accuracy and confidence and do not count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from bevjax.viz import layout, save_png

DEFAULT_AUROC_BINS = 1001  # bin centres i / 1000
DEFAULT_ECE_BINS = 15


# AUROC --------------------------------------------------------------------------------------------------------


def _flat_histogram(index, size: int, valid=None) -> jnp.ndarray:
    """[size] int32 counts of ``index`` (any shape) over 0 .. size - 1, cells where ``valid`` is false dropped."""
    if valid is not None:
        index = jnp.where(jnp.broadcast_to(valid, index.shape), index, size)
    return jnp.zeros(size + 1, jnp.int32).at[index.reshape(-1)].add(1)[:size]


def uncertainty_bins(uncertainty, bins: int = DEFAULT_AUROC_BINS) -> jnp.ndarray:
    """int32 bin index ``clip(round(u (bins - 1)), 0, bins - 1)`` of uncertainties (any shape)."""
    u = jnp.asarray(uncertainty, jnp.float32)
    return jnp.clip(jnp.round(u * (bins - 1)), 0, bins - 1).astype(jnp.int32)


def error_histograms(
    probs, targets, uncertainty, threshold: float = 0.5, mask=None, bins: int = DEFAULT_AUROC_BINS
) -> jnp.ndarray:
    """[r, 2, m] int32 histograms of one batch's uncertainty over right (row 0) and wrong (row 1) decisions.

    A decision is wrong when ``(probs > threshold) != (targets > 0)``. Per class when ``uncertainty`` has the
    shape of ``probs`` (r = k), per cell when it lacks the class axis (r = 1; a cell is wrong when any of its
    classes is).

    Args:
      probs, targets: [..., k], e.g. [b, x, y, k].
      uncertainty: [..., k] or [...], in [0, 1] (binned by :func:`uncertainty_bins`).
      threshold: on the probabilities.
      mask: optional [...] (e.g. ``bev_visibility``) or, per class, [..., k]: only cells with ``mask > 0`` count.
      bins: m, static.
    """
    probs = jnp.asarray(probs, jnp.float32)
    wrong = (probs > threshold) != (jnp.asarray(targets) > 0)  # ... k
    u = jnp.asarray(uncertainty)
    valid = None if mask is None else jnp.asarray(mask) > 0
    if u.ndim == probs.ndim:  # per class
        rows = probs.shape[-1]
        row = jnp.arange(rows)
        if valid is not None and valid.ndim < probs.ndim:
            valid = valid[..., None]
    elif u.ndim == probs.ndim - 1:  # per cell
        rows, row = 1, 0
        wrong = jnp.any(wrong, -1)
    else:
        raise ValueError(
            f"uncertainty of shape {u.shape}: expected {probs.shape} (per class) or {probs.shape[:-1]}"
        )
    index = (row * 2 + wrong.astype(jnp.int32)) * bins + uncertainty_bins(u, bins)
    return _flat_histogram(index, rows * 2 * bins, valid).reshape(rows, 2, bins)


_error_histograms_jit = jax.jit(error_histograms, static_argnames=("bins",))


def binned_auroc(hist) -> tuple[np.ndarray, np.ndarray]:
    """([r] AUROC, [r] binning error bound) from histograms [r, 2, m] (row 0 right, row 1 wrong decisions):
    ``sum_i R_i (W_{>i} + W_i / 2) / (W R)`` and ``sum_i W_i R_i / (2 W R)`` in exact integer arithmetic (NaN
    without wrong or without right decisions)."""
    hist = np.asarray(hist, np.int64).reshape(-1, 2, np.shape(hist)[-1])
    auroc, bound = np.full(len(hist), np.nan), np.full(len(hist), np.nan)
    for r, (right, wrong) in enumerate(hist):
        right, wrong = [int(v) for v in right], [int(v) for v in wrong]
        n_wrong, n_right = sum(wrong), sum(right)
        if n_wrong == 0 or n_right == 0:
            continue
        above, twice_u, ties = 0, 0, 0  # above: wrong decisions in higher bins
        for i in range(len(right) - 1, -1, -1):
            twice_u += right[i] * (2 * above + wrong[i])
            ties += right[i] * wrong[i]
            above += wrong[i]
        auroc[r] = twice_u / (2 * n_wrong * n_right)  # Python ints: one correctly rounded division
        bound[r] = ties / (2 * n_wrong * n_right)
    return auroc, bound


class AUROCAccumulator:
    """Sums error histograms over batches (int64, host) and reports the AUROC of the uncertainty for wrong
    decisions (see the module doc).

    Usage: ``acc.update(error_histograms(probs, targets, u, acc.threshold, mask, acc.bins))`` per batch (or
    ``acc.add(probs, targets, u, mask)``), then ``acc.result()``.

    Args:
      class_names: the k classes for per-class uncertainty [..., k]; None for per-cell uncertainty [...].
      threshold: predictions are ``p > threshold``.
      bins: m uncertainty bins (centres ``i / (m - 1)``).
    """

    def __init__(self, class_names=None, threshold: float = 0.5, bins: int = DEFAULT_AUROC_BINS):
        if bins < 2:
            raise ValueError(f"bins={bins}: need at least 2")
        self.class_names = None if class_names is None else tuple(class_names)
        self.threshold, self.bins = float(threshold), int(bins)
        rows = 1 if self.class_names is None else len(self.class_names)
        self.hist = np.zeros((rows, 2, self.bins), np.int64)

    def update(self, hist) -> None:
        """Adds one batch's histograms [r, 2, m]."""
        hist = np.asarray(hist, np.int64)
        if hist.shape != self.hist.shape:
            raise ValueError(f"histograms of shape {hist.shape}, expected {self.hist.shape} (rows, 2, bins)")
        self.hist += hist

    def add(self, probs, targets, uncertainty, mask=None) -> None:
        """Computes (jitted) and adds the histograms of one batch."""
        self.update(_error_histograms_jit(probs, targets, uncertainty, self.threshold, mask, bins=self.bins))

    def result(self) -> dict[str, float]:
        """``AUROC`` (all decisions pooled) and ``AUROC_bin_error`` (its binning error bound); per class also
        ``AUROC/{class}`` and their NaN-skipping mean ``mAUROC``."""
        pooled, bound = binned_auroc(self.hist.sum(0, keepdims=True))
        out = {"AUROC": float(pooled[0]), "AUROC_bin_error": float(bound[0])}
        if self.class_names is not None:
            per_class, _ = binned_auroc(self.hist)
            out.update({f"AUROC/{n}": float(v) for n, v in zip(self.class_names, per_class, strict=True)})
            out["mAUROC"] = _nanmean(per_class)
        return out

    def table(self) -> str:
        """AUROC per class (or per cell) with its binning error bound and decision counts, one a line."""
        names = ("cells",) if self.class_names is None else self.class_names
        auroc, bound = binned_auroc(self.hist)
        lines = [f"{'':<16s} {'AUROC':>6s} {'+-bin':>7s}   wrong / right"]
        for name, a, e, h in zip(names, auroc, bound, self.hist, strict=True):
            lines.append(f"{name:<16s} {a:6.3f} {e:7.1e}   {h[1].sum()} / {h[0].sum()}")
        if self.class_names is not None:
            res = self.result()
            lines.append(f"{'pooled':<16s} {res['AUROC']:6.3f} {res['AUROC_bin_error']:7.1e}")
        return "\n".join(lines)


# Calibration --------------------------------------------------------------------------------------------------


def calibration_edges(bins: int = DEFAULT_ECE_BINS) -> np.ndarray:
    """[m + 1] float32 equal-width confidence bin edges ``linspace(0, 1, m + 1)``."""
    return np.linspace(0.0, 1.0, bins + 1).astype(np.float32)


def _centres(edges: np.ndarray) -> np.ndarray:
    return ((edges[:-1] + edges[1:]) / np.float32(2)).astype(np.float32)  # m, float32


def calibration_stats(
    probs, targets, mask=None, bins: int = DEFAULT_ECE_BINS
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """One batch's calibration statistics per class and confidence bin (see the module doc).

    Args:
      probs, targets: [..., k]; predicted label ``p > 0.5``, confidence ``max(p, 1 - p)``.
      mask: optional [...] (e.g. ``bev_visibility``) or [..., k]: only cells with ``mask > 0`` count.
      bins: m, static.

    Returns:
      ``counts`` [k, m, 2] int32 (decisions, correct decisions) and ``offsets`` [k, m] float32, the sum of
      ``conf - centre_b`` over the bin's decisions (``centre_b`` the float32 bin centre).
    """
    p = jnp.asarray(probs, jnp.float32)
    pred = p > 0.5
    conf = jnp.where(pred, p, 1 - p)  # ... k
    correct = pred == (jnp.asarray(targets) > 0)
    edges = calibration_edges(bins)
    b = jnp.searchsorted(jnp.asarray(edges[1:-1]), conf, side="right")  # ... k: e_b <= conf < e_{b+1}
    k = p.shape[-1]
    index = (jnp.arange(k) * bins + b) * 2 + correct.astype(jnp.int32)
    size = k * bins * 2
    if mask is not None:
        valid = jnp.asarray(mask) > 0
        valid = jnp.broadcast_to(valid if valid.ndim == p.ndim else valid[..., None], index.shape)
        index = jnp.where(valid, index, size)
    split = jnp.zeros(size + 1, jnp.int32).at[index.reshape(-1)].add(1)[:size].reshape(k, bins, 2)
    counts = jnp.stack([split.sum(-1), split[..., 1]], -1)  # k m 2
    offset = conf - jnp.asarray(_centres(edges))[b]  # ... k
    slot = index // 2  # k m slots, invalid cells at size // 2
    offsets = jnp.zeros(size // 2 + 1, jnp.float32).at[slot.reshape(-1)].add(offset.reshape(-1))[: size // 2]
    return counts, offsets.reshape(k, bins)


_calibration_stats_jit = jax.jit(calibration_stats, static_argnames=("bins",))


@dataclass(frozen=True)
class ReliabilityBins:
    """Reliability diagram data of one class (or of all classes pooled).

    Attributes:
      name: the class, or ``'all classes'``.
      edges: [m + 1] bin edges of the confidence.
      count: [m] decisions per bin (int64).
      accuracy: [m] share of correct decisions per bin (NaN for an empty bin).
      confidence: [m] mean confidence per bin (NaN for an empty bin).
      ece: ``sum_b (n_b / N) |acc_b - conf_b|`` (NaN without decisions).
    """

    name: str
    edges: np.ndarray
    count: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    ece: float


def reliability_bins(counts, confidence_sums, edges, name: str = "") -> ReliabilityBins:
    """The diagram data and ECE of one row of totals: ``counts`` [m, 2] (decisions, correct), ``confidence_sums``
    [m] (sum of confidences), ``edges`` [m + 1]."""
    counts = np.asarray(counts, np.int64)
    n, correct = counts[:, 0], counts[:, 1]
    filled = n > 0
    safe = np.maximum(n, 1)
    acc = np.where(filled, correct / safe, np.nan)
    conf = np.where(filled, np.asarray(confidence_sums, np.float64) / safe, np.nan)
    total = n.sum()
    ece = float(np.sum(n[filled] / total * np.abs(acc[filled] - conf[filled]))) if total else float("nan")
    return ReliabilityBins(name, np.asarray(edges, np.float64), n, acc, conf, ece)


def expected_calibration_error(probs, targets, mask=None, bins: int = DEFAULT_ECE_BINS) -> float:
    """ECE of all (cell, class) decisions of arrays [..., k] at once (a convenience: one batch, pooled)."""
    acc = CalibrationAccumulator([str(c) for c in range(np.shape(probs)[-1])], bins)
    acc.add(probs, targets, mask)
    return acc.reliability().ece


class CalibrationAccumulator:
    """Sums calibration statistics over batches (host: int64 counts, float64 confidence sums) and reports ECE
    per class and pooled, and the reliability diagram data.

    Usage: ``acc.update(calibration_stats(probs, targets, mask, acc.bins))`` per batch (or
    ``acc.add(probs, targets, mask)``), then ``acc.result()``, ``acc.reliability(name)``.
    """

    def __init__(self, class_names, bins: int = DEFAULT_ECE_BINS):
        if bins < 1:
            raise ValueError(f"bins={bins}: need at least 1")
        self.class_names = tuple(class_names)
        self.bins = int(bins)
        self.edges = calibration_edges(self.bins)  # m+1, float32
        k = len(self.class_names)
        self.counts = np.zeros((k, self.bins, 2), np.int64)
        self.confidence_sums = np.zeros((k, self.bins), np.float64)

    def update(self, stats) -> None:
        """Adds one batch's ``(counts [k, m, 2], offsets [k, m])`` from :func:`calibration_stats`."""
        counts, offsets = (np.asarray(s) for s in stats)
        if counts.shape != self.counts.shape or offsets.shape != self.confidence_sums.shape:
            raise ValueError(
                f"statistics of shapes {counts.shape}, {offsets.shape}; expected {self.counts.shape}, "
                f"{self.confidence_sums.shape} (classes, bins, ...)"
            )
        counts = counts.astype(np.int64)
        centres = _centres(self.edges).astype(np.float64)
        self.counts += counts
        self.confidence_sums += counts[..., 0] * centres + offsets.astype(np.float64)

    def add(self, probs, targets, mask=None) -> None:
        """Computes (jitted) and adds the statistics of one batch."""
        self.update(_calibration_stats_jit(probs, targets, mask, bins=self.bins))

    def reliability(self, name: str | None = None) -> ReliabilityBins:
        """The diagram data of class ``name``, or of all classes pooled (``name=None``)."""
        if name is None:
            return reliability_bins(
                self.counts.sum(0), self.confidence_sums.sum(0), self.edges, "all classes"
            )
        if name not in self.class_names:
            raise ValueError(f"unknown class '{name}'; choose from {self.class_names}")
        k = self.class_names.index(name)
        return reliability_bins(self.counts[k], self.confidence_sums[k], self.edges, name)

    def result(self) -> dict[str, float]:
        """``ECE`` (all decisions pooled) and ``ECE/{class}``."""
        out = {"ECE": self.reliability().ece}
        out.update({f"ECE/{n}": self.reliability(n).ece for n in self.class_names})
        return out

    def table(self) -> str:
        """ECE per class and pooled, with decision counts and accuracy, one a line."""
        lines = [f"{'class':<16s} {'ECE':>6s} {'acc':>6s}   decisions"]
        for rel in [self.reliability(n) for n in self.class_names] + [self.reliability()]:
            n = rel.count.sum()
            acc = np.nansum(rel.accuracy * rel.count) / n if n else float("nan")
            lines.append(f"{rel.name:<16s} {rel.ece:6.3f} {acc:6.3f}   {n}")
        return "\n".join(lines)


def _nanmean(values) -> float:
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")


# Reliability diagram ------------------------------------------------------------------------------------------

PLOT_SIZE = 400  # the plot's square data area, pixels
SHARE_HEIGHT = 70  # the strip below it: share of decisions per bin
PLOT_LEFT, PLOT_TOP, PLOT_RIGHT = 64, 12, 20  # margins of the data area inside the panel
AXIS_BAND = 46  # below each data area: tick labels and axis title
BAR_COLOUR = (60, 110, 200)  # accuracy
GAP_COLOUR = (220, 60, 50)  # between accuracy and mean confidence
DIAGONAL_COLOUR = (90, 90, 90)
SHARE_COLOUR = (150, 150, 150)
GRID_COLOUR = (225, 225, 225)


def plot_pixel(x: float, y: float) -> tuple[int, int]:
    """(column, row) in the :func:`reliability_plot` panel of the point (confidence ``x``, accuracy ``y``)."""
    return PLOT_LEFT + round(x * PLOT_SIZE), PLOT_TOP + PLOT_SIZE - round(y * PLOT_SIZE)


def _vertical_text(text: str, size: int = layout.FONT_SIZE) -> Image.Image:
    band = Image.fromarray(layout.text_band(text, layout.text_width(text, size) + 8, size))
    return band.rotate(90, expand=True)


def reliability_plot(bins: ReliabilityBins) -> np.ndarray:
    """[h, w, 3] uint8 panel: accuracy bars per confidence bin, the gap to each bin's mean confidence, the
    diagonal of perfect calibration, axes with ticks, and below it a strip with each bin's share of decisions.
    :func:`plot_pixel` maps values to its pixels."""
    share_top = PLOT_TOP + PLOT_SIZE + AXIS_BAND
    width = PLOT_LEFT + PLOT_SIZE + PLOT_RIGHT
    height = share_top + SHARE_HEIGHT + AXIS_BAND
    pil = Image.new("RGB", (width, height), layout.BACKGROUND)
    draw = ImageDraw.Draw(pil)
    font = layout.font(layout.FONT_SIZE)
    x0, y1 = plot_pixel(0, 0)
    x1, y0 = plot_pixel(1, 1)
    for v in np.linspace(0, 1, 6)[1:]:  # grid
        gx, gy = plot_pixel(v, v)
        draw.line([(gx, y0), (gx, y1)], fill=GRID_COLOUR)
        draw.line([(x0, gy), (x1, gy)], fill=GRID_COLOUR)
    edges, count = bins.edges, bins.count
    for b in range(len(count)):
        if count[b] == 0:
            continue
        left, right = plot_pixel(edges[b], 0)[0] + 1, plot_pixel(edges[b + 1], 0)[0] - 1
        top = plot_pixel(0, bins.accuracy[b])[1]
        if top < y1:
            draw.rectangle([left, top, right, y1 - 1], fill=BAR_COLOUR)
    overlay = Image.new("RGBA", pil.size, (0, 0, 0, 0))
    odraw = ImageDraw.Draw(overlay)
    for b in range(len(count)):
        if count[b] == 0:
            continue
        left, right = plot_pixel(edges[b], 0)[0] + 1, plot_pixel(edges[b + 1], 0)[0] - 1
        a, c = plot_pixel(0, bins.accuracy[b])[1], plot_pixel(0, bins.confidence[b])[1]
        if a != c:
            odraw.rectangle(
                [left, min(a, c), right, max(a, c) - 1], fill=GAP_COLOUR + (90,), outline=GAP_COLOUR
            )
    pil = Image.alpha_composite(pil.convert("RGBA"), overlay).convert("RGB")
    draw = ImageDraw.Draw(pil)
    steps = max(2, math.ceil(math.hypot(PLOT_SIZE, PLOT_SIZE) / 6))  # the diagonal, dashed
    for s in range(0, steps, 2):
        draw.line([plot_pixel(s / steps, s / steps), plot_pixel((s + 1) / steps, (s + 1) / steps)],
                  fill=DIAGONAL_COLOUR, width=2)  # fmt: skip
    # the share strip: decisions per bin / all decisions, on a 0 .. max share scale
    total = max(int(count.sum()), 1)
    top_share = max(float(count.max()) / total, 1e-12)
    s0, s1 = share_top, share_top + SHARE_HEIGHT
    for b in range(len(count)):
        if count[b] == 0:
            continue
        left, right = plot_pixel(edges[b], 0)[0] + 1, plot_pixel(edges[b + 1], 0)[0] - 1
        top = s1 - max(1, round(count[b] / total / top_share * SHARE_HEIGHT))
        draw.rectangle([left, top, right, s1 - 1], fill=SHARE_COLOUR)
    draw.text((x0 - 8 - layout.text_width(f"{top_share:.2f}"), s0 - 6), f"{top_share:.2f}", fill=layout.TEXT,
              font=font)  # fmt: skip
    # axes, ticks and labels
    for top, bottom, title in ((y0, y1, "confidence"), (s0, s1, "confidence")):
        draw.line([(x0, top), (x0, bottom)], fill=layout.TEXT, width=1)
        draw.line([(x0, bottom), (x1, bottom)], fill=layout.TEXT, width=1)
        for v in np.linspace(0, 1, 6):
            tx = plot_pixel(v, 0)[0]
            draw.line([(tx, bottom), (tx, bottom + 4)], fill=layout.TEXT)
            label = f"{v:.1f}"
            draw.text((tx - layout.text_width(label) // 2, bottom + 6), label, fill=layout.TEXT, font=font)
        tw = layout.text_width(title)
        draw.text(
            ((x0 + x1 - tw) // 2, bottom + 6 + layout.line_height()), title, fill=layout.TEXT, font=font
        )
    for v in np.linspace(0, 1, 6):
        ty = plot_pixel(0, v)[1]
        draw.line([(x0 - 4, ty), (x0, ty)], fill=layout.TEXT)
        label = f"{v:.1f}"
        draw.text((x0 - 8 - layout.text_width(label), ty - layout.line_height() // 2), label, fill=layout.TEXT,
                  font=font)  # fmt: skip
    for text, centre in (("accuracy", (y0 + y1) // 2), ("share", (s0 + s1) // 2)):
        label = _vertical_text(text)
        pil.paste(label, (2, max(0, centre - label.height // 2)))
    return np.asarray(pil)


def reliability_diagram_png(bins: ReliabilityBins, path: str | None = None, title: str = "") -> np.ndarray:
    """[h, w, 3] uint8 reliability diagram (:func:`reliability_plot` under a title with the ECE, above a
    legend), at least 400 pixels on each side; also written as PNG to ``path`` when given.

    Args:
      bins: from ``CalibrationAccumulator.reliability`` or :func:`reliability_bins`.
      path: optional PNG file (its folder is created).
      title: replaces the default title's first part (``'Reliability diagram: <name>'``).
    """
    panel = reliability_plot(bins)
    n = int(bins.count.sum())
    head = title or (f"Reliability diagram: {bins.name}" if bins.name else "Reliability diagram")
    text = f"{head}. ECE = {bins.ece:.4f} ({len(bins.count)} bins, {n} decisions)"
    entries = [
        ("accuracy per confidence bin", BAR_COLOUR),
        ("gap to the bin's mean confidence", GAP_COLOUR),
        ("perfect calibration", DIAGONAL_COLOUR),
        ("share of decisions", SHARE_COLOUR),
    ]
    image = layout.figure([panel], text, [("", entries)], min_width=panel.shape[1] + 2 * layout.MARGIN)
    if path is not None:
        save_png(image, path)
    return image
