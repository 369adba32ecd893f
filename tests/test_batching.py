"""bevjax.training.batching: batch sizes rounded up to multiples of the device count."""

import jax
import ml_collections
import pytest

from bevjax.training.batching import round_up_to_multiple, scale_batch_to_devices


def _config(train=2, evaluate=2, accumulate=1):
    return ml_collections.ConfigDict(
        dict(train=dict(batch_size=train, accumulate=accumulate), eval=dict(batch_size=evaluate))
    )


def test_round_up_to_multiple():
    assert [round_up_to_multiple(n, 8) for n in (1, 2, 8, 9, 16)] == [8, 8, 8, 16, 16]
    assert round_up_to_multiple(3, 1) == 3
    with pytest.raises(ValueError, match="positive"):
        round_up_to_multiple(0, 8)


def test_scales_both_batches_up_to_the_devices():
    config = _config(train=2, evaluate=4)
    assert scale_batch_to_devices(config, 8) == {"train.batch_size": (2, 8), "eval.batch_size": (4, 8)}
    assert (config.train.batch_size, config.eval.batch_size) == (8, 8)


def test_keeps_sizes_that_divide():
    config = _config(train=16, evaluate=8)
    assert scale_batch_to_devices(config, 8) == {}
    assert (config.train.batch_size, config.eval.batch_size) == (16, 8)
    assert scale_batch_to_devices(_config(train=3, evaluate=5), 1) == {}


def test_each_micro_batch_splits_over_the_devices():
    config = _config(train=6, evaluate=6, accumulate=3)
    assert scale_batch_to_devices(config, 4) == {"train.batch_size": (6, 12), "eval.batch_size": (6, 8)}
    assert config.train.batch_size % config.train.accumulate == 0
    assert (config.train.batch_size // config.train.accumulate) % 4 == 0


def test_absent_sections_and_the_default_device_count():
    config = ml_collections.ConfigDict(dict(train=dict(batch_size=1)))
    n = jax.device_count()
    assert scale_batch_to_devices(config) == ({} if n == 1 else {"train.batch_size": (1, n)})
    assert config.train.batch_size == n
