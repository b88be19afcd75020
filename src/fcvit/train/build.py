"""From a training config to a data config and loaders (``fcvit train``)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from timm.data import resolve_model_data_config
from torch import nn
from torch.utils.data import Dataset

from ..data import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from ..data.loaders import DatasetLoader
from ..data.sets import create_eval_loader, in_memory, is_fashion_mnist, tensor_loader
from ..data.transforms import channel_stats, create_train_transform
from ..models.complexity import ActivationCounter, count_params
from ..runtime import available_memory
from .config import TrainConfig

__all__ = ["check_memory", "create_loaders", "resolve_data_config", "training_memory"]


def resolve_data_config(cfg: TrainConfig, model: nn.Module) -> dict[str, Any]:
    """Input size, interpolation, mean/std and eval crop: the config's values, else the data's, else the model's."""
    model_cfg = resolve_model_data_config(model)
    fmnist = is_fashion_mnist(cfg.data)
    in_chans = cfg.in_chans
    size = cfg.img_size or model_cfg["input_size"][-1]
    mean = cfg.mean or (FASHION_MNIST_MEAN if fmnist else model_cfg["mean"])
    std = cfg.std or (FASHION_MNIST_STD if fmnist else model_cfg["std"])
    return {
        "input_size": [in_chans, size, size],
        "interpolation": cfg.interpolation or model_cfg.get("interpolation", "bicubic"),
        "mean": list(channel_stats(mean, in_chans)),
        "std": list(channel_stats(std, in_chans)),
        "crop_pct": cfg.crop_pct or (1.0 if fmnist else model_cfg.get("crop_pct", 0.875)),
        "crop_mode": model_cfg.get("crop_mode", "center"),
    }


def create_loaders(
    cfg: TrainConfig,
    data_config: dict[str, Any],
    train_set: Dataset,
    val_set: Dataset,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
):
    """Train and validation loaders. Light augmentation of Fashion-MNIST runs on tensors (same result as
    the PIL path, far cheaper); anything else (RandAugment, erasing, jitter, resizing) goes through timm."""
    light = cfg.crop_mode == "pad" and cfg.aa in (None, "", "none") and not cfg.reprob and not cfg.color_jitter
    if light and in_memory(train_set, data_config):
        train_loader = tensor_loader(
            train_set, data_config, cfg.batch_size, True, cfg.crop_pad, cfg.hflip, cfg.seed, rank, world_size
        )
    else:
        transform = create_train_transform(
            data_config,
            crop_mode=cfg.crop_mode,
            crop_pad=cfg.crop_pad,
            scale=cfg.scale,
            hflip=cfg.hflip,
            color_jitter=cfg.color_jitter,
            auto_augment=cfg.aa,
            re_prob=cfg.reprob,
            re_mode=cfg.remode,
        )
        train_loader = DatasetLoader(
            train_set,
            transform,
            cfg.batch_size,
            train=True,
            workers=cfg.workers,
            seed=cfg.seed,
            rank=rank,
            world_size=world_size,
            skip_bad=cfg.skip_bad_images,
            pin_memory=pin_memory,
        )
    val_loader = create_eval_loader(
        val_set, data_config, cfg.batch_size, cfg.workers, rank, world_size, cfg.skip_bad_images, pin_memory
    )
    return train_loader, val_loader


def training_memory(model: nn.Module, cfg: TrainConfig) -> int | None:
    """Bytes one training step of ``model`` under ``cfg`` needs, estimated: the outputs of every convolution,
    linear layer and matrix product for one image (counted on a meta-device copy, so any size costs nothing) times
    the batch, kept for the backward pass and matched by their gradients (x 3, fp32), plus the weights with their
    gradients and two AdamW moments (x 4). Element-wise intermediates are not counted: it is a lower bound.
    None when the model does not run on the meta device."""
    counter = ActivationCounter()
    try:
        with torch.no_grad(), counter:
            copy.deepcopy(model).to("meta").eval()(
                torch.empty(1, cfg.in_chans, cfg.img_size, cfg.img_size, device="meta")
            )
    except (NotImplementedError, RuntimeError):  # an operator without a meta kernel: no estimate
        return None
    return cfg.batch_size * counter.total * 4 * 3 + count_params(model) * 4 * 4


def check_memory(cfg: TrainConfig, device: torch.device, model: nn.Module | None = None) -> None:
    """Refuse, before the work, a run that cannot fit in the memory ``device`` has free, naming the estimate and the
    flags that set it: the batch of input images alone before the model is built (``model`` None), then one
    training step (:func:`training_memory`) once it is."""
    free = available_memory(str(device))
    if free is None or cfg.img_size is None:
        return
    if model is None:
        need, what = cfg.batch_size * cfg.in_chans * cfg.img_size**2 * 4, "its batch of input images alone needs"
    else:
        need, what = training_memory(model, cfg), f"one training step of {cfg.model} needs at least"
    if need is not None and need > free:
        raise ValueError(
            f"--img-size {cfg.img_size} with --batch-size {cfg.batch_size}: {what} {need / 2**30:.3g} GiB, and "
            f"{device} has {free / 2**30:.3g} GiB free; lower them"
        )
