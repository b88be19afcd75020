"""The statistics of every analysed layer of a model, for one batch or averaged over a data set (Fig. 1)."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch.utils.data import DataLoader, Dataset

from .maps import MapProbe, is_window_attention, similarity_rows
from .stats import STAT_NAMES, attention_stats


def statistics_or_reason(attn: torch.Tensor, num_prefix_tokens: int = 0) -> tuple[dict[str, float], str | None]:
    """:func:`attention_stats`, or all-NaN statistics and the reason when ``attn`` is not a set of distributions.

    Attention with softmax replaced (ReLU, LayerNorm, no activation) or position-bias "weights" give
    rows that are not distributions; the statistics are undefined for them, the maps can still be drawn.
    """
    try:
        return attention_stats(attn, num_prefix_tokens), None
    except ValueError as e:
        return dict.fromkeys(STAT_NAMES, math.nan), f"statistics undefined: {e}"


def map_statistics(probe: MapProbe, maps: OrderedDict[str, torch.Tensor], num_prefix_tokens: int = 0) -> list[dict]:
    """The statistics of each map read by ``probe``: ``{"name", "kind", "shape", "statistics"[, "note"]}`` per layer.

    Attention maps drop ``num_prefix_tokens`` first; similarity maps become rows by :func:`similarity_rows`.
    """
    sites = {s.name for s in probe.sites}
    layers = []
    for name, m in maps.items():
        if name in sites:
            kind, (stats, note) = "similarity", statistics_or_reason(similarity_rows(m))
        else:
            kind, (stats, note) = "attention", statistics_or_reason(m, num_prefix_tokens)
            if is_window_attention(probe.model.get_submodule(name)):
                kind = "window attention"
        layer = dict(name=name, kind=kind, shape=list(m.shape[1:]), statistics=stats)
        layers.append(layer if note is None else dict(layer, note=note))
    return layers


def dataset_statistics(
    probe: MapProbe,
    dataset: Dataset,
    batch_size: int = 16,
    workers: int = 2,
    device: str | torch.device = "cpu",
    num_prefix_tokens: int = 0,
    progress: bool = True,
) -> tuple[list[dict], int]:
    """Per-layer statistics averaged over every image of ``dataset`` (items ``(input, label)``).

    Each batch's statistics (means over its images) are weighted by its size, so the result is the
    mean over images. Returns the layers as :func:`map_statistics` does and the number of images.
    """
    from ..engine.logger import Progress
    from ..runtime import adapt_threads

    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    # a bar on a terminal, a few plain lines in a redirected log (no carriage-return frames)
    shown = Progress(len(loader), "attention statistics", progress, log_interval=max(len(loader) // 4, 1))
    totals: list[dict] | None = None
    count = 0
    for x, _ in loader:
        layers = map_statistics(probe, probe(x.to(device)), num_prefix_tokens)
        n = x.shape[0]
        if totals is None:
            totals = [dict(layer, statistics=dict.fromkeys(STAT_NAMES, 0.0)) for layer in layers]
        for total, layer in zip(totals, layers):
            for k in STAT_NAMES:
                total["statistics"][k] += n * layer["statistics"][k]
        count += n
        shown.update(n)
        adapt_threads()
    shown.close()
    if totals is None:
        raise ValueError("the data set is empty")
    for total in totals:
        total["statistics"] = {k: v / count for k, v in total["statistics"].items()}
    return totals, count
