"""Images and data sets to analyse, through the model's own eval transform (its timm data config).

Decoding and transforms are the project's (:func:`fcvit.data.load_image`,
:func:`fcvit.data.transforms.create_eval_transform`: timm's eval transform after a PIL mode conversion,
so grey Fashion-MNIST feeds RGB models).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

# Photographs bundled with scikit-image (no download), for ``--demo``.
DEMO_IMAGES = ("astronaut", "chelsea", "coffee", "rocket")


def demo_images() -> list[tuple[str, Image.Image]]:
    """(name, RGB image) for each of :data:`DEMO_IMAGES`."""
    import skimage.data

    return [(name, Image.fromarray(getattr(skimage.data, name)()).convert("RGB")) for name in DEMO_IMAGES]


def load_images(paths: list[str]) -> list[tuple[str, Image.Image]]:
    """(file stem, RGB image) for each path; a clear error for a missing or unreadable file."""
    from ..data import load_image

    images = []
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image {path!r} does not exist")
        images.append((os.path.splitext(os.path.basename(path))[0], load_image(path)))
    return images


def gather_images(paths: list[str], demo: bool) -> list[tuple[str, Image.Image]]:
    """The images of a command: the files given, plus the demo photographs with ``--demo``."""
    images = load_images(paths) + (demo_images() if demo else [])
    if not images:
        raise ValueError("no images: give image files or --demo")
    return images


def to_display(x: torch.Tensor, cfg: dict[str, Any]) -> np.ndarray:
    """Undo the normalisation of one input [C, H, W] into an [H, W, 3] array in [0, 1] for plotting (a grey
    input as a grey RGB image)."""
    mean = torch.tensor(cfg["mean"]).view(-1, 1, 1)
    std = torch.tensor(cfg["std"]).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1).expand(3, -1, -1).permute(1, 2, 0).numpy()


def build_dataset(
    data: str, cfg: dict[str, Any], limit: int | None = None, data_dir: str | os.PathLike | None = None
) -> Dataset:
    """``fashion-mnist`` (its test split, from ``data_dir`` or the system copy), an image folder with class
    sub-folders (its ``val/`` sub-folder if any: :func:`fcvit.data.sets.open_dataset`), or a flat folder of images.

    Items are ``(input tensor, label)`` through the eval transform of ``cfg``; ``limit`` keeps the first N. Files
    are read as every command reads them (:func:`fcvit.data.load_image`: EXIF orientation, 16-bit and float
    images by their range; symlinks followed once, FIFOs and devices never opened).
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from ..data import FashionMNIST
    from ..data.folder import ImageFolderDataset
    from ..data.transforms import create_eval_transform

    transform = create_eval_transform(cfg)
    if data == "fashion-mnist":
        return FashionMNIST("test", root=data_dir, transform=transform, limit=limit)
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {data!r} does not exist (give a folder of images or 'fashion-mnist')")
    folder = root / "val" if (root / "val").is_dir() else root
    if any(p.is_dir() for p in folder.iterdir()):
        dataset: Dataset = ImageFolderDataset(folder, transform=transform)
    else:
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
        dataset = _FlatFolder(images, transform)  # is_file(): regular files only (a FIFO would block)
    if len(dataset) == 0:
        raise ValueError(f"data folder {data!r} holds no images")
    return Subset(dataset, range(min(limit, len(dataset)))) if limit else dataset


class _FlatFolder(Dataset):
    """The images of a folder without class sub-folders, label 0: what an analysis needs (no labels)."""

    def __init__(self, paths: list[Path], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from ..data import load_image

        return self.transform(load_image(self.paths[index])), 0
