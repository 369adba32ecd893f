"""Learning-rate schedules and optimisers against their formulas."""

import ml_collections
import numpy as np
import pytest

from bevjax.training.optim import make_optimizer, make_schedule, poly_lr


def test_poly_lr_matches_formula_with_floor_and_warmup():
    sched = poly_lr(1e-3, total_steps=110, power=0.9, floor=1e-5, warmup_steps=10)
    for step in (0, 5, 10):
        assert float(sched(step)) == pytest.approx(1e-3 * step / 10, rel=1e-6)
    for step in (10, 40, 100, 109, 110, 200):
        t = step - 10
        want = max(1e-3 * max(1 - t / 100, 0.0) ** 0.9, 1e-5)
        assert float(sched(step)) == pytest.approx(want, rel=1e-5)


def test_schedule_names_and_errors():
    cfg = ml_collections.ConfigDict(dict(schedule="constant", lr=0.1, warmup_steps=0))
    assert float(make_schedule(cfg, 10)(7)) == pytest.approx(0.1)
    cfg.schedule = "linear"
    with pytest.raises(ValueError, match="optim.schedule='linear'"):
        make_schedule(cfg, 10)


def test_adam_with_l2_and_clipping_matches_numpy():
    cfg = ml_collections.ConfigDict(
        dict(name="adam", lr=0.1, weight_decay=0.01, grad_clip=1.0, schedule="constant", warmup_steps=0)
    )
    tx = make_optimizer(cfg, 10)
    params = {"w": np.array([1.0, -2.0], np.float32)}
    grads = {"w": np.array([3.0, 4.0], np.float32)}
    updates, _ = tx.update(grads, tx.init(params), params)
    g = np.array([3.0, 4.0]) / 5.0 + 0.01 * np.array([1.0, -2.0])  # clipped to norm 1, plus L2 (torch Adam)
    m, v = 0.1 * g, 0.001 * g**2
    want = -0.1 * (m / 0.1) / (np.sqrt(v / 0.001) + 1e-8)
    np.testing.assert_allclose(updates["w"], want, rtol=1e-5)
