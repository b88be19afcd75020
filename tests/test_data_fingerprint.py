"""Data fingerprints: what changed between two states of a data set is named (issue 28, item 4)."""

from __future__ import annotations

import pytest
from timm.data import ImageNetInfo
from torch.utils.data import Subset
from train_utils import make_fashion_root, make_image_folder

from fcvit.data import FashionMNIST, ImageFolderDataset
from fcvit.data.fingerprint import check_same_data, class_names_notice, data_changes, data_fingerprint


def _fingerprint(root, split="train"):
    dataset = ImageFolderDataset(root / split)
    return data_fingerprint(dataset, dataset.classes, split)


def test_folder_changes_are_named(tmp_path):
    root = make_image_folder(tmp_path, per_class=3, classes=3)
    before = _fingerprint(root)
    assert before["counts"] == [3, 3, 3] and _fingerprint(root) == before and data_changes(before, before) == []
    train = root / "train"
    gone = sorted((train / "class_0").iterdir())[0]
    gone.unlink()
    (train / "class_2").rename(train / "Bag")
    (train / "class_1" / "img0.png").rename(train / "Bag" / "new.png")
    assert data_changes(before, _fingerprint(root)) == [
        "class 'class_2' missing or renamed",
        "class 'Bag' new",
        "1 image removed from train/class_0",
        "1 image removed from train/class_1",
    ]
    (train / "Bag" / "new.png").rename(train / "class_1" / "img0.png")
    (train / "Bag").rename(train / "class_2")
    (train / "class_0" / "other.png").write_bytes(b"")  # a name, not a picture, is what the digest covers
    assert data_changes(before, _fingerprint(root)) == ["images renamed or replaced in train/class_0"]


def test_fashion_mnist_and_subsets(tmp_path):
    """Fashion-MNIST by its pixels; a Subset (--train-limit) by the samples it keeps."""
    dataset = FashionMNIST("train", root=make_fashion_root(tmp_path, n_train=40, n_test=8))
    classes = [str(c) for c in range(10)]
    before = data_fingerprint(dataset, classes, "train")
    assert sum(before["counts"]) == 40
    label = int(dataset.targets[0])
    dataset.images[0, 0, 0] += 1
    assert data_changes(before, data_fingerprint(dataset, classes, "train")) == [
        f"images renamed or replaced in train/{label}"
    ]
    part = data_fingerprint(Subset(dataset, [0, 1, 2]), classes, "train")
    assert sum(part["counts"]) == 3 and part["counts"][label] >= 1


def test_resume_check_says_each_change_once(tmp_path):
    root = make_image_folder(tmp_path, per_class=2, classes=2)
    recorded = {"train": _fingerprint(root, "train"), "val": _fingerprint(root, "val")}
    check_same_data(recorded, recorded, "ckpt.pth")
    check_same_data(None, recorded, "ckpt.pth")  # a checkpoint from before fingerprints
    for split in ("train", "val"):
        (root / split / "class_1").rename(root / split / "shoe")
    current = {"train": _fingerprint(root, "train"), "val": _fingerprint(root, "val")}
    with pytest.raises(ValueError) as info:
        check_same_data(recorded, current, "ckpt.pth")
    assert str(info.value) == (
        "--resume: the data differs from what ckpt.pth was trained on (class 'class_1' missing or renamed; "
        "class 'shoe' new); resume on the same data, or start a new run"
    )


def test_class_names_notice_rule():
    assert class_names_notice("d", ["a", "b"], ["a", "b"]) is None
    assert class_names_notice("d", ["b", "a"], ["a", "b"]) == (
        "note: d has other class names than the checkpoint (the same names in another order; label: data vs "
        "checkpoint 0: 'b' vs 'a', 1: 'a' vs 'b'); labels are matched by position"
    )
    info = ImageNetInfo()
    descriptions = [info.index_to_description(i) for i in range(1000)]  # a timm ImageNet checkpoint's names
    assert class_names_notice("imagenet", info.label_names(), descriptions) is None
    notice = class_names_notice("d", [f"x{i}" for i in range(5)], [f"class_{i}" for i in range(5)])
    assert "5 of 5 differ" in notice and "'x2' vs 'class_2', ..." in notice
