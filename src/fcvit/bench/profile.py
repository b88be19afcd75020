"""Where a benchmarked step's time goes: :mod:`torch.profiler` over a few steps of each model and mode, the
operators sorted by their own time (CUDA kernels' on a GPU) as a text table per model and mode.

``fcvit bench --profile DIR`` writes them after the timed rounds, so that a target that is missed comes with the
operators that take the time (issue 30)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..engine.atomic import atomic_write_text


def profile_step(step: Callable[[], object], device: str, repeats: int = 3, rows: int = 25) -> str:
    """The operator table of ``repeats`` calls of ``step`` after one untimed call (autotuning, lazy
    initialisation), sorted by self CUDA time on a GPU, else by self CPU time; the first ``rows`` operators."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    step()
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        for _ in range(repeats):
            step()
        if cuda:
            torch.cuda.synchronize(device)
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows)


def profile_steps(steps: dict[tuple[str, str], Callable[[], object]], device: str, directory: str | Path) -> list[str]:
    """:func:`profile_step` of every (model spec, mode) step, each written to ``directory/<spec>-<mode>.txt``
    (``:`` of a spec as ``-``); returns the file names."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for (spec, mode), step in steps.items():
        name = f"{spec.replace(':', '-')}-{mode}.txt"
        atomic_write_text(directory / name, f"{spec}, {mode}, {device}\n\n{profile_step(step, device)}")
        names.append(name)
    return names
