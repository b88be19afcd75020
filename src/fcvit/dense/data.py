"""Dense-prediction data: a Fashion-MNIST-on-canvas generator, COCO instance and ADE20K-layout semantic datasets.

Generator. Real Fashion-MNIST items are pasted onto larger canvases (random scale, position, colour;
later items occlude earlier ones), and every canvas is written twice, in the layouts of the two real
benchmarks, so that the same commands run on COCO and ADE20K unchanged::

    OUT/coco/{train2017,val2017}/NNNNNNNNNNNN.png
    OUT/coco/annotations/instances_{train2017,val2017}.json   (boxes, RLE masks of the visible pixels)
    OUT/ade/images/{training,validation}/fmc_NNNNNNNN.png
    OUT/ade/annotations/{training,validation}/fmc_NNNNNNNN.png  (uint8 label maps)
    OUT/ade/classes.json                                       (class names, reduce_zero_label)

One label convention serves both: value 0 is background, Fashion-MNIST class ``k`` is ``k + 1``. So
the COCO ``category_id``, torchvision's detection label (0 = background) and the semantic label-map
value of an item agree. Background is a class the segmentation model learns (11 classes, no
``reduce_zero_label``). Real ADE20K differs: its 0 means "other/unlabelled", which
``reduce_zero_label=True`` (the mmseg convention) turns into the ignore index 255, shifting 1..150
to 0..149. The train split takes its items from the Fashion-MNIST train set, val from the test set.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data import load_image
from ..engine.config import validate
from ..engine.jsonio import write_json
from .config import CanvasConfig

__all__ = [
    "IGNORE_INDEX",
    "CanvasConfig",
    "CocoInstances",
    "SemanticSegmentation",
    "list_images",
    "make_canvas",
    "make_dense_dataset",
    "palette",
    "read_class_names",
]

IGNORE_INDEX = 255
COCO_SPLITS = {"train": "train2017", "val": "val2017"}
ADE_SPLITS = {"train": "training", "val": "validation"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A colour gradient with pixel noise, so background is not one constant the model can threshold."""
    corners = rng.uniform(0, 160, size=(2, 2, 3))
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    top = corners[0, 0] * (1 - t) + corners[0, 1] * t  # [size, 1, 3] along x
    bottom = corners[1, 0] * (1 - t) + corners[1, 1] * t
    grid = top.transpose(1, 0, 2) * (1 - t) + bottom.transpose(1, 0, 2) * t  # [size, size, 3]
    return grid + rng.normal(0, 8, size=grid.shape)


