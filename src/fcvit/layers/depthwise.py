"""Depth-wise convolution with 'same' output size for any kernel size, odd or even."""

from torch import nn


class DepthwiseConv2d(nn.Conv2d):
    """Depth-wise ``k x k`` convolution, stride 1, output size equal to input size.

    Even kernels pad one more on the right/bottom than on the left/top (PyTorch's ``padding='same'``), so the
    paper's kernel-size ablation can include even sizes. :func:`fcvit.optimize` swaps in a subclass that crops
    the kernel to the taps that can reach a small map and has a faster CPU backward, with the same results.
    """

    def __init__(self, dim: int, kernel_size: int, bias: bool = True):
        super().__init__(dim, dim, kernel_size, padding="same", groups=dim, bias=bias)
