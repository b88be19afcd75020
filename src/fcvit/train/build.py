"""From a config to datasets, a data config and loaders (shared by ``train``, ``validate`` and ``predict``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import timm
import torch
from timm.data import ImageNetInfo, resolve_model_data_config
from torch import nn
from torch.utils.data import Dataset, Subset

from ..data import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, FashionMNIST, ImageFolderDataset
from ..data.loaders import DatasetLoader, TensorLoader
from ..data.transforms import channel_stats, create_eval_transform, create_train_transform, image_mode
from ..engine.checkpoint import read_weights
from ..hub.pretrained import weights_layout
from .config import FASHION_MNIST, TrainConfig

__all__ = [
    "TrainedModel",
    "create_eval_loader",
    "create_loaders",
    "create_model",
    "is_fashion_mnist",
    "load_trained_model",
    "open_dataset",
    "resolve_data_config",
]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` with one-line errors for the user's part: an unknown name (with the
    closest registered names) and keyword arguments the model does not take (with the ones it does)."""
    import difflib

    import fcvit  # noqa: F401  (registers this project's models with timm)

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(f"unknown model {name!r}" + (f"; closest: {', '.join(close)}" if close else ""))
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as e:
        raise ValueError(f"model {name} does not take these arguments ({e}){_accepted(e)}") from None


def _accepted(e: TypeError) -> str:
    """``"; it accepts: a, b, ..."``: the keyword arguments of the model class timm's builder called (found in the
    traceback's ``build_model_with_cfg`` frame) and of the bases it hands ``**kwargs`` on to; empty if unknown."""
    import inspect

    cls, tb = None, e.__traceback__
    while tb is not None:
        cls = tb.tb_frame.f_locals.get("model_cls", cls)
        tb = tb.tb_next
    if not isinstance(cls, type):
        return ""
    accepted: list[str] = []
    for klass in cls.__mro__:
        params = inspect.signature(klass.__init__).parameters.values()
        accepted += [p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if klass is nn.Module or not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return f"; it accepts: {', '.join(dict.fromkeys(accepted))}"


def is_fashion_mnist(data: str) -> bool:
    return data.lower() in (FASHION_MNIST, "fashion_mnist", "fashionmnist")


def open_dataset(
    data: str,
    split: str,
    in_chans: int,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
) -> tuple[Dataset, list[str]]:
    """A split of Fashion-MNIST or of an ImageFolder tree, and its class names (label order).

    ``data``: ``'fashion-mnist'`` (splits ``train`` and ``val``/``test``) or a directory whose
    sub-folder ``split`` holds one folder per class; a directory without that sub-folder is itself the
    class-folder tree. ``limit`` keeps N images (Fashion-MNIST: the first N; folders: a fixed random N,
    all classes represented in proportion).
    """
    if is_fashion_mnist(data):
        return FashionMNIST(split, root=data_dir, limit=limit), list(FASHION_MNIST_CLASSES)
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {data}: no such directory (and not 'fashion-mnist')")
    folder = root / split if (root / split).is_dir() else root
    if folder == root and any((root / s).is_dir() for s in ("train", "val")):
        raise FileNotFoundError(f"--data {data} has no {split}/ folder")
    dataset = ImageFolderDataset(folder, mode=image_mode(in_chans))
    classes = list(dataset.classes)
    if limit is not None and limit < len(dataset):
        keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:limit].sort().values
        dataset = Subset(dataset, keep.tolist())
    return dataset, classes


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


def _in_memory(dataset: Dataset, data_config: dict[str, Any]) -> bool:
    """The tensor path applies: Fashion-MNIST at its native 28 px (no resize), grey or repeated to RGB."""
    return isinstance(dataset, FashionMNIST) and tuple(data_config["input_size"][1:]) == tuple(
        dataset.images.shape[-2:]
    )


