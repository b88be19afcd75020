"""FCViT's channel mixer: an inverted-bottleneck MLP with a depth-wise 3x3 conv inside."""

from __future__ import annotations

import torch
from torch import nn

from .fast import conv_gelu, run_chunked_in_training, run_conv


class ChannelMixer(nn.Module):
    """1x1 conv C->rC, depth-wise 3x3 conv (optional), GELU, dropout, 1x1 conv rC->C, dropout.

    ``fast``: the conv before the GELU and the GELU run as one oneDNN call in CPU inference
    (:func:`fcvit.layers.fast.conv_gelu`); small maps take the training paths of :func:`fcvit.layers.fast.run_conv`;
    in CPU training a batch whose hidden map would reach glibc's mmap ceiling runs in chunks of images
    (:func:`fcvit.layers.fast.run_chunked_in_training`).
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, dwconv: bool = True, drop: float = 0.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden) if dwconv else None
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop2 = nn.Dropout(drop)
        self.fast = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return run_chunked_in_training(self.mix, x, self.fc1.out_channels)
        return self.mix(x)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """The channel mixer on a batch of images, as one piece."""
        if self.dwconv is None:
            x = conv_gelu(self.fc1, x, self.fast)
        else:
            x = conv_gelu(self.dwconv, run_conv(self.fc1, x, self.fast), self.fast)
        return self.drop2(run_conv(self.fc2, self.drop1(x), self.fast))
