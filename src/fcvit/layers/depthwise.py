"""Depth-wise convolution with 'same' output size for any kernel size, odd or even.

When the feature map is smaller than the kernel, most taps only ever multiply zero padding. A map
of H rows can reach at most ``2H - 1`` taps, so the kernel is cropped to the taps that can touch the
map before convolving. This is exact (only products with padding zeros are dropped) and is what makes
11x11 kernels cheap on the 7x7 .. 1x1 maps of late stages and small inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _taps(kernel: int, size: int) -> tuple[int, int, int, int]:
    """First and last useful tap of a 'same' kernel on a map of ``size``, with the left/right padding.

    With left padding ``p = (k - 1) // 2`` output i reads input ``i + t - p``: only taps with
    ``|t - p| <= size - 1`` can land on the map.
    """
    left = (kernel - 1) // 2
    first = max(0, left - (size - 1))
    last = min(kernel - 1, left + (size - 1))
    return first, last, left - first, last - left


class DepthwiseConv2d(nn.Conv2d):
    """Depth-wise ``k x k`` convolution, stride 1, output size equal to input size.

    Even kernels pad one more on the right/bottom than on the left/top (as ``padding='same'``).
    ``crop_kernel`` turns the exact kernel cropping on small maps on or off (for tests and benchmarks).
    """

    def __init__(self, dim: int, kernel_size: int, bias: bool = True, crop_kernel: bool = True):
        super().__init__(dim, dim, kernel_size, padding=0, groups=dim, bias=bias)
        self.crop_kernel = crop_kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        H, W = x.shape[-2:]
        if self.crop_kernel:
            h0, h1, top, bottom = _taps(kh, H)
            w0, w1, left, right = _taps(kw, W)
            weight = self.weight[:, :, h0 : h1 + 1, w0 : w1 + 1]
        else:
            top, left = (kh - 1) // 2, (kw - 1) // 2
            bottom, right = kh - 1 - top, kw - 1 - left
            weight = self.weight
        if top == bottom and left == right:
            return F.conv2d(x, weight, self.bias, padding=(top, left), groups=self.groups)
        return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, self.bias, groups=self.groups)
