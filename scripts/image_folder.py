"""Write a small folder of real images, one sub-folder per class, as a user's own data set looks:
``OUT/train/<class>/*.png`` and ``OUT/val/<class>/*.png``, from Fashion-MNIST (the README's fine-tuning example).

    python scripts/image_folder.py data/my_images --classes Bag Sneaker Trouser --per-class 60 20
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from fcvit.data import FASHION_MNIST_CLASSES, load_fashion_mnist


def write_folder(out: Path, classes: list[str], per_class: tuple[int, int], root: str | None = None) -> int:
    """The first ``per_class`` (train, val) images of each class as PNG files; returns how many were written."""
    written = 0
    for split, source, count in (("train", "train", per_class[0]), ("val", "test", per_class[1])):
        images, labels = load_fashion_mnist(source, root)
        for name in classes:
            folder = out / split / name.replace("/", "-")  # T-shirt/top
            folder.mkdir(parents=True, exist_ok=True)
            picks = (labels == FASHION_MNIST_CLASSES.index(name)).nonzero()[0][:count]
            for k, i in enumerate(picks):
                Image.fromarray(images[i]).save(folder / f"{k:04d}.png")
            written += len(picks)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write (gets train/ and val/)")
    parser.add_argument("--classes", nargs="+", default=["Bag", "Sneaker", "Trouser"], choices=FASHION_MNIST_CLASSES)
    parser.add_argument("--per-class", nargs=2, type=int, default=(60, 20), metavar=("TRAIN", "VAL"))
    parser.add_argument("--fashion-root", help="Fashion-MNIST root (default: Debian's system copy)")
    args = parser.parse_args()
    count = write_folder(args.out, args.classes, tuple(args.per_class), args.fashion_root)
    print(f"wrote {count} images of {len(args.classes)} classes to {args.out}")


if __name__ == "__main__":
    main()
