"""Loaders: the tensor path equals the PIL/timm path, batches are addressable by (epoch, batch), bad images."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from train_utils import make_fashion_root, make_image_folder

from fcvit.data import FashionMNIST, ImageFolderDataset
from fcvit.data.folder import BadImageError
from fcvit.data.loaders import DatasetLoader, TensorLoader, epoch_indices, pad_crop_flip
from fcvit.data.transforms import create_eval_transform, create_train_transform

DATA_CONFIG = {"input_size": [1, 28, 28], "interpolation": "bicubic", "mean": [0.286], "std": [0.353], "crop_pct": 1.0}


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    root = make_fashion_root(tmp_path_factory.mktemp("fm"), n_train=70, n_test=50)
    return FashionMNIST("train", root=root)


def _all(loader, epoch=0, start=0):
    return list(loader.batches(epoch, start))


def test_pad_crop_flip_equals_torchvision(fmnist):
    images = fmnist.images[:6].unsqueeze(1)
    offsets = torch.tensor([[0, 0], [4, 4], [1, 3], [2, 0], [3, 1], [0, 4]])
    flips = torch.tensor([False, True, True, False, True, False])
    out = pad_crop_flip(images, 2, offsets, flips)
    for k in range(6):
        img = Image.fromarray(fmnist.images[k].numpy())
        ref = TF.crop(TF.pad(img, 2), int(offsets[k, 0]), int(offsets[k, 1]), 28, 28)
        ref = TF.hflip(ref) if flips[k] else ref
        assert torch.equal(out[k, 0], torch.from_numpy(np.array(ref)))


@pytest.mark.parametrize("in_chans", [1, 3])
def test_tensor_path_equals_timm_path(fmnist, in_chans):
    """Eval, and training with the random parts switched off: bitwise the same batches."""
    cfg = {**DATA_CONFIG, "input_size": [in_chans, 28, 28], "mean": [0.286] * in_chans, "std": [0.353] * in_chans}
    fast = TensorLoader(fmnist.images, fmnist.targets, 16, False, cfg["mean"], cfg["std"], in_chans)
    slow = DatasetLoader(fmnist, create_eval_transform(cfg), 16, train=False)
    for (a, ya, _), (b, yb, _) in zip(_all(fast), _all(slow), strict=True):
        assert a.shape == (len(ya), in_chans, 28, 28)
        assert torch.equal(a, b) and torch.equal(ya, yb)
    train_tf = create_train_transform(cfg, crop_mode="pad", crop_pad=0, hflip=0.0)
    fast = TensorLoader(fmnist.images, fmnist.targets, 16, True, cfg["mean"], cfg["std"], in_chans, seed=3)
    slow = DatasetLoader(fmnist, train_tf, 16, train=True, seed=3)
    for (a, ya, _), (b, yb, _) in zip(_all(fast, 1), _all(slow, 1), strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_batches_addressable_and_sharded(fmnist):
    mean, std = DATA_CONFIG["mean"], DATA_CONFIG["std"]
    loader = TensorLoader(fmnist.images, fmnist.targets, 8, True, mean, std, crop_pad=2, hflip=0.5, seed=1)
    assert len(loader) == 70 // 8
    full = _all(loader, epoch=2)
    resumed = _all(loader, epoch=2, start=3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[3:], resumed, strict=True))
    assert not torch.equal(_all(loader, epoch=3)[0][0], full[0][0])  # a new permutation and new draws per epoch
    # two ranks of batch 4: their batch b together is the single process's batch b of 8, same augmentation
    ranks = [TensorLoader(fmnist.images, fmnist.targets, 4, True, mean, std, 1, 2, 0.5, 1, r, 2) for r in (0, 1)]
    for b, (x, y, _) in enumerate(full):
        parts = [_all(r, epoch=2)[b] for r in ranks]
        order = torch.tensor(epoch_indices(70, 2, 1, True))[b * 8 : (b + 1) * 8]
        got = {int(i): (img, lab) for p, r in zip(parts, (0, 1)) for i, img, lab in zip(order[r::2], p[0], p[1])}
        for i, img, lab in zip(order.tolist(), x, y):
            assert torch.equal(got[i][0], img) and got[i][1] == lab
    # evaluation: every sample exactly once over the ranks, no padding
    shards = [epoch_indices(50, 0, 0, False, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(50))


def test_seeded_augmentation_independent_of_workers_and_global_rng(fmnist):
    tf = create_train_transform(DATA_CONFIG, crop_mode="pad", crop_pad=2, auto_augment="rand-m9-mstd0.5", re_prob=0.5)
    a = _all(DatasetLoader(fmnist, tf, 10, train=True, workers=0, seed=5), epoch=1)
    state = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    b = _all(DatasetLoader(fmnist, tf, 10, train=True, workers=1, seed=5), epoch=1)
    c = _all(DatasetLoader(fmnist, tf, 10, train=True, workers=0, seed=5), epoch=1, start=2)
    assert torch.equal(state[0], torch.get_rng_state()) and (state[1] == np.random.get_state()[1]).all()
    assert state[2] == random.getstate()
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b, strict=True))
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a[2:], c, strict=True))
    assert not torch.equal(a[0][0], _all(DatasetLoader(fmnist, tf, 10, train=True, seed=5), epoch=2)[0][0])


def test_image_folder_modes_and_bad_images(tmp_path):
    root = make_image_folder(tmp_path, per_class=4)
    bad = root / "train" / "class_1" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cfg = {**DATA_CONFIG, "input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.9}
    ds = ImageFolderDataset(root / "train", mode="RGB")
    assert ds.classes == ["class_0", "class_1", "class_2"]
    with pytest.raises(BadImageError, match="broken.jpg"):
        _all(DatasetLoader(ds, create_eval_transform(cfg), 4, train=False))
    batches = _all(DatasetLoader(ds, create_eval_transform(cfg), 4, train=False, skip_bad=True))
    assert sum(s for _, _, s in batches) == 1
    assert sum(len(y) for _, y, _ in batches) == 12
    assert all(x.shape[1:] == (3, 32, 32) for x, _, _ in batches)
