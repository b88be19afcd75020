"""``fcvit models``: every registered variant with its parameters, GMACs and activations beside the paper's figures."""

from __future__ import annotations

import fnmatch

from ..hub import create
from ..models._registry import list_models, paper_figures, paper_variants
from ..models.complexity import count_complexity, count_params


def _row(name: str, kwargs: dict, paper: dict, img_size: int) -> dict:
    model = create(name, img_size=img_size, **kwargs)  # models that fix their input size are built for it
    gmacs, macts = count_complexity(model, (3, img_size, img_size))
    return dict(
        model=name,
        kwargs=kwargs,
        params_m=round(count_params(model) / 1e6, 3),
        gmacs=round(gmacs, 3),
        macts=round(macts, 3),
        paper_params_m=paper.get("params_m"),
        paper_gmacs=paper.get("gmacs"),
        paper_macts=paper.get("macts"),
        paper_top1=paper.get("top1"),
    )


def model_table(pattern: str = "*", img_size: int = 224) -> list[dict]:
    """One row per registered model matching ``pattern``, plus one per paper row recorded for other creation
    arguments (``kwargs``): measured params/GMACs/activations (millions) and the paper's figures."""
    rows = []
    for name in list_models():
        if fnmatch.fnmatch(name, pattern):
            rows.append(_row(name, {}, paper_figures(name), img_size))
            rows.extend(_row(name, kwargs, paper, img_size) for kwargs, paper in paper_variants(name))
    return rows


def format_markdown(rows: list[dict], img_size: int) -> str:
    """A Markdown table of :func:`model_table` rows."""

    def cell(v) -> str:
        return "-" if v is None else f"{v}"

    def label(r: dict) -> str:
        return " ".join([r["model"], *(f"{k}={v}" for k, v in r["kwargs"].items())])

    lines = [
        f"| model | params (M) | GMACs @{img_size} | MActs @{img_size} | paper params (M) | paper GFLOPs "
        "| paper MActs | paper top-1 (%) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {label(r)} | {r['params_m']:.3f} | {r['gmacs']:.3f} | {r['macts']:.3f} | {cell(r['paper_params_m'])} "
            f"| {cell(r['paper_gmacs'])} | {cell(r['paper_macts'])} | {cell(r['paper_top1'])} |"
        )
    return "\n".join(lines)
