"""Measuring models: speed and memory benchmarks."""
