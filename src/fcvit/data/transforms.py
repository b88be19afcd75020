"""Train and eval transforms from timm's factory, for 1- or 3-channel inputs.

A *data config* is timm's dict (``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``,
``crop_mode``); it travels inside checkpoints so ``validate`` and ``predict`` rebuild the exact eval
transform. The one addition to timm is the ``'pad'`` train crop (zero-pad, random crop at full size),
the usual crop for small images (CIFAR, Fashion-MNIST) that timm's factory does not offer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image
from timm.data import create_transform
from torchvision import transforms

__all__ = ["ConvertMode", "channel_stats", "create_eval_transform", "create_train_transform", "image_mode"]


def image_mode(in_chans: int) -> str:
    """PIL mode images are decoded to for a model with ``in_chans`` input channels."""
    if in_chans not in (1, 3):
        raise ValueError(f"images can be fed as 1 (grey) or 3 (RGB) channels, not in_chans={in_chans}")
    return "L" if in_chans == 1 else "RGB"


class ConvertMode:
    """Convert a PIL image to ``mode`` ('L' or 'RGB'): grey, palette, RGBA and CMYK images all go in."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == self.mode else img.convert(self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r})"


def channel_stats(values: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """Per-channel mean or std for ``in_chans``: RGB stats average to one grey value, one grey value repeats."""
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    if in_chans == 1:
        return (sum(values) / len(values),)
    raise ValueError(f"{len(values)} normalisation values do not fit {in_chans} input channels")


def create_eval_transform(data_config: dict[str, Any]):
    """timm's eval transform (resize by ``crop_pct``, centre crop, normalise) after converting the image mode."""
    in_chans, *size = data_config["input_size"]
    tf = create_transform(
        input_size=tuple(size),
        is_training=False,
        interpolation=data_config["interpolation"],
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
        crop_pct=data_config["crop_pct"],
        crop_mode=data_config.get("crop_mode", "center"),
    )
    return transforms.Compose([ConvertMode(image_mode(in_chans)), tf])


def create_train_transform(
    data_config: dict[str, Any],
    crop_mode: str = "rrc",
    crop_pad: int = 0,
    scale: Sequence[float] = (0.08, 1.0),
    hflip: float = 0.5,
    color_jitter: float = 0.0,
    auto_augment: str | None = None,
    re_prob: float = 0.0,
    re_mode: str = "pixel",
):
    """timm's train transform; ``crop_mode='pad'`` swaps its RandomResizedCrop for resize + pad-and-crop.

    Order as in timm: crop and flip, then auto-augment / colour jitter, then to-tensor, normalise and
    random erasing.
    """
    in_chans, *size = data_config["input_size"]
    if crop_mode not in ("rrc", "pad"):
        raise ValueError(f"crop_mode must be 'rrc' or 'pad', got {crop_mode!r}")
    primary, secondary, final = create_transform(
        input_size=tuple(size),
        is_training=True,
        scale=tuple(scale),
        hflip=hflip,
        color_jitter=color_jitter,
        auto_augment=None if auto_augment in (None, "", "none") else auto_augment,
        interpolation=data_config["interpolation"],
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
        re_prob=re_prob,
        re_mode=re_mode,
        separate=True,
    )
    if crop_mode == "pad":
        resize = transforms.Resize(tuple(size), interpolation=_interpolation(data_config["interpolation"]))
        primary = [resize, transforms.RandomCrop(tuple(size), padding=crop_pad)] if crop_pad else [resize]
        if hflip > 0:
            primary.append(transforms.RandomHorizontalFlip(hflip))
        primary = transforms.Compose(primary)
    return transforms.Compose([ConvertMode(image_mode(in_chans)), primary, secondary, final])


def _interpolation(name: str) -> transforms.InterpolationMode:
    return transforms.InterpolationMode(name if name != "random" else "bicubic")
