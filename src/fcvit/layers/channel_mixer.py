"""FCViT's channel mixer: an inverted-bottleneck MLP with a depth-wise 3x3 conv inside."""

import torch
from torch import nn


class ChannelMixer(nn.Module):
    """1x1 conv C -> rC, depth-wise 3x3 conv (optional), GELU, dropout, 1x1 conv rC -> C, dropout."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, dwconv: bool = True, drop: float = 0.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden) if dwconv else nn.Identity()
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act(self.dwconv(self.fc1(x))))
        return self.drop2(self.fc2(x))
