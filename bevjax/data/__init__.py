"""Data pipeline: Grain transforms and loaders of bevjax examples."""
