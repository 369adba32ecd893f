"""Optimisers and learning-rate schedules (optax)."""

from __future__ import annotations

import re
from typing import Any

import jax
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


def param_path(path) -> str:
    """The '/'-joined names of a key path (``('camencode', 'trunk', 'kernel')`` -> ``camencode/trunk/kernel``)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _first_match(patterns, path: str):
    for i, (pattern, value) in enumerate(patterns):
        if re.search(pattern, path):
            return i, value
    return None, None


def group_labels(params, groups) -> Any:
    """The parameter group of every leaf of ``params``: ``'group<i>'`` for the first ``(regex, lr_scale)`` of
    ``groups`` whose regex matches (``re.search``) the leaf's path relative to ``params`` (e.g.
    ``camencode/trunk/stem_conv/kernel``), ``'frozen'`` when that scale is 0, ``'default'`` when none matches."""

    def label(path, _):
        i, scale = _first_match(groups, param_path(path))
        if i is None:
            return "default"
        return "frozen" if float(scale) == 0.0 else f"group{i}"

    return jax.tree_util.tree_map_with_path(label, params)


def decay_mask(params, no_decay: str) -> Any:
    """True for the leaves weight decay applies to: all but those whose path matches the regex ``no_decay``
    (e.g. ``'(bias|scale)$'``: no decay on biases and normalisation scales); all when it is empty."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not (no_decay and re.search(no_decay, param_path(path))), params
    )


def _base_optimizer(cfg: ml_collections.ConfigDict, schedule, mask):
    wd = cfg.get("weight_decay", 0.0)
    if cfg.name == "adam":
        # LSS: torch.optim.Adam(weight_decay=wd) adds wd * param to the gradient (L2, not decoupled).
        return optax.chain(optax.add_decayed_weights(wd, mask=mask), optax.adam(schedule))
    if cfg.name == "adamw":
        return optax.adamw(schedule, weight_decay=wd, mask=mask)
    raise ValueError(f"optim.name='{cfg.name}': choose from 'adam', 'adamw'")


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """Gradient clipping by global norm, then Adam or AdamW with the configured schedule, per parameter group.

    Fields of ``cfg``: ``name`` ('adam' | 'adamw'), ``lr``, ``weight_decay``, ``grad_clip`` (0 = none),
    ``schedule`` and its fields (see :func:`make_schedule`), and optionally

    - ``groups``: ``((regex, lr_scale), ...)`` over parameter paths (see :func:`group_labels`): the first
      matching group trains with ``lr_scale`` times the schedule; scale 0 freezes its parameters (no update, no
      optimiser state, no part in the clipping norm). E.g. ``(('^camencode/trunk/', 0.1),)`` or
      ``(('^camencode/', 0.0),)`` to freeze a pretrained image encoder.
    - ``no_decay``: regex of the parameters without weight decay (:func:`decay_mask`), e.g. ``'(bias|scale)$'``.

    The optimiser is built for a params tree lazily (labels and masks are functions of it), so the same
    transformation serves any model.
    """
    schedule = make_schedule(cfg, total_steps)
    groups = tuple(tuple(g) for g in cfg.get("groups", ()) or ())
    no_decay = cfg.get("no_decay", "") or ""
    for pattern, scale in groups:
        re.compile(pattern)  # a bad regex fails here, naming itself
        if float(scale) < 0:
            raise ValueError(f"optim.groups: lr_scale {scale} of '{pattern}' must be >= 0")
    mask = (lambda params: decay_mask(params, no_decay)) if no_decay else None

    def scaled(scale):
        return lambda step: scale * schedule(step)

    transforms = {"default": _base_optimizer(cfg, schedule, mask), "frozen": optax.set_to_zero()}
    for i, (_, scale) in enumerate(groups):
        if float(scale) != 0.0:
            transforms[f"group{i}"] = _base_optimizer(cfg, scaled(float(scale)), mask)
    labels = lambda params: group_labels(params, groups)  # noqa: E731
    chain = []
    if any(float(s) == 0.0 for _, s in groups):
        frozen = lambda params: jax.tree.map(lambda lab: lab == "frozen", labels(params))  # noqa: E731
        chain.append(optax.masked(optax.set_to_zero(), frozen))  # frozen gradients leave the clipping norm
    clip = cfg.get("grad_clip", 0.0)
    if clip:
        chain.append(optax.clip_by_global_norm(clip))
    chain.append(optax.multi_transform(transforms, labels) if groups else transforms["default"])
    return optax.chain(*chain) if len(chain) > 1 else chain[0]
