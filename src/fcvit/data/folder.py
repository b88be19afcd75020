"""ImageFolder trees (``root/CLASS/IMAGE``) with image decoding that names the file it fails on."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torchvision.datasets import ImageFolder

__all__ = ["BadImageError", "ImageFolderDataset", "load_image"]


class BadImageError(OSError):
    """An image file that cannot be decoded (truncated, corrupt, not an image)."""


def load_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """Open and fully decode ``path`` into PIL ``mode`` ('RGB' or 'L'); grey, palette and RGBA all convert.

    Raises :class:`BadImageError` naming the file when it cannot be read.
    """
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise BadImageError(f"cannot read image {path}: {e}") from e


class ImageFolderDataset(ImageFolder):
    """torchvision's ImageFolder decoding each image to ``mode`` through :func:`load_image`.

    ``classes`` are the sub-folder names in sorted order (the label order).
    """

    def __init__(self, root: str | os.PathLike, mode: str = "RGB", transform=None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        self.mode = mode
        super().__init__(str(root), transform=transform, loader=self._load)

    def _load(self, path: str) -> Image.Image:
        return load_image(path, self.mode)
