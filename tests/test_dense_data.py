"""The Fashion-MNIST-on-canvas generator, the COCO / ADE20K-layout datasets and the dense metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fcvit.data import FASHION_MNIST_CLASSES, fashion_mnist_paths
from fcvit.dense.config import CanvasConfig
from fcvit.dense.data import CocoInstances, SemanticSegmentation, make_canvas, make_dense_dataset
from fcvit.dense.metrics import ConfusionMatrix, coco_evaluate, detections_to_coco
from fcvit.engine.config import validate

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

try:
    fashion_mnist_paths("train")
    fashion_mnist_paths("test")
    HAVE_FASHION = True
except FileNotFoundError:
    HAVE_FASHION = False
needs_fashion = pytest.mark.skipif(not HAVE_FASHION, reason="Fashion-MNIST not installed (dataset-fashion-mnist)")


@pytest.fixture(scope="module")
def dense_root(tmp_path_factory):
    if not HAVE_FASHION:
        pytest.skip("Fashion-MNIST not installed (dataset-fashion-mnist)")
    root = tmp_path_factory.mktemp("dense")
    cfg = CanvasConfig(canvas_size=64, max_objects=5, min_scale=0.3, max_scale=0.6)
    summary = make_dense_dataset(root, num_train=8, num_val=4, cfg=cfg, seed=3)
    return root, summary


def test_canvas_occlusion_and_masks():
    rng = np.random.default_rng(0)
    items = np.zeros((2, 28, 28), dtype=np.uint8)
    items[:, 4:24, 4:24] = 200  # two solid squares
    cfg = CanvasConfig(canvas_size=64, min_objects=5, max_objects=5, min_scale=0.4, max_scale=0.5, min_visible=0.3)
    for _ in range(5):
        image, instances = make_canvas(items, np.array([3, 7]), rng, cfg)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        union = np.zeros((64, 64), dtype=int)
        for cls, mask in instances:
            assert cls in (3, 7) and mask.any()
            union += mask
        assert union.max() <= 1, "visible masks of different items overlap"


def test_canvas_config_errors():
    with pytest.raises(ValueError, match="--min-objects 3 exceeds --max-objects 2"):
        validate(CanvasConfig(min_objects=3, max_objects=2))
    with pytest.raises(ValueError, match=r"canvas_size \(config\): 16 is out of range: must be >= 32"):
        validate(CanvasConfig(canvas_size=16))


@needs_fashion
def test_generated_coco_loads_with_pycocotools_and_masks_match_boxes(dense_root):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    root, summary = dense_root
    for split, name in (("train", "train2017"), ("val", "val2017")):
        coco = COCO(str(root / "coco" / "annotations" / f"instances_{name}.json"))
        assert len(coco.getImgIds()) == summary["splits"][split]["images"]
        assert len(coco.getAnnIds()) == summary["splits"][split]["instances"] > 0
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(FASHION_MNIST_CLASSES)
        for img in coco.loadImgs(coco.getImgIds()):
            assert Image.open(root / "coco" / name / img["file_name"]).size == (img["width"], img["height"])
            label_map = np.zeros((img["height"], img["width"]), dtype=np.uint8)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
                mask = coco.annToMask(ann)
                ys, xs = np.nonzero(mask)
                x0, y0 = xs.min(), ys.min()
                assert ann["bbox"] == [x0, y0, xs.max() - x0 + 1, ys.max() - y0 + 1]
                assert ann["area"] == mask.sum() == mask_utils.area(ann["segmentation"])
                assert (label_map[mask > 0] == 0).all(), "instances overlap"
                label_map[mask > 0] = ann["category_id"]
            if split == "train":  # the ADE-layout label map of the same canvas: background 0, class k -> k + 1
                ade = np.asarray(
                    Image.open(root / "ade" / "annotations" / "training" / f"fmc_train_{img['id']:08d}.png")
                )
                np.testing.assert_array_equal(ade, label_map)


@needs_fashion
def test_coco_dataset_targets(dense_root):
    from torchvision.transforms import v2

    root, _ = dense_root
    ds = CocoInstances(root / "coco", "val", v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]))
    image, target = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    n = len(target["labels"])
    assert target["boxes"].shape == (n, 4) and target["masks"].shape == (n, 64, 64)
    for box, mask in zip(target["boxes"], target["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    with pytest.raises(FileNotFoundError, match="instances_test2017.json"):
        CocoInstances(root / "coco", "test2017")


@needs_fashion
def test_semantic_dataset_and_reduce_zero_label(dense_root):
    root, _ = dense_root
    meta = json.loads((root / "ade" / "classes.json").read_text())
    assert meta == dict(classes=["background", *FASHION_MNIST_CLASSES], reduce_zero_label=False)
    plain = SemanticSegmentation(root / "ade", "train")
    reduced = SemanticSegmentation(root / "ade", "train", reduce_zero_label=True)
    assert len(plain) == 8
    image, label = plain[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8 and label.shape == (64, 64)
    _, r = reduced[0]
    assert (r[label == 0] == 255).all() and torch.equal(r[label > 0], label[label > 0] - 1)
    with pytest.raises(FileNotFoundError, match="images/testing"):
        SemanticSegmentation(root / "ade", "testing")


def _gt_coco(boxes: list[list[float]]):
    """A pycocotools COCO of one 100x100 image whose objects are the given [x, y, w, h] rectangles (class 1)."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    anns = []
    for i, (x, y, w, h) in enumerate(boxes):
        m = np.zeros((100, 100), dtype=np.uint8)
        m[y : y + h, x : x + w] = 1
        rle = mask_utils.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode()
        anns.append(
            dict(id=i + 1, image_id=1, category_id=1, bbox=[x, y, w, h], area=w * h, iscrowd=0, segmentation=rle)
        )
    coco = COCO()
    coco.dataset = dict(
        images=[dict(id=1, width=100, height=100)], annotations=anns, categories=[dict(id=1, name="thing")]
    )
    coco.createIndex()
    return coco


