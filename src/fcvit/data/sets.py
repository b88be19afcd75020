"""A split of a data set by name, and the loader that evaluates on it: what ``fcvit train``, ``validate``, the
analyses and the studies share.

``data`` is ``'fashion-mnist'`` (the built-in set, splits ``train`` and ``val``/``test``) or an ImageFolder root.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from .fashion_mnist import FASHION_MNIST_CLASSES, FashionMNIST
from .folder import ImageFolderDataset
from .loaders import DatasetLoader, TensorLoader
from .transforms import create_eval_transform, image_mode

__all__ = ["FASHION_MNIST", "create_eval_loader", "in_memory", "is_fashion_mnist", "open_dataset", "tensor_loader"]

FASHION_MNIST = "fashion-mnist"


def is_fashion_mnist(data: str) -> bool:
    """Whether ``data`` names the built-in Fashion-MNIST (any common spelling) rather than a folder."""
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


def in_memory(dataset: Dataset, data_config: dict[str, Any]) -> bool:
    """The tensor path applies: Fashion-MNIST at its native 28 px (no resize), grey or repeated to RGB."""
    return isinstance(dataset, FashionMNIST) and tuple(data_config["input_size"][1:]) == tuple(
        dataset.images.shape[-2:]
    )


def tensor_loader(
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
    if in_memory(dataset, data_config) and data_config["crop_pct"] == 1.0:
        return tensor_loader(dataset, data_config, batch_size, False, rank=rank, world_size=world_size)
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
