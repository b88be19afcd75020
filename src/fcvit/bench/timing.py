"""Interleaved timing: run several workloads in rounds so that they share the machine's load fairly.

On a shared or throttling machine the speed drifts over seconds. Timing model A for a minute and
then model B compares two different machines; timing A, B, A, B, ... in rounds and comparing per-round
ratios cancels most of the drift. ``torch.utils.benchmark`` times one statement at a time, so it cannot
interleave; this module is the small loop it lacks.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_times(
    workloads: dict[str, Callable[[], object]],
    rounds: int = 5,
    warmup: int = 1,
    steps: int = 1,
    sync: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of every workload, one entry per round.

    Each workload is called ``warmup`` times first, then ``rounds`` rounds run every workload in turn for
    ``steps`` calls; the time of a round is the mean over its ``steps`` calls. ``sync`` (e.g.
    ``torch.cuda.synchronize``) is called before reading the clock so that asynchronous devices are timed.
    """
    if rounds < 1 or steps < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1, steps >= 1, warmup >= 0; got {rounds}, {steps}, {warmup}")
    sync = sync or (lambda: None)
    for fn in workloads.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in workloads}
    for _ in range(rounds):
        for name, fn in workloads.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            sync()
            times[name].append((time.perf_counter() - start) / steps)
    return times


def summarize(values: list[float]) -> dict[str, float]:
    """Median, quartiles (inclusive method), min and max of a list of measurements."""
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return dict(median=statistics.median(values), q1=q1, q3=q3, min=min(values), max=max(values))


def round_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """``numerator[r] / denominator[r]`` for every round r (both measured in the same round)."""
    return [n / d for n, d in zip(numerator, denominator, strict=True)]
