"""Losses, written per example where it matters and vmapped, with the paper's formula in each docstring."""

from bevjax.losses.nrseg import (
    consistency_loss,
    consistency_weight,
    depth_bin_index,
    depth_cross_entropy,
    dice_loss,
    dirichlet_kl_to_uniform,
    dirichlet_probs,
    downsample_depth,
    edl_kl_weight,
    edl_mse_loss,
    evidence,
    pseudo_labels,
    pv_dice_loss,
    temporal_l1,
)
from bevjax.losses.segmentation import bce_with_logits

__all__ = [
    "bce_with_logits",
    "consistency_loss",
    "consistency_weight",
    "depth_bin_index",
    "depth_cross_entropy",
    "dice_loss",
    "dirichlet_kl_to_uniform",
    "dirichlet_probs",
    "downsample_depth",
    "edl_kl_weight",
    "edl_mse_loss",
    "evidence",
    "pseudo_labels",
    "pv_dice_loss",
    "temporal_l1",
]
