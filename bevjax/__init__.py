"""bevjax: BEV perception in JAX/Flax that learns from few labels and noisy synthetic data."""

__version__ = "0.1.0"
