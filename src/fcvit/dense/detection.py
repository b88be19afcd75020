"""Mask R-CNN (He et al., 2017) with an FCViT + FPN backbone, on torchvision's detection models.

The backbone is :class:`~fcvit.dense.backbone.FCViTFPN` (FCViT's normed stage maps, torchvision's FPN
with a max-pooled P6, as mmdetection's ``FPN(num_outs=5)``); RPN, RoI heads, box and mask heads are
torchvision's ``MaskRCNN``. Labels are COCO ``category_id`` values with 0 for background.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from ..data import load_image
from ..engine.jsonio import write_json
from .backbone import FCViTFPN, create_feature_backbone, normalization
from .config import DetConfig
from .data import CocoInstances
from .metrics import coco_evaluate, detections_to_coco, gather_lists

__all__ = ["DetConfig", "DetectionTask", "build_mask_rcnn", "detections_line", "place_captions", "set_image_sizes"]


def build_mask_rcnn(
    num_classes: int,
    model: str = "fcvit_b12",
    checkpoint: str | os.PathLike | None = None,
    model_kwargs: dict[str, Any] | None = None,
    fpn_channels: int = 256,
    representation_size: int = 1024,
    train_sizes: tuple[int, ...] = (800,),
    max_size: int = 1333,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    **rcnn_kwargs: Any,
) -> MaskRCNN:
    """torchvision ``MaskRCNN`` on an FCViT + FPN backbone (``num_classes`` includes background).

    ``fpn_channels`` sets the FPN, RoI and mask-head width (torchvision's 256 by default),
    ``representation_size`` the box head's; ``mean``/``std`` normalise the input (default: the backbone's
    pretraining, :func:`~fcvit.dense.backbone.normalization`); ``rcnn_kwargs`` go to ``MaskRCNN``.
    """
    body = create_feature_backbone(model, checkpoint, **(model_kwargs or {}))
    backbone = FCViTFPN(body, fpn_channels, extra_pool=True)
    if mean is None or std is None:
        mean, std = normalization(model, checkpoint)
    return MaskRCNN(
        backbone,
        min_size=tuple(train_sizes),
        max_size=max_size,
        image_mean=list(mean),
        image_std=list(std),
        box_head=TwoMLPHead(fpn_channels * 7 * 7, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, num_classes),
        mask_head=MaskRCNNHeads(fpn_channels, (fpn_channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes),
        **rcnn_kwargs,
    )


def set_image_sizes(model: MaskRCNN, sizes: tuple[int, ...]) -> None:
    """Shorter-side sizes the model's transform resizes to: drawn per image in training, the last at test."""
    model.transform.min_size = tuple(sizes)


def coco_transforms(train: bool):
    """Flip (training) and float conversion; resizing is MaskRCNN's own (``min_size``/``max_size``)."""
    from torchvision.transforms import v2

    flip = [v2.RandomHorizontalFlip(0.5)] if train else []
    return v2.Compose([v2.ToImage(), *flip, v2.ToDtype(torch.float32, scale=True)])


def class_names_of(dataset: CocoInstances, num_classes: int) -> list[str]:
    """Name of every label 0..num_classes-1 (0 = background; ids without a category by number)."""
    return ["background"] + [dataset.categories.get(i, str(i)) for i in range(1, num_classes)]


