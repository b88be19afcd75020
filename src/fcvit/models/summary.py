"""``fcvit models``: every registered variant with its parameters and GMACs beside the paper's figures."""

from __future__ import annotations

import argparse
import fnmatch
import json

import timm

from ._registry import list_models, paper_figures
from .complexity import count_gmacs, count_params


def model_table(pattern: str = "*", img_size: int = 224) -> list[dict]:
    """One row per registered model matching ``pattern``: measured params/GMACs and the paper's figures."""
    rows = []
    for name in list_models():
        if not fnmatch.fnmatch(name, pattern):
            continue
        # models that fix their input size at creation (Swin's masks) are built for the counted size
        fixed = getattr(timm.get_pretrained_cfg(name), "fixed_input_size", False)
        model = timm.create_model(name, **(dict(img_size=img_size) if fixed else {}))
        paper = paper_figures(name)
        rows.append(
            dict(
                model=name,
                params_m=round(count_params(model) / 1e6, 2),
                gmacs=round(count_gmacs(model, (3, img_size, img_size)), 2),
                paper_params_m=paper.get("params_m"),
                paper_gmacs=paper.get("gmacs"),
                paper_top1=paper.get("top1"),
            )
        )
    return rows


def format_markdown(rows: list[dict], img_size: int) -> str:
    """A Markdown table of :func:`model_table` rows."""

    def cell(v) -> str:
        return "-" if v is None else f"{v}"

    lines = [
        f"| model | params (M) | GMACs @{img_size} | paper params (M) | paper GFLOPs | paper top-1 (%) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params_m']:.2f} | {r['gmacs']:.2f} | {cell(r['paper_params_m'])} "
            f"| {cell(r['paper_gmacs'])} | {cell(r['paper_top1'])} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    rows = model_table(args.filter, args.img_size)
    print(json.dumps(rows, indent=2) if args.json else format_markdown(rows, args.img_size))


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list registered models with params and GMACs")
    p.add_argument("--filter", default="*", help="shell-style pattern on model names, e.g. 'fcvit_*'")
    p.add_argument("--img-size", type=int, default=224, help="square input size for the GMAC count")
    p.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    p.set_defaults(func=run)
