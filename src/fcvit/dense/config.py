"""Configs of the dense tasks as data: dataclasses whose defaults are the paper's recipes, and small presets.

Kept free of torch imports so that ``fcvit --help`` stays fast (the CLI builds its flags from these).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["PRESETS", "CanvasConfig", "DetConfig", "SegConfig"]


@dataclass
class CanvasConfig:
    """How canvases are drawn. Item sides are fractions of the canvas side."""

    canvas_size: int = 128
    min_objects: int = 1
    max_objects: int = 4
    min_scale: float = 0.25
    max_scale: float = 0.5
    min_visible: float = 0.5  # an item with less than this fraction of its pixels visible is left out
    threshold: int = 24  # resized item pixels brighter than this (0..255) belong to the item

    def check(self) -> None:
        if self.canvas_size < 32:
            raise ValueError(f"canvas_size must be at least 32 pixels, got {self.canvas_size}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 0 < self.min_scale <= self.max_scale <= 1:
            raise ValueError(f"need 0 < min_scale <= max_scale <= 1, got {self.min_scale}, {self.max_scale}")
        if not 0 < self.min_visible <= 1:
            raise ValueError(f"min_visible must be in (0, 1], got {self.min_visible}")


@dataclass
class DenseConfig:
    """What detection and segmentation runs share: data, backbone and its initialisation, run settings."""

    data_dir: str = ""
    model: str = "fcvit_b12"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None  # classification checkpoint initialising the backbone
    mean: tuple[float, ...] | None = None  # input normalisation; None: the checkpoint's (fcvit train), else timm's
    std: tuple[float, ...] | None = None
    workers: int = 4
    seed: int = 0
    amp: bool = False  # bfloat16 autocast, CUDA only
    optimize: bool = True  # fcvit.optimize's exact faster backbone modules (--no-optimize: the plain model)
    grad_clip: float | None = None


@dataclass
class DetConfig(DenseConfig):
    """Mask R-CNN recipe; defaults are the paper's COCO setting (Table 4: 1x schedule as in mmdetection)."""

    num_classes: int | None = None  # None: max category_id of the training set + 1 (background)
    epochs: int = 12
    lr_steps: tuple[int, ...] = (8, 11)  # epochs after which the lr is divided by 10
    batch_size: int = 16  # total over all processes
    lr: float = 2e-4
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    train_sizes: tuple[int, ...] = tuple(range(480, 801, 32))  # shorter side, one drawn per image (multi-scale)
    test_size: int = 800
    max_size: int = 1333
    fpn_channels: int = 256
    representation_size: int = 1024  # width of the box head's two fully connected layers
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_detections_per_img: int = 100


@dataclass
class SegConfig(DenseConfig):
    """Semantic FPN recipe; defaults are the paper's ADE20K setting (Table 5, mmsegmentation 40k schedule)."""

    num_classes: int | None = None  # None: from DATA/classes.json, else 150 (ADE20K)
    reduce_zero_label: bool | None = None  # None: from DATA/classes.json, else True (ADE20K)
    iters: int = 40_000
    eval_interval: int = 4_000
    batch_size: int = 32  # total over all processes
    lr: float = 2e-4
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    warmup_iters: int = 0
    crop_size: int = 512
    scale_range: tuple[float, float] = (0.5, 2.0)  # random resize of the short side, as a multiple of crop_size
    test_size: int = 512  # short side at evaluation (whole-image inference)
    fpn_channels: int = 256
    head_channels: int = 128
    dropout: float = 0.1


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
