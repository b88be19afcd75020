"""FCViT as a dense-prediction backbone: timm ``features_only`` stage maps through torchvision's FPN.

``timm.create_model(name, features_only=True)`` gives the four stage maps (reductions 4, 8, 16, 32),
each through its own GroupNorm(1) as in the official detection/segmentation backbone. A
classification checkpoint (the official release's or ours) initialises it through timm's
``pretrained_cfg_overlay=dict(file=...)``; the per-stage norms, absent from classification
checkpoints, start fresh. Built without a checkpoint, layer scale starts at 1e-6 as the official
dense backbone does.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..engine.checkpoint import read_weights
from ..hub import create

__all__ = ["FCViTFPN", "create_feature_backbone", "normalization"]


def create_feature_backbone(
    model_name: str = "fcvit_b12", checkpoint: str | os.PathLike | None = None, **model_kwargs: Any
) -> nn.Module:
    """The four normed stage maps of ``model_name`` (``.feature_info.channels()``), from ``checkpoint`` if given.

    ``model_kwargs`` go to the model constructor (e.g. ``depths``/``dims`` for a small custom FCViT).
    """
    model_kwargs.setdefault("layer_scale_init_value", 1e-6)
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"backbone checkpoint {path} does not exist")
        model_kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    return create(model_name, features_only=True, **model_kwargs)


def normalization(
    model_name: str, checkpoint: str | os.PathLike | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the backbone was pretrained with: the ``data_config`` that ``fcvit train`` checkpoints
    record (e.g. Fashion-MNIST's), else ``model_name``'s timm pretrained config (ImageNet's for FCViT)."""
    if checkpoint is not None:
        data_config = read_weights(checkpoint)[1].get("data_config") or {}
        if "mean" in data_config and "std" in data_config:
            mean, std = tuple(data_config["mean"]), tuple(data_config["std"])
            return (mean * 3, std * 3) if len(mean) == 1 else (mean, std)  # grey statistics for RGB input
    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        return tuple(timm.data.IMAGENET_DEFAULT_MEAN), tuple(timm.data.IMAGENET_DEFAULT_STD)
    return tuple(cfg.mean), tuple(cfg.std)


class FCViTFPN(nn.Module):
    """Stage maps C2..C5 -> torchvision ``FeaturePyramidNetwork`` -> P2..P5 (and P6 by max-pool if ``extra_pool``).

    Returns an ``OrderedDict`` keyed ``"0".."3"`` (and ``"pool"``), the layout torchvision's detection
    heads (``MultiScaleRoIAlign(["0", "1", "2", "3"])``) expect; ``out_channels`` is the FPN width.
    Mask R-CNN uses P2..P6 (mmdetection's FPN with ``num_outs=5``), Semantic FPN P2..P5.
    """

    def __init__(self, body: nn.Module, out_channels: int = 256, extra_pool: bool = True):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            body.feature_info.channels(), out_channels, extra_blocks=LastLevelMaxPool() if extra_pool else None
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))
