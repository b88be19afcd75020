"""Datasets and loaders: Fashion-MNIST built in, ImageFolder trees, epoch-addressable batch loaders."""

from .fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    FashionMNIST,
    fashion_mnist_paths,
    load_fashion_mnist,
)
from .folder import BadImageError, ImageFolderDataset, load_image

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "BadImageError",
    "FashionMNIST",
    "ImageFolderDataset",
    "fashion_mnist_paths",
    "load_fashion_mnist",
    "load_image",
]
