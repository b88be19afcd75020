"""``fcvit train``, ``fcvit validate`` and ``fcvit predict``.

``fcvit train`` alone trains fcvit_tiny on Fashion-MNIST; ``torchrun --nproc_per_node N -m fcvit.cli train``
runs the same command data-parallel.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..accel import NO_OPTIMIZE_HELP, command_backend, optimize
from ..errors import non_negative_int, positive_int


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
    from ..engine.distributed import pick_device
    from .build import create_eval_loader, open_dataset
    from .evaluate import evaluate

    model, data_config, class_names = _load_model(args)
    if args.img_size:
        data_config["input_size"] = [data_config["input_size"][0], args.img_size, args.img_size]
    dataset, classes = open_dataset(args.data, args.split, data_config["input_size"][0], args.data_dir, args.limit)
    if len(classes) != len(class_names):
        raise ValueError(
            f"{args.data} ({args.split}) has {len(classes)} classes, the checkpoint's model {len(class_names)}"
        )
    if notice := class_names_notice(f"{args.data} ({args.split})", classes, class_names):
        print(notice, file=sys.stderr)
    device = pick_device(args.device)
    model.to(device=device, memory_format=torch.channels_last)
    loader = create_eval_loader(dataset, data_config, args.batch_size, args.workers, skip_bad=args.skip_bad_images)
    metrics = evaluate(model, loader, device, channels_last=True)
    metrics = {
        "model": model.default_cfg.get("architecture", args.model),
        "checkpoint": args.checkpoint,
        "ema": args.ema,
        **metrics,
    }
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(
            f"{args.checkpoint}{' (EMA)' if args.ema else ''} on {args.data} {args.split} ({metrics['n']} images): "
            f"top-1 {metrics['top1']:.2f}%, top-5 {metrics['top5']:.2f}%, loss {metrics['loss']:.4f}"
            + (f", {metrics['skipped']} unreadable images skipped" if metrics["skipped"] else "")
        )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    import torch

    from ..data import load_image
    from ..data.transforms import create_eval_transform, image_mode
    from ..errors import report_error

    model, data_config, class_names = _load_model(args)
    transform = create_eval_transform(data_config)
    mode = image_mode(data_config["input_size"][0])
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
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['image']}: " + ", ".join(f"{t['class']} {t['prob']:.3f}" for t in r["top"]))
    return 1 if failed else 0


def _load_model(args: argparse.Namespace):
    """(model, data config, class names) of ``--checkpoint``, optimised unless ``--no-optimize``."""
    from .build import load_trained_model

    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else None
    trained = load_trained_model(args.model, args.checkpoint, args.ema, kwargs, args.in_chans, args.num_classes)
    return optimize(trained.model, command_backend(not args.no_optimize)), trained.data_config, trained.class_names


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="timm model name (default: the one recorded in the checkpoint)")
    p.add_argument(
        "--checkpoint", required=True, help="fcvit train, timm or official FCViT checkpoint (.pth/.safetensors)"
    )
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    p.add_argument(
        "--model-kwargs", metavar="JSON", help="extra timm.create_model arguments (checkpoints of other tools)"
    )
    p.add_argument(
        "--in-chans", type=positive_int, help="input channels (default: the checkpoint's, else its first conv's)"
    )
    p.add_argument(
        "--num-classes", type=positive_int, help="classes (default: the checkpoint's, else its classifier's)"
    )
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
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
    p.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder root")
    p.add_argument("--data-dir", help="torchvision-style Fashion-MNIST root")
    p.add_argument("--split", default="val", help="sub-folder / split to validate on")
    p.add_argument("--limit", type=positive_int, help="validate on the first N images only")
    p.add_argument("--img-size", type=positive_int, help="override the checkpoint's input size")
    p.add_argument("--workers", type=non_negative_int, default=2, help="DataLoader workers")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' ...")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images instead of stopping")
    p.set_defaults(func=run_validate)

    p = subparsers.add_parser("predict", help="top-k classes of images (any size or mode)")
    _add_model_args(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--topk", type=positive_int, default=5, help="classes to show per image")
    p.set_defaults(func=run_predict)
