"""ImageFolder trees (``root/CLASS/IMAGE``) with image decoding that names the file it fails on."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision.datasets import ImageFolder

__all__ = ["BadImageError", "ImageFolderDataset", "load_image", "to_8bit"]


class BadImageError(OSError):
    """An image file that cannot be decoded (truncated, corrupt, not an image, a decompression bomb)."""


# PIL's error (over twice Image.MAX_IMAGE_PIXELS) and warning (over it), the latter raised as an error here
DECOMPRESSION_BOMBS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


def load_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """Open and fully decode ``path`` into PIL ``mode`` ('RGB' or 'L'); grey, palette and RGBA all convert, and
    grey images of more than 8 bits are scaled to 8 (:func:`to_8bit`).

    Raises :class:`BadImageError` naming the file when it cannot be read, or when it has more pixels than PIL's
    ``Image.MAX_IMAGE_PIXELS`` (a decompression bomb: PIL's warning is taken as the error it warns of).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return to_8bit(img).convert(mode)
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, *DECOMPRESSION_BOMBS) as e:
        raise BadImageError(f"cannot read image {path}: {e}") from e


def to_8bit(img: Image.Image) -> Image.Image:
    """A grey image of more than 8 bits (PIL modes ``I;16*``, ``I``, ``F``) as mode 'L', scaled by its bit depth
    (16-bit: 65535 -> 255); other images as they are. PIL's own conversion clips at 255, which turns a 16-bit
    image white. Depths: ``I;16*`` 16 bits; ``I`` 16 bits from a PNG (older PIL) else 32 bits; ``F`` 0..1."""
    if img.mode.startswith("I;16"):
        full = 65535.0
    elif img.mode == "I":
        full = 65535.0 if img.format == "PNG" else 2.0**31 - 1
    elif img.mode == "F":
        full = 1.0
    else:
        return img
    scaled = np.asarray(img, dtype=np.float64) * (255.0 / full)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


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
