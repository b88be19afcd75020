"""Evaluation of a classifier over a loader (``fcvit train``'s validation and ``fcvit validate``)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.distributed import all_reduce_sum, is_main_process
from ..engine.logger import Progress
from ..runtime import adapt_threads

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager] | None = None,
    channels_last: bool = False,
    desc: str = "validate",
) -> dict[str, float]:
    """Cross-entropy loss, top-1 and top-5 (%) of ``model`` over ``loader``, summed over all ranks.

    ``loader`` is a :mod:`fcvit.data.loaders` loader; unreadable images it skipped are counted in ``skipped``.
    """
    model.eval()
    sums = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "n": 0.0, "skipped": 0.0}
    progress = Progress(len(loader), desc, enabled=is_main_process(), log_interval=max(len(loader) // 4, 1))
    for images, targets, skipped in loader.batches(0):
        sums["skipped"] += skipped
        if len(targets) == 0:
            continue
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if autocast is None:
            logits = model(images)
        else:
            with autocast():
                logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        correct = logits.topk(k, dim=1).indices.eq(targets[:, None])
        sums["loss"] += F.cross_entropy(logits, targets, reduction="sum").item()
        sums["top1"] += correct[:, 0].sum().item()
        sums["top5"] += correct.sum().item()
        sums["n"] += len(targets)
        progress.update(len(targets))
        adapt_threads()
    progress.close()
    sums = all_reduce_sum(sums, device)
    n = max(sums["n"], 1.0)
    return {
        "loss": sums["loss"] / n,
        "top1": 100.0 * sums["top1"] / n,
        "top5": 100.0 * sums["top5"] / n,
        "n": int(sums["n"]),
        "skipped": int(sums["skipped"]),
    }
