"""Configs of the dense tasks as data: dataclasses whose defaults are the paper's recipes, and small presets.

Each field declares its type, range and help once (:func:`fcvit.engine.config.option`); the commands' flags and
the checks of every value come from there. Kept free of torch imports so that ``fcvit --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..engine.config import check_model_name, option
from ..errors import MODEL_KWARGS_HELP

__all__ = ["PRESETS", "CanvasConfig", "DetConfig", "SegConfig"]


@dataclass
class CanvasConfig:
    """How canvases are drawn. Item sides are fractions of the canvas side."""

    canvas_size: int = option(128, "canvas side, pixels", low=32)
    min_objects: int = option(1, "fewest items per canvas", low=1)
    max_objects: int = option(4, "most items per canvas", low=1)
    min_scale: float = option(0.25, "smallest item side, as a fraction of the canvas side", above=0, high=1)
    max_scale: float = option(0.5, "largest item side, as a fraction of the canvas side", above=0, high=1)
    min_visible: float = option(
        0.5, "an item with less than this fraction of its pixels visible is left out", above=0, high=1
    )
    threshold: int = option(24, "resized item pixels brighter than this (0..255) belong to the item", low=0, high=255)

    def check(self) -> None:
        if self.min_objects > self.max_objects:
            raise ValueError(f"--min-objects {self.min_objects} exceeds --max-objects {self.max_objects}")
        if self.min_scale > self.max_scale:
            raise ValueError(f"--min-scale {self.min_scale} exceeds --max-scale {self.max_scale}")


def _positive_sizes(sizes: tuple[int, ...]) -> None:
    if not sizes:
        raise ValueError("needs at least one size")


@dataclass
class DenseConfig:
    """What detection and segmentation runs share: data, backbone and its initialisation, run settings."""

    data_dir: str = option("", "dataset root written by `fcvit dense make-data` (coco/ or ade/ layout)")
    model: str = option("fcvit_b12", "backbone: a timm model name with features_only support", check=check_model_name)
    model_kwargs: dict[str, Any] = option({}, MODEL_KWARGS_HELP)
    checkpoint: str | None = option(None, "classification checkpoint initialising the backbone", auto="random init")
    mean: tuple[float, ...] | None = option(None, "input normalisation mean", auto="the checkpoint's, else timm's")
    std: tuple[float, ...] | None = option(
        None, "input normalisation std", above=0, auto="the checkpoint's, else timm's"
    )
    workers: int = option(4, "DataLoader worker processes", low=0)
    seed: int = option(0, "random seed", low=0)
    amp: bool = option(False, "bfloat16 autocast (CUDA only)")
    optimize: bool = option(True, "fcvit.optimize's exact faster backbone modules (--no-optimize: the plain model)")
    grad_clip: float | None = option(None, "clip the gradient norm to this value", above=0, auto="off")


@dataclass
class DetConfig(DenseConfig):
    """Mask R-CNN recipe; defaults are the paper's COCO setting (Table 4: 1x schedule as in mmdetection)."""

    num_classes: int | None = option(
        None, "classes including background", low=2, auto="max category_id of the training set + 1"
    )
    epochs: int = option(12, "epochs", low=1)
    lr_steps: tuple[int, ...] = option((8, 11), "epochs after which the lr is divided by 10", low=1)
    batch_size: int = option(16, "images per step, over all processes", low=1)
    lr: float = option(2e-4, "AdamW learning rate", above=0)
    weight_decay: float = option(1e-4, "AdamW weight decay", low=0)
    warmup_iters: int = option(500, "linear warm-up, iterations", low=0)
    train_sizes: tuple[int, ...] = option(
        tuple(range(480, 801, 32)), "shorter side at training, one drawn per image (multi-scale)", low=32,
        check=_positive_sizes,
    )  # fmt: skip
    test_size: int = option(800, "shorter side at evaluation", low=32)
    max_size: int = option(1333, "longest side at most", low=32)
    fpn_channels: int = option(256, "FPN width", low=1)
    representation_size: int = option(1024, "width of the box head's two fully connected layers", low=1)
    rpn_batch_size_per_image: int = option(256, "anchors sampled per image for the RPN loss", low=1)
    box_batch_size_per_image: int = option(512, "proposals sampled per image for the box head", low=1)
    box_detections_per_img: int = option(100, "detections kept per image", low=1)


@dataclass
class SegConfig(DenseConfig):
    """Semantic FPN recipe; defaults are the paper's ADE20K setting (Table 5, mmsegmentation 40k schedule)."""

    num_classes: int | None = option(None, "classes", low=1, auto="DATA/classes.json, else 150 (ADE20K)")
    reduce_zero_label: bool | None = option(
        None, "label 0 is 'other' and ignored (ADE20K)", auto="DATA/classes.json, else true"
    )
    iters: int = option(40_000, "training iterations", low=1)
    eval_interval: int = option(4_000, "iterations between evaluations", low=1)
    batch_size: int = option(32, "images per step, over all processes", low=1)
    lr: float = option(2e-4, "AdamW learning rate", above=0)
    weight_decay: float = option(1e-4, "AdamW weight decay", low=0)
    poly_power: float = option(0.9, "power of the polynomial lr decay", above=0)
    warmup_iters: int = option(0, "linear warm-up, iterations", low=0)
    crop_size: int = option(512, "training crop side", low=32)
    scale_range: tuple[float, float] = option(
        (0.5, 2.0), "random resize of the short side, as a multiple of crop_size", above=0
    )
    test_size: int = option(512, "short side at evaluation (whole-image inference)", low=32)
    fpn_channels: int = option(256, "FPN width", low=1)
    head_channels: int = option(128, "segmentation head width", low=1)
    dropout: float = option(0.1, "dropout before the classifier", low=0, below=1)

    def check(self) -> None:
        if len(self.scale_range) != 2 or self.scale_range[0] > self.scale_range[1]:
            raise ValueError(f"--scale-range takes MIN MAX with MIN <= MAX, got {list(self.scale_range)}")


# A tiny FCViT on small canvases: trains measurably in minutes on a CPU (see docs/dense.md).
_TINY = dict(model_kwargs=dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128)), workers=0)

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "det": {
        "cpu-demo": dict(
            _TINY,
            epochs=6,
            lr_steps=(4, 5),
            batch_size=8,
            lr=1e-3,
            warmup_iters=20,
            train_sizes=(112, 128, 144),
            test_size=128,
            max_size=256,
            fpn_channels=64,
            representation_size=256,
            rpn_batch_size_per_image=128,
            box_batch_size_per_image=128,
        ),
    },
    "seg": {
        "cpu-demo": dict(
            _TINY,
            iters=600,
            eval_interval=100,
            batch_size=8,
            lr=1e-3,
            crop_size=128,
            test_size=128,
            fpn_channels=64,
            head_channels=64,
        ),
    },
}
