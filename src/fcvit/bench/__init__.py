"""Measuring models: parameter and MAC counts, speed benchmarks."""

from .profile import count_gmacs, count_params

__all__ = ["count_gmacs", "count_params"]
