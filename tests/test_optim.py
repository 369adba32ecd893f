"""Learning-rate schedules and optimisers against their formulas."""

import jax
import ml_collections
import numpy as np
import pytest

from bevjax.training.optim import decay_mask, group_labels, make_optimizer, make_schedule, poly_lr


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


def _adam_cfg(**kw):
    base = dict(name="adam", lr=0.1, weight_decay=0.0, grad_clip=0.0, schedule="constant", warmup_steps=0)
    return ml_collections.ConfigDict({**base, **kw})


def _one_update(cfg, params, grads):
    tx = make_optimizer(cfg, 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


def test_parameter_groups_scale_freeze_and_leave_others():
    params = {
        "encoder": {"conv": {"kernel": np.ones(3, np.float32), "bias": np.ones(2, np.float32)}},
        "head": {"kernel": np.ones(4, np.float32)},
    }
    grads = jax.tree.map(lambda p: np.full_like(p, 0.5), params)
    plain = _one_update(_adam_cfg(), params, grads)
    scaled = _one_update(_adam_cfg(groups=(("^encoder/conv/kernel$", 0.1), ("^encoder/", 0.0))), params, grads)
    # Adam's first step moves every parameter by lr (sign of the gradient): scaled groups by lr * scale.
    np.testing.assert_allclose(plain["head"]["kernel"], -0.1, rtol=1e-5)
    np.testing.assert_allclose(scaled["head"]["kernel"], plain["head"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(scaled["encoder"]["conv"]["kernel"], -0.01, rtol=1e-5)  # first match wins
    np.testing.assert_array_equal(scaled["encoder"]["conv"]["bias"], 0.0)  # frozen
    assert group_labels(params, (("^encoder/", 0.0),)) == {
        "encoder": {"conv": {"kernel": "frozen", "bias": "frozen"}},
        "head": {"kernel": "default"},
    }


def test_frozen_gradients_leave_the_clipping_norm():
    params = {"frozen": np.ones(1, np.float32), "w": np.ones(1, np.float32)}
    grads = {"frozen": np.array([100.0], np.float32), "w": np.array([3.0], np.float32)}
    cfg = ml_collections.ConfigDict(
        dict(name="adam", lr=1.0, weight_decay=0.0, grad_clip=1.0, schedule="constant", warmup_steps=0)
    )
    cfg.groups = (("^frozen$", 0.0),)
    cfg.name = "adamw"  # no decay: plain Adam through the same chain
    tx = make_optimizer(cfg, 10)
    state = tx.init(params)
    second = {"frozen": np.array([100.0], np.float32), "w": np.array([0.5], np.float32)}
    _, state = tx.update(grads, state, params)
    upd, _ = tx.update(second, state, params)
    # Adam's second update depends on the ratio of the clipped gradients: 3 -> 1 then 0.5 (norm < 1) when the
    # frozen gradient is left out of the norm; 3 / 100.04 then 0.5 / 100.001 if it were counted.
    g1, g2 = 1.0, 0.5
    m = 0.9 * 0.1 * g1 + 0.1 * g2
    v = 0.999 * 0.001 * g1**2 + 0.001 * g2**2
    want = -(m / (1 - 0.9**2)) / (np.sqrt(v / (1 - 0.999**2)) + 1e-8)
    np.testing.assert_allclose(upd["w"], want, rtol=1e-4)  # float32 bias corrections: 1e-5
    np.testing.assert_array_equal(upd["frozen"], 0.0)


def test_no_decay_mask_for_adam_l2_and_adamw():
    params = {"conv": {"kernel": np.array([2.0], np.float32), "bias": np.array([2.0], np.float32)},
              "norm": {"scale": np.array([2.0], np.float32)}}  # fmt: skip
    grads = jax.tree.map(np.zeros_like, params)
    assert decay_mask(params, "(bias|scale)$") == {"conv": {"kernel": True, "bias": False}, "norm": {"scale": False}}
    for name in ("adam", "adamw"):
        upd = _one_update(_adam_cfg(name=name, weight_decay=0.5, no_decay="(bias|scale)$"), params, grads)
        assert float(upd["conv"]["kernel"][0]) < 0  # decayed towards 0
        assert float(upd["conv"]["bias"][0]) == 0.0 and float(upd["norm"]["scale"][0]) == 0.0
    with pytest.raises(ValueError, match="lr_scale -1"):
        make_optimizer(_adam_cfg(groups=(("x", -1.0),)), 10)
