"""Fashion-MNIST (Xiao et al., 2017) from its idx files, without downloading anything.

The files are looked for in Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``) or in a torchvision-style root (``ROOT/FashionMNIST/raw`` or
``ROOT`` itself), gzipped or not. torchvision's ``FashionMNIST`` would want to download into its root
and cannot read a read-only system directory, so the (tiny) idx parser is written here.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "SYSTEM_DIR",
    "FashionMNIST",
    "fashion_mnist_paths",
    "load_fashion_mnist",
]

SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Pixel statistics of the 60k training images (scaled to [0, 1]).
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

_PREFIX = {"train": "train", "test": "t10k", "val": "t10k"}
_IDX_DTYPE = {0x08: np.uint8}


def _candidate_dirs(root: str | os.PathLike | None) -> list[Path]:
    if root is not None:
        root = Path(root)
        return [root / "FashionMNIST" / "raw", root / "fashion-mnist", root]
    return [Path(SYSTEM_DIR)]


def fashion_mnist_paths(split: str = "train", root: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(images, labels) idx files of ``split`` (``"train"``, or ``"test"``/``"val"`` for the 10k test set).

    Raises ``FileNotFoundError`` listing every place looked at and how to get the data.
    """
    if split not in _PREFIX:
        raise ValueError(f"Fashion-MNIST split must be one of {sorted(_PREFIX)}, got {split!r}")
    prefix = _PREFIX[split]
    tried = []
    for d in _candidate_dirs(root):
        for ext in (".gz", ""):
            images = d / f"{prefix}-images-idx3-ubyte{ext}"
            labels = d / f"{prefix}-labels-idx1-ubyte{ext}"
            tried.append(str(images))
            if images.is_file() and labels.is_file():
                return images, labels
    raise FileNotFoundError(
        f"Fashion-MNIST {split} files not found; looked for: {', '.join(tried)}. "
        "Install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, to "
        f"{SYSTEM_DIR}), or put the idx files from https://github.com/zalandoresearch/fashion-mnist "
        "under ROOT/FashionMNIST/raw and pass that ROOT (--data-dir)."
    )


def _read_idx(path: Path) -> np.ndarray:
    """Parse one idx file (magic: 0, 0, dtype code, number of dims; big-endian int32 sizes; data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPE:
        raise ValueError(f"{path} is not an unsigned-byte idx file (bad magic number)")
    ndim = data[3]
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, file holds {len(data) - offset} bytes of data")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [N, 28, 28]`` and labels ``int64 [N]`` of the ``"train"`` (60k) or ``"test"`` (10k) split."""
    images_path, labels_path = fashion_mnist_paths(split, root)
    images, labels = _read_idx(images_path), _read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"Fashion-MNIST {split}: {images_path} holds {images.shape}, {labels_path} holds {labels.shape}"
        )
    return images.copy(), labels.astype(np.int64)


class FashionMNIST(Dataset):
    """Fashion-MNIST as a map-style dataset of ``(PIL image in mode 'L', label)``, or ``transform(image)``.

    Args:
        split: ``"train"`` or ``"test"`` (``"val"`` is an alias of ``"test"``).
        root: torchvision-style root; ``None`` reads Debian's system copy.
        transform: applied to the PIL image.
        limit: keep only the first ``limit`` samples (quick runs, tests).
    """

    classes = list(FASHION_MNIST_CLASSES)

    def __init__(self, split: str = "train", root: str | os.PathLike | None = None, transform=None, limit=None):
        images, labels = load_fashion_mnist(split, root)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        self.images = torch.from_numpy(images)
        self.targets = torch.from_numpy(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index].numpy())  # 2-D uint8 -> mode "L"
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])
