"""Datasets: Fashion-MNIST built in, ImageFolder trees, and the loaders the training loop uses."""

from .fashion_mnist import FASHION_MNIST_CLASSES, FashionMNIST, fashion_mnist_paths, load_fashion_mnist

__all__ = ["FASHION_MNIST_CLASSES", "FashionMNIST", "fashion_mnist_paths", "load_fashion_mnist"]
