"""IoU over a split against a brute-force NumPy count; BCE against its formula in float64."""

import jax.numpy as jnp
import numpy as np
import pytest

from bevjax.losses import bce_with_logits
from bevjax.metrics import IoUAccumulator, confusion_counts


def test_iou_accumulates_over_batches_like_numpy():
    rng = np.random.default_rng(0)
    acc = IoUAccumulator(["a", "b", "c"])
    all_logits, all_targets, all_masks = [], [], []
    for _ in range(4):
        logits = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)
        targets = (rng.random((2, 6, 5, 3)) < 0.3).astype(np.uint8)
        mask = (rng.random((2, 6, 5)) < 0.8).astype(np.uint8)
        acc.update(confusion_counts(logits, targets, 0.0, mask))
        all_logits.append(logits), all_targets.append(targets), all_masks.append(mask)
    logits, targets, mask = (np.concatenate(a) for a in (all_logits, all_targets, all_masks))
    res = acc.result()
    for k, name in enumerate("abc"):
        p, t, m = logits[..., k] > 0, targets[..., k] > 0, mask > 0
        want = np.sum(p & t & m) / np.sum((p | t) & m)
        assert res[name] == pytest.approx(want)
    assert res["mIoU"] == pytest.approx(np.mean([res[n] for n in "abc"]))
    assert "mean" in acc.table()


def test_bce_with_pos_weight_matches_float64_formula():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(3, 4, 2)) * 4
    y = (rng.random((3, 4, 2)) < 0.4).astype(np.float64)
    s = 1 / (1 + np.exp(-z))
    want = np.mean(-(2.13 * y * np.log(s) + (1 - y) * np.log(1 - s)))
    assert float(bce_with_logits(jnp.asarray(z, jnp.float32), y, 2.13)) == pytest.approx(want, rel=1e-5)
    mask = np.zeros((3, 4, 1))
    mask[0] = 1
    want_masked = np.mean(-(2.13 * y * np.log(s) + (1 - y) * np.log(1 - s))[0])
    got = float(bce_with_logits(jnp.asarray(z, jnp.float32), y, 2.13, mask=mask))
    assert got == pytest.approx(want_masked, rel=1e-5)
    per_class = np.array([2.13, 8.0])  # one weight per class (last axis)
    want = np.mean(-(per_class * y * np.log(s) + (1 - y) * np.log(1 - s)))
    got = float(bce_with_logits(jnp.asarray(z, jnp.float32), y, jnp.asarray(per_class, jnp.float32)))
    assert got == pytest.approx(want, rel=1e-5)
