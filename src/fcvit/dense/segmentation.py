"""Semantic FPN (Kirillov et al., "Panoptic Feature Pyramid Networks", 2019) with an FCViT encoder.

Backbone: FCViT's four normed stage maps -> torchvision's FPN (P2..P5, 256 channels, 3x3 output convs).
Head (:class:`SemanticFPNHead`), as mmsegmentation's ``FPNHead`` that the official FCViT/PoolFormer
configs use: each level goes through ``max(1, log2(stride / 4))`` blocks of 3x3 conv + BN + ReLU
(+ 2x bilinear upsampling above stride 4) to 128 channels at 1/4 resolution; the levels are summed,
then dropout 0.1 and a 1x1 classifier; logits are upsampled bilinearly to the label size for the loss.

Why not segmentation_models_pytorch's ``FPN`` with the ``tu-fcvit_b12`` encoder: its pyramid is the
lateral 1x1 convs and top-down sum only, without FPN's 3x3 output convs (2.4M of the official
model's parameters at 256 channels), and its head uses GroupNorm(32) and Dropout2d(0.2). Built
here, FCViT-B12 + Semantic FPN for ADE20K has the official layout (see ``docs/dense.md`` for the
parameter count against the paper's Table 5).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct
from torch import nn
from torch.utils.data import DataLoader

from ..data import load_image
from .backbone import FCViTFPN, create_feature_backbone, normalization
from .config import SegConfig
from .data import IGNORE_INDEX, SemanticSegmentation, read_class_names
from .metrics import ConfusionMatrix

__all__ = ["SegConfig", "SegmentationTask", "SemanticFPN", "SemanticFPNHead", "build_semantic_fpn"]

ADE20K_CLASSES = 150


class SemanticFPNHead(nn.Module):
    """Kirillov et al.'s semantic branch: per-level conv-BN-ReLU(-2x up) stacks to 1/4 scale, sum, 1x1 classifier."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        channels: int = 128,
        strides: tuple[int, ...] = (4, 8, 16, 32),
        dropout: float = 0.1,
    ):
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for stride in strides:
            layers: list[nn.Module] = []
            for k in range(max(1, int(math.log2(stride / strides[0])))):
                layers.append(ConvNormAct(in_channels if k == 0 else channels, channels, 3, act_layer=nn.ReLU))
                if stride != strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.cls_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = self.scale_heads[0](features[0])
        for head, x in zip(self.scale_heads[1:], features[1:]):
            out = out + F.interpolate(head(x), size=out.shape[-2:], mode="bilinear", align_corners=False)
        return self.cls_seg(self.dropout(out))