class DetectionTask:
    """Mask R-CNN on a COCO-format dataset for :func:`fcvit.dense.engine.train`."""

    name = "det"
    main_metric = "bbox_AP"
    panels = {
        "train loss": ["train_loss"],
        "box AP": ["bbox_AP", "bbox_AP50", "bbox_AP75"],
        "mask AP": ["segm_AP", "segm_AP50", "segm_AP75"],
    }
    x_axis = ("epoch", "epoch")  # a round is an epoch

    def __init__(self, cfg: DetConfig):
        self.cfg = cfg
        self.class_names: list[str] = []
        if cfg.mean is None or cfg.std is None:
            cfg.mean, cfg.std = normalization(cfg.model, cfg.checkpoint)

    def dataset(self, split: str, train: bool = False) -> CocoInstances:
        """A COCO split (train: flipped, crowd regions dropped); the first one read fixes classes and names."""
        ds = CocoInstances(self.cfg.data_dir, split, coco_transforms(train), drop_crowd=train)
        if self.cfg.num_classes is None:
            self.cfg.num_classes = max(ds.categories) + 1
        if not self.class_names:
            self.class_names = class_names_of(ds, self.cfg.num_classes)
        return ds

    def build_model(self) -> MaskRCNN:
        return model_from_config(self.cfg)

    @staticmethod
    def collate(batch: list) -> tuple:
        return tuple(zip(*batch))

    def rounds(self, loader_len: int) -> tuple[int, int]:
        return loader_len, self.cfg.epochs

    def lr_scheduler(self, optimizer: torch.optim.Optimizer, round_iters: int):
        """Linear warm-up (mmdetection: 500 iterations from lr/1000), lr/10 after each epoch of ``lr_steps``."""
        from timm.scheduler import MultiStepLRScheduler

        return MultiStepLRScheduler(
            optimizer,
            decay_t=[e * round_iters for e in self.cfg.lr_steps],
            decay_rate=0.1,
            warmup_t=self.cfg.warmup_iters,
            warmup_lr_init=self.cfg.lr * 1e-3,
            warmup_prefix=False,
            t_in_epochs=False,
        )

    def loss(self, model: nn.Module, batch: tuple, device: torch.device) -> tuple[torch.Tensor, int]:
        images, targets = batch
        images = [img.to(device) for img in images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        set_image_sizes(_unwrap(model), self.cfg.train_sizes)
        return sum(model(images, targets).values()), len(images)

    def evaluate(self, model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
        """COCO box and mask AP over the whole split (``loader`` holds this rank's shard of it)."""
        return evaluate_detection(model, loader, device, self.cfg.test_size)

    def predict(self, model: nn.Module, files: list[Path], out_dir: Path, device: torch.device, **options) -> list:
        """The records of ``predictions.json``, one per image (:func:`predict_detection`)."""
        return predict_detection(model, files, out_dir, self.class_names, self.cfg.test_size, device, **options)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def model_from_config(cfg: DetConfig) -> MaskRCNN:
    """Mask R-CNN as ``cfg`` describes it (the backbone initialised from ``cfg.checkpoint`` if set)."""
    return build_mask_rcnn(
        cfg.num_classes,
        cfg.model,
        cfg.checkpoint,
        cfg.model_kwargs,
        cfg.fpn_channels,
        cfg.representation_size,
        cfg.train_sizes,
        cfg.max_size,
        cfg.mean,
        cfg.std,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_detections_per_img=cfg.box_detections_per_img,
    )


@torch.no_grad()
def evaluate_detection(model: nn.Module, loader: DataLoader, device: torch.device, test_size: int) -> dict[str, float]:
    """Run ``model`` over ``loader`` (a :class:`CocoInstances` or a rank's ``Subset`` of one) and score all
    ranks' detections against the whole split with pycocotools."""
    dataset = loader.dataset.dataset if isinstance(loader.dataset, Subset) else loader.dataset
    model = _unwrap(model)
    model.eval()
    set_image_sizes(model, (test_size,))
    boxes, masks = [], []
    for images, targets in loader:
        outputs = model([img.to(device) for img in images])
        for out, target in zip(outputs, targets):
            b, m = detections_to_coco(out, int(target["image_id"]))
            boxes += b
            masks += m
    boxes, masks = gather_lists(boxes), gather_lists(masks)
    return coco_evaluate(dataset.coco, dict(bbox=boxes, segm=masks), image_ids=list(dataset.ids))


def place_captions(
    boxes: list[list[float]], sizes: list[tuple[int, int]], image_hw: tuple[int, int]
) -> list[tuple[int, int]]:
    """Top-left corner of each caption (``sizes``: width, height): just above its box, or inside its top edge when
    the box touches the image's top; always inside the image; moved down below any caption placed before it
    (higher scores first) that it would cover, as far as the image allows."""
    height, width = image_hw
    placed: list[tuple[int, int, int, int]] = []
    corners = []
    for (x1, y1, _, _), (w, h) in zip(boxes, sizes):
        x = int(min(max(x1, 0), max(width - w, 0)))
        y = int(y1 - h if y1 >= h else max(y1, 0))
        moved = True
        while moved:
            moved = False
            for px1, py1, px2, py2 in placed:
                if x < px2 and px1 < x + w and y < py2 and py1 < y + h and py2 + h <= height:
                    y, moved = py2, True
        y = min(y, max(height - h, 0))
        placed.append((x, y, x + w, y + h))
        corners.append((x, y))
    return corners


def draw_detections(
    image: torch.Tensor, output: dict[str, torch.Tensor], class_names: list[str], score_threshold: float = 0.5
) -> torch.Tensor:
    """uint8 [3, H, W] image with the detections above ``score_threshold``: masks, boxes, and "label score"
    captions on a box-coloured background, kept inside the image and clear of each other (:func:`place_captions`)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    from .data import palette

    keep = output["scores"] >= score_threshold
    labels = output["labels"][keep].tolist()
    colors = [tuple(int(c) for c in palette(len(class_names))[i]) for i in labels]
    if not labels:
        return image
    if "masks" in output:
        image = draw_segmentation_masks(image, output["masks"][keep][:, 0] > 0.5, alpha=0.45, colors=colors)
    boxes = output["boxes"][keep]
    image = draw_bounding_boxes(image, boxes, colors=colors, width=2)
    captions = [
        f"{class_names[i] if i < len(class_names) else i} {s:.2f}" for i, s in zip(labels, output["scores"][keep])
    ]
    canvas = Image.fromarray(image.permute(1, 2, 0).numpy())
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    sizes = []
    for text in captions:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        sizes.append((right - left + 4, bottom - top + 4))
    for text, (x, y), (w, h), color in zip(
        captions, place_captions(boxes.tolist(), sizes, canvas.size[::-1]), sizes, colors
    ):
        draw.rectangle((x, y, x + w - 1, y + h - 1), fill=color)
        ink = (0, 0, 0) if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 140 else (255, 255, 255)
        left, top, _, _ = draw.textbbox((0, 0), text, font=font)
        draw.text((x + 2 - left, y + 2 - top), text, fill=ink, font=font)
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)


@torch.no_grad()
def predict_detection(
    model: MaskRCNN,
    files: list[Path],
    out_dir: str | os.PathLike,
    class_names: list[str],
    test_size: int,
    device: torch.device,
    score_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """Detect in each image file; write ``OUT/<stem>_det.png`` overlays of the detections scoring at least
    ``score_threshold`` and ``OUT/predictions.json``, whose records this returns, one per image: ``file``,
    ``overlay``, ``score_threshold``, the drawn detections' ``boxes_xyxy``, ``labels`` and ``scores``, and
    ``below_threshold``, how many more the model reported with lower scores (Mask R-CNN keeps those of 0.05 or more)."""
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    set_image_sizes(model, (test_size,))
    records = []
    for path in files:
        image = pil_to_tensor(load_image(path))
        output = {k: v.cpu() for k, v in model([image.to(device).float() / 255])[0].items()}
        overlay = draw_detections(image, output, class_names, score_threshold)
        target = out_dir / f"{path.stem}_det.png"
        Image.fromarray(overlay.permute(1, 2, 0).numpy()).save(target)
        keep = output["scores"] >= score_threshold
        records.append(
            dict(
                file=str(path),
                overlay=str(target),
                score_threshold=score_threshold,
                boxes_xyxy=output["boxes"][keep].double().round(decimals=1).tolist(),  # double: 4.6, not 4.5999999
                labels=[class_names[i] if i < len(class_names) else str(i) for i in output["labels"][keep].tolist()],
                scores=output["scores"][keep].double().round(decimals=4).tolist(),
                below_threshold=int((~keep).sum()),
            )
        )
    write_json(out_dir / "predictions.json", records, indent=1)
    return records


def detections_line(record: dict[str, Any]) -> str:
    """What :func:`predict_detection` drew on one image: ``img.png: 3 detections >= 0.5 (12 below)``."""
    n = len(record["scores"])
    return (
        f"{record['file']}: {n} detection{'s' * (n != 1)} >= {record['score_threshold']:g} "
        f"({record['below_threshold']} below)"
    )