def _tensor_loader(
    dataset: FashionMNIST,
    data_config: dict[str, Any],
    batch_size: int,
    train: bool,
    crop_pad: int = 0,
    hflip: float = 0.0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> TensorLoader:
    return TensorLoader(
        dataset.images,
        dataset.targets,
        batch_size,
        train,
        mean=data_config["mean"],
        std=data_config["std"],
        in_chans=data_config["input_size"][0],
        crop_pad=crop_pad,
        hflip=hflip,
        seed=seed,
        rank=rank,
        world_size=world_size,
    )


def create_eval_loader(
    dataset: Dataset,
    data_config: dict[str, Any],
    batch_size: int,
    workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    skip_bad: bool = False,
    pin_memory: bool = False,
):
    """Evaluation batches: every sample once, through the eval transform of ``data_config``."""
    if _in_memory(dataset, data_config) and data_config["crop_pct"] == 1.0:
        return _tensor_loader(dataset, data_config, batch_size, False, rank=rank, world_size=world_size)
    return DatasetLoader(
        dataset,
        create_eval_transform(data_config),
        batch_size,
        train=False,
        workers=workers,
        rank=rank,
        world_size=world_size,
        skip_bad=skip_bad,
        pin_memory=pin_memory,
    )


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
    if light and _in_memory(train_set, data_config):
        train_loader = _tensor_loader(
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


class TrainedModel(NamedTuple):
    """What :func:`load_trained_model` rebuilds from a file."""

    model: nn.Module  # in eval mode, weights loaded
    data_config: dict[str, Any]  # eval data config: input_size [in_chans, H, W], mean/std, crop, interpolation
    class_names: list[str]
    name: str  # timm model name
    model_kwargs: dict[str, Any]  # create_model arguments besides num_classes and in_chans


def load_trained_model(
    model_name: str | None,
    checkpoint: str | os.PathLike,
    ema: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    in_chans: int | None = None,
    num_classes: int | None = None,
) -> TrainedModel:
    """A model with the weights of ``checkpoint`` in eval mode, its eval data config and its class names.

    ``fcvit train`` checkpoints and ``fcvit export`` safetensors carry the model name, keyword arguments, class
    names and data config (channels, image size, mean/std). For other files (timm, official FCViT, bare state
    dicts) ``in_chans`` and ``num_classes`` are read off the weights (:func:`weights_layout`) and the data config
    comes from the model's pretrained_cfg. ``in_chans``/``num_classes`` given here (or in ``model_kwargs``)
    override what the file says. A detection or segmentation checkpoint is refused in one line.
    """
    weights, meta = read_weights(checkpoint, ema=ema)
    if meta.get("task") in ("det", "seg"):
        what = {"det": "Mask R-CNN detection", "seg": "Semantic FPN segmentation"}[meta["task"]]
        raise ValueError(
            f"{checkpoint} is a {what} checkpoint (fcvit {meta['task']} train), not a classifier: "
            f"use `fcvit {meta['task']} predict|eval` with it"
        )
    model_name = model_name or meta.get("model_name")
    if not model_name:
        raise ValueError(f"{checkpoint} does not say which model it holds: pass --model")
    if meta.get("model_name") and meta["model_name"] != model_name:
        raise ValueError(f"{checkpoint} holds a {meta['model_name']}, not a {model_name}")
    kwargs = {**meta.get("model_kwargs", {}), **(model_kwargs or {})}
    # given > --model-kwargs > the file's record > the weights' shapes > timm's defaults
    in_chans = in_chans or kwargs.pop("in_chans", None)
    num_classes = num_classes or kwargs.pop("num_classes", None)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("in_chans", "num_classes")}
    saved_config = meta.get("data_config")
    file_chans, file_classes = weights_layout(model_name, weights)
    in_chans = in_chans or (saved_config["input_size"][0] if saved_config else None) or file_chans or 3
    num_classes = num_classes or meta.get("num_classes") or file_classes or 1000
    model = create_model(model_name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.load_state_dict(weights)
    model.eval()
    if saved_config and saved_config["input_size"][0] == in_chans:
        data_config = dict(saved_config)
    else:
        data_config = resolve_model_data_config(model)
        data_config = {
            **data_config,
            "input_size": [in_chans, *data_config["input_size"][1:]],
            "mean": list(channel_stats(data_config["mean"], in_chans)),
            "std": list(channel_stats(data_config["std"], in_chans)),
        }
    # the weights' preprocessing, where timm looks for it (resolve_data_config(model=...), tools built on timm)
    model.pretrained_cfg = {
        **getattr(model, "pretrained_cfg", {}),
        **{k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()},
    }
    class_names = meta.get("class_names")
    if not class_names or len(class_names) != num_classes:
        if num_classes == 1000:
            info = ImageNetInfo()
            class_names = [info.index_to_description(i) for i in range(num_classes)]
        else:
            class_names = [f"class_{i}" for i in range(num_classes)]
    return TrainedModel(model, data_config, list(class_names), model_name, kwargs)
