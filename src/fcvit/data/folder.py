"""ImageFolder trees (``root/CLASS/IMAGE``) and image decoding that names the file it fails on.

An image is read as it is meant to be seen: turned upright by its EXIF orientation, and scaled from more than
8 bits by its range rather than clipped. A folder tree is read once per real file: symlinks are followed, but
never twice to the same file or folder (no loops, no duplicates), and FIFOs, devices and sockets are skipped
unopened (opening a FIFO blocks until something writes to it).
"""

from __future__ import annotations

import os
import stat
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

__all__ = ["BadImageError", "ImageFolderDataset", "load_image", "non_regular_kind", "scan_image_folder", "to_8bit"]


class BadImageError(OSError):
    """An image file that cannot be decoded (truncated, corrupt, not an image, a decompression bomb, not a file)."""


# PIL's error (over twice Image.MAX_IMAGE_PIXELS) and warning (over it), the latter raised as an error here
DECOMPRESSION_BOMBS = (Image.DecompressionBombError, Image.DecompressionBombWarning)

_NON_REGULAR = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def non_regular_kind(st: os.stat_result) -> str | None:
    """What a file of status ``st`` is when it is not a regular file ('a FIFO (named pipe)' ...), else None."""
    if stat.S_ISREG(st.st_mode):
        return None
    return next((kind for test, kind in _NON_REGULAR if test(st.st_mode)), "not a regular file")


def load_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """Open and fully decode ``path`` into PIL ``mode`` ('RGB' or 'L'), upright by its EXIF orientation.

    Grey, palette and RGBA all convert; images of more than 8 bits are scaled to 8 by :func:`to_8bit`. Raises
    :class:`BadImageError` naming the file when it cannot be read, when it is not a regular file (a FIFO, device
    or directory: checked before opening, since opening a FIFO blocks), or when it has more pixels than PIL's
    ``Image.MAX_IMAGE_PIXELS`` (a decompression bomb: PIL's warning is taken as the error it warns of).
    """
    try:
        kind = non_regular_kind(os.stat(path))
        if kind is not None:
            raise BadImageError(f"cannot read image {path}: it is {kind}, not a regular file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                ImageOps.exif_transpose(img, in_place=True)
                return to_8bit(img).convert(mode)
    except BadImageError:
        raise
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, *DECOMPRESSION_BOMBS) as e:
        raise BadImageError(f"cannot read image {path}: {e}") from e


def to_8bit(img: Image.Image) -> Image.Image:
    """A grey image of more than 8 bits (PIL modes ``I;16*``, ``I``, ``F``) as mode 'L', scaled by its range;
    other images as they are. PIL's own conversion clips at 255, which turns a 16-bit image white.

    The range is the pixel type's nominal one when the values fit it, so that a dark image stays dark:
    16-bit ``I;16*`` 0..65535; 32-bit ``I`` 0..65535 too (16-bit data in a 32-bit container, as older PIL
    decodes 16-bit PNGs); float ``F`` 0..1 (the usual convention for float images: scikit-image, OpenCV).
    Values outside it (a float TIFF of 0..1000, negative or HDR values, 32-bit counts) have no range to go by
    but their own: the image's min..max is stretched to 0..255 (a flat image is black). Non-finite floats count
    as the range's ends (NaN and -inf the low one, +inf the high one).
    """
    if not (img.mode.startswith("I;16") or img.mode in ("I", "F")):
        return img
    values = np.asarray(img, dtype=np.float64)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    nominal = 1.0 if img.mode == "F" else 65535.0
    if lo >= 0 and hi <= nominal:
        lo, hi = 0.0, nominal
    values = np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return Image.fromarray(np.rint((values - lo) * scale).astype(np.uint8), "L")


def scan_image_folder(
    root: str | os.PathLike, classes: list[str], extensions: tuple[str, ...] = IMG_EXTENSIONS
) -> tuple[list[tuple[str, int]], list[str]]:
    """``(samples, skipped)`` of the class folders ``root/CLASS``: ``(path, class index)`` of every image file
    (name ending in one of ``extensions``) below them, and one ``"path: why"`` for each entry left out.

    Written by hand because torchvision's scan (``os.walk(followlinks=True)``) follows a symlink loop until the
    path is too long and reads a file once per path that leads to it. Here the real tree comes first, then the
    symlinks, each followed only to a file or folder not read yet (by real path): an image reachable twice is one
    sample, labelled by its real place when that is under ``root``. Left out: FIFOs, devices and sockets with an
    image name (never opened), broken or looping links, and links to what was read already. Samples are in
    torchvision's order (class, folder, name), so runs over a plain tree see the same indices as before.
    """
    scan = _FolderScan(extensions)
    scan.seen_dirs.add(os.path.realpath(root))  # the root holds classes, not images: a link to it is a loop
    for label, name in enumerate(classes):
        scan.visit(os.path.join(root, name), label)
    scan.follow_links()
    samples = [(os.path.join(d, n), label) for (label, d), names in sorted(scan.files.items()) for n in sorted(names)]
    return samples, scan.skipped


