"""Dense-prediction metrics: COCO box/mask AP (pycocotools) and mIoU / pixel accuracy (confusion matrix).

Both gather over torchrun ranks, so every rank returns the figures of the whole evaluation set.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..engine.distributed import gather_objects, is_distributed

__all__ = ["ConfusionMatrix", "coco_evaluate", "detections_to_coco", "gather_lists"]

# COCOeval.stats indices of the figures reported in detection papers (AP@[.5:.95], AP50, AP75, S/M/L).
_COCO_STATS = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5}


def gather_lists(items: list[Any]) -> list[Any]:
    """The concatenation of every rank's ``items`` (identity in a single process)."""
    return [x for part in gather_objects(items) for x in part]


def detections_to_coco(
    output: dict[str, torch.Tensor], image_id: int, mask_threshold: float = 0.5
) -> tuple[list[dict], list[dict]]:
    """One image's torchvision detections -> COCO result lists ``(boxes, masks)``.

    ``output``: ``boxes`` (XYXY, image pixels), ``labels`` (= COCO ``category_id``), ``scores`` and, for
    Mask R-CNN, ``masks`` ([N, 1, H, W] probabilities, binarised at ``mask_threshold``).
    """
    from pycocotools import mask as mask_utils

    boxes = output["boxes"].detach().cpu().float()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    labels, scores = output["labels"].tolist(), output["scores"].tolist()
    box_results = [
        dict(image_id=image_id, category_id=int(c), bbox=[round(v, 2) for v in b], score=float(s))
        for b, c, s in zip(xywh, labels, scores)
    ]
    mask_results = []
    if "masks" in output:
        masks = (output["masks"][:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
        for m, c, s in zip(masks, labels, scores):
            rle = mask_utils.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode("ascii")
            mask_results.append(dict(image_id=image_id, category_id=int(c), segmentation=rle, score=float(s)))
    return box_results, mask_results


def coco_evaluate(coco_gt, results: dict[str, list[dict]], image_ids: list[int] | None = None) -> dict[str, float]:
    """COCO AP/AP50/AP75/APs/APm/APl of each ``{"bbox": [...], "segm": [...]}`` result list, keys ``bbox_AP``...

    ``coco_gt`` is a ``pycocotools.coco.COCO``; ``image_ids`` restricts the evaluation (default: every
    image of ``coco_gt``). A type without any detection scores 0 (pycocotools cannot load an empty list).
    """
    from pycocotools.cocoeval import COCOeval

    metrics: dict[str, float] = {}
    for iou_type, dets in results.items():
        if not dets:
            metrics.update({f"{iou_type}_{k}": 0.0 for k in _COCO_STATS})
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
            coco_dt = coco_gt.loadRes(dets)
            ev = COCOeval(coco_gt, coco_dt, iou_type)
            if image_ids is not None:
                ev.params.imgIds = list(image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        # pycocotools gives -1 where a size range holds no ground truth
        metrics.update({f"{iou_type}_{k}": max(float(ev.stats[i]), 0.0) for k, i in _COCO_STATS.items()})
    return metrics


class ConfusionMatrix:
    """Accumulated ``[num_classes, num_classes]`` confusion matrix (rows: label, columns: prediction).

    mIoU as mmsegmentation computes it: per class ``|P ∩ L| / |P ∪ L|`` over the whole set, averaged
    over the classes that occur in labels or predictions; pixel accuracy (aAcc) over labelled pixels;
    pixels labelled ``ignore_index`` do not count. Hand-written because it is four lines of
    ``torch.bincount`` and needs no extra dependency; reduced over ranks by ``all_reduce``.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Add a batch of predicted and true label maps of the same shape (any leading dims)."""
        if pred.shape != label.shape:
            raise ValueError(f"prediction shape {list(pred.shape)} differs from label shape {list(label.shape)}")
        keep = label != self.ignore_index
        label, pred = label[keep].long().cpu(), pred[keep].long().cpu()
        if label.numel() and (label.min() < 0 or label.max() >= self.num_classes):
            raise ValueError(
                f"label values must be in [0, {self.num_classes}) or {self.ignore_index}, "
                f"got range [{int(label.min())}, {int(label.max())}]"
            )
        index = label * self.num_classes + pred.clamp(0, self.num_classes - 1)
        self.matrix += torch.bincount(index, minlength=self.num_classes**2).view(self.num_classes, self.num_classes)

    def reduce(self) -> None:
        """Sum the matrices of all ranks (in place)."""
        if is_distributed():
            backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            m = self.matrix.to(backend_device)
            dist.all_reduce(m)
            self.matrix = m.cpu()

    def compute(self) -> dict[str, Any]:
        """``mIoU``, ``aAcc`` (pixel accuracy), ``mAcc`` (mean class accuracy), in [0, 1], and per-class ``IoU``."""
        m = self.matrix.double()
        intersection = m.diag()
        label_area, pred_area = m.sum(1), m.sum(0)
        union = label_area + pred_area - intersection
        iou = torch.where(union > 0, intersection / union.clamp(min=1), torch.nan)
        acc = torch.where(label_area > 0, intersection / label_area.clamp(min=1), torch.nan)
        total = float(label_area.sum())
        return dict(
            mIoU=float(iou.nanmean()) if (union > 0).any() else 0.0,
            aAcc=float(intersection.sum()) / total if total else 0.0,
            mAcc=float(acc.nanmean()) if (label_area > 0).any() else 0.0,
            IoU=iou.tolist(),
        )