class SemanticFPN(nn.Module):
    """FCViT + FPN + :class:`SemanticFPNHead`; ``forward`` gives logits at the input resolution."""

    def __init__(self, backbone: FCViTFPN, head: SemanticFPNHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(list(self.backbone(x).values()))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_semantic_fpn(
    num_classes: int,
    model: str = "fcvit_b12",
    checkpoint: str | os.PathLike | None = None,
    model_kwargs: dict[str, Any] | None = None,
    fpn_channels: int = 256,
    head_channels: int = 128,
    dropout: float = 0.1,
) -> SemanticFPN:
    """Semantic FPN on ``model`` (a timm FCViT name), the backbone from a classification ``checkpoint`` if given."""
    body = create_feature_backbone(model, checkpoint, **(model_kwargs or {}))
    backbone = FCViTFPN(body, fpn_channels, extra_pool=False)
    strides = tuple(body.feature_info.reduction())
    return SemanticFPN(backbone, SemanticFPNHead(num_classes, fpn_channels, head_channels, strides, dropout))


def model_from_config(cfg: SegConfig) -> SemanticFPN:
    """Semantic FPN as ``cfg`` describes it (the backbone initialised from ``cfg.checkpoint`` if set)."""
    return build_semantic_fpn(
        cfg.num_classes,
        cfg.model,
        cfg.checkpoint,
        cfg.model_kwargs,
        cfg.fpn_channels,
        cfg.head_channels,
        cfg.dropout,
    )


def train_transforms(cfg: SegConfig, mean: tuple[float, ...], std: tuple[float, ...]):
    """mmsegmentation's ADE20K pipeline in torchvision v2: random resize (short side ``scale_range`` x crop),
    ``crop_size`` crop (padded with ignore), flip, photometric jitter, normalisation."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    lo, hi = (int(cfg.crop_size * s) for s in cfg.scale_range)
    return v2.Compose(
        [
            v2.RandomResize(lo, hi + 1),
            v2.RandomCrop(cfg.crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
            v2.RandomHorizontalFlip(0.5),
            v2.ColorJitter(brightness=32 / 255, contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=18 / 360),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(mean, std),
        ]
    )


class ImageTransform:
    """Evaluation: resize the short side to ``size`` (long side at most 4x) and normalise the image; the label
    keeps its original size, as mmsegmentation scores predictions resized back to the label."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...]):
        from torchvision.transforms import v2

        self.transform = v2.Compose(
            [v2.Resize(size, max_size=4 * size), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
        )

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None):
        image = self.transform(image)
        return image if label is None else (image, label)


class SegmentationTask:
    """Semantic FPN on an ADE20K-layout dataset for :func:`fcvit.dense.engine.train`."""

    name = "seg"
    main_metric = "mIoU"
    panels = {"train loss": ["train_loss"], "mIoU / accuracy": ["mIoU", "aAcc", "mAcc"]}
    x_axis = ("iter", "iteration")  # a round is eval_interval iterations

    def __init__(self, cfg: SegConfig):
        self.cfg = cfg
        if cfg.mean is None or cfg.std is None:
            cfg.mean, cfg.std = normalization(cfg.model, cfg.checkpoint)
        names, reduce_zero = read_class_names(cfg.data_dir)
        if cfg.reduce_zero_label is None:
            cfg.reduce_zero_label = True if reduce_zero is None else reduce_zero
        if cfg.num_classes is None:
            cfg.num_classes = len(names) if names else ADE20K_CLASSES
        self.class_names = (
            names if names and len(names) == cfg.num_classes else [str(i) for i in range(cfg.num_classes)]
        )

    def build_model(self) -> SemanticFPN:
        return model_from_config(self.cfg)

    def dataset(self, split: str, train: bool = False) -> SemanticSegmentation:
        """A split with the training pipeline (random resize, crop, flip, jitter) or the evaluation resize."""
        mean, std = self.cfg.mean, self.cfg.std
        transform = train_transforms(self.cfg, mean, std) if train else ImageTransform(self.cfg.test_size, mean, std)
        return SemanticSegmentation(self.cfg.data_dir, split, transform, self.cfg.reduce_zero_label)

    collate = None

    def rounds(self, loader_len: int) -> tuple[int, int]:
        return self.cfg.eval_interval, math.ceil(self.cfg.iters / self.cfg.eval_interval)

    def lr_scheduler(self, optimizer: torch.optim.Optimizer, round_iters: int):
        """Polynomial decay to 0 over ``iters`` (power 0.9), optional linear warm-up."""
        from timm.scheduler import PolyLRScheduler

        return PolyLRScheduler(
            optimizer,
            t_initial=self.cfg.iters,
            power=self.cfg.poly_power,
            warmup_t=self.cfg.warmup_iters,
            warmup_lr_init=self.cfg.lr * 1e-3,
            t_in_epochs=False,
        )

    def loss(self, model: nn.Module, batch: tuple, device: torch.device) -> tuple[torch.Tensor, int]:
        images, labels = (t.to(device) for t in batch)
        return F.cross_entropy(model(images), labels, ignore_index=IGNORE_INDEX), len(images)

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        return evaluate_segmentation(model, loader, device, self.cfg.num_classes)

    def predict(self, model: nn.Module, files: list[Path], out_dir: Path, device: torch.device, **options) -> list:
        cfg = self.cfg
        return predict_segmentation(model, files, out_dir, cfg.num_classes, cfg.test_size, cfg.mean, cfg.std, device)


@torch.no_grad()
def predict_labels(model: nn.Module, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Label map [B, *size] of a normalised image batch: logits resized to ``size`` (the label's), argmax."""
    logits = model(image)
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False).argmax(1)


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, loader: DataLoader, device: torch.device, num_classes: int) -> dict:
    """mIoU, aAcc and mAcc over the whole validation set (each rank its shard; confusion matrices summed)."""
    model.eval()
    cm = ConfusionMatrix(num_classes, IGNORE_INDEX)
    for image, label in loader:
        cm.update(predict_labels(model, image.to(device), label.shape[-2:]).cpu(), label)
    cm.reduce()
    result = cm.compute()
    result.pop("IoU")
    return result


@torch.no_grad()
def predict_segmentation(
    model: SemanticFPN,
    files: list[Path],
    out_dir: str | os.PathLike,
    num_classes: int,
    test_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
) -> list[Path]:
    """Segment each image file; write ``OUT/<stem>_labels.png`` (palette PNG: pixel value = class, shown in
    colour) and ``OUT/<stem>_overlay.png`` (the colour-coded label map blended over the image)."""
    import numpy as np
    from PIL import Image

    from .data import palette

    if num_classes > 256:
        raise ValueError(f"label-map PNGs hold at most 256 classes, the model has {num_classes}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    transform = ImageTransform(test_size, mean, std)
    colours = palette(num_classes)
    written = []
    for path in files:
        rgb = load_image(path)
        image = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)
        labels = predict_labels(model, transform(image)[None].to(device), image.shape[-2:])[0].cpu().numpy()
        label_png = Image.fromarray(labels.astype(np.uint8))  # mode L; putpalette makes it P
        label_png.putpalette(colours.flatten().tolist())
        label_png.save(out_dir / f"{path.stem}_labels.png")
        overlay = (0.5 * np.asarray(rgb, dtype=np.float32) + 0.5 * colours[labels]).astype(np.uint8)
        Image.fromarray(overlay).save(out_dir / f"{path.stem}_overlay.png")
        written += [out_dir / f"{path.stem}_labels.png", out_dir / f"{path.stem}_overlay.png"]
    return written