def make_canvas(
    items: np.ndarray, labels: np.ndarray, rng: np.random.Generator, cfg: CanvasConfig
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Draw one canvas: ``(image uint8 [S, S, 3], [(class, visible mask bool [S, S]), ...])``.

    Items are drawn back to front; an item's mask is its pixels brighter than ``cfg.threshold`` minus
    those covered by later items. Items left with less than ``cfg.min_visible`` of their pixels are not
    drawn at all, so every drawn pixel of an item is annotated and masks are disjoint.
    """
    size = cfg.canvas_size
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    picks = rng.integers(0, len(items), size=n)
    placed = []  # (class, full mask, texture, colour) in paint order
    for idx in picks:
        side = int(round(size * rng.uniform(cfg.min_scale, cfg.max_scale)))
        item = np.asarray(Image.fromarray(items[idx]).resize((side, side), Image.BILINEAR), dtype=np.float64)
        y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        full = np.zeros((size, size), dtype=bool)
        full[y : y + side, x : x + side] = item > cfg.threshold
        texture = np.zeros((size, size))
        texture[y : y + side, x : x + side] = item / 255.0
        if full.any():
            placed.append((int(labels[idx]), full, texture, rng.uniform(60, 255, size=3)))

    kept, covered = [], np.zeros((size, size), dtype=bool)
    for cls, full, texture, colour in reversed(placed):  # front to back: what is in front is final
        visible = full & ~covered
        if visible.sum() >= cfg.min_visible * full.sum():
            kept.append((cls, full, visible, texture, colour))
            covered |= full
    image = _background(rng, size)
    for _cls, full, _visible, texture, colour in reversed(kept):  # paint back to front
        shade = (0.35 + 0.65 * texture[..., None]) * colour
        image = np.where(full[..., None], shade, image)
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image, [(cls, visible) for cls, _f, visible, _t, _c in reversed(kept)]


def _coco_annotation(mask: np.ndarray, category_id: int, image_id: int, ann_id: int) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return dict(
        id=ann_id,
        image_id=image_id,
        category_id=category_id,
        segmentation=rle,
        area=int(mask.sum()),
        bbox=[x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
        iscrowd=0,
    )


def make_dense_dataset(
    out: str | os.PathLike,
    num_train: int = 200,
    num_val: int = 50,
    cfg: CanvasConfig | None = None,
    seed: int = 0,
    fashion_root: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Generate the canvases and write the COCO and ADE20K layouts under ``out`` (see the module doc).

    Returns a summary: paths, image and instance counts per split, the config.
    """
    from tqdm import tqdm

    from ..data import FASHION_MNIST_CLASSES, load_fashion_mnist

    cfg = validate(cfg or CanvasConfig(), "canvas config")
    out = Path(out)
    class_names = ["background", *FASHION_MNIST_CLASSES]
    categories = [dict(id=i + 1, name=name, supercategory="fashion") for i, name in enumerate(FASHION_MNIST_CLASSES)]
    summary: dict[str, Any] = dict(out=str(out), config=asdict(cfg), seed=seed, splits={})
    image_id = ann_id = 0
    for split, count in (("train", num_train), ("val", num_val)):
        items, labels = load_fashion_mnist("train" if split == "train" else "test", fashion_root)
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        coco_dir = out / "coco" / COCO_SPLITS[split]
        ade_img_dir = out / "ade" / "images" / ADE_SPLITS[split]
        ade_ann_dir = out / "ade" / "annotations" / ADE_SPLITS[split]
        for d in (coco_dir, ade_img_dir, ade_ann_dir):
            d.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in tqdm(range(count), desc=f"canvases ({split})", disable=not progress):
            image, instances = make_canvas(items, labels, rng, cfg)
            image_id += 1
            file_name = f"{image_id:012d}.png"
            Image.fromarray(image).save(coco_dir / file_name)
            images.append(dict(id=image_id, file_name=file_name, height=cfg.canvas_size, width=cfg.canvas_size))
            label_map = np.zeros(image.shape[:2], dtype=np.uint8)
            for cls, mask in instances:
                ann_id += 1
                annotations.append(_coco_annotation(mask, cls + 1, image_id, ann_id))
                label_map[mask] = cls + 1
            stem = f"fmc_{split}_{i + 1:08d}"
            Image.fromarray(image).save(ade_img_dir / f"{stem}.png")
            Image.fromarray(label_map).save(ade_ann_dir / f"{stem}.png")
        ann_file = out / "coco" / "annotations" / f"instances_{COCO_SPLITS[split]}.json"
        ann_file.parent.mkdir(parents=True, exist_ok=True)
        info = dict(description="Fashion-MNIST items on canvases (fcvit dense make-data)", config=asdict(cfg))
        coco = dict(info=info, images=images, annotations=annotations, categories=categories)
        write_json(ann_file, coco, indent=None)  # one line: COCO files are large
        summary["splits"][split] = dict(images=len(images), instances=len(annotations))
    write_json(out / "ade" / "classes.json", dict(classes=class_names, reduce_zero_label=False))
    return summary


def palette(num_classes: int) -> np.ndarray:
    """A fixed colour per class (uint8 [num_classes, 3]), the same in every overlay and label map."""
    colours = np.random.default_rng(12345).integers(40, 256, size=(max(num_classes, 1), 3), dtype=np.uint8)
    colours[0] = (0, 0, 0) if num_classes > 1 else colours[0]
    return colours


def list_images(paths: list[str | os.PathLike]) -> list[Path]:
    """Image files named in ``paths``, directories expanded (sorted); raises if one does not exist or none is found."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p} is neither an image file nor a directory")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}")
    return files


def read_class_names(ade_root: str | os.PathLike) -> tuple[list[str] | None, bool | None]:
    """``(class names, reduce_zero_label)`` from ``ROOT/classes.json`` (the generator's), else ``(None, None)``."""
    path = Path(ade_root) / "classes.json"
    if not path.is_file():
        return None, None
    meta = json.loads(path.read_text())
    return list(meta["classes"]), bool(meta.get("reduce_zero_label", False))


class CocoInstances(Dataset):
    """A COCO instance split as ``(image tv_tensors.Image, target)`` for torchvision's detection models.

    torchvision's ``CocoDetection`` wrapped for transforms v2: ``target`` holds ``boxes`` (XYXY),
    ``labels`` (= ``category_id``), ``masks`` and ``image_id``. Crowd regions are dropped when
    ``drop_crowd`` (training, as torchvision's reference recipe does).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transforms: Callable | None = None,
        drop_crowd: bool = False,
    ):
        from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

        root = Path(root)
        name = COCO_SPLITS.get(split, split)
        ann_file, img_dir = root / "annotations" / f"instances_{name}.json", root / name
        for p in (ann_file, img_dir):
            if not p.exists():
                raise FileNotFoundError(
                    f"COCO {split} split: {p} does not exist (expected ROOT/annotations/instances_{name}.json and "
                    f"ROOT/{name}/; generate a small set with `fcvit dense make-data`)"
                )
        self.ann_file = ann_file
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its loading steps
            base = CocoDetection(str(img_dir), str(ann_file))
        if drop_crowd:
            for img_id, anns in base.coco.imgToAnns.items():
                base.coco.imgToAnns[img_id] = [a for a in anns if not a.get("iscrowd", 0)]
        self.coco = base.coco
        self.ids = base.ids
        self.dataset = wrap_dataset_for_transforms_v2(base, target_keys=("boxes", "labels", "masks", "image_id"))
        self.transforms = transforms
        self.categories = {c["id"]: c["name"] for c in self.coco.loadCats(self.coco.getCatIds())}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        if "boxes" not in target:  # an image without annotations
            h, w = image.height, image.width
            target.update(
                boxes=torch.zeros(0, 4),
                labels=torch.zeros(0, dtype=torch.int64),
                masks=torch.zeros(0, h, w, dtype=torch.uint8),
            )
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def _pairs(image_dir: Path, ann_dir: Path) -> list[tuple[Path, Path]]:
    """(image, label map) pairs by file stem; raises naming the first image without a label map."""
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
    pairs = []
    for img in images:
        ann = ann_dir / f"{img.stem}.png"
        if not ann.is_file():
            raise FileNotFoundError(f"image {img} has no label map {ann}")
        pairs.append((img, ann))
    return pairs


class SemanticSegmentation(Dataset):
    """An ADE20K-layout split (``ROOT/images/{training,validation}``, ``ROOT/annotations/...`` PNG label maps).

    Returns ``(image tv_tensors.Image uint8, label tv_tensors.Mask int64 [H, W])`` through ``transforms``.
    ``reduce_zero_label`` maps 0 to :data:`IGNORE_INDEX` and ``k`` to ``k - 1`` (real ADE20K: 150 classes).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transforms: Callable | None = None,
        reduce_zero_label: bool = False,
    ):
        root = Path(root)
        name = ADE_SPLITS.get(split, split)
        image_dir, ann_dir = root / "images" / name, root / "annotations" / name
        for p in (image_dir, ann_dir):
            if not p.is_dir():
                raise FileNotFoundError(
                    f"segmentation {split} split: {p} is not a directory (expected the ADE20K layout "
                    f"ROOT/images/{name}/ and ROOT/annotations/{name}/; generate one with `fcvit dense make-data`)"
                )
        self.pairs = _pairs(image_dir, ann_dir)
        self.transforms = transforms
        self.reduce_zero_label = reduce_zero_label

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The untransformed image (uint8 [3, H, W]) and label map (int64 [H, W]) of sample ``index``."""
        from torchvision import tv_tensors

        img_path, ann_path = self.pairs[index]
        image = np.asarray(load_image(img_path))
        label = np.asarray(Image.open(ann_path))
        if label.ndim != 2 or label.shape != image.shape[:2]:
            raise ValueError(
                f"label map {ann_path} has shape {label.shape}, expected a single-channel {image.shape[:2]} map"
            )
        label = torch.from_numpy(label.astype(np.int64))
        if self.reduce_zero_label:
            label = torch.where(label == 0, IGNORE_INDEX, label - 1)
            label[label == IGNORE_INDEX - 1] = IGNORE_INDEX
        return tv_tensors.Image(torch.from_numpy(image.copy()).permute(2, 0, 1)), tv_tensors.Mask(label)

    def __getitem__(self, index: int):
        image, label = self.load(index)
        if self.transforms is not None:
            image, label = self.transforms(image, label)
        return image, label
