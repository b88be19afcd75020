"""``fcvit train``, ``fcvit validate`` and ``fcvit predict``.

``fcvit train`` alone trains fcvit_tiny on Fashion-MNIST; ``torchrun --nproc_per_node N -m fcvit.cli train``
runs the same command data-parallel.
"""

from __future__ import annotations

import argparse
import sys

from ..engine.config import mapping_argument
from ..errors import (
    MODEL_KWARGS_HELP,
    NO_OPTIMIZE_HELP,
    command_backend,
    device_argument,
    non_negative_int,
    positive_int,
)


def run_train(args: argparse.Namespace) -> int:
    from ..engine.checkpoint import load_checkpoint
    from .config import config_from_args
    from .train import train

    base = load_checkpoint(args.resume).get("config") if getattr(args, "resume", "") else None
    train(config_from_args(args, base=base))
    return 0


def run_validate(args: argparse.Namespace) -> int:
    import torch

    from ..data.fingerprint import class_names_notice
    from ..data.sets import create_eval_loader, open_dataset
    from ..engine.distributed import pick_device
    from ..engine.jsonio import dumps
    from .evaluate import evaluate

    loaded = _load_model(args)
    recorded = loaded.train_config  # what the run trained on: the defaults of --data, --data-dir and --split
    data = _recorded(args, "data", recorded, "data", "fashion-mnist")
    split = _recorded(args, "split", recorded, "val_split", "val")
    data_dir = _recorded(args, "data_dir", recorded, "data_dir", None)
    dataset, classes = open_dataset(data, split, loaded.in_chans, data_dir, args.limit)
    if len(classes) != loaded.num_classes:
        raise ValueError(f"{data} ({split}) has {len(classes)} classes, the checkpoint's model {loaded.num_classes}")
    if notice := class_names_notice(f"{data} ({split})", classes, loaded.class_names):
        print(notice, file=sys.stderr)
    _say_overrides(loaded.overrides)
    device = pick_device(args.device)
    model = loaded.model.to(device=device, memory_format=torch.channels_last)
    loader = create_eval_loader(
        dataset, loaded.data_config, args.batch_size, args.workers, skip_bad=args.skip_bad_images
    )
    metrics = evaluate(model, loader, device, channels_last=True)
    metrics = {"model": loaded.name, "checkpoint": args.checkpoint, "ema": args.ema, "data": data, "split": split,
               **metrics}  # fmt: skip
    if args.json:
        print(dumps(metrics, indent=2))
    else:
        print(
            f"{args.checkpoint}{' (EMA)' if args.ema else ''} on {data} {split} ({metrics['n']} images): "
            f"top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}%, loss {metrics['loss']:.4f}"
            + (f", {metrics['skipped']} unreadable images skipped" if metrics["skipped"] else "")
        )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    import torch

    from ..data import load_image
    from ..data.transforms import create_eval_transform, image_mode
    from ..engine.jsonio import dumps
    from ..errors import report_error

    loaded = _load_model(args)
    _say_overrides(loaded.overrides)
    class_names, model = loaded.class_names, loaded.model
    transform = create_eval_transform(loaded.data_config)
    mode = image_mode(loaded.in_chans)
    images, paths, failed = [], [], 0
    for path in args.images:
        try:
            images.append(transform(load_image(path, mode)))
            paths.append(path)
        except OSError as e:
            failed += 1
            report_error("predict", e)
    results = []
    k = min(args.topk, len(class_names))
    with torch.no_grad():
        for start in range(0, len(images), args.batch_size):
            probs = model(torch.stack(images[start : start + args.batch_size])).float().softmax(dim=1)
            top = probs.topk(k, dim=1)
            for path, p, i in zip(paths[start:], top.values.tolist(), top.indices.tolist()):
                results.append(
                    {"image": path, "top": [{"class": class_names[c], "index": c, "prob": q} for c, q in zip(i, p)]}
                )
    if args.json:
        print(dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['image']}: " + ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"]))
    return 1 if failed else 0


def _recorded(args: argparse.Namespace, flag: str, record: dict, key: str, default):
    """The value of ``--flag``: given, else what the checkpoint's training config records, else ``default``.
    A given value that differs from the record is said on stderr."""
    given, saved = getattr(args, flag), record.get(key)
    if given is None:
        return saved if key in record else default
    if key in record and given != saved:
        _say_overrides([f"--{flag.replace('_', '-')} {given} (the checkpoint was trained with {saved})"])
    return given


def _say_overrides(overrides: list[str]) -> None:
    for line in overrides:
        print(f"note: {line}", file=sys.stderr)


def _load_model(args: argparse.Namespace):
    """The :class:`~fcvit.hub.LoadedModel` of ``--checkpoint``, optimised unless ``--no-optimize``."""
    from ..hub import load

    return load(
        args.checkpoint,
        model=args.model,
        ema=args.ema,
        num_classes=args.num_classes,
        in_chans=args.in_chans,
        img_size=getattr(args, "img_size", None),
        model_kwargs=args.model_kwargs,
        optimize=command_backend(not args.no_optimize),
    )


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="timm model name (default: the one recorded in the checkpoint)")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="fcvit train, timm, official FCViT/ACmix or safetensors checkpoint (.pth/.safetensors)",
    )
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    p.add_argument("--model-kwargs", type=mapping_argument, metavar="MAPPING", help=MODEL_KWARGS_HELP)
    p.add_argument(
        "--in-chans", type=positive_int, help="input channels (default: the checkpoint's, else its first conv's)"
    )
    p.add_argument(
        "--num-classes", type=positive_int, help="classes (default: the checkpoint's, else its classifier's)"
    )
    p.add_argument("--img-size", type=positive_int, help="input size (default: the checkpoint's, else the model's)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass [default: 64]")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-optimize", action="store_true", help=NO_OPTIMIZE_HELP)


def register(subparsers: argparse._SubParsersAction) -> None:
    from .config import add_config_arguments

    p = subparsers.add_parser(
        "train",
        help="train a model (default: fcvit_tiny on Fashion-MNIST); works under torchrun",
        description="Train with timm's recipe parts. Defaults < --config FILE.yaml < flags. "
        "Example: fcvit train --config configs/imagenet_paper.yaml --data /data/imagenet",
    )
    add_config_arguments(p)
    p.set_defaults(func=run_train)

    p = subparsers.add_parser("validate", help="top-1, top-5 and loss of a checkpoint on a dataset")
    _add_model_args(p)
    p.add_argument(
        "--data", help="'fashion-mnist' or an ImageFolder root [default: the data the checkpoint was trained on]"
    )
    p.add_argument("--data-dir", help="torchvision-style Fashion-MNIST root [default: the checkpoint's]")
    p.add_argument("--split", help="sub-folder / split to validate on [default: the checkpoint's validation split]")
    p.add_argument("--limit", type=positive_int, help="validate on the first N images only")
    p.add_argument("--workers", type=non_negative_int, default=2, help="DataLoader workers [default: 2]")
    p.add_argument("--device", default="auto", type=device_argument, help="'auto', 'cpu', 'cuda' ... [default: auto]")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images instead of stopping")
    p.set_defaults(func=run_validate)

    p = subparsers.add_parser("predict", help="top-k classes of images (any size or mode)")
    _add_model_args(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--topk", type=positive_int, default=5, help="classes to show per image [default: 5]")
    p.set_defaults(func=run_predict)
