"""Fashion-MNIST reading: system copy, torchvision-style roots, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from train_utils import make_fashion_root, synthetic_images

from fcvit.data import FASHION_MNIST_CLASSES, FashionMNIST, fashion_mnist_paths, load_fashion_mnist
from fcvit.data.fashion_mnist import SYSTEM_DIR

try:
    fashion_mnist_paths("test")
    HAVE_SYSTEM_COPY = True
except FileNotFoundError:
    HAVE_SYSTEM_COPY = False


@pytest.mark.skipif(not HAVE_SYSTEM_COPY, reason=f"Fashion-MNIST not installed in {SYSTEM_DIR} (dataset-fashion-mnist)")
def test_system_copy_full_test_set():
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [1000] * 10  # the test set is balanced
    assert len(FASHION_MNIST_CLASSES) == 10 and FASHION_MNIST_CLASSES[9] == "Ankle boot"


def test_torchvision_root_and_dataset(tmp_path):
    make_fashion_root(tmp_path, n_train=40, n_test=20)
    images, labels = load_fashion_mnist("train", tmp_path)
    expected_images, expected_labels = synthetic_images(40, 0)
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)
    ds = FashionMNIST("val", root=tmp_path, limit=7)
    assert len(ds) == 7
    img, label = ds[3]
    assert isinstance(img, Image.Image) and img.mode == "L" and img.size == (28, 28)
    assert label == synthetic_images(20, 1)[1][3]
    assert FashionMNIST("test", root=tmp_path, transform=lambda im: im.size)[0][0] == (28, 28)


def test_missing_files_name_paths_and_package(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_fashion_mnist("train", tmp_path / "nowhere")
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz") in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation", tmp_path)


def test_truncated_file_is_reported(tmp_path):
    make_fashion_root(tmp_path, n_train=10, n_test=10)
    path = tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    import gzip

    data = gzip.open(path).read()
    with gzip.open(path, "wb") as f:
        f.write(data[:-100])
    with pytest.raises(ValueError, match="truncated"):
        load_fashion_mnist("test", tmp_path)
