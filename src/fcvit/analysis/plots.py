"""Figures of the analyses, drawn on matplotlib's Agg canvas (``Figure`` objects, no pyplot state).

- :func:`attention_grid`: paper Fig. 2 (image with a query point | that query's attention over the image).
- :func:`similarity_figure`: paper Fig. 5 (FCViT's group similarities; optionally a ViT's heads below).
- :func:`depth_figure`: paper Fig. 1 (each statistic against depth, one line per model/checkpoint).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .stats import STAT_NAMES

_CELL = 2.0  # inches per image panel
_CMAP = "jet"


def _figure(rows: int, cols: int, title: str) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(_CELL * cols, _CELL * rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(textwrap.fill(title, int(11 * _CELL * cols)), fontsize=10)
    return fig, axes


def _cell_centre(cell: tuple[int, int], grid: tuple[int, int], image: np.ndarray) -> tuple[float, float]:
    """Pixel (x, y) of the centre of token ``cell`` (row, col) of ``grid`` over ``image``."""
    H, W = image.shape[:2]
    return (cell[1] + 0.5) * W / grid[1] - 0.5, (cell[0] + 0.5) * H / grid[0] - 0.5


def _overlay(ax, image: np.ndarray, heat: np.ndarray, title: str) -> None:
    """The image, dimmed, under ``heat`` upsampled bilinearly to its size and scaled to its own min..max."""
    H, W = image.shape[:2]
    ax.imshow(image)
    ax.imshow(
        heat,
        cmap=_CMAP,
        alpha=0.6,
        extent=(-0.5, W - 0.5, H - 0.5, -0.5),
        interpolation="bilinear",
        vmin=float(heat.min()),
        vmax=float(heat.max()),
    )
    ax.set_title(title, fontsize=8)


def attention_grid(
    image: np.ndarray,
    maps: np.ndarray,
    queries: Sequence[tuple[int, int]],
    query_grid: tuple[int, int],
    heads: Sequence[int],
    title: str,
) -> Figure:
    """Rows: query points. Columns: the image with the query marked, then its attention map per head.

    Args:
        image: [H, W, 3] in [0, 1], the model's input.
        maps: [len(queries), len(heads), h, w] attention of each query over the key grid.
        queries: (row, col) of each query on ``query_grid``.
    """
    fig, axes = _figure(len(queries), 1 + len(heads), title)
    for r, cell in enumerate(queries):
        x, y = _cell_centre(cell, query_grid, image)
        axes[r, 0].imshow(image)
        axes[r, 0].plot(x, y, marker="*", markersize=14, color="red", markeredgecolor="white")
        axes[r, 0].set_title(f"query (row {cell[0]}, col {cell[1]})", fontsize=8)
        for c, head in enumerate(heads):
            ax = axes[r, c + 1]
            _overlay(ax, image, maps[r, c], f"head {head}, max {maps[r, c].max():.3f}")
            ax.plot(x, y, marker="o", markersize=7, markerfacecolor="none", markeredgecolor="white")
    return fig


def similarity_figure(
    image: np.ndarray,
    groups: np.ndarray,
    title: str,
    compare: tuple[np.ndarray, np.ndarray, tuple[int, int], tuple[int, int], Sequence[int], str] | None = None,
) -> Figure:
    """Top row: the image, then FCViT's similarity ``s`` of each group over it (Fig. 5 left).

    ``compare = (image, maps [heads, h, w], query cell, query grid, head ids, label)`` adds a row with a
    ViT's per-head attention for one fixed query (Fig. 5 right).
    """
    cols = 1 + max(len(groups), 0 if compare is None else len(compare[1]))
    fig, axes = _figure(1 if compare is None else 2, cols, title)
    axes[0, 0].imshow(image)
    axes[0, 0].set_title("input", fontsize=8)
    axes[0, 0].set_ylabel("FCViT similarity s", fontsize=8)
    for g, heat in enumerate(groups):
        _overlay(axes[0, g + 1], image, heat, f"group {g}, s in [{heat.min():.2f}, {heat.max():.2f}]")
    if compare is not None:
        vit_image, maps, cell, grid, heads, label = compare
        x, y = _cell_centre(cell, grid, vit_image)
        axes[1, 0].imshow(vit_image)
        axes[1, 0].plot(x, y, marker="*", markersize=14, color="red", markeredgecolor="white")
        axes[1, 0].set_title("fixed query", fontsize=8)
        axes[1, 0].set_ylabel(label, fontsize=7)
        for c, (head, heat) in enumerate(zip(heads, maps)):
            _overlay(axes[1, c + 1], vit_image, heat, f"head {head}, max {heat.max():.3f}")
    for ax in axes.flat:
        if not ax.images:
            ax.set_axis_off()
    return fig


def depth_figure(series: dict[str, list[dict[str, float | None]]], title: str) -> Figure:
    """One panel per statistic (Fig. 1): its value at each analysed layer, one line per entry of ``series``."""
    fig = Figure(figsize=(10, 7), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    num_layers = max(len(layers) for layers in series.values())
    for ax, stat in zip(axes.flat, STAT_NAMES):
        defined = False
        for label, layers in series.items():
            values = [math.nan if layer[stat] is None else layer[stat] for layer in layers]
            ax.plot(range(len(values)), values, marker="o", label=label)
            defined = defined or not all(math.isnan(v) for v in values)
        if not defined:
            ax.text(0.5, 0.5, "undefined for every layer\n(see the JSON notes)", ha="center", transform=ax.transAxes)
        ax.set_title(stat.replace("_", " "))
        ax.set_xlabel("layer (forward order)")
        ax.set_xlim(-0.5, num_layers - 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig
