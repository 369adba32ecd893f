"""The embedded procedural driving world: seedable scenes, rendered cameras and LiDAR, exact labels."""

from bevjax.world.config import (
    CITIES,
    DEFAULT_DOMAINS,
    Domain,
    WorldConfig,
    parse_domain,
    tiny_config,
)
from bevjax.world.sample import example_spec_for, render_sample

__all__ = [
    "CITIES",
    "DEFAULT_DOMAINS",
    "Domain",
    "WorldConfig",
    "example_spec_for",
    "parse_domain",
    "render_sample",
    "tiny_config",
]