class _FolderScan:
    """The state of :func:`scan_image_folder`: what was read, what waits, what was left out.

    Real entries cost no system call beyond the directory listing (``os.scandir`` tells links, folders and files
    apart); a real path is resolved once per folder, and per file only for files reached through a link.
    """

    def __init__(self, extensions: tuple[str, ...]):
        self.extensions = extensions
        self.files: dict[tuple[int, str], list[str]] = {}  # (class index, folder as found) -> image names
        self.seen_dirs: set[str] = set()  # real paths of the folders read
        self.linked_files: dict[str, str] = {}  # real path -> path as found, of the files read through a link
        self.links: list[tuple[str, int]] = []  # symlinks met, followed once the real tree is read
        self.skipped: list[str] = []

    def visit(self, path: str, label: int) -> None:
        """Read a class folder, or keep it for :meth:`follow_links` if it is a link."""
        if os.path.islink(path):
            self.links.append((path, label))
        else:
            self.walk(path, label)

    def walk(self, directory: str, label: int) -> None:
        real = os.path.realpath(directory)
        if real in self.seen_dirs:
            self.skipped.append(f"{directory}: a link to a folder read already")
            return
        self.seen_dirs.add(real)
        with os.scandir(directory) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        for entry in entries:
            if entry.is_symlink():
                self.links.append((entry.path, label))
            elif entry.is_dir(follow_symlinks=False):
                self.walk(entry.path, label)
            elif not has_file_allowed_extension(entry.name, self.extensions):
                continue
            elif not entry.is_file(follow_symlinks=False):
                self.skipped.append(f"{entry.path}: {non_regular_kind(entry.stat(follow_symlinks=False))}")
            elif self.linked_files and (first := self.linked_files.get(os.path.join(real, entry.name))):
                self.skipped.append(f"{entry.path}: read already through the link {first}")
            else:
                self.files.setdefault((label, directory), []).append(entry.name)

    def follow_links(self) -> None:
        """Follow the links met, in order; those met inside linked folders join the end of the list."""
        for path, label in self.links:
            try:
                st = os.stat(path)
            except OSError as e:
                self.skipped.append(f"{path}: a broken or looping link ({e.strerror})")
                continue
            if stat.S_ISDIR(st.st_mode):
                self.walk(path, label)
            elif not has_file_allowed_extension(path, self.extensions):
                continue
            elif (kind := non_regular_kind(st)) is not None:
                self.skipped.append(f"{path}: a link to {kind}")
            else:
                self._add_linked_file(path, label)

    def _add_linked_file(self, path: str, label: int) -> None:
        real = os.path.realpath(path)
        folder, name = os.path.split(real)
        if (folder in self.seen_dirs and has_file_allowed_extension(name, self.extensions)) or (
            real in self.linked_files
        ):
            self.skipped.append(f"{path}: a link to a file read already")
            return
        self.linked_files[real] = path
        folder, name = os.path.split(path)
        self.files.setdefault((label, folder), []).append(name)


class ImageFolderDataset(ImageFolder):
    """torchvision's ImageFolder, scanned by :func:`scan_image_folder`, decoding each image to ``mode`` through
    :func:`load_image`.

    ``classes`` are the sub-folder names in sorted order (the label order); a class folder that is a link to
    another class folder counts once, under the name of the real folder. ``skipped`` lists the entries left
    out (``"path: why"``); building the dataset prints a one-line notice of them on stderr (on rank 0 only).
    """

    def __init__(self, root: str | os.PathLike, mode: str = "RGB", transform=None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        self.mode = mode
        self.skipped: list[str] = []
        super().__init__(str(root), transform=transform, loader=self._load)
        if self.skipped and os.environ.get("RANK", "0") == "0":
            shown = "; ".join(self.skipped[:3]) + ("; ..." if len(self.skipped) > 3 else "")
            print(f"note: {root}: {len(self.skipped)} entries skipped: {shown}", file=sys.stderr, flush=True)

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        """Sub-folders of ``directory`` (links followed), one per real folder: a real folder wins over links to
        it, else the first name in sorted order."""
        with os.scandir(directory) as entries:
            folders = sorted((e for e in entries if e.is_dir()), key=lambda e: (e.is_symlink(), e.name))
        names: dict[str, str] = {}  # real path -> class name
        for entry in folders:
            real = os.path.realpath(entry.path)
            if real in names:
                self.skipped.append(f"{entry.path}: a link to class folder {names[real]}")
            else:
                names[real] = entry.name
        classes = sorted(names.values())
        if not classes:
            raise FileNotFoundError(f"image folder {directory} has no class folders")
        return classes, {name: i for i, name in enumerate(classes)}

    def make_dataset(
        self,
        directory: str | os.PathLike,
        class_to_idx: dict[str, int],
        extensions: tuple[str, ...] | None = None,
        is_valid_file=None,
        allow_empty: bool = False,
    ) -> list[tuple[str, int]]:
        """The samples of :func:`scan_image_folder`; a class folder without images is an error naming it."""
        classes = sorted(class_to_idx, key=class_to_idx.get)
        samples, skipped = scan_image_folder(directory, classes, extensions or IMG_EXTENSIONS)
        self.skipped += skipped
        empty = sorted(set(classes) - {classes[label] for _, label in samples})
        if empty and not allow_empty:
            raise FileNotFoundError(
                f"image folder {directory}: no images in class folder(s) {', '.join(empty)} "
                f"(image names end in {', '.join(extensions or IMG_EXTENSIONS)})"
            )
        return samples

    def _load(self, path: str) -> Image.Image:
        return load_image(path, self.mode)
