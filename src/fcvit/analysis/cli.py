"""``fcvit analyze``: the paper's spatial-modeling analyses as commands.

- ``attention``: Fig. 2 grids (query point | its attention over the image) of one block, per head.
- ``stats``: query/head irrelevance, entropy and top-1% mass of every layer over a data set (Fig. 1).
- ``similarity``: FCViT's token-global similarity per group (Fig. 5 left), optionally beside a ViT's heads.
- ``compare``: the statistics of two checkpoints of one model, block by block (observation 2).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

from ..engine.config import mapping_argument
from ..errors import (
    MODEL_KWARGS_HELP,
    NO_OPTIMIZE_HELP,
    command_backend,
    device_argument,
    non_negative_int,
    positive_int,
)

ATTENTION_BLOCKS = (
    "block K is the K-th attention layer (module matching '*attn_drop') in forward order, 0-based, "
    "negative from the end; for timm ViT/DeiT that is blocks.K"
)
SIMILARITY_BLOCKS = (
    "block K is the K-th FCViT block with the stages flattened in order (stage 0's blocks first), 0-based, "
    "negative from the end"
)
PREFIX_NOTE = "dropped from queries and keys before the statistics and figures; each row renormalised over the patches"
DEFAULT_POINTS = "0.25,0.25;0.25,0.75;0.5,0.5;0.75,0.5"


# --- argument parsing -----------------------------------------------------------------------------


def _points(text: str) -> list[tuple[float, float]]:
    points = []
    for item in text.split(";"):
        try:
            y, x = (float(v) for v in item.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"a point is 'y,x' (fractions of the image), got {item!r}") from None
        if not (0 <= y <= 1 and 0 <= x <= 1):
            raise argparse.ArgumentTypeError(f"point {item!r} is outside the image: y and x must lie in [0, 1]")
        points.append((y, x))
    return points


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as '0,3,5', got {text!r}") from None


def _add_model_args(p: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    p.add_argument("--model", help="timm model name (vit_*, deit_*, fcvit_*, ...) [default: the checkpoint's]")
    if checkpoint:
        p.add_argument("--checkpoint", help="weights to load (default: random initialisation)")
    p.add_argument("--model-kwargs", type=mapping_argument, default={}, metavar="MAPPING", help=MODEL_KWARGS_HELP)
    p.add_argument("--img-size", type=positive_int, help="square input size (default: the model's)")
    p.add_argument("--device", type=device_argument, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (reproducible maps)")
    p.add_argument("--no-optimize", action="store_true", help=NO_OPTIMIZE_HELP)
    p.add_argument("--output", required=True, help="folder for the PNG and JSON files")


def _add_image_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="*", metavar="IMAGES", help="image files")
    p.add_argument("--demo", action="store_true", help="add scikit-image's photographs (astronaut, chelsea, ...)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="image folder (its val/ subfolder if any) or 'fashion-mnist'")
    p.add_argument("--data-dir", help="torchvision-style Fashion-MNIST root (default: the system copy)")
    p.add_argument("--limit", type=positive_int, help="analyse the first N images only")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per forward pass")
    p.add_argument("--workers", type=non_negative_int, default=2, help="data loader workers")
    p.add_argument("--round", type=int, default=-1, help="FCViT mixing round whose similarity is analysed")


# --- shared steps ---------------------------------------------------------------------------------


def _device(args: argparse.Namespace) -> str:
    import torch

    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _weights(checkpoint: str | None) -> str:
    return checkpoint or "random initialisation (no --checkpoint): an untrained model"


def _weights_short(checkpoint: str | None) -> str:
    return f"weights {os.path.basename(checkpoint)}" if checkpoint else "random weights"


def _load(name: str | None, checkpoint: str | None, kwargs: dict, args: argparse.Namespace):
    """The model on the device with fused attention off (its weights visible to the hooks), its eval data config
    and its name (the checkpoint's record names it when ``name`` is None)."""
    import torch

    from ..hub import load
    from .maps import disable_fused_attention, input_config

    if not (name or checkpoint):
        raise ValueError("name the model (--model) or give a checkpoint that records it (--checkpoint)")
    torch.manual_seed(args.seed)
    loaded = load(
        checkpoint or name,
        model=name if checkpoint else None,
        model_kwargs=kwargs,
        img_size=args.img_size,
        optimize=command_backend(not args.no_optimize),
    )
    for line in loaded.overrides:
        print(f"note: {line}", file=sys.stderr)
    disable_fused_attention(loaded.model)
    cfg = input_config(loaded.model, args.img_size)
    loaded.model.to(_device(args))
    if not checkpoint:
        print(f"note: {loaded.name} has random weights (no checkpoint given)", file=sys.stderr)
    return loaded.model, cfg, loaded.name


def _batch(images: list, cfg: dict, device: str):
    """The images through the model's eval transform as one batch, and each as shown in the figures."""
    import torch

    from ..data.transforms import create_eval_transform
    from .inputs import to_display

    transform = create_eval_transform(cfg)
    x = torch.stack([transform(img) for _, img in images])
    return x.to(device), [to_display(t, cfg) for t in x]


def _index(k: int, n: int, what: str) -> int:
    if not -n <= k < n:
        raise ValueError(f"{what} {k} is out of range: there are {n} (0..{n - 1})")
    return k % n


def _cell(point: tuple[float, float], grid: tuple[int, int]) -> tuple[int, int]:
    """The token (row, col) of ``grid`` under the point (y, x) given as fractions of the image."""
    return min(int(point[0] * grid[0]), grid[0] - 1), min(int(point[1] * grid[1]), grid[1] - 1)


def _save_figure(fig, output: str, name: str) -> str:
    fig.savefig(os.path.join(output, name), dpi=100)
    return name


def _write_json(output: str, name: str, record: dict) -> None:
    from ..engine.jsonio import write_json

    write_json(os.path.join(output, name), record)


def _print_statistics(stats: dict[str, float]) -> None:
    from ..engine.jsonio import dumps

    print(dumps(stats, indent=2))


def _markdown_table(layers: list[dict], series: dict[str, list[dict]]) -> str:
    """Layers as rows; each statistic once per entry of ``series`` (label -> per-layer statistics)."""
    from .stats import STAT_NAMES

    columns = [f"{s} ({label})" if len(series) > 1 else s for s in STAT_NAMES for label in series]
    header = ["layer", "name", "kind", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * (len(header) - 3)]
    for i, layer in enumerate(layers):
        cells = [str(i), layer["name"], layer["kind"]]
        for s in STAT_NAMES:
            for stats in series.values():
                v = stats[i][s]
                cells.append("-" if math.isnan(v) else f"{v:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"layer {i}: {layer['note']}" for i, layer in enumerate(layers) if "note" in layer]
    return "\n".join(lines + ([""] + notes if notes else []))


# --- commands -------------------------------------------------------------------------------------


def run_attention(args: argparse.Namespace) -> None:
    from .inputs import gather_images
    from .maps import MapProbe, attention_layer_names, attention_layout
    from .plots import attention_grid
    from .stats import drop_prefix_tokens
    from .survey import statistics_or_reason

    images = gather_images(args.images, args.demo)
    model, cfg, args.model = _load(args.model, args.checkpoint, args.model_kwargs, args)
    names = attention_layer_names(model)
    if not names:
        raise ValueError(
            f"{args.model} has no attention layers (no module matching '*attn_drop'); "
            f"for FCViT use `fcvit analyze similarity`"
        )
    k = _index(args.block, len(names), "block")
    x, shown = _batch(images, cfg, _device(args))
    attn = MapProbe(model, attention=[names[k]])(x)[names[k]].float().cpu()
    p = getattr(model, "num_prefix_tokens", 0)
    heads = args.heads if args.heads is not None else list(range(attn.shape[1]))
    for h in heads:
        _index(h, attn.shape[1], "head")
    os.makedirs(args.output, exist_ok=True)
    record: dict[str, Any] = dict(
        command="attention",
        model=args.model,
        weights=_weights(args.checkpoint),
        layer=names[k],
        block=k,
        num_blocks=len(names),
        block_numbering=ATTENTION_BLOCKS,
        input_size=list(x.shape[1:]),
        attention_shape=list(attn.shape[1:]),
        num_prefix_tokens=p,
        prefix_tokens=PREFIX_NOTE if p else "none",
        heads=heads,
    )
    record["statistics"], note = statistics_or_reason(attn, p)
    if note:
        record["statistics_note"] = note
    record["images"] = []
    a = drop_prefix_tokens(attn, p)
    try:
        layout = attention_layout(model.get_submodule(names[k]), a, x.shape[0], tuple(x.shape[-2:]))
    except ValueError as e:
        record["figures_skipped"] = str(e)
        print(f"note: no figures: {e}", file=sys.stderr)
        layout = None
    title = f"{args.model} {names[k]} (block {k} of {len(names)}), {_weights_short(args.checkpoint)}"
    per_image = attn.reshape(len(images), -1, *attn.shape[1:])  # Swin-style windows: [images, windows, ...]
    for i, (name, _) in enumerate(images):
        entry: dict[str, Any] = dict(name=name, statistics=statistics_or_reason(per_image[i], p)[0])
        if layout is not None:
            cells = [_cell(pt, layout.query_grid) for pt in args.points]
            maps = layout.maps(a[i][heads], cells).numpy()
            fig = attention_grid(shown[i], maps, cells, layout.query_grid, heads, f"{name}: {title}")
            entry["figure"] = _save_figure(fig, args.output, f"attention_{i:02d}_{name}.png")
            entry["query_cells"] = [list(c) for c in cells]
        record["images"].append(entry)
    if layout is not None:
        record.update(
            query_points=[list(pt) for pt in args.points],
            query_grid=list(layout.query_grid),
            key_grid=list(layout.key_grid),
            key_window=layout.window,
        )
    _write_json(args.output, "attention.json", record)
    _print_statistics(record["statistics"])
    print(f"wrote {len(images) if layout else 0} figure(s) and attention.json to {args.output}")


def run_similarity(args: argparse.Namespace) -> None:
    import torch

    from .inputs import gather_images
    from .maps import (
        SIMILARITY_NORMALISATION,
        MapProbe,
        attention_layer_names,
        attention_layout,
        fcvit_blocks,
        similarity_rows,
        similarity_site,
    )
    from .plots import similarity_figure
    from .stats import attention_stats, drop_prefix_tokens
    from .survey import statistics_or_reason

    images = gather_images(args.images, args.demo)
    model, cfg, args.model = _load(args.model, args.checkpoint, args.model_kwargs, args)
    site = similarity_site(model, args.block, args.round)
    x, shown = _batch(images, cfg, _device(args))
    s = MapProbe(model, attention=[], sites=[site])(x)[site.name].float().cpu()
    rows = similarity_rows(s)
    os.makedirs(args.output, exist_ok=True)
    record: dict[str, Any] = dict(
        command="similarity",
        model=args.model,
        weights=_weights(args.checkpoint),
        layer=site.name,
        block=site.block_index,
        num_blocks=len(fcvit_blocks(model)),
        block_numbering=SIMILARITY_BLOCKS,
        input_size=list(x.shape[1:]),
        groups=s.shape[1],
        map_size=list(s.shape[-2:]),
        normalisation=SIMILARITY_NORMALISATION,
        statistics=attention_stats(rows),
        images=[],
    )
    vit = None
    if args.compare:
        vit_model, vit_cfg, _ = _load(args.compare, args.compare_checkpoint, args.compare_kwargs, args)
        vit_names = attention_layer_names(vit_model)
        if not vit_names:
            raise ValueError(f"--compare {args.compare} has no attention layers (no module matching '*attn_drop')")
        xv, vit_shown = _batch(images, vit_cfg, _device(args))
        vit_attn = MapProbe(vit_model, attention=vit_names[-1:])(xv)[vit_names[-1]].float().cpu()
        vp = getattr(vit_model, "num_prefix_tokens", 0)
        va = drop_prefix_tokens(vit_attn, vp)
        layout = attention_layout(vit_model.get_submodule(vit_names[-1]), va, xv.shape[0], tuple(xv.shape[-2:]))
        cell = _cell(args.point, layout.query_grid)
        vit = torch.stack([layout.maps(a, [cell])[0] for a in va]).numpy()  # [B, heads, *key_grid]
        record["compare"] = dict(
            model=args.compare,
            weights=_weights(args.compare_checkpoint),
            layer=vit_names[-1],
            attention_shape=list(vit_attn.shape[1:]),
            num_prefix_tokens=vp,
            prefix_tokens=PREFIX_NOTE if vp else "none",
            query_point=list(args.point),
            query_cell=list(cell),
        )
        record["compare"]["statistics"], note = statistics_or_reason(vit_attn, vp)
        if note:
            record["compare"]["statistics_note"] = note
    title = f"{args.model} {site.name} (block {site.block_index}), {_weights_short(args.checkpoint)}"
    for i, (name, _) in enumerate(images):
        entry: dict[str, Any] = dict(name=name, statistics=attention_stats(rows[i : i + 1]))
        if vit is not None:
            heads = list(range(vit.shape[1]))
            compare = (vit_shown[i], vit[i], cell, layout.query_grid, heads, f"{args.compare}\n{vit_names[-1]}")
            entry["compare_statistics"] = statistics_or_reason(vit_attn[i : i + 1], vp)[0]
        else:
            compare = None
        fig = similarity_figure(shown[i], s[i].numpy(), f"{name}: {title}", compare)
        entry["figure"] = _save_figure(fig, args.output, f"similarity_{i:02d}_{name}.png")
        record["images"].append(entry)
    _write_json(args.output, "similarity.json", record)
    _print_statistics(record["statistics"])
    print(f"wrote {len(images)} figure(s) and similarity.json to {args.output}")


def _dataset_layers(model, dataset, args: argparse.Namespace) -> tuple[list[dict], int]:
    """Statistics of every attention layer and FCViT global context of ``model`` over ``dataset``."""
    from .maps import MapProbe, similarity_sites
    from .survey import dataset_statistics

    probe = MapProbe(model, sites=similarity_sites(model, args.round))
    return dataset_statistics(
        probe, dataset, args.batch_size, args.workers, _device(args), getattr(model, "num_prefix_tokens", 0)
    )


def _dataset_record(command: str, args: argparse.Namespace, model, count: int, layers: list[dict]) -> dict:
    from .maps import SIMILARITY_NORMALISATION

    p = getattr(model, "num_prefix_tokens", 0)
    record: dict[str, Any] = dict(command=command, model=args.model, data=args.data, num_images=count)
    record["prefix_tokens"] = f"{p} {PREFIX_NOTE}" if p else "none"
    if any(layer["kind"] == "similarity" for layer in layers):
        record["similarity_normalisation"] = SIMILARITY_NORMALISATION
    return record


def run_stats(args: argparse.Namespace) -> None:
    from .inputs import build_dataset
    from .plots import depth_figure

    model, cfg, args.model = _load(args.model, args.checkpoint, args.model_kwargs, args)
    dataset = build_dataset(args.data, cfg, args.limit, args.data_dir)
    layers, count = _dataset_layers(model, dataset, args)
    os.makedirs(args.output, exist_ok=True)
    record = _dataset_record("stats", args, model, count, layers)
    record.update(weights=_weights(args.checkpoint), layers=layers)
    label = f"{args.model} ({_weights_short(args.checkpoint)})"
    fig = depth_figure({label: [layer["statistics"] for layer in layers]}, f"{label} on {args.data}, {count} images")
    record["figure"] = _save_figure(fig, args.output, "stats.png")
    _write_json(args.output, "stats.json", record)
    print(_markdown_table(layers, {args.model: [layer["statistics"] for layer in layers]}))
    print(f"wrote stats.json and stats.png to {args.output}")


def run_compare(args: argparse.Namespace) -> None:
    from .inputs import build_dataset
    from .plots import depth_figure

    labels = args.labels or [os.path.splitext(os.path.basename(c))[0] for c in args.checkpoints]
    if labels[0] == labels[1]:
        labels = [f"A: {labels[0]}", f"B: {labels[1]}"]
    series: dict[str, list[dict]] = {}
    dataset = layers = None
    for label, checkpoint in zip(labels, args.checkpoints):
        model, cfg, args.model = _load(args.model, checkpoint, args.model_kwargs, args)
        if dataset is None:
            dataset = build_dataset(args.data, cfg, args.limit, args.data_dir)
        layers, count = _dataset_layers(model, dataset, args)
        series[label] = [layer["statistics"] for layer in layers]
    os.makedirs(args.output, exist_ok=True)
    record = _dataset_record("compare", args, model, count, layers)
    record["checkpoints"] = dict(zip(labels, args.checkpoints))
    record["layers"] = [
        dict(layer, statistics={label: series[label][i] for label in labels}) for i, layer in enumerate(layers)
    ]
    fig = depth_figure(series, f"{args.model} on {args.data}, {count} images")
    record["figure"] = _save_figure(fig, args.output, "compare.png")
    table = _markdown_table(layers, series)
    with open(os.path.join(args.output, "compare.md"), "w") as f:
        f.write(table + "\n")
    _write_json(args.output, "compare.json", record)
    print(table)
    print(f"wrote compare.json, compare.md and compare.png to {args.output}")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "analyze", help="spatial-modeling analyses: attention maps and statistics, FCViT similarity maps"
    )
    sub = p.add_subparsers(dest="analyze_command", required=True, metavar="ANALYSIS")

    a = sub.add_parser("attention", help="Fig. 2 grids: attention of chosen query points, per head, over images")
    _add_model_args(a)
    _add_image_args(a)
    a.add_argument("--block", type=int, default=-1, help=ATTENTION_BLOCKS)
    a.add_argument("--heads", type=_ints, help="comma-separated heads to draw (default: all)")
    a.add_argument(
        "--points",
        type=_points,
        default=_points(DEFAULT_POINTS),
        help=f"query points 'y,x;y,x' in [0,1] ({DEFAULT_POINTS})",
    )
    a.set_defaults(func=run_attention)

    s = sub.add_parser("stats", help="Fig. 1: the four attention statistics of every layer over a data set")
    _add_model_args(s)
    _add_data_args(s)
    s.set_defaults(func=run_stats)

    m = sub.add_parser("similarity", help="Fig. 5: FCViT's token-global similarity per group, optionally beside a ViT")
    _add_model_args(m)
    _add_image_args(m)
    m.add_argument("--block", type=int, default=-1, help=SIMILARITY_BLOCKS)
    m.add_argument("--round", type=int, default=-1, help="mixing round of the block, negative from the end")
    m.add_argument("--compare", metavar="VIT_MODEL", help="draw this ViT's per-head attention of its last block below")
    m.add_argument("--compare-checkpoint", help="weights of the --compare model")
    m.add_argument(
        "--compare-kwargs",
        type=mapping_argument,
        default={},
        metavar="MAPPING",
        help="create_model kwargs of --compare",
    )
    m.add_argument("--point", type=lambda t: _points(t)[0], default=(0.5, 0.5), help="fixed ViT query point 'y,x'")
    m.set_defaults(func=run_similarity)

    c = sub.add_parser("compare", help="the statistics of two checkpoints of one model, block by block")
    c.add_argument("checkpoints", nargs=2, metavar="CKPT", help="the two checkpoints (A and B)")
    _add_model_args(c, checkpoint=False)
    _add_data_args(c)
    c.add_argument("--labels", nargs=2, metavar=("A", "B"), help="names of the checkpoints (default: file names)")
    c.set_defaults(func=run_compare)
