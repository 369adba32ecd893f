"""Batch sizes that split over the devices: a config written for one CPU, run on 8 TPU cores or 4 GPUs.

The trainer splits every global batch over all devices of its mesh and refuses a batch that does not divide
(``batch_size=2 must be divisible by the 8 devices``). :func:`scale_batch_to_devices` rounds a config's
``train.batch_size`` and ``eval.batch_size`` up to the next multiple that does::

    config = lss_config.get_config("tiny")           # batch 2
    changes = scale_batch_to_devices(config)         # on 8 devices: {'train.batch_size': (2, 8), ...}

The batch sizes are global, over every process, so multi-process runs need nothing more: the device count is
a multiple of the process count. The learning rate and the step count are left as they are.
"""

from __future__ import annotations

import ml_collections


def round_up_to_multiple(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is at least ``n`` (``n`` itself when it divides)."""
    if n < 1 or multiple < 1:
        raise ValueError(f"round_up_to_multiple({n}, {multiple}): both must be positive")
    return -(-n // multiple) * multiple


def scale_batch_to_devices(
    config: ml_collections.ConfigDict, num_devices: int | None = None
) -> dict[str, tuple[int, int]]:
    """Rounds ``config.train.batch_size`` and ``config.eval.batch_size`` up to multiples of the devices, in place.

    The training batch becomes a multiple of ``num_devices * config.train.accumulate``, so that each of the
    ``accumulate`` micro-batches of a step also splits evenly over the devices; the evaluation batch a multiple
    of ``num_devices``. Sizes that already divide are kept.

    Args:
      config: a config with ``train.batch_size`` (and optionally ``train.accumulate``) and ``eval.batch_size``;
        either section may be absent.
      num_devices: the devices the batch is split over (default ``jax.device_count()``, all processes').

    Returns:
      ``{"train.batch_size": (old, new), ...}`` for the sizes that changed (empty when none did).
    """
    if num_devices is None:
        import jax

        num_devices = jax.device_count()
    changes = {}
    for section in ("train", "eval"):
        sub = config.get(section, None)
        if sub is None or "batch_size" not in sub:
            continue
        multiple = num_devices * (int(sub.get("accumulate", 1) or 1) if section == "train" else 1)
        old = int(sub.batch_size)
        new = round_up_to_multiple(old, multiple)
        if new != old:
            sub.batch_size = new
            changes[f"{section}.batch_size"] = (old, new)
    return changes
