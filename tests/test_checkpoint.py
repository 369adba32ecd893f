"""Checkpoints: state and data-iterator position round-trip, keep-N, latest-step resume."""

import grain
import jax.numpy as jnp
import numpy as np

from bevjax.training.checkpoint import Checkpointer


def _iterator():
    return iter(grain.MapDataset.range(50).seed(3).shuffle().to_iter_dataset().batch(4))


def test_state_and_iterator_round_trip(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2)
    assert ckpt.restore({"w": jnp.zeros(3)}) is None
    it = _iterator()
    for step in range(1, 5):
        next(it)
        ckpt.save(step, {"w": jnp.arange(3.0) * step, "step": jnp.int32(step)}, it)
    ckpt.wait()
    expected = [next(it) for _ in range(3)]
    fresh = _iterator()
    state = ckpt.restore({"w": jnp.zeros(3), "step": jnp.int32(0)}, fresh)
    assert ckpt.latest_step() == 4 and int(state["step"]) == 4
    np.testing.assert_array_equal(state["w"], np.arange(3.0) * 4)
    for want in expected:
        np.testing.assert_array_equal(next(fresh), want)
    assert sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == [3, 4]
    ckpt.close()