def _detections(boxes_xywh: list[list[float]], scores: list[float]) -> dict[str, torch.Tensor]:
    """torchvision-style output whose masks fill the boxes exactly."""
    b = torch.tensor(boxes_xywh, dtype=torch.float32).reshape(-1, 4)
    masks = torch.zeros(len(b), 1, 100, 100)
    for i, (x, y, w, h) in enumerate(b.int().tolist()):
        masks[i, 0, y : y + h, x : x + w] = 1.0
    return dict(
        boxes=torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1),
        labels=torch.ones(len(b), dtype=torch.int64),
        scores=torch.tensor(scores),
        masks=masks,
    )


def _ap(coco, output) -> dict[str, float]:
    boxes, masks = detections_to_coco(output, image_id=1)
    return coco_evaluate(coco, dict(bbox=boxes, segm=masks))


def test_coco_ap_perfect_empty_and_partial():
    gt = [[10, 10, 30, 20], [50, 50, 40, 30]]
    coco = _gt_coco(gt)
    perfect = _ap(coco, _detections(gt, [0.9, 0.8]))
    for k in ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75"):
        assert perfect[k] == pytest.approx(1.0), k
    empty = _ap(coco, _detections([], []))
    assert all(v == 0.0 for v in empty.values())
    # A false positive scored above the one true positive, the second object missed: precision 1/2 up to
    # recall 1/2, then nothing. COCO's 101-point interpolated AP = 0.5 * 51/101 at every IoU threshold.
    partial = _ap(coco, _detections([[0, 70, 10, 10], gt[0]], [0.9, 0.8]))
    for k in ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75"):
        assert partial[k] == pytest.approx(0.5 * 51 / 101, abs=1e-6), k


def test_confusion_matrix_miou():
    cm = ConfusionMatrix(2)
    label = torch.tensor([[0, 0, 1, 1, 255]])
    cm.update(label.clone(), label)
    assert cm.compute()["mIoU"] == 1.0 and cm.compute()["aAcc"] == 1.0
    wrong = ConfusionMatrix(2)
    wrong.update(torch.tensor([[1, 1, 0, 0, 0]]), label)
    assert wrong.compute()["mIoU"] == 0.0 and wrong.compute()["aAcc"] == 0.0
    # class 0: I=1, U=2 -> 1/2; class 1: I=2, U=3 -> 2/3; the ignored pixel does not count
    part = ConfusionMatrix(2)
    part.update(torch.tensor([[0, 1, 1, 1, 0]]), label)
    result = part.compute()
    assert result["IoU"] == pytest.approx([1 / 2, 2 / 3])
    assert result["mIoU"] == pytest.approx(7 / 12) and result["aAcc"] == pytest.approx(3 / 4)
    assert result["mAcc"] == pytest.approx((1 / 2 + 1) / 2)
    with pytest.raises(ValueError, match="label values"):
        part.update(torch.tensor([3]), torch.tensor([3]))
    with pytest.raises(ValueError, match="shape"):
        part.update(torch.zeros(2, 3), torch.zeros(3, 2))
