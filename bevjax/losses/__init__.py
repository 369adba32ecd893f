"""Losses, written per example where it matters and vmapped, with the paper's formula in each docstring."""

from bevjax.losses.segmentation import bce_with_logits

__all__ = ["bce_with_logits"]
