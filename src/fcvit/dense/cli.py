"""``fcvit dense make-data``, ``fcvit det train|eval|predict`` and ``fcvit seg train|eval|predict``.

Training flags are the fields of :class:`~fcvit.dense.config.DetConfig` / :class:`~fcvit.dense.config.SegConfig`
(``--lr``, ``--train-sizes 480 512``, ``--model-kwargs '{"depths": [1, 1, 1, 1]}'``). Precedence, lowest
first: the paper's defaults, ``--preset``, ``--config FILE.yaml`` (e.g. a run's ``config.yaml``), flags given.
``--resume RUN/checkpoint-last.pth`` continues a run with its own config (flags given still override,
e.g. more epochs). Run directories and failures look as ``fcvit train``'s: bad input is one line, exit 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any

from ..engine.config import COMMAND_LINE, add_arguments, build, read_yaml_mapping
from ..errors import device_argument, fraction, non_negative_int, positive_int
from .config import PRESETS, CanvasConfig, DetConfig, SegConfig

TASKS = {"det": DetConfig, "seg": SegConfig}
TASK_HELP = {"det": "Mask R-CNN detection / instance segmentation", "seg": "Semantic FPN semantic segmentation"}
METRICS_HELP = {"det": "COCO box and mask AP, AP50, AP75", "seg": "mIoU, pixel accuracy"}


def add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str = "recipe (defaults: the paper's)") -> None:
    """One ``--field-name`` flag per field of the dataclass ``cls``, in a titled group (:mod:`fcvit.engine.config`)."""
    add_arguments(parser.add_argument_group(title), cls)


def build_config(task: str, args: argparse.Namespace, base: dict[str, Any] | None = None):
    """The task's config: ``base`` (a resumed run's) or defaults + ``--preset`` + ``--config`` YAML; then flags,
    every value checked against its declaration."""
    cls = TASKS[task]
    names = {f.name for f in dataclasses.fields(cls)}
    layers: list[tuple[str, dict[str, Any] | None]] = [("resumed run's config", base)]
    if base is None and args.preset:
        layers.append((f"--preset {args.preset}", PRESETS[task][args.preset]))
    if base is None and args.config:
        layers.append((args.config, read_yaml_mapping(args.config)))
    layers.append((COMMAND_LINE, {k: v for k, v in vars(args).items() if k in names}))
    return build(cls, *layers)


def _make_task(task: str, cfg):
    if task == "det":
        from .detection import DetectionTask

        return DetectionTask(cfg)
    from .segmentation import SegmentationTask

    return SegmentationTask(cfg)


def model_label(model: str, model_kwargs: dict[str, Any]) -> str:
    """The backbone as built, for a directory name: ``fcvit_b12``, or with its creation arguments
    ``fcvit_b12-depths1-1-1-1-dims16-32-64-128`` (a preset's tiny FCViT is not an fcvit_b12)."""
    parts = [model]
    for key, value in sorted(model_kwargs.items()):
        text = "-".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        parts.append(re.sub(r"[^A-Za-z0-9._-]", "", f"{key}{text}"))
    return "-".join(parts)


def _run_dir(args: argparse.Namespace, cfg) -> Path:
    """The resumed run's directory, else a new ``--output/--experiment`` (default ``TASK-MODEL-TIMESTAMP-XXXXXX``,
    chosen on rank 0) that holds no run yet; leftovers of saves a kill interrupted are removed."""
    from ..engine.rundir import clean_orphans, new_run_dir

    if args.resume:
        if args.experiment:
            raise ValueError("--resume continues in the checkpoint's directory; leave out --experiment")
        resume = Path(args.resume)
        run_dir = resume if resume.is_dir() else resume.parent
    else:
        run_dir = new_run_dir(args.output, args.experiment, f"{args.task}-{model_label(cfg.model, cfg.model_kwargs)}")
    clean_orphans(run_dir)
    return run_dir


def run_train(args: argparse.Namespace) -> int:
    from ..engine.distributed import init_distributed, peer_failures
    from ..engine.jsonio import dumps
    from .engine import LAST, load_trained, train

    info = init_distributed(args.device)
    base = (
        load_trained(Path(args.resume) / LAST if Path(args.resume).is_dir() else args.resume, args.task)[0]
        if args.resume
        else None
    )
    cfg = build_config(args.task, args, base=base)
    if not cfg.data_dir:
        raise ValueError("--data-dir is required")
    run_dir = _run_dir(args, cfg)
    task = _make_task(args.task, cfg)
    with peer_failures():
        summary = train(task, run_dir, bool(args.resume), str(info.device), args.eval_before, args.log_interval)
    if info.is_main:
        print(dumps(summary, indent=2))
    return 0


def _load(args: argparse.Namespace):
    """(task, model) from the checkpoint or run directory ``args.checkpoint``; ``--data-dir`` overrides the config's."""
    from ..accel import optimize
    from ..errors import command_backend
    from .engine import load_trained

    config, ckpt = load_trained(args.checkpoint, args.task)
    cfg = TASKS[args.task](**{**config, "checkpoint": None})  # the weights come from ckpt, not the backbone's file
    if getattr(args, "data_dir", None):
        cfg.data_dir = args.data_dir
    task = _make_task(args.task, cfg)
    task.class_names = ckpt["class_names"]
    model = task.build_model()
    model.load_state_dict(ckpt["model"])
    return task, optimize(model, command_backend(cfg.optimize))


def run_eval(args: argparse.Namespace) -> int:
    from ..engine.distributed import cleanup_distributed, is_main_process
    from ..engine.jsonio import dumps, write_json
    from .engine import evaluate_split

    task, model = _load(args)
    metrics, n = evaluate_split(task, model, args.split, args.device)
    result = dict(checkpoint=str(args.checkpoint), data_dir=task.cfg.data_dir, split=args.split, images=n, **metrics)
    if is_main_process():
        print(dumps(result, indent=2))
        if args.output:
            write_json(args.output, result)
    cleanup_distributed()
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..engine.distributed import init_distributed
    from .data import list_images

    task, model = _load(args)
    device = init_distributed(args.device).device
    options = dict(score_threshold=args.score_threshold) if args.task == "det" else {}
    written = task.predict(model.to(device).eval(), list_images(args.images), Path(args.out), device, **options)
    if args.task == "det":  # what each overlay shows, and what the threshold left out
        from .detection import detections_line

        print("\n".join(map(detections_line, written)))
        print(f"wrote {len(written)} overlay PNGs and predictions.json to {args.out}")
    else:
        print(f"wrote {len(written)} PNG files to {args.out}")
    return 0


def run_make_data(args: argparse.Namespace) -> int:
    from ..engine.jsonio import dumps
    from .data import make_dense_dataset

    names = {f.name for f in dataclasses.fields(CanvasConfig)}
    cfg = build(CanvasConfig, (COMMAND_LINE, {k: v for k, v in vars(args).items() if k in names}))
    summary = make_dense_dataset(args.out, args.num_train, args.num_val, cfg, args.seed, args.fashion_root, True)
    print(dumps(summary, indent=2))
    return 0


def _preset_text(values: dict[str, Any]) -> str:
    """What a preset sets, for ``--help``: ``epochs=6, lr=0.001, ...``."""

    def shown(v: Any) -> str:
        return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    return ", ".join(f"{k}={shown(v)}" for k, v in values.items()).replace("%", "%%")


def _common(p: argparse.ArgumentParser, task: str) -> None:
    p.add_argument(
        "--device",
        default="auto",
        type=device_argument,
        help="auto (CUDA if available), cpu, cuda, cuda:1 [default: auto]",
    )
    p.set_defaults(task=task)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("dense", help="dense-prediction data: generate Fashion-MNIST-on-canvas datasets")
    sub = p.add_subparsers(dest="dense_command", required=True, metavar="ACTION")
    m = sub.add_parser("make-data", help="write COCO-format instances and ADE20K-layout label maps")
    m.add_argument("out", help="output directory (gets coco/ and ade/)")
    m.add_argument("--num-train", type=positive_int, default=200, help="training canvases [default: 200]")
    m.add_argument("--num-val", type=positive_int, default=50, help="validation canvases [default: 50]")
    m.add_argument("--seed", type=non_negative_int, default=0, help="random seed [default: 0]")
    m.add_argument("--fashion-root", default=None, help="Fashion-MNIST root (default: the system copy)")
    add_config_flags(m, CanvasConfig, "canvases")
    m.set_defaults(func=run_make_data)

    for task, cls in TASKS.items():
        t = subparsers.add_parser(task, help=TASK_HELP[task])
        actions = t.add_subparsers(dest=f"{task}_command", required=True, metavar="ACTION")
        tr = actions.add_parser("train", help=f"train ({TASK_HELP[task]})")
        tr.add_argument("--output", default="runs", help="parent of the run directory")
        tr.add_argument("--experiment", default="", help=f"run directory name (default: {task}-MODEL-TIMESTAMP-RANDOM)")
        tr.add_argument(
            "--resume",
            default="",
            metavar="CHECKPOINT",
            help="continue from this checkpoint-last.pth (or run directory)",
        )
        presets = "; ".join(f"{name}: {_preset_text(values)}" for name, values in PRESETS[task].items())
        tr.add_argument("--preset", choices=sorted(PRESETS[task]), default=None, help=f"a small recipe ({presets})")
        tr.add_argument("--config", default=None, help="YAML file of recipe fields")
        tr.add_argument("--eval-before", action="store_true", help="evaluate once before training (row 0)")
        tr.add_argument("--log-interval", type=positive_int, default=20, help="steps between log lines [default: 20]")
        _common(tr, task)
        add_config_flags(tr, cls)
        tr.set_defaults(func=run_train)

        ev = actions.add_parser("eval", help=f"evaluate a checkpoint ({METRICS_HELP[task]})")
        ev.add_argument("checkpoint", help="a .pth written by train, or a run directory (its checkpoint-best.pth)")
        ev.add_argument("--data-dir", default=None, help="dataset root (default: the one trained on)")
        ev.add_argument("--split", default="val", help="split to evaluate")
        ev.add_argument("--output", default=None, help="also write the metrics to this JSON file")
        _common(ev, task)
        ev.set_defaults(func=run_eval)

        pr = actions.add_parser("predict", help="write overlay PNGs for images")
        pr.add_argument("checkpoint", help="a .pth written by train, or a run directory (its checkpoint-best.pth)")
        pr.add_argument("images", nargs="+", help="image files or directories")
        pr.add_argument("--out", required=True, help="output directory for the PNGs")
        if task == "det":
            pr.add_argument(
                "--score-threshold",
                type=fraction,
                default=0.5,
                help="draw and list the detections scoring at least this (the model reports those of 0.05 or more) "
                "[default: 0.5]",
            )
        _common(pr, task)
        pr.set_defaults(func=run_predict)
