"""Segmentation losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def bce_with_logits(
    logits: jnp.ndarray, targets: jnp.ndarray, pos_weight: float | jnp.ndarray = 1.0, mask=None
) -> jnp.ndarray:
    """Mean binary cross-entropy with a positive-class weight (``torch.nn.BCEWithLogitsLoss(pos_weight=...)``).

    ``l = -(w_p y log s(z) + (1 - y) log(1 - s(z)))`` averaged over all elements (or over ``mask`` where given,
    broadcast against ``logits``). ``w_p`` is a scalar or one weight per class (the last axis). LSS trains with
    ``pos_weight = 2.13``.
    """
    targets = targets.astype(logits.dtype)
    log_p, log_not_p = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
    loss = -(pos_weight * targets * log_p + (1.0 - targets) * log_not_p)
    if mask is None:
        return loss.mean()
    mask = jnp.broadcast_to(mask, loss.shape).astype(loss.dtype)
    return (loss * mask).sum() / jnp.maximum(mask.sum(), 1.0)
