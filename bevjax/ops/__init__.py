"""Differentiable operators shared by BEV methods: the lift-splat-shoot voxel pooling (splat)."""

from bevjax.ops.splat import splat, splat_indices

__all__ = ["splat", "splat_indices"]
