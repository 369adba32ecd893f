"""Optimisers and learning-rate schedules (optax)."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax


def poly_lr(base_lr: float, total_steps: int, power: float = 0.9, floor: float = 0.0, warmup_steps: int = 0):
    """Polynomial decay ``base_lr * (1 - t / T) ** power`` down to ``floor``, after a linear warmup.

    ``t`` counts steps after the warmup and ``T = total_steps - warmup_steps``; the rate never drops below
    ``floor`` (NRSeg / DeepLab "polyLR").
    """
    decay_steps = max(1, total_steps - warmup_steps)

    def decay(step):
        frac = jnp.clip(1.0 - step / decay_steps, 0.0, 1.0)
        return jnp.maximum(base_lr * frac**power, floor)

    if warmup_steps <= 0:
        return decay
    warm = optax.linear_schedule(0.0, base_lr, warmup_steps)
    return optax.join_schedules([warm, decay], [warmup_steps])


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int):
    """``cfg.schedule`` in {'constant', 'poly', 'cosine'} with ``cfg.lr``, ``cfg.warmup_steps``, ``cfg.power``,
    ``cfg.min_lr``."""
    warmup = int(cfg.get("warmup_steps", 0))
    if cfg.schedule == "constant":
        if warmup:
            return optax.join_schedules(
                [optax.linear_schedule(0.0, cfg.lr, warmup), optax.constant_schedule(cfg.lr)], [warmup]
            )
        return optax.constant_schedule(cfg.lr)
    if cfg.schedule == "poly":
        return poly_lr(cfg.lr, total_steps, cfg.get("power", 0.9), cfg.get("min_lr", 0.0), warmup)
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, cfg.lr, max(warmup, 1), total_steps, cfg.get("min_lr", 0.0)
        )
    raise ValueError(f"optim.schedule='{cfg.schedule}': choose from 'constant', 'poly', 'cosine'")


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """Gradient clipping by global norm, then Adam or AdamW with the configured schedule.

    Fields of ``cfg``: ``name`` ('adam' | 'adamw'), ``lr``, ``weight_decay``, ``grad_clip`` (0 = none),
    ``schedule`` and its fields (see :func:`make_schedule`).
    """
    schedule = make_schedule(cfg, total_steps)
    if cfg.name == "adam":
        # LSS: torch.optim.Adam(weight_decay=wd) adds wd * param to the gradient (L2, not decoupled).
        opt = optax.chain(optax.add_decayed_weights(cfg.get("weight_decay", 0.0)), optax.adam(schedule))
    elif cfg.name == "adamw":
        opt = optax.adamw(schedule, weight_decay=cfg.get("weight_decay", 0.0))
    else:
        raise ValueError(f"optim.name='{cfg.name}': choose from 'adam', 'adamw'")
    clip = cfg.get("grad_clip", 0.0)
    return optax.chain(optax.clip_by_global_norm(clip), opt) if clip else opt
